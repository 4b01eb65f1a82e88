/**
 * What a shed may have git credentials for (`git.allowed`) and where they
 * come from (`git.sources`), as pure functions: the handler and
 * `shed-host-agent explain` call the same ones, so a dry run says exactly
 * what the broker would do.
 *
 * An allowed entry is `[http://|https://]host[:port][/path glob]`:
 * - without a scheme it means https; plain http is served only for an entry
 *   written `http://…` (the token then crosses the network unencrypted);
 * - the host is compared without case, `*.example.com` covers any name below
 *   example.com (not example.com itself); a port must match (the protocol's
 *   default port counts as none: `github.com:443` is `github.com`);
 * - a path glob covers the repositories it matches and everything below
 *   them (`acme/app` covers `acme/app.git` and `acme/app.git/info/lfs`); `*`
 *   matches within one path segment, `**` across segments; a trailing `.git`
 *   is ignored on both sides. An entry with a path needs the request's path
 *   (`credential.useHttpPath=true` in the guest's git, which install-guest sets).
 */
import { CommonCode, GitCode } from '../../protocol/codes.js';
import type { Decision } from '../handler.js';
import type { EffectiveGit } from '../policy/effective.js';
import { GIT_ALLOWED_RE, GIT_HOST_RE } from '../policy/schema.js';

export type GitProtocol = 'https' | 'http';

/** A request as the policy judges it: protocol lowercased, host lowercased without its default port, path cleaned. */
export interface GitTarget {
  protocol: string;
  host: string;
  /** Segments of the path, without empty ones; undefined when the request had none. */
  path?: string[];
}

export interface AllowedEntry {
  /** As written in the policy. */
  text: string;
  scheme: GitProtocol;
  /** Lowercase, possibly `*.example.com`, default port of the scheme removed. */
  host: string;
  /** Path glob segments; undefined for a host-only entry. */
  path?: string[];
}

const DEFAULT_PORT: Record<GitProtocol, string> = { https: '443', http: '80' };

/** `host:port` → `host` when port is the protocol's default. */
function withoutDefaultPort(host: string, protocol: string): string {
  const port = DEFAULT_PORT[protocol as GitProtocol];
  return port && host.endsWith(`:${port}`) ? host.slice(0, -(port.length + 1)) : host;
}

/** A host as git sends it, normalized for comparison; undefined when it is not a host (`name`, `name:port`, `[v6]:port`). */
export function normalizeHost(host: string, protocol: string): string | undefined {
  if (!GIT_HOST_RE.test(host)) return undefined;
  const port = /:(\d+)$/.exec(host)?.[1];
  if (port !== undefined && (Number(port) < 1 || Number(port) > 65_535)) return undefined;
  return withoutDefaultPort(host.toLowerCase(), protocol);
}

/**
 * A request path (`acme/app.git`) as segments, or a problem. Refused: `.`
 * and `..` segments, control characters, backslashes and `%` (no server
 * path means them, and they would make a glob cover what it should not).
 */
export function pathSegments(path: string): { segments: string[] } | { problem: string } {
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x1f\x7f\\]/.test(path)) return { problem: 'the path holds control characters or backslashes' };
  // git decodes the URL before it asks: a % left in the path is an encoding the policy cannot judge the same way a server would.
  if (path.includes('%')) return { problem: 'the path holds a % (git sends it decoded; a repository path has none)' };
  const segments = path.split('/').filter((s) => s !== '');
  if (segments.some((s) => s === '.' || s === '..')) return { problem: 'the path holds . or .. segments' };
  return { segments };
}

/** The request as the policy sees it, or why it cannot be judged (INVALID_REQUEST). */
export function gitTarget(request: { protocol: string; host: string; path?: string }): { target: GitTarget } | { problem: string } {
  const protocol = request.protocol.toLowerCase();
  const host = normalizeHost(request.host, protocol);
  if (host === undefined) return { problem: `${JSON.stringify(request.host.slice(0, 100))} is not a host (like github.com or git.example.com:8443)` };
  if (request.path === undefined) return { target: { protocol, host } };
  const path = pathSegments(request.path);
  if ('problem' in path) return path;
  return { target: { protocol, host, path: path.segments.length ? path.segments : undefined } };
}

/** `https://github.com/acme/app.git`: how messages and audit lines name a request. */
export function describeTarget(target: GitTarget): string {
  return `${target.protocol}://${target.host}${target.path ? `/${target.path.join('/')}` : ''}`;
}

/** A policy entry parsed (the schema has checked its form). */
export function parseAllowed(text: string): AllowedEntry | undefined {
  const m = GIT_ALLOWED_RE.exec(text);
  if (!m) return undefined;
  const scheme = (m[1]?.toLowerCase() ?? 'https') as GitProtocol;
  const host = withoutDefaultPort(`${m[2]!.toLowerCase()}${m[3] !== undefined ? `:${m[3]}` : ''}`, scheme);
  const path = (m[4] ?? '').split('/').filter(Boolean);
  return { text, scheme, host, path: path.length ? path : undefined };
}

function splitPort(hostPort: string): [string, string] {
  const m = /^(.*?)(:\d+)?$/.exec(hostPort)!;
  return [m[1] ?? '', m[2] ?? ''];
}

