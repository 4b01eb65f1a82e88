/**
 * A hostile shed-server (or a flood a guest pushes through a real one)
 * against the broker in its own process: requests by the ten thousand on a
 * stream, garbage events, data lines past any limit, re-deliveries of one
 * id, and a respond endpoint that is slow, refuses or fails. Throughout, a
 * shed on a direct socket (alice) is answered within 100 ms; the broker
 * keeps at most 8 answers on the wire, retries only what may succeed,
 * bounds what waits, logs each kind of trouble once a minute, and audits
 * every request it took.
 */
import { expect } from 'chai';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { v7 as uuidv7 } from 'uuid';
import { BusClient } from '../../guest-services/bus-client.js';
import { auditOf, expectUnharmed, probeWhile, procStats, startBrokerProcess, type BrokerProcess } from '../support/hostile.js';
import { tempDir, waitFor } from '../support/procs.js';
import { makeKey, startRealAgent, type RealAgent } from '../support/sshd.js';

type RespondMode = 'slow' | 'refuse' | 'fail';

/** shed-server as an attacker would run it: streams it writes at will, a respond endpoint that behaves as told. */
class HostileShedServer {
  readonly streams = new Map<string, http.ServerResponse>();
  /** Respond POSTs per request id. */
  readonly responds = new Map<string, number>();
  inFlight = 0;
  maxInFlight = 0;
  mode: RespondMode = 'slow';
  private server = http.createServer((req, res) => this.handle(req, res));
  url = '';

  async start(): Promise<void> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  async stop(): Promise<void> {
    for (const s of this.streams.values()) s.destroy();
    this.server.closeAllConnections();
    await new Promise((r) => this.server.close(r));
  }

  /** Write raw SSE text on a namespace's stream (once the broker has subscribed). */
  async send(namespace: string, text: string): Promise<void> {
    const res = await waitFor(() => this.streams.get(namespace), 20_000, `the ${namespace} subscription`);
    if (!res.write(text)) await new Promise((r) => res.once('drain', r));
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const m = /^\/api\/plugins\/listeners\/([^/]+)\/(messages|respond)$/.exec(req.url ?? '');
    if (!m) {
      res.writeHead(404).end();
      return;
    }
    const namespace = decodeURIComponent(m[1]!);
    if (m[2] === 'messages') {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.flushHeaders();
      this.streams.set(namespace, res);
      res.on('close', () => this.streams.get(namespace) === res && this.streams.delete(namespace));
      return;
    }
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString()));
    req.on('end', () => {
      const id = String((JSON.parse(body) as { in_reply_to?: string }).in_reply_to);
      this.responds.set(id, (this.responds.get(id) ?? 0) + 1);
      this.inFlight += 1;
      this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
      const answer = () => {
        this.inFlight -= 1;
        if (this.mode === 'refuse') res.writeHead(403, { 'content-type': 'application/json' }).end('{"error":{"code":"NOT_PENDING","message":"no such request"}}');
        else if (this.mode === 'fail') res.writeHead(500).end();
        else res.writeHead(204).end();
      };
      setTimeout(answer, this.mode === 'slow' ? 50 : 1);
    });
  }
}

function event(envelope: Record<string, unknown>): string {
  return `event: message\ndata: ${JSON.stringify(envelope)}\n\n`;
}

function request(shed: string, payload: Record<string, unknown>, id = uuidv7()): Record<string, unknown> {
  return { id, namespace: 'ssh-agent', type: 'request', final: true, timestamp: new Date().toISOString(), payload, shed: { name: shed, backend: 'vz', server: 'local' } };
}

