/**
 * The audit trail end to end: a line for every outcome, in the file, before
 * the answer; audit.required denying when the log cannot be written; and
 * `shed-host-agent audit` reading it back (in process, and the real binary
 * with --follow across rotations).
 */
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { BusClient, BusError } from '../../guest-services/bus-client.js';
import { AuditFile, AuditLog } from '../../host-broker/audit/audit-log.js';
import { AUDIT_FIELDS, parseAuditLine, type AuditEntry } from '../../host-broker/audit/audit.js';
import { auditCommand } from '../../host-broker/cli/audit.js';
import { BrokerError, unknownOperation, type NamespaceHandler } from '../../host-broker/handler.js';
import { memoryLogger } from '../../protocol/log.js';
import { uuidv7Time } from '../../protocol/messages.js';
import { startShedBroker } from '../support/bus-emulator.js';
import { startDirectBroker, type Harness, type TransportKind } from '../support/harness.js';
import { binCommand, capture, spawnTracked, stopProcess, tempDir, waitFor } from '../support/procs.js';

const SECRET = 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY-audit';

const handler: NamespaceHandler = {
  namespace: 'ssh-agent',
  operations: ['status', 'list', 'sign', 'refuse', 'explode'],
  async handle(operation, _payload, ctx) {
    switch (operation) {
      case 'status':
        return { connected: true };
      case 'list':
        ctx.detail = 'SHA256:listed';
        return { keys: [], secret: SECRET };
      case 'sign':
        ctx.detail = 'SHA256:signer';
        await ctx.approve({ subject: 'SHA256:signer', description: 'sign with SHA256:signer' });
        return { format: 'ssh-ed25519', blob: 'c2ln', rest: '' };
      case 'refuse':
        throw new BrokerError('KEY_NOT_ALLOWED', 'that key is not allowed for this shed', { detail: 'SHA256:other' });
      case 'explode':
        throw new Error(`backend leaked ${SECRET}`);
      default:
        throw unknownOperation('ssh-agent', operation);
    }
  },
};

async function outcome(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (err) {
    if (err instanceof BusError) return err.code;
    throw err;
  }
}

