/**
 * The aws-credentials policy rules, pure: the handler and `shed-host-agent
 * explain` call the same functions, so a dry run says what the broker does.
 */
import { createHash } from 'node:crypto';
import { AwsCode, CommonCode } from '../../protocol/codes.js';
import type { Decision } from '../handler.js';
import type { EffectiveAws } from '../policy/effective.js';

/** STS's limits on AssumeRole's DurationSeconds. */
export const MIN_SESSION_SECONDS = 900;
export const MAX_SESSION_SECONDS = 43_200;
/** STS's limit on RoleSessionName. */
export const MAX_SESSION_NAME = 64;

/** Whether the shed gets credentials, and for which role (or, passthrough, which profile's). The request never names either: only this decides. */
export function roleDecision(aws: EffectiveAws): Decision {
  if (!aws.enabled) {
    return { allowed: false, code: CommonCode.NAMESPACE_DISABLED, rule: 'aws.enabled is false for this shed' };
  }
  if (aws.mode === 'passthrough') {
    return { allowed: true, rule: `aws.mode is passthrough: the session credentials of source profile ${aws.source_profile}, read afresh for each request (aws.role is not used; long-lived keys are refused)` };
  }
  if (!aws.role) {
    return { allowed: false, code: AwsCode.ROLE_NOT_FOUND, rule: 'no aws.role for this shed: set aws.role (an IAM role ARN) for it in the host policy' };
  }
  const seconds = Math.floor(aws.session_duration / 1000);
  if (seconds < MIN_SESSION_SECONDS || seconds > MAX_SESSION_SECONDS) {
    return {
      allowed: false,
      code: AwsCode.ASSUME_ROLE_FAILED,
      rule: `aws.session_duration is ${seconds}s, outside what STS accepts (15m to 12h): fix it in the host policy`,
    };
  }
  return { allowed: true, rule: `aws.role is ${aws.role}, assumed with source profile ${aws.source_profile} for ${formatSeconds(seconds)}` };
}

/**
 * `shed-<name>-<unix seconds>`, within STS's 64 characters: a long shed name
 * is shortened (never the timestamp, which makes sessions tell apart in CloudTrail).
 */
export function roleSessionName(shed: string, unixSeconds: number): string {
  const stamp = String(Math.floor(unixSeconds));
  const room = MAX_SESSION_NAME - 'shed-'.length - 1 - stamp.length;
  const name = shed.slice(0, room).replace(/-+$/, '');
  return `shed-${name}-${stamp}`;
}

/** The inline session policy as STS takes it (a JSON string). */
export function sessionPolicyText(policy: EffectiveAws['session_policy']): string | undefined {
  if (policy === undefined) return undefined;
  return typeof policy === 'string' ? policy : JSON.stringify(policy);
}

/**
 * A digest of everything that shapes the credentials STS issues. Cached
 * credentials are keyed by it, so any policy change that would change them
 * takes effect on the next request.
 */
export function awsPolicyHash(aws: EffectiveAws): string {
  // A shed's effective policy is made once per policy load (Policy.resolve caches it): so is its hash.
  let hash = policyHashes.get(aws);
  if (hash === undefined) policyHashes.set(aws, (hash = computePolicyHash(aws)));
  return hash;
}

const policyHashes = new WeakMap<EffectiveAws, string>();

function computePolicyHash(aws: EffectiveAws): string {
  const shape = {
    mode: aws.mode,
    role: aws.role ?? null,
    source_profile: aws.source_profile,
    session_duration: aws.session_duration,
    region: aws.region ?? null,
    sts_endpoint: aws.sts_endpoint ?? null,
    external_id: aws.external_id ?? null,
    session_policy: aws.session_policy === undefined ? null : sortKeys(aws.session_policy),
    policy_arns: [...aws.policy_arns],
    source_identity: aws.source_identity ?? null,
    tags: sortKeys(aws.tags),
  };
  return createHash('sha256').update(JSON.stringify(shape)).digest('hex').slice(0, 16);
}

function sortKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.keys(value).sort().map((k) => [k, sortKeys((value as Record<string, unknown>)[k])]));
  }
  return value;
}

export function formatSeconds(seconds: number): string {
  if (seconds % 3600 === 0) return `${seconds / 3600}h`;
  if (seconds % 60 === 0) return `${seconds / 60}m`;
  return `${seconds}s`;
}
