/**
 * Which shed a request came from, as the transport established it: the
 * shed's name, and the server it came through. Shed names are unique per
 * shed server only, so the sheds of a server named under `servers:` (or
 * found by discovery) are their own namespace, keyed `<shed>@<server>`; the
 * direct sockets and the top-level `server:` share the plain names, as they
 * always have. The key is what every per-shed state (rate limits, approvals,
 * request ids, caches, audit files) is kept under, and how logs name a shed.
 */
import { SHED_NAME_RE } from '../protocol/envelope.js';

export interface ShedOrigin {
  /** The shed's name: the socket it came on, or shed-server's `shed.name`; never the payload's word. */
  name: string;
  /** The named server it came through (under `servers:` or from discovery); undefined for direct sockets and the top-level `server:`. */
  server?: string;
  /** How it arrived, for audit lines: `direct`, `default` (the top-level server, DEFAULT_SERVER_NAME), or the server's name. */
  via: string;
}

/** The direct sockets' label in audit lines. */
export const VIA_DIRECT = 'direct';

/** `alice`, or `alice@mini2` for a shed of a named server. */
export function shedKey(origin: Pick<ShedOrigin, 'name' | 'server'>): string {
  return origin.server ? `${origin.name}@${origin.server}` : origin.name;
}

/** True for a key `shedKey` makes from valid names (audit file names rely on it). */
export function isShedKey(key: string): boolean {
  const at = key.indexOf('@');
  if (at < 0) return SHED_NAME_RE.test(key);
  return SHED_NAME_RE.test(key.slice(0, at)) && SHED_NAME_RE.test(key.slice(at + 1));
}

/** A shed of the direct sockets (tests, explain). */
export function directShed(name: string): ShedOrigin {
  return { name, via: VIA_DIRECT };
}
