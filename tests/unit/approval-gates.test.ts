import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { Approvals, gated } from '../../host-broker/approval/approvals.js';
import { checkGate, CommandRunner, findExecutable, gateEnvironment, type GateRequest } from '../../host-broker/approval/gates.js';
import { BrokerError, type ApprovalOutcome } from '../../host-broker/handler.js';
import type { EffectiveApproval } from '../../host-broker/policy/effective.js';
import { policyFromDocument } from '../../host-broker/policy/policy.js';
import type { Namespace } from '../../protocol/envelope.js';
import { memoryLogger } from '../../protocol/log.js';
import { tempDir, waitFor } from '../support/procs.js';

const FP = 'SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s';
const SUBJECT = { subject: FP, description: `sign with ${FP} (ED25519)` };
const ROLE = 'arn:aws:iam::123456789012:role/dev';

function script(dir: string, name: string, body: string): string {
  const file = path.join(dir, name);
  fs.writeFileSync(file, `#!/bin/sh\n${body}\n`, { mode: 0o700 });
  return file;
}

function lines(file: string): string[] {
  return fs.existsSync(file) ? fs.readFileSync(file, 'utf8').split('\n').filter(Boolean) : [];
}

/** Running (a zombie waiting for its reaper is dead already). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    return fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.[0] !== 'Z';
  } catch {
    return false;
  }
}

async function rejection(p: Promise<unknown>): Promise<BrokerError> {
  try {
    await p;
  } catch (err) {
    expect(err).to.be.instanceOf(BrokerError);
    return err as BrokerError;
  }
  throw new Error('expected a rejection');
}

/** A policy whose sheds alpha, beta, gamma and delta share `approval`; gamma may override it. */
function setup(approval: Record<string, unknown>, options: { gamma?: Record<string, unknown> } = {}) {
  const policy = policyFromDocument({
    version: 1,
    defaults: { approval },
    sheds: { alpha: {}, beta: {}, gamma: { approval: options.gamma ?? {} }, delta: {} },
  });
  let now = 1_000_000;
  const log = memoryLogger();
  const approvals = new Approvals({ log, now: () => now });
  const ask = (shed: string, namespace: Namespace = 'ssh-agent', subject = SUBJECT): Promise<ApprovalOutcome> =>
    approvals.approver({ shed: policy.resolve(shed)!, namespace, operation: namespace === 'ssh-agent' ? 'sign' : 'get_credentials' }, subject);
  return { approvals, ask, log, policy, advance: (ms: number) => (now += ms) };
}

