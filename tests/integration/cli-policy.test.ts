/**
 * The admin's CLI: every file in config-examples/ passes `check`; check's
 * exit codes and output; `policy list` and `policy show`; `doctor`'s probes
 * against real peers (ssh-agent, an AWS profile, a Docker config, a helper
 * on PATH, an HTTP server standing in for shed-server's API).
 */
import { expect } from 'chai';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { checkCommand, policyListCommand, policyShowCommand } from '../../host-broker/cli/policy-commands.js';
import { probeAwsProfile, probeDockerConfig, probeDockerHelper, probeGit, probeGitHelpers, probeLocalKeys, probeShedServer, probeSshAgent, probeWritable, runChecks } from '../../host-broker/cli/doctor.js';
import { startAwsHost } from '../support/aws-fixtures.js';
import { gitEnv } from '../support/git-http.js';
import { binCommand, REPO_ROOT, run, spawnTracked, stopProcess, tempDir, waitFor } from '../support/procs.js';

function capture() {
  let out = '';
  let err = '';
  return { io: { out: (t: string) => void (out += t), err: (t: string) => void (err += t) }, out: () => out, err: () => err };
}

/** Every policy file under config-examples/ (sheds.d files belong to the file beside them). */
function examples(dir = path.join(REPO_ROOT, 'config-examples')): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    if (e.isDirectory()) return e.name === 'sheds.d' ? [] : examples(path.join(dir, e.name));
    return /\.ya?ml$/.test(e.name) ? [path.join(dir, e.name)] : [];
  });
}

/** A copy of an example with its sheds.d, mode 0600/0700 (a checkout's modes follow the umask). */
function copyExample(file: string): string {
  const dir = tempDir('shed-cx');
  const target = path.join(dir, path.basename(file));
  fs.copyFileSync(file, target);
  fs.chmodSync(target, 0o600);
  const shedsD = path.join(path.dirname(file), 'sheds.d');
  if (fs.existsSync(shedsD)) {
    fs.mkdirSync(path.join(dir, 'sheds.d'), { mode: 0o700 });
    for (const f of fs.readdirSync(shedsD)) {
      fs.copyFileSync(path.join(shedsD, f), path.join(dir, 'sheds.d', f));
      fs.chmodSync(path.join(dir, 'sheds.d', f), 0o600);
    }
  }
  return target;
}

