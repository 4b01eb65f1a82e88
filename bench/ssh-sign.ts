/**
 * bench/ssh-sign: N SSH_AGENTC_SIGN_REQUESTs through the whole path (guest
 * socket → shed-ext-ssh-agent → bus over a direct broker socket →
 * shed-host-agent with policy and its JSON-lines audit file → the host's
 * real OpenSSH ssh-agent), against the same N signs sent straight to that
 * ssh-agent, in one run, interleaved in batches so both see the same machine.
 *
 *   node --import tsx bench/ssh-sign.ts [N]
 *
 * Every program is its own process, as in use, and the ones that ship:
 * ssh-agent, `shed-host-agent run` from the tsc build (dist/, rebuilt here),
 * `shed-ext-ssh-agent` as its esbuild bundle, and this client, which keeps
 * one connection open to each agent socket, as ssh does during a login. The
 * policy and the audit log live in separate directories, as by default.
 * Target: at most 1 ms added at p50 over the direct agent.
 *
 * Each batch runs twice: as the kernel schedules it over all CPUs, and with
 * every process of the bench pinned to one CPU (taskset). Pinned, a wake-up
 * is a context switch; as scheduled on a small VM, the kernel wakes each
 * process on the other vCPU through an inter-processor interrupt that the
 * hypervisor delivers late when its host is busy. The path through shed makes
 * six wake-ups a sign and the direct path two, so the pinned figures are the
 * software's own added time, and the scheduled ones that plus the machine's.
 */
import crypto from 'node:crypto';
import net from 'node:net';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { BusClient } from '../guest-services/bus-client.js';
import { bundleGuest } from '../guest-services/bundle.js';
import { AgentClient } from '../host-broker/ssh/agent-client.js';
import { keyLineBlob } from '../host-broker/ssh/rules.js';
import { capture, spawnTracked, stopAll, tempDir, waitFor } from '../tests/support/procs.js';
import { makeKey, startRealAgent } from '../tests/support/sshd.js';
import { writeSection } from './results.js';
import { startShippedBroker } from './shipped-broker.js';

const N = Number(process.argv[2] ?? 2000);
const WARMUP = 100;
const BATCH = 50;

interface Figures { p50: number; p99: number; mean: number }

/** This process's CPU affinity list as taskset prints it ("0,1", "2-5"), or undefined without taskset. */
function affinity(): string | undefined {
  try {
    const out = execFileSync('taskset', ['--cpu-list', '--pid', String(process.pid)], { encoding: 'utf8' });
    return /: ([\d,-]+)\s*$/.exec(out)?.[1];
  } catch {
    return undefined;
  }
}

function cpuCount(list: string): number {
  return list.split(',').reduce((n, part) => {
    const [from, to] = part.split('-').map(Number);
    return n + (to === undefined ? 1 : to - from! + 1);
  }, 0);
}

function figures(samples: number[]): Figures {
  const s = [...samples].sort((a, b) => a - b);
  const at = (q: number) => s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
  return { p50: at(0.5), p99: at(0.99), mean: s.reduce((a, b) => a + b, 0) / s.length };
}

/** The programs' own logs, shown when the run fails. */
let logs = (): string => '';

