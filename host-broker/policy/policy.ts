/**
 * A loaded policy: the validated document, where it came from, and per-shed
 * resolution (cached; a reload builds a new Policy, so a request keeps the
 * policy it started with).
 *
 * `loadPolicyFile` reads the main file and the `sheds.d/` directory beside it
 * (`sheds.d/<shed>.yaml`, each one shed's sections), refuses files that group
 * or others can write (as ssh refuses a loose key), accepts the original
 * shed-extensions format with a notice, and reports every problem at once,
 * each as file:line:column and key path.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { AGENT_WAIT_LIMIT_MS, SHED_NAME_RE } from '../../protocol/envelope.js';
import { fileKind, NotRegularFile, readRegularFile, soleMemberGroup } from '../../protocol/files.js';
import { expandHome, resolveShed, type EffectiveShed } from './effective.js';
import { dirForLogPath, isLegacy, legacyNotice, translateLegacy } from './legacy.js';
import { DEFAULT_SERVER_NAME, formatDuration, PolicyDocument, ShedSections } from './schema.js';
import type { DiscoverySpec, ServerConnection, TokenSourceSpec } from '../transports/server-config.js';
import { formatIssue, YamlSource, type KeyPath, type PolicyIssue, type Position } from './source.js';
import { validate } from './validate.js';

export const DEFAULT_POLICY_PATH = '~/.config/shed/extensions.yaml';
export const DEFAULT_SOCKETS_DIR = '~/.local/state/shed/sockets';
export const DEFAULT_AUDIT_DIR = '~/.local/share/shed/audit';
export const DEFAULT_DENIALS_PER_MINUTE = 60;
export const DEFAULT_SERVER_URL = 'http://localhost:8080';
/** shed's client config, where discovery finds servers. */
export const DEFAULT_DISCOVERY_SOURCE = '~/.shed/config.yaml';
/** Where `shed server add` pins a server's SSH host key. */
export const DEFAULT_KNOWN_HOSTS = '~/.shed/known_hosts';
/** The account a server's forced bootstrap command runs as. */
export const DEFAULT_BOOTSTRAP_USER = '_bootstrap';
/** The per-shed directory, beside the main file. */
export const SHEDS_DIR_NAME = 'sheds.d';

export class PolicyError extends Error {
  override readonly name = 'PolicyError';
  constructor(
    readonly file: string,
    /** One line per problem: `file:line:col: key.path: what is wrong and what to do`. */
    readonly problems: string[],
    readonly issues: PolicyIssue[] = [],
  ) {
    super(`${file}: ${problems.length} problem${problems.length === 1 ? '' : 's'}:\n${problems.map((p) => `  ${p}`).join('\n')}`);
  }
}

export interface PolicyExtras {
  /** Lines to show the admin on load (the original format's translation). */
  notices?: string[];
  /** Where a key path of the document was written. */
  locate?: (path: KeyPath) => Position | undefined;
  /** The sheds.d directory watched for per-shed files (present or not). */
  shedsDir?: string;
}

/**
 * What the policy says of a named server that has no url of its own (its
 * connection comes from discovery): the keys it sets, to lay over what
 * discovery finds. A bootstrap here may lack host and port (discovery's
 * `host` and `ssh_port` fill them).
 */
export interface ServerSettings extends Omit<Partial<ServerConnection>, 'name' | 'token'> {
  name: string;
  policyScope: string;
  token?: Exclude<TokenSourceSpec, { kind: 'bootstrap' }> | (Partial<Extract<TokenSourceSpec, { kind: 'bootstrap' }>> & { kind: 'bootstrap' });
}

type ConnectionKeys = NonNullable<PolicyDocument['server']>;

function absolute(p: string): string {
  return path.resolve(expandHome(p));
}

export class Policy {
  private readonly cache = new Map<string, EffectiveShed | undefined>();
  readonly notices: string[];
  readonly shedsDir: string | undefined;
  private readonly locator: ((path: KeyPath) => Position | undefined) | undefined;
  private auditSettings: Policy['audit'] | undefined;

  constructor(
    readonly doc: PolicyDocument,
    /** Files the policy was read from (the main file first). */
    readonly files: string[] = [],
    extras: PolicyExtras = {},
  ) {
    this.notices = extras.notices ?? [];
    this.shedsDir = extras.shedsDir;
    this.locator = extras.locate;
  }

