/**
 * The ssh-agent namespace's policy rules, as decision functions: the handler
 * and `shed-host-agent explain` call the same ones, so a dry run says exactly
 * what the broker would do. They read nothing but their arguments, except the
 * `known_hosts` files that `allowed_hosts` names (through `read`, replaceable).
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import { SshCode } from '../../protocol/codes.js';
import type { Decision } from '../handler.js';
import type { EffectiveSsh } from '../policy/effective.js';
import { expandHome } from '../policy/effective.js';
import { blobType, fingerprint } from './wire.js';

export type ReadFile = (file: string) => string;
const readUtf8: ReadFile = (file) => fs.readFileSync(file, 'utf8');

/** `allowed_keys` empty lists every key; otherwise only those fingerprints. */
export function keyDecision(ssh: EffectiveSsh, fp: string): Decision {
  if (ssh.allowed_keys.length === 0) return { allowed: true, rule: 'allowed_keys is empty: every key of the backend' };
  if (ssh.allowed_keys.includes(fp)) return { allowed: true, rule: `allowed_keys lists ${fp}` };
  return { allowed: false, code: SshCode.KEY_NOT_ALLOWED, rule: `allowed_keys does not list ${fp}` };
}

/** `signing_namespaces` absent: any SSHSIG namespace; empty: none; otherwise the listed ones. */
export function signingNamespaceDecision(ssh: EffectiveSsh, namespace: string): Decision {
  const list = ssh.signing_namespaces;
  const shown = JSON.stringify(namespace.slice(0, 64));
  if (list === undefined) return { allowed: true, rule: 'no signing_namespaces: any namespace' };
  if (list.includes(namespace)) return { allowed: true, rule: `signing_namespaces lists ${shown}` };
  return {
    allowed: false,
    code: SshCode.SIGNING_NAMESPACE_NOT_ALLOWED,
    rule: list.length === 0 ? 'signing_namespaces is empty: no SSHSIG signatures' : `signing_namespaces [${list.join(', ')}] does not list ${shown}`,
  };
}

/** Whether `host` (a name, or `[name]:port` as known_hosts writes other ports) may be logged into. */
export function hostDecision(ssh: EffectiveSsh, host: string, read: ReadFile = readUtf8): Decision {
  const entries = ssh.allowed_hosts;
  if (entries === undefined) return { allowed: true, rule: 'no allowed_hosts: any host' };
  const name = host.toLowerCase();
  for (const entry of entries) {
    if ('host' in entry) {
      if (entry.host.toLowerCase() === name) return { allowed: true, rule: `allowed_hosts lists ${entry.host}` };
      continue;
    }
    const file = expandHome(entry.known_hosts);
    const lines = loadKnownHosts(file, read);
    if (lines instanceof Error) continue;
    if (lines.some((l) => l.marker === undefined && hostPatternsMatch(l.hosts, name))) {
      return { allowed: true, rule: `known_hosts ${entry.known_hosts} lists ${host}` };
    }
  }
  return { allowed: false, code: SshCode.HOST_NOT_ALLOWED, rule: `allowed_hosts does not list ${host}` };
}

/**
 * Whether a server whose host key is `hostkey` (a public key blob, as the
 * session-bind carried it) may be logged into: an `allowed_hosts` entry with
 * that key, or a `known_hosts` line with it (a `@revoked` line refuses it).
 */
