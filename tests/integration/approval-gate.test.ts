/**
 * The approval gate and the abuse limits end to end: a guest's BusClient →
 * transport → dispatcher → a small handler that asks for approval like the
 * ssh and aws handlers do → the command gate, a real script in a temp dir.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { BusClient, BusError } from '../../guest-services/bus-client.js';
import { AuditLog, auditLogFiles } from '../../host-broker/audit/audit-log.js';
import { parseAuditLine, type AuditEntry } from '../../host-broker/audit/audit.js';
import { BrokerError, unknownOperation, type NamespaceHandler } from '../../host-broker/handler.js';
import { startShedBroker } from '../support/bus-emulator.js';
import { startDirectBroker, type Harness, type HarnessOptions, type TransportKind } from '../support/harness.js';
import { tempDir } from '../support/procs.js';

const FP = 'SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s';
const ROLE = 'arn:aws:iam::123456789012:role/dev';

/** Signs "with" the key named in the payload after asking for approval, as the ssh handler does. */
const sshHandler: NamespaceHandler = {
  namespace: 'ssh-agent',
  async handle(operation, _payload, ctx) {
    if (operation === 'status') return { connected: true };
    if (operation === 'list') return { keys: [] };
    if (operation !== 'sign') throw unknownOperation('ssh-agent', operation);
    ctx.detail = FP;
    await ctx.approve({ subject: FP, description: `sign with ${FP} (ED25519)` });
    return { format: 'ssh-ed25519', blob: 'c2lnbmF0dXJl', rest: '' };
  },
};

const awsHandler: NamespaceHandler = {
  namespace: 'aws-credentials',
  async handle(operation, _payload, ctx) {
    if (operation !== 'get_credentials') throw new BrokerError('UNKNOWN_OPERATION', 'no');
    ctx.detail = ROLE;
    await ctx.approve({ subject: ROLE, description: `credentials for ${ROLE}` });
    return { access_key_id: 'ASIATEST', expiration: new Date(Date.now() + 3600_000).toISOString() };
  },
};

function script(dir: string, name: string, body: string): string {
  const file = path.join(dir, name);
  fs.writeFileSync(file, `#!/bin/sh\n${body}\n`, { mode: 0o700 });
  return file;
}

function count(file: string): number {
  return fs.existsSync(file) ? fs.readFileSync(file, 'utf8').split('\n').filter(Boolean).length : 0;
}

/** Every shed's audit lines, shed by shed (alpha's file, then beta's), each in its order. */
function readAudit(dir: string): AuditEntry[] {
  return auditLogFiles(dir).flatMap((f) => fs.readFileSync(f, 'utf8').split('\n').filter(Boolean).map((l) => parseAuditLine(l)!));
}

async function busError(p: Promise<unknown>): Promise<BusError> {
  try {
    await p;
  } catch (err) {
    expect(err).to.be.instanceOf(BusError);
    return err as BusError;
  }
  throw new Error('expected the bus to answer an error');
}

