/**
 * The test STS is only worth something if it refuses what real STS refuses:
 * a wrong secret, a body changed after signing, an unsigned or wrong session
 * token. Real clients (the JS SDK and the AWS CLI v2) sign the calls here.
 */
import { AssumeRoleCommand, GetCallerIdentityCommand, STSClient } from '@aws-sdk/client-sts';
import { expect } from 'chai';
import { run, tempDir } from '../support/procs.js';
import { StsEmulator } from '../support/sts-emulator.js';

const SOURCE = { accessKeyId: 'AKIAEMULATORSOURCE01', secretAccessKey: 'emulatorSourceSecretKey/0123456789abcdefgh', arn: 'arn:aws:iam::111122223333:user/dev' };
const ROLE = 'arn:aws:iam::123456789012:role/dev';

describe('test STS emulator (SigV4 verification)', () => {
  let sts: StsEmulator;
  const clients: STSClient[] = [];
  const client = (credentials: { accessKeyId: string; secretAccessKey: string; sessionToken?: string }) => {
    const c = new STSClient({ region: 'us-east-1', endpoint: sts.url, credentials, maxAttempts: 1 });
    clients.push(c);
    return c;
  };

  beforeEach(async () => {
    sts = new StsEmulator({ sourceKeys: [SOURCE], roles: [ROLE] });
    await sts.start();
  });
  afterEach(async () => {
    for (const c of clients.splice(0)) c.destroy();
    await sts.stop();
  });

  it('issues credentials for AssumeRole signed with the source key, and knows them in GetCallerIdentity', async () => {
    const out = await client(SOURCE).send(new AssumeRoleCommand({ RoleArn: ROLE, RoleSessionName: 'shed-a-1', DurationSeconds: 900 }));
    expect(out.Credentials?.AccessKeyId).to.match(/^ASIA/);
    expect(out.AssumedRoleUser?.Arn).to.equal('arn:aws:sts::123456789012:assumed-role/dev/shed-a-1');
    const c = out.Credentials!;
    const who = await client({ accessKeyId: c.AccessKeyId!, secretAccessKey: c.SecretAccessKey!, sessionToken: c.SessionToken! }).send(new GetCallerIdentityCommand({}));
    expect(who.Arn).to.equal('arn:aws:sts::123456789012:assumed-role/dev/shed-a-1');
    expect(who.Account).to.equal('123456789012');
  });

  it('refuses a wrong secret, an unknown key, and a role the source may not assume', async () => {
    const wrong = client({ ...SOURCE, secretAccessKey: `${SOURCE.secretAccessKey}x` });
    await expectError(wrong.send(new GetCallerIdentityCommand({})), 'SignatureDoesNotMatch');
    await expectError(client({ accessKeyId: 'AKIAUNKNOWN000000000', secretAccessKey: 'x'.repeat(40) }).send(new GetCallerIdentityCommand({})), 'InvalidClientTokenId');
    await expectError(client(SOURCE).send(new AssumeRoleCommand({ RoleArn: 'arn:aws:iam::123456789012:role/other', RoleSessionName: 'x1' })), 'AccessDenied');
    expect(sts.assumeRoleCount).to.equal(0);
  });

  it('refuses a body changed after signing', async () => {
    const c = client(SOURCE);
    let tampered = false;
    // Last in finalizeRequest: after the SDK signed the request, before it is sent.
    c.middlewareStack.add((next) => async (args) => {
      const req = args.request as { body?: string };
      if (typeof req.body === 'string' && req.body.includes('DurationSeconds=900')) {
        req.body = req.body.replace('DurationSeconds=900', 'DurationSeconds=901');
        tampered = true;
      }
      return next(args);
    }, { step: 'finalizeRequest', priority: 'low', name: 'tamper' });
    await expectError(c.send(new AssumeRoleCommand({ RoleArn: ROLE, RoleSessionName: 'shed-a-1', DurationSeconds: 900 })), 'SignatureDoesNotMatch');
    expect(tampered).to.equal(true);
  });

  it('refuses issued credentials without their session token, or with another one', async () => {
    const out = await client(SOURCE).send(new AssumeRoleCommand({ RoleArn: ROLE, RoleSessionName: 'shed-a-1' }));
    const c = out.Credentials!;
    await expectError(client({ accessKeyId: c.AccessKeyId!, secretAccessKey: c.SecretAccessKey! }).send(new GetCallerIdentityCommand({})), 'InvalidClientTokenId');
    await expectError(client({ accessKeyId: c.AccessKeyId!, secretAccessKey: c.SecretAccessKey!, sessionToken: `${c.SessionToken}A` }).send(new GetCallerIdentityCommand({})), 'InvalidClientTokenId');
  });

  it('answers failures it is told to, then recovers', async () => {
    sts.failAssumeRole({ code: 'AccessDenied', message: 'not today', status: 403, times: 1 });
    await expectError(client(SOURCE).send(new AssumeRoleCommand({ RoleArn: ROLE, RoleSessionName: 'x1' })), 'AccessDenied');
    await client(SOURCE).send(new AssumeRoleCommand({ RoleArn: ROLE, RoleSessionName: 'x1' }));
    expect(sts.assumeRoleCount).to.equal(1);
  });

  it('verifies the AWS CLI v2 signature (and refuses it with a wrong secret)', async function () {
    this.timeout(20_000);
    const home = tempDir('aws-home');
    const env = (secret: string) => ({ PATH: '/usr/bin:/bin', HOME: home, AWS_ACCESS_KEY_ID: SOURCE.accessKeyId, AWS_SECRET_ACCESS_KEY: secret, AWS_DEFAULT_REGION: 'us-east-1', AWS_MAX_ATTEMPTS: '1' });
    const ok = await run('/usr/bin/aws', ['sts', 'get-caller-identity', '--endpoint-url', sts.url, '--output', 'json'], { env: env(SOURCE.secretAccessKey) });
    expect(ok.code, ok.stderr).to.equal(0);
    expect(JSON.parse(ok.stdout).Arn).to.equal(SOURCE.arn);
    const bad = await run('/usr/bin/aws', ['sts', 'get-caller-identity', '--endpoint-url', sts.url], { env: env('not-the-secret-0123456789') });
    expect(bad.code).to.not.equal(0);
    expect(bad.stderr).to.contain('SignatureDoesNotMatch');
  });
});

async function expectError(p: Promise<unknown>, name: string): Promise<void> {
  try {
    await p;
  } catch (err) {
    expect((err as Error).name).to.equal(name);
    return;
  }
  expect.fail(`expected ${name}`);
}