  /**
   * The effective policy of `shed`, or undefined when nothing admits it.
   * `server` is the name of a server under `servers:` or found by
   * discovery; leave it out for direct sockets and the top-level `server:`
   * (their sheds share one namespace and the global policy). A server with
   * no section under `servers:` also gets the global policy.
   */
  resolve(shed: string, server?: string): EffectiveShed | undefined {
    const key = server === undefined ? shed : `${server}\0${shed}`;
    if (!this.cache.has(key)) this.cache.set(key, resolveShed(this.doc, shed, server));
    return this.cache.get(key);
  }

  /** Sheds named in the policy (not `"*"`): each gets a direct socket. */
  namedSheds(): string[] {
    return Object.keys(this.doc.sheds ?? {}).filter((n) => n !== '*').sort();
  }

  hasWildcard(): boolean {
    return Object.hasOwn(this.doc.sheds ?? {}, '*');
  }

  /**
   * The sheds the policy names, `"*"` last when one applies: the global
   * ones, or for a server under `servers:` its own and the global ones.
   */
  listedSheds(server?: string): string[] {
    const scoped = server !== undefined && this.serverScopes().includes(server);
    const named = scoped ? [...new Set([...this.namedSheds(), ...this.namedShedsOf(server)])].sort() : this.namedSheds();
    const wildcard = this.hasWildcard() || (scoped && this.hasWildcardOf(server));
    return [...named, ...(wildcard ? ['*'] : [])];
  }

  /** The servers named under `servers:` (each a policy scope), sorted. */
  serverScopes(): string[] {
    return Object.keys(this.doc.servers ?? {}).sort();
  }

  /** Sheds named under `servers.<server>.sheds` (not `"*"`). */
  namedShedsOf(server: string): string[] {
    return Object.keys(this.doc.servers?.[server]?.sheds ?? {}).filter((n) => n !== '*').sort();
  }

  hasWildcardOf(server: string): boolean {
    return Object.hasOwn(this.doc.servers?.[server]?.sheds ?? {}, '*');
  }

  /**
   * The servers this policy connects to by itself: the top-level `server:`
   * (named `default`) and each `servers.<name>` with a url. Servers without
   * a url come from discovery (see `discovery()` and `serverSettings()`).
   */
  servers(): ServerConnection[] {
    const out: ServerConnection[] = [];
    const top = this.doc.server;
    const add = (name: string, scope: string | undefined, url: string, keys: ConnectionKeys) => {
      const { connection, token } = connectionOf(name, scope, url, keys);
      out.push(token ? { ...connection, token: completeToken(name, token) } : connection);
    };
    if (top) add(DEFAULT_SERVER_NAME, undefined, top.url ?? DEFAULT_SERVER_URL, top);
    for (const name of this.serverScopes()) {
      const s = this.doc.servers![name];
      if (s?.url !== undefined) add(name, name, s.url, s);
    }
    return out;
  }

  /** What `servers.<name>` sets, for a server that has no url (discovery supplies the rest); undefined when it is not there. */
  serverSettings(name: string): ServerSettings | undefined {
    if (!this.doc.servers || !Object.hasOwn(this.doc.servers, name)) return undefined;
    const s = this.doc.servers[name] ?? {};
    const { connection, token } = connectionOf(name, name, s.url ?? '', s);
    const { url: _url, ...rest } = connection;
    const settings: ServerSettings = { ...rest, name, policyScope: name };
    if (s.url !== undefined) settings.url = s.url;
    if (token) settings.token = token;
    return settings;
  }

  /** Discovery of servers from shed's client config, when the policy asks for it. */
  discovery(): DiscoverySpec | undefined {
    const d = this.doc.discovery;
    if (d === undefined) return undefined;
    const spec: DiscoverySpec = { source: absolute(d?.source ?? DEFAULT_DISCOVERY_SOURCE), servers: d?.servers ?? 'all' };
    const b = d?.bootstrap;
    if (b) {
      spec.bootstrap = {};
      if (b.identity_file !== undefined) spec.bootstrap.identityFile = absolute(b.identity_file);
      if (b.known_hosts !== undefined) spec.bootstrap.knownHosts = absolute(b.known_hosts);
      if (b.client_name !== undefined) spec.bootstrap.clientName = b.client_name;
    }
    return spec;
  }