for (const kind of ['direct', 'shed'] as TransportKind[]) {
  describe(`audit trail end to end (${kind} transport)`, function () {
    this.timeout(20_000);
    let h: Harness | undefined;
    afterEach(async () => {
      await h?.stop();
      h = undefined;
    });

    it('writes one ordered line per credential operation and outcome, before the answer, never a secret', async () => {
      const dir = tempDir('shed-aud');
      const logDir = path.join(dir, 'log');
      const file = path.join(logDir, 'alpha.log');
      const deny = path.join(dir, 'deny');
      fs.writeFileSync(deny, '#!/bin/sh\nexit 1\n', { mode: 0o700 });
      const policy = {
        version: 1,
        defaults: { limits: { ssh: { per_minute: 60, burst: 6 } } },
        sheds: { alpha: { approval: { gate: 'command', command: [deny] } }, beta: { ssh: { enabled: false } } },
      };
      h = await (kind === 'direct' ? startDirectBroker : startShedBroker)({ policy, handlers: [handler], audit: new AuditLog(logDir) });
      const alpha = new BusClient({ publishUrl: h.publishUrl('alpha'), deadlineMs: 5000 });
      const beta = new BusClient({ publishUrl: h.publishUrl('beta'), deadlineMs: 5000 });
      const results: string[] = [];
      for (const op of ['list', 'refuse', 'explode', 'sign', 'status', 'list', 'list', 'list']) {
        results.push(await outcome(alpha.publish('ssh-agent', { operation: op })));
        // Written before the answer left: the line is there when the guest has its answer.
        if (op !== 'status') expect(fs.readFileSync(file, 'utf8').split('\n').filter(Boolean)).to.have.length(results.filter((_, i) => i !== 4).length);
      }
      await alpha.ping('ssh-agent');
      results.push(await outcome(beta.publish('ssh-agent', { operation: 'list' })));
      expect(results).to.deep.equal(['ok', 'KEY_NOT_ALLOWED', 'INTERNAL_ERROR', 'APPROVAL_DENIED', 'ok', 'ok', 'ok', 'RATE_LIMITED', 'NAMESPACE_DISABLED']);

      // One file per shed.
      const text = fs.readFileSync(file, 'utf8') + fs.readFileSync(path.join(logDir, 'beta.log'), 'utf8');
      expect(text).not.to.include(SECRET);
      expect(h.log.lines.join('\n')).not.to.include(SECRET);
      const lines = text.split('\n').filter(Boolean);
      // `server` follows `shed`: how the request arrived (the direct sockets, or the top-level server, `default`).
      const [ts, shedField, ...rest] = AUDIT_FIELDS;
      for (const line of lines) expect(Object.keys(JSON.parse(line))).to.deep.equal([ts, shedField, 'server', ...rest]);
      const entries = lines.map((l) => parseAuditLine(l)!);
      for (const e of entries) expect(e.server).to.equal(kind === 'direct' ? 'direct' : 'default');
      expect(entries.map((e) => [e.shed, e.ns, e.op, e.result, e.detail, e.approval])).to.deep.equal([
        ['alpha', 'ssh-agent', 'list', 'ok', 'SHA256:listed', 'none'],
        ['alpha', 'ssh-agent', 'refuse', 'denied', 'SHA256:other', 'none'],
        ['alpha', 'ssh-agent', 'explode', 'error', 'INTERNAL_ERROR', 'none'],
        ['alpha', 'ssh-agent', 'sign', 'denied', 'SHA256:signer (deny exited 1)', 'denied'],
        ['alpha', 'ssh-agent', 'list', 'ok', 'SHA256:listed', 'none'],
        ['alpha', 'ssh-agent', 'list', 'ok', 'SHA256:listed', 'none'],
        ['alpha', 'ssh-agent', 'list', 'denied', 'rate limit ssh 60/min burst 6', 'none'],
        ['beta', 'ssh-agent', 'list', 'denied', 'NAMESPACE_DISABLED', 'none'],
      ]);
      for (const e of entries) {
        expect(Math.abs(uuidv7Time(e.request_id)! - Date.now())).to.be.below(60_000);
        expect(Math.abs(Date.parse(e.ts) - Date.now())).to.be.below(60_000);
      }
      expect(new Set(entries.map((e) => e.request_id)).size).to.equal(entries.length);
      expect(fs.statSync(file).mode & 0o777).to.equal(0o600);
    });

    it('with audit.required, denies AUDIT_UNAVAILABLE while the log cannot be written, and serves again once it can', async () => {
      const dir = tempDir('shed-aud');
      const blocker = path.join(dir, 'blocked');
      fs.writeFileSync(blocker, '');
      const policy = { version: 1, audit: { required: true }, sheds: { alpha: {} } };
      const log = memoryLogger('shed-host-agent');
      h = await (kind === 'direct' ? startDirectBroker : startShedBroker)({ policy, handlers: [handler], log, audit: new AuditLog(path.join(blocker, 'audit'), { log }) });
      const alpha = new BusClient({ publishUrl: h.publishUrl('alpha'), deadlineMs: 5000 });
      const err = await alpha.publish('ssh-agent', { operation: 'list' }).catch((e: BusError) => e);
      expect(err).to.be.instanceOf(BusError);
      expect((err as BusError).code).to.equal('AUDIT_UNAVAILABLE');
      expect((err as BusError).message).to.match(/cannot write its audit log and policy requires it/);
      expect(JSON.stringify(err)).not.to.include(SECRET);
      expect(h.broker.auditError).to.match(/EEXIST|ENOTDIR/);
      expect(h.log.lines.join('\n')).to.match(/ERROR audit log .*blocked\/audit\/alpha.log cannot be written/);

      fs.rmSync(blocker);
      expect(await alpha.publish('ssh-agent', { operation: 'list' })).to.include({ secret: SECRET });
      expect(h.broker.auditError).to.equal(undefined);
      expect(fs.readFileSync(path.join(blocker, 'audit', 'alpha.log'), 'utf8').split('\n').filter(Boolean)).to.have.length(1);

      // Without `required`, a failing log is loud but the request is served.
      fs.rmSync(blocker, { recursive: true });
      fs.writeFileSync(blocker, '');
      await h.setPolicy({ version: 1, sheds: { alpha: {} } });
      expect(await alpha.publish('ssh-agent', { operation: 'list' })).to.include({ secret: SECRET });
      expect(h.log.lines.join('\n')).to.match(/audit log write failed, ssh-agent list for shed alpha is unaudited/);
    });
  });
}