/** Whether an entry's host (maybe `*.example.com`) covers `host` (both normalized). */
export function hostCovers(pattern: string, host: string): boolean {
  if (!pattern.startsWith('*.')) return pattern === host;
  const [suffix, suffixPort] = splitPort(pattern.slice(1));
  const [name, port] = splitPort(host);
  return port === suffixPort && name.length > suffix.length && name.endsWith(suffix);
}

const stripGit = (segment: string) => (segment.endsWith('.git') && segment.length > 4 ? segment.slice(0, -4) : segment);

function globRegExp(segments: string[]): RegExp {
  const text = segments.map((seg, i) => (i === segments.length - 1 ? stripGit(seg) : seg)).join('/');
  const source = text.split(/(\*\*|\*)/).map((part) => (part === '**' ? '.*' : part === '*' ? '[^/]*' : part.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'))).join('');
  return new RegExp(`^${source}$`);
}

/** Whether a path glob covers the request path: the path, or one of its leading parts, matches it. */
export function pathCovers(pattern: string[], path: string[]): boolean {
  const re = globRegExp(pattern);
  for (let k = 1; k <= path.length; k++) {
    const lead = path.slice(0, k);
    lead[k - 1] = stripGit(lead[k - 1]!);
    if (re.test(lead.join('/'))) return true;
  }
  return false;
}

function listed(entries: string[], max = 8): string {
  return entries.length > max ? `${entries.slice(0, max).join(', ')}, … (${entries.length} in all)` : entries.join(', ');
}

/** Whether the shed's `git:` policy lets it have credentials for `target`. */
export function gitDecision(git: EffectiveGit, target: GitTarget): Decision & { entry?: string } {
  if (!git.enabled) return { allowed: false, code: CommonCode.NAMESPACE_DISABLED, rule: 'git.enabled is false' };
  const url = describeTarget(target);
  if (target.protocol !== 'https' && target.protocol !== 'http') {
    const ssh = target.protocol === 'ssh' ? ' (git over ssh signs through the ssh-agent namespace instead)' : '';
    return { allowed: false, code: GitCode.GIT_HOST_NOT_ALLOWED, rule: `protocol ${JSON.stringify(target.protocol.slice(0, 32))} is never served: only https, and http for a host git.allowed names with http://${ssh}` };
  }
  if (git.allowed.length === 0) return { allowed: false, code: GitCode.GIT_HOST_NOT_ALLOWED, rule: 'git.allowed is empty' };
  const entries = git.allowed.map(parseAllowed).filter((e): e is AllowedEntry => e !== undefined);
  // Each entry's host with its own scheme's default port removed, so `https://h` and a request for `http://h:443` meet.
  const sameHost = entries.filter((e) => hostCovers(e.host, target.host) || hostCovers(e.host, withoutDefaultPort(target.host, e.scheme)));
  const covering = sameHost.filter((e) => e.path === undefined || (target.path !== undefined && pathCovers(e.path, target.path)));
  const served = covering.find((e) => e.scheme === target.protocol);
  if (served) {
    return { allowed: true, rule: `git.allowed entry ${served.text} covers ${url}`, entry: served.text };
  }
  if (covering.length) {
    const names = listed(covering.map((e) => e.text));
    const rule = target.protocol === 'http'
      ? `plain http is refused for ${target.host}: git.allowed names it for https only (${names}); write the entry as http://… to allow http, which sends the token unencrypted`
      : `git.allowed names ${target.host} for plain http only (${names}); add an entry without http:// for https`;
    return { allowed: false, code: GitCode.GIT_HOST_NOT_ALLOWED, rule };
  }
  if (sameHost.length) {
    const globs = listed(sameHost.map((e) => e.text));
    const rule = target.path === undefined
      ? `the request names no repository path, and git.allowed covers only some paths on ${target.host} (${globs}); set credential.useHttpPath=true in the shed's git config (install-guest does)`
      : `git.allowed covers only ${globs} on ${target.host}, not ${target.path.join('/')}`;
    return { allowed: false, code: GitCode.GIT_HOST_NOT_ALLOWED, rule };
  }
  return { allowed: false, code: GitCode.GIT_HOST_NOT_ALLOWED, rule: `git.allowed (${listed(git.allowed)}) does not cover ${target.host}` };
}

export interface SourceChoice {
  /** The git.sources key as written. */
  key: string;
  command: string[];
  username?: string;
}

/** The `git.sources` entry for the request's host, if any: keys compare like hosts (no case, default port ignored). */
export function sourceFor(git: EffectiveGit, target: GitTarget): SourceChoice | undefined {
  for (const [key, source] of Object.entries(git.sources)) {
    if (normalizeHost(key, target.protocol) === target.host) return { key, command: source.command, username: source.username };
  }
  return undefined;
}

/** `https://github.com/acme/app.git` (what `explain --url` takes) as a request, or why not. */
export function parseGitUrl(url: string): { protocol: string; host: string; path?: string } | { problem: string } {
  const m = /^([a-z][a-z0-9+.-]*):\/\/(?:[^@/]*@)?([^/?#]+)([^?#]*)/i.exec(url.trim());
  if (!m) return { problem: `${JSON.stringify(url)} is not a URL like https://github.com/acme/app.git` };
  const path = m[3]!.replace(/^\/+/, '');
  return { protocol: m[1]!.toLowerCase(), host: m[2]!, path: path || undefined };
}