for (const kind of ['direct', 'shed'] as TransportKind[]) {
  describe(`approval gate and limits end to end (${kind} transport)`, function () {
    this.timeout(20_000);
    let h: Harness | undefined;
    let dir: string;
    let prompts: string;
    let auditDir: string;

    beforeEach(() => {
      dir = tempDir('shed-gate');
      prompts = path.join(dir, 'prompts');
      auditDir = path.join(dir, 'audit');
    });
    afterEach(async () => {
      await h?.stop();
      h = undefined;
    });

    /** A broker with a gate script: approves while `dir/allow` exists, counts prompts, takes `delay` seconds. */
    async function start(approval: Record<string, unknown>, extra: Record<string, unknown> = {}, delay = '0.2') {
      const gate = script(dir, 'approve', `echo "$SHED_NAME $SHED_OPERATION $SHED_KEY_FINGERPRINT$SHED_ROLE_ARN" >> "${prompts}"; sleep ${delay}; [ -f "${dir}/allow" ]`);
      const policy = { version: 1, defaults: { approval: { gate: 'command', command: [gate], ...approval } }, sheds: { alpha: {}, beta: {} }, ...extra };
      const options: HarnessOptions = { policy, handlers: [sshHandler, awsHandler], audit: new AuditLog(auditDir) };
      h = await (kind === 'direct' ? startDirectBroker : startShedBroker)(options);
      return h;
    }
    const client = (shed: string) => new BusClient({ publishUrl: h!.publishUrl(shed), deadlineMs: 5000 });
    const sign = (shed: string) => client(shed).publish('ssh-agent', { operation: 'sign', public_key: 'AAAA', data: 'ZGF0YQ==', flags: 0 });

    it('approves through the command gate, then serves from the per-session approval across sheds', async () => {
      fs.writeFileSync(path.join(dir, 'allow'), '');
      await start({ policy: 'per-session', ttl: '1h' });
      expect(await sign('alpha')).to.deep.equal({ format: 'ssh-ed25519', blob: 'c2lnbmF0dXJl', rest: '' });
      expect(await sign('beta')).to.include({ format: 'ssh-ed25519' });
      expect(fs.readFileSync(prompts, 'utf8')).to.equal(`alpha sign ${FP}\n`);
      // Listing keys is not gated.
      await client('alpha').publish('ssh-agent', { operation: 'list' });
      expect(count(prompts)).to.equal(1);
      const audit = readAudit(auditDir);
      expect(audit.map((e) => [e.shed, e.op, e.result, e.approval, e.detail])).to.deep.equal([
        ['alpha', 'sign', 'ok', 'prompt', FP],
        ['alpha', 'list', 'ok', 'none', ''],
        ['beta', 'sign', 'ok', 'cached', FP],
      ]);
    });

    it('per-shed: each shed asks once', async () => {
      fs.writeFileSync(path.join(dir, 'allow'), '');
      await start({ policy: 'per-shed', ttl: '1h' });
      for (const shed of ['alpha', 'alpha', 'beta', 'beta']) await sign(shed);
      expect(fs.readFileSync(prompts, 'utf8').split('\n').filter(Boolean).map((l) => l.split(' ')[0])).to.deep.equal(['alpha', 'beta']);
      expect(readAudit(auditDir).map((e) => e.approval)).to.deep.equal(['prompt', 'cached', 'prompt', 'cached']);
    });

    it('answers APPROVAL_DENIED when the gate says no, and audits the denial', async () => {
      await start({ policy: 'per-session' });
      const err = await busError(sign('alpha'));
      expect(err.code).to.equal('APPROVAL_DENIED');
      expect(err.message).to.match(/approval gate refused sign with SHA256:\S+ \(ED25519\) for shed alpha/);
      const [entry] = readAudit(auditDir);
      expect(entry).to.include({ shed: 'alpha', ns: 'ssh-agent', op: 'sign', result: 'denied', approval: 'denied' });
      expect(entry!.detail).to.equal(`${FP} (approve exited 1)`);
      expect(h!.log.lines.join('\n')).to.match(/approval: denied ssh-agent sign for shed alpha/);
    });

    it('answers APPROVAL_DENIED when nobody answers within approval.timeout', async () => {
      fs.writeFileSync(path.join(dir, 'allow'), '');
      await start({ policy: 'per-request', timeout: '300ms' }, {}, '10');
      const started = Date.now();
      const err = await busError(sign('alpha'));
      expect(Date.now() - started).to.be.below(3000);
      expect(err.code).to.equal('APPROVAL_DENIED');
      expect(err.message).to.match(/nobody approved .* within 300ms/);
      expect(readAudit(auditDir)[0]).to.include({ result: 'denied', approval: 'denied' });
    });

    it('opens one prompt per shed for many concurrent requests; a shed never waits on another\'s prompt', async () => {
      fs.writeFileSync(path.join(dir, 'allow'), '');
      await start({ policy: 'per-session', ttl: '1h' }, {}, '0.5');
      const answers = await Promise.all(['alpha', 'beta', 'alpha', 'beta', 'alpha', 'beta'].map((s) => sign(s)));
      expect(answers).to.have.length(6);
      expect(fs.readFileSync(prompts, 'utf8').split('\n').filter(Boolean).map((l) => l.split(' ')[0]).sort()).to.deep.equal(['alpha', 'beta']);
      const approvals = readAudit(auditDir).map((e) => e.approval).sort();
      expect(approvals).to.deep.equal(['cached', 'cached', 'cached', 'cached', 'prompt', 'prompt']);
    });

    it('gates aws get_credentials only when applies_to lists it', async () => {
      fs.writeFileSync(path.join(dir, 'allow'), '');
      await start({ policy: 'per-request' });
      await client('alpha').publish('aws-credentials', { operation: 'get_credentials' });
      expect(count(prompts)).to.equal(0);
      await h!.setPolicy({ version: 1, defaults: { approval: { gate: 'command', command: [path.join(dir, 'approve')], policy: 'per-request', applies_to: ['ssh-agent', 'aws-credentials'] } }, sheds: { alpha: {}, beta: {} } });
      await client('alpha').publish('aws-credentials', { operation: 'get_credentials' });
      expect(fs.readFileSync(prompts, 'utf8')).to.equal(`alpha get_credentials ${ROLE}\n`);
      expect(readAudit(auditDir).map((e) => e.approval)).to.deep.equal(['none', 'prompt']);
    });

    it('answers RATE_LIMITED once the shed\'s bucket is empty, audited as denied, without touching other sheds', async () => {
      await start({ gate: 'none' }, { defaults: { limits: { ssh: { per_minute: 6, burst: 3 } } } });
      for (let i = 0; i < 3; i++) await client('alpha').publish('ssh-agent', { operation: 'list' });
      const err = await busError(client('alpha').publish('ssh-agent', { operation: 'list' }));
      expect(err.code).to.equal('RATE_LIMITED');
      expect(err.message).to.match(/shed alpha is over its ssh-agent rate limit \(6 per minute, burst 3\); retry in 10 s/);
      // ping and status are not counted; another shed has its own bucket.
      await client('alpha').ping('ssh-agent');
      await client('alpha').publish('ssh-agent', { operation: 'status' });
      await client('beta').publish('ssh-agent', { operation: 'list' });
      const audit = readAudit(auditDir);
      expect(audit.map((e) => [e.shed, e.result])).to.deep.equal([['alpha', 'ok'], ['alpha', 'ok'], ['alpha', 'ok'], ['alpha', 'denied'], ['beta', 'ok']]);
      expect(audit[3]!.detail).to.equal('rate limit ssh 6/min burst 3');
    });
  });
}

