/**
 * The SSH wire encodings the handler reads: RFC 4251 strings, public key
 * blobs and their fingerprints, user-auth requests (RFC 4252 section 7, and
 * OpenSSH's `publickey-hostbound-v00@openssh.com`), and SSHSIG signed data
 * (OpenSSH PROTOCOL.sshsig).
 */
import { fingerprint } from '../../protocol/ssh-agent.js';

export class WireError extends Error {
  override readonly name = 'WireError';
}

/** Reads RFC 4251 types from a buffer; throws WireError when the data runs out. */
export class WireReader {
  private pos = 0;
  constructor(private readonly buf: Buffer) {}

  get done(): boolean {
    return this.pos === this.buf.length;
  }

  u8(): number {
    if (this.pos + 1 > this.buf.length) throw new WireError('truncated byte');
    return this.buf[this.pos++]!;
  }

  u32(): number {
    if (this.pos + 4 > this.buf.length) throw new WireError('truncated uint32');
    const v = this.buf.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }

  string(): Buffer {
    const len = this.u32();
    if (this.pos + len > this.buf.length) throw new WireError('truncated string');
    const s = this.buf.subarray(this.pos, this.pos + len);
    this.pos += len;
    return s;
  }

  text(): string {
    return this.string().toString('utf8');
  }

  rest(): Buffer {
    const r = this.buf.subarray(this.pos);
    this.pos = this.buf.length;
    return r;
  }
}

export function sshString(value: Buffer | string): Buffer {
  const body = typeof value === 'string' ? Buffer.from(value, 'utf8') : value;
  const len = Buffer.alloc(4);
  len.writeUInt32BE(body.length);
  return Buffer.concat([len, body]);
}

export { fingerprint };

/** The key type a public key blob starts with (`ssh-ed25519`, ...), or undefined when it is not a blob. */
export function blobType(blob: Buffer): string | undefined {
  try {
    const type = new WireReader(blob).text();
    return /^[a-z0-9@.-]{1,64}$/.test(type) ? type : undefined;
  } catch {
    return undefined;
  }
}

/** A key's short description for logs and prompts: `SHA256:… (ED25519)`. */
export function describeKey(blob: Buffer): string {
  const type = blobType(blob) ?? 'unknown';
  const short = type.replace(/^ssh-/, '').replace(/^ecdsa-sha2-nistp\d+$/, 'ecdsa').replace(/@.*$/, '').toUpperCase();
  return `${fingerprint(blob)} (${short})`;
}

const SSH2_MSG_USERAUTH_REQUEST = 50;
export const HOSTBOUND_METHOD = 'publickey-hostbound-v00@openssh.com';

export interface UserAuthRequest {
  sessionId: Buffer;
  user: string;
  service: string;
  method: string;
  algorithm: string;
  key: Buffer;
  /** The server host key, present with the hostbound method. */
  hostkey?: Buffer;
}

/**
 * The user-auth request an ssh client asks the agent to sign, or undefined
 * when `data` is not one (exactly as OpenSSH's agent parses it: nothing may
 * follow the last field).
 */
export function parseUserAuthRequest(data: Buffer): UserAuthRequest | undefined {
  // Most data that is not a login fails here, without the cost of a thrown error.
  if (data.length < 5 || data.readUInt32BE(0) + 5 > data.length || data[data.readUInt32BE(0) + 4] !== SSH2_MSG_USERAUTH_REQUEST) return undefined;
  try {
    const r = new WireReader(data);
    const sessionId = r.string();
    if (sessionId.length === 0 || r.u8() !== SSH2_MSG_USERAUTH_REQUEST) return undefined;
    const user = r.text();
    const service = r.text();
    const method = r.text();
    if (method !== 'publickey' && method !== HOSTBOUND_METHOD) return undefined;
    if (r.u8() === 0) return undefined;
    const algorithm = r.text();
    const key = r.string();
    const hostkey = method === HOSTBOUND_METHOD ? r.string() : undefined;
    if (!r.done) return undefined;
    return { sessionId, user, service, method, algorithm, key, hostkey };
  } catch {
    return undefined;
  }
}

export const SSHSIG_MAGIC = Buffer.from('SSHSIG');

/** The namespace of SSHSIG signed data (`ssh-keygen -Y sign -n NS`), or undefined when `data` is not SSHSIG. */
export function parseSshsigNamespace(data: Buffer): string | undefined {
  if (data.length < SSHSIG_MAGIC.length || !data.subarray(0, SSHSIG_MAGIC.length).equals(SSHSIG_MAGIC)) return undefined;
  try {
    const r = new WireReader(data.subarray(SSHSIG_MAGIC.length));
    const namespace = r.text();
    r.string(); // reserved
    r.text(); // hash algorithm
    r.string(); // H(message)
    return r.done ? namespace : undefined;
  } catch {
    return undefined;
  }
}

/** True when `data` starts with the SSHSIG magic, whether or not the rest parses. */
export function looksLikeSshsig(data: Buffer): boolean {
  return data.length >= SSHSIG_MAGIC.length && data.subarray(0, SSHSIG_MAGIC.length).equals(SSHSIG_MAGIC);
}

/** An agent-protocol signature: `string format, string blob`, then whatever the format adds (security keys: flags and counter). */
export interface WireSignature {
  format: string;
  blob: Buffer;
  rest: Buffer;
}

export function parseSignature(sig: Buffer): WireSignature {
  const r = new WireReader(sig);
  const format = r.text();
  const blob = r.string();
  return { format, blob, rest: r.rest() };
}

export function encodeSignature(sig: WireSignature): Buffer {
  return Buffer.concat([sshString(sig.format), sshString(sig.blob), sig.rest]);
}
