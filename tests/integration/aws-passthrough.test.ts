/**
 * aws.mode passthrough end to end: the host's profile holds session
 * credentials (in a temp HOME's ~/.aws/credentials, as `aws sso login`,
 * saml2aws and friends leave them, or from a credential_process); the real
 * AWS CLI in the "guest", through the real guest endpoint, gets them as they
 * are and signs a call the test STS verifies with their secret. Editing the
 * file changes the next answer (nothing is cached), and a profile of
 * long-lived keys is refused with a code and message that carry no secret.
 */
import { expect } from 'chai';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { createAwsHandler } from '../../host-broker/aws/handler.js';
import type { AuditEntry, MemoryAudit } from '../../host-broker/audit/audit.js';
import { memoryLogger } from '../../protocol/log.js';
import { BusClient } from '../../guest-services/bus-client.js';
import { SOURCE } from '../support/aws-fixtures.js';
import { startDirectBroker, type Harness } from '../support/harness.js';
import { binCommand, capture, run, spawnTracked, stopProcess, tempDir, waitFor } from '../support/procs.js';
import { StsEmulator } from '../support/sts-emulator.js';

const TOKEN = 'shed-test-token-passthrough-4b1d9e';
const LONG_LIVED = { accessKeyId: 'AKIALONGLIVEDHOST001', secretAccessKey: 'longLivedHostSecret/NeverInAVm0123456789' };

interface Session { accessKeyId: string; secretAccessKey: string; sessionToken: string; expiration: Date; arn: string }

function newSession(user: string, minutes = 60): Session {
  return {
    accessKeyId: `ASIA${randomBytes(8).toString('hex').toUpperCase()}`,
    secretAccessKey: randomBytes(30).toString('base64'),
    sessionToken: `IQoJ${randomBytes(120).toString('base64')}`,
    expiration: new Date(Math.floor(Date.now() / 1000) * 1000 + minutes * 60_000),
    arn: `arn:aws:sts::111122223333:assumed-role/AWSReservedSSO_Developer_0a1b2c3d/${user}`,
  };
}

