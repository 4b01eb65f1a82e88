/**
 * Per-shed resolution: a shed's own sections merged over `defaults` (maps
 * merge, lists replace), then the built-in defaults for what neither sets.
 * A shed not named in the policy gets the `"*"` entry, or nothing.
 */
import os from 'node:os';
import path from 'node:path';
import type { AllowedHost, PolicyDocument, ShedSections } from './schema.js';

export interface EffectiveSsh {
  enabled: boolean;
  mode: 'auto' | 'agent-forward' | 'local-keys';
  agent_socket?: string;
  keys: string[];
  allowed_keys: string[];
  allowed_hosts?: AllowedHost[];
  signing_namespaces?: string[];
}

export interface EffectiveAws {
  enabled: boolean;
  role?: string;
  source_profile: string;
  /** Milliseconds. */
  session_duration: number;
  /** Milliseconds. */
  refresh_before: number;
  region?: string;
  sts_endpoint?: string;
  external_id?: string;
  session_policy?: string | Record<string, unknown>;
  policy_arns: string[];
  source_identity?: string;
  tags: Record<string, string>;
}

export interface EffectiveDocker {
  enabled: boolean;
  registries: string[];
  allow_all: boolean;
  config_path?: string;
}

export interface EffectiveApproval {
  gate: 'none' | 'command' | 'touchid';
  policy: 'per-request' | 'per-session' | 'per-shed';
  /** Milliseconds. */
  ttl: number;
  /** Milliseconds. */
  timeout: number;
  command?: string[];
  applies_to: Array<'ssh-agent' | 'aws-credentials'>;
}

export interface Bucket {
  per_minute: number;
  burst: number;
}

export interface EffectiveLimits {
  max_concurrent: number;
  max_connections: number;
  ssh: Bucket;
  aws: Bucket;
  docker: Bucket;
}

export interface EffectiveShed {
  name: string;
  /** How the shed matched: its own entry, or `"*"`. */
  matched: 'named' | 'wildcard';
  ssh: EffectiveSsh;
  aws: EffectiveAws;
  docker: EffectiveDocker;
  approval: EffectiveApproval;
  limits: EffectiveLimits;
}

/** What applies where neither `defaults` nor the shed says otherwise. */
export const BUILTIN_DEFAULTS = {
  ssh: { enabled: true, mode: 'auto', keys: [], allowed_keys: [] },
  aws: { enabled: true, source_profile: 'default', session_duration: 3_600_000, refresh_before: 300_000, policy_arns: [], tags: {} },
  docker: { enabled: true, registries: [], allow_all: false },
  approval: { gate: 'none', policy: 'per-shed', ttl: 4 * 3_600_000, timeout: 25_000, applies_to: ['ssh-agent'] },
  limits: {
    max_concurrent: 16,
    max_connections: 64,
    ssh: { per_minute: 600, burst: 60 },
    aws: { per_minute: 120, burst: 30 },
    docker: { per_minute: 600, burst: 60 },
  },
} as const;

type Plain = Record<string, unknown>;

function isMap(value: unknown): value is Plain {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Maps merge key by key; lists and scalars in `over` replace those in `base`. */
export function mergeSections<T>(base: T, over: unknown): T {
  if (over === undefined) return base;
  if (!isMap(base) || !isMap(over)) return over as T;
  const out: Plain = { ...base };
  for (const [key, value] of Object.entries(over)) {
    if (value === undefined) continue;
    out[key] = mergeSections(out[key], value);
  }
  return out as T;
}

export function expandHome(p: string): string {
  if (p === '~') return os.homedir();
  if (p.startsWith('~/')) return path.join(os.homedir(), p.slice(2));
  return p;
}

function fillBuckets(limits: Plain): EffectiveLimits {
  const out = { ...limits } as Plain;
  for (const ns of ['ssh', 'aws', 'docker'] as const) {
    const b = out[ns] as { per_minute: number; burst?: number };
    out[ns] = { per_minute: b.per_minute, burst: b.burst ?? Math.max(1, Math.ceil(b.per_minute / 10)) };
  }
  return out as unknown as EffectiveLimits;
}

/** The sections a shed ends up with, or undefined when the policy does not admit it. */
export function resolveShed(doc: PolicyDocument, name: string): EffectiveShed | undefined {
  const sheds = doc.sheds ?? {};
  const hasOwn = name !== '*' && Object.hasOwn(sheds, name);
  if (!hasOwn && !Object.hasOwn(sheds, '*')) return undefined;
  const entry: ShedSections = sheds[hasOwn ? name : '*'] ?? {};
  const merged = mergeSections(mergeSections(BUILTIN_DEFAULTS as unknown as Plain, doc.defaults ?? {}), entry) as Plain;
  const ssh = merged.ssh as EffectiveSsh;
  const aws = merged.aws as EffectiveAws;
  return {
    name,
    matched: hasOwn ? 'named' : 'wildcard',
    ssh: { ...ssh, keys: ssh.keys.map(expandHome), agent_socket: ssh.agent_socket && expandHome(ssh.agent_socket) },
    aws: { ...aws, tags: { shed: name, ...aws.tags } },
    docker: merged.docker as EffectiveDocker,
    approval: merged.approval as EffectiveApproval,
    limits: fillBuckets(merged.limits as Plain),
  };
}

/** The policy section that governs each namespace. */
export const SECTION_OF = {
  'ssh-agent': 'ssh',
  'aws-credentials': 'aws',
  'docker-credentials': 'docker',
} as const;
