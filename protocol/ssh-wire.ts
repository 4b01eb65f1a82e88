/**
 * The SSH agent protocol (draft-miller-ssh-agent, OpenSSH's PROTOCOL.agent
 * and PROTOCOL.certkeys) as far as this project speaks it, for both sides:
 * RFC 4251 types, message frames, and the few messages an agent that holds
 * no key of its own needs. Keys and signatures are opaque blobs: whatever
 * type the host's agent has (certificates, security keys, types not yet
 * invented) passes through byte for byte. Only certificates are looked
 * into, to name the key they certify and what they say about it.
 *
 * Whatever does not parse exactly is a WireError; nothing here throws
 * anything else on hostile input.
 */
import crypto from 'node:crypto';

/** One-shot SHA-256 in base64: crypto.hash where Node has it (20.12 and later; ~3 times cheaper), else a Hash object. */
const sha256Base64: (data: Buffer) => string = typeof crypto.hash === 'function'
  ? (data) => crypto.hash('sha256', data, 'base64')
  : (data) => crypto.createHash('sha256').update(data).digest('base64');

/** `SHA256:<unpadded base64>` of a blob, as `ssh-keygen -lf` prints a plain key's; the same on both sides. */
export function fingerprint(blob: Buffer): string {
  return `SHA256:${sha256Base64(blob).replace(/=+$/, '')}`;
}

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

  u64(): bigint {
    if (this.pos + 8 > this.buf.length) throw new WireError('truncated uint64');
    const v = this.buf.readBigUInt64BE(this.pos);
    this.pos += 8;
    return v;
  }

  string(): Buffer {
    const len = this.u32();
    if (len > this.buf.length - this.pos) throw new WireError('truncated string');
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
  const out = Buffer.allocUnsafe(4 + body.length);
  out.writeUInt32BE(body.length, 0);
  body.copy(out, 4);
  return out;
}

export function u32(value: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(value >>> 0);
  return b;
}

/** Sign flags of the agent protocol. */
export const SSH_AGENT_RSA_SHA2_256 = 2;
export const SSH_AGENT_RSA_SHA2_512 = 4;

/** Message numbers of the agent protocol that either side reads or writes. */
export const SSH_AGENT_FAILURE = 5;
export const SSH_AGENT_SUCCESS = 6;
export const SSH_AGENTC_REQUEST_IDENTITIES = 11;
export const SSH_AGENT_IDENTITIES_ANSWER = 12;
export const SSH_AGENTC_SIGN_REQUEST = 13;
export const SSH_AGENT_SIGN_RESPONSE = 14;
export const SSH_AGENTC_EXTENSION = 27;

/** OpenSSH's limit on one agent message. */
export const AGENT_MAX_MESSAGE = 256 * 1024;

/** A whole message: uint32 length, byte type, body. */
export function frame(type: number, body: Buffer = Buffer.alloc(0)): Buffer {
  const out = Buffer.allocUnsafe(5 + body.length);
  out.writeUInt32BE(body.length + 1, 0);
  out[4] = type;
  body.copy(out, 5);
  return out;
}

export const FAILURE = frame(SSH_AGENT_FAILURE);
export const SUCCESS = frame(SSH_AGENT_SUCCESS);

/** A message as read: its type and body (the frame without length and type). */
export interface AgentMessage {
  type: number;
  body: Buffer;
}

/**
 * Splits a byte stream into messages. A length past AGENT_MAX_MESSAGE is a
 * WireError: the connection is to be closed, as OpenSSH's agent does. An
 * empty message (no type byte) comes out as type 0, which no one serves.
 */
export class FrameSplitter {
  private buf: Buffer = Buffer.alloc(0);

  /** Bytes held for a message not yet whole. */
  get pending(): number {
    return this.buf.length;
  }

  push(chunk: Buffer): AgentMessage[] {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    const out: AgentMessage[] = [];
    while (this.buf.length >= 4) {
      const len = this.buf.readUInt32BE(0);
      if (len > AGENT_MAX_MESSAGE) throw new WireError(`a message of ${len} bytes (the limit is ${AGENT_MAX_MESSAGE})`);
      if (this.buf.length < 4 + len) break;
      out.push(len === 0 ? { type: 0, body: Buffer.alloc(0) } : { type: this.buf[4]!, body: this.buf.subarray(5, 4 + len) });
      this.buf = this.buf.subarray(4 + len);
    }
    return out;
  }
}

export interface Identity {
  blob: Buffer;
  comment: string;
}

/** SSH_AGENT_IDENTITIES_ANSWER: `uint32 n`, then `string key_blob, string comment` each. */
export function identitiesAnswer(keys: Identity[]): Buffer {
  const parts: Buffer[] = [u32(keys.length)];
  for (const k of keys) parts.push(sshString(k.blob), sshString(k.comment));
  return frame(SSH_AGENT_IDENTITIES_ANSWER, Buffer.concat(parts));
}

export function parseIdentitiesAnswer(body: Buffer): Identity[] {
  const r = new WireReader(body);
  const n = r.u32();
  const keys: Identity[] = [];
  for (let i = 0; i < n; i++) {
    const blob = Buffer.from(r.string());
    keys.push({ blob, comment: r.text() });
  }
  // As ssh-add does, what follows the last key is not looked at.
  return keys;
}

export interface SignRequest {
  key: Buffer;
  data: Buffer;
  flags: number;
}

/** SSH_AGENTC_SIGN_REQUEST: `string key_blob, string data, uint32 flags`, and nothing more. */
export function parseSignRequest(body: Buffer): SignRequest {
  const r = new WireReader(body);
  const key = r.string();
  const data = r.string();
  const flags = r.u32();
  if (!r.done) throw new WireError('bytes after the flags');
  if (key.length === 0) throw new WireError('an empty key');
  return { key, data, flags };
}

