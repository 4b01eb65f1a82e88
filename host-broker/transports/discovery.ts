/**
 * Servers found in shed's own client config, `~/.shed/config.yaml`
 * (PROTOCOL.md 3b), followed as it is edited.
 *
 * Each selected `servers.<name>` becomes a ServerConnection: its bus URL is
 * `api_url` when present, else `http://<host>:<http_port>`; its
 * `tls_cert_fingerprint` pins TLS; a secure server (an https `api_url`) gets
 * its token by bootstrap over SSH (`host`, `ssh_port`, and the identity,
 * known_hosts and client name of the discovery spec). The CLI's own
 * `control_token` is never used: its scope is not the bus's.
 *
 * The file is watched through its directory (editors and `shed server add`
 * replace it), debounced, and compared by digest, with a slow re-check as a
 * safety net. A file that cannot be used (bad YAML, an entry that is not a
 * server) keeps the last good list, and the log says why. A missing file is
 * an empty list.
 */
import { DirWatches, type NameFilter } from '../dir-watches.js';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseDocument } from 'yaml';
import { SHED_NAME_RE } from '../../protocol/envelope.js';
import { NotRegularFile, readRegularFile } from '../../protocol/files.js';
import type { Logger } from '../../protocol/log.js';
import { printable } from '../../protocol/text.js';
import { expandHome } from '../policy/effective.js';
import { checkBootstrap } from './mint.js';
import type { DiscoverySpec, ServerConnection } from './server-config.js';
import { normalizePin } from './tls.js';

export const DEFAULT_DISCOVERY_SOURCE = '~/.shed/config.yaml';
export const DEFAULT_BOOTSTRAP_IDENTITY = '~/.ssh/id_ed25519';
export const DEFAULT_BOOTSTRAP_KNOWN_HOSTS = '~/.shed/known_hosts';
export const DEFAULT_BOOTSTRAP_USER = '_bootstrap';
/** shed's default ports. */
export const DEFAULT_HTTP_PORT = 8080;
export const DEFAULT_SSH_PORT = 2222;
/** The largest config.yaml read; shed's is a few hundred bytes per server. */
export const MAX_CONFIG_BYTES = 1024 * 1024;
/** Servers taken from one file. */
export const MAX_DISCOVERED_SERVERS = 64;

export class DiscoveryError extends Error {
  override readonly name = 'DiscoveryError';
}

/** The host name as a client name shed accepts (letters, digits, dots, dashes, underscores). */
export function defaultClientName(hostname = os.hostname()): string {
  const name = hostname.replace(/[^A-Za-z0-9._-]/g, '-').replace(/^[^A-Za-z0-9]+/, '').slice(0, 64);
  return name || 'shed-host-agent';
}

/**
 * The servers a config.yaml text lists, as connections. Throws
 * DiscoveryError naming every problem (key path and what is wrong; never
 * the value of a key that may hold a secret).
 */
export function parseShedConfig(text: string, spec: DiscoverySpec, file = spec.source): ServerConnection[] {
  let doc: ReturnType<typeof parseDocument>;
  try {
    doc = parseDocument(text, { uniqueKeys: true });
  } catch (err) {
    // (Nesting deep enough to exhaust the parser's stack, say.)
    throw new DiscoveryError(`${file} cannot be parsed as YAML (${printable((err as Error).name, 40)})`, { cause: err });
  }
  if (doc.errors.length) {
    const e = doc.errors[0]!;
    const at = e.linePos?.[0] ? ` at line ${e.linePos[0].line}, column ${e.linePos[0].col}` : '';
    throw new DiscoveryError(`${file} is not valid YAML${at}: ${printable((e.message.split('\n')[0] ?? '').replace(/ at line \d+, column \d+:?$/, ''), 160)}`);
  }
  let root: unknown;
  try {
    root = doc.toJS({ maxAliasCount: 50 });
  } catch (err) {
    throw new DiscoveryError(`${file} cannot be read as YAML: ${printable((err as Error).message, 160)}`, { cause: err });
  }
  if (root === null || root === undefined) return [];
  if (!isMap(root)) throw new DiscoveryError(`${file} must hold a mapping with a servers: section`);
  const servers = root.servers;
  if (servers === undefined || servers === null) return [];
  if (!isMap(servers)) throw new DiscoveryError(`${file}: servers must be a mapping of server names`);
  const wanted = spec.servers === 'all' ? undefined : new Set(spec.servers);
  const problems: string[] = [];
  const out: ServerConnection[] = [];
  const names = Object.keys(servers).sort();
  for (const name of names) {
    if (wanted && !wanted.has(name)) continue;
    const where = `servers.${printable(name, 70)}`;
    if (!SHED_NAME_RE.test(name)) {
      problems.push(`${where}: a server name is lowercase letters, digits and hyphens, starting with a letter (at most 63)`);
      continue;
    }
    if (out.length >= MAX_DISCOVERED_SERVERS) {
      problems.push(`more than ${MAX_DISCOVERED_SERVERS} servers: ${where} and the rest are not taken`);
      break;
    }
    try {
      out.push(connectionOf(name, servers[name], spec));
    } catch (err) {
      problems.push(`${where}: ${(err as Error).message}`);
    }
  }
  if (problems.length) {
    const shown = problems.slice(0, 10);
    if (problems.length > shown.length) shown.push(`and ${problems.length - shown.length} more`);
    throw new DiscoveryError(`${file}: ${shown.join('; ')}`);
  }
  return out;
}

