/** ssh-agent namespace payloads (PROTOCOL.md section 4), plus the `bind` operation this project adds. */
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
