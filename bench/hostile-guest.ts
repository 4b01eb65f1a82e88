/**
 * bench/hostile-guest: what one hostile shed costs another.
 *
 *   node --import tsx bench/hostile-guest.ts [signs] [flood-requests]
 *
 * shed-host-agent runs from its tsc build (as shipped) with a real OpenSSH
 * ssh-agent behind it, and three sheds on direct sockets. alice signs one
 * request at a time, published on her socket by this process:
 *
 * 1. quiet: nothing else runs;
 * 2. under attack: an attacker process (this script with --attack) keeps
 *    1,000 connections to mallory's socket going, each sending generated
 *    garbage (tests/support/hostile.ts) and reconnecting when closed;
 * 3. audit flood: eve sends 100,000 requests as fast as it can (unknown
 *    operations and namespaces, and requests past its rate limit) and the
 *    audit lines it adds are counted, then checked against the answers.
 *
 * The broker's event-loop delay comes from Node's histogram, loaded with
 * `--require bench/eld-probe.cjs` and read on SIGUSR2; its memory from
 * /proc. To look closer: ATTACK_KINDS=publish,pipelined limits the attack
 * to those kinds of request, and BROKER_NODE_FLAGS="--cpu-prof" passes
 * flags to the broker's node. Targets (issue 13): alice's sign p99 under 50 ms, broker RSS under
 * 150 MB and event-loop delay under 50 ms while mallory attacks, and at most
 * a few hundred audit lines for eve's 100,000.
 */
import crypto from 'node:crypto';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { BusClient, BusError } from '../guest-services/bus-client.js';
import { keyLineBlob } from '../host-broker/ssh/rules.js';
import { auditOf, hostileRequest, percentile, procStats, prng } from '../tests/support/hostile.js';
import { capture, REPO_ROOT, spawnTracked, stopAll, stopProcess, tempDir, waitFor } from '../tests/support/procs.js';
import { makeKey, startRealAgent } from '../tests/support/sshd.js';
import { writeSection } from './results.js';
import { startShippedBroker } from './shipped-broker.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));

/** Attacker mode: keep `connections` going against `socket` for `seconds`, each sending garbage. */
async function attack(socket: string, connections: number, seconds: number): Promise<void> {
  const r = prng(0xbad);
  const until = Date.now() + seconds * 1000;
  let accepted = 0;
  let refused = 0;
  const kinds = process.env.ATTACK_KINDS?.split(',');
  const worker = async () => {
    while (Date.now() < until) {
      let req = hostileRequest(r);
      while (kinds && !kinds.includes(req.kind)) req = hostileRequest(r);
      const s = net.connect(socket);
      s.on('error', () => undefined);
      let got = 0;
      s.on('data', (d: Buffer) => (got += d.length));
      const closed = new Promise<void>((resolve) => s.once('close', () => resolve()));
      s.once('connect', () => {
        for (const p of req.pieces) s.write(p);
        if (req.abandon) s.destroy();
        else s.end();
      });
      const timer = setTimeout(() => s.destroy(), 2000);
      await closed;
      clearTimeout(timer);
      if (got > 0) accepted += 1;
      else refused += 1;
    }
  };
  await Promise.all(Array.from({ length: connections }, worker));
  process.stdout.write(JSON.stringify({ accepted, refused }));
}

interface Figures { p50: number; p99: number; max: number; n: number }
const figures = (samples: number[]): Figures => ({ p50: percentile(samples, 0.5), p99: percentile(samples, 0.99), max: Math.max(...samples), n: samples.length });
const f = (ms: number) => `${ms.toFixed(2)} ms`;

