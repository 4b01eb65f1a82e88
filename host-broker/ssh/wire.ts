/**
 * What the host's handler reads in the data a guest asks it to sign:
 * user-auth requests (RFC 4252 section 7, and OpenSSH's
 * `publickey-hostbound-v00@openssh.com`) and SSHSIG signed data (OpenSSH
 * PROTOCOL.sshsig). The agent protocol itself, shared with the guest, is
 * protocol/ssh-wire.ts.
 */
import { WireReader } from '../../protocol/ssh-wire.js';

export {
  blobType, describeKey, encodeSignature, fingerprint, keyFingerprint, parseCertificate, parseSignature, sshString, WireError, WireReader, type WireSignature,
} from '../../protocol/ssh-wire.js';

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
