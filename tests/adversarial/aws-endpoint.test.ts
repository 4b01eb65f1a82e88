/**
 * A hostile process in the VM against the guest's AWS credentials endpoint
 * (the real shed-ext-aws-credentials, in its own process, on a broker with a
 * SigV4-checking STS): generated requests by the thousand and connections
 * held by the hundred. Throughout, an SDK-shaped request with the token is
 * served within 100 ms; afterwards the endpoint's descriptors and memory
 * come back, and nothing it wrote quotes the token or the credentials.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { createAwsHandler } from '../../host-broker/aws/handler.js';
import { memoryLogger } from '../../protocol/log.js';
import { ROLE_DEV, SOURCE, startAwsHost, type AwsHostFixture } from '../support/aws-fixtures.js';
import { startDirectBroker, type Harness } from '../support/harness.js';
import { expectUnharmed, flood, hostileRequest, probeWhile, procStats, prng } from '../support/hostile.js';
import { binCommand, capture, spawnTracked, stopProcess, tempDir, waitFor } from '../support/procs.js';

const SEED = Number(process.env.SHED_FUZZ_SEED ?? 0xa55);
const TOKEN = 'adversarial-endpoint-token-4f1d2c3b';

describe('a hostile process against the guest AWS endpoint', function () {
  this.timeout(240_000);
  let host: AwsHostFixture;
  let harness: Harness;
  let endpoint: ReturnType<typeof spawnTracked>;
  let out: ReturnType<typeof capture>;
  let port = 0;
  let baseline: { fds: number; rssMb: number };

  /**
   * What an SDK does: GET /credentials with the token, retrying a connection
   * the endpoint closed (the SDKs retry three times): while the flood holds
   * the endpoint's connection cap, a new connection may be closed at once.
   */
  const sdkAsks = async (): Promise<number> => {
    const t0 = performance.now();
    const get = () => fetch(`http://127.0.0.1:${port}/credentials`, { headers: { authorization: TOKEN } });
    const res = await get().catch(get).catch(get);
    expect(res.status).to.equal(200);
    expect(((await res.json()) as { AccessKeyId: string }).AccessKeyId).to.match(/^ASIA/);
    return performance.now() - t0;
  };

  const whileSdk = <T>(attack: () => Promise<T>) => probeWhile(attack, sdkAsks);

  const served = (run: { latencies: number[]; quiet: number[] }) => expectUnharmed(run, 'the SDK');

  before(async () => {
    host = await startAwsHost();
    const handler = createAwsHandler({ log: memoryLogger('aws'), configFile: host.configFile, credentialsFile: host.credentialsFile });
    harness = await startDirectBroker({
      // The SDK asks every 25 ms during the attacks: its shed's own rate limit must not be what answers.
      policy: { version: 1, defaults: { aws: { sts_endpoint: host.sts.url }, limits: { aws: { per_minute: 100_000, burst: 10_000 } } }, sheds: { alpha: { aws: { role: ROLE_DEV } } } },
      handlers: [handler],
    });
    const dir = tempDir('shed-adv-aws');
    const tokenFile = path.join(dir, 'token');
    fs.writeFileSync(tokenFile, TOKEN, { mode: 0o600 });
    const [cmd, args] = binCommand('shed-ext-aws-credentials', ['--port', '0', '--publish-url', harness.publishUrl('alpha'), '--auth-token-file', tokenFile, '--status-dir', dir]);
    endpoint = spawnTracked(cmd, args);
    out = capture(endpoint);
    const url = await waitFor(() => /serving AWS credentials at http:\/\/127\.0\.0\.1:(\d+)\/credentials/.exec(out.stderr()), 20_000, 'the endpoint');
    port = Number(url[1]);
    for (let i = 0; i < 20; i++) await sdkAsks();
    baseline = procStats(endpoint.pid!);
  });

  after(async () => {
    if (endpoint) expect(await stopProcess(endpoint)).to.equal(0);
    await harness?.stop();
    await host?.stop();
    // Nothing the endpoint wrote quotes the token, a source secret or an issued one.
    const text = out?.stderr() ?? '';
    for (const secret of [TOKEN, SOURCE.secretAccessKey]) expect(text).not.to.include(secret);
  });

  it('10,000 generated requests: the SDK is served throughout, nothing hangs, descriptors and memory come back', async () => {
    const r = prng(SEED);
    const requests = Array.from({ length: 10_000 }, () => {
      const req = hostileRequest(r, '/credentials');
      // Half of them carry the token, so they get past it to the parser and the bus.
      if (r() < 0.5) req.pieces[0] = Buffer.from(req.pieces[0]!.toString('latin1').replace(/^([^\r\n]*\r\n)/, `$1Authorization: ${TOKEN}\r\n`), 'latin1');
      return req;
    });
    const run = await whileSdk(() => flood({ host: '127.0.0.1', port }, requests.length, 32, (i) => requests[i]!));
    served(run);
    const { result } = run;
    expect(result.lingering, `seed ${SEED}`).to.equal(0);
    for (const body of result.bodies) expect(body).not.to.include(SOURCE.secretAccessKey);
    await waitFor(() => procStats(endpoint.pid!).fds <= baseline.fds, 30_000, 'the endpoint to let go of every connection');
    expect(procStats(endpoint.pid!).rssMb - baseline.rssMb, 'RSS growth (MB)').to.be.below(160);
    // The refusals it logged are summed up, not one line each.
    expect(out.stderr().split('\n').length).to.be.below(200);
  });

  it('a hostile Host, a missing or wrong token: refused, and the log says so once a minute, not per request', async () => {
    const statuses: number[] = [];
    for (let i = 0; i < 200; i++) {
      const host = i % 2 ? `evil-${i}.example\x1b[2J` : '127.0.0.1';
      const raw = await new Promise<string>((resolve) => {
        const s = net.connect(port, '127.0.0.1', () => s.end(`GET /credentials HTTP/1.1\r\nHost: ${host}\r\n${i % 4 === 0 ? `Authorization: wrong-${i}\r\n` : ''}\r\n`));
        let text = '';
        s.on('data', (d: Buffer) => (text += d.toString()));
        s.on('close', () => resolve(text));
        s.on('error', () => resolve(text));
      });
      statuses.push(Number(/^HTTP\/1\.1 (\d{3})/.exec(raw)?.[1] ?? 0));
    }
    expect(statuses.every((s) => s === 403 || s === 400), JSON.stringify([...new Set(statuses)])).to.equal(true);
    const refusals = out.stderr().split('\n').filter((l) => /refused/.test(l));
    expect(refusals.length).to.be.below(10);
    expect(out.stderr()).not.to.include('\x1b');
    expect(Math.min(await sdkAsks(), await sdkAsks(), await sdkAsks())).to.be.below(100);
  });

  it('1,000 connections held open: closed past its cap at once, all let go, the SDK served again', async () => {
    // All from one address inside the VM: a process that holds every connection shuts out the
    // others until the header timeout closes them. The endpoint must survive it and recover.
    const held: net.Socket[] = [];
    try {
      for (let i = 0; i < 1000; i++) {
        const s = net.connect(port, '127.0.0.1');
        s.on('error', () => undefined);
        held.push(s);
        if (i % 50 === 0) await new Promise((r) => setImmediate(r));
      }
      await waitFor(() => held.filter((s) => !s.destroyed && !s.closed).length <= 256, 10_000, 'the endpoint to keep at most 256');
      expect(procStats(endpoint.pid!).fds - baseline.fds).to.be.at.most(256);
    } finally {
      for (const s of held) s.destroy();
    }
    await waitFor(() => procStats(endpoint.pid!).fds <= baseline.fds, 30_000, 'the endpoint to let go of every connection');
    expect(Math.min(await sdkAsks(), await sdkAsks())).to.be.below(100);
  });
});