describe('aws-credentials passthrough: the source profile\'s own session, through the real AWS CLI', function () {
  this.timeout(60_000);
  let sts: StsEmulator;
  let home: string;
  let credentialsFile: string;
  let configFile: string;
  let harness: Harness;
  const guests: Array<{ child: ReturnType<typeof spawnTracked>; out: ReturnType<typeof capture>; url: string }> = [];
  const sessions: Session[] = [];
  const hostLog = memoryLogger('aws');

  /** ~/.aws/credentials as the host's tools write it: `sso` a session (with its expiry key), `keys` long-lived keys. */
  const writeCredentials = (sso: Session) => {
    fs.writeFileSync(credentialsFile, [
      '[sso]',
      `aws_access_key_id = ${sso.accessKeyId}`,
      `aws_secret_access_key = ${sso.secretAccessKey}`,
      `aws_session_token = ${sso.sessionToken}`,
      `x_security_token_expires = ${sso.expiration.toISOString()}`,
      '',
      '[keys]',
      `aws_access_key_id = ${LONG_LIVED.accessKeyId}`,
      `aws_secret_access_key = ${LONG_LIVED.secretAccessKey}`,
      '',
    ].join('\n'), { mode: 0o600 });
  };

  const startGuest = async (shed: string) => {
    const tokenFile = path.join(tempDir('aws-token'), 'token');
    fs.writeFileSync(tokenFile, TOKEN, { mode: 0o600 });
    const [cmd, args] = binCommand('shed-ext-aws-credentials', ['--port', '0', '--publish-url', harness.publishUrl(shed), '--auth-token-file', tokenFile, '--status-dir', tempDir('aws-status')]);
    const child = spawnTracked(cmd, args, { env: { PATH: process.env.PATH, HOME: tempDir('guest-home') } });
    const out = capture(child);
    const url = await waitFor(() => /serving AWS credentials at (\S+)/.exec(out.stderr())?.[1], 15_000, 'the guest endpoint to listen');
    guests.push({ child, out, url });
    return url;
  };

  /** The AWS CLI v2 in a clean environment: only the container endpoint, no host credentials. */
  const awsCli = (url: string) => run('/usr/bin/aws', ['sts', 'get-caller-identity', '--endpoint-url', sts.url, '--region', 'us-east-1', '--output', 'json'], {
    env: { PATH: '/usr/bin:/bin', HOME: tempDir('cli-home'), AWS_CONTAINER_CREDENTIALS_FULL_URI: url, AWS_CONTAINER_AUTHORIZATION_TOKEN: TOKEN },
  });

  before(async () => {
    sts = new StsEmulator({ sourceKeys: [SOURCE] });
    await sts.start();
    home = tempDir('host-home');
    fs.mkdirSync(path.join(home, '.aws'), { mode: 0o700 });
    credentialsFile = path.join(home, '.aws', 'credentials');
    configFile = path.join(home, '.aws', 'config');
    const first = newSession('dev@example.com');
    sessions.push(first);
    sts.knowSession(first);
    writeCredentials(first);
    // A credential_process that hands out a session with its own Expiration (as SSO and vault helpers do).
    const procSession = newSession('proc@example.com', 30);
    sessions.push(procSession);
    sts.knowSession(procSession);
    const script = path.join(home, 'creds.sh');
    fs.writeFileSync(script, `#!/bin/sh\nprintf '%s' '${JSON.stringify({ Version: 1, AccessKeyId: procSession.accessKeyId, SecretAccessKey: procSession.secretAccessKey, SessionToken: procSession.sessionToken, Expiration: procSession.expiration.toISOString() })}'\n`, { mode: 0o700 });
    fs.writeFileSync(configFile, `[default]\nregion = us-east-1\n\n[profile proc]\ncredential_process = ${script}\n`, { mode: 0o600 });
    const handler = createAwsHandler({ log: hostLog, configFile, credentialsFile });
    harness = await startDirectBroker({
      policy: {
        version: 1,
        defaults: { aws: { mode: 'passthrough', sts_endpoint: sts.url } },
        sheds: {
          sso: { aws: { source_profile: 'sso' } },
          proc: { aws: { source_profile: 'proc' } },
          keys: { aws: { source_profile: 'keys' } },
          missing: { aws: { source_profile: 'nope' } },
        },
      },
      handlers: [handler],
    });
  });

  after(async () => {
    for (const g of guests.splice(0)) await stopProcess(g.child);
    await harness?.stop();
    await sts?.stop();
  });

  it('vends the profile\'s session credentials as they are: the AWS CLI signs with them and STS verifies it', async () => {
    const url = await startGuest('sso');
    const r = await awsCli(url);
    expect(r.code, r.stderr).to.equal(0);
    expect(JSON.parse(r.stdout).Arn).to.equal(sessions[0]!.arn);
    const res = await fetch(url, { headers: { authorization: TOKEN } });
    const body = await res.json() as Record<string, string>;
    expect(body).to.deep.equal({
      AccessKeyId: sessions[0]!.accessKeyId,
      SecretAccessKey: sessions[0]!.secretAccessKey,
      Token: sessions[0]!.sessionToken,
      Expiration: sessions[0]!.expiration.toISOString().replace(/\.\d{3}Z$/, 'Z'),
    });
    expect(sts.assumeRoleCount).to.equal(0);
  });

  it('reads the profile again on each request: a changed ~/.aws/credentials shows in the next answer', async () => {
    const url = guests[0]!.url;
    const next = newSession('dev-after-sso-login@example.com', 45);
    sessions.push(next);
    sts.knowSession(next);
    writeCredentials(next);
    const r = await awsCli(url);
    expect(r.code, r.stderr).to.equal(0);
    expect(JSON.parse(r.stdout).Arn).to.equal(next.arn);
    const res = await fetch(url, { headers: { authorization: TOKEN } });
    expect((await res.json() as Record<string, string>).AccessKeyId).to.equal(next.accessKeyId);
    // The first session is what STS last saw before the edit; the CLI's call after it was signed with the new one.
    const lastCall = sts.calls.filter((c) => c.action === 'GetCallerIdentity').pop()!;
    expect(lastCall).to.include({ ok: true, accessKeyId: next.accessKeyId });
  });

  it('takes a session from a credential_process with its Expiration', async () => {
    const url = await startGuest('proc');
    const r = await awsCli(url);
    expect(r.code, r.stderr).to.equal(0);
    expect(JSON.parse(r.stdout).Arn).to.equal(sessions[1]!.arn);
    const body = await (await fetch(url, { headers: { authorization: TOKEN } })).json() as Record<string, string>;
    expect(body.Expiration).to.equal(sessions[1]!.expiration.toISOString().replace(/\.\d{3}Z$/, 'Z'));
  });

  it('refuses long-lived keys: the guest gets LONG_LIVED_CREDENTIALS and the fix, never the key', async () => {
    const url = await startGuest('keys');
    const res = await fetch(url, { headers: { authorization: TOKEN } });
    expect(res.status).to.equal(502);
    const body = await res.json() as { Code: string; Message: string };
    expect(body.Code).to.equal('LONG_LIVED_CREDENTIALS');
    expect(body.Message).to.contain('AWS profile keys on the host holds long-lived keys (no session token), and long-lived keys never enter a shed');
    const r = await awsCli(url);
    expect(r.code).to.not.equal(0);
    expect(r.stderr).to.contain('LONG_LIVED_CREDENTIALS');
    for (const text of [r.stderr, r.stdout, JSON.stringify(body)]) {
      expect(text).not.to.contain(LONG_LIVED.secretAccessKey);
      expect(text).not.to.contain(LONG_LIVED.accessKeyId);
    }
  });

  it('a profile that cannot be loaded is SOURCE_CREDENTIALS_FAILED, the reason in the host log only', async () => {
    const bus = new BusClient({ publishUrl: harness.publishUrl('missing') });
    try {
      const answer = await bus.publish('aws-credentials', { operation: 'get_credentials' }).then(() => undefined, (err: Error & { code?: string }) => err);
      expect(answer?.code).to.equal('SOURCE_CREDENTIALS_FAILED');
      expect(answer?.message).to.match(/the host could not load the session credentials of its AWS profile nope \(passthrough\); the shed-host-agent log on the host says why/);
      expect(hostLog.lines.join('\n')).to.match(/the source credentials of AWS profile "nope" could not be loaded: .*nope/);
    } finally {
      bus.close();
    }
  });

  it('status says passthrough and the profile; the audit names it and holds no secret', async () => {
    const bus = new BusClient({ publishUrl: harness.publishUrl('sso') });
    try {
      expect(await bus.publish('aws-credentials', { operation: 'status' })).to.deep.equal({ connected: true, role: 'passthrough:sso', cached_until: null });
    } finally {
      bus.close();
    }
    const entries = ((harness.audit as MemoryAudit).entries as AuditEntry[]).filter((e) => e.ns === 'aws-credentials' && e.op === 'get_credentials');
    expect(entries.find((e) => e.shed === 'sso' && e.result === 'ok')?.detail).to.match(/^passthrough sso until \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
    expect(entries.find((e) => e.shed === 'keys')).to.include({ result: 'denied', detail: 'passthrough keys: long-lived keys refused' });
    const secrets = [LONG_LIVED.secretAccessKey, ...sessions.flatMap((s) => [s.secretAccessKey, s.sessionToken])];
    const outputs = [JSON.stringify(entries), harness.log.lines.join('\n'), hostLog.lines.join('\n'), ...guests.flatMap((g) => [g.out.stderr(), g.out.stdout()])];
    for (const text of outputs) for (const s of secrets) expect(text.includes(s), 'a secret in an output').to.equal(false);
  });
});