  /** Where `path` (e.g. `['sheds', 'my-service', 'aws', 'role']`) was written, when the policy came from files. */
  locate(keyPath: KeyPath): Position | undefined {
    return this.locator?.(keyPath);
  }

  /**
   * Direct sockets run when `direct` is present or no shed server is
   * configured (`server`, `servers`, `discovery`), unless `direct.enabled: false`.
   */
  get direct(): { enabled: boolean; socketsDir: string; maxConnections?: number } {
    const d = this.doc.direct;
    const anyServer = this.doc.server !== undefined || this.doc.servers !== undefined || this.doc.discovery !== undefined;
    const enabled = d?.enabled ?? (d !== undefined || !anyServer);
    return { enabled, socketsDir: path.resolve(expandHome(d?.sockets_dir ?? DEFAULT_SOCKETS_DIR)), maxConnections: d?.max_connections };
  }

  get server(): (NonNullable<PolicyDocument['server']> & { url: string }) | undefined {
    const s = this.doc.server;
    return s ? { ...s, url: s.url ?? DEFAULT_SERVER_URL } : undefined;
  }

  /** Read on every request (audit.required): worked out once. */
  get audit(): Readonly<{ dir: string; maxBytes: number; keep: number; required: boolean; denialsPerMinute: number }> {
    if (!this.auditSettings) {
      const a = this.doc.audit ?? {};
      this.auditSettings = Object.freeze({
        dir: path.resolve(expandHome(a.dir ?? (a.path !== undefined ? dirForLogPath(a.path) : DEFAULT_AUDIT_DIR))),
        maxBytes: a.max_bytes ?? 10 * 1024 * 1024,
        keep: a.keep ?? 5,
        required: a.required ?? false,
        denialsPerMinute: a.denials_per_minute ?? DEFAULT_DENIALS_PER_MINUTE,
      });
    }
    return this.auditSettings;
  }
}

type SettingsToken = NonNullable<ServerSettings['token']>;

/** A server's connection keys as the transports take them: absolute paths, the token source worked out (a bootstrap possibly partial). */
function connectionOf(name: string, policyScope: string | undefined, url: string, s: ConnectionKeys): { connection: Omit<ServerConnection, 'token'>; token?: SettingsToken } {
  const connection: Omit<ServerConnection, 'token'> = { name, url };
  if (policyScope !== undefined) connection.policyScope = policyScope;
  if (s.tls_pin !== undefined) connection.tlsPin = s.tls_pin;
  if (s.client_cert !== undefined) connection.clientCert = absolute(s.client_cert);
  if (s.client_key !== undefined) connection.clientKey = absolute(s.client_key);
  if (s.namespaces !== undefined) connection.namespaces = [...s.namespaces];
  if (s.token_file !== undefined) return { connection, token: { kind: 'file', path: absolute(s.token_file) } };
  if (s.token_command !== undefined) return { connection, token: { kind: 'command', argv: [...s.token_command] } };
  if (s.bootstrap === undefined) return { connection };
  const b = s.bootstrap;
  const token: SettingsToken = {
    kind: 'bootstrap',
    user: b.user ?? DEFAULT_BOOTSTRAP_USER,
    knownHosts: absolute(b.known_hosts ?? DEFAULT_KNOWN_HOSTS),
    clientName: b.client_name ?? os.hostname(),
  };
  const host = b.host ?? hostOf(url);
  if (host !== undefined) token.host = host;
  if (b.ssh_port !== undefined) token.port = b.ssh_port;
  if (b.identity_file !== undefined) token.identityFile = absolute(b.identity_file);
  return { connection, token };
}

/** A token source with every field (the schema requires a bootstrap's port and identity file on a server with a url). */
function completeToken(name: string, token: SettingsToken): TokenSourceSpec {
  if (token.kind !== 'bootstrap') return token;
  const { host, port, user, identityFile, knownHosts, clientName } = token;
  if (host === undefined || port === undefined || user === undefined || identityFile === undefined || knownHosts === undefined || clientName === undefined) {
    throw new Error(`server ${name}: bootstrap needs host, ssh_port and identity_file`);
  }
  return { kind: 'bootstrap', host, port, user, identityFile, knownHosts, clientName };
}

