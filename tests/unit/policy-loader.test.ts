import { soleMemberGroup } from '../../protocol/files.js';
import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parse } from 'yaml';
import { loadPolicyFile, policyFromDocument, PolicyError, type Policy } from '../../host-broker/policy/policy.js';
import { renderShed, showShed } from '../../host-broker/policy/show.js';
import { policyDigest } from '../../host-broker/policy/watch.js';
import { tempDir } from '../support/procs.js';

/** Write `files` (relative path → text) into a fresh dir, 0600 files and 0700 dirs; returns the main file's path. */
function policyDir(files: Record<string, string>): string {
  const dir = tempDir('shed-pol');
  for (const [rel, text] of Object.entries(files)) {
    const file = path.join(dir, rel);
    fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
    fs.writeFileSync(file, text, { mode: 0o600 });
  }
  return path.join(dir, 'extensions.yaml');
}

function problemsOf(file: string): string[] {
  try {
    loadPolicyFile(file);
  } catch (err) {
    expect(err).to.be.instanceOf(PolicyError);
    return (err as PolicyError).problems;
  }
  throw new Error('the policy loaded; expected problems');
}

const ROLE = 'arn:aws:iam::123456789012:role/dev';
const FP = `SHA256:${'A'.repeat(43)}`;

describe('policy: merge rules and "*"', () => {
  const policy = policyFromDocument({
    version: 1,
    defaults: {
      ssh: { mode: 'agent-forward', allowed_keys: [FP] },
      aws: { source_profile: 'work', session_duration: '2h', tags: { team: 'core' } },
      docker: { registries: ['ghcr.io', 'quay.io'] },
    },
    sheds: {
      alpha: { aws: { role: ROLE, tags: { app: 'alpha' } }, docker: { registries: ['registry.example.com:5000'] } },
      beta: { ssh: { allowed_keys: [] } },
      '*': { docker: { enabled: false } },
    },
  });

  it('merges maps key by key and replaces lists, then fills in the built-in defaults', () => {
    const alpha = policy.resolve('alpha')!;
    expect(alpha.matched).to.equal('named');
    expect(alpha.ssh.mode).to.equal('agent-forward');
    expect(alpha.ssh.allowed_keys).to.deep.equal([FP]);
    expect(alpha.aws).to.include({ role: ROLE, source_profile: 'work', session_duration: 7_200_000, refresh_before: 300_000 });
    expect(alpha.aws.tags).to.deep.equal({ shed: 'alpha', team: 'core', app: 'alpha' });
    expect(alpha.docker.registries).to.deep.equal(['registry.example.com:5000']);
    expect(alpha.approval.gate).to.equal('none');
    // An empty list replaces the default list too.
    expect(policy.resolve('beta')!.ssh.allowed_keys).to.deep.equal([]);
  });

  it('gives an unnamed shed the "*" entry, and refuses it when there is none', () => {
    const other = policy.resolve('someone-else')!;
    expect(other.matched).to.equal('wildcard');
    expect(other.docker.enabled).to.equal(false);
    expect(other.ssh.allowed_keys).to.deep.equal([FP]);
    expect(policy.namedSheds()).to.deep.equal(['alpha', 'beta']);
    const closed = policyFromDocument({ version: 1, sheds: { alpha: {} } });
    expect(closed.resolve('someone-else')).to.equal(undefined);
    expect(closed.hasWildcard()).to.equal(false);
  });

  it('shows where each value came from: built-in, defaults, the shed entry or "*", with file:line', () => {
    const file = policyDir({
      'extensions.yaml': [
        'version: 1', // 1
        'defaults:', // 2
        '  docker:', // 3
        '    registries: [ghcr.io]', // 4
        '  aws:', // 5
        '    session_duration: 2h', // 6
        'sheds:', // 7
        '  alpha:', // 8
        '    aws:', // 9
        `      role: ${ROLE}`, // 10
        '  "*":', // 11
        '    ssh: { enabled: false }', // 12
        '',
      ].join('\n'),
    });
    const policy = loadPolicyFile(file);
    const alpha = showShed(policy, 'alpha')!;
    expect(alpha.origins.get('aws.role')).to.equal('sheds.alpha (extensions.yaml:10)');
    expect(alpha.origins.get('aws.session_duration')).to.equal('defaults (extensions.yaml:6)');
    expect(alpha.origins.get('docker.registries')).to.equal('defaults (extensions.yaml:4)');
    expect(alpha.origins.get('aws.refresh_before')).to.equal('built-in');
    const other = showShed(policy, 'stranger')!;
    expect(other.origins.get('ssh.enabled')).to.equal('sheds."*" (extensions.yaml:12)');
    const text = renderShed(policy, 'alpha')!;
    expect(text).to.match(/session_duration: 2h +# defaults \(extensions\.yaml:6\)/);
    expect(text).to.match(/role: arn:aws:iam::123456789012:role\/dev +# sheds\.alpha \(extensions\.yaml:10\)/);
    // The text is YAML whose values are the effective ones.
    const back = parse(text) as Record<string, Record<string, unknown>>;
    expect(back.aws!.role).to.equal(ROLE);
    expect(back.docker!.registries).to.deep.equal(['ghcr.io']);
    expect(renderShed(loadPolicyFile(policyDir({ 'extensions.yaml': 'version: 1\nsheds: { alpha: {} }\n' })), 'stranger')).to.equal(undefined);
  });
});

describe('policy: errors name file:line:col and the key path', () => {
  const cases: Array<[string, string, RegExp]> = [
    ['unknown key', 'version: 1\ndefaults:\n  docker:\n    registires: [ghcr.io]\n', /:4:5: defaults\.docker\.registires: unknown key "registires" \(did you mean "registries"\?\)/],
    ['top-level section of the original format in a version 1 file', 'version: 1\nssh: {}\n', /:2:1: ssh: unknown key "ssh" at the top level: in version 1, ssh settings go under `defaults:`/],
    ['wrong type', 'version: 1\nsheds:\n  alpha:\n    ssh:\n      enabled: "yes"\n', /:5:16: sheds\.alpha\.ssh\.enabled: expected true or false; got the string "yes"/],
    ['bad duration', 'version: 1\ndefaults:\n  aws:\n    session_duration: 1 hour\n', /:4:23: defaults\.aws\.session_duration: expected a duration such as 90s, 5m or 1h.*got the string "1 hour"/],
    ['number as duration', 'version: 1\ndefaults:\n  approval: { ttl: 90 }\n', /:3:20: defaults\.approval\.ttl: expected a duration.*got the number 90/],
    ['bad ARN', 'version: 1\nsheds:\n  alpha:\n    aws: { role: "arn:aws:iam::12:role/x" }\n', /:4:18: sheds\.alpha\.aws\.role: expected an IAM role ARN/],
    ['bad fingerprint', 'version: 1\ndefaults:\n  ssh:\n    allowed_keys:\n      - SHA256:short\n', /:5:9: defaults\.ssh\.allowed_keys\[0\]: expected a SHA256 key fingerprint/],
    ['bad registry pattern', 'version: 1\ndefaults:\n  docker:\n    registries: [ghcr.io, "https://quay.io/v2"]\n', /:4:27: defaults\.docker\.registries\[1\]: expected a registry host/],
    ['bad enum', 'version: 1\ndefaults:\n  ssh: { mode: sometimes }\n', /:3:16: defaults\.ssh\.mode: expected one of auto, agent-forward, local-keys; got the string "sometimes"/],
    ['bad shed name', 'version: 1\nsheds:\n  My_Shed: {}\n', /:3:3: sheds\.My_Shed: "My_Shed" is not a shed name/],
    ['allowed_hosts entry of neither form', 'version: 1\ndefaults:\n  ssh:\n    allowed_hosts:\n      - host: example.com\n', /:5:9: defaults\.ssh\.allowed_hosts\[0\]\.key: expected a string; it is missing/],
    ['missing version', 'sheds: {}\n', /:1:1: version: expected `version: 1`; it is missing/],
    ['YAML syntax', 'version: 1\nsheds: [alpha\n', /:3:1: YAML: /],
    ['duplicate key', 'version: 1\nsheds:\n  alpha: {}\n  alpha: {}\n', /:4:3: YAML: Map keys must be unique/],
  ];
  for (const [name, text, expected] of cases) {
    it(name, () => {
      const file = policyDir({ 'extensions.yaml': text });
      const problems = problemsOf(file);
      expect(problems.join('\n')).to.match(new RegExp(`^${escape(file)}${expected.source}`, 'm'));
    });
  }

  it('reports every problem at once, in file order', () => {
    const file = policyDir({
      'extensions.yaml': 'version: 1\nbogus: 1\ndefaults:\n  aws: { session_duration: x }\nsheds:\n  Bad: {}\n',
      'sheds.d/beta.yaml': 'docker:\n  registries: [UPPER.io]\n',
    });
    const problems = problemsOf(file);
    expect(problems).to.have.length(4);
    expect(problems[0]).to.match(/:2:1: bogus:/);
    expect(problems[1]).to.match(/:4:28: defaults\.aws\.session_duration:/);
    expect(problems[2]).to.match(/:6:3: sheds\.Bad:/);
    expect(problems[3]).to.match(/sheds\.d\/beta\.yaml:2:16: sheds\.beta\.docker\.registries\[0\]:/);
  });

  it('refuses an empty file and a missing one, saying what to do', () => {
    expect(problemsOf(policyDir({ 'extensions.yaml': '# nothing\n' }))[0]).to.match(/empty: it needs at least `version: 1`/);
    expect(problemsOf(path.join(tempDir('shed-pol'), 'none.yaml'))[0]).to.match(/cannot read the policy file \(ENOENT\): create it/);
  });
});

describe('policy: the sheds.d directory', () => {
  it('adds one shed per file, merged over defaults like an entry in the main file', () => {
    const file = policyDir({
      'extensions.yaml': 'version: 1\ndefaults:\n  docker: { registries: [ghcr.io] }\nsheds:\n  alpha: {}\n',
      'sheds.d/beta.yaml': `aws:\n  role: ${ROLE}\n`,
      'sheds.d/gamma.yml': '', // an empty file: the shed with the defaults
      'sheds.d/.beta.yaml.swp': 'not: [yaml',
      'sheds.d/beta.yaml~': 'junk: [',
      'sheds.d/README': 'not policy',
    });
    const policy = loadPolicyFile(file);
    expect(policy.namedSheds()).to.deep.equal(['alpha', 'beta', 'gamma']);
    expect(policy.resolve('beta')!.aws.role).to.equal(ROLE);
    expect(policy.resolve('beta')!.docker.registries).to.deep.equal(['ghcr.io']);
    expect(policy.resolve('gamma')!.matched).to.equal('named');
    expect(policy.files.map((f) => path.basename(f))).to.deep.equal(['extensions.yaml', 'beta.yaml', 'gamma.yml']);
    expect(policy.locate(['sheds', 'beta', 'aws', 'role'])).to.deep.include({ file: path.join(path.dirname(file), 'sheds.d', 'beta.yaml'), line: 2, col: 9 });
  });

  it('refuses a shed named in two places, pointing at both', () => {
    const file = policyDir({
      'extensions.yaml': 'version: 1\nsheds:\n  alpha: {}\n  beta: {}\n',
      'sheds.d/beta.yaml': 'ssh: { enabled: false }\n',
      'sheds.d/gamma.yaml': '{}\n',
      'sheds.d/gamma.yml': '{}\n',
    });
    const problems = problemsOf(file).join('\n');
    expect(problems).to.include(`sheds.d/beta.yaml:1:1: sheds.beta: shed beta is defined twice: here and in ${file}:4:3; keep one of the two`);
    expect(problems).to.match(/sheds\.d\/gamma\.yml:1:1: sheds\.gamma: shed gamma is defined twice: here and in .*sheds\.d\/gamma\.yaml/);
  });

  it('refuses a file whose name is not a shed name, and unknown keys in a shed file', () => {
    const file = policyDir({
      'extensions.yaml': 'version: 1\n',
      'sheds.d/Not_A_Shed.yaml': '{}\n',
      'sheds.d/delta.yaml': 'version: 1\nssh: {}\n',
    });
    const problems = problemsOf(file).join('\n');
    expect(problems).to.match(/sheds\.d\/Not_A_Shed\.yaml: "Not_A_Shed" is not a shed name/);
    expect(problems).to.match(/sheds\.d\/delta\.yaml:1:1: sheds\.delta\.version: unknown key "version"; allowed here: ssh, aws, docker, git, approval, limits/);
  });
});

/** Give `file` a group other users share (nogroup: the primary group of nobody, sync, _apt), which needs root; false when not root. */
function shareGroup(...files: string[]): boolean {
  if (process.getuid?.() !== 0) return false;
  for (const f of files) fs.chownSync(f, 0, 65534);
  return true;
}

describe('policy: file permissions', () => {
  it('refuses a policy file writable by group or others with the chmod to run', function () {
    const file = policyDir({ 'extensions.yaml': 'version: 1\n' });
    if (!shareGroup(file)) this.skip(); // needs root to give the file a shared group
    fs.chmodSync(file, 0o664);
    expect(problemsOf(file)).to.deep.equal([
      `${file}: the policy file is writable by group (mode 0664), so another user could grant sheds your credentials; it is refused until you run: chmod go-w ${file}`,
    ]);
    fs.chmodSync(file, 0o646);
    expect(problemsOf(file)[0]).to.include('writable by others (mode 0646)');
    fs.chmodSync(file, 0o644);
    expect(() => loadPolicyFile(file)).not.to.throw();
  });

  it('accepts a file and directory writable by the owner\'s private group (umask 002), as OpenSSH does', function () {
    const file = policyDir({ 'extensions.yaml': 'version: 1\n' });
    const dir = path.dirname(file);
    const uid = process.getuid!();
    if (!soleMemberGroup(fs.statSync(file).gid, uid)) this.skip(); // this user's group is shared here
    fs.chmodSync(file, 0o664);
    fs.chmodSync(dir, 0o775);
    expect(() => loadPolicyFile(file)).not.to.throw();
    // Others' write bit is never accepted.
    fs.chmodSync(file, 0o666);
    expect(problemsOf(file)[0]).to.include('writable by group and others (mode 0666)');
  });

  it('refuses a loose sheds.d directory or file in it', () => {
    const file = policyDir({ 'extensions.yaml': 'version: 1\n', 'sheds.d/alpha.yaml': '{}\n' });
    const dir = path.join(path.dirname(file), 'sheds.d');
    fs.chmodSync(dir, 0o777);
    expect(problemsOf(file).join('\n')).to.include(`${dir}: the policy directory is writable by group and others (mode 0777), so another user could grant sheds your credentials; it is refused until you run: chmod go-w ${dir}`);
    fs.chmodSync(dir, 0o700);
    fs.chmodSync(path.join(dir, 'alpha.yaml'), 0o662);
    expect(problemsOf(file).join('\n')).to.include(`chmod go-w ${path.join(dir, 'alpha.yaml')}`);
  });
});

describe('policy: files that are not what they seem', () => {
  it('refuses a policy directory writable by group or others: whoever can write it can replace the file', function () {
    const file = policyDir({ 'extensions.yaml': 'version: 1\n' });
    const dir = path.dirname(file);
    if (!shareGroup(dir)) this.skip(); // needs root to give the directory a shared group
    fs.chmodSync(dir, 0o770);
    expect(problemsOf(file)).to.deep.equal([
      `${dir}: the policy directory is writable by group (mode 0770), so another user could grant sheds your credentials; it is refused until you run: chmod go-w ${dir}`,
    ]);
    fs.chmodSync(dir, 0o755);
    expect(() => loadPolicyFile(file)).not.to.throw();
  });

  it('refuses a FIFO, socket or directory in sheds.d without opening it, and a FIFO as the policy file', async function () {
    this.timeout(10_000);
    const file = policyDir({ 'extensions.yaml': 'version: 1\n', 'sheds.d/alpha.yaml': '{}\n' });
    const shedsDir = path.join(path.dirname(file), 'sheds.d');
    execFileSync('mkfifo', ['-m', '600', path.join(shedsDir, 'beta.yaml')]);
    fs.mkdirSync(path.join(shedsDir, 'gamma.yaml'), { mode: 0o700 });
    const problems = problemsOf(file).join('\n');
    expect(problems).to.include(`${path.join(shedsDir, 'beta.yaml')}: is not a regular file (FIFO): sheds.d holds one <shed>.yaml file per shed; remove it`);
    expect(problems).to.include(`${path.join(shedsDir, 'gamma.yaml')}: is not a regular file (directory)`);
    // The watcher's digest does not block on it either.
    expect(policyDigest(file)).to.match(/^[0-9a-f]{64}$/);

    const fifo = path.join(tempDir('shed-pol'), 'extensions.yaml');
    execFileSync('mkfifo', ['-m', '600', fifo]);
    expect(problemsOf(fifo)).to.deep.equal([`${fifo}: the policy file is a FIFO; it must be a regular YAML file`]);
  });
});

describe('policy: the original shed-extensions format', () => {
  const original = [
    'server: http://localhost:9090', // 1
    'ssh:', // 2
    '  mode: agent-forward', // 3
    '  approval:', // 4
    '    enabled: true', // 5
    '    policy: per-shed', // 6
    '    session_ttl: 2h', // 7
    'aws:', // 8
    '  source_profile: work', // 9
    `  default_role: ${ROLE}`, // 10
    '  session_duration: 30m', // 11
    '  cache_refresh_before: 2m', // 12
    '  sheds:', // 13
    '    ci:', // 14
    '      role: arn:aws:iam::123456789012:role/ci', // 15
    'docker:', // 16
    '  registries: [ghcr.io]', // 17
    '  allow_all: false', // 18
    'logging:', // 19
    '  enabled: true', // 20
    '  path: /tmp/audit.log', // 21
    '',
  ].join('\n');

  it('loads unchanged, admits every shed through "*", and says the equivalent new form in one line', () => {
    const file = policyDir({ 'extensions.yaml': original });
    const policy = loadPolicyFile(file, { platform: 'darwin' });
    const notice = policy.notices[0]!;
    expect(notice).not.to.include('\n');
    expect(notice).to.match(new RegExp(`^notice: ${escape(file)} is in the original shed-extensions format`));
    // The notice's form, loaded as a version 1 policy, is the same policy.
    const equivalent = policyFromDocument(parse(notice.slice(notice.indexOf(': {') + 2)));
    for (const shed of ['ci', 'anyone']) expect(policy.resolve(shed)).to.deep.equal(equivalent.resolve(shed));
    const ci = policy.resolve('ci')!;
    expect(ci.aws).to.include({ role: 'arn:aws:iam::123456789012:role/ci', source_profile: 'work', session_duration: 1_800_000, refresh_before: 120_000 });
    expect(ci.ssh.mode).to.equal('agent-forward');
    expect(ci.approval).to.include({ gate: 'touchid', policy: 'per-shed', ttl: 7_200_000 });
    expect(policy.resolve('anyone')!.aws.role).to.equal(ROLE);
    expect(policy.resolve('anyone')!.docker.registries).to.deep.equal(['ghcr.io']);
    expect(policy.server?.url).to.equal('http://localhost:9090');
    expect(policy.direct.enabled).to.equal(false);
    expect(policy.audit.dir).to.equal('/tmp/audit');
    expect(policy.notices.slice(1)).to.deep.equal([
      `warning: ${file}:21: logging.path: one file for every shed in the original; the audit log is now one file per shed, in /tmp/audit/ (audit.dir)`,
    ]);
    expect(policy.locate(['defaults', 'aws', 'role'])).to.deep.include({ line: 10, col: 17 });
    expect(policy.locate(['sheds', 'ci', 'aws', 'role'])).to.deep.include({ line: 15, col: 13 });
    expect(policy.locate(['defaults', 'approval', 'ttl'])).to.deep.include({ line: 7, col: 18 });
  });

  it('reads Touch ID approval as refusing ssh where there is no Touch ID, saying so in one line', () => {
    const file = policyDir({ 'extensions.yaml': original });
    const policy = loadPolicyFile(file, { platform: 'linux' });
    const ci = policy.resolve('ci')!;
    expect(ci.ssh.enabled).to.equal(false);
    expect(ci.approval.gate).to.equal('none');
    expect(policy.notices).to.include(`warning: ${file}:5: ssh.approval.enabled: Touch ID exists only on macOS: on this host the original refused every signature (or, before that, signed without asking); this refuses them (ssh.enabled: false) rather than sign without the approval asked for; use a version 1 policy with approval.gate: command for approval here`);
  });

  it('an empty default_role admits every shed without a role', () => {
    const policy = loadPolicyFile(policyDir({ 'extensions.yaml': 'server: http://localhost:8080\nssh: {}\naws:\n  default_role: ""\n' }));
    expect(policy.resolve('anyone')!.aws.role).to.equal(undefined);
    expect(policy.hasWildcard()).to.equal(true);
  });

  it('refuses what the original refused, every problem at once, at its line:col in the original file', () => {
    const file = policyDir({ 'extensions.yaml': 'ssh:\n  mode: fast\naws:\n  default_role: not-an-arn\n  session_duration: 1 hour\n  sheds:\n    ci: { rol: x }\ndocker:\n  registries: ghcr.io\nlogging: { enabled: maybe }\n' });
    const problems = problemsOf(file).join('\n');
    expect(problems).to.match(/:2:9: ssh\.mode: expected one of agent-forward, local-keys \(or "" for auto\); got the string "fast"/);
    expect(problems).to.match(/:4:17: aws\.default_role: expected an IAM role ARN/);
    expect(problems).to.match(/:5:21: aws\.session_duration: expected a Go duration such as 90s, 5m, 1h30m or 1\.5h; got the string "1 hour"/);
    expect(problems).to.match(/:9:15: docker\.registries: expected a list; got the string "ghcr\.io"/);
    expect(problems).to.match(/:10:21: logging\.enabled: expected true or false; got the string "maybe"/);
    expect(problems).not.to.match(/unknown key/);
    expect(problemsOf(file)).to.have.length(5);
  });
});

describe('policy: what the original refused is refused, at file:line:col', () => {
  const cases: Array<[string, string, RegExp]> = [
    ['an unknown ssh approval policy', 'approval_timeout: 25s\nssh:\n  approval:\n    policy: maybe\n', /:4:13: ssh\.approval\.policy: expected one of deny-all, approve-all, biometrics, biometrics-or-password, shed-desktop; got the string "maybe"/],
    ['a biometric policy for aws', 'aws:\n  approval:\n    policy: biometrics\n', /:3:13: aws\.approval\.policy: expected one of deny-all, approve-all, shed-desktop \(the biometric policies are for ssh only\)/],
    ['a biometric policy for docker', 'docker:\n  approval:\n    policy: biometrics-or-password\n', /:3:13: docker\.approval\.policy: expected one of deny-all, approve-all, shed-desktop/],
    ['an unknown aws.mode', 'aws:\n  mode: bogus\n', /:2:9: aws\.mode: expected one of assume-role, passthrough; got the string "bogus"/],
    ['an unknown mode of a server\'s shed', 'discovery: {}\naws:\n  servers:\n    mini2:\n      sheds:\n        web:\n          mode: nope\n', /:7:17: aws\.servers\.mini2\.sheds\.web\.mode: expected one of assume-role, passthrough/],
    ['approval_timeout that is no duration', 'approval_timeout: nonsense\n', /:1:19: approval_timeout: expected a Go duration such as 90s, 5m, 1h30m or 1\.5h; got the string "nonsense"/],
    ['approval_timeout of zero', 'approval_timeout: 0s\n', /:1:19: approval_timeout: must be longer than 0; got "0s"/],
    ['a negative approval_timeout', 'approval_timeout: -5s\n', /:1:19: approval_timeout: expected a Go duration/],
    ['a bare number as approval_timeout', 'approval_timeout: 10\n', /:1:19: approval_timeout: expected a Go duration.*got the number 10/],
    ['a duplicate key', 'server: http://a:8080\nserver: http://b:8080\n', /:2:1: YAML: Map keys must be unique/],
    ['a map as discovery.servers', 'discovery:\n  servers:\n    web: {}\n', /:3:5: discovery\.servers: discovery\.servers must be "all" or a list of server names; got a map/],
    ['malformed YAML', 'ssh:\n  approval:\n    policy: [unterminated\n', /:\d+:\d+: YAML: /],
    ['Touch ID approval with an unknown policy', 'ssh:\n  approval:\n    enabled: true\n    policy: maybe\n', /:4:13: ssh\.approval\.policy: expected one of per-request, per-session, per-shed; got the string "maybe"/],
    ['a list where a string goes', 'server: [http://a:8080]\n', /:1:9: server: expected a string; got a list/],
  ];
  for (const [name, yaml, expected] of cases) {
    it(name, () => {
      const file = policyDir({ 'extensions.yaml': yaml });
      expect(problemsOf(file).join('\n')).to.match(new RegExp(`^${escape(file)}${expected.source}`, 'm'));
    });
  }

  it('ignores, with a warning, a value the original never looked at', () => {
    const file = policyDir({ 'extensions.yaml': 'ssh:\n  approval:\n    enabled: false\n    policy: maybe\n' });
    expect(loadPolicyFile(file).notices).to.include(`warning: ${file}:4: ssh.approval.policy: "maybe" is no approval policy the original knew; approval is not enabled, so it is ignored, as the original ignored it`);
  });

  it('reads aws.sheds, which only the latest original refused, as its earlier versions did, with a warning', () => {
    const file = policyDir({ 'extensions.yaml': `aws:\n  approval: { policy: approve-all }\n  sheds:\n    web:\n      role: ${ROLE}\n` });
    const policy = loadPolicyFile(file);
    expect(policy.resolve('web')!.aws.role).to.equal(ROLE);
    expect(policy.notices).to.include(`warning: ${file}:3: aws.sheds: the original's later versions refused aws.sheds (moved to aws.servers.<server>.sheds); read as its earlier versions did: for that shed on every server`);
  });
});

function escape(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

export type { Policy };

describe('policy: approval timeouts a guest outwaits', () => {
  const load = (yaml: string) => loadPolicyFile(policyDir({ 'extensions.yaml': yaml }));

  it('defaults the gate timeout to 25 s, inside the 30 s a guest waits for its answer', () => {
    const policy = load('version: 1\nsheds:\n  alpha:\n    approval: { gate: command, command: [/bin/true] }\n');
    expect(policy.resolve('alpha')!.approval.timeout).to.equal(25_000);
    expect(policy.notices).to.deep.equal([]);
  });

  it('gives notice, naming the sheds, when a gate may answer after the guest has given up', () => {
    const policy = load([
      'version: 1',
      'defaults:',
      '  approval: { timeout: 1m }',
      'sheds:',
      '  alpha:',
      '    approval: { gate: command, command: [/bin/true] }',
      '  beta:',
      '    approval: { gate: command, command: [/bin/true], timeout: 20s }',
      '  gamma: {}',
      '  "*":',
      '    approval: { gate: command, command: [/bin/true], timeout: 30s }',
      '',
    ].join('\n'));
    expect(policy.notices).to.have.length(1);
    const notice = policy.notices[0]!;
    expect(notice).to.match(/^notice: approval\.timeout \(1m, 30s\) for alpha, "\*" is not shorter than the 30 s a guest waits/);
    expect(notice).to.include('set approval.timeout below 30s');
    expect(notice).not.to.match(/beta|gamma/);
  });
});

describe('policy: servers and their layers', () => {
  const ROLE_WEB = 'arn:aws:iam::123456789012:role/web';
  const ROLE_MINI = 'arn:aws:iam::123456789012:role/mini2';
  const text = [
    'version: 1', // 1
    'defaults:', // 2
    '  aws: { source_profile: work }', // 3
    '  docker: { registries: [ghcr.io] }', // 4
    'sheds:', // 5
    '  web:', // 6
    `    aws: { role: ${ROLE_WEB} }`, // 7
    '    ssh: { mode: local-keys }', // 8
    '  "*":', // 9
    '    docker: { enabled: false }', // 10
    'servers:', // 11
    '  mini2:', // 12
    '    url: https://mini2.local:8443', // 13
    '    token_file: ~/.config/shed/mini2.token', // 14
    '    defaults:', // 15
    `      aws: { role: ${ROLE_MINI} }`, // 16
    '      ssh: { mode: agent-forward }', // 17
    '    sheds:', // 18
    '      web:', // 19
    '        ssh: { allowed_keys: [] }', // 20
    '        docker: { registries: [quay.io] }', // 21
    '      "*":', // 22
    '        docker: { enabled: true, registries: [] }', // 23
    '  mini3:', // 24
    '    url: http://mini3.local:8080', // 25
    '    sheds:', // 26
    '      only-here: {}', // 27
    '',
  ].join('\n');

  it('most specific wins: the server\'s shed entry, its defaults, the global shed entry, the global defaults, built-ins', () => {
    const policy = loadPolicyFile(policyDir({ 'extensions.yaml': text }));
    const web = policy.resolve('web', 'mini2')!;
    expect(web.matched).to.equal('named');
    expect(web.aws.role).to.equal(ROLE_MINI); // servers.mini2.defaults over sheds.web
    expect(web.aws.source_profile).to.equal('work'); // global defaults
    expect(web.ssh.mode).to.equal('agent-forward'); // servers.mini2.defaults over sheds.web
    expect(web.docker.registries).to.deep.equal(['quay.io']); // servers.mini2.sheds.web
    expect(web.docker.enabled).to.equal(true); // built-in: web's own global entry, not "*"
    expect(web.aws.refresh_before).to.equal(300_000); // built-in
    // The same name on the top-level server (or direct sockets) is another shed: the global policy only.
    const plain = policy.resolve('web')!;
    expect(plain.aws.role).to.equal(ROLE_WEB);
    expect(plain.ssh.mode).to.equal('local-keys');
    expect(plain.docker.registries).to.deep.equal(['ghcr.io']);
    // A server with no servers: section (found by discovery, say) gets the global policy too.
    // …and so is web on another server without a layer of its own: the same sections, keyed by its server.
    expect(policy.resolve('web', 'elsewhere')).to.deep.equal({ ...plain, name: 'web@elsewhere' });
    expect(web.name).to.equal('web@mini2');
    expect(web.aws.tags.shed, 'its session tag is its name').to.equal('web');
  });

  it('"*" is picked per level: a shed not named at a level gets that level\'s "*"', () => {
    const policy = loadPolicyFile(policyDir({ 'extensions.yaml': text }));
    const stranger = policy.resolve('stranger', 'mini2')!;
    expect(stranger.matched).to.equal('wildcard');
    // global "*" turns docker off; servers.mini2.sheds."*" turns it back on with no registries.
    expect(stranger.docker).to.include({ enabled: true });
    expect(stranger.docker.registries).to.deep.equal([]);
    expect(stranger.aws.role).to.equal(ROLE_MINI);
    expect(policy.resolve('stranger')!.docker.enabled).to.equal(false);
    // Named only on one server: admitted there (and by the global "*" elsewhere).
    expect(policy.resolve('only-here', 'mini3')!.matched).to.equal('named');
    expect(policy.resolve('only-here')!.matched).to.equal('wildcard');
  });

  it('a server\'s "*" admits sheds the global policy refuses, on that server only', () => {
    const policy = policyFromDocument({
      version: 1,
      sheds: { alpha: {} },
      servers: { mini2: { url: 'http://mini2:8080', sheds: { '*': { docker: { registries: ['ghcr.io'] } } } } },
    });
    expect(policy.resolve('stranger')).to.equal(undefined);
    expect(policy.resolve('stranger', 'other')).to.equal(undefined);
    expect(policy.resolve('stranger', 'mini2')!.docker.registries).to.deep.equal(['ghcr.io']);
    expect(policy.resolve('alpha', 'mini2')!.matched).to.equal('named');
  });

  it('servers() gives each configured connection with absolute paths and its token source; discovery() its spec', () => {
    const home = os.homedir();
    const policy = policyFromDocument({
      version: 1,
      server: { url: 'https://mini.local:8443', tls_pin: `sha256:${'ab'.repeat(32)}`, bootstrap: { ssh_port: 2222, identity_file: '~/.ssh/shed_bootstrap' } },
      servers: {
        mini2: { url: 'http://mini2:8080', token_command: ['shed', 'credentials', 'print'], namespaces: ['ssh-agent'] },
        mini3: { token_file: '~/mini3.token', defaults: { ssh: { enabled: false } } },
        mini4: null,
      },
      discovery: { servers: ['mini3', 'mini4'], bootstrap: { identity_file: '~/.ssh/id_shed', client_name: 'laptop' } },
    });
    expect(policy.servers()).to.deep.equal([
      {
        name: 'default',
        url: 'https://mini.local:8443',
        tlsPin: `sha256:${'ab'.repeat(32)}`,
        token: { kind: 'bootstrap', host: 'mini.local', port: 2222, user: '_bootstrap', identityFile: path.join(home, '.ssh/shed_bootstrap'), knownHosts: path.join(home, '.shed/known_hosts'), clientName: os.hostname() },
      },
      { name: 'mini2', policyScope: 'mini2', url: 'http://mini2:8080', namespaces: ['ssh-agent'], token: { kind: 'command', argv: ['shed', 'credentials', 'print'] } },
    ]);
    expect(policy.serverSettings('mini3')).to.deep.equal({ name: 'mini3', policyScope: 'mini3', token: { kind: 'file', path: path.join(home, 'mini3.token') } });
    expect(policy.serverSettings('mini4')).to.deep.equal({ name: 'mini4', policyScope: 'mini4' });
    expect(policy.serverSettings('nope')).to.equal(undefined);
    expect(policy.discovery()).to.deep.equal({
      source: path.join(home, '.shed/config.yaml'),
      servers: ['mini3', 'mini4'],
      bootstrap: { identityFile: path.join(home, '.ssh/id_shed'), clientName: 'laptop' },
    });
    expect(policy.direct.enabled).to.equal(false);
    // `discovery:` with nothing under it means every server of ~/.shed/config.yaml.
    const bare = policyFromDocument({ version: 1, discovery: null, sheds: { '*': {} } });
    expect(bare.discovery()).to.deep.equal({ source: path.join(home, '.shed/config.yaml'), servers: 'all' });
    expect(bare.servers()).to.deep.equal([]);
    expect(bare.direct.enabled).to.equal(false);
    expect(policyFromDocument({ version: 1 }).direct.enabled).to.equal(true);
  });

  const cases: Array<[string, string, RegExp]> = [
    ['two token sources',
      'version: 1\nserver:\n  url: https://a:8443\n  token_file: /t\n  token_command: [shed, credentials, print]\n',
      /:5:18: server\.token_command: server has both token_file and token_command: a server takes its bearer token from one source; keep one of them/],
    ['two token sources on a named server',
      'version: 1\nservers:\n  mini2:\n    url: https://a:8443\n    token_command: [x]\n    bootstrap: { ssh_port: 22, identity_file: /k }\n',
      /:6:16: servers\.mini2\.bootstrap: servers\.mini2 has both token_command and bootstrap/],
    ['token_command as a string',
      'version: 1\nserver:\n  token_command: shed credentials print\n',
      /:3:18: server\.token_command: expected a command as a list \(argv, run without a shell\)/],
    ['client_cert without client_key',
      'version: 1\nserver:\n  url: https://a:8443\n  client_cert: /c.pem\n',
      /:4:16: server\.client_cert: client_cert and client_key go together/],
    ['a pin on http',
      `version: 1\nserver:\n  url: http://a:8080\n  tls_pin: sha256:${'0'.repeat(64)}\n`,
      /:4:12: server\.tls_pin: tls_pin needs an https:\/\/ url, and server\.url is http:\/\/a:8080/],
    ['bootstrap without its port and key',
      'version: 1\nserver:\n  url: https://a:8443\n  bootstrap: { host: a }\n',
      /:4:14: server\.bootstrap: bootstrap needs ssh_port: .*\n.*:4:14: server\.bootstrap: bootstrap needs identity_file/],
    ['a server without url and no discovery',
      'version: 1\nservers:\n  mini2:\n    defaults: {}\n',
      /:4:5: servers\.mini2: servers\.mini2 has no url, and there is no discovery: block/],
    ['a server without url that discovery does not list',
      'version: 1\ndiscovery: { servers: [mini3] }\nservers:\n  mini2: { defaults: {} }\n',
      /:4:10: servers\.mini2: servers\.mini2 has no url, and discovery\.servers \(mini3\) does not include it/],
    ['a bad server name',
      'version: 1\nservers:\n  Mini_2: { url: "http://a:1" }\n',
      /:3:3: servers\.Mini_2: "Mini_2" is not a server name: server names, like shed names, are lowercase/],
    ['servers.default beside server:',
      'version: 1\nserver: { url: "http://a:1" }\nservers:\n  default: { url: "http://b:1" }\n',
      /:4:12: servers\.default: the top-level server: is named default; give this server another name/],
    ['discovery.servers neither all nor a list',
      'version: 1\ndiscovery:\n  servers: some\n',
      /:3:12: discovery\.servers: expected `all` or a list of server names/],
    ['an unknown key in a server',
      'version: 1\nservers:\n  mini2:\n    url: http://a:1\n    shed: {}\n',
      /:5:5: servers\.mini2\.shed: unknown key "shed" \(did you mean "sheds"\?\); allowed here: url, tls_pin, token_file, token_command, bootstrap, client_cert, client_key, namespaces, defaults, sheds/],
    ['a bad value in a server\'s shed entry',
      'version: 1\nservers:\n  mini2:\n    url: http://a:1\n    sheds:\n      web: { aws: { role: nope } }\n',
      /:6:27: servers\.mini2\.sheds\.web\.aws\.role: expected an IAM role ARN/],
  ];
  for (const [name, yaml, expected] of cases) {
    it(`refuses ${name}, at file:line:col`, () => {
      const file = policyDir({ 'extensions.yaml': yaml });
      expect(problemsOf(file).join('\n')).to.match(new RegExp(`^${escape(file)}${expected.source}`, 'm'));
    });
  }

  it('shows each value\'s origin through the server\'s layers, with file:line', () => {
    const policy = loadPolicyFile(policyDir({ 'extensions.yaml': text }));
    const web = showShed(policy, 'web', 'mini2')!;
    expect(web.entry).to.equal('servers.mini2.sheds.web');
    expect(web.layers).to.deep.equal(['servers.mini2.sheds.web', 'servers.mini2.defaults', 'sheds.web', 'defaults']);
    expect(web.origins.get('aws.role')).to.equal('servers.mini2.defaults (extensions.yaml:16)');
    expect(web.origins.get('ssh.mode')).to.equal('servers.mini2.defaults (extensions.yaml:17)');
    expect(web.origins.get('ssh.allowed_keys')).to.equal('servers.mini2.sheds.web (extensions.yaml:20)');
    expect(web.origins.get('docker.registries')).to.equal('servers.mini2.sheds.web (extensions.yaml:21)');
    expect(web.origins.get('aws.source_profile')).to.equal('defaults (extensions.yaml:3)');
    expect(web.origins.get('aws.refresh_before')).to.equal('built-in');
    const stranger = showShed(policy, 'stranger', 'mini2')!;
    expect(stranger.origins.get('docker.enabled')).to.equal('servers.mini2.sheds."*" (extensions.yaml:23)');
    expect(stranger.layers).to.deep.equal(['servers.mini2.sheds."*"', 'servers.mini2.defaults', 'sheds."*"', 'defaults']);
    const rendered = renderShed(policy, 'web', 'mini2')!;
    expect(rendered).to.match(/^# shed web of server mini2: its own entry; layers, most specific first: servers\.mini2\.sheds\.web, servers\.mini2\.defaults, sheds\.web, defaults$/m);
    expect(rendered).to.match(/^# shed-server mini2 \(https:\/\/mini2\.local:8443\)$/m);
    expect(rendered).to.match(/^ {2}role: arn:aws:iam::123456789012:role\/mini2 +# servers\.mini2\.defaults \(extensions\.yaml:16\)$/m);
    // Without the server: the global layers only.
    expect(showShed(policy, 'web')!.origins.get('aws.role')).to.equal('sheds.web (extensions.yaml:7)');
  });
});
