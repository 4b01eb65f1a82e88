/**
 * The guest endpoint's own surface: paths and methods, what an SDK sees when
 * the host is gone, slow or speaks nonsense, the token rules (including the JS
 * SDK's second, legacy request), and the binary's flags.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import path from 'node:path';
import { createAwsHandler } from '../../host-broker/aws/handler.js';
import { startAwsEndpoint, type RunningEndpoint } from '../../guest-services/aws-credentials/server.js';
import { memoryLogger } from '../../protocol/log.js';
import { ROLE_DEV, startAwsHost, type AwsHostFixture } from '../support/aws-fixtures.js';
import { startDirectBroker, type Harness } from '../support/harness.js';
import { binCommand, capture, REPO_ROOT, run, spawnTracked, stopProcess, tempDir, waitFor } from '../support/procs.js';

const TOKEN = 'endpoint-test-token-0a1b2c3d4e5f';

describe('shed-ext-aws-credentials endpoint', function () {
  this.timeout(20_000);
  let host: AwsHostFixture;
  let harness: Harness;
  const endpoints: RunningEndpoint[] = [];
  const servers: http.Server[] = [];
  let log: ReturnType<typeof memoryLogger>;

  const endpoint = async (publishUrl: string, extra: { authToken?: string; statusDir?: string; deadlineMs?: number } = {}, waitReady = true) => {
    const e = await startAwsEndpoint({ host: '127.0.0.1', port: 0, publishUrl, log, ...extra });
    endpoints.push(e);
    if (waitReady) await e.ready;
    return e;
  };
  /** A loopback HTTP server standing in for a broken shed-agent. */
  const fakeAgent = async (handler: http.RequestListener) => {
    const s = http.createServer(handler);
    servers.push(s);
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
    return `http://127.0.0.1:${(s.address() as AddressInfo).port}/v1/publish`;
  };

  before(async () => {
    host = await startAwsHost();
    const handler = createAwsHandler({ log: memoryLogger('aws'), configFile: host.configFile, credentialsFile: host.credentialsFile });
    harness = await startDirectBroker({
      policy: { version: 1, defaults: { aws: { sts_endpoint: host.sts.url } }, sheds: { alpha: { aws: { role: ROLE_DEV } } } },
      handlers: [handler],
    });
  });
  beforeEach(() => {
    log = memoryLogger('shed-ext-aws-credentials');
  });
  afterEach(async () => {
    for (const e of endpoints.splice(0)) await e.close();
    for (const s of servers.splice(0)) {
      s.closeAllConnections();
      await new Promise((r) => s.close(r));
    }
  });
  after(async () => {
    await harness?.stop();
    await host?.stop();
  });

  it('404 for other paths, 405 (Allow: GET) for other methods, 200 JSON for GET /credentials', async () => {
    const e = await endpoint(harness.publishUrl('alpha'));
    const base = e.url.replace(/\/credentials$/, '');
    const nf = await fetch(`${base}/latest/meta-data/`);
    expect(nf.status).to.equal(404);
    expect(await nf.json()).to.include({ Code: 'NotFound' });
    const na = await fetch(e.url, { method: 'POST', body: '{}' });
    expect(na.status).to.equal(405);
    expect(na.headers.get('allow')).to.contain('GET');
    const ok = await fetch(e.url);
    expect(ok.status).to.equal(200);
    expect(ok.headers.get('content-type')).to.equal('application/json');
    expect(ok.headers.get('cache-control')).to.equal('no-store');
    expect((await ok.json() as { Expiration: string }).Expiration).to.match(/Z$/);
  });

  it('serves only requests addressed to a loopback name (no DNS rebinding), token or not', async () => {
    const e = await endpoint(harness.publishUrl('alpha'));
    const get = (host: string | undefined) => new Promise<{ status: number; body: string }>((resolve, reject) => {
      const headers: http.OutgoingHttpHeaders = host === undefined ? {} : { host };
      const req = http.request({ host: '127.0.0.1', port: e.port, path: '/credentials', headers, setHost: host !== undefined }, (res) => {
        let body = '';
        res.on('data', (c: Buffer) => (body += c.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      });
      req.on('error', reject);
      req.end();
    });
    for (const host of [`127.0.0.1:${e.port}`, `localhost:${e.port}`, 'LOCALHOST', `[::1]:${e.port}`]) {
      expect((await get(host)).status, host).to.equal(200);
    }
    for (const host of [`evil.example:${e.port}`, '127.0.0.1.nip.io', `127.0.0.2:${e.port}`, 'localhost.evil.example']) {
      const res = await get(host);
      expect(res.status, `Host ${JSON.stringify(host)}`).to.equal(403);
      expect(JSON.parse(res.body).Message).to.match(/only requests addressed to 127\.0\.0\.1 or localhost/);
      expect(res.body).not.to.contain('AccessKeyId');
    }
    // HTTP/1.0 needs no Host: without one, nothing says where it was meant to go.
    const raw = await new Promise<string>((resolve) => {
      const sock = net.connect(e.port, '127.0.0.1', () => sock.write('GET /credentials HTTP/1.0\r\n\r\n'));
      let out = '';
      sock.on('data', (d: Buffer) => (out += d.toString()));
      sock.on('close', () => resolve(out));
    });
    expect(raw).to.match(/^HTTP\/1\.1 403 /);
    expect(log.lines.join('\n')).to.match(/refused a request addressed to Host evil\.example/);
    expect(log.lines.join('\n')).to.match(/refused a request addressed to no Host/);
  });

  it('503 naming shed-host-agent when the broker socket is missing; the status file says why', async () => {
    const statusDir = tempDir('aws-st');
    const e = await endpoint(`unix:${path.join(statusDir, 'gone.sock')}`, { statusDir });
    const status = fs.readFileSync(path.join(statusDir, 'aws-credentials.status'), 'utf8');
    expect(status).to.match(/^not connected: cannot reach the broker socket .*gone\.sock/);
    const res = await fetch(e.url);
    expect(res.status).to.equal(503);
    const body = await res.json() as Record<string, string>;
    expect(Object.keys(body)).to.deep.equal(['Code', 'Message', 'hint']);
    expect(body.Code).to.equal('UNREACHABLE');
    expect(body.Message).to.contain('shed-host-agent');
    expect(log.lines.join('\n')).to.contain('credentials unavailable');
    await e.close();
    expect(fs.existsSync(path.join(statusDir, 'aws-credentials.status'))).to.equal(false);
  });

  it('503 DEADLINE when the host does not answer in time', async () => {
    const url = await fakeAgent(() => undefined);
    const e = await endpoint(url, { deadlineMs: 300 }, false);
    const res = await fetch(e.url);
    expect(res.status).to.equal(503);
    const body = await res.json() as Record<string, string>;
    expect(body.Code).to.equal('DEADLINE');
    expect(body.hint).to.contain('shed-host-agent run');
  });

  it('502 when the answer is not credentials', async () => {
    const url = await fakeAgent((req, res) => {
      req.resume();
      req.on('end', () => {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ id: '0192b3a4-7c1e-7d2a-9f00-2b5c1e0a9d11', namespace: 'aws-credentials', type: 'response', final: true, timestamp: new Date().toISOString(), payload: { access_key_id: 'ASIA' } }));
      });
    });
    const e = await endpoint(url);
    const res = await fetch(e.url);
    expect(res.status).to.equal(502);
    expect(await res.json()).to.include({ Code: 'MALFORMED_RESPONSE' });
  });

  it('the JS SDK honours AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE; with a wrong token both its requests (HTTP and legacy) are refused', async () => {
    const e = await endpoint(harness.publishUrl('alpha'), { authToken: TOKEN });
    const dir = tempDir('aws-js');
    const script = `import { fromNodeProviderChain } from '@aws-sdk/credential-providers';
      try { const c = await fromNodeProviderChain()(); console.log(c.accessKeyId); } catch (e) { console.log('FAILED', e.name); }`;
    const js = async (token: string) => {
      const file = path.join(dir, 'token');
      fs.writeFileSync(file, token, { mode: 0o600 });
      return run(process.execPath, ['--input-type=module', '-e', script], {
        cwd: REPO_ROOT,
        env: { PATH: '/usr/bin:/bin', HOME: dir, AWS_CONTAINER_CREDENTIALS_FULL_URI: e.url, AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE: file, AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true', AWS_EC2_METADATA_DISABLED: 'true' },
      });
    };
    expect((await js(TOKEN)).stdout.trim()).to.match(/^ASIA/);
    const refusedBefore = log.lines.filter((l) => l.includes('Authorization header')).length;
    const bad = await js('not-the-token');
    expect(bad.stdout.trim()).to.match(/^FAILED/);
    const refused = log.lines.filter((l) => l.includes('Authorization header')).length - refusedBefore;
    expect(refused).to.be.at.least(2);
  });

  describe('the binary', () => {
    const bin = (args: string[], env: NodeJS.ProcessEnv = {}) => {
      const [cmd, a] = binCommand('shed-ext-aws-credentials', args);
      return run(cmd, a, { env: { PATH: process.env.PATH, ...env } });
    };

    it('--help, version, and usage errors exit 2 with a pointer to --help', async () => {
      const [help, version, port, host, extra] = await Promise.all([
        bin(['--help']), bin(['version']), bin(['--port', 'http']), bin(['--host', '0.0.0.0']), bin(['--frobnicate']),
      ]);
      expect(help.code).to.equal(0);
      expect(help.stdout).to.contain('--auth-token-file').and.contain('AWS_CONTAINER_CREDENTIALS_FULL_URI');
      expect(version.stdout).to.match(/^shed-ext-aws-credentials \d+\.\d+\.\d+\n$/);
      for (const r of [port, host, extra]) {
        expect(r.code).to.equal(2);
        expect(r.stderr).to.contain('--help');
      }
      expect(host.stderr).to.contain('--allow-non-loopback');
    });

    it('a missing token file stops it with what to do; a busy port too', async () => {
      const missing = await bin(['--port', '0', '--auth-token-file', '/nonexistent/token']);
      expect(missing.code).to.equal(1);
      expect(missing.stderr).to.contain('/nonexistent/token').and.contain('ENOENT');
      const busy = await fakeAgent(() => undefined);
      const busyPort = new URL(busy).port;
      const inUse = await bin(['--port', busyPort, '--status-dir', tempDir('aws-st')]);
      expect(inUse.code).to.equal(1);
      expect(inUse.stderr).to.contain('in use').and.contain('--port');
    });

    it('takes the token from the environment; a token file ending in a newline is warned about and still works', async () => {
      const dir = tempDir('aws-tok');
      const file = path.join(dir, 'token');
      fs.writeFileSync(file, `${TOKEN}\n`, { mode: 0o600 });
      const [cmd, a] = binCommand('shed-ext-aws-credentials', ['--port', '0', '--publish-url', harness.publishUrl('alpha'), '--status-dir', dir]);
      const child = spawnTracked(cmd, a, { env: { PATH: process.env.PATH, AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE: file, AWS_CONTAINER_AUTHORIZATION_TOKEN: 'ignored-when-file-set' } });
      const out = capture(child);
      try {
        const url = await waitFor(() => /serving AWS credentials at (\S+)/.exec(out.stderr())?.[1], 15_000, 'the endpoint');
        expect(out.stderr()).to.contain('ends in a newline');
        expect((await fetch(url, { headers: { authorization: TOKEN } })).status).to.equal(200);
        expect((await fetch(url, { headers: { authorization: 'ignored-when-file-set' } })).status).to.equal(403);
        expect((await fetch(url)).status).to.equal(403);
      } finally {
        expect(await stopProcess(child)).to.equal(0);
      }
      expect(fs.existsSync(path.join(dir, 'aws-credentials.status'))).to.equal(false);
    });
  });
});