describe('approval gate at startup and reload', () => {
  it('refuses to start with a gate that cannot work here, naming the shed and the fix; a reload to one is refused', async () => {
    const dir = tempDir('shed-gate');
    const bad = { version: 1, sheds: { alpha: { approval: { gate: 'command', command: [path.join(dir, 'missing-approver')] } } } };
    let failure: Error | undefined;
    await startDirectBroker({ policy: bad, handlers: [sshHandler] }).catch((err: Error) => (failure = err));
    expect(failure?.message).to.match(/the approval gate cannot work on this host:\n {2}shed alpha: approval.command ".*missing-approver": .*missing-approver does not exist/);

    const good = script(dir, 'ok', 'exit 0');
    const h = await startDirectBroker({ policy: { version: 1, sheds: { alpha: { approval: { gate: 'command', command: [good] } } } }, handlers: [sshHandler] });
    try {
      const refused = await h.setPolicy(bad);
      expect(refused?.message).to.match(/missing-approver does not exist/);
      expect(h.log.lines.join('\n')).to.match(/policy reload refused, the previous policy stays in force/);
      const answer = await new BusClient({ publishUrl: h.publishUrl('alpha') }).publish('ssh-agent', { operation: 'sign' });
      expect(answer).to.include({ format: 'ssh-ed25519' });
    } finally {
      await h.stop();
    }
  });
});