/** The host name of a URL (brackets of an IPv6 literal removed), or undefined. */
function hostOf(url: string): string | undefined {
  try {
    const host = new URL(url).hostname;
    return host.replace(/^\[(.*)\]$/, '$1') || undefined;
  } catch {
    return undefined;
  }
}

/** Notices for keys of earlier versions that are read with a new meaning. */
function auditNotices(doc: PolicyDocument, file: string): string[] {
  const a = doc.audit;
  if (a?.path === undefined) return [];
  if (a.dir !== undefined) return [`notice: ${file}: audit.path is ignored: audit.dir is set (one log per shed in it); remove audit.path`];
  return [`notice: ${file}: audit.path names one log file; the audit log is now one file per shed, written in ${dirForLogPath(a.path)}/ (<shed>.log); write audit: { dir: … } to choose the directory`];
}

/** Validate a parsed document (no file: problems name the key path only). */
export function policyFromDocument(raw: unknown, file = '<policy>'): Policy {
  const result = validate(PolicyDocument, raw, () => ({ file }), file);
  if (result.issues.length) {
    const issues = result.issues.map((i) => ({ path: i.path, message: i.message, file }));
    throw new PolicyError(file, issues.map(formatIssue), issues);
  }
  return new Policy(result.data!, [file]);
}

export interface LoadOptions {
  /** The platform the original format's Touch ID approvals are read for (default: this host's). */
  platform?: NodeJS.Platform;
}

/** Read and validate a policy file and its sheds.d directory; throws PolicyError listing every problem. */
export function loadPolicyFile(file: string, options: LoadOptions = {}): Policy {
  const main = path.resolve(expandHome(file));
  const issues: PolicyIssue[] = [];
  const notices: string[] = [];

  const text = readPolicyText(main, issues, 'the policy file');
  if (text === undefined) throw new PolicyError(main, issues.map(formatIssue), issues);
  // Whoever can write the directory can replace the file (or add sheds.d/).
  const parent = path.dirname(main);
  try {
    const loose = looseness(parent, fs.statSync(parent));
    if (loose) issues.push({ file: parent, path: [], message: loose });
  } catch (err) {
    issues.push({ file: parent, path: [], message: `cannot check the policy's directory (${(err as NodeJS.ErrnoException).code})` });
  }
  const source = new YamlSource(main, text);
  let doc: PolicyDocument | undefined;
  let mainLocate = (p: KeyPath, o?: { key?: boolean }) => source.locate(p, o);
  if (source.syntaxIssues.length) {
    issues.push(...source.syntaxIssues);
  } else {
    const raw = source.value();
    if (raw === null || raw === undefined) {
      issues.push({ file: main, line: 1, col: 1, path: [], message: 'the policy file is empty: it needs at least `version: 1` (start from config-examples/extensions.yaml)' });
    } else if (isLegacy(raw)) {
      const translation = translateLegacy(raw, main, (p, o) => source.locate(p, o), { platform: options.platform });
      issues.push(...translation.issues);
      mainLocate = (p, o) => source.locate(translation.originOf(p), o);
      const next = validate(PolicyDocument, translation.doc, mainLocate, main);
      // Problems are named by the keys the file has, not those of the translation.
      issues.push(...next.issues.map((i) => ({ ...i, path: translation.originOf(i.path) })));
      doc = next.data;
      notices.push(legacyNotice(main, translation.doc), ...translation.warnings);
    } else {
      const next = validate(PolicyDocument, raw, (p, o) => source.locate(p, o), main);
      issues.push(...next.issues);
      doc = next.data;
    }
  }

  const shedsDir = path.join(path.dirname(main), SHEDS_DIR_NAME);
  const perShed = readShedsDir(shedsDir, issues);
  const files = [main];
  const sheds: Record<string, ShedSections | null> = { ...(doc?.sheds ?? {}) };
  const sources = new Map<string, YamlSource>();
  for (const entry of perShed) {
    files.push(entry.source.file);
    if (Object.hasOwn(sheds, entry.name) && !sources.has(entry.name) && doc) {
      const where = mainLocate(['sheds', entry.name], { key: true });
      issues.push({
        file: entry.source.file, line: 1, col: 1, path: ['sheds', entry.name],
        message: `shed ${entry.name} is defined twice: here and in ${where.line !== undefined ? `${where.file}:${where.line}:${where.col}` : main}; keep one of the two`,
      });
      continue;
    }
    if (sources.has(entry.name)) {
      issues.push({ file: entry.source.file, line: 1, col: 1, path: ['sheds', entry.name], message: `shed ${entry.name} is defined twice: here and in ${sources.get(entry.name)!.file}; keep one of the two` });
      continue;
    }
    sources.set(entry.name, entry.source);
    sheds[entry.name] = entry.sections;
  }

  if (issues.length || !doc) {
    const order = [...new Set(issues.map((i) => i.file))];
    issues.sort((a, b) => order.indexOf(a.file) - order.indexOf(b.file) || (a.line ?? 0) - (b.line ?? 0) || (a.col ?? 0) - (b.col ?? 0));
    throw new PolicyError(main, issues.map(formatIssue), issues);
  }
  const locate = (p: KeyPath): Position | undefined => {
    const own = p[0] === 'sheds' && typeof p[1] === 'string' ? sources.get(p[1]) : undefined;
    return own ? own.locate(p.slice(2)) : mainLocate(p);
  };
  const policy = new Policy({ ...doc, sheds }, files, { notices, locate, shedsDir });
  notices.push(...auditNotices(doc, main), ...lateApprovalNotices(policy));
  return policy;
}