function isMap(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function port(v: unknown, key: string, fallback: number): number {
  if (v === undefined || v === null) return fallback;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > 65_535) throw new Error(`${key} must be a TCP port (1-65535)`);
  return v;
}

function connectionOf(name: string, entry: unknown, spec: DiscoverySpec): ServerConnection {
  if (!isMap(entry)) throw new Error('must be a mapping (host, http_port, ssh_port, api_url, tls_cert_fingerprint)');
  const host = entry.host;
  if (host !== undefined && host !== null && typeof host !== 'string') throw new Error('host must be a string');
  const httpPort = port(entry.http_port, 'http_port', DEFAULT_HTTP_PORT);
  const sshPort = port(entry.ssh_port, 'ssh_port', DEFAULT_SSH_PORT);
  let url: URL;
  if (entry.api_url !== undefined && entry.api_url !== null && entry.api_url !== '') {
    if (typeof entry.api_url !== 'string') throw new Error('api_url must be a string');
    try {
      url = new URL(entry.api_url);
    } catch {
      throw new Error('api_url is not a URL');
    }
    if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new Error('api_url must be http:// or https://');
    if (url.username || url.password) throw new Error('api_url must not hold a user name or password');
  } else {
    if (!host) throw new Error('has neither api_url nor host');
    checkHost(host);
    url = new URL(`http://${host.includes(':') && !host.startsWith('[') ? `[${host}]` : host}:${httpPort}`);
  }
  const connection: ServerConnection = { name, policyScope: name, url: url.href.replace(/\/$/, '') };
  if (entry.tls_cert_fingerprint !== undefined && entry.tls_cert_fingerprint !== null && entry.tls_cert_fingerprint !== '') {
    if (typeof entry.tls_cert_fingerprint !== 'string') throw new Error('tls_cert_fingerprint must be a string');
    normalizePin(entry.tls_cert_fingerprint, 'tls_cert_fingerprint');
    if (url.protocol === 'https:') connection.tlsPin = entry.tls_cert_fingerprint;
  }
  if (url.protocol === 'https:') {
    // Secure mode: a token of scope credentials, minted over the server's SSH port.
    const sshHost = host || url.hostname.replace(/^\[(.*)\]$/, '$1');
    checkHost(sshHost);
    const b = spec.bootstrap ?? {};
    const token = {
      kind: 'bootstrap' as const,
      host: sshHost,
      port: sshPort,
      user: DEFAULT_BOOTSTRAP_USER,
      identityFile: path.resolve(expandHome(b.identityFile ?? DEFAULT_BOOTSTRAP_IDENTITY)),
      knownHosts: path.resolve(expandHome(b.knownHosts ?? DEFAULT_BOOTSTRAP_KNOWN_HOSTS)),
      clientName: b.clientName ?? defaultClientName(),
    };
    checkBootstrap(token, 'bootstrap');
    connection.token = token;
  }
  return connection;
}

function checkHost(host: string): void {
  if (!/^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[?[0-9A-Fa-f:.]+\]?)$/.test(host)) {
    throw new Error(`host ${JSON.stringify(printable(host, 80))} is not a host name or address`);
  }
}

export interface DiscoveryOptions {
  spec: DiscoverySpec;
  log: Logger;
  /** Called (debounced) with the whole list whenever it changes. */
  onChange: (servers: ServerConnection[]) => void;
  /** Quiet time after an edit before the file is read (250 ms). */
  debounceMs?: number;
  /** The file is also compared this often, in case a watch event was missed (10 s). */
  recheckMs?: number;
}

