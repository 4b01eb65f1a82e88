import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { describeTarget, gitDecision, gitTarget, hostCovers, normalizeHost, parseAllowed, parseGitUrl, pathCovers, sourceFor, type GitTarget } from '../../host-broker/git/rules.js';
import type { EffectiveGit } from '../../host-broker/policy/effective.js';
import { loadPolicyFile, PolicyError, policyFromDocument } from '../../host-broker/policy/policy.js';
import { tempDir } from '../support/procs.js';

const git = (over: Partial<EffectiveGit> = {}): EffectiveGit => ({ enabled: true, allowed: [], sources: {}, ...over });

/** The target of protocol/host/path as the handler judges it (throws on a problem). */
function target(protocol: string, host: string, p?: string): GitTarget {
  const judged = gitTarget({ protocol, host, path: p });
  if ('problem' in judged) throw new Error(judged.problem);
  return judged.target;
}

describe('git rules: hosts and paths', () => {
  it('hosts compare without case, the protocol\'s default port counting as none', () => {
    expect(normalizeHost('GitHub.com', 'https')).to.equal('github.com');
    expect(normalizeHost('github.com:443', 'https')).to.equal('github.com');
    expect(normalizeHost('github.com:443', 'http')).to.equal('github.com:443');
    expect(normalizeHost('git.local:80', 'http')).to.equal('git.local');
    expect(normalizeHost('127.0.0.1:8080', 'http')).to.equal('127.0.0.1:8080');
    expect(normalizeHost('[::1]:3000', 'https')).to.equal('[::1]:3000');
    for (const bad of ['', 'a b', 'host/path', 'host:99999', 'user@host', '-bad.com', 'x:y']) expect(normalizeHost(bad, 'https'), bad).to.equal(undefined);
  });

  it('request paths lose empty segments; dot segments, control characters and backslashes are refused', () => {
    expect(target('https', 'h', '/acme//app.git/').path).to.deep.equal(['acme', 'app.git']);
    expect(target('https', 'h', '').path).to.equal(undefined);
    expect(target('https', 'h').path).to.equal(undefined);
    for (const bad of ['acme/../other', './x', 'a/\x1b[2J', 'a\\b', 'a/\nb', 'acme/%2e%2e/x']) {
      expect(gitTarget({ protocol: 'https', host: 'h', path: bad }), JSON.stringify(bad)).to.have.property('problem');
    }
    expect(gitTarget({ protocol: 'https', host: 'not a host' })).to.deep.equal({ problem: '"not a host" is not a host (like github.com or git.example.com:8443)' });
    expect(describeTarget(target('HTTPS', 'GitHub.com:443', 'acme/app.git'))).to.equal('https://github.com/acme/app.git');
  });

  it('entries parse into scheme, host and path glob', () => {
    expect(parseAllowed('github.com/acme/*')).to.deep.equal({ text: 'github.com/acme/*', scheme: 'https', host: 'github.com', path: ['acme', '*'] });
    expect(parseAllowed('HTTP://Git.Local:80/')).to.deep.equal({ text: 'HTTP://Git.Local:80/', scheme: 'http', host: 'git.local', path: undefined });
    expect(parseAllowed('https://gitlab.example.com:8443/team/**')).to.include({ scheme: 'https', host: 'gitlab.example.com:8443' });
    expect(parseAllowed('*.example.com')).to.include({ host: '*.example.com' });
    expect(parseAllowed('ftp://x')).to.equal(undefined);
  });

  it('a *. host covers the names below it, on the same port, not the name itself', () => {
    expect(hostCovers('*.example.com', 'a.example.com')).to.equal(true);
    expect(hostCovers('*.example.com', 'a.b.example.com')).to.equal(true);
    expect(hostCovers('*.example.com', 'example.com')).to.equal(false);
    expect(hostCovers('*.example.com', 'badexample.com')).to.equal(false);
    expect(hostCovers('*.example.com', 'a.example.com:8443')).to.equal(false);
    expect(hostCovers('*.example.com:8443', 'a.example.com:8443')).to.equal(true);
    expect(hostCovers('github.com', 'github.com.evil.com')).to.equal(false);
  });

  it('a path glob covers what it matches and everything below; * stays in a segment, ** crosses them; .git is ignored', () => {
    const covers = (glob: string, p: string) => pathCovers(glob.split('/'), p.split('/'));
    expect(covers('acme/*', 'acme/app.git')).to.equal(true);
    expect(covers('acme/*', 'acme/app')).to.equal(true);
    expect(covers('acme/*', 'acme/app.git/info/lfs')).to.equal(true);
    expect(covers('acme/*', 'acme')).to.equal(false);
    expect(covers('acme/*', 'acmeco/app.git')).to.equal(false);
    expect(covers('acme/*', 'other/acme/app.git')).to.equal(false);
    expect(covers('acme/app', 'acme/app.git')).to.equal(true);
    expect(covers('acme/app.git', 'acme/app')).to.equal(true);
    expect(covers('acme/app', 'acme/application.git')).to.equal(false);
    expect(covers('acme/app-*', 'acme/app-web.git')).to.equal(true);
    expect(covers('team/**', 'team/group/sub/repo.git')).to.equal(true);
    expect(covers('team/*', 'team/group/sub/repo.git')).to.equal(true); // team/group is covered, and what is below it
    expect(covers('team/*/repo', 'team/group/sub/repo.git')).to.equal(false);
    expect(covers('team/**/repo', 'team/group/sub/repo.git')).to.equal(true);
    expect(covers('a.b/c+d', 'a.b/c+d.git')).to.equal(true);
    expect(covers('a.b/c+d', 'axb/c+d.git')).to.equal(false);
  });

  it('parseGitUrl takes what explain --url is given', () => {
    expect(parseGitUrl('https://github.com/acme/app.git')).to.deep.equal({ protocol: 'https', host: 'github.com', path: 'acme/app.git' });
    expect(parseGitUrl('http://alice@127.0.0.1:3000/x')).to.deep.equal({ protocol: 'http', host: '127.0.0.1:3000', path: 'x' });
    expect(parseGitUrl('https://gitlab.example.com')).to.deep.equal({ protocol: 'https', host: 'gitlab.example.com', path: undefined });
    expect(parseGitUrl('github.com/acme')).to.have.property('problem');
  });
});

