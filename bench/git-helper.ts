/**
 * bench/git-helper: how long one `git-credential-shed get` takes, as a
 * guest's git runs it (the single-file CommonJS bundle, `node
 * git-credential-shed.cjs get` with git's description on stdin), against a
 * warm broker on a direct socket whose host answers from its real `git
 * credential fill` (credential-store), next to bare `node -e 0` in the same
 * run. git starts the helper once per fetch, clone or push, so its start-up
 * is its speed. Target: the docker helper's budget, median within 40 ms of
 * bare node.
 *
 * The host's own share (its `git credential fill`, two processes) is timed
 * apart, published on the socket by the bench itself, so the helper's
 * start-up can be read off: helper − host share − bare node.
 *
 *   node --import tsx bench/git-helper.ts [runs]
 *
 * Prints the figures and replaces the `git-helper` section of bench/RESULTS.md.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { BusClient } from '../guest-services/bus-client.js';
import { createGitHandler } from '../host-broker/git/handler.js';
import { memoryLogger } from '../protocol/log.js';
import { bundleGitCredentialShed, gitEnv, storeHostCredential } from '../tests/support/git-http.js';
import { startDirectBroker } from '../tests/support/harness.js';
import { stopAll, tempDir } from '../tests/support/procs.js';
import { fmt, ProcessTimer, stats, type Sample } from './process-timing.js';
import { writeSection } from './results.js';

const RUNS = Number(process.argv[2] ?? 40);
const WARMUP = 5;
const TARGET_MS = 40;
const HOST = 'git.bench.test';
const INPUT = `protocol=https\nhost=${HOST}\npath=acme/app.git\n\n`;
const ANSWER = 'username=bench-user\npassword=bench-token\n';

async function main(): Promise<void> {
  const dir = tempDir('shed-bench');
  const { timed } = new ProcessTimer(dir);
  const hostHome = path.join(dir, 'host');
  fs.mkdirSync(hostHome);
  await storeHostCredential(hostHome, { protocol: 'https', host: HOST, username: 'bench-user', password: 'bench-token' });
  const log = memoryLogger('shed-host-agent');
  const handler = createGitHandler({ log, env: gitEnv(hostHome) });
  const broker = await startDirectBroker({ policy: { version: 1, sheds: { bench: { git: { allowed: [`${HOST}/acme/*`] }, limits: { git: { per_minute: 100_000, burst: 10_000 } } } } }, handlers: [handler], log });
  const bus = new BusClient({ publishUrl: broker.publishUrl('bench'), deadlineMs: 10_000 });
  try {
    const { file } = await bundleGitCredentialShed();
    const bundleBytes = fs.statSync(file).size;
    const env = { PATH: process.env.PATH, SHED_PUBLISH_URL: broker.publishUrl('bench') };
    const helperArgs = [file, 'get'];
    const bareArgs = ['-e', '0'];
    const hostShare = async () => {
      const t0 = performance.now();
      await bus.publish('git-credentials', { operation: 'get', protocol: 'https', host: HOST, path: 'acme/app.git' });
      return performance.now() - t0;
    };

    for (let i = 0; i < WARMUP; i++) {
      await timed(helperArgs, INPUT, env, ANSWER);
      await timed(bareArgs, '', env);
      await hostShare();
    }
    const helper: Sample[] = [];
    const bare: Sample[] = [];
    const host: number[] = [];
    // Interleaved, so drift in machine load hits all three the same.
    for (let i = 0; i < RUNS; i++) {
      helper.push(await timed(helperArgs, INPUT, env, ANSWER));
      bare.push(await timed(bareArgs, '', env));
      host.push(await hostShare());
    }
    const h = stats(helper.map((x) => x.wall));
    const b = stats(bare.map((x) => x.wall));
    const hc = stats(helper.map((x) => x.cpu));
    const bc = stats(bare.map((x) => x.cpu));
    const hs = stats(host);
    const delta = h.median - b.median;
    const cpuDelta = hc.median - bc.median;
    const verdict = delta <= TARGET_MS ? 'meets' : 'misses';
    const load = os.loadavg()[0]!.toFixed(2);
    console.log(`git-credential-shed get: median ${fmt(h.median)} ms (p10 ${fmt(h.p10)}, p90 ${fmt(h.p90)}), CPU ${fmt(hc.median)} ms`);
    console.log(`bare node -e 0:          median ${fmt(b.median)} ms (p10 ${fmt(b.p10)}, p90 ${fmt(b.p90)}), CPU ${fmt(bc.median)} ms`);
    console.log(`host share (bus + git credential fill): median ${fmt(hs.median)} ms`);
    console.log(`wall difference ${fmt(delta)} ms: ${verdict} the target (within ${TARGET_MS} ms of bare node); load average ${load}`);

    const machine = `${os.type()} ${os.release()} ${os.machine()}, ${os.availableParallelism()} CPUs, node ${process.version}, load average ${load} at the end`;
    const section = [
      '## git-helper',
      '',
      `\`node --import tsx bench/git-helper.ts ${RUNS}\` — ${new Date().toISOString().slice(0, 10)}, ${machine}.`,
      `One \`node git-credential-shed.cjs get\` (the shipped single-file bundle from guest-services/bundle.ts, ${(bundleBytes / 1024).toFixed(0)} KiB) with git's description on stdin, against a warm broker on a direct socket whose host answers from its real \`git credential fill\` (credential-store), interleaved with bare \`node -e 0\`; ${RUNS} runs each after ${WARMUP} warm-up runs. Wall time from spawn to exit, and the process's own CPU time. Target: the docker helper's budget, within ${TARGET_MS} ms of bare node.`,
      '',
      '| | wall median | wall p10 | wall p90 | CPU median |',
      '|---|---|---|---|---|',
      `| git-credential-shed get | ${fmt(h.median)} ms | ${fmt(h.p10)} ms | ${fmt(h.p90)} ms | ${fmt(hc.median)} ms |`,
      `| node -e 0 (baseline) | ${fmt(b.median)} ms | ${fmt(b.p10)} ms | ${fmt(b.p90)} ms | ${fmt(bc.median)} ms |`,
      `| the host's share: the same get published by the bench (bus, policy, audit, \`git credential fill\`) | ${fmt(hs.median)} ms | ${fmt(hs.p10)} ms | ${fmt(hs.p90)} ms | |`,
      '',
      `Wall difference ${fmt(delta)} ms (${(h.median / b.median).toFixed(2)}× bare node): ${verdict} the target. Of it, ${fmt(hs.median)} ms is the host looking the credential up; the helper's own cost over bare node is ${fmt(delta - hs.median)} ms (its CPU over bare node: ${fmt(cpuDelta)} ms).`,
    ].join('\n');
    writeSection('git-helper', section);
  } finally {
    bus.close();
    await broker.stop();
    await stopAll();
  }
}

await main();
