/**
 * What re-delivery opens to a hostile guest (which can make its own request
 * ids: it controls the VM, shed-agent included) and to whoever can touch the
 * broker's state directory: the hour-long acceptance window and the memory
 * of answered ids on disk. Driven through the real broker (dispatcher,
 * turns, limits, dedupe, persistence) by a transport that hands it what a
 * shed server would.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { v7 as uuidv7 } from 'uuid';
import { MAX_ENTRIES } from '../../host-broker/answered-ids.js';
import { MemoryAudit } from '../../host-broker/audit/audit.js';
import { Broker } from '../../host-broker/broker.js';
import type { NamespaceHandler, RequestContext } from '../../host-broker/handler.js';
import { policyFromDocument } from '../../host-broker/policy/policy.js';
import type { RequestSink, Transport } from '../../host-broker/transports/transport.js';
import type { Envelope, Payload } from '../../protocol/envelope.js';
import { memoryLogger } from '../../protocol/log.js';
import { nowTimestamp } from '../../protocol/messages.js';
import { tempDir, waitFor } from '../support/procs.js';

/** Hands the broker envelopes as shed-server would (shed named by the transport), and collects the answers. */
class FeedTransport implements Transport {
  readonly description = 'test feed';
  readonly answers = new Map<string, Payload[]>();
  private sink: RequestSink | undefined;

  async start(sink: RequestSink): Promise<void> {
    this.sink = sink;
  }

  async stop(): Promise<void> {
    this.sink = undefined;
  }

  state(): Record<string, string> {
    return { 'ssh-agent': this.sink ? 'connected' : 'stopped' };
  }

  send(shed: string, id: string, echo: unknown = null): void {
    const envelope: Envelope = { id, namespace: 'ssh-agent', type: 'request', final: true, timestamp: nowTimestamp(), payload: { operation: 'list', echo: echo as Payload[string] }, shed: { name: shed } };
    this.sink?.(envelope, shed, async (payload) => {
      this.answers.set(id, [...(this.answers.get(id) ?? []), payload]);
    });
  }
}

function counter(): NamespaceHandler & { runs: number } {
  const h = {
    namespace: 'ssh-agent' as const,
    runs: 0,
    async handle(_op: string, payload: Payload, ctx: RequestContext) {
      h.runs += 1;
      return { shed: ctx.shed, echo: payload.echo ?? null };
    },
  };
  return h;
}