describe('git rules: gitDecision', () => {
  const policy = git({ allowed: ['github.com/acme/*', 'gitlab.example.com', 'http://127.0.0.1:3000/team/**', '*.corp.example'] });
  const decide = (protocol: string, host: string, p?: string) => gitDecision(policy, target(protocol, host, p));

  it('allows what an entry covers, naming the entry', () => {
    expect(decide('https', 'github.com', 'acme/app.git')).to.deep.equal({ allowed: true, rule: 'git.allowed entry github.com/acme/* covers https://github.com/acme/app.git', entry: 'github.com/acme/*' });
    expect(decide('https', 'GITLAB.example.com:443', 'any/repo.git')).to.include({ allowed: true, entry: 'gitlab.example.com' });
    expect(decide('https', 'gitlab.example.com')).to.include({ allowed: true });
    expect(decide('http', '127.0.0.1:3000', 'team/a/b.git')).to.include({ allowed: true, entry: 'http://127.0.0.1:3000/team/**' });
    expect(decide('https', 'git.corp.example', 'x.git')).to.include({ allowed: true, entry: '*.corp.example' });
  });

  it('refuses with GIT_HOST_NOT_ALLOWED and the rule that decided', () => {
    expect(decide('https', 'github.com', 'other/app.git')).to.deep.equal({ allowed: false, code: 'GIT_HOST_NOT_ALLOWED', rule: 'git.allowed covers only github.com/acme/* on github.com, not other/app.git' });
    expect(decide('https', 'github.com')).to.deep.include({
      code: 'GIT_HOST_NOT_ALLOWED',
      rule: 'the request names no repository path, and git.allowed covers only some paths on github.com (github.com/acme/*); set credential.useHttpPath=true in the shed\'s git config (install-guest does)',
    });
    expect(decide('https', 'bitbucket.org', 'a/b.git')).to.deep.include({ rule: 'git.allowed (github.com/acme/*, gitlab.example.com, http://127.0.0.1:3000/team/**, *.corp.example) does not cover bitbucket.org' });
    expect(decide('https', 'corp.example')).to.include({ allowed: false });
    expect(decide('https', 'github.com:8443', 'acme/app.git')).to.include({ allowed: false });
  });

  it('refuses plain http unless an entry says http://, and https where an entry says only http://', () => {
    expect(decide('http', 'github.com', 'acme/app.git')).to.deep.equal({
      allowed: false,
      code: 'GIT_HOST_NOT_ALLOWED',
      rule: 'plain http is refused for github.com: git.allowed names it for https only (github.com/acme/*); write the entry as http://… to allow http, which sends the token unencrypted',
    });
    expect(decide('http', 'gitlab.example.com:80')).to.include({ allowed: false });
    expect(decide('https', '127.0.0.1:3000', 'team/x.git')).to.deep.include({ rule: 'git.allowed names 127.0.0.1:3000 for plain http only (http://127.0.0.1:3000/team/**); add an entry without http:// for https' });
  });

  it('serves no other protocol, and nothing when disabled or empty', () => {
    expect(decide('ssh', 'github.com', 'acme/app.git')).to.deep.include({ code: 'GIT_HOST_NOT_ALLOWED' });
    expect(decide('ssh', 'github.com', 'acme/app.git').rule).to.contain('only https').and.contain('ssh-agent');
    expect(decide('cert', 'github.com')).to.include({ allowed: false });
    expect(gitDecision(git(), target('https', 'github.com', 'a/b'))).to.deep.equal({ allowed: false, code: 'GIT_HOST_NOT_ALLOWED', rule: 'git.allowed is empty' });
    expect(gitDecision(git({ ...policy, enabled: false }), target('https', 'github.com', 'acme/a'))).to.deep.equal({ allowed: false, code: 'NAMESPACE_DISABLED', rule: 'git.enabled is false' });
  });

  it('sourceFor finds a host\'s command source the way hosts compare', () => {
    const sources = git({ sources: { 'GitHub.com': { command: ['gh', 'auth', 'token'] }, 'git.local:3000': { command: ['/bin/tok'], username: 'ci' } } });
    expect(sourceFor(sources, target('https', 'github.com:443', 'a'))).to.deep.equal({ key: 'GitHub.com', command: ['gh', 'auth', 'token'], username: undefined });
    expect(sourceFor(sources, target('http', 'git.local:3000'))).to.include({ key: 'git.local:3000', username: 'ci' });
    expect(sourceFor(sources, target('https', 'git.local'))).to.equal(undefined);
  });
});

