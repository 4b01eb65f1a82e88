/**
 * The original shed-extensions format (Go's `cmd/shed-host-agent`, every
 * version of it): no `version`; `server`, `discovery`, `approval_timeout`,
 * `ssh`, `aws`, `docker`, `logging`, `desktop`, `rc_hub` at the top. Read
 * as the equivalent version 1 policy, with the original's own leniency:
 *
 * - Go's YAML ignores unknown keys: so does this, with a warning naming each.
 * - `null` (or nothing) leaves a setting at its default; a string setting
 *   takes any scalar's text; a boolean takes yes/no, on/off as well.
 * - Durations are Go's (`1h30m`, `1.5h`, `300ms`).
 * - Registries are compared as the original did: scheme, trailing `/`,
 *   `/v1`, `/v2` dropped (and hosts compared without case, as hosts are).
 * - `aws.servers` / `docker.servers` become the `servers.<name>` layer.
 *
 * What the original refused (a list where a string goes, an approval
 * policy or AWS mode it did not know, a malformed duration, YAML errors,
 * duplicate keys) is refused here too, at file:line:col. Each key that is
 * ignored or read with another meaning gets one warning line: where it is,
 * the key, and what is done instead. Where the original's meaning cannot be
 * kept (an approval this broker cannot ask for), the safe equivalent is
 * chosen: the requests are refused, as the original refused them when its
 * approver did not answer.
 *
 * Approval policies: the original's later versions give each extension an
 * `approval.policy` whose absence means deny-all; its earlier ones had only
 * `ssh.approval.enabled` (Touch ID) and served everything else. A file is
 * read by the generation its keys belong to (`approval_timeout`,
 * `approval.policy: deny-all|approve-all|…`, `approval.scope`,
 * `aws.approval`, `docker.approval`, `aws.mode` mark the later one); a file
 * with neither is read as the earlier, which served it.
 */
import { stringify } from 'yaml';
import { normalizeRegistry } from '../docker/rules.js';
import { SHED_NAME_RE } from '../../protocol/envelope.js';
import { parseDuration, REGISTRY_PATTERN_RE } from './schema.js';
import { formatPath, type KeyPath, type PolicyIssue, type Position } from './source.js';

/** The top-level keys of the original format (any version). */
const LEGACY_KEYS = ['server', 'discovery', 'approval_timeout', 'ssh', 'aws', 'docker', 'logging', 'desktop', 'rc_hub'];

/** True for a document in the original format: no `version`, and one of its top-level keys. */
export function isLegacy(raw: unknown): boolean {
  if (!isMap(raw)) return false;
  const keys = Object.keys(raw);
  return !keys.includes('version') && keys.some((k) => LEGACY_KEYS.includes(k));
}

type Plain = Record<string, unknown>;
type Locate = (path: KeyPath, options?: { key?: boolean }) => Position;

export interface Translation {
  /** The equivalent version 1 document (raw: durations still text); when there are issues, what could be read (for more problems at once). */
  doc: Plain;
  /** One line per key ignored or read with another meaning: `warning: file:line: key: …`. */
  warnings: string[];
  /** What the original refused too, at file:line:col. */
  issues: PolicyIssue[];
  /** Where a version 1 key path of `doc` was written in the original file. */
  originOf(path: KeyPath): KeyPath;
  /** True when the file is read by the later generation (approval policies). */
  policies: boolean;
}

export interface TranslateOptions {
  /** Touch ID exists on macOS only; the translation of a biometric approval depends on it. Default: this host's. */
  platform?: NodeJS.Platform;
}

const APPROVAL_POLICIES = ['deny-all', 'approve-all', 'biometrics', 'biometrics-or-password', 'shed-desktop'] as const;
const SCOPES = ['per-request', 'per-session', 'per-shed'] as const;
const AWS_MODES = ['assume-role', 'passthrough'] as const;
const SHED_NAME = SHED_NAME_RE;