export function signRequest(req: SignRequest): Buffer {
  return frame(SSH_AGENTC_SIGN_REQUEST, Buffer.concat([sshString(req.key), sshString(req.data), u32(req.flags)]));
}

/** An agent signature: `string format, string blob`, then what the format adds (security keys: flags and counter). */
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

/** SSH_AGENT_SIGN_RESPONSE: `string signature`. */
export function signResponse(signature: Buffer): Buffer {
  return frame(SSH_AGENT_SIGN_RESPONSE, sshString(signature));
}

export function parseSignResponse(body: Buffer): WireSignature {
  const r = new WireReader(body);
  const sig = parseSignature(Buffer.from(r.string()));
  if (!r.done) throw new WireError('bytes after the signature');
  return sig;
}

/** SSH_AGENTC_EXTENSION: `string name`, then the extension's own bytes (OpenSSH's form, not a nested string). */
export function parseExtension(body: Buffer): { name: string; contents: Buffer } {
  const r = new WireReader(body);
  const name = r.text();
  return { name, contents: r.rest() };
}

export interface SessionBind {
  hostkey: Buffer;
  sessionId: Buffer;
  signature: Buffer;
  forwarding: boolean;
}

/** `session-bind@openssh.com`: `string hostkey, string session_id, string signature, bool is_forwarding`. */
export function parseSessionBind(contents: Buffer): SessionBind {
  const r = new WireReader(contents);
  const hostkey = r.string();
  const sessionId = r.string();
  const signature = r.string();
  const forwarding = r.u8() !== 0;
  if (!r.done) throw new WireError('bytes after is_forwarding');
  return { hostkey, sessionId, signature, forwarding };
}

/** The `query` extension's answer: SSH_AGENT_SUCCESS and the names of the extensions served. */
export function queryAnswer(names: string[]): Buffer {
  return frame(SSH_AGENT_SUCCESS, Buffer.concat(names.map((n) => sshString(n))));
}

/** The key type a blob starts with (`ssh-ed25519`, …), or undefined when it is not a key blob. */
export function blobType(blob: Buffer): string | undefined {
  try {
    const type = new WireReader(blob).text();
    return /^[a-z0-9@.-]{1,64}$/.test(type) ? type : undefined;
  } catch {
    return undefined;
  }
}

const CERT_SUFFIX = '-cert-v01@openssh.com';
/** Public fields of each certified key type, after the nonce (PROTOCOL.certkeys). */
const CERT_KEY_FIELDS: Record<string, number> = {
  'ssh-rsa': 2,
  'ssh-dss': 4,
  'ecdsa-sha2-nistp256': 2,
  'ecdsa-sha2-nistp384': 2,
  'ecdsa-sha2-nistp521': 2,
  'ssh-ed25519': 1,
  'sk-ecdsa-sha2-nistp256@openssh.com': 3,
  'sk-ssh-ed25519@openssh.com': 2,
};

export interface Certificate {
  /** The certified key's own blob. */
  key: Buffer;
  keyType: string;
  serial: bigint;
  /** 1 user, 2 host. */
  certType: number;
  keyId: string;
  principals: string[];
  validAfter: bigint;
  validBefore: bigint;
}

/** An OpenSSH certificate's contents, or undefined when `blob` is not one this code knows how to read. */
export function parseCertificate(blob: Buffer): Certificate | undefined {
  const type = blobType(blob);
  if (!type?.endsWith(CERT_SUFFIX)) return undefined;
  const base = type.slice(0, -CERT_SUFFIX.length);
  const keyType = base.startsWith('sk-') ? `${base}@openssh.com` : base;
  const fields = CERT_KEY_FIELDS[keyType];
  if (fields === undefined) return undefined;
  try {
    const r = new WireReader(blob);
    r.string(); // type
    r.string(); // nonce
    const keyFields: Buffer[] = [];
    for (let i = 0; i < fields; i++) keyFields.push(r.string());
    const serial = r.u64();
    const certType = r.u32();
    const keyId = r.text();
    const principals: string[] = [];
    const pr = new WireReader(r.string());
    while (!pr.done) principals.push(pr.text());
    const validAfter = r.u64();
    const validBefore = r.u64();
    r.string(); // critical options
    r.string(); // extensions
    r.string(); // reserved
    r.string(); // signature key
    r.string(); // signature
    if (!r.done) return undefined;
    const key = Buffer.concat([sshString(keyType), ...keyFields.map((f) => sshString(f))]);
    return { key, keyType, serial, certType, keyId, principals, validAfter, validBefore };
  } catch {
    return undefined;
  }
}

/**
 * A key's fingerprint as `ssh-keygen -lf` prints it: for a certificate, that
 * of the key it certifies (so allowing a key allows its certificates).
 */
export function keyFingerprint(blob: Buffer): string {
  return fingerprint(parseCertificate(blob)?.key ?? blob);
}

/** A key's short description for logs, prompts and audit lines: `SHA256:… (ED25519-CERT "id" for alice,bob)`. */
export function describeKey(blob: Buffer): string {
  const type = blobType(blob) ?? 'unknown';
  const cert = parseCertificate(blob);
  const short = (cert ? cert.keyType : type).replace(/^ssh-/, '').replace(/^(sk-)?ecdsa-sha2-nistp\d+/, '$1ecdsa').replace(/@.*$/, '').toUpperCase();
  if (!cert) return `${fingerprint(blob)} (${short})`;
  const who = cert.principals.length ? ` for ${cert.principals.slice(0, 8).join(',')}${cert.principals.length > 8 ? ',…' : ''}` : ' for any principal';
  return `${fingerprint(cert.key)} (${short}-CERT ${JSON.stringify(cert.keyId.slice(0, 64))}${who})`;
}
