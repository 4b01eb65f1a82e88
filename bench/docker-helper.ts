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
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createDockerHandler } from '../host-broker/docker/handler.js';
import { memoryLogger } from '../protocol/log.js';
import { startDirectBroker } from '../tests/support/harness.js';
import { stopAll, tempDir } from '../tests/support/procs.js';
import { bundleDockerCredentialShed } from '../tests/support/registry.js';
import { fmt, ProcessTimer, stats, type Sample } from './process-timing.js';
import { writeSection } from './results.js';

const RUNS = Number(process.argv[2] ?? 40);
const WARMUP = 5;
const TARGET_MS = 40;
const REGISTRY = 'registry.bench.test:5000';

async function main(): Promise<void> {
  const host = tempDir('shed-bench');
  const { timed } = new ProcessTimer(host);
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
