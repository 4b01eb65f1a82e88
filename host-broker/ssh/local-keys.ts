/**
 * The local-keys backend: the host user's own private key files
 * (`~/.ssh/id_ed25519`, `id_ecdsa`, `id_rsa`, plus the policy's `keys:`),
 * parsed and used for signing by ssh2's `utils.parseKey`, in this process.
 *
 * Like ssh, it refuses a key file others can read, and it cannot use a key
 * protected by a passphrase (there is nobody to ask): both are skipped with a
 * log line naming the file. A certificate beside a key (`<key>-cert.pub`, as
 * `ssh-keygen -s` writes it) is offered with it, when it certifies that key.
 * Parsed keys are cached by file identity and modification time (the key's
 * and its certificate's), so an edited or replaced file is read again.
 */
import fs from 'node:fs';
import path from 'node:path';
import ssh2, { type ParsedKey as Ssh2Key } from 'ssh2';
import type { Logger } from '../../protocol/log.js';
import { SSH_AGENT_RSA_SHA2_256, SSH_AGENT_RSA_SHA2_512 } from '../../protocol/ssh-wire.js';
import { fingerprint, parseCertificate, sshString, type WireSignature } from '../../protocol/ssh-wire.js';

/** ssh2's key; its `sign` returns an Error instead of throwing. */
type ParsedKey = Omit<Ssh2Key, 'sign'> & { sign(data: Buffer, algo?: string): Buffer | Error };

export const DEFAULT_KEY_FILES = ['id_ed25519', 'id_ecdsa', 'id_rsa'];

export interface LocalKey {
  file: string;
  blob: Buffer;
  /** The certificate of this key beside it (`<file>-cert.pub`), when there is one. */
  cert?: Buffer;
  type: string;
  comment: string;
  fingerprint: string;
  key: ParsedKey;
}

interface CacheEntry {
  stamp: string;
  key?: LocalKey;
}

export class LocalKeys {
  private readonly cache = new Map<string, CacheEntry>();

  constructor(private readonly log: Logger) {}

  /** The usable keys of `home`'s default files and `extra` (absolute paths), in that order, without duplicates. */
  load(home: string, extra: string[]): LocalKey[] {
    const files = [...DEFAULT_KEY_FILES.map((f) => path.join(home, '.ssh', f)), ...extra];
    const keys: LocalKey[] = [];
    const seen = new Set<string>();
    for (const file of files) {
      const key = this.read(file, extra.includes(file));
      if (!key || seen.has(key.fingerprint)) continue;
      seen.add(key.fingerprint);
      keys.push(key);
    }
    return keys;
  }

  private read(file: string, listed: boolean): LocalKey | undefined {
    let st: fs.Stats;
    try {
      st = fs.statSync(file);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (listed) this.once(file, `missing:${code}`, `ssh key ${file} listed in the policy's ssh.keys cannot be read (${code}); fix the path or remove it`);
      return undefined;
    }
    const certFile = `${file}-cert.pub`;
    const certSt = statOrUndefined(certFile);
    const stamp = `${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}:${st.mode}|${certSt ? `${certSt.ino}:${certSt.size}:${certSt.mtimeMs}` : '-'}`;
    const cached = this.cache.get(file);
    if (cached?.stamp === stamp) return cached.key;
    const entry: CacheEntry = { stamp };
    this.cache.set(file, entry);
    if (!st.isFile()) {
      this.log.warn(`skipping ssh key ${file}: not a regular file`);
      return undefined;
    }
    if (st.mode & 0o077) {
      this.log.warn(`skipping ssh key ${file}: its mode ${(st.mode & 0o777).toString(8)} lets others read it, and ssh would refuse it too; run chmod 600 ${file}`);
      return undefined;
    }
    let parsed: ReturnType<typeof ssh2.utils.parseKey>;
    try {
      parsed = ssh2.utils.parseKey(fs.readFileSync(file));
    } catch (err) {
      this.log.warn(`skipping ssh key ${file}: cannot read it (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
      return undefined;
    }
    if (parsed instanceof Error) {
      if (/encrypted|passphrase/i.test(parsed.message)) {
        this.log.warn(`skipping ssh key ${file}: it is protected by a passphrase, which the broker cannot ask for; add it to the host's ssh-agent (ssh-add ${file}) and use ssh.mode agent-forward or auto`);
      } else {
        this.log.warn(`skipping ssh key ${file}: not a private key ssh2 can read (${parsed.message.slice(0, 80)})`);
      }
      return undefined;
    }
    const key = parsed as ParsedKey;
    if (!key.isPrivateKey()) {
      this.log.warn(`skipping ssh key ${file}: it holds no private key`);
      return undefined;
    }
    const blob = Buffer.from(key.getPublicSSH());
    entry.key = { file, blob, type: key.type, comment: key.comment || file, fingerprint: fingerprint(blob), key, cert: certSt && this.readCert(certFile, blob) };
    return entry.key;
  }