describe('re-delivery against a hostile guest and a tampered state directory', function () {
  this.timeout(120_000);
  const brokers: Broker[] = [];
  afterEach(async () => {
    for (const b of brokers.splice(0)) await b.stop();
  });

  async function start(stateDir: string, handler = counter()) {
    const feed = new FeedTransport();
    const log = memoryLogger('shed-host-agent');
    const broker = new Broker({
      loadPolicy: () => policyFromDocument({ version: 1, direct: { enabled: false }, sheds: { alpha: { limits: { ssh: { per_minute: 1_000_000, burst: 100_000 } } }, bob: {} } }),
      log,
      audit: new MemoryAudit(),
      handlers: [handler],
      transports: [feed],
      stateDir,
    });
    brokers.push(broker);
    await broker.start();
    return { broker, feed, log, handler };
  }

  it('ids dated past the window or ahead of the clock are refused; within the hour accepted once, also after a restart', async () => {
    const stateDir = path.join(tempDir('shed-adv'), 'state');
    const a = await start(stateDir);
    const at = (offsetMs: number) => uuidv7({ msecs: Date.now() + offsetMs });
    const stale = at(-71 * 60_000);
    const ahead = at(2 * 60_000);
    const old = at(-65 * 60_000);
    for (const id of [stale, ahead, old, old]) a.feed.send('alpha', id, id);
    await waitFor(() => a.feed.answers.size === 3, 5000, 'the answers');
    expect(a.feed.answers.get(stale)![0]).to.deep.include({ code: 'DUPLICATE_REQUEST' });
    expect(a.feed.answers.get(ahead)![0]).to.deep.include({ code: 'INVALID_REQUEST' });
    expect(a.feed.answers.get(old)).to.deep.equal([{ shed: 'alpha', echo: old }]);
    brokers.splice(0, 1);
    await a.broker.stop();

    // The same id again after a restart (a replay, or shed-server's re-delivery): not served.
    const b = await start(stateDir);
    b.feed.send('alpha', old, old);
    const fresh = at(0);
    b.feed.send('alpha', fresh, 'fresh');
    await waitFor(() => b.feed.answers.size === 1, 5000, 'the fresh answer');
    await new Promise((r) => setTimeout(r, 100));
    expect([...b.feed.answers.keys()]).to.deep.equal([fresh]);
    expect(b.handler.runs).to.equal(1);
    expect(b.log.lines.join('\n')).to.include(`request ${old} on ssh-agent seen already`);
  });

  it('a flood of unique ids keeps the memory on disk bounded, and the ids it keeps are still refused after a restart', async () => {
    const stateDir = path.join(tempDir('shed-adv'), 'state');
    const a = await start(stateDir);
    const ids: string[] = [];
    const total = MAX_ENTRIES + 2000;
    for (let i = 0; i < total; i++) {
      const id = uuidv7();
      ids.push(id);
      a.feed.send('alpha', id);
      // Let the broker's turns run now and then, as a real stream would.
      if (i % 200 === 199) await new Promise((r) => setImmediate(r));
    }
    await waitFor(() => a.feed.answers.size === total, 60_000, 'every request to be answered or refused');
    brokers.splice(0, 1);
    await a.broker.stop();
    const file = path.join(stateDir, 'answered-ids.json');
    const st = fs.statSync(file);
    expect(st.mode & 0o777).to.equal(0o600);
    expect(st.size).to.be.below(1024 * 1024);
    const doc = JSON.parse(fs.readFileSync(file, 'utf8')) as { ids: unknown[] };
    expect(doc.ids).to.have.length(MAX_ENTRIES);

    const b = await start(stateDir);
    const newest = ids.slice(-5);
    for (const id of newest) b.feed.send('alpha', id);
    // Another shed is not affected by alpha's flood.
    const bobs = uuidv7();
    b.feed.send('bob', bobs);
    await waitFor(() => b.feed.answers.has(bobs), 5000, 'bob');
    await new Promise((r) => setTimeout(r, 100));
    expect(newest.filter((id) => b.feed.answers.has(id))).to.deep.equal([]);
    expect(b.handler.runs).to.equal(1);
  });

  it('a state file that was tampered with (garbage, huge, a symlink) is not trusted, and not written through', async () => {
    const root = tempDir('shed-adv');
    const stateDir = path.join(root, 'state');
    fs.mkdirSync(stateDir, { mode: 0o700 });
    const file = path.join(stateDir, 'answered-ids.json');
    const victim = path.join(root, 'victim.txt');
    fs.writeFileSync(victim, 'precious\n');
    fs.symlinkSync(victim, file);
    const a = await start(stateDir);
    expect(a.log.lines.join('\n')).to.match(/WARN the memory of answered requests .* cannot be read \(it is not a regular file\): starting with none/);
    a.feed.send('alpha', uuidv7());
    await waitFor(() => a.feed.answers.size === 1, 5000, 'the answer');
    brokers.splice(0, 1);
    await a.broker.stop();
    expect(fs.readFileSync(victim, 'utf8')).to.equal('precious\n');
    expect(fs.lstatSync(file).isFile()).to.equal(true);

    fs.writeFileSync(file, `{"version":1,"ids":[${'["alpha","x",1],'.repeat(300_000)}["alpha","x",1]]}`);
    const b = await start(stateDir);
    expect(b.log.lines.join('\n')).to.match(/cannot be read \(it is \d+ bytes, larger than this broker writes\): starting with none/);
    const c = b;
    c.feed.send('alpha', uuidv7());
    await waitFor(() => c.feed.answers.size === 1, 5000, 'the answer');
  });
});
