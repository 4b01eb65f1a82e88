/**
 * The docker-credentials namespace: registry credentials from the host's own
 * Docker setup, for the registries the shed's policy allows. Read-only: the
 * guest can never store or erase anything on the host.
 *
 * Lookup for a registry, as Docker does it: its `credHelpers` helper, else the
 * `credsStore` helper, else the inline `auths` entry (a helper that has no
 * credentials for the registry also falls back to `auths`). The Docker config
 * is read fresh for every request.
 */
import os from 'node:os';
import { DockerCode } from '../../protocol/codes.js';
import { compiledOnceHot } from '../../protocol/compiled.js';
import { DockerGetRequest, type DockerGetResponse, type DockerListResponse, type DockerStatusResponse } from '../../protocol/docker-credentials.js';
import { describeIssues, OPERATIONS, type Payload } from '../../protocol/envelope.js';
import type { Logger } from '../../protocol/log.js';
import { BrokerError, unknownOperation, type NamespaceHandler, type RequestContext } from '../handler.js';
import { DockerConfigError, dockerConfigPath, helperFor, inlineAuthFor, readDockerConfig, type DockerConfig } from './config.js';
import { helperGet, helperList, HELPER_TIMEOUT_MS, type HelperOptions } from './helper-process.js';
import { isRegistryHost, normalizeRegistry, registryDecision, serverAddressFor } from './rules.js';

export interface DockerHandlerDeps {
  log: Logger;
  /** `DOCKER_CONFIG`, and the environment (PATH, GNUPGHOME, ...) helpers run with. Defaults to the broker's own. */
  env?: NodeJS.ProcessEnv;
  /** Where `~/.docker` is when neither the policy nor DOCKER_CONFIG says. */
  homedir?: string;
  /** How long a host helper may take; 5 s. */
  helperTimeoutMs?: number;
}

interface Found {
  username: string;
  secret: string;
  /** Where it came from, for the audit line: `credHelpers pass`, `credsStore pass`, `auths`. */
  source: string;
}

const NS = 'docker-credentials';
const getRequest = compiledOnceHot(DockerGetRequest);

