/**
 * bench/docker-helper: how long one `docker-credential-shed get` takes, as a
 * guest runs it (a single-file CommonJS bundle, `node docker-credential-shed.cjs get`), against a warm
 * broker on a direct socket, next to bare `node -e 0` in the same run.
 * Docker and skopeo start the helper once or twice per registry operation, so
 * its start-up is its speed. Target: median within 40 ms of bare node.
 *
 *   node --import tsx bench/docker-helper.ts [runs]
 *
 * Prints the figures and replaces the `docker-helper` section of bench/RESULTS.md.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { createDockerHandler } from '../host-broker/docker/handler.js';
import { memoryLogger } from '../protocol/log.js';
import { startDirectBroker } from '../tests/support/harness.js';
import { stopAll, tempDir } from '../tests/support/procs.js';
import { bundleDockerCredentialShed } from '../tests/support/registry.js';
import { writeSection } from './results.js';

const RUNS = Number(process.argv[2] ?? 40);
const WARMUP = 5;
const TARGET_MS = 40;
const REGISTRY = 'registry.bench.test:5000';

/**
 * A preload that reports the process's own CPU time (user + system) on stderr
 * at exit: on a shared machine wall time swings with other load, CPU time much less.
 */
const CPU_PRELOAD = `process.on('exit', () => { const u = process.cpuUsage(); process.stderr.write('CPU_MS ' + (u.user + u.system) / 1000 + '\\n'); });\n`;
let preload = '';

interface Sample { wall: number; cpu: number }

/** Wall time of one process from spawn to exit, and its CPU time; rejects on a non-zero exit. */
function timed(args: string[], input: string, env: NodeJS.ProcessEnv): Promise<Sample> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const child = spawn(process.execPath, ['-r', preload, ...args], { env, stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.once('error', reject);
    child.once('exit', (code) => {
      const wall = performance.now() - started;
      const cpu = Number(/CPU_MS ([\d.]+)/.exec(err)?.[1] ?? NaN);
      if (code === 0) resolve({ wall, cpu });
      else reject(new Error(`${args.join(' ')} exited ${code}: ${(out + err).slice(0, 300)}`));
    });
    child.stdin.end(input);
  });
}

function quantile(sorted: number[], q: number): number {
  const i = Math.min(sorted.length - 1, Math.max(0, Math.round(q * (sorted.length - 1))));
  return sorted[i]!;
}

function stats(samples: number[]) {
  const s = [...samples].sort((a, b) => a - b);
  return { median: quantile(s, 0.5), p10: quantile(s, 0.1), p90: quantile(s, 0.9), min: s[0]! };
}

const fmt = (ms: number) => ms.toFixed(1);

async function main(): Promise<void> {
  const host = tempDir('shed-bench');
  preload = path.join(host, 'cpu-preload.cjs');
  fs.writeFileSync(preload, CPU_PRELOAD);
  fs.mkdirSync(path.join(host, 'docker'));
  fs.writeFileSync(path.join(host, 'docker', 'config.json'), JSON.stringify({
    auths: { [REGISTRY]: { auth: Buffer.from('bench-user:bench-password').toString('base64') } },
  }));
  const log = memoryLogger('shed-host-agent');
  const handler = createDockerHandler({ log, env: { PATH: '/usr/bin:/bin', DOCKER_CONFIG: path.join(host, 'docker') } });
  const broker = await startDirectBroker({ policy: { version: 1, sheds: { bench: { docker: { registries: [REGISTRY] } } } }, handlers: [handler], log });
  try {
    const { file } = await bundleDockerCredentialShed();
    const bundleBytes = fs.statSync(file).size;
    const env = { PATH: process.env.PATH, SHED_PUBLISH_URL: broker.publishUrl('bench') };
    const helperArgs = [file, 'get'];
    const bareArgs = ['-e', '0'];

    for (let i = 0; i < WARMUP; i++) {
      await timed(helperArgs, REGISTRY, env);
      await timed(bareArgs, '', env);
    }
    const helper: Sample[] = [];
    const bare: Sample[] = [];
    // Interleaved, so drift in machine load hits both the same.
    for (let i = 0; i < RUNS; i++) {
      helper.push(await timed(helperArgs, REGISTRY, env));
      bare.push(await timed(bareArgs, '', env));
    }
    const h = stats(helper.map((x) => x.wall));
    const b = stats(bare.map((x) => x.wall));
    const hc = stats(helper.map((x) => x.cpu));
    const bc = stats(bare.map((x) => x.cpu));
    const delta = h.median - b.median;
    const cpuDelta = hc.median - bc.median;
    const verdict = delta <= TARGET_MS ? 'meets' : 'misses';
    const load = os.loadavg()[0]!.toFixed(2);
    const lines = [
      `docker-credential-shed get (bundle, warm broker, direct socket): median ${fmt(h.median)} ms (p10 ${fmt(h.p10)}, p90 ${fmt(h.p90)}), CPU ${fmt(hc.median)} ms`,
      `bare node -e 0:                                               median ${fmt(b.median)} ms (p10 ${fmt(b.p10)}, p90 ${fmt(b.p90)}), CPU ${fmt(bc.median)} ms`,
      `wall difference ${fmt(delta)} ms, ratio ${(h.median / b.median).toFixed(2)}x: ${verdict} the target (within ${TARGET_MS} ms of bare node); CPU difference ${fmt(cpuDelta)} ms; load average ${load}`,
    ];
    for (const line of lines) console.log(line);

    const machine = `${os.type()} ${os.release()} ${os.machine()}, ${os.availableParallelism()} CPUs, node ${process.version}, load average ${load} at the end`;
    const section = [
      '## docker-helper',
      '',
      `\`node --import tsx bench/docker-helper.ts ${RUNS}\` — ${new Date().toISOString().slice(0, 10)}, ${machine}.`,
      `One \`node docker-credential-shed.cjs get\` (the shipped single-file bundle from guest-services/bundle.ts, ${(bundleBytes / 1024).toFixed(0)} KiB) against a warm broker on a direct socket, interleaved with bare \`node -e 0\`; ${RUNS} runs each after ${WARMUP} warm-up runs. Wall time from spawn to exit, and the process's own CPU time (steadier on a shared machine). Target: within ${TARGET_MS} ms of bare node.`,
      '',
      '| | wall median | wall p10 | wall p90 | CPU median |',
      '|---|---|---|---|---|',
      `| docker-credential-shed get | ${fmt(h.median)} ms | ${fmt(h.p10)} ms | ${fmt(h.p90)} ms | ${fmt(hc.median)} ms |`,
      `| node -e 0 (baseline) | ${fmt(b.median)} ms | ${fmt(b.p10)} ms | ${fmt(b.p90)} ms | ${fmt(bc.median)} ms |`,
      '',
      `Wall difference ${fmt(delta)} ms (${(h.median / b.median).toFixed(2)}× bare node): ${verdict} the target. CPU difference ${fmt(cpuDelta)} ms.`,
    ].join('\n');
    writeSection('docker-helper', section);
  } finally {
    await broker.stop();
    await stopAll();
  }
}

await main();