describe('git policy section', () => {
  const doc = (gitSection: unknown) => ({ version: 1, sheds: { web: { git: gitSection } } });

  it('loads, merges sources over defaults key by key, and lists replace', () => {
    const policy = policyFromDocument({
      version: 1,
      defaults: { git: { allowed: ['github.com'], sources: { 'github.com': { command: ['gh', 'auth', 'token'] } } } },
      sheds: { web: { git: { allowed: ['gitlab.example.com/team/*'], sources: { 'gitlab.example.com': { command: ['glab-token'], username: 'oauth2' } } } }, other: {} },
    });
    expect(policy.resolve('web')!.git).to.deep.equal({
      enabled: true,
      allowed: ['gitlab.example.com/team/*'],
      sources: { 'github.com': { command: ['gh', 'auth', 'token'] }, 'gitlab.example.com': { command: ['glab-token'], username: 'oauth2' } },
    });
    expect(policy.resolve('other')!.git.allowed).to.deep.equal(['github.com']);
    expect(policy.resolve('other')!.limits.git).to.deep.equal({ per_minute: 600, burst: 60 });
    expect(policyFromDocument({ version: 1, sheds: { a: {} } }).resolve('a')!.git).to.deep.equal({ enabled: true, allowed: [], sources: {} });
  });

  it('refuses malformed entries, sources and approval.applies_to values at file:line:column', () => {
    const dir = tempDir('shed-gpol');
    const file = path.join(dir, 'extensions.yaml');
    fs.writeFileSync(file, [
      'version: 1',
      'sheds:',
      '  web:',
      '    git:',
      '      allowed: ["github.com/acme/*", "ftp://x.com", "github.com/a/../b", "host:70000", "has space.com"]',
      '      sources:',
      '        "github.com/acme": { command: [gh] }',
      '        gitlab.com: { command: [] }',
      '        gitea.local: { command: gh }',
      '      extra: 1',
      '    approval: { applies_to: [git-credential] }',
      '',
    ].join('\n'), { mode: 0o600 });
    let problems: string[] = [];
    try {
      loadPolicyFile(file);
    } catch (err) {
      expect(err).to.be.instanceOf(PolicyError);
      problems = (err as PolicyError).problems;
    }
    const text = problems.join('\n');
    expect(text).to.contain('extensions.yaml:5:').and.contain('expected a host (github.com, git.example.com:8443, *.example.com) or a host and path glob');
    expect(problems.filter((p) => p.includes(':5:')).length, text).to.equal(4);
    expect(text).to.contain('a path may not hold . or .. segments').and.contain('port 70000 is not a port');
    expect(text).to.match(/extensions\.yaml:7:\d+: .*expected a host as git names it/);
    expect(text).to.match(/extensions\.yaml:8:\d+: .*expected a command as a list/);
    expect(text).to.match(/extensions\.yaml:9:\d+: .*expected a command as a list/);
    expect(text).to.match(/extensions\.yaml:10:\d+: .*unknown key "extra"/);
    expect(text).to.match(/extensions\.yaml:11:\d+: .*git-credentials/);
  });

  it('git at the top level says where it goes', () => {
    expect(() => policyFromDocument({ version: 1, git: { allowed: [] } })).to.throw(PolicyError, /in version 1, git settings go under `defaults:`/);
    expect(() => policyFromDocument(doc({ allowed: 'github.com' }))).to.throw(PolicyError);
  });
});