export function createDockerHandler(deps: DockerHandlerDeps): NamespaceHandler {
  const env = deps.env ?? process.env;
  const home = deps.homedir ?? os.homedir();
  const timeoutMs = deps.helperTimeoutMs ?? HELPER_TIMEOUT_MS;

  const loadConfig = (ctx: RequestContext): DockerConfig => {
    const file = dockerConfigPath(ctx.policy.docker, env, home);
    let config: DockerConfig;
    try {
      config = readDockerConfig(file);
    } catch (err) {
      if (!(err instanceof DockerConfigError)) throw err;
      ctx.log.error(`shed ${ctx.shed}: ${err.message}`);
      throw new BrokerError('INTERNAL_ERROR', 'the host\'s Docker config cannot be read; see the shed-host-agent log on the host', { result: 'error', detail: 'docker config unreadable' });
    }
    for (const problem of config.problems) ctx.log.warn(`${file}: ${problem}`);
    return config;
  };

  const helperOptions = (ctx: RequestContext): HelperOptions => ({ env, log: ctx.log, timeoutMs, signal: ctx.signal });

  async function lookup(config: DockerConfig, registry: string, ctx: RequestContext): Promise<Found | undefined> {
    const store = helperFor(config, registry);
    if (store) {
      const answer = await helperGet(store.helper, serverAddressFor(registry), helperOptions(ctx));
      if (answer.found) return { username: answer.username, secret: answer.secret, source: `${store.via} ${store.helper}` };
    }
    const inline = inlineAuthFor(config, registry);
    if (inline) return { username: inline.username, secret: inline.secret, source: 'auths' };
    return undefined;
  }

  async function get(payload: Payload, ctx: RequestContext): Promise<DockerGetResponse> {
    const parsed = getRequest.safeParse(payload);
    if (!parsed.success) {
      throw new BrokerError('INVALID_REQUEST', `get needs {"server_url": "<registry>"}: ${describeIssues(parsed.error)}`);
    }
    const serverUrl = parsed.data.server_url;
    const registry = normalizeRegistry(serverUrl);
    const shown = isRegistryHost(registry) ? registry : JSON.stringify(registry.slice(0, 100));
    ctx.detail = shown;
    const decision = registryDecision(ctx.policy.docker, registry);
    if (!decision.allowed) {
      const code = decision.code ?? DockerCode.REGISTRY_NOT_ALLOWED;
      const message = code === DockerCode.REGISTRY_NOT_ALLOWED
        ? `registry ${shown} is not in shed ${ctx.shed}'s docker allowlist; add it to docker.registries in the host policy (public images still pull anonymously)`
        : code === 'INVALID_REQUEST'
          ? `${shown} is not a registry host; give a host like ghcr.io or registry.example.com:5000`
          : `docker-credentials is disabled for shed ${ctx.shed} by the host policy`;
      throw new BrokerError(code, message, { detail: `${shown}: ${decision.rule}` });
    }
    const config = loadConfig(ctx);
    const found = await lookup(config, registry, ctx);
    if (!found) {
      throw new BrokerError(DockerCode.CREDENTIALS_NOT_FOUND, `the host has no credentials for ${registry}; run \`docker login ${registry}\` on the host`, {
        result: 'error',
        detail: `${registry}: no credentials`,
      });
    }
    ctx.detail = `${registry} via ${found.source}`;
    return { server_url: serverUrl, username: found.username, secret: found.secret };
  }

  async function list(ctx: RequestContext): Promise<DockerListResponse> {
    const config = loadConfig(ctx);
    const docker = ctx.policy.docker;
    /** Normalized registry → [server URL as stored, username]. The first source to name a registry wins, in lookup order. */
    const byRegistry = new Map<string, [string, string]>();
    const add = (url: string, username: string) => {
      const registry = normalizeRegistry(url);
      if (byRegistry.has(registry) || !isRegistryHost(registry)) return;
      if (registryDecision(docker, registry).allowed) byRegistry.set(registry, [url, username]);
    };
    const helpers = new Set(config.credHelpers.values());
    if (config.credsStore) helpers.add(config.credsStore);
    for (const helper of helpers) {
      const entries = await helperList(helper, helperOptions(ctx));
      for (const [url, username] of Object.entries(entries)) {
        // Only what Docker would ask this helper for: its own registries, or any registry without one when it is the credsStore.
        if (helperFor(config, normalizeRegistry(url))?.helper === helper) add(url, username);
      }
    }
    for (const auth of config.auths) add(auth.serverUrl, auth.username);
    const registries: Record<string, string> = {};
    for (const [url, username] of byRegistry.values()) registries[url] = username;
    const names = [...byRegistry.keys()];
    ctx.detail = names.length ? names.join(',').slice(0, 500) : '(none)';
    return { registries };
  }

  function status(ctx: RequestContext): DockerStatusResponse {
    let connected: boolean;
    try {
      connected = readDockerConfig(dockerConfigPath(ctx.policy.docker, env, home)).exists;
    } catch {
      connected = false;
    }
    const docker = ctx.policy.docker;
    return { connected, allow_all: docker.allow_all, registry_count: docker.registries.length };
  }

  return {
    namespace: NS,
    operations: OPERATIONS[NS],
    async handle(operation, payload, ctx) {
      switch (operation) {
        case 'get':
          return get(payload, ctx);
        case 'list':
          return list(ctx);
        case 'status':
          return status(ctx);
        case 'store':
        case 'erase':
          throw new BrokerError(DockerCode.READ_ONLY, `the host broker is read-only: ${operation} is refused; log in or out on the host instead (\`docker login\` / \`docker logout\`)`, {
            detail: `${operation} refused`,
          });
        default:
          throw unknownOperation(NS, operation);
      }
    },
  };
}
