/**
 * aws-credentials end to end, on both transports: real AWS clients in a clean
 * environment (AWS CLI v2, boto3, the JS SDK v3 default chain) find the
 * guest endpoint through AWS_CONTAINER_CREDENTIALS_FULL_URI and call the test
 * STS — which verifies their signatures made with the issued credentials —
 * and get the assumed-role ARN of the shed's own role.
 */
import { GetCallerIdentityCommand, STSClient } from '@aws-sdk/client-sts';
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { createAwsHandler } from '../../host-broker/aws/handler.js';
import type { AuditEntry, MemoryAudit } from '../../host-broker/audit/audit.js';
import { memoryLogger } from '../../protocol/log.js';
import { BusClient } from '../../guest-services/bus-client.js';
import { startAwsEndpoint, type RunningEndpoint } from '../../guest-services/aws-credentials/server.js';
import { ROLE_DEV, ROLE_STAGING, SOURCE, startAwsHost, type AwsHostFixture } from '../support/aws-fixtures.js';
import { startShedBroker } from '../support/bus-emulator.js';
import { startDirectBroker, type Harness } from '../support/harness.js';
import { binCommand, capture, REPO_ROOT, run, spawnTracked, stopProcess, tempDir, waitFor } from '../support/procs.js';

const TOKEN = 'shed-test-token-7f3a9c1e5b2d4f60';
const ASSUMED = (role: string, shed: string) => new RegExp(`^arn:aws:sts::123456789012:assumed-role/${role.split('/').pop()}/shed-${shed}-\\d{10}$`);

