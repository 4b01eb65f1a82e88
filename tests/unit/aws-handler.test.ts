/**
 * The aws-credentials handler against the test STS (which verifies each
 * AssumeRole's signature with the host's source key): the policy's knobs
 * reach STS, the cache serves and refreshes as policy says, a failure is
 * reported with STS's code and does not stick, and no secret leaks.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { createAwsHandler } from '../../host-broker/aws/handler.js';
import { awsPolicyHash, roleDecision, roleSessionName } from '../../host-broker/aws/rules.js';
import { BrokerError, type ApprovalSubject, type RequestContext } from '../../host-broker/handler.js';
import { BUILTIN_DEFAULTS, type EffectiveAws } from '../../host-broker/policy/effective.js';
import { policyFromDocument } from '../../host-broker/policy/policy.js';
import { memoryLogger } from '../../protocol/log.js';
import { tempDir } from '../support/procs.js';
import { LEAKED, ROLE_DEV, ROLE_OTHER, ROLE_STAGING, SOURCE, startAwsHost, type AwsHostFixture } from '../support/aws-fixtures.js';

const baseAws = (over: Partial<EffectiveAws> = {}): EffectiveAws => ({ ...BUILTIN_DEFAULTS.aws, policy_arns: [], tags: {}, ...over });

describe('aws-credentials rules', () => {
  it('roleDecision: a role serves, no role is ROLE_NOT_FOUND naming the fix, disabled and bad durations refuse', () => {
    expect(roleDecision(baseAws({ role: ROLE_DEV }))).to.include({ allowed: true });
    const none = roleDecision(baseAws());
    expect(none).to.include({ allowed: false, code: 'ROLE_NOT_FOUND' });
    expect(none.rule).to.contain('set aws.role');
    expect(roleDecision(baseAws({ role: ROLE_DEV, enabled: false }))).to.include({ allowed: false, code: 'NAMESPACE_DISABLED' });
    expect(roleDecision(baseAws({ role: ROLE_DEV, session_duration: 60_000 }))).to.include({ allowed: false, code: 'ASSUME_ROLE_FAILED' });
    expect(roleDecision(baseAws({ role: ROLE_DEV, session_duration: 13 * 3_600_000 })).allowed).to.equal(false);
  });

  it('roleSessionName is shed-<name>-<unix seconds> and stays within 64 characters', () => {
    expect(roleSessionName('my-service', 1774969445.7)).to.equal('shed-my-service-1774969445');
    const long = `a${'b-'.repeat(30)}c`.slice(0, 63);
    const name = roleSessionName(long, 1774969445);
    expect(name.length).to.be.at.most(64);
    expect(name).to.match(/^shed-a[\w-]*[a-z0-9]-1774969445$/);
  });

  it('awsPolicyHash changes with what shapes the credentials, not with key order', () => {
    const a = baseAws({ role: ROLE_DEV, tags: { shed: 'x', team: 'y' } });
    expect(awsPolicyHash(a)).to.equal(awsPolicyHash({ ...a, tags: { team: 'y', shed: 'x' } }));
    expect(awsPolicyHash(a)).to.not.equal(awsPolicyHash({ ...a, external_id: 'ext-1' }));
    expect(awsPolicyHash(a)).to.not.equal(awsPolicyHash({ ...a, session_policy: { Version: '2012-10-17' } }));
  });
});

describe('aws-credentials handler', () => {
  let host: AwsHostFixture;
  let clock: number;
  const log = memoryLogger('shed-host-agent');
  let handler: ReturnType<typeof createAwsHandler>;

  before(async () => {
    host = await startAwsHost();
  });
  after(async () => {
    await host.stop();
  });
  beforeEach(() => {
    clock = Date.now();
    handler = createAwsHandler({ log, configFile: host.configFile, credentialsFile: host.credentialsFile, now: () => clock });
  });
  afterEach(async () => {
    await handler.close?.();
    host.sts.failAssumeRole(undefined);
  });

  const policy = (aws: Record<string, unknown>, extra: Record<string, unknown> = {}) => policyFromDocument({
    version: 1,
    defaults: { aws: { sts_endpoint: host.sts.url, region: 'us-east-1' } },
    sheds: { alpha: { aws, ...extra } },
  }, 'test.yaml');

  function ctx(aws: Record<string, unknown>, extra: Record<string, unknown> = {}, approvals: ApprovalSubject[] = []): RequestContext {
    const shed = policy(aws, extra).resolve('alpha')!;
    const c: RequestContext = {
      shed: 'alpha', requestId: '0192b3a4-7c1e-7d2a-9f00-2b5c1e0a9d11', namespace: 'aws-credentials', operation: 'get_credentials',
      policy: shed, log, signal: new AbortController().signal, approval: 'none',
      async approve(subject) {
        approvals.push(subject);
        // The gate's command says: `false` denies, anything else approves.
        if (shed.approval.command?.[0] === 'false') throw new BrokerError('APPROVAL_DENIED', 'denied by the test');
        c.approval = 'prompt';
      },
    };
    return c;
  }
  const get = (c: RequestContext) => handler.handle('get_credentials', {}, c);

  it('assumes the role with every policy knob, signed with the source profile', async () => {
    const before = host.sts.assumeRoleCount;
    const c = ctx({
      role: ROLE_DEV, session_duration: '2h', external_id: 'ext-42', session_policy: { Version: '2012-10-17', Statement: [] },
      policy_arns: ['arn:aws:iam::aws:policy/ReadOnlyAccess'], source_identity: 'alice', tags: { team: 'core' },
    });
    const answer = await get(c);
    expect(host.sts.assumeRoleCount).to.equal(before + 1);
    const issued = host.sts.issued.at(-1)!;
    expect(answer).to.deep.equal({
      access_key_id: issued.accessKeyId, secret_access_key: issued.secretAccessKey, session_token: issued.sessionToken,
      expiration: issued.expiration.toISOString().replace(/\.\d{3}Z$/, 'Z'),
    });
    const p = issued.params;
    expect(p.RoleArn).to.equal(ROLE_DEV);
    expect(p.RoleSessionName).to.match(/^shed-alpha-\d{10}$/);
    expect(p.DurationSeconds).to.equal('7200');
    expect(p.ExternalId).to.equal('ext-42');
    expect(JSON.parse(p.Policy!)).to.deep.equal({ Version: '2012-10-17', Statement: [] });
    expect(p['PolicyArns.member.1.arn']).to.equal('arn:aws:iam::aws:policy/ReadOnlyAccess');
    expect(p.SourceIdentity).to.equal('alice');
    const tags = Object.fromEntries([1, 2].map((i) => [p[`Tags.member.${i}.Key`], p[`Tags.member.${i}.Value`]]));
    expect(tags).to.deep.equal({ shed: 'alpha', team: 'core' });
    expect(host.sts.calls.at(-1)).to.include({ accessKeyId: SOURCE.accessKeyId, region: 'us-east-1' });
    expect(c.detail).to.equal(`${ROLE_DEV} until ${answer.expiration}`);
  });

  it('serves from the cache until refresh_before, then refreshes once', async () => {
    const aws = { role: ROLE_DEV, session_duration: '1h', refresh_before: '5m' };
    const n = host.sts.assumeRoleCount;
    const first = await get(ctx(aws));
    clock += 54 * 60_000;
    const c = ctx(aws);
    expect(await get(c)).to.deep.equal(first);
    expect(c.detail).to.contain('(cache)');
    expect(host.sts.assumeRoleCount).to.equal(n + 1);
    clock += 2 * 60_000; // 4 minutes left: inside refresh_before
    const third = await get(ctx(aws));
    expect(third.access_key_id).to.not.equal(first.access_key_id);
    expect(host.sts.assumeRoleCount).to.equal(n + 2);
  });

  it('one STS call for 50 concurrent first requests; a policy change takes effect on the next request', async () => {
    const n = host.sts.assumeRoleCount;
    const answers = await Promise.all(Array.from({ length: 50 }, () => get(ctx({ role: ROLE_DEV }))));
    expect(new Set(answers.map((a) => a.access_key_id)).size).to.equal(1);
    expect(host.sts.assumeRoleCount).to.equal(n + 1);
    const changed = await get(ctx({ role: ROLE_STAGING }));
    expect(host.sts.issued.at(-1)!.roleArn).to.equal(ROLE_STAGING);
    expect(changed.access_key_id).to.not.equal(answers[0]!.access_key_id);
    await get(ctx({ role: ROLE_STAGING, external_id: 'changed' }));
    expect(host.sts.assumeRoleCount).to.equal(n + 3);
    expect(handler.cache.size).to.equal(1);
  });

  it('an STS refusal is ASSUME_ROLE_FAILED with STS code and text, and does not poison the cache', async () => {
    host.sts.failAssumeRole({ code: 'AccessDenied', message: 'User is not authorized to perform: sts:AssumeRole', status: 403, times: 1 });
    const err = await get(ctx({ role: ROLE_DEV })).then(() => undefined, (e: unknown) => e);
    expect(err).to.be.instanceOf(BrokerError);
    expect((err as BrokerError).code).to.equal('ASSUME_ROLE_FAILED');
    expect((err as BrokerError).message).to.contain('AccessDenied').and.contain('not authorized').and.contain(ROLE_DEV);
    expect((err as BrokerError).result).to.equal('error');
    const ok = await get(ctx({ role: ROLE_DEV }));
    expect(ok.access_key_id).to.match(/^ASIA/);
  });

  it('a role STS does not let the source assume is refused by STS, not by the guest', async () => {
    const err = await get(ctx({ role: ROLE_OTHER })).catch((e: BrokerError) => e);
    expect(err.code).to.equal('ASSUME_ROLE_FAILED');
    expect(err.message).to.contain('AccessDenied');
  });

  it('a failed refresh while the old set is still valid serves the old set, with a warning', async () => {
    const aws = { role: ROLE_DEV };
    const first = await get(ctx(aws));
    clock += 57 * 60_000;
    host.sts.failAssumeRole({ code: 'AccessDenied', message: 'role trust policy changed', status: 403 });
    const c = ctx(aws);
    expect(await get(c)).to.deep.equal(first);
    expect(c.detail).to.contain('(stale)');
    expect(log.lines.at(-1)).to.contain('refreshing').and.contain('AccessDenied');
    clock += 2.5 * 60_000; // under a minute left: no longer served
    const err = await get(ctx(aws)).catch((e: BrokerError) => e);
    expect(err.code).to.equal('ASSUME_ROLE_FAILED');
  });

  it('ROLE_NOT_FOUND for a shed without a role, naming the fix; no STS call', async () => {
    const n = host.sts.calls.length;
    const err = await get(ctx({})).catch((e: BrokerError) => e);
    expect(err.code).to.equal('ROLE_NOT_FOUND');
    expect(err.message).to.contain('set aws.role for this shed in the host policy');
    expect(host.sts.calls.length).to.equal(n);
  });

  it('source credentials come from the SDK provider chain: credential_process works, a missing profile is named in the host log only', async () => {
    const ok = await get(ctx({ role: ROLE_DEV, source_profile: 'proc' }));
    expect(ok.access_key_id).to.match(/^ASIA/);
    const c = ctx({ role: ROLE_DEV, source_profile: 'nope' });
    const err = await get(c).catch((e: BrokerError) => e);
    expect(err.code).to.equal('SOURCE_CREDENTIALS_FAILED');
    expect(err.message).to.equal(`the host could not load the AWS credentials it assumes ${ROLE_DEV} with; the shed-host-agent log on the host says why (request ${c.requestId})`);
    expect(log.lines.join('\n')).to.match(new RegExp(`request ${c.requestId}: the source credentials of AWS profile "nope" could not be loaded: .*aws configure --profile nope`));
  });

  it('a failing credential_process: a fixed message to the guest, and nothing it printed in any log', async () => {
    const c = ctx({ role: ROLE_DEV, source_profile: 'leaky' });
    const err = await get(c).catch((e: BrokerError) => e) as BrokerError;
    expect(err.code).to.equal('SOURCE_CREDENTIALS_FAILED');
    expect(err.options.detail).to.equal('source_profile leaky');
    const everything = `${err.message} ${JSON.stringify(err)} ${log.lines.join('\n')}`;
    expect(everything).not.to.include(LEAKED);
    expect(log.lines.join('\n')).to.match(/profile "leaky" could not be loaded: its credential_process failed; run it by hand to see why \(aws configure get credential_process --profile leaky\)/);
  });

  it('an unreachable STS endpoint is ASSUME_ROLE_FAILED naming it', async () => {
    const err = await get(ctx({ role: ROLE_DEV, sts_endpoint: 'http://127.0.0.1:9' })).catch((e: BrokerError) => e);
    expect(err.code).to.equal('ASSUME_ROLE_FAILED');
    expect(err.message).to.contain('http://127.0.0.1:9').and.contain('ECONNREFUSED');
  });

  it('asks the approval gate when approval.applies_to names aws-credentials, before any STS call', async () => {
    const asked: ApprovalSubject[] = [];
    await get(ctx({ role: ROLE_DEV }, { approval: { gate: 'command', command: ['true'], applies_to: ['aws-credentials'] } }, asked));
    expect(asked).to.have.length(1);
    expect(asked[0]!.subject).to.equal(ROLE_DEV);
    const none: ApprovalSubject[] = [];
    await get(ctx({ role: ROLE_DEV }, {}, none));
    expect(none).to.have.length(0);
    const n = host.sts.calls.length;
    const err = await get(ctx({ role: ROLE_STAGING }, { approval: { gate: 'command', command: ['false'], applies_to: ['aws-credentials'] } }, [])).catch((e: BrokerError) => e);
    expect(err.code).to.equal('APPROVAL_DENIED');
    expect(host.sts.calls.length).to.equal(n);
  });

  it('status reports the role and cached_until', async () => {
    const st = (aws: Record<string, unknown>) => handler.handle('status', {}, ctx(aws));
    expect(await st({ role: ROLE_DEV })).to.deep.equal({ connected: true, role: ROLE_DEV, cached_until: null });
    const creds = await get(ctx({ role: ROLE_DEV }));
    expect(await st({ role: ROLE_DEV })).to.deep.equal({ connected: true, role: ROLE_DEV, cached_until: creds.expiration });
    expect(await st({})).to.deep.equal({ connected: true, role: null, cached_until: null });
    const err = await handler.handle('assume', {}, ctx({ role: ROLE_DEV })).catch((e: BrokerError) => e);
    expect(err.code).to.equal('UNKNOWN_OPERATION');
  });

  it('never puts a secret in a log line or an error message', async () => {
    host.sts.failAssumeRole({ code: 'SignatureDoesNotMatch', message: `secret was ${SOURCE.secretAccessKey}`, status: 403, times: 1 });
    const err = await get(ctx({ role: ROLE_DEV })).catch((e: BrokerError) => e);
    expect(err.message).to.contain('[redacted]').and.not.contain(SOURCE.secretAccessKey);
    await get(ctx({ role: ROLE_DEV }));
    const secrets = [SOURCE.secretAccessKey, ...host.sts.issued.flatMap((i) => [i.secretAccessKey, i.sessionToken])];
    for (const line of log.lines) for (const s of secrets) expect(line).to.not.contain(s);
  });
});

describe('aws-credentials passthrough (the source profile\'s own session)', () => {
  const log = memoryLogger('shed-host-agent');
  const SESSION = { id: 'ASIAPASSTHROUGH00001', secret: 'passthroughSecret/NotInAnyLog0123456789', token: 'IQoJpassthroughSessionToken0123456789' };
  let dir: string;
  let credentialsFile: string;
  const clock = Date.parse('2026-06-01T12:00:00Z');

  beforeEach(() => {
    dir = tempDir('aws-pt');
    credentialsFile = path.join(dir, 'credentials');
  });

  const handle = async (profile: string, extraSection = ''): Promise<{ answer?: Record<string, unknown>; detail?: string; err?: BrokerError }> => {
    fs.writeFileSync(credentialsFile, `[${profile}]\naws_access_key_id = ${SESSION.id}\naws_secret_access_key = ${SESSION.secret}\naws_session_token = ${SESSION.token}\n${extraSection}`, { mode: 0o600 });
    const handler = createAwsHandler({ log, configFile: path.join(dir, 'config'), credentialsFile, now: () => clock });
    const shed = policyFromDocument({ version: 1, sheds: { alpha: { aws: { mode: 'passthrough', source_profile: profile, role: ROLE_DEV } } } }).resolve('alpha')!;
    const c: RequestContext = {
      shed: 'alpha', requestId: '0192b3a4-7c1e-7d2a-9f00-2b5c1e0a9d12', namespace: 'aws-credentials', operation: 'get_credentials',
      policy: shed, log, signal: new AbortController().signal, approval: 'none', approve: async () => undefined,
    };
    try {
      return await handler.handle('get_credentials', {}, c).then((a) => ({ answer: a, detail: c.detail }), (err: BrokerError) => ({ err }));
    } finally {
      await handler.close?.();
    }
  };

  it('gives the expiry written beside the session (x_security_token_expires, aws_session_expiration), the role unused', async () => {
    const r = await handle('sso', 'x_security_token_expires = 2026-06-01T13:30:00Z\n');
    expect(r).to.deep.include({ answer: { access_key_id: SESSION.id, secret_access_key: SESSION.secret, session_token: SESSION.token, expiration: '2026-06-01T13:30:00Z' } });
    expect((await handle('saml', 'aws_session_expiration = 2026-06-01T12:45:00+00:00\n')).answer?.expiration).to.equal('2026-06-01T12:45:00Z');
  });

  it('without a written expiry, gives a short one so the guest asks again soon, and says so in the audit detail', async () => {
    const r = await handle('pasted');
    expect(r.answer?.expiration).to.equal('2026-06-01T12:20:00Z');
    expect(r.detail).to.equal('passthrough pasted until 2026-06-01T12:20:00Z (expiry unknown: a short one given)');
  });

  it('refuses a session that has ended, saying how to refresh it, with no secret in the message', async () => {
    const { err } = await handle('old', 'x_security_token_expires = 2026-06-01T11:00:00Z\n');
    expect(err?.code).to.equal('SOURCE_CREDENTIALS_FAILED');
    expect(err?.message).to.equal('the session credentials of AWS profile old on the host ended at 2026-06-01T11:00:00.000Z: refresh them on the host (aws sso login --profile old, or the tool that wrote them), then retry');
    for (const line of [...log.lines, err!.message]) for (const s of Object.values(SESSION)) expect(line).not.to.contain(s);
  });

  it('roleDecision and explain say passthrough; the policy hash changes with the mode', () => {
    const d = roleDecision(baseAws({ mode: 'passthrough', source_profile: 'sso' }));
    expect(d).to.deep.equal({ allowed: true, rule: 'aws.mode is passthrough: the session credentials of source profile sso, read afresh for each request (aws.role is not used; long-lived keys are refused)' });
    expect(awsPolicyHash(baseAws({ role: ROLE_DEV }))).to.not.equal(awsPolicyHash(baseAws({ role: ROLE_DEV, mode: 'passthrough' })));
  });
});