function isMap(value: unknown): value is Plain {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function describe(value: unknown): string {
  if (Array.isArray(value)) return 'a list';
  if (isMap(value)) return 'a map';
  return `${typeof value === 'string' ? 'the string' : typeof value === 'number' ? 'the number' : 'the boolean'} ${JSON.stringify(value)}`;
}

/** Reads the raw document as Go's yaml.v3 would have filled the original's structs, noting what it skips. */
class Reader {
  readonly warnings: string[] = [];
  readonly issues: PolicyIssue[] = [];

  constructor(private readonly file: string, private readonly locate: Locate) {}

  private line(path: KeyPath, key = false): string {
    const at = this.locate(path, { key });
    return at.line !== undefined ? `${this.file}:${at.line}` : this.file;
  }

  private readonly lines: number[] = [];

  warn(path: KeyPath, text: string): void {
    this.lines.push(this.locate(path, { key: true }).line ?? 0);
    this.warnings.push(`warning: ${this.line(path, true)}: ${formatPath(path)}: ${text}`);
  }

  notice(text: string): void {
    this.lines.push(Number.MAX_SAFE_INTEGER);
    this.warnings.push(text);
  }

  /** The warnings in the order of the file (a notice, without a line, last). */
  sortedWarnings(): string[] {
    return this.warnings.map((w, i) => [w, this.lines[i] ?? Number.MAX_SAFE_INTEGER] as const)
      .sort((a, b) => a[1] - b[1]).map(([w]) => w);
  }

  error(path: KeyPath, message: string): void {
    this.issues.push({ ...this.locate(path), file: this.locate(path).file ?? this.file, path, message });
  }

  /** A map's entries by key; every key not in `known` is warned about. Undefined for nothing/null. */
  map(value: unknown, path: KeyPath, known: readonly string[] | 'any'): Plain | undefined {
    if (value === undefined || value === null) return undefined;
    if (!isMap(value)) {
      this.error(path, `expected a map; got ${describe(value)}`);
      return undefined;
    }
    if (known !== 'any') {
      for (const key of Object.keys(value)) {
        if (!known.includes(key)) this.warn([...path, key], `unknown key: the original ignored it, and so does this (known here: ${known.join(', ')})`);
      }
    }
    return value;
  }

  /** A string setting: any scalar's text; nothing or null is undefined (the default stays). */
  str(value: unknown, path: KeyPath): string | undefined {
    if (value === undefined || value === null) return undefined;
    if (typeof value === 'string') return value;
    if (typeof value === 'number' || typeof value === 'boolean') return String(value);
    this.error(path, `expected a string; got ${describe(value)}`);
    return undefined;
  }

  /** A boolean setting: true/false, and YAML 1.1's yes/no, on/off, y/n, as Go's yaml.v3 reads them into a bool. */
  bool(value: unknown, path: KeyPath): boolean | undefined {
    if (value === undefined || value === null) return undefined;
    if (typeof value === 'boolean') return value;
    if (typeof value === 'string') {
      if (['y', 'Y', 'yes', 'Yes', 'YES', 'on', 'On', 'ON'].includes(value)) return true;
      if (['n', 'N', 'no', 'No', 'NO', 'off', 'Off', 'OFF'].includes(value)) return false;
    }
    this.error(path, `expected true or false; got ${describe(value)}`);
    return undefined;
  }

  /** A list of strings; null is "not set" (Go's nil), `[]` is an empty list. */
  strings(value: unknown, path: KeyPath): string[] | undefined {
    if (value === undefined || value === null) return undefined;
    if (!Array.isArray(value)) {
      this.error(path, `expected a list; got ${describe(value)}`);
      return undefined;
    }
    const out: string[] = [];
    value.forEach((item, i) => {
      const s = this.str(item, [...path, i]);
      if (s !== undefined) out.push(s);
    });
    return out;
  }

  /** A Go duration (checked here as the original checked it; kept as text for version 1). */
  duration(value: unknown, path: KeyPath, options: { positive?: boolean } = {}): string | undefined {
    const text = this.str(value, path);
    if (text === undefined || text === '') return undefined;
    const ms = parseDuration(text);
    if (ms === undefined) {
      this.error(path, `expected a Go duration such as 90s, 5m, 1h30m or 1.5h; got ${describe(value)}`);
      return undefined;
    }
    if (options.positive && ms <= 0) {
      this.error(path, `must be longer than 0; got ${JSON.stringify(text)}`);
      return undefined;
    }
    return text;
  }

  oneOf<T extends string>(value: unknown, path: KeyPath, allowed: readonly T[], what = ''): T | '' | undefined {
    const text = this.str(value, path);
    if (text === undefined || text === '') return text;
    if ((allowed as readonly string[]).includes(text)) return text as T;
    this.error(path, `expected one of ${allowed.join(', ')}${what ? ` (${what})` : ''}; got ${describe(value)}`);
    return undefined;
  }
}

/** Records where each version 1 path of the translation came from. */
class Origins {
  private readonly map = new Map<string, { from: KeyPath; subtree: boolean }>();

  /** `v1` was written at `from`; with `subtree`, `v1`'s children are `from`'s children of the same names. */
  set(v1: KeyPath, from: KeyPath, subtree = false): void {
    this.map.set(JSON.stringify(v1), { from, subtree });
  }

  of(path: KeyPath): KeyPath {
    for (let n = path.length; n >= 0; n--) {
      const hit = this.map.get(JSON.stringify(path.slice(0, n)));
      if (hit) return n === path.length || !hit.subtree ? hit.from : [...hit.from, ...path.slice(n)];
    }
    return [];
  }
}

/** What one extension's approval settings come to. */
type Approval =
  | { kind: 'serve' }
  | { kind: 'refuse' }
  | { kind: 'touchid'; scope: string; ttl: string; at: KeyPath; biometricsOnly?: KeyPath };

interface Layer {
  ssh?: Plain;
  aws?: Plain;
  docker?: Plain;
  approval?: Plain;
}

function put(layer: Layer, section: keyof Layer, key: string, value: unknown): void {
  if (value === undefined) return;
  (layer[section] ??= {})[key] = value;
}

function layerOut(layer: Layer): Plain {
  return Object.fromEntries(Object.entries(layer).filter(([, v]) => v && Object.keys(v).length));
}

/** Read the original format as a version 1 document. */
export function translateLegacy(raw: unknown, file: string, locate: Locate, options: TranslateOptions = {}): Translation {
  const platform = options.platform ?? process.platform;
  const r = new Reader(file, locate);
  const origins = new Origins();
  const top = r.map(raw, [], LEGACY_KEYS) ?? {};

  const ssh = r.map(top.ssh, ['ssh'], ['mode', 'approval']) ?? {};
  const sshApproval = r.map(ssh.approval, ['ssh', 'approval'], ['enabled', 'policy', 'method', 'scope', 'session_ttl']) ?? {};
  const aws = r.map(top.aws, ['aws'], ['source_profile', 'default_role', 'mode', 'session_duration', 'cache_refresh_before', 'approval', 'sheds', 'servers']) ?? {};
  const awsApproval = r.map(aws.approval, ['aws', 'approval'], ['policy', 'scope', 'session_ttl']);
  const docker = r.map(top.docker, ['docker'], ['registries', 'allow_all', 'config_path', 'approval', 'servers']) ?? {};
  const dockerApproval = r.map(docker.approval, ['docker', 'approval'], ['policy', 'scope', 'session_ttl']);
  const logging = r.map(top.logging, ['logging'], ['enabled', 'path']) ?? {};
  const desktop = r.map(top.desktop, ['desktop'], ['enabled', 'socket_path', 'timeout_ms']) ?? {};
  const rcHub = r.map(top.rc_hub, ['rc_hub'], ['enabled']) ?? {};

  // Which generation the file was written for.
  const sshPolicyText = r.str(sshApproval.policy, ['ssh', 'approval', 'policy']);
  const policies = top.approval_timeout !== undefined
    || (sshPolicyText !== undefined && (APPROVAL_POLICIES as readonly string[]).includes(sshPolicyText))
    || sshApproval.scope !== undefined
    || aws.approval !== undefined || docker.approval !== undefined
    || (aws.mode !== undefined && aws.mode !== null)
    || top.rc_hub !== undefined;

  const doc: Plain = { version: 1 };
  const defaults: Layer = {};

  // --- where the servers are
  const discoveryRaw = top.discovery;
  let discovery: { servers: 'all' | string[] } | undefined;
  if (discoveryRaw !== undefined) {
    const d = r.map(discoveryRaw, ['discovery'], ['servers', 'source', 'watch', 'poll_interval', 'debounce']) ?? {};
    const out: Plain = {};
    const source = r.str(d.source, ['discovery', 'source']);
    if (source) {
      out.source = source;
      origins.set(['discovery', 'source'], ['discovery', 'source']);
    }
    let servers: 'all' | string[] = 'all';
    const sel = d.servers;
    if (Array.isArray(sel)) servers = r.strings(sel, ['discovery', 'servers']) ?? [];
    else if (isMap(sel)) r.error(['discovery', 'servers'], 'discovery.servers must be "all" or a list of server names; got a map');
    else {
      const one = r.str(sel, ['discovery', 'servers']);
      if (one && one !== 'all') servers = [one];
    }
    if (servers !== 'all') {
      servers.forEach((name, i) => {
        if (!SHED_NAME.test(name)) r.error(['discovery', 'servers', i], `server name ${JSON.stringify(name)} cannot be used here: server names, like shed names, are lowercase letters, digits and hyphens, start with a letter, at most 63 characters`);
      });
      out.servers = servers;
      origins.set(['discovery', 'servers'], ['discovery', 'servers'], true);
    }
    const watch = r.oneOf(d.watch, ['discovery', 'watch'], ['fsnotify', 'poll', 'off']);
    // fsnotify (the original's default) is what the broker does: only the others read differently.
    if (watch === 'off') r.warn(['discovery', 'watch'], 'off: the broker always follows edits to the discovery source (within seconds); the original read it once at start');
    if (watch === 'poll') r.warn(['discovery', 'watch'], 'poll: the broker follows edits to the discovery source as they happen (within seconds), not on a timer');
    for (const key of ['poll_interval', 'debounce'] as const) {
      if (r.duration(d[key], ['discovery', key]) !== undefined) r.warn(['discovery', key], 'not used: the broker follows edits to the discovery source by itself');
    }
    discovery = { servers };
    doc.discovery = out;
    origins.set(['discovery'], ['discovery']);
    const server = r.str(top.server, ['server']);
    if (server !== undefined && server !== '') r.warn(['server'], 'ignored because discovery: is set, as the original ignored it; the servers come from the discovery source');
  } else {
    const url = r.str(top.server, ['server']) || 'http://localhost:8080';
    doc.server = { url };
    origins.set(['server'], ['server']);
    origins.set(['server', 'url'], ['server']);
  }

  // --- ssh
  const mode = r.oneOf(ssh.mode, ['ssh', 'mode'], ['agent-forward', 'local-keys'], 'or "" for auto');
  if (mode) {
    put(defaults, 'ssh', 'mode', mode);
    origins.set(['defaults', 'ssh', 'mode'], ['ssh', 'mode']);
  }
  const desktopEnabled = r.bool(desktop.enabled, ['desktop', 'enabled']);
  const sshGate = sshApprovalOf(r, sshApproval, policies, desktopEnabled === true);
  applyApproval(r, 'ssh', sshGate, defaults, origins, platform);

  // --- approvals of aws and docker (later generation only)
  for (const [ns, approval] of [['aws', awsApproval], ['docker', dockerApproval]] as const) {
    if (!policies) continue;
    const at = [ns, 'approval', 'policy'];
    const policy = r.oneOf(approval?.policy, at, ['deny-all', 'approve-all', 'shed-desktop'], 'the biometric policies are for ssh only');
    if (policy === undefined && approval?.policy !== undefined && approval.policy !== null) continue; // refused above
    for (const key of ['scope', 'session_ttl'] as const) {
      if (approval?.[key] !== undefined && approval[key] !== null) {
        if (key === 'session_ttl') r.duration(approval[key], [ns, 'approval', key]);
        r.warn([ns, 'approval', key], `only biometric policies use it, which ${ns} does not have; ignored, as the original ignored it`);
      }
    }
    const enabledAt: KeyPath = ['defaults', ns, 'enabled'];
    const namespace = ns === 'aws' ? 'aws-credentials' : 'docker-credentials';
    if (!policy) {
      r.warn(at, `not set: the original (with approval policies) refused every ${namespace} request without one (deny-all), and so does this (${ns}.enabled: false); set ${ns}.approval.policy: approve-all to serve it`);
    } else if (policy === 'deny-all') {
      r.warn(at, `deny-all: every ${namespace} request is refused (${ns}.enabled: false)`);
    } else if (policy === 'shed-desktop') {
      r.warn(at, `shed-desktop: this broker cannot ask the shed-desktop app; the original refused requests the app did not approve, and this refuses every ${namespace} request (${ns}.enabled: false); use approve-all, or a version 1 policy with an approval gate`);
    }
    if (policy !== 'approve-all') {
      put(defaults, ns, 'enabled', false);
      origins.set(enabledAt, at);
    }
  }
  if (top.approval_timeout !== undefined && top.approval_timeout !== null) {
    if (r.duration(top.approval_timeout, ['approval_timeout'], { positive: true }) !== undefined) {
      r.warn(['approval_timeout'], 'bounds shed-desktop decisions, which this broker cannot ask for; ignored (approval.timeout, 25s by default, bounds the touchid and command gates)');
    }
  }

  // --- aws
  const sourceProfile = r.str(aws.source_profile, ['aws', 'source_profile']);
  if (sourceProfile) {
    put(defaults, 'aws', 'source_profile', sourceProfile);
    origins.set(['defaults', 'aws', 'source_profile'], ['aws', 'source_profile']);
  }
  const awsKeys = (from: Plain, at: KeyPath, to: KeyPath, layer: Layer, roleKey: string) => {
    const role = r.str(from[roleKey], [...at, roleKey]);
    if (role) {
      put(layer, 'aws', 'role', role);
      origins.set([...to, 'aws', 'role'], [...at, roleKey]);
    }
    const awsMode = r.oneOf(from.mode, [...at, 'mode'], AWS_MODES);
    if (awsMode) {
      put(layer, 'aws', 'mode', awsMode);
      origins.set([...to, 'aws', 'mode'], [...at, 'mode']);
    }
    const duration = r.duration(from.session_duration, [...at, 'session_duration']);
    if (duration) {
      put(layer, 'aws', 'session_duration', duration);
      origins.set([...to, 'aws', 'session_duration'], [...at, 'session_duration']);
    }
  };
  awsKeys(aws, ['aws'], ['defaults'], defaults, 'default_role');
  const refresh = r.duration(aws.cache_refresh_before, ['aws', 'cache_refresh_before']);
  if (refresh) {
    put(defaults, 'aws', 'refresh_before', refresh);
    origins.set(['defaults', 'aws', 'refresh_before'], ['aws', 'cache_refresh_before']);
  }

  // Every shed is admitted, as the original admitted every shed.
  const sheds: Record<string, Layer> = {};
  const awsSheds = r.map(aws.sheds, ['aws', 'sheds'], 'any');
  if (awsSheds && Object.keys(awsSheds).length && policies) {
    r.warn(['aws', 'sheds'], 'the original\'s later versions refused aws.sheds (moved to aws.servers.<server>.sheds); read as its earlier versions did: for that shed on every server');
  }
  for (const [name, entry] of Object.entries(awsSheds ?? {})) {
    const at = ['aws', 'sheds', name];
    if (!shedName(r, name, at)) continue;
    const e = r.map(entry, at, ['role', 'mode', 'session_duration']) ?? {};
    const layer: Layer = {};
    awsKeys(e, at, ['sheds', name], layer, 'role');
    sheds[name] = layer;
    origins.set(['sheds', name], at);
  }

  // --- docker
  const registries = registryList(r, docker.registries, ['docker', 'registries'], ['defaults', 'docker', 'registries'], origins);
  if (registries) put(defaults, 'docker', 'registries', registries);
  const allowAll = r.bool(docker.allow_all, ['docker', 'allow_all']);
  if (allowAll !== undefined) {
    put(defaults, 'docker', 'allow_all', allowAll);
    origins.set(['defaults', 'docker', 'allow_all'], ['docker', 'allow_all']);
  }
  const configPath = r.str(docker.config_path, ['docker', 'config_path']);
  if (configPath) {
    put(defaults, 'docker', 'config_path', configPath);
    origins.set(['defaults', 'docker', 'config_path'], ['docker', 'config_path']);
  }

  // --- per-server overrides: the servers.<name> layer
  const servers: Record<string, { defaults: Layer; sheds: Record<string, Layer> }> = {};
  const serverOf = (name: string, at: KeyPath): { defaults: Layer; sheds: Record<string, Layer> } | undefined => {
    if (!discovery) {
      r.warn(at, 'applies to a server found by discovery:, and there is none: the original never used it, and neither does this');
      return undefined;
    }
    if (discovery.servers !== 'all' && !discovery.servers.includes(name)) {
      r.warn(at, `discovery.servers does not include ${name}: the original never used it, and neither does this`);
      return undefined;
    }
    if (!SHED_NAME.test(name)) {
      r.error(at, `server name ${JSON.stringify(name)} cannot be used here: server names, like shed names, are lowercase letters, digits and hyphens, start with a letter, at most 63 characters`);
      return undefined;
    }
    return (servers[name] ??= { defaults: {}, sheds: {} });
  };
  for (const [name, entry] of Object.entries(r.map(aws.servers, ['aws', 'servers'], 'any') ?? {})) {
    const at = ['aws', 'servers', name];
    const e = r.map(entry, at, ['default_role', 'mode', 'session_duration', 'sheds']) ?? {};
    const target = serverOf(name, at);
    if (!target) continue;
    awsKeys(e, at, ['servers', name, 'defaults'], target.defaults, 'default_role');
    for (const [shed, shedEntry] of Object.entries(r.map(e.sheds, [...at, 'sheds'], 'any') ?? {})) {
      const shedAt = [...at, 'sheds', shed];
      if (!shedName(r, shed, shedAt)) continue;
      const se = r.map(shedEntry, shedAt, ['role', 'mode', 'session_duration']) ?? {};
      awsKeys(se, shedAt, ['servers', name, 'sheds', shed], (target.sheds[shed] ??= {}), 'role');
      origins.set(['servers', name, 'sheds', shed], shedAt);
    }
  }
  for (const [name, entry] of Object.entries(r.map(docker.servers, ['docker', 'servers'], 'any') ?? {})) {
    const at = ['docker', 'servers', name];
    const e = r.map(entry, at, ['registries', 'allow_all', 'sheds']) ?? {};
    const target = serverOf(name, at);
    if (!target) continue;
    const dockerKeys = (from: Plain, fromAt: KeyPath, to: KeyPath, layer: Layer) => {
      const list = registryList(r, from.registries, [...fromAt, 'registries'], [...to, 'docker', 'registries'], origins);
      if (list) put(layer, 'docker', 'registries', list);
      const all = r.bool(from.allow_all, [...fromAt, 'allow_all']);
      if (all !== undefined) {
        put(layer, 'docker', 'allow_all', all);
        origins.set([...to, 'docker', 'allow_all'], [...fromAt, 'allow_all']);
      }
    };
    dockerKeys(e, at, ['servers', name, 'defaults'], target.defaults);
    for (const [shed, shedEntry] of Object.entries(r.map(e.sheds, [...at, 'sheds'], 'any') ?? {})) {
      const shedAt = [...at, 'sheds', shed];
      if (!shedName(r, shed, shedAt)) continue;
      const se = r.map(shedEntry, shedAt, ['registries', 'allow_all']) ?? {};
      dockerKeys(se, shedAt, ['servers', name, 'sheds', shed], (target.sheds[shed] ??= {}));
      origins.set(['servers', name, 'sheds', shed], shedAt);
    }
  }

  // --- logging, and what this broker does not have
  const logEnabled = r.bool(logging.enabled, ['logging', 'enabled']);
  const logPath = r.str(logging.path, ['logging', 'path']);
  if (logPath) {
    doc.audit = { dir: dirForLogPath(logPath) };
    origins.set(['audit'], ['logging']);
    origins.set(['audit', 'dir'], ['logging', 'path']);
    r.warn(['logging', 'path'], `one file for every shed in the original; the audit log is now one file per shed, in ${dirForLogPath(logPath)}/ (audit.dir)`);
  }
  if (logEnabled === false) r.warn(['logging', 'enabled'], 'false: the audit log is always written now (one file per shed); nothing turns it off');
  for (const key of ['enabled', 'socket_path', 'timeout_ms'] as const) {
    if (desktop[key] !== undefined) r.warn(['desktop', key], 'the shed-desktop channel is not part of this broker; ignored');
  }
  if (rcHub.enabled !== undefined) {
    r.bool(rcHub.enabled, ['rc_hub', 'enabled']);
    r.warn(['rc_hub', 'enabled'], 'the machine RC hub is not part of this broker; ignored');
  }

  // --- assemble
  const defaultsOut = layerOut(defaults);
  if (Object.keys(defaultsOut).length) doc.defaults = defaultsOut;
  const shedsOut: Plain = {};
  for (const [name, layer] of Object.entries(sheds)) shedsOut[name] = layerOut(layer);
  shedsOut['*'] = {};
  doc.sheds = shedsOut;
  if (Object.keys(servers).length) {
    const out: Plain = {};
    for (const [name, s] of Object.entries(servers)) {
      const entry: Plain = {};
      const d = layerOut(s.defaults);
      if (Object.keys(d).length) entry.defaults = d;
      const sh = Object.fromEntries(Object.entries(s.sheds).map(([n, l]) => [n, layerOut(l)]));
      if (Object.keys(sh).length) entry.sheds = sh;
      out[name] = entry;
    }
    doc.servers = out;
  }
  if (!policies && !hasApprovalSettings(top)) {
    r.notice(`notice: ${file} sets no approval.policy: read as the original did before it had approval policies (requests served without asking); its later versions refused every request of an extension without one`);
  }
  return { doc, warnings: r.sortedWarnings(), issues: r.issues, originOf: (p) => origins.of(p), policies };
}

function hasApprovalSettings(top: Plain): boolean {
  const ssh = isMap(top.ssh) ? top.ssh : {};
  return ssh.approval !== undefined && ssh.approval !== null;
}

function shedName(r: Reader, name: string, at: KeyPath): boolean {
  if (SHED_NAME.test(name)) return true;
  r.error(at, `${JSON.stringify(name)} is not a shed name: shed names are lowercase letters, digits and hyphens, start with a letter, do not end with a hyphen, at most 63 characters`);
  return false;
}

/** What `ssh.approval` comes to, in the generation the file belongs to. */
function sshApprovalOf(r: Reader, a: Plain, policies: boolean, desktopEnabled: boolean): Approval & { why?: string; at?: KeyPath } {
  const at: KeyPath = ['ssh', 'approval'];
  const ttl = r.duration(a.session_ttl, [...at, 'session_ttl']) ?? '4h';
  if (policies) {
    const policy = r.oneOf(a.policy, [...at, 'policy'], APPROVAL_POLICIES);
    const scope = r.oneOf(a.scope, [...at, 'scope'], SCOPES) || 'per-session';
    if (a.enabled !== undefined) r.warn([...at, 'enabled'], 'not read by the original once it had approval policies (ssh.approval.policy decides); ignored');
    if (a.method !== undefined) r.warn([...at, 'method'], 'not read by the original once it had approval policies (ssh.approval.policy decides); ignored');
    const biometric = policy === 'biometrics' || policy === 'biometrics-or-password';
    if (!biometric) {
      for (const key of ['scope', 'session_ttl'] as const) {
        if (a[key] !== undefined && a[key] !== null) r.warn([...at, key], 'only the biometric policies use it; ignored, as the original ignored it');
      }
    }
    if (policy === undefined && a.policy !== undefined && a.policy !== null) return { kind: 'serve' }; // refused above
    if (!policy) return { kind: 'refuse', why: 'missing', at: [...at, 'policy'] };
    if (policy === 'approve-all') return { kind: 'serve' };
    if (policy === 'deny-all') return { kind: 'refuse', why: 'deny-all', at: [...at, 'policy'] };
    if (policy === 'shed-desktop') return { kind: 'refuse', why: 'shed-desktop', at: [...at, 'policy'] };
    return { kind: 'touchid', scope, ttl, at: [...at, 'policy'], ...(policy === 'biometrics' && { biometricsOnly: [...at, 'policy'] }) };
  }
  const enabled = r.bool(a.enabled, [...at, 'enabled']);
  // Without enabled, policy, method and session_ttl were unused by the original too: the meaning is kept,
  // and values it never looked at are not refused.
  if (!enabled) {
    const text = r.str(a.policy, [...at, 'policy']);
    if (text && !(SCOPES as readonly string[]).includes(text)) r.warn([...at, 'policy'], `${JSON.stringify(text)} is no approval policy the original knew; approval is not enabled, so it is ignored, as the original ignored it`);
    return { kind: 'serve' };
  }
  const scope = r.oneOf(a.policy, [...at, 'policy'], SCOPES) || 'per-session';
  const method = r.oneOf(a.method, [...at, 'method'], ['biometrics-or-password', 'biometrics', 'shed-desktop']);
  if (method === 'shed-desktop') return { kind: 'refuse', why: desktopEnabled ? 'shed-desktop' : 'shed-desktop-off', at: [...at, 'method'] };
  return { kind: 'touchid', scope, ttl, at: [...at, 'enabled'], ...(method === 'biometrics' && { biometricsOnly: [...at, 'method'] }) };
}

/** Write the ssh approval into the version 1 layers (Touch ID on macOS only; refusing is the safe equivalent elsewhere). */
function applyApproval(r: Reader, ns: 'ssh', a: Approval & { why?: string; at?: KeyPath }, defaults: Layer, origins: Origins, platform: NodeJS.Platform): void {
  const refuse = (at: KeyPath, text: string) => {
    r.warn(at, text);
    put(defaults, ns, 'enabled', false);
    origins.set(['defaults', ns, 'enabled'], at);
  };
  if (a.kind === 'serve') return;
  if (a.kind === 'refuse') {
    const at = a.at!;
    if (a.why === 'missing') refuse(at, 'not set: the original (with approval policies) refused every ssh signature without one (deny-all), and so does this (ssh.enabled: false); set ssh.approval.policy: approve-all to serve it');
    else if (a.why === 'deny-all') refuse(at, 'deny-all: every ssh-agent request is refused (ssh.enabled: false); the original still listed the keys');
    else if (a.why === 'shed-desktop-off') refuse(at, 'shed-desktop with desktop.enabled off: the original refused every signature, and so does this (ssh.enabled: false)');
    else refuse(at, 'shed-desktop: this broker cannot ask the shed-desktop app; the original refused signatures the app did not approve, and this refuses every ssh-agent request (ssh.enabled: false); use touchid, or a version 1 policy with approval.gate: command');
    return;
  }
  if (platform !== 'darwin') {
    refuse(a.at, 'Touch ID exists only on macOS: on this host the original refused every signature (or, before that, signed without asking); this refuses them (ssh.enabled: false) rather than sign without the approval asked for; use a version 1 policy with approval.gate: command for approval here');
    return;
  }
  if (a.biometricsOnly) r.warn(a.biometricsOnly, 'biometrics: the touchid gate also accepts the account password when Touch ID cannot be used (the original\'s biometrics-or-password)');
  defaults.approval = { gate: 'touchid', policy: a.scope, ttl: a.ttl, applies_to: ['ssh-agent'] };
  origins.set(['defaults', 'approval'], ['ssh', 'approval']);
  origins.set(['defaults', 'approval', 'gate'], a.at);
  origins.set(['defaults', 'approval', 'policy'], ['ssh', 'approval', a.at[2] === 'policy' ? 'scope' : 'policy']);
  origins.set(['defaults', 'approval', 'ttl'], ['ssh', 'approval', 'session_ttl']);
}

/**
 * A registries list as the original compared it: `https://`, `http://`, a
 * trailing `/`, `/v1`, `/v2` dropped. An entry that still has a path, or a
 * `*.` (the original had no wildcards: it was a name no client asks for),
 * matched nothing and is left out; hosts are lowercased (hosts have no
 * case; the original compared them as written).
 */
function registryList(r: Reader, value: unknown, at: KeyPath, to: KeyPath, origins: Origins): string[] | undefined {
  const list = r.strings(value, at);
  if (list === undefined) return undefined;
  const out: string[] = [];
  list.forEach((entry, i) => {
    let s = entry;
    for (const prefix of ['https://', 'http://']) if (s.startsWith(prefix)) s = s.slice(prefix.length);
    for (const suffix of ['/', '/v1', '/v2']) if (s.endsWith(suffix)) s = s.slice(0, -suffix.length);
    const where = [...at, i];
    if (s.includes('/') || s.startsWith('*.') || !REGISTRY_PATTERN_RE.test(s.toLowerCase())) {
      r.warn(where, `${JSON.stringify(entry)} names no registry host (the original compared it, as written, with the host a client asks for, and it matched none); left out`);
      return;
    }
    const host = s.toLowerCase();
    const notes: string[] = [];
    if (host !== entry) notes.push(`read as ${host}`);
    if (normalizeRegistry(host) === 'docker.io' && host !== 'index.docker.io') notes.push('Docker Hub, which clients ask for as index.docker.io: the original matched this name only when a client asked for it by this name');
    if (notes.length) r.warn(where, `${JSON.stringify(entry)}: ${notes.join('; ')}`);
    origins.set([...to, out.length], where);
    out.push(host);
  });
  origins.set(to, at);
  return out;
}

/**
 * Where the per-shed logs go for a policy that names the single log file of
 * earlier versions (`audit.path`, the original's `logging.path`): a
 * directory beside it, named after it without its extension.
 */
export function dirForLogPath(file: string): string {
  const stripped = file.replace(/\.(log|jsonl|json)$/, '');
  return stripped === file ? `${file}.d` : stripped;
}

/** The one-line notice: the file is in the original format, and what it is equivalent to. */
export function legacyNotice(file: string, doc: Plain): string {
  const flow = stringify(doc, { collectionStyle: 'flow', lineWidth: 0 }).replace(/\s*\n\s*/g, ' ').trim();
  return `notice: ${file} is in the original shed-extensions format; it is read as this version 1 policy, write it so to silence this notice: ${flow}`;
}
