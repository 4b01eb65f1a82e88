/**
 * A hostile process in the VM against the guest's SSH agent (the real
 * shed-ext-ssh-agent in its own process, on a real broker with a real
 * OpenSSH ssh-agent behind it): 10,000 generated agent messages (every
 * type, truncated and oversized fields, random key blobs and extensions,
 * split and pipelined writes, halves left behind). Throughout, a
 * well-behaved client is answered within 100 ms; every whole message gets
 * exactly one answer, in order; a message past 256 KiB closes its
 * connection; and afterwards the agent holds nothing more than before.
 */
import { expect } from 'chai';
import net from 'node:net';
import path from 'node:path';
import { createSshHandler } from '../../host-broker/ssh/handler.js';
import { memoryLogger } from '../../protocol/log.js';
import { startDirectBroker, type Harness } from '../support/harness.js';
import { expectUnharmed, probeWhile, procStats, prng } from '../support/hostile.js';
import { binCommand, capture, spawnTracked, stopProcess, tempDir, waitFor } from '../support/procs.js';
import { agentMessage as msg, agentString as str } from '../support/sk-agent.js';
import { makeKey, startRealAgent, type RealAgent } from '../support/sshd.js';

const SEED = Number(process.env.SHED_FUZZ_SEED ?? 0x55a9);

type Rand = () => number;
const int = (r: Rand, n: number) => Math.floor(r() * n);
const pick = <T>(r: Rand, items: readonly T[]): T => items[int(r, items.length)]!;

const bytes = (r: Rand, n: number) => Buffer.from(Array.from({ length: n }, () => int(r, 256)));

/** A key blob as a hostile client might send one: real types with junk, certificate-shaped, truncated, huge, empty. */
function keyBlob(r: Rand): Buffer {
  return pick(r, [
    () => Buffer.concat([str('ssh-ed25519'), str(bytes(r, 32))]),
    () => Buffer.concat([str('ssh-ed25519-cert-v01@openssh.com'), str(bytes(r, 32)), str(bytes(r, 32)), bytes(r, int(r, 200))]),
    () => Buffer.concat([str('sk-ssh-ed25519@openssh.com'), str(bytes(r, 32)), str('ssh:')]),
    () => Buffer.concat([str('ecdsa-sha2-nistp521'), str('nistp521'), str(bytes(r, 133))]),
    () => str(bytes(r, int(r, 64))),
    () => bytes(r, int(r, 300)),
    () => Buffer.alloc(0),
    () => Buffer.concat([str('\x1b[2J\u202e'), bytes(r, 8)]),
  ])();
}

/** One generated message, whole; `kind` says what a correct agent does with it. */
function generate(r: Rand): { bytes: Buffer; kind: 'answer' | 'close' | 'incomplete' } {
  const roll = r();
  if (roll < 0.25) {
    // Every request type with a random body.
    return { bytes: msg(pick(r, [0, 1, 11, 12, 13, 14, 17, 18, 19, 20, 21, 22, 23, 25, 26, 27, 28, 29, 255, int(r, 256)]), bytes(r, int(r, 100))), kind: 'answer' };
  }
  if (roll < 0.5) {
    const body = Buffer.concat([str(keyBlob(r)), str(bytes(r, pick(r, [0, 16, 300, int(r, 20_000)]))), r() < 0.9 ? Buffer.from([0, 0, 0, int(r, 8)]) : bytes(r, int(r, 9))]);
    return { bytes: msg(13, body), kind: 'answer' };
  }
  if (roll < 0.65) {
    const name = pick(r, ['query', 'session-bind@openssh.com', 'restrict-destination-v00@openssh.com', 'x'.repeat(int(r, 5000)), bytes(r, 10).toString('latin1')]);
    const contents = r() < 0.5
      ? Buffer.concat([str(keyBlob(r)), str(bytes(r, 32)), str(bytes(r, 64)), Buffer.from([int(r, 2)])])
      : bytes(r, int(r, 200));
    return { bytes: msg(27, Buffer.concat([str(name), contents])), kind: 'answer' };
  }
  if (roll < 0.75) return { bytes: pick(r, [() => msg(11, Buffer.alloc(0)), () => msg(11, bytes(r, 3)), () => Buffer.alloc(4)])(), kind: 'answer' };
  if (roll < 0.85) {
    // A length that promises more than ever comes.
    const whole = msg(13, bytes(r, 50 + int(r, 500)));
    return { bytes: whole.subarray(0, 4 + int(r, whole.length - 5)), kind: 'incomplete' };
  }
  if (roll < 0.92) {
    const head = Buffer.alloc(4);
    head.writeUInt32BE(256 * 1024 + 1 + int(r, 2 ** 31));
    return { bytes: Buffer.concat([head, bytes(r, int(r, 100))]), kind: 'close' };
  }
  // A signature or identities answer sent to the agent, or a string length past the message.
  return { bytes: msg(13, Buffer.concat([Buffer.from([0xff, 0xff, 0xff, 0xf0]), bytes(r, 20)])), kind: 'answer' };
}

/** Replies in a byte stream: how many whole ones. */
function countReplies(buf: Buffer): number {
  let n = 0;
  let at = 0;
  while (buf.length - at >= 4 && buf.length - at >= 4 + buf.readUInt32BE(at)) {
    at += 4 + buf.readUInt32BE(at);
    n += 1;
  }
  return n;
}

