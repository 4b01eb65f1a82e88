/**
 * The policy file's schema (version 1). Every section is strict: an unknown
 * key is an error, as are bad durations, ARNs, fingerprints and registry
 * patterns. Sections of a shed merge over `defaults` (maps merge, lists
 * replace); `effective.ts` fills in what neither sets.
 */
import { z } from 'zod';
import { SHED_NAME_RE } from '../../protocol/envelope.js';

const DURATION_RE = /^(\d+)(ms|s|m|h|d)$/;
const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** `90s`, `5m`, `1h` → milliseconds; undefined when malformed. */
export function parseDuration(text: string): number | undefined {
  const m = DURATION_RE.exec(text);
  return m ? Number(m[1]) * UNIT_MS[m[2] as string]! : undefined;
}

export function formatDuration(ms: number): string {
  for (const unit of ['d', 'h', 'm', 's'] as const) {
    const size = UNIT_MS[unit]!;
    if (ms >= size && ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}

/** A duration string, kept as milliseconds after parsing. */
export const Duration = z
  .string({ error: 'expected a duration such as 90s, 5m or 1h' })
  .regex(DURATION_RE, { error: 'expected a duration such as 90s, 5m or 1h (a whole number and one of ms, s, m, h, d)' })
  .transform((s) => parseDuration(s)!);

export const FINGERPRINT_RE = /^SHA256:[A-Za-z0-9+/]{43}$/;
export const Fingerprint = z.string().regex(FINGERPRINT_RE, {
  error: 'expected a SHA256 key fingerprint as `ssh-keygen -lf` prints it, like SHA256:followed-by-43-base64-characters',
});

export const ROLE_ARN_RE = /^arn:aws[a-z-]*:iam::\d{12}:role\/[\w+=,.@/-]{1,512}$/;
export const RoleArn = z.string().regex(ROLE_ARN_RE, { error: 'expected an IAM role ARN like arn:aws:iam::123456789012:role/name' });

export const POLICY_ARN_RE = /^arn:aws[a-z-]*:iam::(\d{12}|aws):policy\/[\w+=,.@/-]{1,512}$/;
export const PolicyArn = z.string().regex(POLICY_ARN_RE, { error: 'expected an IAM policy ARN like arn:aws:iam::aws:policy/ReadOnlyAccess' });

/** `ghcr.io`, `registry.example.com:5000`, `127.0.0.1:5000`, or a wildcard `*.example.com`. */
export const REGISTRY_PATTERN_RE = /^(\*\.)?(?=.{1,253}(:|$))[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*(:\d{1,5})?$/;
export const RegistryPattern = z.string().regex(REGISTRY_PATTERN_RE, {
  error: 'expected a registry host like ghcr.io or registry.example.com:5000, or a wildcard like *.example.com (lowercase, no scheme or path)',
});

export const ShedName = z.string().regex(SHED_NAME_RE, {
  error: 'shed names are lowercase letters, digits and hyphens, start with a letter, do not end with a hyphen, at most 63 characters',
});

const NonEmpty = z.string().min(1, { error: 'must not be empty' });

export const AllowedHost = z.union([
  z.strictObject({ host: NonEmpty, key: NonEmpty.regex(/^[a-z0-9@.-]+ [A-Za-z0-9+/]+={0,2}( .*)?$/, { error: 'expected a public key line like "ssh-ed25519 AAAA…"' }) }),
  z.strictObject({ known_hosts: NonEmpty }),
]);
export type AllowedHost = z.infer<typeof AllowedHost>;

export const SshSection = z.strictObject({
  enabled: z.boolean().optional(),
  mode: z.enum(['auto', 'agent-forward', 'local-keys']).optional(),
  /** The host agent socket for agent-forward; `$SSH_AUTH_SOCK` when unset. */
  agent_socket: NonEmpty.optional(),
  /** Extra private key files for local-keys, besides ~/.ssh/id_{ed25519,ecdsa,rsa}. */
  keys: z.array(NonEmpty).optional(),
  /** Only these keys are listed and may sign; empty = every key the backend has. */
  allowed_keys: z.array(Fingerprint).optional(),
  /** Destination restriction for user authentication; absent = no restriction. */
  allowed_hosts: z.array(AllowedHost).optional(),
  /** SSHSIG namespaces (`ssh-keygen -Y sign -n`); empty = none; absent = any. */
  signing_namespaces: z.array(NonEmpty).optional(),
});

const Tags = z.record(z.string().min(1).max(128), z.string().max(256));

export const AwsSection = z.strictObject({
  enabled: z.boolean().optional(),
  role: RoleArn.optional(),
  source_profile: NonEmpty.optional(),
  session_duration: Duration.optional(),
  refresh_before: Duration.optional(),
  region: z.string().regex(/^[a-z]{2}(-[a-z]+)+-\d+$/, { error: 'expected an AWS region like us-east-1' }).optional(),
  sts_endpoint: z.url({ error: 'expected an https:// (or http:// on loopback) URL' }).optional(),
  external_id: z.string().min(2).max(1224).optional(),
  /** An inline session policy as a JSON string or a YAML map. */
  session_policy: z.union([z.string(), z.record(z.string(), z.unknown())]).optional(),
  policy_arns: z.array(PolicyArn).optional(),
  source_identity: z.string().min(2).max(64).optional(),
  tags: Tags.optional(),
});

export const DockerSection = z.strictObject({
  enabled: z.boolean().optional(),
  registries: z.array(RegistryPattern).optional(),
  allow_all: z.boolean().optional(),
  config_path: NonEmpty.optional(),
});

export const ApprovalSection = z.strictObject({
  gate: z.enum(['none', 'command', 'touchid']).optional(),
  policy: z.enum(['per-request', 'per-session', 'per-shed']).optional(),
  ttl: Duration.optional(),
  /** How long a gate may take before it counts as a denial. */
  timeout: Duration.optional(),
  /** argv for `gate: command`; run without a shell. */
  command: z.array(NonEmpty).min(1).optional(),
  /** What the gate guards: ssh signs always; aws get_credentials on request. */
  applies_to: z.array(z.enum(['ssh-agent', 'aws-credentials'])).optional(),
});

/** A token bucket; `burst` defaults to a tenth of `per_minute` (at least 1). */
export const BucketSection = z.strictObject({
  per_minute: z.number().int().positive(),
  burst: z.number().int().positive().optional(),
});

export const LimitsSection = z.strictObject({
  /** Requests of one shed in flight at once; more wait their turn. */
  max_concurrent: z.number().int().positive().optional(),
  /** Connections one shed may hold open on its direct socket; more are closed at once. */
  max_connections: z.number().int().min(1).max(65_536).optional(),
  ssh: BucketSection.optional(),
  aws: BucketSection.optional(),
  docker: BucketSection.optional(),
});

export const ShedSections = z.strictObject({
  ssh: SshSection.optional(),
  aws: AwsSection.optional(),
  docker: DockerSection.optional(),
  approval: ApprovalSection.optional(),
  limits: LimitsSection.optional(),
});
export type ShedSections = z.infer<typeof ShedSections>;

export const ServerSection = z.strictObject({
  url: z.url({ error: 'expected the shed-server URL, like http://localhost:8080' }).optional(),
  token_file: NonEmpty.optional(),
  tls_pin: z.string().regex(/^sha256:[0-9a-fA-F:]{64,95}$/, { error: 'expected sha256:<64 hex digits of the certificate DER>' }).optional(),
  client_cert: NonEmpty.optional(),
  client_key: NonEmpty.optional(),
  /** Namespaces to subscribe; every enabled one by default. */
  namespaces: z.array(z.enum(['ssh-agent', 'aws-credentials', 'docker-credentials'])).optional(),
});

export const DirectSection = z.strictObject({
  enabled: z.boolean().optional(),
  sockets_dir: NonEmpty.optional(),
  /** Connections across every shed's socket; default: half the open-file limit left after 256. */
  max_connections: z.number().int().min(1).max(1_000_000).optional(),
});

export const AuditSection = z.strictObject({
  /** The directory of per-shed logs (`<shed>.log`). */
  dir: NonEmpty.optional(),
  /** The single log file of earlier versions: read as `dir` beside it, with a notice. */
  path: NonEmpty.optional(),
  /** Per shed file. */
  max_bytes: z.number().int().min(4096).optional(),
  keep: z.number().int().min(0).max(100).optional(),
  /** Denials of one shed written one by one per minute; the rest are summed up once a minute. */
  denials_per_minute: z.number().int().min(1).max(100_000).optional(),
  /** Deny requests rather than serve them unaudited when the log cannot be written. */
  required: z.boolean().optional(),
});

export const PolicyDocument = z.strictObject({
  version: z.literal(1, { error: 'expected `version: 1`' }),
  server: ServerSection.optional(),
  direct: DirectSection.optional(),
  audit: AuditSection.optional(),
  defaults: ShedSections.optional(),
  sheds: z.record(z.union([ShedName, z.literal('*')]), ShedSections.nullable()).optional(),
});
export type PolicyDocument = z.infer<typeof PolicyDocument>;