async function main(): Promise<void> {
  if (process.argv[2] === '--attack') {
    await attack(process.argv[3]!, Number(process.argv[4]), Number(process.argv[5]));
    return;
  }
  const SIGNS = Number(process.argv[2] ?? 1000);
  const FLOOD = Number(process.argv[3] ?? 100_000);
  const dir = tempDir('shed-bench-h');
  const key = await makeKey(dir, 'id_ed25519', 'ed25519');
  const hostAgent = await startRealAgent(path.join(dir, 'host-agent.sock'), [key]);
  const shipped = await startShippedBroker(dir, {
    defaults: { ssh: { mode: 'agent-forward', agent_socket: hostAgent.sock } },
    // alice's own rate limit is raised out of the way: she signs as fast as she can.
    sheds: { mallory: {}, eve: {}, alice: { limits: { ssh: { per_minute: 10_000_000, burst: 1_000_000 } } } },
  }, 'alice', [...(process.env.BROKER_NODE_FLAGS ? process.env.BROKER_NODE_FLAGS.split(' ') : []), '--require', path.join(HERE, 'eld-probe.cjs')]);
  const { child: broker, out: brokerOut, auditDir } = shipped;
  const pid = broker.pid!;

  const eld = async (): Promise<{ p50: number; p99: number; max: number }> => {
    const before = brokerOut.stderr().length;
    process.kill(pid, 'SIGUSR2');
    const line = await waitFor(() => /ELD (\{.*\})/.exec(brokerOut.stderr().slice(before)), 5000, 'the event-loop figures');
    return JSON.parse(line[1]!);
  };

  const alice = new BusClient({ publishUrl: `unix:${shipped.socketPath('alice')}` });
  const blob = keyLineBlob(key.pubLine)!;
  const sign = { operation: 'sign', public_key: blob.toString('base64'), data: crypto.randomBytes(128).toString('base64'), flags: 0 };
  const signs = async (n: number): Promise<number[]> => {
    const out: number[] = [];
    for (let i = 0; i < n; i++) {
      const t0 = process.hrtime.bigint();
      await alice.publish('ssh-agent', sign);
      out.push(Number(process.hrtime.bigint() - t0) / 1e6);
    }
    return out;
  };

  // 1. Quiet.
  await signs(200);
  await eld();
  const rssQuiet = procStats(pid).rssMb;
  const quiet = figures(await signs(SIGNS));
  const eldQuiet = await eld();

  // 2. Under attack: the attacker in its own process, alice signing meanwhile.
  const attackSeconds = Math.max(10, Math.ceil(SIGNS / 100));
  const attacker = spawnTracked(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url), '--attack', shipped.socketPath('mallory'), '1000', String(attackSeconds)], { cwd: REPO_ROOT });
  const attackerOut = capture(attacker);
  await waitFor(() => procStats(pid).fds > 60, 20_000, 'the attack to start');
  await eld();
  let peakRss = 0;
  let peakFds = 0;
  const sampler = setInterval(() => {
    const s = procStats(pid);
    peakRss = Math.max(peakRss, s.rssMb);
    peakFds = Math.max(peakFds, s.fds);
  }, 50);
  const attacked = figures(await signs(SIGNS));
  const eldAttacked = await eld();
  clearInterval(sampler);
  await new Promise((r) => attacker.once('close', r));
  const attackStats = JSON.parse(attackerOut.stdout() || '{}') as { accepted?: number; refused?: number };
  await waitFor(() => procStats(pid).fds < 60, 30_000, 'the broker to let go');
  const rssAfter = procStats(pid).rssMb;

  // 3. Audit flood from eve.
  const eves = Array.from({ length: 4 }, () => new BusClient({ publishUrl: `unix:${shipped.socketPath('eve')}`, deadlineMs: 30_000 }));
  let next = 0;
  let ok = 0;
  let denied = 0;
  const r = prng(0xe7e);
  const t0 = Date.now();
  await Promise.all(eves.flatMap((c) => Array.from({ length: 16 }, async () => {
    while (next < FLOOD) {
      next += 1;
      const roll = r();
      const [ns, payload] = roll < 0.4 ? ['ssh-agent', sign] : roll < 0.7 ? ['ssh-agent', { operation: `no-such-${next}` }] : roll < 0.9 ? [`evil-${next}`, { operation: 'list' }] : ['ssh-agent', {}];
      try {
        await c.publish(ns as string, payload as Record<string, unknown>);
        ok += 1;
      } catch (err) {
        if (!(err instanceof BusError) || err.kind !== 'host') throw err;
        denied += 1;
      }
    }
  })));
  const floodSeconds = (Date.now() - t0) / 1000;
  for (const c of eves) c.close();
  alice.close();
  const linesBeforeStop = auditOf(auditDir, 'eve').length;
  const code = await stopProcess(broker);
  if (code !== 0) throw new Error(`shed-host-agent exited ${code}: ${brokerOut.stderr()}`);
  const eveLines = auditOf(auditDir, 'eve');
  const accounted = eveLines.reduce((n, l) => n + (typeof l.count === 'number' ? l.count : 1), 0);
  const eveOk = eveLines.filter((l) => l.result === 'ok').length;
  await hostAgent.stop();

  const verdict = (ok: boolean) => (ok ? 'meets the target' : 'MISSES the target');
  const section = [
    '## hostile-guest',
    '',
    `\`node --import tsx bench/hostile-guest.ts ${SIGNS} ${FLOOD}\` — ${new Date().toISOString().slice(0, 10)}, ${os.type()} ${os.release()} ${os.arch()}, ${os.cpus().length} CPUs, node ${process.version}, load average ${os.loadavg()[0]!.toFixed(2)} at the end.`,
    `shed-host-agent from its tsc build with a real ssh-agent; alice signs ${SIGNS} times, one at a time, on her direct socket: quiet, then while an attacker process keeps 1,000 connections going against mallory's socket, each sending generated garbage (tests/support/hostile.ts) and reconnecting when closed (${attackStats.accepted ?? '?'} connections answered or closed by the broker after reading, ${attackStats.refused ?? '?'} closed at once over mallory's cap of 64, in ${attackSeconds} s).`,
    '',
    '| alice\'s sign | p50 | p99 | max |',
    '|---|---|---|---|',
    `| quiet | ${f(quiet.p50)} | ${f(quiet.p99)} | ${f(quiet.max)} |`,
    `| mallory attacking | ${f(attacked.p50)} | ${f(attacked.p99)} | ${f(attacked.max)} |`,
    '',
    '| broker | quiet | mallory attacking |',
    '|---|---|---|',
    `| RSS | ${rssQuiet.toFixed(0)} MB | peak ${peakRss.toFixed(0)} MB (${rssAfter.toFixed(0)} MB after) |`,
    `| descriptors | — | peak ${peakFds} |`,
    `| event-loop delay p99 / max | ${f(eldQuiet.p99)} / ${f(eldQuiet.max)} | ${f(eldAttacked.p99)} / ${f(eldAttacked.max)} |`,
    '',
    `Targets under attack: sign p99 ${f(attacked.p99)} < 50 ms ${verdict(attacked.p99 < 50)}; RSS ${peakRss.toFixed(0)} MB < 150 MB ${verdict(peakRss < 150)}; event-loop delay p99 ${f(eldAttacked.p99)} (max ${f(eldAttacked.max)}) < 50 ms ${verdict(eldAttacked.max < 50)} (judged on the max).`,
    '',
    `Audit flood: eve sent ${FLOOD} requests in ${floodSeconds.toFixed(1)} s (${ok} served within its rate limit, ${denied} denied). Her audit file holds ${eveLines.length} lines (${linesBeforeStop} before the broker stopped and wrote the last summary): ${eveOk} served requests one by one, the denials ${FLOOD - ok <= 0 ? '' : 'written one by one up to audit.denials_per_minute and '}summed up once a minute. The lines and counts account for ${accounted} of ${FLOOD} requests.`,
  ].join('\n');
  writeSection('hostile-guest', section);
  if (process.env.BROKER_NODE_FLAGS) process.stdout.write(brokerOut.stdout());
}

main()
  .catch((err: Error) => {
    process.stderr.write(`bench/hostile-guest: ${err.stack ?? err.message}\n`);
    process.exitCode = 1;
  })
  .finally(() => stopAll());
