/**
 * Error codes carried in a response payload (`{"error","code"}`) and in the
 * publish API's error body (`{"error":{"code","message"}}`).
 *
 * The namespace codes and the publish-API codes are shed's (PROTOCOL.md);
 * the policy codes are this project's additions, in the same UPPER_SNAKE style.
 */

/** Status codes of shed-agent's `POST /v1/publish` (PROTOCOL.md section 2). */
export const PublishApiCode = {
  INVALID_BODY: 'INVALID_BODY',
  MISSING_NAMESPACE: 'MISSING_NAMESPACE',
  INVALID_TYPE: 'INVALID_TYPE',
  NO_CONNECTION: 'NO_CONNECTION',
  CONNECTION_LOST: 'CONNECTION_LOST',
  TIMEOUT: 'TIMEOUT',
  SHUTTING_DOWN: 'SHUTTING_DOWN',
  SEND_FAILED: 'SEND_FAILED',
  /** Not in shed's table: a body over 1 MiB. shed-agent refuses it with 413. */
  BODY_TOO_LARGE: 'BODY_TOO_LARGE',
} as const;
export type PublishApiCode = (typeof PublishApiCode)[keyof typeof PublishApiCode];

export const PUBLISH_API_STATUS: Record<PublishApiCode, number> = {
  INVALID_BODY: 400,
  MISSING_NAMESPACE: 400,
  INVALID_TYPE: 400,
  NO_CONNECTION: 503,
  CONNECTION_LOST: 503,
  TIMEOUT: 504,
  SHUTTING_DOWN: 503,
  SEND_FAILED: 500,
  BODY_TOO_LARGE: 413,
};

/** Codes any namespace may answer. */
export const CommonCode = {
  INTERNAL_ERROR: 'INTERNAL_ERROR',
  /** No policy entry for the shed and no `"*"` entry. */
  SHED_NOT_ALLOWED: 'SHED_NOT_ALLOWED',
  /** The shed's policy has `enabled: false` for this namespace (or the broker serves no such namespace). */
  NAMESPACE_DISABLED: 'NAMESPACE_DISABLED',
  /** The request id was answered already (shed-server re-delivery, or a replay). */
  DUPLICATE_REQUEST: 'DUPLICATE_REQUEST',
  /** The envelope or payload does not match the protocol. */
  INVALID_REQUEST: 'INVALID_REQUEST',
  /** The operation is not known to this host (a newer guest talking to an older host). */
  UNKNOWN_OPERATION: 'UNKNOWN_OPERATION',
  /** The approval gate said no (or timed out). */
  APPROVAL_DENIED: 'APPROVAL_DENIED',
  /** The shed exceeded its rate limit for this namespace. */
  RATE_LIMITED: 'RATE_LIMITED',
  /** `audit.required` is set and the audit log cannot be written. */
  AUDIT_UNAVAILABLE: 'AUDIT_UNAVAILABLE',
} as const;

export const SshCode = {
  KEY_NOT_FOUND: 'KEY_NOT_FOUND',
  SIGN_FAILED: 'SIGN_FAILED',
  /** The key exists but the shed's `allowed_keys` does not list it. */
  KEY_NOT_ALLOWED: 'KEY_NOT_ALLOWED',
  /** The user-auth request is for a server whose host key is not in `allowed_hosts`. */
  HOST_NOT_ALLOWED: 'HOST_NOT_ALLOWED',
  /** An SSHSIG namespace outside `signing_namespaces`. */
  SIGNING_NAMESPACE_NOT_ALLOWED: 'SIGNING_NAMESPACE_NOT_ALLOWED',
  /** A session-bind whose server signature does not verify. */
  BIND_FAILED: 'BIND_FAILED',
  /** agent-forward mode, and the host's SSH agent does not answer. */
  AGENT_UNAVAILABLE: 'AGENT_UNAVAILABLE',
} as const;

export const AwsCode = {
  ROLE_NOT_FOUND: 'ROLE_NOT_FOUND',
  ASSUME_ROLE_FAILED: 'ASSUME_ROLE_FAILED',
  /** The host could not load its own (source) credentials; why is in the host log only, as it may quote a secret. */
  SOURCE_CREDENTIALS_FAILED: 'SOURCE_CREDENTIALS_FAILED',
  /** aws.mode passthrough, and the source profile holds long-lived keys (no session token): they never enter a VM. */
  LONG_LIVED_CREDENTIALS: 'LONG_LIVED_CREDENTIALS',
} as const;

export const DockerCode = {
  CREDENTIALS_NOT_FOUND: 'CREDENTIALS_NOT_FOUND',
  REGISTRY_NOT_ALLOWED: 'REGISTRY_NOT_ALLOWED',
  READ_ONLY: 'READ_ONLY',
  HELPER_FAILED: 'HELPER_FAILED',
} as const;

export const GitCode = {
  /** The shed's `git.allowed` does not cover this protocol, host and path (the rule that decided is in the message and the audit line). */
  GIT_HOST_NOT_ALLOWED: 'GIT_HOST_NOT_ALLOWED',
  /** The host has no credentials for that host (its `git credential fill` found none). */
  CREDENTIALS_NOT_FOUND: 'CREDENTIALS_NOT_FOUND',
  /** The host's `git credential fill` or the policy's `command` source failed or did not answer in time. */
  HELPER_FAILED: 'HELPER_FAILED',
} as const;

export const ErrorCode = { ...CommonCode, ...SshCode, ...AwsCode, ...DockerCode, ...GitCode } as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];
