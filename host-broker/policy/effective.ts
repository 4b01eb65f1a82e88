/**
 * Per-shed resolution: a shed's own sections merged over `defaults` (maps
 * merge, lists replace), then the built-in defaults for what neither sets.
 * A shed not named in the policy gets the `"*"` entry, or nothing.
 */
import os from 'node:os';
import path from 'node:path';
import { shedKey } from '../origin.js';
import type { z } from 'zod';
import type { ApprovalSection, AwsSection, BucketSection, DockerSection, GitSection, LimitsSection, PolicyDocument, ShedSections, SshSection } from './schema.js';

/*
 * Every effective type below is the schema's own output type with the keys
 * that have a built-in default made required: a key is written once, in
 * schema.ts, and (when it has a default) once more in BUILTIN_DEFAULTS,
 * which the compiler checks against the schema.
 */

/** Flattens an intersection for readable hover types and error messages. */
type Simplify<T> = { [K in keyof T]: T[K] } & {};

/** `T` with the keys of `D` present and defined (the built-in values fill them). */
type Filled<T, D> = Simplify<Omit<T, keyof D> & { [K in keyof D & keyof T]-?: Exclude<T[K], undefined> }>;

/** A section as the schema outputs it (every key optional). */
type Written<S extends z.ZodType> = NonNullable<z.output<S>>;

/** Every key optional, all the way down (lists and opaque values are replaced whole). */
export type DeepPartial<T> = T extends readonly unknown[] ? T : T extends object ? { [K in keyof T]?: DeepPartial<T[K]> } : T;

const SSH_DEFAULTS = { enabled: true, mode: 'auto', keys: [], allowed_keys: [] } satisfies Written<typeof SshSection>;
const AWS_DEFAULTS = {
  enabled: true,
  mode: 'assume-role',
  source_profile: 'default',
  session_duration: 3_600_000,
  refresh_before: 300_000,
  policy_arns: [],
  tags: {},
} satisfies Written<typeof AwsSection>;
const DOCKER_DEFAULTS = { enabled: true, registries: [], allow_all: false } satisfies Written<typeof DockerSection>;
const GIT_DEFAULTS = { enabled: true, allowed: [], sources: {} } satisfies Written<typeof GitSection>;
const APPROVAL_DEFAULTS = { gate: 'none', policy: 'per-shed', ttl: 4 * 3_600_000, timeout: 25_000, applies_to: ['ssh-agent'] } satisfies Written<typeof ApprovalSection>;
const LIMITS_DEFAULTS = {
  max_concurrent: 16,
  max_connections: 64,
  ssh: { per_minute: 600, burst: 60 },
  aws: { per_minute: 120, burst: 30 },
  docker: { per_minute: 600, burst: 60 },
  git: { per_minute: 600, burst: 60 },
} satisfies Written<typeof LimitsSection>;

export type EffectiveSsh = Filled<Written<typeof SshSection>, typeof SSH_DEFAULTS>;
export type EffectiveAws = Filled<Written<typeof AwsSection>, typeof AWS_DEFAULTS>;
export type EffectiveDocker = Filled<Written<typeof DockerSection>, typeof DOCKER_DEFAULTS>;
export type EffectiveGit = Filled<Written<typeof GitSection>, typeof GIT_DEFAULTS>;
export type EffectiveApproval = Filled<Written<typeof ApprovalSection>, typeof APPROVAL_DEFAULTS>;
/** A token bucket with its burst worked out. */
export type Bucket = Required<Written<typeof BucketSection>>;
export type EffectiveLimits = Simplify<Omit<Filled<Written<typeof LimitsSection>, typeof LIMITS_DEFAULTS>, 'ssh' | 'aws' | 'docker' | 'git'> & { ssh: Bucket; aws: Bucket; docker: Bucket; git: Bucket }>;

/** The sections after merging, before the finishing touches (buckets' bursts, paths, the shed's tag). */
type MergedSections = {
  ssh: EffectiveSsh;
  aws: EffectiveAws;
  docker: EffectiveDocker;
  git: EffectiveGit;
  approval: EffectiveApproval;
  limits: Filled<Written<typeof LimitsSection>, typeof LIMITS_DEFAULTS>;
};

/** One section as written in the policy (`defaults`, a shed's entry, a server's layer). */
export type WrittenSections = Written<typeof ShedSections>;

export interface EffectiveShed {
  name: string;
  /** How the shed matched: its own entry, or `"*"`. */
  matched: 'named' | 'wildcard';
  ssh: EffectiveSsh;
  aws: EffectiveAws;
  docker: EffectiveDocker;
  git: EffectiveGit;
  approval: EffectiveApproval;
  limits: EffectiveLimits;
}