/** The watcher of shed's config.yaml: `servers` is the last good list. */
export class DiscoveryWatcher {
  private readonly file: string;
  private current: ServerConnection[] = [];
  private digest: string | undefined;
  // A directory that does not exist (yet) is not watched: the periodic re-check arms the watch once it does.
  private readonly watches = new DirWatches(() => this.schedule());
  private debounce: NodeJS.Timeout | undefined;
  private recheck: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(private readonly options: DiscoveryOptions) {
    this.file = path.resolve(expandHome(options.spec.source));
  }

  /** The servers of the last good read. */
  get servers(): ServerConnection[] {
    return this.current;
  }

  /** Read the file now, start watching it, and return the list (empty when the file is missing or unusable). */
  start(): ServerConnection[] {
    this.read(true);
    this.arm();
    this.recheck = setInterval(() => this.check(), this.options.recheckMs ?? 10_000);
    this.recheck.unref();
    return this.current;
  }

  stop(): void {
    this.closed = true;
    clearTimeout(this.debounce);
    clearInterval(this.recheck);
    this.watches.close();
  }

  /** Watch the file's directory (and a symlink target's), filtered by name. */
  private arm(): void {
    if (this.closed) return;
    const named = (base: string): NameFilter => (name) => name === null || name === base;
    const dirs = new Map<string, NameFilter>([[path.dirname(this.file), named(path.basename(this.file))]]);
    try {
      const real = fs.realpathSync(this.file);
      if (real !== this.file) dirs.set(path.dirname(real), named(path.basename(real)));
    } catch {
      // missing: the directory watch (or the re-check) sees it arrive
    }
    this.watches.sync(dirs);
  }

  private schedule(): void {
    if (this.closed) return;
    clearTimeout(this.debounce);
    this.debounce = setTimeout(() => this.check(), this.options.debounceMs ?? 250);
  }

  private check(): void {
    if (this.closed) return;
    this.arm();
    this.read(false);
  }

  /** Read and parse the file when its digest changed; on success with a different list, call onChange. */
  private read(first: boolean): void {
    const { log, onChange } = this.options;
    let text: string | undefined;
    let digest: string;
    let problem: string | undefined;
    try {
      const { st, data } = readRegularFile(this.file);
      if (st.size > MAX_CONFIG_BYTES) throw new DiscoveryError(`${this.file} is ${st.size} bytes, more than a shed client config (${MAX_CONFIG_BYTES} at most)`);
      text = data.toString('utf8');
      digest = crypto.createHash('sha256').update(data).digest('hex');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      digest = `error:${code ?? (err as Error).message}`;
      if (code !== 'ENOENT' && code !== 'ENOTDIR') {
        problem = err instanceof NotRegularFile ? `${this.file} is a ${err.kind}, not a file` : err instanceof DiscoveryError ? err.message : `cannot read ${this.file} (${code ?? (err as Error).message})`;
      }
    }
    if (digest === this.digest) return;
    this.digest = digest;
    let next: ServerConnection[];
    if (problem) {
      log.error(`discovery: ${problem}; keeping the ${this.current.length} server${this.current.length === 1 ? '' : 's'} read before`);
      return;
    }
    if (text === undefined) {
      if (first || this.current.length) log.info(`discovery: ${this.file} does not exist: no servers found there${first ? ' (it is watched: servers added there later are picked up)' : ''}`);
      next = [];
    } else {
      try {
        next = parseShedConfig(text, this.options.spec, this.file);
      } catch (err) {
        log.error(`discovery: ${(err as Error).message}; keeping the ${this.current.length} server${this.current.length === 1 ? '' : 's'} read before`);
        return;
      }
    }
    const before = new Map(this.current.map((s) => [s.name, JSON.stringify(s)]));
    const after = new Map(next.map((s) => [s.name, JSON.stringify(s)]));
    const added = [...after.keys()].filter((n) => !before.has(n));
    const removed = [...before.keys()].filter((n) => !after.has(n));
    const changed = [...after.keys()].filter((n) => before.has(n) && before.get(n) !== after.get(n));
    if (!first && !added.length && !removed.length && !changed.length) return;
    this.current = next;
    const parts = [added.length && `added ${added.join(', ')}`, removed.length && `removed ${removed.join(', ')}`, changed.length && `changed ${changed.join(', ')}`].filter(Boolean);
    log.info(`discovery: ${this.file} lists ${next.length} server${next.length === 1 ? '' : 's'}${next.length ? ` (${next.map((s) => s.name).join(', ')})` : ''}${first || !parts.length ? '' : `: ${parts.join('; ')}`}`);
    if (!first) onChange(next);
  }
}