for (const kind of ['direct', 'shed'] as const) {
  describe(`aws-credentials end to end (${kind} transport)`, function () {
    this.timeout(30_000);
    let host: AwsHostFixture;
    let harness: Harness;
    let guest: ReturnType<typeof spawnTracked>;
    let guestOut: ReturnType<typeof capture>;
    let guestUrl: string;
    let statusDir: string;
    const endpoints: RunningEndpoint[] = [];
    const guestLog = memoryLogger('shed-ext-aws-credentials');
    let home: string;

    const inProcessEndpoint = async (shed: string, authToken: string | undefined = TOKEN) => {
      const e = await startAwsEndpoint({ host: '127.0.0.1', port: 0, publishUrl: harness.publishUrl(shed), authToken, log: guestLog });
      endpoints.push(e);
      await e.ready;
      return e;
    };
    const cleanEnv = (url: string, token: string | null = TOKEN): NodeJS.ProcessEnv => ({
      PATH: '/usr/bin:/bin',
      HOME: home,
      AWS_CONTAINER_CREDENTIALS_FULL_URI: url,
      ...(token ? { AWS_CONTAINER_AUTHORIZATION_TOKEN: token } : {}),
      AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
    });

    before(async () => {
      host = await startAwsHost({ assumeDelayMs: 30 });
      const handler = createAwsHandler({ log: memoryLogger('aws'), configFile: host.configFile, credentialsFile: host.credentialsFile });
      const policy = {
        version: 1,
        defaults: {
          aws: { sts_endpoint: host.sts.url, region: 'us-east-1' },
          limits: { max_concurrent: 256, aws: { per_minute: 100_000, burst: 1000 } },
        },
        sheds: {
          alpha: { aws: { role: ROLE_DEV } },
          beta: { aws: { role: ROLE_STAGING } },
          burst: { aws: { role: ROLE_DEV } },
          flaky: { aws: { role: ROLE_STAGING } },
          norole: {},
        },
      };
      const start = kind === 'direct' ? startDirectBroker : startShedBroker;
      harness = await start({ policy, handlers: [handler] });
      home = tempDir('aws-home');
      statusDir = tempDir('aws-status');
      const tokenFile = path.join(tempDir('aws-token'), 'token');
      fs.writeFileSync(tokenFile, TOKEN, { mode: 0o600 });
      const [cmd, args] = binCommand('shed-ext-aws-credentials', ['--port', '0', '--publish-url', harness.publishUrl('alpha'), '--auth-token-file', tokenFile, '--status-dir', statusDir]);
      guest = spawnTracked(cmd, args, { env: { PATH: process.env.PATH, HOME: home } });
      guestOut = capture(guest);
      guestUrl = await waitFor(() => /serving AWS credentials at (\S+)/.exec(guestOut.stderr())?.[1], 15_000, 'the guest endpoint to listen');
    });

    after(async () => {
      for (const e of endpoints.splice(0)) await e.close();
      if (guest) await stopProcess(guest);
      await harness?.stop();
      await host?.stop();
    });

    it('writes the status file after its startup ping', async () => {
      const text = await waitFor(() => fs.existsSync(path.join(statusDir, 'aws-credentials.status')) && fs.readFileSync(path.join(statusDir, 'aws-credentials.status'), 'utf8'), 5000, 'the status file');
      expect(text).to.equal('connected\n');
      expect(fs.statSync(path.join(statusDir, 'aws-credentials.status')).mode & 0o777).to.equal(0o600);
    });

    it('AWS CLI v2 gets the assumed-role ARN of the shed\'s role', async () => {
      const r = await run('/usr/bin/aws', ['sts', 'get-caller-identity', '--endpoint-url', host.sts.url, '--region', 'us-east-1', '--output', 'json'], { env: cleanEnv(guestUrl) });
      expect(r.code, r.stderr).to.equal(0);
      expect(JSON.parse(r.stdout).Arn).to.match(ASSUMED(ROLE_DEV, 'alpha'));
    });

    it('boto3 gets the assumed-role ARN', async () => {
      const script = `import boto3\nprint(boto3.client("sts", region_name="us-east-1", endpoint_url="${host.sts.url}").get_caller_identity()["Arn"])`;
      const r = await run('/usr/bin/python3', ['-c', script], { env: cleanEnv(guestUrl) });
      expect(r.code, r.stderr).to.equal(0);
      expect(r.stdout.trim()).to.match(ASSUMED(ROLE_DEV, 'alpha'));
    });

    it('@aws-sdk/client-sts from its default provider chain gets the assumed-role ARN', async () => {
      const script = `import { STSClient, GetCallerIdentityCommand } from '@aws-sdk/client-sts';
        const c = new STSClient({ region: 'us-east-1', endpoint: ${JSON.stringify(host.sts.url)} });
        console.log((await c.send(new GetCallerIdentityCommand({}))).Arn);`;
      const r = await run(process.execPath, ['--input-type=module', '-e', script], { env: cleanEnv(guestUrl), cwd: REPO_ROOT });
      expect(r.code, r.stderr).to.equal(0);
      expect(r.stdout.trim()).to.match(ASSUMED(ROLE_DEV, 'alpha'));
    });

    it('a second shed gets its own role, and the calls signed with its credentials verify', async () => {
      const e = await inProcessEndpoint('beta');
      const res = await fetch(e.url, { headers: { authorization: TOKEN } });
      expect(res.status).to.equal(200);
      expect(res.headers.get('content-type')).to.equal('application/json');
      const body = await res.json() as Record<string, string>;
      expect(Object.keys(body).sort()).to.deep.equal(['AccessKeyId', 'Expiration', 'SecretAccessKey', 'Token']);
      const client = new STSClient({ region: 'us-east-1', endpoint: host.sts.url, credentials: { accessKeyId: body.AccessKeyId!, secretAccessKey: body.SecretAccessKey!, sessionToken: body.Token! } });
      try {
        expect((await client.send(new GetCallerIdentityCommand({}))).Arn).to.match(ASSUMED(ROLE_STAGING, 'beta'));
      } finally {
        client.destroy();
      }
    });

    it('200 concurrent first requests cause exactly one AssumeRole', async () => {
      const e = await inProcessEndpoint('burst');
      const before = host.sts.assumeRoleCount;
      const answers = await Promise.all(Array.from({ length: 200 }, async () => {
        const res = await fetch(e.url, { headers: { authorization: TOKEN } });
        expect(res.status).to.equal(200);
        return (await res.json() as { AccessKeyId: string }).AccessKeyId;
      }));
      expect(host.sts.assumeRoleCount - before).to.equal(1);
      expect(new Set(answers).size).to.equal(1);
    });

    it('refuses a request without the token, or with another one (403)', async () => {
      for (const headers of [{}, { authorization: `${TOKEN}x` }, { authorization: `Bearer ${TOKEN}` }] as Record<string, string>[]) {
        const res = await fetch(guestUrl, { headers });
        expect(res.status).to.equal(403);
        expect((await res.json() as { Code: string }).Code).to.equal('AccessDenied');
      }
      // What the user sees does not depend on the transport: the CLI (3 tries, ~4 s) runs once.
      if (kind !== 'direct') return;
      const r = await run('/usr/bin/aws', ['sts', 'get-caller-identity', '--endpoint-url', host.sts.url, '--region', 'us-east-1'], { env: cleanEnv(guestUrl, null) });
      expect(r.code).to.not.equal(0);
      expect(r.stderr).to.contain('403').and.contain('AWS_CONTAINER_AUTHORIZATION_TOKEN');
    });

    it('a shed without a role: the CLI shows ROLE_NOT_FOUND and the fix', async function () {
      this.timeout(30_000);
      const e = await inProcessEndpoint('norole');
      const res = await fetch(e.url, { headers: { authorization: TOKEN } });
      expect(res.status).to.equal(502);
      expect(await res.json()).to.include({ Code: 'ROLE_NOT_FOUND' });
      if (kind !== 'direct') return;
      const r = await run('/usr/bin/aws', ['sts', 'get-caller-identity', '--endpoint-url', host.sts.url, '--region', 'us-east-1'], { env: cleanEnv(e.url) });
      expect(r.code).to.not.equal(0);
      expect(r.stderr).to.contain('ROLE_NOT_FOUND').and.contain('set aws.role for this shed in the host policy');
    });

    it('an STS failure is a 502 with STS\'s code, and the next request succeeds', async () => {
      const e = await inProcessEndpoint('flaky');
      host.sts.failAssumeRole({ code: 'AccessDenied', message: 'trust policy does not allow this principal', status: 403, times: 1 });
      const bad = await fetch(e.url, { headers: { authorization: TOKEN } });
      expect(bad.status).to.equal(502);
      const body = await bad.json() as { Code: string; Message: string };
      expect(body.Code).to.equal('ASSUME_ROLE_FAILED');
      expect(body.Message).to.contain('AccessDenied').and.contain('trust policy');
      const good = await fetch(e.url, { headers: { authorization: TOKEN } });
      expect(good.status).to.equal(200);
    });

    it('status names the role and cached_until', async () => {
      const bus = new BusClient({ publishUrl: harness.publishUrl('alpha') });
      try {
        const st = await bus.publish('aws-credentials', { operation: 'status' });
        expect(st).to.include({ connected: true, role: ROLE_DEV });
        expect(st.cached_until).to.match(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
      } finally {
        bus.close();
      }
    });

    it('audit records role ARN and expiry; no secret anywhere', async () => {
      const entries = (harness.audit as MemoryAudit).entries as AuditEntry[];
      const gets = entries.filter((e) => e.ns === 'aws-credentials' && e.op === 'get_credentials');
      expect(gets.length).to.be.greaterThan(200);
      const ok = gets.find((e) => e.shed === 'alpha' && e.result === 'ok')!;
      expect(ok.detail).to.match(new RegExp(`^${ROLE_DEV} until \\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\dZ`));
      expect(gets.find((e) => e.shed === 'norole')).to.include({ result: 'denied' });
      const secrets = [SOURCE.secretAccessKey, ...host.sts.issued.flatMap((i) => [i.secretAccessKey, i.sessionToken])];
      const outputs = [JSON.stringify(entries), harness.log.lines.join('\n'), guestOut.stderr(), guestOut.stdout(), guestLog.lines.join('\n')];
      for (const text of outputs) for (const s of secrets) expect(text.includes(s), 'a secret in an output').to.equal(false);
    });
  });
}
