/**
 * A shed server's token as a file holds it or a program prints it: a bare
 * token, or the JSON credentials bundle of shed's bootstrap (PROTOCOL.md 3a).
 * Errors name where the text came from and what is wrong with it, and never
 * quote it.
 */
import { z } from 'zod';
import { printable } from '../../protocol/text.js';
import { normalizePin } from './tls.js';

/** The longest token accepted, and the characters a header value may hold. */
const MAX_TOKEN_CHARS = 8192;
const TOKEN_RE = /^[\x21-\x7e]+$/;

/** A token as read from a file: one line of printable ASCII. Throws, naming `what`, never quoting the text. */
export function checkToken(text: string, what: string, fix = "put shed-server's token in it"): string {
  const token = text.trim();
  if (!token) throw new Error(`${what} is empty; ${fix}`);
  if (/[\r\n\0]/.test(token)) throw new Error(`${what} holds more than one line; it must hold only the token`);
  if (token.length > MAX_TOKEN_CHARS) throw new Error(`${what} holds ${token.length} characters, more than a token (${MAX_TOKEN_CHARS} at most)`);
  if (!TOKEN_RE.test(token)) throw new Error(`${what} holds characters a token cannot have (spaces or non-ASCII); it must hold only the token`);
  return token;
}

/** What a credentials program printed, checked. */
export interface Credentials {
  token: string;
  /** Epoch ms; undefined for a bare token (refreshed only on a 401). */
  expiresAt?: number;
  /** 64 hex digits of the server certificate's SHA-256, when the bundle names it. */
  tlsPin?: string;
  scope?: string;
  httpsPort?: number;
}

const Bundle = z.object({
  token: z.string(),
  scope: z.string().optional(),
  token_id: z.string().optional(),
  expires_at: z.string().optional(),
  tls_cert_fingerprint: z.string().optional(),
  http_port: z.number().int().optional(),
  https_port: z.number().int().optional(),
});

/**
 * A bare token or the JSON bundle `{"token","scope","expires_at","tls_cert_fingerprint",…}`.
 * Throws with what is wrong, naming `what`, never quoting the text.
 */
export function parseCredentials(text: string, what: string, fix?: string, now = Date.now()): Credentials {
  const trimmed = text.trim();
  if (!trimmed.startsWith('{')) return { token: checkToken(trimmed, what, fix) };
  let raw: unknown;
  try {
    raw = JSON.parse(trimmed);
  } catch {
    throw new Error(`${what} printed text that starts like JSON but does not parse; it must print the token alone or the credentials bundle`);
  }
  const parsed = Bundle.safeParse(raw);
  if (!parsed.success) {
    const fields = [...new Set(parsed.error.issues.map((i) => i.path.join('.') || '(top)'))].join(', ');
    throw new Error(`${what} printed a JSON object that is not a credentials bundle (check ${fields}); it must print {"token":…,"expires_at":…} as shed's bootstrap does`);
  }
  const b = parsed.data;
  const token = checkToken(b.token, `the token ${what} printed`);
  if (b.scope !== undefined && b.scope !== 'credentials') {
    throw new Error(`${what} printed a token of scope ${printable(b.scope, 32)}; the plugin bus needs scope credentials (mint with \`credentials <client-name>\`, not the CLI's control token)`);
  }
  let expiresAt: number | undefined;
  if (b.expires_at !== undefined) {
    expiresAt = Date.parse(b.expires_at);
    if (!Number.isFinite(expiresAt) || !/^\d{4}-\d\d-\d\dT/.test(b.expires_at)) {
      throw new Error(`${what} printed a bundle whose expires_at is not an RFC 3339 time`);
    }
    if (expiresAt <= now) throw new Error(`${what} printed a token that expired at ${new Date(expiresAt).toISOString()} (check the clocks of this host and the server)`);
  }
  let tlsPin: string | undefined;
  if (b.tls_cert_fingerprint !== undefined && b.tls_cert_fingerprint !== '') {
    tlsPin = normalizePin(b.tls_cert_fingerprint, `the tls_cert_fingerprint ${what} printed`);
  }
  return { token, expiresAt, tlsPin, scope: b.scope, httpsPort: b.https_port };
}

