/**
 * bench/aws-endpoint: `GET /credentials` on a warm host cache through the full
 * path (HTTP → guest Hono app → bus client → broker socket → dispatcher,
 * policy, limits, audit → aws handler cache), next to a static JSON route of
 * the same Hono server (the floor), in one run.
 *
 *   node --import tsx bench/aws-endpoint.ts [latency-requests] [throughput-seconds]
 *
 * The guest server runs in a child process (as in the VM); the broker, the
 * test STS and the load generator run in this one. Latency: one request at a
 * time over a keep-alive connection. Throughput: 16 keep-alive connections.
 */
import { fork } from 'node:child_process';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createAdaptorServer } from '@hono/node-server';
import { AuditLog } from '../host-broker/audit/audit-log.js';
import { createAwsHandler } from '../host-broker/aws/handler.js';
import { createAwsApp } from '../guest-services/aws-credentials/app.js';
import { BusClient } from '../guest-services/bus-client.js';
import { createLogger, memoryLogger } from '../protocol/log.js';
import { ROLE_DEV, startAwsHost } from '../tests/support/aws-fixtures.js';
import { startDirectBroker } from '../tests/support/harness.js';
import { stopAll, tempDir } from '../tests/support/procs.js';
import { writeSection } from './results.js';

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true';

const TOKEN = 'bench-token-5d41402abc4b2a76';
const FLOOR_BODY = { AccessKeyId: 'ASIAFLOORFLOORFLOOR0', SecretAccessKey: 'f'.repeat(40), Token: 't'.repeat(600), Expiration: '2030-01-01T00:00:00Z' };

/** Child mode: the guest app plus the bench-only floor route, on a free loopback port. */
async function serveGuest(publishUrl: string): Promise<void> {
  const bus = new BusClient({ publishUrl });
  const app = createAwsApp({ bus, authToken: TOKEN, log: createLogger('bench-guest', { level: 'error' }) });
  app.get('/floor', (c) => c.body(JSON.stringify(FLOOR_BODY), 200, { 'content-type': 'application/json', 'cache-control': 'no-store' }));
  const server = createAdaptorServer({ fetch: app.fetch }) as http.Server;
  server.keepAliveTimeout = 30_000;
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  process.send!({ port: (server.address() as AddressInfo).port });
  process.on('disconnect', () => process.exit(0));
}

interface Figures { p50: number; p99: number; mean: number; rps: number; n: number }

function get(agent: http.Agent, port: number, p: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: p, agent, headers: { authorization: TOKEN } }, (res) => {
      res.resume();
      res.on('end', () => (res.statusCode === 200 ? resolve() : reject(new Error(`${p} answered ${res.statusCode}`))));
    });
    req.on('error', reject);
  });
}

async function latency(port: number, p: string, n: number): Promise<number[]> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const t = process.hrtime.bigint();
    await get(agent, port, p);
    out.push(Number(process.hrtime.bigint() - t) / 1e6);
  }
  agent.destroy();
  return out;
}

async function throughput(port: number, p: string, seconds: number, connections = 16): Promise<number> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: connections });
  const end = Date.now() + seconds * 1000;
  let done = 0;
  const started = process.hrtime.bigint();
  await Promise.all(Array.from({ length: connections }, async () => {
    while (Date.now() < end) {
      await get(agent, port, p);
      done++;
    }
  }));
  const elapsed = Number(process.hrtime.bigint() - started) / 1e9;
  agent.destroy();
  return done / elapsed;
}

const pct = (sorted: number[], q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;

async function measure(port: number, p: string, n: number, seconds: number): Promise<Figures> {
  const lat = (await latency(port, p, n)).sort((a, b) => a - b);
  const rps = await throughput(port, p, seconds);
  return { p50: pct(lat, 0.5), p99: pct(lat, 0.99), mean: lat.reduce((a, b) => a + b, 0) / lat.length, rps, n };
}

async function main(): Promise<void> {
  const n = Number(process.argv[2] ?? 3000);
  const seconds = Number(process.argv[3] ?? 4);
  const host = await startAwsHost();
  const handler = createAwsHandler({ log: memoryLogger('aws'), configFile: host.configFile, credentialsFile: host.credentialsFile });
  const harness = await startDirectBroker({
    policy: {
      version: 1,
      defaults: { limits: { max_concurrent: 64, aws: { per_minute: 10_000_000, burst: 1_000_000 } } },
      sheds: { bench: { aws: { role: ROLE_DEV, sts_endpoint: host.sts.url } } },
    },
    handlers: [handler],
    audit: new AuditLog(path.join(tempDir('bench-audit'), 'audit')),
  });
  const child = fork(fileURLToPath(import.meta.url), ['serve-guest', harness.publishUrl('bench')], { execArgv: ['--import', 'tsx'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  try {
    const port = await new Promise<number>((resolve, reject) => {
      child.once('message', (m: { port: number }) => resolve(m.port));
      child.once('exit', (code) => reject(new Error(`guest exited ${code}`)));
    });
    // Warm: the one AssumeRole, JIT on both sides.
    await latency(port, '/credentials', 300);
    await latency(port, '/floor', 300);
    if (host.sts.assumeRoleCount !== 1) throw new Error(`expected a warm cache (1 AssumeRole), saw ${host.sts.assumeRoleCount}`);
    const floor = await measure(port, '/floor', n, seconds);
    const full = await measure(port, '/credentials', n, seconds);
    if (host.sts.assumeRoleCount !== 1) throw new Error('the cache went cold during the run');
    report(full, floor, n, seconds);
  } finally {
    child.kill();
    await harness.stop();
    await host.stop();
    await stopAll();
  }
}

function report(full: Figures, floor: Figures, n: number, seconds: number): void {
  const ms = (v: number) => `${v.toFixed(3)} ms`;
  const date = new Date().toISOString().slice(0, 10);
  const machine = `${os.type()} ${os.release()} ${os.machine()}, ${os.cpus().length} CPUs, node ${process.version}`;
  const lines = [
    '## aws-endpoint',
    '',
    `\`node --import tsx bench/aws-endpoint.ts ${n} ${seconds}\` — ${date}, ${machine}.`,
    'GET /credentials on a warm host cache through the full path (guest Hono app in its own process → bus client → direct broker socket → dispatcher with policy, limits and the JSON-lines audit file → aws handler cache), '
      + `against a static JSON route of the same Hono server (the floor). Latency: ${n} sequential requests on one keep-alive connection; throughput: 16 keep-alive connections for ${seconds} s.`,
    '',
    '| | p50 | p99 | mean | requests/s |',
    '|---|---|---|---|---|',
    `| GET /credentials (full path) | ${ms(full.p50)} | ${ms(full.p99)} | ${ms(full.mean)} | ${full.rps.toFixed(0)} |`,
    `| GET /floor (static JSON, same server) | ${ms(floor.p50)} | ${ms(floor.p99)} | ${ms(floor.mean)} | ${floor.rps.toFixed(0)} |`,
    `| ratio full / floor | ${(full.p50 / floor.p50).toFixed(2)}× | ${(full.p99 / floor.p99).toFixed(2)}× | ${(full.mean / floor.mean).toFixed(2)}× | ${(full.rps / floor.rps).toFixed(2)}× |`,
    '',
    `Added by the bus and the host at p50: ${ms(full.p50 - floor.p50)}. One AssumeRole for the whole run (warm cache).`,
  ];
  const section = lines.join('\n');
  writeSection('aws-endpoint', section);
}

if (process.argv[2] === 'serve-guest') {
  await serveGuest(process.argv[3]!);
} else {
  await main();
}