/** What applies where neither `defaults` nor the shed says otherwise. */
export const BUILTIN_DEFAULTS: Readonly<MergedSections> = Object.freeze({
  ssh: SSH_DEFAULTS,
  aws: AWS_DEFAULTS,
  docker: DOCKER_DEFAULTS,
  git: GIT_DEFAULTS,
  approval: APPROVAL_DEFAULTS,
  limits: LIMITS_DEFAULTS,
});

function isMap(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * Maps merge key by key; lists and scalars in `over` replace those in
 * `base`; an undefined or null `over` (a key left out, or `name:` with
 * nothing) changes nothing.
 */
export function mergeSections<T>(base: T, over: DeepPartial<T> | null | undefined): T {
  if (over === undefined || over === null) return base;
  if (!isMap(base) || !isMap(over)) return over as T;
  const out: Record<string, unknown> = { ...base };
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

function fillBucket(b: Written<typeof BucketSection>): Bucket {
  return { per_minute: b.per_minute, burst: b.burst ?? Math.max(1, Math.ceil(b.per_minute / 10)) };
}

/** The entry of `sheds` that applies to `name`: its own, else `"*"`, else none. */
export function pickEntry(sheds: Record<string, WrittenSections | null> | undefined, name: string): { key: string; entry: WrittenSections | null } | undefined {
  if (!sheds) return undefined;
  if (name !== '*' && Object.hasOwn(sheds, name)) return { key: name, entry: sheds[name] ?? null };
  if (Object.hasOwn(sheds, '*')) return { key: '*', entry: sheds['*'] ?? null };
  return undefined;
}

/** The layers that make up a shed's policy, least specific first, with where each was written. */
export interface Layer {
  /** The key path of the layer in the policy: `['defaults']`, `['sheds', 'web']`, `['servers', 'mini2', 'sheds', '*']`. */
  at: string[];
  sections: WrittenSections | null | undefined;
}

/**
 * The layers of `name`'s policy, or undefined when nothing admits it:
 * the global `defaults`, the global `sheds` entry (its own, else `"*"`),
 * then, for a shed of a named server, that server's `defaults` and its
 * `sheds` entry (its own, else `"*"`). Most specific wins. A shed is
 * admitted when a `sheds` entry at either level applies to it.
 */
export function shedLayers(doc: PolicyDocument, name: string, server?: string): { layers: Layer[]; matched: EffectiveShed['matched'] } | undefined {
  const global = pickEntry(doc.sheds, name);
  const scope = server !== undefined && doc.servers && Object.hasOwn(doc.servers, server) ? doc.servers[server] : undefined;
  const local = pickEntry(scope?.sheds, name);
  if (!global && !local) return undefined;
  const layers: Layer[] = [{ at: ['defaults'], sections: doc.defaults }];
  if (global) layers.push({ at: ['sheds', global.key], sections: global.entry });
  if (scope) layers.push({ at: ['servers', server!, 'defaults'], sections: scope.defaults });
  if (local) layers.push({ at: ['servers', server!, 'sheds', local.key], sections: local.entry });
  return { layers, matched: name !== '*' && (global?.key === name || local?.key === name) ? 'named' : 'wildcard' };
}

/** The sections a shed (of `server`, when it belongs to a named server) ends up with, or undefined when the policy does not admit it. */
export function resolveShed(doc: PolicyDocument, name: string, server?: string): EffectiveShed | undefined {
  const found = shedLayers(doc, name, server);
  if (!found) return undefined;
  const effective = finish(name, found.matched, found.layers.map((l) => l.sections));
  // A named server's shed goes by `name@server` wherever its state is kept (origin.ts); its session tag stays its name.
  return server === undefined ? effective : { ...effective, name: shedKey({ name, server }) };
}

/** Merge `layers` (least specific first) over the built-in defaults and finish the result. */
export function finish(name: string, matched: EffectiveShed['matched'], layers: Array<WrittenSections | null | undefined>): EffectiveShed {
  const merged = layers.reduce<MergedSections>((acc, layer) => mergeSections<MergedSections>(acc, layer), BUILTIN_DEFAULTS);
  const { ssh, aws, limits } = merged;
  return {
    name,
    matched,
    ssh: { ...ssh, keys: ssh.keys.map(expandHome), agent_socket: ssh.agent_socket && expandHome(ssh.agent_socket) },
    aws: { ...aws, tags: { shed: name, ...aws.tags } },
    docker: merged.docker,
    git: merged.git,
    approval: merged.approval,
    limits: { ...limits, ssh: fillBucket(limits.ssh), aws: fillBucket(limits.aws), docker: fillBucket(limits.docker), git: fillBucket(limits.git) },
  };
}

/** The policy section that governs each namespace. */
export const SECTION_OF = {
  'ssh-agent': 'ssh',
  'aws-credentials': 'aws',
  'docker-credentials': 'docker',
  'git-credentials': 'git',
} as const;