describe('a hostile process against the guest SSH agent', function () {
  this.timeout(240_000);
  let hostAgent: RealAgent;
  let harness: Harness;
  let guest: ReturnType<typeof spawnTracked>;
  let out: ReturnType<typeof capture>;
  let sock: string;

  /** A well-behaved client's key list, timed. */
  const listKeys = (): Promise<number> => new Promise((resolve, reject) => {
    const t0 = performance.now();
    const s = net.connect(sock, () => s.write(msg(11, Buffer.alloc(0))));
    let buf = Buffer.alloc(0);
    s.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (countReplies(buf) === 1) {
        s.destroy();
        if (buf[4] !== 12 || buf.readUInt32BE(5) !== 1) reject(new Error(`not a one-key list: ${buf.toString('hex').slice(0, 40)}`));
        else resolve(performance.now() - t0);
      }
    });
    s.on('error', reject);
  });

  before(async () => {
    const dir = tempDir('shed-adv-ssh');
    const key = await makeKey(dir, 'id_ed25519', 'ed25519');
    hostAgent = await startRealAgent(path.join(dir, 'host.sock'), [key]);
    harness = await startDirectBroker({
      // The client asks every 25 ms and the attacker signs by the thousand: the rate limit is not what is tested here.
      policy: { version: 1, sheds: { dev: { ssh: { mode: 'agent-forward', agent_socket: hostAgent.sock }, limits: { ssh: { per_minute: 1_000_000, burst: 100_000 } } } } },
      handlers: [createSshHandler({ log: memoryLogger(), env: {} })],
    });
    sock = path.join(dir, 'guest', 'agent.sock');
    const [cmd, args] = binCommand('shed-ext-ssh-agent', ['--sock', sock, '--publish-url', harness.publishUrl('dev')]);
    guest = spawnTracked(cmd, args);
    out = capture(guest);
    await waitFor(() => /serving SSH agent/.test(out.stderr()), 20_000, 'the guest agent');
    for (let i = 0; i < 10; i++) await listKeys();
  });

  after(async () => {
    if (guest) expect(await stopProcess(guest)).to.equal(0);
    await harness?.stop();
    await hostAgent?.stop();
  });

  it('10,000 generated messages: one answer each, in order; oversized closes; the client is served throughout; nothing is kept', async () => {
    const baseline = procStats(guest.pid!);
    const r = prng(SEED);
    let sent = 0;
    let checked = 0;

    const connection = async () => {
      const messages: ReturnType<typeof generate>[] = [];
      for (let n = 1 + int(r, 12); n > 0 && sent < 10_000; n--, sent++) {
        const m = generate(r);
        messages.push(m);
        if (m.kind !== 'answer') break;
      }
      const stream = Buffer.concat(messages.map((m) => m.bytes));
      const s = net.connect(sock);
      s.on('error', () => undefined);
      const chunks: Buffer[] = [];
      s.on('data', (d: Buffer) => chunks.push(d));
      const closed = new Promise<void>((res) => s.once('close', () => res()));
      await new Promise<void>((res) => s.once('connect', () => res()));
      // Written whole, or cut into pieces at random points.
      for (let at = 0; at < stream.length;) {
        const n = r() < 0.5 ? stream.length : 1 + int(r, 64);
        s.write(stream.subarray(at, at + n));
        at += n;
      }
      const last = messages.at(-1)!;
      const whole = messages.filter((m) => m.kind === 'answer').length;
      if (last.kind === 'answer') {
        // Every whole message gets exactly one answer: wait for them, then leave.
        await waitFor(() => countReplies(Buffer.concat(chunks)) >= whole, 20_000, `${whole} answers (seed ${SEED})`);
        s.end();
      } else if (last.kind === 'incomplete') {
        await waitFor(() => countReplies(Buffer.concat(chunks)) >= whole, 20_000, `${whole} answers before the half message (seed ${SEED})`);
        s.destroy(); // left behind mid-message
      }
      // An oversized message: the agent closes the connection itself.
      const timer = setTimeout(() => s.destroy(), 10_000);
      await closed;
      clearTimeout(timer);
      const replies = countReplies(Buffer.concat(chunks));
      if (last.kind !== 'close') expect(replies, `answers on one connection (seed ${SEED})`).to.equal(whole);
      else expect(replies).to.be.at.most(whole);
      checked += 1;
    };
    const run = await probeWhile(() => Promise.all(Array.from({ length: 16 }, async () => {
      while (sent < 10_000) await connection();
    })), listKeys);

    expect(sent).to.equal(10_000);
    expect(checked).to.be.above(500);
    expectUnharmed(run, 'the well-behaved client');
    expect(guest.exitCode, 'the agent is up').to.equal(null);
    await waitFor(() => procStats(guest.pid!).fds <= baseline.fds, 20_000, 'the agent to let go of every connection');
    expect(procStats(guest.pid!).rssMb - baseline.rssMb, 'RSS growth (MB)').to.be.below(64);
    expect(out.stderr()).not.to.include('\x1b');
    // Refusals are logged once a minute per kind, not once each.
    expect(out.stderr().split('\n').length, out.stderr().slice(0, 2000)).to.be.below(100);
  });
});