describe('shed-host-agent audit', function () {
  this.timeout(30_000);
  const now = Date.now();
  const at = (minutesAgo: number) => new Date(now - minutesAgo * 60_000).toISOString();
  const entries: AuditEntry[] = [
    { ts: at(120), shed: 'alpha', ns: 'ssh-agent', op: 'sign', result: 'ok', detail: 'SHA256:old', approval: 'prompt', request_id: 'r-1' },
    { ts: at(30), shed: 'beta', ns: 'aws-credentials', op: 'get_credentials', result: 'denied', detail: 'ROLE_NOT_FOUND', approval: 'none', request_id: 'r-2' },
    { ts: at(1), shed: 'alpha', ns: 'docker-credentials', op: 'get', result: 'ok', detail: 'ghcr.io', approval: 'none', request_id: 'r-3' },
  ];

  async function writeLog(file: string, list: AuditEntry[], options = {}): Promise<void> {
    const log = new AuditFile(file, options);
    for (const e of list) await log.write(e);
    await log.close();
  }

  async function cli(argv: string[]) {
    let stdout = '';
    let stderr = '';
    const code = await auditCommand(argv, { stdout: (t) => (stdout += t), stderr: (t) => (stderr += t), now: () => now });
    return { code, stdout, stderr };
  }

  it('prints a readable timeline, filtered by shed and time, across rotated files', async () => {
    const dir = tempDir('shed-cli');
    const file = path.join(dir, 'audit.log');
    // Rotate after each line: the three entries end up in three files.
    await writeLog(file, entries, { maxBytes: 200, keep: 5 });
    expect(fs.existsSync(`${file}.2`)).to.equal(true);

    const all = await cli(['--file', file]);
    expect(all.code).to.equal(0);
    expect(all.stdout.trim().split('\n')).to.deep.equal([
      `${entries[0]!.ts.replace('T', ' ')}  alpha  ssh-agent sign  ok  SHA256:old  approval=prompt  req r-1`,
      `${entries[1]!.ts.replace('T', ' ')}  beta  aws-credentials get_credentials  DENIED  ROLE_NOT_FOUND  req r-2`,
      `${entries[2]!.ts.replace('T', ' ')}  alpha  docker-credentials get  ok  ghcr.io  req r-3`,
    ]);
    expect((await cli(['--file', file, '--shed', 'alpha'])).stdout).to.match(/r-1[^]*r-3/).and.not.to.include('r-2');
    expect((await cli(['--file', file, '--since', '1h'])).stdout.trim().split('\n').map((l) => l.split(' req ')[1])).to.deep.equal(['r-2', 'r-3']);
    expect((await cli(['--file', file, '--shed', 'alpha', '--since', at(60)])).stdout.trim().split('\n')).to.have.length(1);
    const json = await cli(['--file', file, '--json', '--since', '45m']);
    expect(json.stdout.trim().split('\n').map((l) => JSON.parse(l).request_id)).to.deep.equal(['r-2', 'r-3']);
  });

  it('finds the per-shed logs through the policy, merges them into one timeline, and says what is wrong when it cannot', async () => {
    const dir = tempDir('shed-cli');
    const auditDir = path.join(dir, 'state', 'audit');
    const config = path.join(dir, 'extensions.yaml');
    fs.writeFileSync(config, `version: 1\naudit:\n  dir: ${auditDir}\nsheds:\n  alpha: {}\n`, { mode: 0o600 });

    const missing = await cli(['--config', config]);
    expect(missing.code).to.equal(1);
    expect(missing.stderr).to.match(/no audit log in .*state\/audit yet; the broker writes it on the first credential request/);

    const log = new AuditLog(auditDir);
    for (const e of entries) await log.write(e);
    await log.close();
    fs.appendFileSync(path.join(auditDir, 'beta.log'), 'not json\n');
    const all = await cli(['--config', config]);
    expect(all.stdout.trim().split('\n').map((l) => l.split(' req ')[1])).to.deep.equal(['r-1', 'r-2', 'r-3']);
    const ok = await cli(['--config', config, '--shed', 'beta']);
    expect(ok.code).to.equal(0);
    expect(ok.stdout).to.include('req r-2').and.not.to.include('r-1');
    expect(ok.stderr).to.equal('shed-host-agent audit: skipped 1 line that is not an audit entry\n');
    expect((await cli(['--dir', auditDir, '--shed', 'alpha'])).stdout.trim().split('\n')).to.have.length(2);

    const usage = await cli(['--file', path.join(auditDir, 'alpha.log'), '--since', 'yesterday']);
    expect(usage.code).to.equal(2);
    expect(usage.stderr).to.match(/--since "yesterday" is neither a duration/);
    expect((await cli(['--bogus'])).code).to.equal(2);
    const badPolicy = await cli(['--config', path.join(dir, 'nope.yaml')]);
    expect(badPolicy.code).to.equal(1);
    expect(badPolicy.stderr).to.match(/cannot read the policy to find the audit log[^]*\n\(pass --dir DIR or --file FILE/);
  });

  it('shows what a guest wrote escaped: no forged line, no escape sequence reaches the terminal', async () => {
    const dir = tempDir('shed-cli');
    const file = path.join(dir, 'hostile.log');
    // As an older version, or another writer, might have left it: raw controls in the JSON.
    const forged = { ...entries[0]!, op: 'sign\n2026-01-01 00:00:00.000Z  beta  ssh-agent sign  ok', detail: '\x1b]0;owned\x07\x1b[2J\u009b31m\u202egnp.exe', request_id: 'r-\r-9' };
    fs.writeFileSync(file, `${JSON.stringify(forged)}\n`, { mode: 0o600 });
    const out = await cli(['--file', file]);
    expect(out.code).to.equal(0);
    expect(out.stdout.split('\n').filter(Boolean)).to.have.length(1);
    // eslint-disable-next-line no-control-regex -- the point: none may reach the terminal
    expect(out.stdout.replace(/\n$/, '')).not.to.match(/[\x00-\x1f\x7f-\x9f\u202e]/);
    expect(out.stdout).to.include('sign\\x0a2026-01-01').and.include('\\x1b]0;owned\\x07').and.include('\\u{202e}');
  });

  it('--follow picks up a shed whose log appears while it runs', async () => {
    const dir = tempDir('shed-cli');
    const log = new AuditLog(dir);
    await log.write(entries[0]!);
    const stop = new AbortController();
    let stdout = '';
    const following = auditCommand(['--dir', dir, '--follow', '--json'], { stdout: (t) => (stdout += t), stderr: () => undefined, signal: stop.signal, pollMs: 50 });
    await waitFor(() => stdout.includes('"r-1"'), 5000, 'the existing line');
    await log.write({ ...entries[1]!, shed: 'gamma', request_id: 'g-1' });
    await log.write({ ...entries[2]!, request_id: 'a-2' });
    await log.close();
    await waitFor(() => stdout.includes('"g-1"') && stdout.includes('"a-2"'), 5000, 'the new lines');
    stop.abort();
    expect(await following).to.equal(0);
  });

  it('--follow misses no line when several rotations happen between two looks', async () => {
    const dir = tempDir('shed-cli');
    const file = path.join(dir, 'audit.log');
    await writeLog(file, entries.slice(0, 1));
    const stop = new AbortController();
    let stdout = '';
    const following = auditCommand(['--file', file, '--follow', '--json'], { stdout: (t) => (stdout += t), stderr: () => undefined, signal: stop.signal, pollMs: 400 });
    await waitFor(() => stdout.includes('"r-1"'), 5000, 'the existing line');
    const log = new AuditFile(file, { maxBytes: 4096, keep: 20 });
    const ids = Array.from({ length: 120 }, (_, i) => `g-${i}`);
    await Promise.all(ids.map((id) => log.write({ ...entries[2]!, request_id: id })));
    await log.close();
    expect(log.rotations).to.be.at.least(3);
    await waitFor(() => stdout.includes('"g-119"'), 5000, 'the last line');
    stop.abort();
    expect(await following).to.equal(0);
    expect(stdout.trim().split('\n').map((l) => JSON.parse(l).request_id)).to.deep.equal(['r-1', ...ids]);
  });

  it('runs as a shed-host-agent command and follows the log across rotations until stopped', async () => {
    const dir = tempDir('shed-cli');
    const file = path.join(dir, 'audit.log');
    await writeLog(file, entries.slice(0, 1));

    const [cmd, args] = binCommand('shed-host-agent', ['audit', '--file', file, '--follow', '--shed', 'alpha', '--json']);
    const child = spawnTracked(cmd, args);
    const out = capture(child);
    try {
      await waitFor(() => out.stdout().includes('"r-1"'), 15_000, 'the existing line');
      // Enough lines to rotate the 4 KiB log several times while it is followed.
      const log = new AuditFile(file, { maxBytes: 4096, keep: 20 });
      const fresh: AuditEntry[] = [];
      for (let i = 0; i < 90; i++) {
        const e: AuditEntry = { ...entries[2]!, ts: new Date().toISOString(), shed: i % 3 === 0 ? 'beta' : 'alpha', request_id: `f-${i}` };
        fresh.push(e);
        await log.write(e);
        if (i % 10 === 0) await new Promise((r) => setTimeout(r, 30));
      }
      await log.close();
      expect(log.rotations).to.be.at.least(2);
      const want = ['r-1', ...fresh.filter((e) => e.shed === 'alpha').map((e) => e.request_id)];
      await waitFor(() => out.stdout().includes('"f-89"'), 10_000, 'the last followed line');
      const seen = out.stdout().trim().split('\n').map((l) => JSON.parse(l).request_id);
      expect(seen).to.deep.equal(want);
      expect(await stopProcess(child)).to.equal(0);
    } finally {
      await stopProcess(child);
    }
  });
});
