/**
 * A shed's effective policy as the admin reads it: every value with where it
 * came from (built-in, `defaults`, the shed's own entry or `"*"`, and the
 * file:line it was written at), and a one-line summary for `policy list` and
 * `check`.
 */
import path from 'node:path';
import { stringify } from 'yaml';
import { BUILTIN_DEFAULTS, mergeSections, shedLayers, type EffectiveShed, type WrittenSections } from './effective.js';
import type { Policy } from './policy.js';
import { formatDuration } from './schema.js';
import { formatPath, type KeyPath } from './source.js';

type Plain = Record<string, unknown>;

function isMap(value: unknown): value is Plain {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Values that are durations (milliseconds in the effective policy, shown as `1h`). */
const DURATIONS = new Set(['aws.session_duration', 'aws.refresh_before', 'approval.ttl', 'approval.timeout']);
/** Maps shown as one value rather than key by key. */
const OPAQUE = new Set(['aws.session_policy']);

export interface ShownShed {
  effective: EffectiveShed;
  /** The most specific entry that admits it: `sheds.my-service`, `sheds."*"`, `servers.mini2.sheds.web`. */
  entry: string;
  /** The layers merged, most specific first (`servers.mini2.sheds.web`, `servers.mini2.defaults`, `sheds."*"`, `defaults`). */
  layers: string[];
  /** Origin of each value, by dotted path within the sections (`aws.role`). */
  origins: Map<string, string>;
}

/**
 * The effective policy of `shed` (of the named `server`, when given) and
 * each value's origin; undefined when the policy does not admit it.
 * Origins follow the merge exactly: maps merge key by key, so each key
 * keeps the layer that last set it; a list or scalar is the layer that
 * replaced it.
 */
export function showShed(policy: Policy, shed: string, server?: string): ShownShed | undefined {
  const effective = policy.resolve(shed, server);
  const found = shedLayers(policy.doc, shed, server);
  if (!effective || !found) return undefined;
  const origins = new Map<string, string>();
  const where = (keyPath: KeyPath): string => {
    const at = policy.locate(keyPath);
    if (!at || at.line === undefined) return '';
    const main = policy.files[0];
    const file = main ? path.relative(path.dirname(main), at.file) || path.basename(at.file) : at.file;
    return ` (${file}:${at.line})`;
  };
  const overlay = (over: unknown, base: unknown, prefix: string[], label: (p: string[]) => string) => {
    if (!isMap(over)) return;
    for (const [key, value] of Object.entries(over)) {
      if (value === undefined) continue;
      const p = [...prefix, key];
      origins.set(p.join('.'), label(p));
      const below = isMap(base) ? base[key] : undefined;
      if (isMap(value) && isMap(below)) overlay(value, below, p, label);
      else if (isMap(value)) for (const sub of leafPaths(value, p)) origins.set(sub.join('.'), label(p));
    }
  };
  overlay(BUILTIN_DEFAULTS, undefined, [], () => 'built-in');
  let below: WrittenSections = BUILTIN_DEFAULTS;
  for (const layer of found.layers) {
    const name = formatPath(layer.at);
    overlay(layer.sections, below, [], (p) => `${name}${where([...layer.at, ...p])}`);
    below = mergeSections<WrittenSections>(below, layer.sections);
  }
  origins.set('aws.tags.shed', 'set by the broker: the shed\'s name');
  const entries = found.layers.filter((l) => l.at[l.at.length - 2] === 'sheds');
  return { effective, entry: formatPath(entries[entries.length - 1]!.at), layers: found.layers.map((l) => formatPath(l.at)).reverse(), origins };
}

function leafPaths(value: Plain, prefix: string[]): string[][] {
  return Object.entries(value).flatMap(([k, v]) => (isMap(v) ? leafPaths(v, [...prefix, k]) : [[...prefix, k]]));
}

/** The effective policy as YAML, each value commented with its origin. */
export function renderShed(policy: Policy, shed: string, server?: string): string | undefined {
  const shown = showShed(policy, shed, server);
  if (!shown) return undefined;
  const { effective, origins } = shown;
  const rows: Array<[string, string]> = [];
  const emit = (value: unknown, p: string[], depth: number) => {
    const dotted = p.join('.');
    const indent = '  '.repeat(depth);
    const key = p[p.length - 1]!;
    if (isMap(value) && !OPAQUE.has(dotted) && Object.keys(value).length > 0) {
      rows.push([`${indent}${yamlKey(key)}:`, '']);
      for (const [k, v] of Object.entries(value)) if (v !== undefined) emit(v, [...p, k], depth + 1);
      return;
    }
    const shownValue = DURATIONS.has(dotted) && typeof value === 'number' ? formatDuration(value) : value;
    rows.push([`${indent}${yamlKey(key)}: ${flow(shownValue)}`, originOf(origins, p)]);
  };
  for (const section of ['ssh', 'aws', 'docker', 'git', 'approval', 'limits'] as const) emit(effective[section], [section], 0);
  const width = Math.min(60, Math.max(...rows.map(([text]) => text.length)));
  const head = server === undefined || !policy.serverScopes().includes(server)
    ? [`# shed ${shed}${server === undefined ? '' : ` of server ${server} (no servers.${server} section: the global policy)`}: ${effective.matched === 'named' ? `its own entry, ${shown.entry}` : `no entry of its own: the "*" entry`} merged over defaults`]
    : [`# shed ${shed} of server ${server}: ${effective.matched === 'named' ? 'its own entry' : 'no entry of its own: the "*" entry'}; layers, most specific first: ${shown.layers.join(', ')}`];
  head.push(`# ${describeSocket(policy, shed, server)}`);
  return `${head.join('\n')}\n${rows.map(([text, origin]) => (origin ? `${text.padEnd(width)}  # ${origin}` : text)).join('\n')}\n`;
}

function originOf(origins: Map<string, string>, p: string[]): string {
  for (let n = p.length; n > 0; n--) {
    const o = origins.get(p.slice(0, n).join('.'));
    if (o) return o;
  }
  return 'built-in';
}

function yamlKey(key: string): string {
  return /^[A-Za-z0-9_-]+$/.test(key) ? key : JSON.stringify(key);
}

function flow(value: unknown): string {
  return stringify(value, { collectionStyle: 'flow', lineWidth: 0 }).replace(/\s*\n\s*/g, ' ').trim();
}

/** Where the shed's guests connect on this host. */
export function describeSocket(policy: Policy, shed: string, server?: string): string {
  if (server !== undefined) {
    const url = policy.servers().find((s) => s.name === server)?.url;
    return `shed-server ${server} (${url ?? (policy.discovery() ? 'found by discovery' : 'not configured')})`;
  }
  const direct = policy.direct;
  const named = policy.namedSheds().includes(shed);
  const parts: string[] = [];
  if (direct.enabled && named) parts.push(`direct socket ${path.join(direct.socketsDir, shed, 'bus.sock')}`);
  else if (direct.enabled) parts.push('no direct socket (only sheds named in the policy get one)');
  if (policy.server) parts.push(`shed-server ${policy.server.url}`);
  return parts.join('; ') || 'no transport';
}

export interface ShedSummary {
  shed: string;
  role: string;
  ssh: string;
  registries: string;
  /** git.allowed in short, and how many token commands. */
  git: string;
  approval: string;
  socket: string;
}

/** One shed's policy in a few words per namespace. */
export function summarizeShed(policy: Policy, shed: string, server?: string): ShedSummary | undefined {
  const e = policy.resolve(shed, server);
  if (!e) return undefined;
  const role = !e.aws.enabled ? 'disabled' : e.aws.mode === 'passthrough' ? `passthrough:${e.aws.source_profile}` : (e.aws.role ?? '(none)');
  const keys = e.ssh.allowed_keys.length ? `${e.ssh.allowed_keys.length} key${e.ssh.allowed_keys.length === 1 ? '' : 's'}` : 'every key';
  const hosts = e.ssh.allowed_hosts === undefined ? '' : `, ${e.ssh.allowed_hosts.length} allowed host${e.ssh.allowed_hosts.length === 1 ? '' : 's'}`;
  const ssh = e.ssh.enabled ? `${e.ssh.mode}, ${keys}${hosts}` : 'disabled';
  const registries = !e.docker.enabled ? 'disabled' : e.docker.allow_all ? `all${e.docker.registries.length ? ` (${e.docker.registries.join(',')})` : ''}` : (e.docker.registries.join(',') || '(none)');
  const sources = Object.keys(e.git.sources).length;
  const git = !e.git.enabled ? 'disabled' : `${e.git.allowed.join(',') || '(none)'}${sources ? ` (${sources} token command${sources === 1 ? '' : 's'})` : ''}`;
  const a = e.approval;
  const guarded = a.applies_to.map((ns) => ({ 'ssh-agent': 'ssh', 'aws-credentials': 'aws', 'git-credentials': 'git' })[ns]);
  const approval = a.gate === 'none' ? 'none' : `${a.gate} ${a.policy}${a.policy === 'per-request' ? '' : ` ${formatDuration(a.ttl)}`}${guarded.join() === 'ssh' ? '' : ` (${guarded.join(', ')})`}`;
  const direct = policy.direct;
  const socket = server !== undefined ? `shed-server ${server}` : shed === '*'
    ? (policy.server ? 'shed-server only' : '-')
    : direct.enabled ? path.join(direct.socketsDir, shed, 'bus.sock') : 'shed-server only';
  return { shed: shed === '*' ? '"*"' : shed, role, ssh, registries, git, approval, socket };
}

/** Every shed the policy names, and `"*"` last. */
export function listedSheds(policy: Policy): string[] {
  return policy.listedSheds();
}

/** Every shed named under `servers.<server>.sheds` or globally, and `"*"` last when either level has one. */
export function listedShedsOf(policy: Policy, server: string): string[] {
  return policy.listedSheds(server);
}