async function main(): Promise<void> {
  const dir = tempDir('shed-bench');
  const key = await makeKey(dir, 'id_ed25519', 'ed25519');
  const hostAgent = await startRealAgent(path.join(dir, 'host-agent.sock'), [key]);

  // What ships: the broker's tsc build and the guest agent's bundle.
  const shipped = await startShippedBroker(dir, {
    // The rate limit is raised out of the way: it guards against runaway guests, not what this measures.
    sheds: { bench: { ssh: { mode: 'agent-forward', agent_socket: hostAgent.sock }, limits: { ssh: { per_minute: 10_000_000, burst: 1_000_000 } } } },
  }, 'bench');
  const { child: broker, out: brokerOut, auditDir } = shipped;
  const benchSock = shipped.socketPath('bench');
  const guestBundle = (await bundleGuest({ outDir: path.join(dir, 'bundle'), only: ['shed-ext-ssh-agent'] })).bundles[0]!.file;

  const guestSock = path.join(dir, 'guest', 'agent.sock');
  const guest = spawnTracked(process.execPath, [guestBundle, '--sock', guestSock, '--publish-url', `unix:${benchSock}`], { env: { ...process.env, SHED_LOG_LEVEL: 'warn' } });
  const guestOut = capture(guest);
  await waitFor(() => fs.existsSync(path.join(dir, 'guest', 'ssh-agent.status')) || guest.exitCode !== null, 20_000, 'shed-ext-ssh-agent');
  if (guest.exitCode !== null) throw new Error(`shed-ext-ssh-agent exited: ${guestOut.stderr()}`);

  // The machine's floor: a bare request/answer between two processes over a
  // unix socket (an echo server, 200 bytes). The whole path makes two such
  // hops more than the direct one (client → guest agent, guest agent → broker).
  const echoSock = path.join(dir, 'echo.sock');
  const echo = spawnTracked(process.execPath, ['-e', 'require("net").createServer((s) => s.on("data", (d) => s.write(d))).listen(process.argv[1], () => console.log("up"))', echoSock]);
  await new Promise((r) => echo.stdout!.once('data', r));
  const echoClient = net.connect(echoSock);
  await new Promise((r) => echoClient.once('connect', r));
  const echoMessage = Buffer.alloc(200, 0x61);
  // Every process of the measured paths (the echo server is only measured as scheduled).
  const pids = [process.pid, hostAgent.child.pid!, broker.pid!, guest.pid!];
  // The CPUs this process may use (a container may allow only some); pinned runs use the first.
  const allowed = affinity();
  const cpus = allowed ? cpuCount(allowed) : 1;
  const canPin = allowed !== undefined && cpus > 1;
  const pin = (cpuList: string) => {
    for (const pid of pids) execFileSync('taskset', ['--all-tasks', '--pid', '--cpu-list', cpuList, String(pid)], { stdio: 'ignore' });
  };
  const hop = () => timed(() => new Promise((r) => {
    echoClient.write(echoMessage);
    echoClient.once('data', r);
  }));

  logs = () => `shed-host-agent:\n${brokerOut.stderr()}shed-ext-ssh-agent:\n${guestOut.stderr()}`;
  const blob = keyLineBlob(key.pubLine)!;
  const viaShed = new AgentClient(guestSock);
  const direct = new AgentClient(hostAgent.sock);
  const data = crypto.randomBytes(128);
  // Where the time goes: the same sign published on the bus by this process (no guest agent), and a bare ping (no handler, no audit).
  const bus = new BusClient({ publishUrl: `unix:${benchSock}` });
  const signPayload = { operation: 'sign', public_key: blob.toString('base64'), data: data.toString('base64'), flags: 0 };
  const timed = async (f: () => Promise<unknown>): Promise<number> => {
    const t0 = process.hrtime.bigint();
    await f();
    return Number(process.hrtime.bigint() - t0) / 1e6;
  };

  const once = async (client: AgentClient): Promise<number> => {
    const t0 = process.hrtime.bigint();
    const sig = await client.sign(blob, data, 0);
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    if (sig.format !== 'ssh-ed25519' || sig.blob.length !== 64) throw new Error('unexpected signature');
    return ms;
  };

  const busSign = () => timed(() => bus.publish('ssh-agent', signPayload));
  const busPing = () => timed(() => bus.ping('ssh-agent'));
  for (let i = 0; i < WARMUP; i++) {
    await once(viaShed);
    await once(direct);
    await busSign();
    await busPing();
    await hop();
  }
  const shedSamples: number[] = [];
  const directSamples: number[] = [];
  const pinnedShedSamples: number[] = [];
  const pinnedDirectSamples: number[] = [];
  const busSignSamples: number[] = [];
  const pingSamples: number[] = [];
  const hopSamples: number[] = [];
  for (let done = 0; done < N; done += BATCH) {
    const n = Math.min(BATCH, N - done);
    if (canPin) {
      pin(allowed!.split(/[,-]/)[0]!);
      for (let i = 0; i < n; i++) pinnedShedSamples.push(await once(viaShed));
      for (let i = 0; i < n; i++) pinnedDirectSamples.push(await once(direct));
      pin(allowed!);
    }
    for (let i = 0; i < n; i++) shedSamples.push(await once(viaShed));
    for (let i = 0; i < n; i++) directSamples.push(await once(direct));
    for (let i = 0; i < n / 5; i++) busSignSamples.push(await busSign());
    for (let i = 0; i < n / 5; i++) pingSamples.push(await busPing());
    for (let i = 0; i < n / 5; i++) hopSamples.push(await hop());
  }
  echoClient.destroy();
  viaShed.close();
  direct.close();
  bus.close();

  // The whole path really ran: one audit line per sign, with the fingerprint.
  const audited = fs.readFileSync(path.join(auditDir, 'bench.log'), 'utf8').split('\n').filter((l) => l.includes('"op":"sign"') && l.includes(key.fingerprint));
  if (audited.length < N + pinnedShedSamples.length + busSignSamples.length) throw new Error(`expected ${N} audited signs, found ${audited.length}`);

  const s = figures(shedSamples);
  const d = figures(directSamples);
  const b = figures(busSignSamples);
  const p = figures(pingSamples);
  const h = figures(hopSamples);
  const added = s.p50 - d.p50;
  const ps = canPin ? figures(pinnedShedSamples) : undefined;
  const pd = canPin ? figures(pinnedDirectSamples) : undefined;
  const pinnedAdded = ps && pd ? ps.p50 - pd.p50 : undefined;
  const f = (ms: number) => `${ms.toFixed(3)} ms`;
  const machine = `${os.type()} ${os.release()} ${os.arch()}, ${os.cpus().length} CPUs, node ${process.version}`;
  const load = os.loadavg()[0]!.toFixed(2);
  const verdict = (ms: number) => (ms <= 1 ? 'meets the target' : 'misses the target');
  const rows = (through: Figures, straight: Figures) => [
    '| | p50 | p99 | mean |',
    '|---|---|---|---|',
    `| through shed-ext-ssh-agent and the broker | ${f(through.p50)} | ${f(through.p99)} | ${f(through.mean)} |`,
    `| straight to ssh-agent (baseline) | ${f(straight.p50)} | ${f(straight.p99)} | ${f(straight.mean)} |`,
    `| ratio | ${(through.p50 / straight.p50).toFixed(2)}× | ${(through.p99 / straight.p99).toFixed(2)}× | ${(through.mean / straight.mean).toFixed(2)}× |`,
  ];
  const section = [
    '## ssh-sign',
    '',
    `\`node --import tsx bench/ssh-sign.ts ${N}\` — ${new Date().toISOString().slice(0, 10)}, ${machine}, load average ${load} at the end.`,
    `${N} ed25519 SSH_AGENTC_SIGN_REQUESTs, one at a time on one open connection, through the whole path (client → shed-ext-ssh-agent socket → bus on a direct broker socket → shed-host-agent with policy and its audit file → the real OpenSSH ssh-agent), against the same ${N} sent straight to that ssh-agent, interleaved in batches of ${BATCH} after ${WARMUP} warm-up signs each. Each program is its own process, run as shipped: shed-host-agent from its tsc build, shed-ext-ssh-agent as its bundle.`,
    '',
    `As the kernel schedules them over the ${cpus} CPU${cpus === 1 ? '' : 's'}:`,
    '',
    ...rows(s, d),
    '',
    ...(ps && pd
      ? [
        'The same batches with every process pinned to one CPU (`taskset`), where a wake-up is a context switch rather than an interrupt to another vCPU:',
        '',
        ...rows(ps, pd),
        '',
      ]
      : []),
    `Added at p50 (target: at most 1 ms): ${f(added)} as scheduled, ${verdict(added)}`
      + (pinnedAdded === undefined ? ' (taskset or a second CPU is missing, so no pinned run).' : `; ${f(pinnedAdded)} on one CPU, ${verdict(pinnedAdded)}.`),
    '',
    ...(ps && pd
      ? [
        'The path through shed wakes a process six times a sign, the direct path twice. On one CPU the added time is the software\'s own: its work and four more context switches.'
          + ' As scheduled on a small VM it also carries the four more cross-CPU wake-ups, whose cost is the hypervisor\'s and grows when its host is busy (compare the direct p50 of the two tables).',
        '',
      ]
      : []),
    `Where it goes (${busSignSamples.length} of each, same batches), published on the broker socket by the bench itself:`,
    '',
    '| | p50 | p99 | mean |',
    '|---|---|---|---|',
    `| sign on the bus, no guest agent (dispatcher, policy, limits, audit line written (synced at most every 100 ms, in the background), handler, ssh-agent) | ${f(b.p50)} | ${f(b.p99)} | ${f(b.mean)} |`,
    `| ping on the bus (HTTP over the unix socket and the dispatcher only) | ${f(p.p50)} | ${f(p.p99)} | ${f(p.mean)} |`,
    `| one bare process hop: 200 bytes to an echo process and back over a unix socket | ${f(h.p50)} | ${f(h.p99)} | ${f(h.mean)} |`,
    '',
    `The path makes two hops more than the direct agent does: about ${f(2 * h.p50)} of the added time at p50 is those hops alone (bare, with both ends busy);`
      + ` the added ${f(added)} is ${(added / (2 * h.p50)).toFixed(1)}× that floor.`,
  ].join('\n');
  writeSection('ssh-sign', section);
}

main()
  .catch((err: Error) => {
    process.stderr.write(`bench/ssh-sign: ${err.message}\n${logs()}`);
    process.exitCode = 1;
  })
  .finally(() => stopAll());