export function hostKeyDecision(ssh: EffectiveSsh, hostkey: Buffer, read: ReadFile = readUtf8): Decision {
  const entries = ssh.allowed_hosts;
  if (entries === undefined) return { allowed: true, rule: 'no allowed_hosts: any host' };
  const fp = fingerprint(hostkey);
  const unreadable: string[] = [];
  for (const entry of entries) {
    if ('host' in entry) {
      const blob = keyLineBlob(entry.key);
      if (blob?.equals(hostkey)) return { allowed: true, rule: `allowed_hosts lists ${entry.host} with host key ${fp}` };
      continue;
    }
    const lines = loadKnownHosts(expandHome(entry.known_hosts), read);
    if (lines instanceof Error) {
      unreadable.push(`${entry.known_hosts} (${lines.message})`);
      continue;
    }
    const matching = lines.filter((l) => l.blob.equals(hostkey));
    if (matching.some((l) => l.marker === 'revoked')) {
      return { allowed: false, code: SshCode.HOST_NOT_ALLOWED, rule: `known_hosts ${entry.known_hosts} marks host key ${fp} @revoked` };
    }
    const plain = matching.filter((l) => l.marker === undefined);
    if (plain.length) {
      return { allowed: true, rule: `known_hosts ${entry.known_hosts} lists host key ${fp} for ${plain.map((l) => describeHosts(l.hosts)).join(', ')}` };
    }
  }
  const why = unreadable.length ? `; unreadable: ${unreadable.join(', ')}` : '';
  return { allowed: false, code: SshCode.HOST_NOT_ALLOWED, rule: `no allowed_hosts entry has host key ${fp}${why}` };
}

/** The key blob of a public key line `type base64 [comment]`, or undefined. */
export function keyLineBlob(line: string): Buffer | undefined {
  const b64 = line.trim().split(/\s+/)[1];
  if (!b64 || !/^[A-Za-z0-9+/]+={0,2}$/.test(b64)) return undefined;
  return Buffer.from(b64, 'base64');
}

export interface KnownHostsLine {
  marker?: 'revoked' | 'cert-authority';
  /** The comma-separated host patterns, or one hashed `|1|salt|hash`. */
  hosts: string;
  blob: Buffer;
}

/** Parse known_hosts text; lines that are not host-key lines are skipped, as ssh does. */
export function parseKnownHosts(text: string): KnownHostsLine[] {
  const out: KnownHostsLine[] = [];
  for (const raw of text.split('\n')) {
    const fields = raw.trim().split(/\s+/);
    if (!fields[0] || fields[0].startsWith('#')) continue;
    let marker: KnownHostsLine['marker'];
    if (fields[0].startsWith('@')) {
      if (fields[0] === '@revoked') marker = 'revoked';
      else if (fields[0] === '@cert-authority') marker = 'cert-authority';
      else continue;
      fields.shift();
    }
    const [hosts, type, b64] = fields;
    if (!hosts || !b64 || !/^[A-Za-z0-9+/]+={0,2}$/.test(b64)) continue;
    const blob = Buffer.from(b64, 'base64');
    // The blob must be a key of the type the line names, as ssh checks.
    if (blobType(blob) !== type) continue;
    out.push({ marker, hosts, blob });
  }
  return out;
}

function loadKnownHosts(file: string, read: ReadFile): KnownHostsLine[] | Error {
  try {
    return parseKnownHosts(read(file));
  } catch (err) {
    return new Error((err as NodeJS.ErrnoException).code ?? 'unreadable');
  }
}

/**
 * ssh's host matching for one known_hosts host field: a hashed entry
 * (`|1|salt|HMAC-SHA1(salt, host)`), or patterns with `*` and `?`, where a
 * matching negated `!pattern` refuses the line.
 */
export function hostPatternsMatch(field: string, host: string): boolean {
  if (field.startsWith('|1|')) {
    const [, , salt, hash] = field.split('|');
    if (!salt || !hash) return false;
    const mac = crypto.createHmac('sha1', Buffer.from(salt, 'base64')).update(host).digest('base64');
    return mac === hash;
  }
  let matched = false;
  for (const pattern of field.toLowerCase().split(',')) {
    const negated = pattern.startsWith('!');
    if (!globMatch(negated ? pattern.slice(1) : pattern, host)) continue;
    if (negated) return false;
    matched = true;
  }
  return matched;
}

function globMatch(pattern: string, text: string): boolean {
  const re = new RegExp(`^${pattern.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.')}$`);
  return re.test(text);
}

function describeHosts(field: string): string {
  return field.startsWith('|1|') ? '(a hashed host name)' : field;
}