describe('approval: command gate', function () {
  this.timeout(10_000);
  let dir: string;
  beforeEach(() => {
    dir = tempDir('shed-appr');
  });

  it('approves on exit 0, with the request in its environment and its argv passed without a shell', async () => {
    const gate = script(dir, 'gate', `env | grep '^SHED_' | sort > "${dir}/env"; printf '%s' "$1" > "${dir}/arg"; exit 0`);
    const runner = new CommandRunner();
    const request: GateRequest = { shed: 'alpha', namespace: 'ssh-agent', operation: 'sign', subject: SUBJECT };
    const verdict = await runner.run([gate, '$(touch pwned); `touch pwned2`'], request, 5000);
    expect(verdict.approved).to.equal(true);
    const env = lines(path.join(dir, 'env'));
    expect(env).to.include.members([
      'SHED_NAME=alpha',
      'SHED_NAMESPACE=ssh-agent',
      'SHED_OPERATION=sign',
      `SHED_KEY_FINGERPRINT=${FP}`,
      `SHED_APPROVAL_SUBJECT=${FP}`,
      `SHED_APPROVAL_DESCRIPTION=sign with ${FP} (ED25519)`,
    ]);
    expect(env.join('\n')).not.to.include('SHED_ROLE_ARN');
    expect(fs.readFileSync(path.join(dir, 'arg'), 'utf8')).to.equal('$(touch pwned); `touch pwned2`');
    expect(fs.existsSync('pwned') || fs.existsSync(path.join(dir, 'pwned'))).to.equal(false);
  });

  it('names the role for aws-credentials and drops SHED_ variables inherited from the broker', () => {
    const env = gateEnvironment(
      { shed: 'alpha', namespace: 'aws-credentials', operation: 'get_credentials', subject: { subject: ROLE, description: `credentials for ${ROLE}\n` } },
      { PATH: '/usr/bin', SHED_KEY_FINGERPRINT: 'SHA256:stale', SHED_LOG_LEVEL: 'debug' },
    );
    expect(env).to.include({ SHED_ROLE_ARN: ROLE, SHED_NAMESPACE: 'aws-credentials', PATH: '/usr/bin', SHED_LOG_LEVEL: 'debug' });
    expect(env).not.to.have.property('SHED_KEY_FINGERPRINT');
    expect(env.SHED_APPROVAL_DESCRIPTION).not.to.match(/\n/);
  });

  it('denies on a non-zero exit, logging what the command said', async () => {
    const gate = script(dir, 'gate', 'echo "user clicked deny" >&2; exit 3');
    const { ask, log } = setup({ gate: 'command', command: [gate], policy: 'per-request' });
    const err = await rejection(ask('alpha'));
    expect(err.code).to.equal('APPROVAL_DENIED');
    expect(err.message).to.match(/approval gate refused sign with SHA256:.* for shed alpha; approve it when the host asks/);
    expect(err.options.detail).to.equal(`${FP} (gate exited 3)`);
    expect(log.lines.join('\n')).to.match(/approval: denied ssh-agent sign for shed alpha .*gate exited 3; it said: user clicked deny/);
  });

  it('denies on timeout, and kills the command and what it started', async () => {
    const gate = script(dir, 'gate', `echo $$ > "${dir}/self.pid"; sleep 30 & echo $! > "${dir}/child.pid"; wait`);
    const { ask } = setup({ gate: 'command', command: [gate], policy: 'per-request', timeout: '300ms' });
    const started = Date.now();
    const err = await rejection(ask('alpha'));
    expect(Date.now() - started).to.be.below(3000);
    expect(err.code).to.equal('APPROVAL_DENIED');
    expect(err.message).to.match(/^nobody approved sign with SHA256:\S+ \(ED25519\) for shed alpha on the host within 300ms; approve it when the host asks, then retry$/);
    expect(err.options.detail).to.match(/no answer within 300ms/);
    const self = Number(fs.readFileSync(path.join(dir, 'self.pid'), 'utf8'));
    const child = Number(fs.readFileSync(path.join(dir, 'child.pid'), 'utf8'));
    await waitFor(() => !alive(self) && !alive(child), 5000, 'the gate command and its child to be killed');
  });

  it('denies when the command cannot be run at all', async () => {
    const { ask } = setup({ gate: 'command', command: [path.join(dir, 'gone')], policy: 'per-request' });
    const err = await rejection(ask('alpha'));
    expect(err.code).to.equal('APPROVAL_DENIED');
    expect(err.options.detail).to.match(/could not run .*gone: ENOENT/);
  });

  it('denies what is waiting when the broker closes', async () => {
    const gate = script(dir, 'gate', 'sleep 30');
    const { ask, approvals } = setup({ gate: 'command', command: [gate], policy: 'per-request' });
    const pending = rejection(ask('alpha'));
    await new Promise((r) => setTimeout(r, 200));
    approvals.close();
    expect((await pending).code).to.equal('APPROVAL_DENIED');
  });
});

