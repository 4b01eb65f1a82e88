/** ssh-agent namespace payloads (PROTOCOL.md section 4), plus the `bind` operation this project adds. */
import crypto from 'node:crypto';
import * as z from 'zod/mini';

const B64_RE = /^[A-Za-z0-9+/]*={0,2}$/;
const b64 = () => z.string().check(z.regex(B64_RE));

export const SshKey = z.object({ format: z.string(), blob: b64(), comment: z.string() });
export type SshKey = z.infer<typeof SshKey>;

export const SshListResponse = z.object({ keys: z.array(SshKey) });
export type SshListResponse = z.infer<typeof SshListResponse>;

export const SshSignRequest = z.object({
  public_key: b64().check(z.minLength(1)),
  data: b64(),
  flags: z._default(z.int().check(z.nonnegative()), 0),
});
export type SshSignRequest = z.infer<typeof SshSignRequest>;

export const SshSignResponse = z.object({ format: z.string(), blob: b64(), rest: z._default(z.string(), '') });
export type SshSignResponse = z.infer<typeof SshSignResponse>;

/**
 * `session-bind@openssh.com` forwarded from the guest: the server's host key,
 * the session id, the server's signature over it, and whether the session is
 * being forwarded. All base64 except the flag.
 */
export const SshBindRequest = z.object({
  hostkey: b64().check(z.minLength(1)),
  session_id: b64().check(z.minLength(1)),
  signature: b64().check(z.minLength(1)),
  is_forwarding: z._default(z.boolean(), false),
});
export type SshBindRequest = z.infer<typeof SshBindRequest>;

export const SshBindResponse = z.object({ bound: z.boolean() });
export type SshBindResponse = z.infer<typeof SshBindResponse>;

export const SshStatusResponse = z.looseObject({ connected: z.boolean(), mode: z.string(), key_count: z.int() });
export type SshStatusResponse = z.infer<typeof SshStatusResponse>;

/** One-shot SHA-256 in base64: crypto.hash where Node has it (20.12 and later; ~3 times cheaper), else a Hash object. */
const sha256Base64: (data: Buffer) => string = typeof crypto.hash === 'function'
  ? (data) => crypto.hash('sha256', data, 'base64')
  : (data) => crypto.createHash('sha256').update(data).digest('base64');

/** `SHA256:<unpadded base64>` of a public key blob, exactly as `ssh-keygen -lf` prints it; the same on both sides. */
export function fingerprint(blob: Buffer): string {
  return `SHA256:${sha256Base64(blob).replace(/=+$/, '')}`;
}

/** Sign flags of the agent protocol. */
export const SSH_AGENT_RSA_SHA2_256 = 2;
export const SSH_AGENT_RSA_SHA2_512 = 4;

/** Message numbers of the agent protocol (draft-miller-ssh-agent) that either side reads or writes. */
export const SSH_AGENT_FAILURE = 5;
export const SSH_AGENT_SUCCESS = 6;
export const SSH_AGENTC_REQUEST_IDENTITIES = 11;
export const SSH_AGENT_IDENTITIES_ANSWER = 12;
export const SSH_AGENTC_SIGN_REQUEST = 13;
export const SSH_AGENT_SIGN_RESPONSE = 14;
export const SSH_AGENTC_EXTENSION = 27;

/** OpenSSH's limit on one agent message. */
export const AGENT_MAX_MESSAGE = 256 * 1024;
