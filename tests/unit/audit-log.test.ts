import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { AuditFile, AuditLog, auditFiles, auditLogFiles, shedLogName, SYNC_INTERVAL_MS } from '../../host-broker/audit/audit-log.js';
import { isShedKey, shedKey } from '../../host-broker/origin.js';
import { AUDIT_FIELDS, auditLine, parseAuditLine, type AuditEntry } from '../../host-broker/audit/audit.js';
import { memoryLogger } from '../../protocol/log.js';
import { tempDir } from '../support/procs.js';

function entry(i: number, extra: Partial<AuditEntry> = {}): AuditEntry {
  return {
    ts: new Date(1_750_000_000_000 + i).toISOString(),
    shed: `shed-${i % 7}`,
    ns: 'ssh-agent',
    op: 'sign',
    result: 'ok',
    detail: `SHA256:${String(i).padStart(43, 'x')}`,
    approval: 'none',
    request_id: `req-${String(i).padStart(6, '0')}`,
    ...extra,
  };
}

function mode(file: string): number {
  return fs.statSync(file).mode & 0o777;
}

/** Every line of the log's files, oldest first; throws on a line that is not a whole entry. */
function readAll(file: string): AuditEntry[] {
  const out: AuditEntry[] = [];
  for (const f of auditFiles(file)) {
    const text = fs.readFileSync(f, 'utf8');
    expect(text.endsWith('\n'), `${f} ends with a newline`).to.equal(true);
    for (const line of text.slice(0, -1).split('\n')) {
      const e = parseAuditLine(line);
      if (!e) throw new Error(`torn or foreign line in ${f}: ${line.slice(0, 80)}`);
      out.push(e);
    }
  }
  return out;
}

