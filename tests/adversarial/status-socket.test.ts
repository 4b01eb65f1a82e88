/**
 * A hostile client on the daemon's status socket (the real `shed-host-agent
 * run` in its own process): junk, silence, a trickled request, a request
 * whose answer is never read, megabytes of garbage, more connections than it
 * takes, and status asked as fast as a loop can. Each must be dropped within
 * the socket's bounds (1 s, 8 clients), a well-formed `status` must still be
 * answered afterwards, a shed on its direct socket must be answered within
 * 100 ms throughout, and the daemon's descriptors must come back to their
 * baseline. The socket is its owner's only (0600), so this is the owner's
 * own scripts gone wrong, or malware running as them: it must not cost the
 * sheds anything.
 */
import { expect } from 'chai';
import net from 'node:net';
import path from 'node:path';
import { BusClient } from '../../guest-services/bus-client.js';
import { STATUS_REQUEST, STATUS_SOCKET_NAME } from '../../host-broker/status/answer.js';
import { queryStatus } from '../../host-broker/status/client.js';
import { DEFAULT_MAX_STATUS_CLIENTS, DEFAULT_STATUS_TIMEOUT_MS } from '../../host-broker/status/server.js';
import { expectUnharmed, probeWhile, procStats, prng, startBrokerProcess, type BrokerProcess } from '../support/hostile.js';
import { waitFor } from '../support/procs.js';

const SEED = Number(process.env.SHED_FUZZ_SEED ?? 0x57a705);

interface Outcome {
  /** Milliseconds from connect until the daemon closed the connection. */
  closedAfterMs: number;
  received: Buffer;
}

/**
 * Connect, write `pieces` `gapMs` apart (stopping when the daemon closes),
 * and wait for the daemon to close, never closing first. Rejects if the
 * daemon keeps the connection past `limitMs`.
 */
function attempt(socketPath: string, pieces: Array<string | Buffer>, options: { gapMs?: number; limitMs?: number } = {}): Promise<Outcome> {
  const { gapMs = 0, limitMs = 10_000 } = options;
  return new Promise((resolve, reject) => {
    const socket = net.connect(socketPath);
    const chunks: Buffer[] = [];
    let t0 = 0;
    let closed = false;
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('error', () => undefined);
    const limit = setTimeout(() => {
      socket.destroy();
      reject(new Error(`the daemon kept a connection open for ${limitMs} ms`));
    }, limitMs);
    socket.once('close', () => {
      closed = true;
      clearTimeout(limit);
      resolve({ closedAfterMs: performance.now() - t0, received: Buffer.concat(chunks) });
    });
    socket.once('connect', async () => {
      t0 = performance.now();
      for (const piece of pieces) {
        if (closed) return;
        socket.write(piece);
        if (gapMs) await new Promise((r) => setTimeout(r, gapMs));
      }
    });
  });
}

