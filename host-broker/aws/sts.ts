/**
 * The host's two calls into AWS: load the source profile's credentials with
 * the SDK's own provider chain (static keys, SSO, credential_process, chained
 * roles: whatever the shared config allows), and AssumeRole with them.
 */
import { AssumeRoleCommand, STSClient, type AssumeRoleCommandInput } from '@aws-sdk/client-sts';
import { fromIni } from '@aws-sdk/credential-providers';
import { AwsCode } from '../../protocol/codes.js';
import { BrokerError } from '../handler.js';
import type { EffectiveAws } from '../policy/effective.js';
import type { IssuedCredentials } from './cache.js';
import { roleSessionName, sessionPolicyText } from './rules.js';

/** STS's global endpoint lives in us-east-1; a region in policy picks a regional endpoint. */
export const DEFAULT_STS_REGION = 'us-east-1';

export interface StsOptions {
  /** The shared config file (`~/.aws/config`, or `$AWS_CONFIG_FILE`, when unset). */
  configFile?: string;
  /** The shared credentials file (`~/.aws/credentials`, or `$AWS_SHARED_CREDENTIALS_FILE`, when unset). */
  credentialsFile?: string;
  /** Milliseconds to connect to STS. */
  connectTimeoutMs: number;
  /** Milliseconds for one STS answer. */
  requestTimeoutMs: number;
  now: () => number;
}

/**
 * The host's own credentials for a profile could not be loaded (SSO expired,
 * a credential_process failed, a missing profile). What the SDK or the tool
 * said may quote a secret: `detail` is for the host log, and never quotes
 * what a credential_process printed.
 */
export class SourceCredentialsError extends Error {
  override readonly name = 'SourceCredentialsError';
  constructor(readonly profile: string, readonly detail: string) {
    super(`the source credentials of AWS profile "${profile}" could not be loaded`);
  }
}

interface SourceCredentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
}

/** Assume the shed's role. Every failure is a BrokerError ASSUME_ROLE_FAILED whose text holds no secret. */
export async function assumeRole(shed: string, aws: EffectiveAws & { role: string }, options: StsOptions, signal: AbortSignal): Promise<IssuedCredentials> {
  const region = aws.region ?? DEFAULT_STS_REGION;
  const source = await loadSource(aws.source_profile, region, options);
  const secrets = [source.secretAccessKey, source.sessionToken ?? ''];
  const client = new STSClient({
    region,
    endpoint: aws.sts_endpoint,
    credentials: source,
    maxAttempts: 2,
    requestHandler: { connectionTimeout: options.connectTimeoutMs, requestTimeout: options.requestTimeoutMs },
  });
  const input: AssumeRoleCommandInput = {
    RoleArn: aws.role,
    RoleSessionName: roleSessionName(shed, options.now() / 1000),
    DurationSeconds: Math.floor(aws.session_duration / 1000),
    ExternalId: aws.external_id,
    Policy: sessionPolicyText(aws.session_policy),
    PolicyArns: aws.policy_arns.length ? aws.policy_arns.map((arn) => ({ arn })) : undefined,
    SourceIdentity: aws.source_identity,
    Tags: Object.keys(aws.tags).length ? Object.entries(aws.tags).map(([Key, Value]) => ({ Key, Value })) : undefined,
  };
  const where = aws.sts_endpoint ?? `STS in ${region}`;
  try {
    const out = await client.send(new AssumeRoleCommand(input), { abortSignal: signal });
    const c = out.Credentials;
    if (!c?.AccessKeyId || !c.SecretAccessKey || !c.SessionToken || !c.Expiration) {
      throw new BrokerError(AwsCode.ASSUME_ROLE_FAILED, `AssumeRole of ${aws.role} at ${where} answered without complete credentials`, { result: 'error', detail: aws.role });
    }
    return {
      accessKeyId: c.AccessKeyId,
      secretAccessKey: c.SecretAccessKey,
      sessionToken: c.SessionToken,
      expiresAt: c.Expiration.getTime(),
      issuedAt: options.now(),
      assumedRoleArn: out.AssumedRoleUser?.Arn,
    };
  } catch (err) {
    if (err instanceof BrokerError) throw err;
    throw new BrokerError(AwsCode.ASSUME_ROLE_FAILED, `AssumeRole of ${aws.role} failed at ${where}: ${describeStsError(err, secrets)}`, {
      result: 'error',
      detail: aws.role,
    });
  } finally {
    client.destroy();
  }
}

async function loadSource(profile: string, region: string, options: StsOptions): Promise<SourceCredentials> {
  try {
    const provider = fromIni({
      profile,
      filepath: options.credentialsFile,
      configFilepath: options.configFile,
      // Re-read the files on every refresh: `aws sso login` or an edited
      // profile takes effect without restarting the broker.
      ignoreCache: true,
      clientConfig: { region },
    });
    const c = await provider();
    return { accessKeyId: c.accessKeyId, secretAccessKey: c.secretAccessKey, sessionToken: c.sessionToken };
  } catch (err) {
    throw new SourceCredentialsError(profile, describeSourceError(err, profile));
  }
}

/**
 * What went wrong loading source credentials, for the host log. The SDK's
 * own messages (a missing profile, an expired SSO session) are kept. A
 * failed credential_process is named, not quoted: the SDK's message holds
 * the command line and the tool's output, where a token may be.
 */
export function describeSourceError(err: unknown, profile: string): string {
  if (!(err instanceof Error)) return 'unknown error';
  if (/^Command failed/.test(err.message) || /credential_process returned/.test(err.message)) {
    const what = /credential_process returned ([a-z ]+)/.exec(err.message)?.[1];
    return `its credential_process ${what ? `returned ${what}` : 'failed'}; run it by hand to see why (aws configure get credential_process --profile ${profile})`;
  }
  return clip(`${err.name}: ${err.message}`);
}

/** STS's error code and message, or the network failure; source secrets removed in case a message quotes one. */
export function describeStsError(err: unknown, secrets: string[]): string {
  if (!(err instanceof Error)) return 'unknown error';
  const meta = (err as { $metadata?: { httpStatusCode?: number } }).$metadata;
  const code = (err as NodeJS.ErrnoException).code;
  let text: string;
  if (meta?.httpStatusCode) {
    text = `${err.name} (HTTP ${meta.httpStatusCode}): ${err.message}`;
  } else if (err.name === 'AbortError') {
    text = 'the broker is stopping';
  } else if (err.name === 'TimeoutError') {
    text = `no answer from STS in time (${err.message})`;
  } else if (code) {
    text = `cannot reach STS (${code})`;
  } else {
    text = `${err.name}: ${err.message}`;
  }
  for (const s of secrets) if (s.length >= 8) text = text.split(s).join('[redacted]');
  return clip(text);
}

function clip(text: string): string {
  const one = text.replace(/\s+/g, ' ').trim();
  return one.length > 400 ? `${one.slice(0, 400)}…` : one;
}
