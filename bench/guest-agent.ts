/**
 * bench/guest-agent: what shed-ext-ssh-agent costs a small VM, idle.
 *
 *   node --import tsx bench/guest-agent.ts [rounds]
 *   BASELINE_TREE=/path/to/older/checkout node --import tsx bench/guest-agent.ts
 *
 * The agent runs as shipped (its esbuild bundle), against a broker on a
 * direct socket with a real ssh-agent behind it; after it has listed and
 * signed a few times and sat idle for two seconds, its resident memory is
 * read from /proc. Bare `node` (an empty timer) is measured in the same
 * rounds, interleaved, as the floor; with BASELINE_TREE, that checkout's
 * agent bundle too. Targets (issue 14): bundle at most 150 KiB, idle RSS at
 * most bare node + 10 MB.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { bundleGuest } from '../guest-services/bundle.js';
import { AgentClient } from '../host-broker/ssh/agent-client.js';
import { keyLineBlob } from '../host-broker/ssh/rules.js';
import { percentile, procStats } from '../tests/support/hostile.js';
import { startDirectBroker } from '../tests/support/harness.js';
import { spawnTracked, stopAll, stopProcess, tempDir, waitFor } from '../tests/support/procs.js';
import { makeKey, startRealAgent } from '../tests/support/sshd.js';
import { writeSection } from './results.js';

const ROUNDS = Number(process.argv[2] ?? 5);

async function main(): Promise<void> {
  const dir = tempDir('shed-bench-ga');
  const key = await makeKey(dir, 'id_ed25519', 'ed25519');
  const hostAgent = await startRealAgent(path.join(dir, 'host.sock'), [key]);
  const harness = await startDirectBroker({ policy: { version: 1, sheds: { dev: { ssh: { mode: 'agent-forward', agent_socket: hostAgent.sock } } } } });
  const bundle = (await bundleGuest({ outDir: path.join(dir, 'bundle'), only: ['shed-ext-ssh-agent'] })).bundles[0]!;
  const agents: Record<string, string> = { 'shed-ext-ssh-agent (this checkout)': bundle.file };
  let baselineBytes: number | undefined;
  const baselineTree = process.env.BASELINE_TREE;
  if (baselineTree) {
    const mod = (await import(path.join(baselineTree, 'guest-services/bundle.ts'))) as typeof import('../guest-services/bundle.js');
    const old = (await mod.bundleGuest({ outDir: path.join(dir, 'baseline-bundle'), only: ['shed-ext-ssh-agent'] })).bundles[0]!;
    agents[`shed-ext-ssh-agent (${path.basename(baselineTree)} checkout)`] = old.file;
    baselineBytes = old.bytes;
  }
  const blob = keyLineBlob(key.pubLine)!;
  const samples: Record<string, number[]> = { 'node (an empty timer)': [] };
  for (const name of Object.keys(agents)) samples[name] = [];

  for (let round = 0; round < ROUNDS; round++) {
    const bare = spawnTracked(process.execPath, ['-e', 'setInterval(() => {}, 1 << 30)']);
    await new Promise((r) => setTimeout(r, 2000));
    samples['node (an empty timer)']!.push(procStats(bare.pid!).rssMb);
    await stopProcess(bare);
    for (const [name, file] of Object.entries(agents)) {
      const sock = path.join(dir, `agent-${round}.sock`);
      const agent = spawnTracked(process.execPath, [file, '--sock', sock, '--publish-url', harness.publishUrl('dev')], { env: { ...process.env, SHED_LOG_LEVEL: 'warn' } });
      await waitFor(() => fs.existsSync(sock), 10_000, name);
      const client = new AgentClient(sock);
      for (let i = 0; i < 5; i++) {
        await client.identities();
        await client.sign(blob, crypto.randomBytes(64), 0);
      }
      client.close();
      await new Promise((r) => setTimeout(r, 2000));
      samples[name]!.push(procStats(agent.pid!).rssMb);
      await stopProcess(agent);
    }
  }
  await harness.stop();
  await hostAgent.stop();

  const median = (xs: number[]) => percentile(xs, 0.5);
  const floor = median(samples['node (an empty timer)']!);
  const current = median(samples['shed-ext-ssh-agent (this checkout)']!);
  const rows = Object.entries(samples).map(([name, xs]) => `| ${name} | ${median(xs).toFixed(1)} MB | ${Math.min(...xs).toFixed(1)}–${Math.max(...xs).toFixed(1)} MB | ${(median(xs) - floor).toFixed(1)} MB |`);
  const verdict = (ok: boolean) => (ok ? 'meets the target' : 'MISSES the target');
  const section = [
    '## guest-agent',
    '',
    `\`node --import tsx bench/guest-agent.ts ${ROUNDS}\`${baselineTree ? ` with BASELINE_TREE (${path.basename(baselineTree)})` : ''} — ${new Date().toISOString().slice(0, 10)}, ${os.type()} ${os.release()} ${os.arch()}, ${os.cpus().length} CPUs, node ${process.version}.`,
    `Resident memory of shed-ext-ssh-agent as shipped (its bundle), idle 2 s after 5 lists and 5 signs through a broker, against bare node in the same ${ROUNDS} rounds, interleaved.`,
    '',
    '| process | idle RSS, median | range | over bare node |',
    '|---|---|---|---|',
    ...rows,
    '',
    `Bundle: ${(bundle.bytes / 1024).toFixed(0)} KiB${baselineBytes ? ` (the baseline's: ${(baselineBytes / 1024).toFixed(0)} KiB)` : ''}, target at most 150 KiB: ${verdict(bundle.bytes <= 150 * 1024)}. Idle RSS ${(current - floor).toFixed(1)} MB over bare node, target at most 10 MB: ${verdict(current - floor <= 10)}.`,
  ].join('\n');
  writeSection('guest-agent', section);
}

main()
  .catch((err: Error) => {
    process.stderr.write(`bench/guest-agent: ${err.stack ?? err.message}\n`);
    process.exitCode = 1;
  })
  .finally(() => stopAll());
