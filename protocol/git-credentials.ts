/**
 * git-credentials namespace payloads: git's credential-helper protocol
 * (`git help credential`) carried over the bus. The guest helper sends what
 * git asked for (protocol, host with port, path); the host answers a
 * username and password for it, or an error.
 *
 * zod/mini: the guest's one-shot helper imports this module.
 */
import * as z from 'zod/mini';

/** The longest host (`name:port`, `[v6]:port`) and path a request may carry. */
export const MAX_GIT_HOST_LENGTH = 261;
export const MAX_GIT_PATH_LENGTH = 2048;
/** The longest username, password or other value an answer may carry. */
export const MAX_GIT_VALUE_LENGTH = 16 * 1024;

export const GitGetRequest = z.object({
  protocol: z.string().check(z.minLength(1), z.maxLength(32)),
  host: z.string().check(z.minLength(1), z.maxLength(MAX_GIT_HOST_LENGTH)),
  /** The repository's path on the server (`acme/app.git`), present when the guest's git has credential.useHttpPath. */
  path: z.optional(z.string().check(z.maxLength(MAX_GIT_PATH_LENGTH))),
});
export type GitGetRequest = z.infer<typeof GitGetRequest>;

const Value = z.string().check(z.maxLength(MAX_GIT_VALUE_LENGTH));

export const GitGetResponse = z.object({
  username: Value,
  password: Value,
  /** Unix time (seconds) after which the password is no longer valid; git 2.41+ reads it. */
  password_expiry_utc: z.optional(z.string().check(z.regex(/^\d{1,20}$/))),
  /** An authentication scheme other than Basic (git 2.46+); passed on as the host's git gave it. */
  authtype: z.optional(z.string().check(z.maxLength(64))),
});
export type GitGetResponse = z.infer<typeof GitGetResponse>;

export const GitStatusResponse = z.looseObject({
  connected: z.boolean(),
  /** Entries in the shed's git.allowed. */
  allowed_count: z.int(),
  /** Hosts with a `command` source in git.sources. */
  source_count: z.int(),
});
export type GitStatusResponse = z.infer<typeof GitStatusResponse>;

/**
 * Whether `value` can be written as one `key=value` line of git's credential
 * protocol: no newline (it would start another attribute), no carriage
 * return (git reads CRLF as a line end) and no NUL (git refuses it). Both
 * sides check, so a value can never forge an attribute.
 */
export function isCredentialValue(value: string): boolean {
  return !/[\r\n\0]/.test(value) && value.length <= MAX_GIT_VALUE_LENGTH;
}
