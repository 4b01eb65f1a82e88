/**
 * Session bindings: which server host key each SSH session id was proven to
 * belong to (by a verified `session-bind@openssh.com`), remembered per shed,
 * bounded in number and expiring. A user-auth signature is only as
 * destination-restricted as this table is correct, so entries are never
 * shared between sheds and never outlive their TTL.
 */
import crypto from 'node:crypto';
import ssh2 from 'ssh2';
import { parseSignature } from './wire.js';

/** OpenSSH's agent refuses longer session ids. */
export const MAX_SESSION_ID = 128;

export interface Binding {
  hostkey: Buffer;
  forwarding: boolean;
  expires: number;
}

export interface BindingsOptions {
  /** Bindings kept per shed; the oldest goes first. */
  perShed?: number;
  /** Milliseconds a binding stays usable. User auth follows the bind within seconds. */
  ttlMs?: number;
  now?: () => number;
}

export class SessionBindings {
  private readonly sheds = new Map<string, Map<string, Binding>>();
  private readonly perShed: number;
  private readonly ttlMs: number;
  private readonly now: () => number;

  constructor(options: BindingsOptions = {}) {
    this.perShed = options.perShed ?? 256;
    this.ttlMs = options.ttlMs ?? 10 * 60_000;
    this.now = options.now ?? Date.now;
  }

  bind(shed: string, sessionId: Buffer, hostkey: Buffer, forwarding: boolean): void {
    let table = this.sheds.get(shed);
    if (!table) this.sheds.set(shed, (table = new Map()));
    const id = sessionId.toString('base64');
    table.delete(id);
    table.set(id, { hostkey: Buffer.from(hostkey), forwarding, expires: this.now() + this.ttlMs });
    while (table.size > this.perShed) table.delete(table.keys().next().value!);
  }

  lookup(shed: string, sessionId: Buffer): Binding | undefined {
    const table = this.sheds.get(shed);
    if (!table) return undefined;
    const id = sessionId.toString('base64');
    const b = table.get(id);
    if (!b) return undefined;
    if (b.expires <= this.now()) {
      table.delete(id);
      return undefined;
    }
    return b;
  }

  size(shed: string): number {
    return this.sheds.get(shed)?.size ?? 0;
  }

  clear(): void {
    this.sheds.clear();
  }
}

/**
 * Verify a server's signature over a session id with its host key (blob), as
 * the server made it during key exchange: the signature's own format picks the
 * hash for RSA (`rsa-sha2-512`, `rsa-sha2-256`, `ssh-rsa`). True only when it
 * verifies; false for anything malformed or unsupported.
 */
export function verifySessionSignature(hostkey: Buffer, sessionId: Buffer, signature: Buffer): boolean {
  const key = ssh2.utils.parseKey(hostkey);
  if (key instanceof Error) return false;
  let sig;
  try {
    sig = parseSignature(signature);
  } catch {
    return false;
  }
  if (sig.rest.length) return false;
  const pem = key.getPublicPEM();
  if (!pem) return false;
  let algo: string | null;
  let dsaEncoding: 'der' | 'ieee-p1363' | undefined;
  let blob = sig.blob;
  switch (key.type) {
    case 'ssh-ed25519':
      if (sig.format !== 'ssh-ed25519') return false;
      algo = null;
      break;
    case 'ssh-rsa':
      algo = { 'rsa-sha2-512': 'sha512', 'rsa-sha2-256': 'sha256', 'ssh-rsa': 'sha1' }[sig.format] ?? '';
      if (!algo) return false;
      break;
    case 'ecdsa-sha2-nistp256':
    case 'ecdsa-sha2-nistp384':
    case 'ecdsa-sha2-nistp521': {
      if (sig.format !== key.type) return false;
      algo = { 'ecdsa-sha2-nistp256': 'sha256', 'ecdsa-sha2-nistp384': 'sha384', 'ecdsa-sha2-nistp521': 'sha512' }[key.type];
      const size = { 'ecdsa-sha2-nistp256': 32, 'ecdsa-sha2-nistp384': 48, 'ecdsa-sha2-nistp521': 66 }[key.type];
      const rs = sshEcdsaToP1363(blob, size);
      if (!rs) return false;
      blob = rs;
      dsaEncoding = 'ieee-p1363';
      break;
    }
    default:
      return false;
  }
  try {
    return crypto.verify(algo, sessionId, { key: pem, dsaEncoding }, blob);
  } catch {
    return false;
  }
}

/** `mpint r, mpint s` to fixed-width r‖s. */
function sshEcdsaToP1363(blob: Buffer, size: number): Buffer | undefined {
  try {
    let p = 0;
    const out: Buffer[] = [];
    for (let i = 0; i < 2; i++) {
      const len = blob.readUInt32BE(p);
      let n = blob.subarray(p + 4, p + 4 + len);
      p += 4 + len;
      while (n.length > size && n[0] === 0) n = n.subarray(1);
      if (n.length > size) return undefined;
      out.push(Buffer.concat([Buffer.alloc(size - n.length), n]));
    }
    return p === blob.length ? Buffer.concat(out) : undefined;
  } catch {
    return undefined;
  }
}
