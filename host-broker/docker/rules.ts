/**
 * Registry names and the per-shed allowlist, as pure functions: the handler
 * and `shed-host-agent explain` call the same ones, so a dry run says exactly
 * what the broker would do.
 */
import type { Decision } from '../handler.js';
import type { EffectiveDocker } from '../policy/effective.js';

/** Docker Hub's one registry, whatever name a client gives it. */
export const DOCKER_HUB = 'docker.io';
/** The server address Docker itself stores and asks helpers for, for Docker Hub. */
export const DOCKER_HUB_SERVER_ADDRESS = 'https://index.docker.io/v1/';

const HUB_ALIASES = new Set(['docker.io', 'index.docker.io', 'registry-1.docker.io']);

/**
 * The registry a server URL names, the way Docker's `ConvertToHostname` sees
 * it: scheme and everything from the first `/` (so `/v1/`, `/v2/`, a
 * repository path) dropped, the host lowercased, the port kept; Docker Hub's
 * names (`https://index.docker.io/v1/`, `index.docker.io`,
 * `registry-1.docker.io`, `docker.io`) all become `docker.io`.
 *
 * Never throws; the result may still be no valid host (check with
 * `isRegistryHost`).
 */
export function normalizeRegistry(input: string): string {
  let s = input.trim();
  const scheme = /^[a-z][a-z0-9+.-]*:\/\//i.exec(s);
  if (scheme) s = s.slice(scheme[0].length);
  const slash = s.indexOf('/');
  if (slash >= 0) s = s.slice(0, slash);
  s = s.toLowerCase();
  return HUB_ALIASES.has(s) ? DOCKER_HUB : s;
}

const LABEL = '[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?';
/** `host`, `host:port` or `[ipv6]:port`, lowercase, as `normalizeRegistry` leaves it. */
const HOST_RE = new RegExp(`^(?:${LABEL}(?:\\.${LABEL})*|\\[[0-9a-f:.]+\\])(?::(\\d{1,5}))?$`);

/** True when `registry` (already normalized) is a plain host with an optional port. */
export function isRegistryHost(registry: string): boolean {
  const m = HOST_RE.exec(registry);
  if (!m || registry.length > 261) return false;
  return m[1] === undefined || Number(m[1]) <= 65535;
}

/**
 * The server address to give a host-side helper for `registry`: what Docker
 * itself stores credentials under (`docker login` keeps Docker Hub's as
 * `https://index.docker.io/v1/` and every other registry's as its host).
 */
export function serverAddressFor(registry: string): string {
  return registry === DOCKER_HUB ? DOCKER_HUB_SERVER_ADDRESS : registry;
}

function splitPort(hostPort: string): [string, string] {
  const m = /^(.*?)(:\d+)?$/.exec(hostPort)!;
  return [m[1] ?? '', m[2] ?? ''];
}

/**
 * Whether one `registries` entry covers `registry` (normalized). An exact
 * entry is normalized too (`index.docker.io` in a policy means Docker Hub).
 * `*.example.com` covers any name below example.com (`a.example.com`,
 * `a.b.example.com`) but not example.com itself. Ports must match: an entry
 * without a port covers only the host without one.
 */
export function patternMatches(pattern: string, registry: string): boolean {
  if (!pattern.startsWith('*.')) return normalizeRegistry(pattern) === registry;
  const [suffixHost, suffixPort] = splitPort(pattern.slice(1).toLowerCase());
  const [host, port] = splitPort(registry);
  return port === suffixPort && host.length > suffixHost.length && host.endsWith(suffixHost);
}

/** Whether the shed's `docker:` policy lets it have credentials for `registry` (normalized). */
export function registryDecision(docker: EffectiveDocker, registry: string): Decision {
  if (!docker.enabled) {
    return { allowed: false, code: 'NAMESPACE_DISABLED', rule: 'docker.enabled is false' };
  }
  if (!isRegistryHost(registry)) {
    return { allowed: false, code: 'INVALID_REQUEST', rule: `${JSON.stringify(registry.slice(0, 100))} is not a registry host` };
  }
  const entry = docker.registries.find((p) => patternMatches(p, registry));
  if (entry !== undefined) {
    return { allowed: true, rule: entry === registry ? `registries lists ${entry}` : `registries entry ${entry} covers ${registry}` };
  }
  if (docker.allow_all) {
    return { allowed: true, rule: 'allow_all is true' };
  }
  return {
    allowed: false,
    code: 'REGISTRY_NOT_ALLOWED',
    rule: docker.registries.length ? `registries (${docker.registries.join(', ')}) does not cover ${registry}` : `registries is empty and allow_all is false`,
  };
}