describe('approval: startup checks', () => {
  const base: EffectiveApproval = { gate: 'command', policy: 'per-session', ttl: 1000, timeout: 1000, applies_to: ['ssh-agent'] };

  it('accepts an executable by absolute path or on PATH, and refuses what cannot run, saying how to fix it', async () => {
    const dir = tempDir('shed-appr');
    const ok = script(dir, 'ok', 'exit 0');
    const plain = path.join(dir, 'plain');
    fs.writeFileSync(plain, 'exit 0\n', { mode: 0o600 });
    expect(await checkGate({ ...base, command: [ok] })).to.equal(undefined);
    expect(findExecutable('ok', `/nonexistent:${dir}`)).to.equal(undefined);
    expect(findExecutable('sh')).to.equal(undefined);
    expect(await checkGate({ ...base, command: [path.join(dir, 'missing')] })).to.match(/missing does not exist/);
    expect(await checkGate({ ...base, command: [plain] })).to.match(/not executable \(chmod \+x it\)/);
    expect(await checkGate({ ...base, command: ['./ok'] })).to.match(/use an absolute path/);
    expect(await checkGate({ ...base, command: ['no-such-approver-xyz'] })).to.match(/not found on PATH.*give its absolute path/);
    expect(await checkGate({ ...base, command: undefined })).to.match(/needs approval.command/);
    expect(await checkGate({ ...base, gate: 'none' })).to.equal(undefined);
  });

  it('refuses touchid where it cannot work, naming the alternatives', async function () {
    if (process.platform === 'darwin') this.skip();
    expect(await checkGate({ ...base, gate: 'touchid' })).to.match(/touchid" needs macOS \(this host is linux\); use gate: command/);
  });

  it('reports each shed whose gate cannot work', async () => {
    const { approvals } = setup({ gate: 'none' }, { gamma: { gate: 'command', command: ['/nonexistent/approve'] } });
    const policy = policyFromDocument({ version: 1, sheds: { alpha: {}, gamma: { approval: { gate: 'command', command: ['/nonexistent/approve'] } }, '*': { approval: { gate: 'touchid' } } } });
    const problems = await approvals.check(policy);
    expect(problems).to.have.length(process.platform === 'darwin' ? 1 : 2);
    expect(problems[0]).to.match(/^shed gamma: approval.command "\/nonexistent\/approve": \/nonexistent\/approve does not exist/);
    if (process.platform !== 'darwin') expect(problems[1]).to.match(/^shed "\*": approval gate "touchid" needs macOS/);
  });
});

describe('approval: policies', function () {
  this.timeout(10_000);
  let dir: string;
  let counter: string;
  let gate: string;
  beforeEach(() => {
    dir = tempDir('shed-appr');
    counter = path.join(dir, 'prompts');
    // Approves when the "allow" file exists; counts every prompt; takes a moment, like a human.
    gate = script(dir, 'gate', `echo "$SHED_NAME" >> "${counter}"; sleep 0.2; [ -f "${dir}/allow" ]`);
    fs.writeFileSync(path.join(dir, 'allow'), '');
  });

  it('does not gate without a gate, nor namespaces the gate does not cover', async () => {
    expect(await setup({ gate: 'none' }).ask('alpha')).to.equal('none');
    const { ask } = setup({ gate: 'command', command: [gate] });
    expect(await ask('alpha', 'aws-credentials', { subject: ROLE, description: ROLE })).to.equal('none');
    expect(await ask('alpha', 'docker-credentials', { subject: 'ghcr.io', description: 'ghcr.io' })).to.equal('none');
    expect(lines(counter)).to.be.empty;
    const covered = { gate: 'command', policy: 'per-request', ttl: 1000, timeout: 1000, command: [gate] } as EffectiveApproval;
    // A gate guards what applies_to lists, nothing else: not ssh when it lists only aws-credentials.
    expect(gated({ ...covered, applies_to: ['aws-credentials'] }, 'ssh-agent')).to.equal(false);
    expect(gated({ ...covered, applies_to: ['aws-credentials'] }, 'aws-credentials')).to.equal(true);
    expect(gated({ ...covered, applies_to: ['ssh-agent', 'aws-credentials'] }, 'aws-credentials')).to.equal(true);
  });

  it('gates aws get_credentials when applies_to lists aws-credentials', async () => {
    const { ask } = setup({ gate: 'command', command: [gate], applies_to: ['ssh-agent', 'aws-credentials'] });
    expect(await ask('alpha', 'aws-credentials', { subject: ROLE, description: `credentials for ${ROLE}` })).to.equal('prompt');
    // An ssh approval is not an aws one.
    expect(await ask('alpha', 'ssh-agent')).to.equal('prompt');
    expect(lines(counter)).to.have.length(2);
  });

  it('per-request asks every time', async () => {
    const { ask } = setup({ gate: 'command', command: [gate], policy: 'per-request' });
    expect(await ask('alpha')).to.equal('prompt');
    expect(await ask('alpha')).to.equal('prompt');
    expect(lines(counter)).to.deep.equal(['alpha', 'alpha']);
  });

  it('per-session: one approval serves every shed until the ttl runs out', async () => {
    const { ask, advance } = setup({ gate: 'command', command: [gate], policy: 'per-session', ttl: '1h' });
    expect(await ask('alpha')).to.equal('prompt');
    expect(await ask('beta')).to.equal('cached');
    advance(59 * 60_000);
    expect(await ask('gamma')).to.equal('cached');
    advance(60_000);
    expect(await ask('beta')).to.equal('prompt');
    expect(lines(counter)).to.deep.equal(['alpha', 'beta']);
  });

  it('per-session: the asking shed\'s shorter ttl wins', async () => {
    const { ask, advance } = setup({ gate: 'command', command: [gate], policy: 'per-session', ttl: '1h' }, { gamma: { ttl: '5m' } });
    expect(await ask('alpha')).to.equal('prompt');
    advance(10 * 60_000);
    expect(await ask('beta')).to.equal('cached');
    expect(await ask('gamma')).to.equal('prompt');
  });

  it('per-shed: an approval serves only its shed, until the ttl runs out', async () => {
    const { ask, advance } = setup({ gate: 'command', command: [gate], policy: 'per-shed', ttl: '10m' });
    expect(await ask('alpha')).to.equal('prompt');
    expect(await ask('alpha')).to.equal('cached');
    expect(await ask('beta')).to.equal('prompt');
    advance(10 * 60_000);
    expect(await ask('alpha')).to.equal('prompt');
    expect(lines(counter)).to.deep.equal(['alpha', 'beta', 'alpha']);
  });

  it('many concurrent requests of a shed wait for its one prompt; another shed never waits on it', async () => {
    const { ask } = setup({ gate: 'command', command: [gate], policy: 'per-session', ttl: '1h' });
    const outcomes = await Promise.all(['alpha', 'beta', 'gamma', 'alpha', 'beta', 'gamma', 'alpha', 'beta'].map((s) => ask(s)));
    expect(lines(counter).sort()).to.deep.equal(['alpha', 'beta', 'gamma']);
    expect(outcomes.filter((o) => o === 'prompt')).to.have.length(3);
    expect(outcomes.filter((o) => o === 'cached')).to.have.length(5);
    // Once given, a per-session approval serves a shed that has not asked yet.
    expect(await ask('delta')).to.equal('cached');
  });

  it('one shed\'s denial denies only its own requests: another shed asks for itself', async () => {
    // Denies alpha, approves everyone else.
    const picky = script(dir, 'picky', `echo "$SHED_NAME" >> "${counter}"; sleep 0.2; [ "$SHED_NAME" != alpha ]`);
    const { ask } = setup({ gate: 'command', command: [picky], policy: 'per-session', ttl: '1h' });
    const [a1, b1, a2, b2] = await Promise.allSettled([ask('alpha'), ask('beta'), ask('alpha'), ask('beta')]);
    expect([a1, a2].map((r) => r.status)).to.deep.equal(['rejected', 'rejected']);
    expect([b1, b2].map((r) => r.status === 'fulfilled' && r.value).sort()).to.deep.equal(['cached', 'prompt']);
  });

  it('tells the gate what approving allows: the shed, or every shed under per-session', async () => {
    const env = path.join(dir, 'env');
    const record = script(dir, 'record', `echo "$SHED_APPROVAL_SCOPE|$SHED_APPROVAL_SCOPE_TEXT|$SHED_APPROVAL_DESCRIPTION" >> "${env}"`);
    await setup({ gate: 'command', command: [record], policy: 'per-session', ttl: '2h' }).ask('alpha', 'ssh-agent', { subject: FP, description: 'an ssh login as "\u001b[2Jroot\u202e"' });
    await setup({ gate: 'command', command: [record], policy: 'per-shed', ttl: '10m' }).ask('beta');
    await setup({ gate: 'command', command: [record], policy: 'per-request' }).ask('gamma');
    expect(lines(env)).to.deep.equal([
      'session|approving allows every shed (not only alpha) for 2h|an ssh login as "\\x1b[2Jroot\\u{202e}"',
      `shed|approving allows shed beta for 10m|sign with ${FP} (ED25519)`,
      `request||sign with ${FP} (ED25519)`,
    ]);
  });

  it('a denial denies every waiter and is not remembered', async () => {
    fs.rmSync(path.join(dir, 'allow'));
    const { ask } = setup({ gate: 'command', command: [gate], policy: 'per-shed', ttl: '1h' });
    const denied = await Promise.all([1, 2, 3, 4, 5].map(() => rejection(ask('alpha'))));
    expect(denied.map((e) => e.code)).to.deep.equal(Array(5).fill('APPROVAL_DENIED'));
    expect(lines(counter)).to.have.length(1);
    fs.writeFileSync(path.join(dir, 'allow'), '');
    expect(await ask('alpha')).to.equal('prompt');
    expect(lines(counter)).to.have.length(2);
  });

  it('a different gate does not inherit an approval', async () => {
    const other = script(dir, 'other', `echo other >> "${counter}"`);
    const { ask } = setup({ gate: 'command', command: [gate], policy: 'per-session' }, { gamma: { command: [other] } });
    expect(await ask('alpha')).to.equal('prompt');
    expect(await ask('gamma')).to.equal('prompt');
    expect(lines(counter)).to.deep.equal(['alpha', 'other']);
  });
});