/**
 * An approval gate that may take as long as a guest waits for its answer
 * (shed-agent's 30 s) approves requests nobody is waiting for any more.
 */
function lateApprovalNotices(policy: Policy): string[] {
  const listed = (server?: string) => policy.listedSheds(server).map((name) => ({ name, server, approval: policy.resolve(name, server)!.approval }));
  const late = [
    ...listed(),
    // A server's shed whose gate is the global one's is said once, globally.
    ...policy.serverScopes().flatMap((s) => listed(s).filter((e) => JSON.stringify(e.approval) !== JSON.stringify(policy.resolve(e.name)?.approval))),
  ].filter(({ approval }) => approval.gate !== 'none' && approval.timeout >= AGENT_WAIT_LIMIT_MS);
  if (late.length === 0) return [];
  const timeouts = [...new Set(late.map(({ approval }) => formatDuration(approval.timeout)))].join(', ');
  const label = ({ name, server }: { name: string; server?: string }) => `${name === '*' ? '"*"' : name}${server ? ` of server ${server}` : ''}`;
  const names = late.slice(0, 5).map(label).join(', ') + (late.length > 5 ? ` and ${late.length - 5} more` : '');
  return [`notice: approval.timeout (${timeouts}) for ${names} is not shorter than the ${AGENT_WAIT_LIMIT_MS / 1000} s a guest waits for an answer: a request approved after that has already failed in the shed (per-session and per-shed approvals still serve its retry); set approval.timeout below ${AGENT_WAIT_LIMIT_MS / 1000}s, e.g. 25s`];
}

interface ShedFile {
  name: string;
  source: YamlSource;
  sections: ShedSections;
}

