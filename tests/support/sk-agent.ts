/**
 * A host agent that holds a FIDO security key without a device, for the
 * tests that show such keys pass through shed untouched.
 *
 * OpenSSH's ssh-agent cannot hold an `sk-ssh-ed25519@openssh.com` key
 * without the authenticator (it asks the device to sign), so this one holds
 * a software Ed25519 key and presents it as a security key: it lists the
 * key as `sk-ssh-ed25519@openssh.com` (public key, application "ssh:") and
 * signs as an authenticator would (PROTOCOL.u2f): Ed25519 over
 * SHA256(application) || flags || counter || SHA256(data), answered as
 * `string "sk-ssh-ed25519@openssh.com", string signature, byte flags,
 * uint32 counter`, with the user-presence flag set. sshd verifies that in
 * software, so a login with it through shed proves every byte came back.
 *
 * It is written from the protocol documents alone, without the project's
 * codec, so the two cannot share a mistake. It keeps every signature it
 * made, for byte-for-byte comparison.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';

export const SK_TYPE = 'sk-ssh-ed25519@openssh.com';
const APPLICATION = 'ssh:';
const USER_PRESENT = 0x01;

/** RFC 4251 string, written here without the project's codec. */
export function agentString(b: Buffer | string): Buffer {
  const body = typeof b === 'string' ? Buffer.from(b) : b;
  const len = Buffer.alloc(4);
  len.writeUInt32BE(body.length);
  return Buffer.concat([len, body]);
}

/** An agent message (uint32 length, byte type, body), written here without the project's codec. */
export function agentMessage(type: number, body: Buffer): Buffer {
  const head = Buffer.alloc(5);
  head.writeUInt32BE(body.length + 1);
  head[4] = type;
  return Buffer.concat([head, body]);
}

export interface SkAgent {
  sock: string;
  /** The key blob, and the line for authorized_keys. */
  blob: Buffer;
  pubLine: string;
  /** Every signature it answered with (the `string signature` contents), oldest first. */
  signatures: Buffer[];
  stop(): Promise<void>;
}

export async function startSkAgent(sock: string, comment = 'security-key@test'): Promise<SkAgent> {
  const { privateKey, publicKey } = crypto.generateKeyPairSync('ed25519');
  const raw = Buffer.from(publicKey.export({ format: 'jwk' }).x!, 'base64url');
  const blob = Buffer.concat([agentString(SK_TYPE), agentString(raw), agentString(APPLICATION)]);
  const signatures: Buffer[] = [];
  let counter = 0;
  const sha256 = (b: Buffer) => crypto.createHash('sha256').update(b).digest();

  const answer = (type: number, body: Buffer): Buffer => {
    if (type === 11) {
      const n = Buffer.alloc(4);
      n.writeUInt32BE(1);
      return agentMessage(12, Buffer.concat([n, agentString(blob), agentString(comment)]));
    }
    if (type === 13) {
      const keyLen = body.readUInt32BE(0);
      const key = body.subarray(4, 4 + keyLen);
      const dataLen = body.readUInt32BE(4 + keyLen);
      const data = body.subarray(8 + keyLen, 8 + keyLen + dataLen);
      if (!key.equals(blob)) return agentMessage(5, Buffer.alloc(0));
      counter += 1;
      const tail = Buffer.alloc(5);
      tail[0] = USER_PRESENT;
      tail.writeUInt32BE(counter, 1);
      const signed = Buffer.concat([sha256(Buffer.from(APPLICATION)), tail, sha256(data)]);
      const sig = Buffer.concat([agentString(SK_TYPE), agentString(crypto.sign(null, signed, privateKey)), tail]);
      signatures.push(sig);
      return agentMessage(14, agentString(sig));
    }
    return agentMessage(5, Buffer.alloc(0));
  };

  const server = net.createServer((s) => {
    let buf = Buffer.alloc(0);
    s.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) {
        const len = buf.readUInt32BE(0);
        s.write(answer(buf[4]!, buf.subarray(5, 4 + len)));
        buf = buf.subarray(4 + len);
      }
    });
    s.on('error', () => s.destroy());
  });
  await new Promise<void>((resolve) => server.listen(sock, resolve));
  fs.chmodSync(sock, 0o600);
  return {
    sock,
    blob,
    pubLine: `${SK_TYPE} ${blob.toString('base64')} ${comment}`,
    signatures,
    stop: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