describe('shed-host-agent check', () => {
  const files = examples();

  it('finds the examples: the main file, the original format and the directory form', () => {
    const names = files.map((f) => path.relative(path.join(REPO_ROOT, 'config-examples'), f));
    expect(names).to.include.members(['extensions.yaml', 'extensions-original-format.yaml', 'directory-form/extensions.yaml']);
  });

  for (const file of examples()) {
    it(`passes ${path.relative(REPO_ROOT, file)}`, async () => {
      const c = capture();
      const code = await checkCommand(copyExample(file), c.io);
      expect(code, c.err()).to.equal(0);
      expect(c.out()).to.match(/: ok, \d+ named shed/);
    });
  }

  it('keeps the README\'s sheds in extensions.yaml', async () => {
    const c = capture();
    expect(await checkCommand(copyExample(path.join(REPO_ROOT, 'config-examples', 'extensions.yaml')), c.io)).to.equal(0);
    expect(c.out()).to.match(/^my-service: aws arn:aws:iam::123456789012:role\/dev; ssh auto, every key; docker ghcr\.io; git github\.com\/acme\/\*,gitlab\.example\.com \(1 token command\); approval none; socket .*my-service\/bus\.sock$/m);
    expect(c.out()).to.match(/^integration-tests: aws arn:aws:iam::123456789012:role\/staging-readonly; ssh disabled;/m);
  });

  it('the original format prints its notice and the sheds it admits, "*" included', async () => {
    const c = capture();
    expect(await checkCommand(copyExample(path.join(REPO_ROOT, 'config-examples', 'extensions-original-format.yaml')), c.io)).to.equal(0);
    expect(c.err()).to.match(/^notice: .* is in the original shed-extensions format; .*: \{ version: 1, server: \{ url: http:\/\/localhost:8080 \}/);
    expect(c.out()).to.match(/^"\*": aws arn:aws:iam::123456789012:role\/dev;/m);
  });

  it('exits 1 with every problem at file:line:col, and 1 for an approval gate that cannot run here', async () => {
    const dir = tempDir('shed-cx');
    const file = path.join(dir, 'extensions.yaml');
    fs.writeFileSync(file, 'version: 1\nsheds:\n  alpha:\n    aws: { role: nope }\n    docker: { registries: [ok.io, "BAD"] }\n', { mode: 0o600 });
    const [cmd, args] = binCommand('shed-host-agent', ['check', '--config', file]);
    const res = await run(cmd, args);
    expect(res.code).to.equal(1);
    expect(res.stdout).to.equal('');
    expect(res.stderr).to.include(`${file}:4:18: sheds.alpha.aws.role: expected an IAM role ARN`);
    expect(res.stderr).to.include(`${file}:5:35: sheds.alpha.docker.registries[1]: expected a registry host`);
    expect(res.stderr).to.include('2 problems: the policy was not loaded');
    fs.writeFileSync(file, 'version: 1\nsheds:\n  alpha:\n    approval: { gate: command, command: [/nonexistent/approve] }\n', { mode: 0o600 });
    const c = capture();
    expect(await checkCommand(file, c.io)).to.equal(1);
    expect(c.err()).to.match(/shed alpha: approval\.command "\/nonexistent\/approve"/);
  });
});

describe('shed-host-agent policy list and show', () => {
  let file: string;
  before(() => {
    file = copyExample(path.join(REPO_ROOT, 'config-examples', 'directory-form', 'extensions.yaml'));
  });

  it('lists each shed with role, ssh, registries, git, approval and socket', () => {
    const c = capture();
    expect(policyListCommand(file, c.io)).to.equal(0);
    const lines = c.out().trim().split('\n');
    expect(lines[0]).to.match(/^SHED +ROLE +SSH +REGISTRIES +GIT +APPROVAL +SOCKET$/);
    expect(lines[1]).to.match(/^payments +arn:aws:iam::123456789012:role\/payments-dev +agent-forward, 1 key, 1 allowed host +disabled +\(none\) +command per-request \(ssh, aws\) +\/.*\/payments\/bus\.sock$/);
    expect(lines[2]).to.match(/^web-frontend +arn:aws:iam::123456789012:role\/web-dev +agent-forward, every key +ghcr\.io,\*\.dkr\.ecr\.us-east-1\.amazonaws\.com +\(none\) +none +\/.*\/web-frontend\/bus\.sock$/);
    expect(lines[3]).to.match(/^"\*" +disabled +agent-forward, every key +disabled +\(none\) +none +shed-server only$/);
  });

  it('shows the merged policy with each value\'s origin, from sheds.d too', () => {
    const c = capture();
    expect(policyShowCommand(file, 'web-frontend', c.io)).to.equal(0);
    expect(c.out()).to.match(/^# shed web-frontend: its own entry, sheds\.web-frontend merged over defaults$/m);
    expect(c.out()).to.match(/^ {2}role: arn:aws:iam::123456789012:role\/web-dev +# sheds\.web-frontend \(sheds\.d\/web-frontend\.yaml:4\)$/m);
    expect(c.out()).to.match(/^ {2}mode: agent-forward +# defaults \(extensions\.yaml:24\)$/m);
    expect(c.out()).to.match(/^ {2}refresh_before: 5m +# built-in$/m);
    const star = capture();
    expect(policyShowCommand(file, 'newcomer', star.io)).to.equal(0);
    expect(star.out()).to.match(/no entry of its own: the "\*" entry/);
    expect(star.out()).to.match(/^ {2}enabled: false +# sheds\."\*" \(extensions\.yaml:35\)$/m);
  });

  it('says a shed is refused when nothing admits it, and refuses a bad name', () => {
    const c = capture();
    const closed = copyExample(path.join(REPO_ROOT, 'config-examples', 'extensions.yaml'));
    expect(policyShowCommand(closed, 'stranger', c.io)).to.equal(1);
    expect(c.err()).to.match(/shed stranger is not admitted .* SHED_NOT_ALLOWED; add it under sheds: \(or a sheds\.d\/stranger\.yaml\)/);
    expect(policyShowCommand(closed, 'Bad_Name', capture().io)).to.equal(2);
  });
});

describe('shed-host-agent with servers (real CLI processes)', () => {
  let file: string;
  before(() => {
    file = copyExample(path.join(REPO_ROOT, 'config-examples', 'multi-server.yaml'));
  });

  it('takes the config as --config FILE, --config=FILE, -config FILE and -config=FILE', async () => {
    for (const spelling of [['--config', file], [`--config=${file}`], ['-config', file], [`-config=${file}`]]) {
      const [cmd, args] = binCommand('shed-host-agent', ['check', ...spelling]);
      const res = await run(cmd, args);
      expect(res.code, `${spelling.join(' ')}: ${res.stderr}`).to.equal(0);
      expect(res.stdout).to.include(`${file}: ok, 1 named shed and "*"`);
    }
    // Before the command too, as Go's flag package wants it, and for audit.
    const [cmd, args] = binCommand('shed-host-agent', ['-config', file, 'policy', 'show', 'web', '-server', 'mini2']);
    const res = await run(cmd, args);
    expect(res.code, res.stderr).to.equal(0);
    expect(res.stdout).to.match(/^# shed web of server mini2: its own entry; layers, most specific first: servers\.mini2\.sheds\.web, servers\.mini2\.defaults, sheds\.web, defaults$/m);
    expect(res.stdout).to.match(/^ {2}role: arn:aws:iam::123456789012:role\/mini2-dev +# servers\.mini2\.defaults \(multi-server\.yaml:47\)$/m);
    expect(res.stdout).to.match(/^ {2}registries: \[ ghcr\.io, us-central1-docker\.pkg\.dev \] +# servers\.mini2\.sheds\.web \(multi-server\.yaml:51\)$/m);
    const missing = path.join(tempDir('shed-cx'), 'none.yaml');
    const audit = binCommand('shed-host-agent', ['audit', `-config=${missing}`]);
    const read = await run(audit[0], audit[1]);
    expect(read.code).to.equal(1);
    expect(read.stderr).to.include(`cannot read the policy to find the audit log: ${missing}`);
  });

  it('check lists each server\'s sheds and says which servers it connects to; --json gives every effective policy', async () => {
    const c = capture();
    expect(await checkCommand(file, c.io)).to.equal(0);
    expect(c.out()).to.match(/: ok, 1 named shed and "\*"; shed-server https:\/\/mini\.local:8443 and shed-server mini2 https:\/\/mini2\.local:8443 and the servers of .*\.shed\/config\.yaml \(all\)$/m);
    expect(c.out()).to.match(/^web of server mini2: aws arn:aws:iam::123456789012:role\/mini2-dev; ssh agent-forward, every key; docker ghcr\.io,us-central1-docker\.pkg\.dev; git \(none\); approval none$/m);
    expect(c.out()).to.match(/^"\*" of server mini2: aws arn:aws:iam::123456789012:role\/mini2-dev; ssh disabled;/m);
    const [cmd, args] = binCommand('shed-host-agent', ['check', '--json', '--config', file]);
    const res = await run(cmd, args);
    expect(res.code, res.stderr).to.equal(0);
    const report = JSON.parse(res.stdout) as { servers: Array<{ name: string; token?: { kind: string } }>; server_sheds: Record<string, Record<string, { aws: { role?: string } }>>; discovery: { servers: string } };
    expect(report.servers.map((s) => [s.name, s.token?.kind])).to.deep.equal([['default', 'bootstrap'], ['mini2', 'command']]);
    expect(report.server_sheds.mini2!.web!.aws.role).to.equal('arn:aws:iam::123456789012:role/mini2-dev');
    expect(report.server_sheds.mini3!['*']).to.have.nested.property('approval.gate', 'command');
    expect(report.discovery.servers).to.equal('all');
  });

  it('explain --server decides with that server\'s layers', async () => {
    const [cmd, args] = binCommand('shed-host-agent', ['explain', 'stranger', 'ssh-agent', 'list', '--server', 'mini2', '--config', file]);
    const res = await run(cmd, args);
    expect(res.code).to.equal(1);
    expect(res.stdout).to.match(/^shed stranger of server mini2: ssh-agent list$/m);
    expect(res.stdout).to.match(/denied +shed: ssh\.enabled is false/);
    const [cmd2, args2] = binCommand('shed-host-agent', ['explain', 'stranger', 'ssh-agent', 'list', '--config', file]);
    expect((await run(cmd2, args2)).code).to.equal(0);
  });
});

describe('aws.mode in policy show, explain and check', () => {
  it('shows the mode with its origin and explains what passthrough serves', async () => {
    const file = path.join(tempDir('shed-cx'), 'extensions.yaml');
    fs.writeFileSync(file, 'version: 1\nsheds:\n  sso-app:\n    aws: { mode: passthrough, source_profile: sso }\n  web:\n    aws: { role: arn:aws:iam::123456789012:role/web }\n', { mode: 0o600 });
    const show = capture();
    expect(policyShowCommand(file, 'sso-app', show.io)).to.equal(0);
    expect(show.out()).to.match(/^ {2}mode: passthrough +# sheds\.sso-app \(extensions\.yaml:4\)$/m);
    const web = capture();
    expect(policyShowCommand(file, 'web', web.io)).to.equal(0);
    expect(web.out()).to.match(/^ {2}mode: assume-role +# built-in$/m);
    const [cmd, args] = binCommand('shed-host-agent', ['explain', 'sso-app', 'aws-credentials', 'get_credentials', '--config', file]);
    const res = await run(cmd, args);
    expect(res.code, res.stderr).to.equal(0);
    expect(res.stdout).to.match(/^ {2}allowed {2}mode: aws\.mode is passthrough: the session credentials of source profile sso, read afresh for each request/m);
    expect(res.stdout).to.match(/then: the session credentials of source profile sso are read afresh, nothing cached \(.*LONG_LIVED_CREDENTIALS when it holds long-lived keys/);
    const check = capture();
    expect(await checkCommand(file, check.io)).to.equal(0);
    expect(check.out()).to.match(/^sso-app: aws passthrough:sso;/m);
  });
});

describe('shed-host-agent doctor', () => {
  it('ssh agent: reachable with its keys, or the fix when not', async () => {
    const dir = tempDir('shed-dr');
    const sock = path.join(dir, 'agent.sock');
    const agent = spawnTracked('ssh-agent', ['-D', '-a', sock]);
    try {
      await waitFor(() => fs.existsSync(sock), 5000, 'ssh-agent');
      expect((await probeSshAgent(sock)).check).to.deep.include({ status: 'warn', fix: 'ssh-add your key (ssh-add ~/.ssh/id_ed25519)' });
      await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', path.join(dir, 'k')]);
      await run('ssh-add', [path.join(dir, 'k')], { env: { ...process.env, SSH_AUTH_SOCK: sock } });
      const fp = (await run('ssh-keygen', ['-lf', path.join(dir, 'k.pub')])).stdout.split(' ')[1]!;
      const good = await probeSshAgent(sock);
      expect(good.check.status).to.equal('ok');
      expect(good.fingerprints).to.deep.equal([fp]);
    } finally {
      await stopProcess(agent);
    }
    const gone = (await probeSshAgent(sock)).check;
    expect(gone.status).to.equal('fail');
    expect(gone.fix).to.match(/start the agent/);
    expect((await probeSshAgent(undefined)).check.detail).to.match(/SSH_AUTH_SOCK is unset/);
  });

  it('local keys: usable, loose (skipped with the chmod) or missing', async () => {
    const home = tempDir('shed-dr');
    fs.mkdirSync(path.join(home, '.ssh'), { mode: 0o700 });
    expect(probeLocalKeys(home, []).check.status).to.equal('fail');
    await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', path.join(home, '.ssh', 'id_ed25519')]);
    expect(probeLocalKeys(home, []).check.status).to.equal('ok');
    fs.chmodSync(path.join(home, '.ssh', 'id_ed25519'), 0o644);
    const loose = probeLocalKeys(home, []).check;
    expect(loose.status).to.equal('fail');
    expect(loose.detail).to.match(/chmod 600/);
  });

  it('AWS profile resolves through the SDK, or names the profile and the fix', async () => {
    const aws = await startAwsHost();
    try {
      const good = await probeAwsProfile('default', { configFile: aws.configFile, credentialsFile: aws.credentialsFile });
      expect(good.status, good.detail).to.equal('ok');
      expect(good.detail).not.to.include('AKIA');
      const bad = await probeAwsProfile('nope', { configFile: aws.configFile, credentialsFile: aws.credentialsFile });
      expect(bad.status).to.equal('fail');
      expect(bad.fix).to.include('aws configure --profile nope');
    } finally {
      await aws.stop();
    }
  });

  it('Docker config and each helper on PATH', () => {
    const dir = tempDir('shed-dr');
    const file = path.join(dir, 'config.json');
    expect(probeDockerConfig(file).check.status).to.equal('warn');
    fs.writeFileSync(file, JSON.stringify({ credsStore: 'pass', credHelpers: { 'gcr.io': 'gcloud-missing' } }), { mode: 0o600 });
    const { check, helpers } = probeDockerConfig(file);
    expect(check.status).to.equal('ok');
    expect(helpers).to.deep.equal(['pass', 'gcloud-missing']);
    expect(probeDockerHelper('pass', '/usr/bin:/bin').status).to.equal('ok');
    const missing = probeDockerHelper('gcloud-missing', '/usr/bin:/bin');
    expect(missing.status).to.equal('fail');
    expect(missing.fix).to.match(/install docker-credential-gcloud-missing/);
    fs.writeFileSync(file, '{ not json', { mode: 0o600 });
    expect(probeDockerConfig(file).check.status).to.equal('fail');
  });

  it('shed-server reachable with the configured token; refused or down says what to fix', async () => {
    const dir = tempDir('shed-dr');
    const tokenFile = path.join(dir, 'token');
    fs.writeFileSync(tokenFile, 'right-token', { mode: 0o600 });
    const server = http.createServer((req, res) => {
      const ok = req.url === '/api/plugins/listeners' && req.headers.authorization === 'Bearer right-token';
      res.writeHead(ok ? 200 : 401, { 'content-type': 'application/json' }).end(ok ? '[]' : '{"error":{"code":"UNAUTHORIZED"}}');
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    try {
      expect((await probeShedServer({ url, token_file: tokenFile })).status).to.equal('ok');
      fs.writeFileSync(tokenFile, 'wrong', { mode: 0o600 });
      const refused = await probeShedServer({ url, token_file: tokenFile });
      expect(refused.status).to.equal('fail');
      expect(refused.fix).to.include(`check that server.token_file (${tokenFile}) holds the token`);
    } finally {
      await new Promise((r) => server.close(r));
    }
    const down = await probeShedServer({ url });
    expect(down.detail).to.include('ECONNREFUSED');
    expect(down.fix).to.equal('start shed-server, or fix server.url');
  });

  it('audit path and sockets dir: writable, creatable, or the fix', () => {
    const dir = tempDir('shed-dr');
    expect(probeWritable('audit log', path.join(dir, 'logs', 'audit.log'), 'file').detail).to.match(/will be created/);
    fs.writeFileSync(path.join(dir, 'file'), '');
    expect(probeWritable('sockets dir', path.join(dir, 'file'), 'dir').status).to.equal('fail');
  });

  it('git: runs, its credential helpers (listed, never asked), each source command (found, never run), plain http off loopback', async () => {
    const home = tempDir('shed-dr');
    const bin = path.join(home, 'bin');
    fs.mkdirSync(bin);
    const tokenCommand = path.join(bin, 'print-token');
    fs.writeFileSync(tokenCommand, `#!/bin/sh\ntouch '${path.join(home, 'ran')}'\necho tok\n`, { mode: 0o755 });
    const env = gitEnv(home);
    expect(await probeGit(env)).to.deep.include({ name: 'git', status: 'ok' });
    expect((await probeGit({ ...env, PATH: bin })).status).to.equal('fail');
    const none = await probeGitHelpers(env);
    expect(none).to.deep.include({ status: 'warn' });
    expect(none.fix).to.include('git config --global credential.helper');
    await run('git', ['config', '--global', 'credential.helper', 'store'], { env });
    await run('git', ['config', '--global', 'credential.https://git.example.com.helper', '!gh auth git-credential'], { env });
    expect(await probeGitHelpers(env)).to.deep.include({ status: 'ok', detail: 'git credential fill asks store; https://git.example.com !gh auth git-credential' });

    const file = path.join(home, 'extensions.yaml');
    fs.writeFileSync(file, [
      'version: 1',
      `direct: { sockets_dir: ${path.join(home, 'socks')} }`,
      `audit: { dir: ${path.join(home, 'audit')} }`,
      'defaults: { ssh: { enabled: false }, aws: { enabled: false } }',
      'sheds:',
      '  alpha:',
      '    git:',
      '      allowed: [github.com/acme/*, "http://git.lan:3000", "http://127.0.0.1:3000"]',
      `      sources: { github.com: { command: [${tokenCommand}] }, git.lan:3000: { command: [no-such-token-program] } }`,
      '',
    ].join('\n'), { mode: 0o600 });
    const checks = await runChecks(file, { env: { ...env, PATH: `${bin}:/usr/bin:/bin` }, home, timeoutMs: 5000 });
    expect(checks.map((c) => `${c.name}:${c.status}`)).to.deep.equal([
      'policy:ok', 'git:ok', 'git credential helpers:ok', 'git source github.com:ok', 'git source git.lan:3000:fail', 'git plain http:warn', 'sockets dir:ok', 'audit log:ok', 'approval gates:ok',
    ]);
    expect(checks.find((c) => c.name === 'git plain http')!.detail).to.equal('git.allowed names http://git.lan:3000 over plain http: their tokens cross the network unencrypted');
    expect(fs.existsSync(path.join(home, 'ran')), 'a source command was run').to.equal(false);
  });

  it('runs every check the policy calls for, one line each, and exits 1 on a failure', async () => {
    const home = tempDir('shed-dr');
    const file = path.join(home, 'extensions.yaml');
    fs.writeFileSync(file, [
      'version: 1',
      `direct: { sockets_dir: ${path.join(home, 'socks')} }`,
      `audit: { path: ${path.join(home, 'audit.log')} }`,
      'defaults:',
      '  ssh: { mode: agent-forward }',
      `  docker: { registries: [ghcr.io], config_path: ${path.join(home, 'docker.json')} }`,
      'sheds:',
      '  alpha: {}',
      '',
    ].join('\n'), { mode: 0o600 });
    const checks = await runChecks(file, { env: { PATH: '/usr/bin:/bin' }, home, timeoutMs: 2000 });
    expect(checks.map((c) => `${c.name}:${c.status}`)).to.deep.equal([
      'policy:ok', 'ssh agent:fail', 'docker config:warn', 'sockets dir:ok', 'audit log:ok', 'approval gates:ok',
    ]);
    const [cmd, args] = binCommand('shed-host-agent', ['doctor', '--config', file]);
    const res = await run(cmd, args, { env: { PATH: process.env.PATH, HOME: home } });
    expect(res.code).to.equal(1);
    expect(res.stdout).to.match(/^FAIL {2}ssh agent: no agent socket: SSH_AUTH_SOCK is unset .* -- fix: start ssh-agent/m);
    expect(res.stdout).to.match(/^1 check failed$/m);
  });
});
