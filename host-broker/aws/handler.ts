/**
 * The `aws-credentials` namespace on the host: short-lived STS credentials for
 * the role the host policy assigns to the requesting shed, or (aws.mode
 * passthrough) the source profile's own session credentials. The guest never
 * names a role or a profile, and no long-lived key leaves the host.
 */
import { AwsCode } from '../../protocol/codes.js';
import { OPERATIONS, type Payload } from '../../protocol/envelope.js';
import type { AwsCredentialsResponse, AwsStatusResponse } from '../../protocol/aws-credentials.js';
import type { Logger } from '../../protocol/log.js';
import { gated } from '../approval/approvals.js';
import { BrokerError, unknownOperation, type NamespaceHandler, type RequestContext } from '../handler.js';
import type { EffectiveAws } from '../policy/effective.js';
import { CredentialCache, type IssuedCredentials } from './cache.js';
import { passthroughCredentials } from './passthrough.js';
import { awsPolicyHash, formatSeconds, roleDecision } from './rules.js';
import { assumeRole, describeStsError, SourceCredentialsError } from './sts.js';

export interface AwsHandlerDeps {
  log: Logger;
  /** Shared AWS config file; the SDK's default (`$AWS_CONFIG_FILE` or `~/.aws/config`) when unset. */
  configFile?: string;
  /** Shared AWS credentials file; the SDK's default when unset. */
  credentialsFile?: string;
  /** Clock (epoch ms); tests move it. */
  now?: () => number;
  connectTimeoutMs?: number;
  requestTimeoutMs?: number;
}