describe('audit file', () => {
  let dir: string;
  beforeEach(() => {
    dir = tempDir('shed-audit');
  });

  it('writes the fields in a fixed order, in a 0600 file in a 0700 directory', async () => {
    const file = path.join(dir, 'new', 'deeper', 'audit.log');
    const log = new AuditFile(file);
    const scrambled = { request_id: 'r1', approval: 'prompt', detail: 'SHA256:abc', result: 'denied', op: 'sign', ns: 'ssh-agent', shed: 'alpha', ts: '2026-03-31T15:04:05.123Z' } as AuditEntry;
    await log.write(scrambled);
    await log.close();
    const text = fs.readFileSync(file, 'utf8');
    expect(text).to.equal('{"ts":"2026-03-31T15:04:05.123Z","shed":"alpha","ns":"ssh-agent","op":"sign","result":"denied","detail":"SHA256:abc","approval":"prompt","request_id":"r1"}\n');
    expect(Object.keys(JSON.parse(text))).to.deep.equal([...AUDIT_FIELDS]);
    expect(mode(file)).to.equal(0o600);
    expect(mode(path.dirname(file))).to.equal(0o700);
    expect(mode(path.join(dir, 'new'))).to.equal(0o700);
  });

  it('keeps a line one line of printable text whatever its fields hold, bounded, and tightens a loose existing file', async () => {
    const file = path.join(dir, 'audit.log');
    fs.writeFileSync(file, '', { mode: 0o644 });
    fs.chmodSync(file, 0o644);
    const log = new AuditFile(file);
    await log.write(entry(1, { detail: 'two\nlines\r\u2028and "quotes" \x1b[31m\u009b\u202e\\x1b', op: 'o'.repeat(10_000), ns: `n${'\x07'.repeat(100)}` }));
    await log.close();
    const text = fs.readFileSync(file, 'utf8');
    expect(text.split('\n')).to.have.length(2);
    // Nothing a terminal acts on, not even C1 controls that JSON leaves as they are.
    // eslint-disable-next-line no-control-regex -- the point: none of these may be in the file
    expect(text).not.to.match(/[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202e]/);
    const e = parseAuditLine(text.trim())!;
    expect(e.detail).to.equal('two\\x0alines\\x0d\\u{2028}and "quotes" \\x1b[31m\\x9b\\u{202e}\\\\x1b');
    expect(e.op).to.equal(`${'o'.repeat(64)}…`);
    expect(e.ns.length).to.be.at.most(64 * 4 + 1);
    expect(mode(file)).to.equal(0o600);
  });

  it('syncs the first line at once, then at most one datasync per interval, and the last lines before close', async () => {
    const file = path.join(dir, 'audit.log');
    const log = new AuditFile(file);
    await log.write(entry(0));
    expect(log.syncs, 'a line after a quiet spell is synced without waiting').to.equal(1);
    const started = performance.now();
    for (let i = 1; i <= 300; i++) await log.write(entry(i));
    const elapsed = performance.now() - started;
    // Back to back, each write could have had a sync of its own; the interval caps them.
    expect(log.syncs).to.be.at.most(2 + Math.ceil(elapsed / SYNC_INTERVAL_MS));
    const before = log.syncs;
    await log.close();
    expect(log.syncs, 'the lines written since the last sync are synced at close').to.equal(before + 1);
    expect(readAll(file)).to.have.length(301);
  });

  it('rotates by size under concurrent writes without losing, duplicating, reordering or tearing a line', async function () {
    this.timeout(20_000);
    const file = path.join(dir, 'audit.log');
    const maxBytes = 16 * 1024;
    const log = new AuditFile(file, { maxBytes, keep: 50 });
    const lineBytes = auditLine(entry(0)).length;
    const total = 1500;
    // Bursts of concurrent writers, some landing while a flush (and a rotation) is on the disk.
    const writes: Promise<void>[] = [];
    for (let burst = 0; burst < 10; burst++) {
      for (let i = 0; i < total / 10; i++) writes.push(log.write(entry(burst * (total / 10) + i)));
      await new Promise((r) => setTimeout(r, burst % 3));
    }
    await Promise.all(writes);
    await log.close();

    const entries = readAll(file);
    expect(entries.map((e) => e.request_id)).to.deep.equal(Array.from({ length: total }, (_, i) => entry(i).request_id));
    const files = auditFiles(file);
    expect(files.length).to.equal(Math.ceil((total * lineBytes) / (Math.floor(maxBytes / lineBytes) * lineBytes)));
    expect(log.rotations).to.equal(files.length - 1);
    for (const f of files) {
      expect(fs.statSync(f).size).to.be.at.most(maxBytes);
      expect(mode(f)).to.equal(0o600);
    }
  });

  it('keeps `keep` rotated files, dropping the oldest', async () => {
    const file = path.join(dir, 'audit.log');
    const log = new AuditFile(file, { maxBytes: 4096, keep: 2 });
    const perFile = Math.floor(4096 / auditLine(entry(0)).length);
    for (let i = 0; i < perFile * 5; i++) await log.write(entry(i));
    await log.close();
    expect(auditFiles(file)).to.deep.equal([`${file}.2`, `${file}.1`, file]);
    expect(fs.existsSync(`${file}.3`)).to.equal(false);
    const ids = readAll(file).map((e) => e.request_id);
    expect(ids).to.have.length(perFile * 3);
    expect(ids.at(-1)).to.equal(entry(perFile * 5 - 1).request_id);
    expect(ids[0]).to.equal(entry(perFile * 2).request_id);
  });

  it('bounds every line to fit the smallest max_bytes (4096), whatever its fields hold', async () => {
    const file = path.join(dir, 'audit.log');
    const log = new AuditFile(file, { maxBytes: 4096, keep: 5 });
    const huge = '\\\u202e'.repeat(10_000);
    const line = auditLine({ ts: huge, shed: huge, ns: huge, op: huge, result: 'denied', detail: huge, approval: 'none', request_id: huge });
    expect(Buffer.byteLength(line)).to.be.below(4096);
    await log.write(entry(1));
    await log.write(entry(2, { detail: 'd'.repeat(5000) }));
    await log.write(entry(3));
    await log.close();
    expect(readAll(file).map((e) => e.request_id)).to.deep.equal(['req-000001', 'req-000002', 'req-000003']);
    expect(auditFiles(file)).to.have.length(1);
  });

  it('starts on a fresh line after a torn last line', async () => {
    const file = path.join(dir, 'audit.log');
    fs.writeFileSync(file, `${auditLine(entry(1))}{"ts":"2026-03-3`, { mode: 0o600 });
    const log = new AuditFile(file);
    await log.write(entry(2));
    await log.close();
    const lines = fs.readFileSync(file, 'utf8').split('\n');
    expect(parseAuditLine(lines[0]!)!.request_id).to.equal('req-000001');
    expect(parseAuditLine(lines[1]!)).to.equal(undefined);
    expect(parseAuditLine(lines[2]!)!.request_id).to.equal('req-000002');
  });

  it('fails loudly, keeps the cause for status, and recovers once the path is writable', async () => {
    const blocker = path.join(dir, 'not-a-dir');
    fs.writeFileSync(blocker, '');
    const file = path.join(blocker, 'audit.log');
    const logger = memoryLogger();
    const log = new AuditFile(file, { log: logger });
    let failure: Error | undefined;
    await log.write(entry(1)).catch((err: Error) => (failure = err));
    expect(failure?.message).to.match(/^cannot write the audit log .*not-a-dir\/audit.log: .*(ENOTDIR|EEXIST)/);
    await log.write(entry(2)).catch(() => undefined);
    expect(log.lastError).to.match(/ENOTDIR|EEXIST/);
    expect(log.lastErrorAt).to.be.a('string');
    const errors = logger.lines.filter((l) => l.includes(' ERROR '));
    expect(errors).to.have.length(1);
    expect(errors[0]).to.match(/audit log .*not-a-dir\/audit.log cannot be written/);

    fs.rmSync(blocker);
    await log.write(entry(3));
    await log.close();
    expect(log.lastError).to.equal(undefined);
    expect(readAll(file).map((e) => e.request_id)).to.deep.equal(['req-000003']);
  });

  it('moves to a new path on configure', async () => {
    const first = path.join(dir, 'a.log');
    const second = path.join(dir, 'b', 'b.log');
    const log = new AuditFile(first);
    await log.write(entry(1));
    log.configure(second, { maxBytes: 0, keep: 1 });
    await log.write(entry(2));
    await log.close();
    expect(readAll(first).map((e) => e.request_id)).to.deep.equal(['req-000001']);
    expect(readAll(second).map((e) => e.request_id)).to.deep.equal(['req-000002']);
  });
});