describe('a hostile shed-server stream', function () {
  this.timeout(240_000);
  let server: HostileShedServer;
  let broker: BrokerProcess;
  let agent: RealAgent;
  let alice: BusClient;
  let baselineFds = 0;
  let baselineRss = 0;
  let baselineHeap = 0;
  /** Requests sent for mallory that the broker should have taken (unique ids). */
  let sentForMallory = 0;

  const aliceAnswers = async (): Promise<number> => {
    const t0 = performance.now();
    await alice.publish('ssh-agent', { operation: 'list' });
    return performance.now() - t0;
  };

  /** Alice asks every 25 ms while the attack runs, and at least 40 times (the broker works through a burst after it is sent). */
  async function whileAlice(attack: () => Promise<unknown>): Promise<number[]> {
    const run = await probeWhile(attack, aliceAnswers, 40);
    expectUnharmed(run, 'alice');
    return run.latencies;
  }

  before(async () => {
    const dir = tempDir('shed-adv-ss');
    const key = await makeKey(dir, 'id_ed25519', 'ed25519');
    agent = await startRealAgent(path.join(dir, 'agent.sock'), [key]);
    server = new HostileShedServer();
    await server.start();
    broker = await startBrokerProcess({
      version: 1,
      server: { url: server.url, namespaces: ['ssh-agent'] },
      direct: { enabled: true },
      defaults: { ssh: { mode: 'agent-forward', agent_socket: agent.sock } },
      sheds: { mallory: {}, alice: { limits: { ssh: { per_minute: 100_000, burst: 10_000 } } } },
    });
    alice = new BusClient({ publishUrl: `unix:${broker.socketPath('alice')}`, deadlineMs: 5000 });
    await waitFor(() => server.streams.has('ssh-agent'), 20_000, 'the subscription');
    for (let i = 0; i < 20; i++) await aliceAnswers();
    ({ fds: baselineFds, rssMb: baselineRss } = procStats(broker.pid));
    baselineHeap = await broker.heapUsedMb();
  });

  after(async () => {
    alice?.close();
    await broker?.stop();
    await server?.stop();
    await agent?.stop();
  });

  it('20,000 requests in one burst: at most 8 answers on the wire, a bounded backlog, alice unharmed', async () => {
    server.mode = 'slow';
    const burst = Array.from({ length: 20_000 }, (_, i) => event(request('mallory', { operation: i % 2 ? 'list' : `bogus-${i}` })));
    sentForMallory += burst.length;
    await whileAlice(async () => {
      for (let i = 0; i < burst.length; i += 500) await server.send('ssh-agent', burst.slice(i, i + 500).join(''));
      // Answers trickle out 8 at a time; the rest wait (1024 at most) or are dropped.
      await waitFor(() => /answers are waiting for .* dropped the answer/.test(broker.stderr()), 20_000, 'the backlog to fill');
    });
    expect(server.maxInFlight, 'answers on the wire at once').to.be.at.most(8);
    // Generous: how far the heap grows under load is V8's choice; the leak check is the heap's, at the end.
    expect(procStats(broker.pid).rssMb - baselineRss, 'RSS growth (MB)').to.be.below(256);
    // One line says answers were dropped (and how many, a minute later), not one per answer.
    expect(broker.stderr().split('\n').filter((l) => /dropped the answer/.test(l))).to.have.length(1);
    await waitFor(() => server.inFlight === 0 && server.responds.size > 1000, 60_000, 'the backlog to drain');
  });

  it('a respond endpoint that refuses (403) ends each request: no retry', async () => {
    server.mode = 'refuse';
    const ids = Array.from({ length: 200 }, () => uuidv7());
    sentForMallory += ids.length;
    await whileAlice(() => server.send('ssh-agent', ids.map((id) => event(request('mallory', { operation: 'list' }, id))).join('')));
    await waitFor(() => ids.every((id) => server.responds.has(id)), 20_000, 'every answer to be tried');
    await new Promise((r) => setTimeout(r, 1500));
    expect(ids.map((id) => server.responds.get(id))).to.deep.equal(ids.map(() => 1));
    expect(broker.stderr().split('\n').filter((l) => /holds no such pending request/.test(l))).to.have.length(1);
  });

  it('a respond endpoint that fails (500) is retried a few times, within seconds, and given up', async () => {
    server.mode = 'fail';
    const ids = Array.from({ length: 50 }, () => uuidv7());
    sentForMallory += ids.length;
    await server.send('ssh-agent', ids.map((id) => event(request('mallory', { operation: 'list' }, id))).join(''));
    await waitFor(() => /could not deliver the answer to shed mallory/.test(broker.stderr()), 20_000, 'the broker to give up');
    await waitFor(() => server.inFlight === 0, 20_000, 'the retries to end');
    await new Promise((r) => setTimeout(r, 4000));
    const tries = ids.map((id) => server.responds.get(id) ?? 0);
    expect(Math.max(...tries), 'tries per answer').to.be.at.most(5);
    expect(Math.min(...tries)).to.be.at.least(1);
  });

  it('garbage, a re-delivered id, and a data line past any limit: dropped, answered once, stream re-opened', async () => {
    server.mode = 'slow';
    const once = uuidv7();
    // Taken once; each of the 49 repeats is refused (DUPLICATE_REQUEST) and audited as such.
    sentForMallory += 50;
    const garbage = [
      'data: {not json\n\n',
      `data: ${JSON.stringify({ id: 'x', namespace: 'ssh-agent' })}\n\n`,
      `event: other\ndata: ${JSON.stringify(request('mallory', { operation: 'list' }))}\n\n`,
      ': keepalive\n'.repeat(10_000),
      event({ ...request('mallory', { operation: 'list' }), namespace: 'docker-credentials' }),
      ...Array.from({ length: 50 }, () => event(request('mallory', { operation: 'list' }, once))),
    ];
    await whileAlice(async () => {
      await server.send('ssh-agent', garbage.join(''));
      await waitFor(() => server.responds.get(once) === 1, 20_000, 'the re-delivered id to be answered');
      const before = server.streams.get('ssh-agent');
      // 3 MiB without a line end: more than any event may be.
      await server.send('ssh-agent', `data: ${'x'.repeat(3 * 1024 * 1024)}`);
      await waitFor(() => server.streams.get('ssh-agent') !== undefined && server.streams.get('ssh-agent') !== before, 30_000, 'the broker to drop the stream and subscribe again');
    });
    expect(server.responds.get(once)).to.equal(1);
    expect(broker.stderr()).to.match(/an event larger than/);
  });

  it('lets go of what the attacks held, and audited every request it took: lines and counts add up', async () => {
    await waitFor(() => server.inFlight === 0, 30_000, 'the last answers');
    // The answers' connections to shed-server stay open for reuse: 8 at most.
    await waitFor(() => procStats(broker.pid).fds <= baselineFds + 8, 30_000, `the broker's descriptors to come back to ${baselineFds} + 8`);
    expect(Math.min(await aliceAnswers(), await aliceAnswers(), await aliceAnswers())).to.be.below(100);
    // Nothing leaks: the heap in use (after a collection) is where it was before 20,000 requests.
    expect((await broker.heapUsedMb()) - baselineHeap, 'heap growth (MB)').to.be.below(8);
    await broker.stop();
    const lines = auditOf(broker.auditDir, 'mallory');
    const total = lines.reduce((n, l) => n + (typeof l.count === 'number' ? l.count : 1), 0);
    expect(total, 'requests audited, ok or denied').to.equal(sentForMallory);
    expect(lines.length).to.be.below(2000);
  });
});
