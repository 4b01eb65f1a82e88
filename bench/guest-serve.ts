/**
 * bench/guest-serve: what the guest services cost a small VM, idle: `shed-ext
 * serve` (the SSH agent and the AWS endpoint in one process) against bare
 * `node` and against the two services it replaces, each its own process.
 *
 *   node --import tsx bench/guest-serve.ts [rounds]
 *
 * Everything runs as shipped (the esbuild bundles), against a broker on a
 * direct socket with a real ssh-agent and the test STS behind it. In each
 * round, interleaved: bare node (an empty timer); serve; the ssh agent and
 * the AWS endpoint side by side. Each service lists and signs 5 times and
 * serves 5 credential requests, then sits idle for 2 s, and its resident
 * memory is read from /proc. Target (issue 16): serve at most 60 MB.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { bundleGuest } from '../guest-services/bundle.js';
import { AgentClient } from '../host-broker/ssh/agent-client.js';
import { keyLineBlob } from '../host-broker/ssh/rules.js';
import { ROLE_DEV, startAwsHost } from '../tests/support/aws-fixtures.js';
import { startDirectBroker } from '../tests/support/harness.js';
import { percentile, procStats } from '../tests/support/hostile.js';
import { capture, spawnTracked, stopAll, stopProcess, tempDir, waitFor } from '../tests/support/procs.js';
import { makeKey, startRealAgent } from '../tests/support/sshd.js';
import { writeSection } from './results.js';

const ROUNDS = Number(process.argv[2] ?? 5);
const IDLE_MS = 2000;
const TARGET_MB = 60;

function get(url: string, token: string): Promise<number> {
  return new Promise((resolve, reject) => {
    http.get(url, { headers: { authorization: token } }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    }).on('error', reject);
  });
}

async function main(): Promise<void> {
  const dir = tempDir('shed-bench-gs');
  const key = await makeKey(dir, 'id_ed25519', 'ed25519');
  const hostAgent = await startRealAgent(path.join(dir, 'host.sock'), [key]);
  const aws = await startAwsHost();
  process.env.AWS_CONFIG_FILE = aws.configFile;
  process.env.AWS_SHARED_CREDENTIALS_FILE = aws.credentialsFile;
  const harness = await startDirectBroker({
    policy: { version: 1, sheds: { dev: { ssh: { mode: 'agent-forward', agent_socket: hostAgent.sock }, aws: { role: ROLE_DEV, sts_endpoint: aws.sts.url, region: 'us-east-1' } } } },
  });
  const built = await bundleGuest({ outDir: path.join(dir, 'bundle'), only: ['shed-ext', 'shed-ext-ssh-agent', 'shed-ext-aws-credentials'] });
  const bundle = (name: string) => built.bundles.find((b) => b.name === name)!.file;
  const blob = keyLineBlob(key.pubLine)!;
  const env = { ...process.env, SHED_LOG_LEVEL: 'info', SHED_PUBLISH_URL: harness.publishUrl('dev') };

  const exerciseAgent = async (sock: string) => {
    const client = new AgentClient(sock);
    for (let i = 0; i < 5; i++) {
      await client.identities();
      await client.sign(blob, crypto.randomBytes(64), 0);
    }
    client.close();
  };
  const exerciseAws = async (url: string, token: string) => {
    for (let i = 0; i < 5; i++) {
      const status = await get(url, token);
      if (status !== 200) throw new Error(`GET ${url} answered ${status}`);
    }
  };
  const endpointUrl = async (out: ReturnType<typeof capture>) =>
    (await waitFor(() => /serving AWS credentials at (http:\/\/\S+)/.exec(out.stderr()), 20_000, 'the AWS endpoint'))[1]!;

  const samples: Record<string, number[]> = {
    'node (an empty timer)': [],
    'shed-ext serve (both services)': [],
    'shed-ext-ssh-agent alone': [],
    'shed-ext-aws-credentials alone': [],
    'the two services together': [],
  };
  for (let round = 0; round < ROUNDS; round++) {
    const bare = spawnTracked(process.execPath, ['-e', 'setInterval(() => {}, 1 << 30)']);
    await new Promise((r) => setTimeout(r, IDLE_MS));
    samples['node (an empty timer)']!.push(procStats(bare.pid!).rssMb);
    await stopProcess(bare);

    {
      const sock = path.join(dir, `serve-${round}.sock`);
      const token = path.join(dir, `serve-${round}.token`);
      const serve = spawnTracked(process.execPath, [bundle('shed-ext'), 'serve', '--sock', sock, '--port', '0', '--auth-token-file', token], { env });
      const out = capture(serve);
      const url = await endpointUrl(out);
      await waitFor(() => fs.existsSync(sock), 10_000, 'serve\'s agent socket');
      await exerciseAgent(sock);
      await exerciseAws(url, fs.readFileSync(token, 'latin1'));
      await new Promise((r) => setTimeout(r, IDLE_MS));
      samples['shed-ext serve (both services)']!.push(procStats(serve.pid!).rssMb);
      await stopProcess(serve);
    }

    {
      const sock = path.join(dir, `agent-${round}.sock`);
      const token = crypto.randomBytes(32).toString('base64url');
      const agent = spawnTracked(process.execPath, [bundle('shed-ext-ssh-agent'), '--sock', sock], { env });
      const endpoint = spawnTracked(process.execPath, [bundle('shed-ext-aws-credentials'), '--port', '0', '--status-dir', dir],
        { env: { ...env, AWS_CONTAINER_AUTHORIZATION_TOKEN: token } });
      const url = await endpointUrl(capture(endpoint));
      await waitFor(() => fs.existsSync(sock), 10_000, 'the agent socket');
      await exerciseAgent(sock);
      await exerciseAws(url, token);
      await new Promise((r) => setTimeout(r, IDLE_MS));
      const a = procStats(agent.pid!).rssMb;
      const e = procStats(endpoint.pid!).rssMb;
      samples['shed-ext-ssh-agent alone']!.push(a);
      samples['shed-ext-aws-credentials alone']!.push(e);
      samples['the two services together']!.push(a + e);
      await Promise.all([stopProcess(agent), stopProcess(endpoint)]);
    }
  }
  await harness.stop();
  await hostAgent.stop();
  await aws.stop();

  const median = (xs: number[]) => percentile(xs, 0.5);
  const floor = median(samples['node (an empty timer)']!);
  const serve = median(samples['shed-ext serve (both services)']!);
  const two = median(samples['the two services together']!);
  const rows = Object.entries(samples).map(([name, xs]) =>
    `| ${name} | ${median(xs).toFixed(1)} MB | ${Math.min(...xs).toFixed(1)}–${Math.max(...xs).toFixed(1)} MB | ${(median(xs) - floor).toFixed(1)} MB |`);
  const shedExt = built.bundles.find((b) => b.name === 'shed-ext')!;
  const section = [
    '## guest-serve',
    '',
    `\`node --import tsx bench/guest-serve.ts ${ROUNDS}\` — ${new Date().toISOString().slice(0, 10)}, ${os.type()} ${os.release()} ${os.arch()}, ${os.cpus().length} CPUs, node ${process.version}, load average ${os.loadavg()[0]!.toFixed(2)} at the end.`,
    `Resident memory, idle ${IDLE_MS / 1000} s after 5 lists, 5 signs and 5 credential requests through a broker on a direct socket (a real ssh-agent and the test STS behind it), each program as shipped (its bundle); the ${ROUNDS} rounds interleave bare node, serve, and the two services side by side.`,
    '',
    '| process | idle RSS, median | range | over bare node |',
    '|---|---|---|---|',
    ...rows,
    '',
    `shed-ext serve: ${serve.toFixed(1)} MB, target at most ${TARGET_MB} MB: ${serve <= TARGET_MB ? 'meets the target' : 'MISSES the target'}; `
      + `${(two - serve).toFixed(1)} MB less than the two services it replaces (${two.toFixed(1)} MB). Bundle shed-ext.mjs: ${(shedExt.bytes / 1024).toFixed(0)} KiB (serve's modules load only for \`serve\`).`,
  ].join('\n');
  writeSection('guest-serve', section);
}

main()
  .catch((err: Error) => {
    process.stderr.write(`bench/guest-serve: ${err.stack ?? err.message}\n`);
    process.exitCode = 1;
  })
  .finally(() => stopAll());