describe('audit log: one file per shed', () => {
  let dir: string;
  beforeEach(() => {
    dir = tempDir('shed-audit');
  });

  it('writes each shed\'s lines to <dir>/<shed>.log, and what is not a shed name to _other.log', async () => {
    const log = new AuditLog(dir);
    await log.write(entry(1, { shed: 'alpha' }));
    await log.write(entry(2, { shed: 'beta' }));
    await log.write(entry(3, { shed: 'alpha' }));
    await log.write(entry(4, { shed: '../../etc/passwd' }));
    await log.close();
    expect(auditLogFiles(dir).map((f) => path.basename(f))).to.deep.equal(['_other.log', 'alpha.log', 'beta.log']);
    expect(readAll(log.fileOf('alpha')).map((e) => e.request_id)).to.deep.equal(['req-000001', 'req-000003']);
    expect(readAll(path.join(dir, '_other.log'))[0]!.shed).to.equal('../../etc/passwd');
    expect(mode(dir)).to.equal(0o700);
  });

  it('rotates a shed\'s file on its own: however much one shed writes, another keeps its history', async () => {
    const log = new AuditLog(dir, { maxBytes: 4096, keep: 2 });
    await log.write(entry(0, { shed: 'quiet', request_id: 'quiet-1' }));
    for (let i = 1; i <= 2000; i++) await log.write(entry(i, { shed: 'noisy' }));
    await log.write(entry(2001, { shed: 'quiet', request_id: 'quiet-2' }));
    await log.close();
    expect(readAll(log.fileOf('quiet')).map((e) => e.request_id)).to.deep.equal(['quiet-1', 'quiet-2']);
    // The noisy shed kept only what its own files hold: its newest lines.
    const noisy = readAll(log.fileOf('noisy'));
    expect(noisy.length).to.be.below(2000);
    expect(noisy.at(-1)!.request_id).to.equal('req-002000');
    expect(auditFiles(log.fileOf('noisy'))).to.have.length(3);
  });

  it('closes the files of idle sheds and reopens them on the next line', async () => {
    const log = new AuditLog(dir);
    await log.write(entry(1, { shed: 'alpha' }));
    const fds = () => fs.readdirSync('/proc/self/fd').length;
    const open = fds();
    log.releaseIdle(0);
    await new Promise((r) => setTimeout(r, 50));
    expect(fds()).to.equal(open - 1);
    await log.write(entry(2, { shed: 'alpha' }));
    await log.close();
    expect(readAll(log.fileOf('alpha'))).to.have.length(2);
  });

  it('moves every shed\'s file to a new directory on configure', async () => {
    const log = new AuditLog(path.join(dir, 'a'));
    await log.write(entry(1, { shed: 'alpha' }));
    log.configure(path.join(dir, 'b'), { maxBytes: 0, keep: 1 });
    await log.write(entry(2, { shed: 'alpha' }));
    await log.close();
    expect(readAll(path.join(dir, 'a', 'alpha.log'))).to.have.length(1);
    expect(readAll(path.join(dir, 'b', 'alpha.log'))).to.have.length(1);
  });
});

describe('audit lines and files by shed key', () => {
  it('writes `server` after `shed` and reads lines of earlier versions, which have none', () => {
    const entry: AuditEntry = { ts: new Date().toISOString(), shed: 'alice@mini2', server: 'mini2', ns: 'ssh-agent', op: 'list', result: 'ok', detail: '', approval: 'none', request_id: 'r' };
    const line = auditLine(entry);
    expect(Object.keys(JSON.parse(line))).to.deep.equal(['ts', 'shed', 'server', ...AUDIT_FIELDS.slice(2)]);
    expect(parseAuditLine(line)).to.deep.include({ shed: 'alice@mini2', server: 'mini2' });
    const { server: _, ...old } = entry;
    expect(parseAuditLine(auditLine({ ...old, shed: 'alice' }))).to.include({ shed: 'alice' }).and.not.have.property('server');
    expect(parseAuditLine(line.replace('"server":"mini2"', '"server":7'))).to.equal(undefined);
  });

  it('gives a named server\'s shed its own file, and anything else _other.log', () => {
    expect(shedLogName('alice')).to.equal('alice.log');
    expect(shedLogName('alice@mini2')).to.equal('alice@mini2.log');
    expect(shedKey({ name: 'alice', server: 'mini2' })).to.equal('alice@mini2');
    expect(shedKey({ name: 'alice' })).to.equal('alice');
    for (const bad of ['alice@', '@mini2', 'alice@mini2@x', 'alice@../x', 'Alice@mini2', '../alice']) {
      expect(isShedKey(bad), bad).to.equal(false);
      expect(shedLogName(bad)).to.equal('_other.log');
    }
  });
});