export function createAwsHandler(deps: AwsHandlerDeps): NamespaceHandler & { readonly cache: CredentialCache } {
  const now = deps.now ?? Date.now;
  const cache = new CredentialCache(now);
  // Refreshes are shared by every waiting request, so none of them owns the
  // STS call: it stops only when the broker does.
  const stopping = new AbortController();
  const stsOptions = {
    configFile: deps.configFile,
    credentialsFile: deps.credentialsFile,
    connectTimeoutMs: deps.connectTimeoutMs ?? 2000,
    requestTimeoutMs: deps.requestTimeoutMs ?? 5000,
    now,
  };

  /** The source profile's own session credentials, read now (no cache: a fresh `aws sso login` shows at once). */
  async function passthrough(ctx: RequestContext): Promise<AwsCredentialsResponse> {
    const aws = ctx.policy.aws;
    const profile = aws.source_profile;
    ctx.detail = `passthrough ${profile}`;
    if (gated(ctx.policy.approval, 'aws-credentials')) {
      await ctx.approve({ subject: `passthrough:${profile}`, description: `the session credentials of AWS profile ${profile} (passthrough)` });
    }
    const fresh = await passthroughCredentials(ctx.shed, aws, { configFile: deps.configFile, credentialsFile: deps.credentialsFile, now }).catch((err: unknown) => {
      if (err instanceof SourceCredentialsError) throw sourceFailure(ctx, err, `the session credentials of its AWS profile ${profile} (passthrough)`);
      if (err instanceof BrokerError) deps.log.warn(`shed ${ctx.shed}: request ${ctx.requestId}: ${err.message}`);
      throw err;
    });
    ctx.detail = `passthrough ${profile} until ${iso(fresh.expiresAt)}${fresh.expiryKnown ? '' : ' (expiry unknown: a short one given)'}`;
    return toPayload(fresh);
  }

  /** A source profile that would not load: `what` says whose credentials, for the guest. */
  function sourceFailure(ctx: RequestContext, err: SourceCredentialsError, what: string): BrokerError {
    // The guest learns that and where to look; the why stays on the host.
    deps.log.error(`shed ${ctx.shed}: request ${ctx.requestId}: ${err.message}: ${err.detail}; fix that profile in the host's AWS config `
      + `(aws configure --profile ${err.profile}, or aws sso login --profile ${err.profile} for SSO) or set aws.source_profile in the host policy`);
    return new BrokerError(AwsCode.SOURCE_CREDENTIALS_FAILED,
      `the host could not load ${what}; the shed-host-agent log on the host says why (request ${ctx.requestId})`,
      { result: 'error', detail: `source_profile ${err.profile}` });
  }

  async function getCredentials(ctx: RequestContext): Promise<AwsCredentialsResponse> {
    const aws = ctx.policy.aws;
    const decision = roleDecision(aws);
    if (decision.allowed && aws.mode === 'passthrough') return passthrough(ctx);
    if (!decision.allowed || !aws.role) {
      throw refusal(ctx.shed, aws, decision.code ?? AwsCode.ROLE_NOT_FOUND, decision.rule);
    }
    const role = aws.role;
    ctx.detail = role;
    if (gated(ctx.policy.approval, 'aws-credentials')) {
      await ctx.approve({ subject: role, description: `AWS credentials for role ${role} (${formatSeconds(Math.floor(aws.session_duration / 1000))})` });
    }
    const key = CredentialCache.key(ctx.shed, role, awsPolicyHash(aws));
    const hit = await cache.get(
      ctx.shed,
      key,
      aws.refresh_before,
      async () => {
        const started = now();
        const fresh = await assumeRole(ctx.shed, { ...aws, role }, stsOptions, stopping.signal);
        deps.log.info(`shed ${ctx.shed}: assumed ${role} until ${iso(fresh.expiresAt)} (${Math.round(now() - started)} ms)`);
        return fresh;
      },
      (err) => deps.log.warn(`shed ${ctx.shed}: refreshing ${role} failed, serving the still-valid credentials until ${iso(cache.peek(key)?.expiresAt ?? 0)}: ${
        err instanceof BrokerError ? err.message : err instanceof SourceCredentialsError ? `${err.message}: ${err.detail}` : describeStsError(err, [])}`),
    ).catch((err: unknown) => {
      if (!(err instanceof SourceCredentialsError)) throw err;
      throw sourceFailure(ctx, err, `the AWS credentials it assumes ${role} with`);
    });
    ctx.detail = `${role} until ${iso(hit.credentials.expiresAt)}${hit.source === 'sts' ? '' : ` (${hit.source})`}`;
    return toPayload(hit.credentials);
  }

  function status(ctx: RequestContext): AwsStatusResponse {
    const aws = ctx.policy.aws;
    if (aws.enabled && aws.mode === 'passthrough') return { connected: true, role: `passthrough:${aws.source_profile}`, cached_until: null };
    const role = aws.enabled && aws.role ? aws.role : null;
    const entry = role ? cache.peek(CredentialCache.key(ctx.shed, role, awsPolicyHash(aws))) : undefined;
    return { connected: true, role, cached_until: entry ? iso(entry.expiresAt) : null };
  }

  return {
    namespace: 'aws-credentials',
    operations: OPERATIONS['aws-credentials'],
    cache,
    async handle(operation: string, _payload: Payload, ctx: RequestContext): Promise<Payload> {
      switch (operation) {
        case 'get_credentials':
          return getCredentials(ctx);
        case 'status':
          return status(ctx);
        default:
          throw unknownOperation('aws-credentials', operation);
      }
    },
    async close() {
      stopping.abort();
      cache.clear();
    },
  };
}

function refusal(shed: string, aws: EffectiveAws, code: string, rule: string): BrokerError {
  if (code === AwsCode.ROLE_NOT_FOUND) {
    return new BrokerError(code, `no AWS role is assigned to shed ${shed}: set aws.role for this shed in the host policy `
      + `(sheds: { ${shed}: { aws: { role: arn:aws:iam::<account>:role/<name> } } }), then retry`, { detail: 'no aws.role' });
  }
  return new BrokerError(code, `shed ${shed}: ${rule}`, { detail: aws.role ?? code });
}

function toPayload(c: IssuedCredentials): AwsCredentialsResponse {
  return { access_key_id: c.accessKeyId, secret_access_key: c.secretAccessKey, session_token: c.sessionToken, expiration: iso(c.expiresAt) };
}

/** RFC 3339 in UTC without milliseconds, as STS and the container-credentials format write it. */
export function iso(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
}