describe('a hostile client on the status socket', function () {
  this.timeout(180_000);
  let broker: BrokerProcess;
  let socketPath: string;
  let alice: BusClient;
  let baselineFds: number;
  const rand = prng(SEED);

  const aliceAnswers = async () => {
    const answer = await alice.publish('docker-credentials', { operation: 'list' });
    expect(answer).to.have.property('registries');
  };

  async function whileAlice<T>(attack: () => Promise<T>): Promise<T> {
    const run = await probeWhile(attack, aliceAnswers);
    expectUnharmed(run, `alice (seed ${SEED})`);
    return run.result;
  }

  /** A good status request is answered, and the daemon lets go of every connection of the attack. */
  async function settled(): Promise<void> {
    const answer = await queryStatus(socketPath);
    expect(answer.pid).to.equal(broker.pid);
    await waitFor(() => procStats(broker.pid).fds <= baselineFds, 20_000, `the daemon's descriptors back to ${baselineFds}`);
  }

  before(async () => {
    broker = await startBrokerProcess({ version: 1, sheds: { alice: { limits: { docker: { per_minute: 100_000, burst: 10_000 } } } } });
    socketPath = path.join(broker.dir, '.local/state/shed', STATUS_SOCKET_NAME);
    alice = new BusClient({ publishUrl: `unix:${broker.socketPath('alice')}`, deadlineMs: 5000 });
    for (let i = 0; i < 10; i++) await aliceAnswers();
    await queryStatus(socketPath);
    baselineFds = procStats(broker.pid).fds;
  });

  after(async () => {
    alice?.close();
    await broker?.stop();
  });

  it('junk is dropped at its first wrong byte, with no answer', async () => {
    const junk: Buffer[] = [
      Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'),
      Buffer.from('STATUS\n'),
      Buffer.from('statuss'),
      Buffer.from('status \n'),
      Buffer.from('\x00\x01\x02'),
      ...Array.from({ length: 40 }, () => Buffer.from(Array.from({ length: 1 + Math.floor(rand() * 64) }, () => Math.floor(rand() * 256)))),
    ].filter((b) => !STATUS_REQUEST.startsWith(b.toString('latin1')));
    const outcomes = await whileAlice(() => Promise.all(junk.map((b) => attempt(socketPath, [b]))));
    outcomes.forEach((o, i) => {
      expect(o.received.length, `junk ${i} got an answer`).to.equal(0);
      expect(o.closedAfterMs, `junk ${i} (seed ${SEED})`).to.be.below(DEFAULT_STATUS_TIMEOUT_MS);
    });
    await settled();
  });

  it('megabytes of garbage are not read, let alone kept', async () => {
    const big = Buffer.alloc(4 * 1024 * 1024, 0x73); // "sss…": its first byte fits, its second does not
    const rssBefore = procStats(broker.pid).rssMb;
    const outcomes = await whileAlice(() => Promise.all(Array.from({ length: 4 }, () => attempt(socketPath, [big]))));
    for (const o of outcomes) expect(o.received.length).to.equal(0);
    expect(procStats(broker.pid).rssMb - rssBefore, 'RSS growth (MB)').to.be.below(16);
    await settled();
  });

  it('silence, a trickled request and an unread answer are dropped at the deadline; past 8 clients, at once', async () => {
    const silent = Array.from({ length: 40 }, () => attempt(socketPath, []));
    const trickle = attempt(socketPath, STATUS_REQUEST.split(''), { gapMs: 400 });
    const outcomes = await whileAlice(() => Promise.all([...silent, trickle]));
    const times = outcomes.map((o) => o.closedAfterMs);
    // Some held their place until the deadline; the rest were closed as they came.
    const atOnce = times.filter((t) => t < DEFAULT_STATUS_TIMEOUT_MS / 2).length;
    expect(atOnce, `closed at once of ${times.length}`).to.be.at.least(times.length - DEFAULT_MAX_STATUS_CLIENTS);
    expect(Math.max(...times), 'the longest a client was kept (ms)').to.be.below(DEFAULT_STATUS_TIMEOUT_MS + 1500);
    expect(outcomes.at(-1)!.received.length, 'the trickled request got no answer').to.equal(0);

    // Clients that ask and never read, nor close: the answers go into the
    // kernel's buffers and the daemon lets go of them while they still hold on.
    const unread = await Promise.all(Array.from({ length: 6 }, () => new Promise<net.Socket>((resolve) => {
      const s = net.connect(socketPath, () => {
        s.pause();
        s.write(STATUS_REQUEST, () => resolve(s));
      });
    })));
    try {
      await settled();
    } finally {
      for (const s of unread) s.destroy();
    }
  });

  it('status asked as fast as a loop can costs the sheds nothing, and every answer is whole', async () => {
    let answered = 0;
    let refused = 0;
    await whileAlice(async () => {
      await Promise.all(Array.from({ length: 16 }, async () => {
        for (let i = 0; i < 40; i++) {
          const o = await attempt(socketPath, [STATUS_REQUEST]);
          if (o.received.length === 0) {
            refused += 1;
            continue;
          }
          const answer = JSON.parse(o.received.toString('utf8')) as { pid: number };
          expect(answer.pid).to.equal(broker.pid);
          answered += 1;
        }
      }));
    });
    expect(answered + refused).to.equal(640);
    expect(answered, `answered of 640 (${refused} closed over the 8-client limit)`).to.be.above(100);
    await settled();
    // The drops were logged once a minute at most, not once each.
    const lines = broker.stderr().split('\n').filter((l) => /status client|clients at once on the status socket/.test(l));
    expect(lines.length, lines.join('\n')).to.be.at.most(6);
  });
});
