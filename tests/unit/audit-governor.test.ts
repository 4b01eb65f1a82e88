import { expect } from 'chai';
import { MemoryAudit, SUMMARY_OP, type AuditEntry } from '../../host-broker/audit/audit.js';
import { AuditGovernor } from '../../host-broker/audit/governor.js';
import { memoryLogger } from '../../protocol/log.js';

let seq = 0;
function line(shed: string, result: AuditEntry['result'], op = 'sign'): AuditEntry & { code?: string } {
  seq += 1;
  return { ts: new Date().toISOString(), shed, ns: 'ssh-agent', op, result, detail: result === 'denied' ? 'rate limit ssh' : 'SHA256:x', approval: 'none', request_id: `r-${seq}`, ...(result === 'denied' ? { code: 'RATE_LIMITED' } : {}) };
}

describe('audit governor', () => {
  let now = 0;
  let perMinute = 10;
  const setup = () => {
    const sink = new MemoryAudit();
    const log = memoryLogger();
    const governor = new AuditGovernor(sink, { denialsPerMinute: () => perMinute, log, now: () => now });
    return { sink, log, governor };
  };
  beforeEach(() => {
    now = 1_000_000;
    perMinute = 10;
  });

  it('writes every credential served and every error, however many', async () => {
    const { sink, governor } = setup();
    for (let i = 0; i < 500; i++) await governor.write(line('alpha', i % 2 ? 'ok' : 'error'));
    expect(sink.entries).to.have.length(500);
    await governor.close();
    expect(sink.entries).to.have.length(500);
  });

  it('writes a shed\'s denials one by one up to its budget, then sums up the rest: lines and counts add up to every denial', async () => {
    const { sink, log, governor } = setup();
    for (let i = 0; i < 1000; i++) await governor.write(line('alpha', 'denied', i % 4 ? 'sign' : 'unknown "x"'));
    expect(sink.entries).to.have.length(10);
    expect(sink.entries[0]).not.to.have.property('code');
    await governor.flush();
    expect(sink.entries).to.have.length(11);
    const summary = sink.entries[10]!;
    expect(summary).to.include({ shed: 'alpha', ns: 'ssh-agent', op: SUMMARY_OP, result: 'denied', count: 990 });
    expect(summary.detail).to.match(/^990 more denied requests \(over audit\.denials_per_minute: 10\): \d+ RATE_LIMITED ssh-agent sign, \d+ RATE_LIMITED ssh-agent unknown "x"; first request r-\d+, last r-\d+$/);
    const written = sink.entries.reduce((n, e) => n + (e.count ?? 1), 0);
    expect(written).to.equal(1000);
    expect({ summarised: governor.summarised, summaryLines: governor.summaryLines, failed: governor.failedWrites }).to.deep.equal({ summarised: 990, summaryLines: 1, failed: 0 });
    expect(log.lines.filter((l) => /more than 10 denied requests a minute/.test(l))).to.have.length(1);
    // Nothing more to sum up: no empty summary.
    await governor.flush();
    expect(sink.entries).to.have.length(11);
    await governor.close();
  });

  it('keeps each shed\'s budget to itself, refills it with time, and follows a reload', async () => {
    const { sink, governor } = setup();
    for (let i = 0; i < 100; i++) await governor.write(line('noisy', 'denied'));
    for (let i = 0; i < 5; i++) await governor.write(line('quiet', 'denied'));
    expect(sink.entries.filter((e) => e.shed === 'quiet')).to.have.length(5);
    now += 30_000;
    for (let i = 0; i < 10; i++) await governor.write(line('noisy', 'denied'));
    expect(sink.entries.filter((e) => e.shed === 'noisy')).to.have.length(15);
    // A higher budget refills faster from the next denial on (then 6 s at 1000 a minute: 100 more).
    perMinute = 1000;
    await governor.write(line('noisy', 'denied'));
    now += 6_000;
    for (let i = 0; i < 100; i++) await governor.write(line('noisy', 'denied'));
    expect(sink.entries.filter((e) => e.shed === 'noisy')).to.have.length(115);
    await governor.close();
    const noisy = sink.entries.filter((e) => e.shed === 'noisy');
    expect(noisy.reduce((n, e) => n + (e.count ?? 1), 0)).to.equal(211);
  });

  it('names at most a few kinds in a summary and counts the rest as other', async () => {
    const { sink, governor } = setup();
    perMinute = 1;
    await governor.write(line('alpha', 'denied'));
    for (let i = 0; i < 40; i++) await governor.write(line('alpha', 'denied', `op-${i}`));
    await governor.close();
    const summary = sink.entries.at(-1)!;
    expect(summary.count).to.equal(40);
    expect(summary.detail.match(/RATE_LIMITED/g)).to.have.length(8);
    expect(summary.detail).to.match(/32 other/);
  });

  it('counts the lines its sink could not write, and when (for status)', async () => {
    const log = memoryLogger();
    let failing = true;
    const sink = {
      lastError: undefined as string | undefined,
      async write() {
        if (failing) {
          sink.lastError = 'ENOSPC';
          throw new Error('ENOSPC');
        }
        sink.lastError = undefined;
      },
    };
    const governor = new AuditGovernor(sink, { denialsPerMinute: () => 1, log, now: () => now });
    await governor.write(line('alpha', 'ok')).catch(() => undefined);
    await governor.write(line('alpha', 'denied')).catch(() => undefined);
    await governor.write(line('alpha', 'denied'));
    await governor.flush();
    expect(governor.failedWrites).to.equal(3);
    expect(governor.lastFailureAt).to.equal(new Date(now).toISOString());
    expect(governor.lastError).to.equal('ENOSPC');
    failing = false;
    await governor.write(line('alpha', 'ok'));
    expect(governor.failedWrites).to.equal(3);
    expect(governor.lastError).to.equal(undefined);
    await governor.close();
  });
});