/** The per-shed files of sheds.d (none when it does not exist). */
function readShedsDir(dir: string, issues: PolicyIssue[]): ShedFile[] {
  let st: fs.Stats;
  try {
    st = fs.statSync(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    issues.push({ file: dir, path: [], message: `cannot read the per-shed directory (${(err as NodeJS.ErrnoException).code}): check its permissions` });
    return [];
  }
  if (!st.isDirectory()) {
    issues.push({ file: dir, path: [], message: `is not a directory: ${SHEDS_DIR_NAME} beside the policy file holds one <shed>.yaml per shed; remove or rename it` });
    return [];
  }
  const loose = looseness(dir, st);
  if (loose) issues.push({ file: dir, path: [], message: loose });
  let names: string[];
  try {
    names = fs.readdirSync(dir).sort();
  } catch (err) {
    issues.push({ file: dir, path: [], message: `cannot list the per-shed directory (${(err as NodeJS.ErrnoException).code}): check its permissions` });
    return [];
  }
  const out: ShedFile[] = [];
  for (const entry of names) {
    // Editors' swap and backup files (.x.swp, x.yaml~) and anything else that is not YAML are not policy.
    const m = /^([^.].*)\.ya?ml$/.exec(entry);
    if (!m) continue;
    const file = path.join(dir, entry);
    const name = m[1]!;
    // Looked at before it is opened: a FIFO would block the read for ever.
    let kind: fs.Stats;
    try {
      kind = fs.statSync(file);
    } catch (err) {
      issues.push({ file, path: [], message: `cannot read the per-shed file (${(err as NodeJS.ErrnoException).code}): remove it or fix its permissions` });
      continue;
    }
    if (!kind.isFile()) {
      issues.push({ file, path: [], message: `is not a regular file (${fileKind(kind)}): ${SHEDS_DIR_NAME} holds one <shed>.yaml file per shed; remove it` });
      continue;
    }
    if (!SHED_NAME_RE.test(name)) {
      issues.push({ file, path: [], message: `${JSON.stringify(name)} is not a shed name (lowercase letters, digits and hyphens, starting with a letter, at most 63): name the file <shed>.yaml` });
      continue;
    }
    const text = readPolicyText(file, issues, 'the per-shed file');
    if (text === undefined) continue;
    const source = new YamlSource(file, text);
    if (source.syntaxIssues.length) {
      issues.push(...source.syntaxIssues);
      continue;
    }
    const result = validate(ShedSections.nullable(), source.value() ?? null, (p, o) => source.locate(p, o), file, ['sheds', name]);
    if (result.issues.length) {
      issues.push(...result.issues);
      continue;
    }
    out.push({ name, source, sections: result.data ?? {} });
  }
  return out;
}

/** The file's text, or undefined with the problem recorded (unreadable, not a regular file, loose permissions). */
function readPolicyText(file: string, issues: PolicyIssue[], what: string): string | undefined {
  let st: fs.Stats;
  let text: string;
  try {
    let data: Buffer;
    ({ st, data } = readRegularFile(file));
    text = data.toString('utf8');
  } catch (err) {
    if (err instanceof NotRegularFile) {
      const fix = err.kind === 'directory' ? 'give the YAML file\'s path' : 'it must be a regular YAML file';
      issues.push({ file, path: [], message: `${what} is a ${err.kind}; ${fix}` });
      return undefined;
    }
    const code = (err as NodeJS.ErrnoException).code;
    const hint = code === 'ENOENT' ? 'create it (see config-examples/ in shed-extensions) or pass --config' : 'check its permissions';
    issues.push({ file, path: [], message: `cannot read ${what} (${code}): ${hint}` });
    return undefined;
  }
  const loose = looseness(file, st);
  if (loose) {
    issues.push({ file, path: [], message: loose });
    return undefined;
  }
  return text;
}

/** Why a policy file or directory is unsafe to trust, with the command that fixes it. */
function looseness(file: string, st: fs.Stats): string | undefined {
  const kind = st.isDirectory() ? 'directory' : 'file';
  // Group-writable is fine when the group is the owner's alone (a user private
  // group, as a umask of 002 makes): OpenSSH's rule for its config files.
  const groupOnly = (st.mode & 0o022) === 0o020;
  const uidNow = process.getuid?.();
  if (st.mode & 0o022 && !(groupOnly && uidNow !== undefined && st.uid === uidNow && soleMemberGroup(st.gid, uidNow))) {
    const mode = (st.mode & 0o777).toString(8).padStart(4, '0');
    return `the policy ${kind} is writable by ${st.mode & 0o020 ? (st.mode & 0o002 ? 'group and others' : 'group') : 'others'} (mode ${mode}), `
      + `so another user could grant sheds your credentials; it is refused until you run: chmod go-w ${shellQuote(file)}`;
  }
  const uid = process.getuid?.();
  if (uid !== undefined && st.uid !== uid && st.uid !== 0) {
    return `the policy ${kind} is owned by uid ${st.uid}, not by you (uid ${uid}) or root, so that user could grant sheds your credentials; `
      + `it is refused until you run: chown ${shellQuote(os.userInfo().username)} ${shellQuote(file)}`;
  }
  return undefined;
}

export function shellQuote(s: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}