  /** The certificate in `file` when it certifies `blob`; else undefined, with a log line saying why. */
  private readCert(file: string, blob: Buffer): Buffer | undefined {
    let line: string;
    try {
      line = fs.readFileSync(file, 'utf8').trim();
    } catch (err) {
      this.log.warn(`skipping certificate ${file}: cannot read it (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
      return undefined;
    }
    const cert = Buffer.from(line.split(/\s+/)[1] ?? '', 'base64');
    const parsed = parseCertificate(cert);
    if (!parsed) {
      this.log.warn(`skipping certificate ${file}: not an OpenSSH certificate`);
      return undefined;
    }
    if (!parsed.key.equals(blob)) {
      this.log.warn(`skipping certificate ${file}: it certifies ${fingerprint(parsed.key)}, not the key beside it (${fingerprint(blob)})`);
      return undefined;
    }
    return cert;
  }

  private readonly warned = new Set<string>();
  private once(file: string, why: string, message: string): void {
    const k = `${file}\0${why}`;
    if (this.warned.has(k)) return;
    this.warned.add(k);
    this.log.warn(message);
  }
}

/** Sign `data` with a local key as an agent would: the signature format follows the key type and, for RSA, the flags. */
export function signWithLocalKey(key: LocalKey, data: Buffer, flags: number): WireSignature {
  let format = key.type;
  let algo: string | undefined;
  switch (key.type) {
    case 'ssh-rsa':
      if (flags & SSH_AGENT_RSA_SHA2_256) [format, algo] = ['rsa-sha2-256', 'sha256'];
      else if (flags & SSH_AGENT_RSA_SHA2_512) [format, algo] = ['rsa-sha2-512', 'sha512'];
      else algo = 'sha1';
      break;
    case 'ecdsa-sha2-nistp256':
      algo = 'sha256';
      break;
    case 'ecdsa-sha2-nistp384':
      algo = 'sha384';
      break;
    case 'ecdsa-sha2-nistp521':
      algo = 'sha512';
      break;
    default:
      break;
  }
  const raw = key.key.sign(data, algo);
  if (raw instanceof Error) throw raw;
  const blob = key.type.startsWith('ecdsa-') ? derToSshEcdsa(raw) : Buffer.from(raw);
  return { format, blob, rest: Buffer.alloc(0) };
}

/**
 * An ECDSA signature from OpenSSL (DER `SEQUENCE { INTEGER r, INTEGER s }`)
 * in SSH's form (`mpint r, mpint s`, RFC 5656 section 3.1.2). A DER INTEGER's
 * content octets are already a minimal two's-complement number, which is
 * exactly an mpint's body.
 */
export function derToSshEcdsa(der: Buffer): Buffer {
  let p = 0;
  const readLen = (): number => {
    const first = der[p++]!;
    if (first < 0x80) return first;
    const n = first & 0x7f;
    let len = 0;
    for (let i = 0; i < n; i++) len = (len << 8) | der[p++]!;
    return len;
  };
  if (der[p++] !== 0x30) throw new Error('ECDSA signature is not a DER sequence');
  readLen();
  const ints: Buffer[] = [];
  for (let i = 0; i < 2; i++) {
    if (der[p++] !== 0x02) throw new Error('ECDSA signature lacks an INTEGER');
    const len = readLen();
    ints.push(der.subarray(p, p + len));
    p += len;
  }
  return Buffer.concat([sshString(ints[0]!), sshString(ints[1]!)]);
}

function statOrUndefined(file: string): fs.Stats | undefined {
  try {
    return fs.statSync(file);
  } catch {
    return undefined;
  }
}
