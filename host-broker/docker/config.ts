/**
 * The host's own Docker client configuration (`config.json`), read the way
 * Docker reads it: `credHelpers` (registry → helper), `credsStore` (the
 * default helper) and inline `auths` (base64 `user:pass`, or an
 * `identitytoken`). Read fresh on every request, so a `docker login` on the
 * host takes effect at once.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expandHome, type EffectiveDocker } from '../policy/effective.js';
import { normalizeRegistry, serverAddressFor } from './rules.js';

/** Docker's username for a credential that is an identity token (the helper protocol's convention). */
export const IDENTITY_TOKEN_USERNAME = '<token>';

/** A helper name is the suffix of `docker-credential-<name>`: no path, no shell. */
const HELPER_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export interface InlineAuth {
  /** The key as written in `auths`. */
  serverUrl: string;
  username: string;
  secret: string;
}

export interface DockerConfig {
  path: string;
  /** False when the file does not exist (no credentials at all, not an error). */
  exists: boolean;
  credsStore?: string;
  /** Normalized registry → helper name. */
  credHelpers: Map<string, string>;
  auths: InlineAuth[];
  /** Entries skipped as malformed: for the host log (keys and reasons only). */
  problems: string[];
}

/** The config file is there but cannot be used; the message names the file and the fix. */
export class DockerConfigError extends Error {
  override readonly name = 'DockerConfigError';
}

/** `config_path` from the policy, else `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`. */
export function dockerConfigPath(docker: Pick<EffectiveDocker, 'config_path'>, env: NodeJS.ProcessEnv, home: string = os.homedir()): string {
  if (docker.config_path) return path.resolve(expandHome(docker.config_path));
  if (env.DOCKER_CONFIG) return path.join(path.resolve(expandHome(env.DOCKER_CONFIG)), 'config.json');
  return path.join(home, '.docker', 'config.json');
}

function isMap(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

export function isHelperName(name: string): boolean {
  return HELPER_NAME_RE.test(name);
}

/** Read and interpret the config file. A missing file is an empty config; a broken one throws DockerConfigError. */
export function readDockerConfig(file: string): DockerConfig {
  const config: DockerConfig = { path: file, exists: false, credHelpers: new Map(), auths: [], problems: [] };
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return config;
    throw new DockerConfigError(`cannot read the Docker config ${file} (${code ?? (err as Error).message}); check its permissions for the user running shed-host-agent`);
  }
  config.exists = true;
  let json: unknown;
  try {
    json = text.trim() === '' ? {} : JSON.parse(text);
  } catch {
    throw new DockerConfigError(`the Docker config ${file} is not valid JSON; fix it (or \`docker login\` again) on the host`);
  }
  if (!isMap(json)) throw new DockerConfigError(`the Docker config ${file} is not a JSON object; fix it on the host`);

  if (json.credsStore !== undefined && json.credsStore !== '') {
    if (typeof json.credsStore === 'string' && isHelperName(json.credsStore)) config.credsStore = json.credsStore;
    else config.problems.push('credsStore is not a helper name (letters, digits, ".", "_", "-"); ignored');
  }
  if (isMap(json.credHelpers)) {
    for (const [registry, helper] of Object.entries(json.credHelpers)) {
      if (typeof helper === 'string' && isHelperName(helper)) config.credHelpers.set(normalizeRegistry(registry), helper);
      else config.problems.push(`credHelpers[${JSON.stringify(registry.slice(0, 100))}] is not a helper name; ignored`);
    }
  }
  if (isMap(json.auths)) {
    for (const [serverUrl, entry] of Object.entries(json.auths)) {
      if (!isMap(entry)) continue;
      const auth = inlineAuth(serverUrl, entry);
      if (typeof auth === 'string') config.problems.push(`auths[${JSON.stringify(serverUrl.slice(0, 100))}]: ${auth}; ignored`);
      else if (auth) config.auths.push(auth);
    }
  }
  return config;
}

/** One `auths` entry: the credential, undefined for an empty placeholder, or why it is unusable. */
function inlineAuth(serverUrl: string, entry: Record<string, unknown>): InlineAuth | string | undefined {
  if (typeof entry.identitytoken === 'string' && entry.identitytoken !== '') {
    return { serverUrl, username: IDENTITY_TOKEN_USERNAME, secret: entry.identitytoken };
  }
  if (typeof entry.auth === 'string' && entry.auth !== '') {
    const decoded = Buffer.from(entry.auth, 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    if (colon <= 0) return '"auth" is not base64 of user:password';
    return { serverUrl, username: decoded.slice(0, colon), secret: decoded.slice(colon + 1) };
  }
  if (typeof entry.username === 'string' && entry.username !== '' && typeof entry.password === 'string') {
    return { serverUrl, username: entry.username, secret: entry.password };
  }
  return undefined;
}

/** The helper Docker would ask for `registry` (normalized): its `credHelpers` entry, else `credsStore`. */
export function helperFor(config: DockerConfig, registry: string): { helper: string; via: 'credHelpers' | 'credsStore' } | undefined {
  const own = config.credHelpers.get(registry);
  if (own) return { helper: own, via: 'credHelpers' };
  if (config.credsStore) return { helper: config.credsStore, via: 'credsStore' };
  return undefined;
}

/** The inline credential for `registry` (normalized): the key Docker writes first, then any key that names the same registry. */
export function inlineAuthFor(config: DockerConfig, registry: string): InlineAuth | undefined {
  const exact = serverAddressFor(registry);
  return config.auths.find((a) => a.serverUrl === exact) ?? config.auths.find((a) => normalizeRegistry(a.serverUrl) === registry);
}
