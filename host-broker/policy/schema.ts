/**
 * The policy file's schema (version 1). Every section is strict: an unknown
 * key is an error, as are bad durations, ARNs, fingerprints and registry
 * patterns. Sections of a shed merge over `defaults` (maps merge, lists
 * replace); `effective.ts` fills in what neither sets.
 */
import { z } from 'zod';
import { SHED_NAME_RE } from '../../protocol/envelope.js';

/** Milliseconds per unit: Go's (ns, us/µs, ms, s, m, h) and days. */
const UNIT_MS: Record<string, number> = { ns: 1e-6, us: 1e-3, 'µs': 1e-3, 'μs': 1e-3, ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
const PART = '(?:\\d+(?:\\.\\d*)?|\\.\\d+)(?:ns|us|µs|μs|ms|s|m|h|d)';
/** `90s`, `5m`, `1h`, `1d`, and Go's `time.ParseDuration` forms: `1h30m`, `1.5h`, `300ms`, `0`. */
const DURATION_RE = new RegExp(`^(?:0|(?:${PART})+)$`);
const PART_RE = /(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h|d)/g;

/**
 * `90s`, `5m`, `1h`, `1h30m`, `1.5h`, `300ms` → milliseconds (rounded to a
 * whole one); undefined when malformed. The original's Go durations and
 * version 1's read the same way; a sign is refused (nothing here runs
 * backwards).
 */
export function parseDuration(text: string): number | undefined {
  if (!DURATION_RE.test(text)) return undefined;
  let total = 0;
  for (const m of text.matchAll(PART_RE)) total += Number(m[1]) * UNIT_MS[m[2]!]!;
  return Math.round(total);
}

export function formatDuration(ms: number): string {
  for (const unit of ['d', 'h', 'm', 's'] as const) {
    const size = UNIT_MS[unit]!;
    if (ms >= size && ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}

export const DURATION_HINT = 'expected a duration such as 90s, 5m or 1h (a number and one of ms, s, m, h, d; Go\'s 1h30m and 1.5h work too)';

/** A duration string, kept as milliseconds after parsing. */
export const Duration = z
  .string({ error: DURATION_HINT })
  .refine((s) => parseDuration(s) !== undefined, { error: DURATION_HINT })
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
  /**
   * `assume-role`: STS AssumeRole into `role` with the source profile's
   * credentials. `passthrough`: the source profile's own session
   * credentials (SSO, SAML), re-read on each request; `role` is not used.
   */
  mode: z.enum(['assume-role', 'passthrough']).optional(),
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

const HOST_LABEL = '[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?';
const HOST_NAME = `${HOST_LABEL}(?:\\.${HOST_LABEL})*|\\[[0-9A-Fa-f:.]+\\]`;
/** A path segment of a git.allowed entry: no spaces or control characters, slashes, `?`, `#` or backslashes; `*` and `**` are globs. */
const GIT_SEGMENT = '[^\\s/?#\\\\\\x00-\\x1f\\x7f]+';

/**
 * A git.allowed entry: `[http://|https://]host[:port][/path glob]`, host
 * possibly `*.example.com`. Groups: scheme, host, port, path.
 */
export const GIT_ALLOWED_RE = new RegExp(`^(?:(https?)://)?((?:\\*\\.)?(?:${HOST_NAME}))(?::(\\d{1,5}))?((?:/${GIT_SEGMENT})*)/?$`, 'i');
/** A host as git names it (with its port when the URL had one): a git.sources key. */
export const GIT_HOST_RE = new RegExp(`^(?:${HOST_NAME})(?::\\d{1,5})?$`);

const GIT_ALLOWED_HINT = 'expected a host (github.com, git.example.com:8443, *.example.com) or a host and path glob (github.com/acme/*, gitlab.example.com/team/**), '
  + 'written http://… only to allow plain http for it';

function gitEntryProblem(entry: string): string | undefined {
  const m = GIT_ALLOWED_RE.exec(entry);
  if (!m) return GIT_ALLOWED_HINT;
  if (m[3] !== undefined && (Number(m[3]) < 1 || Number(m[3]) > 65_535)) return `port ${m[3]} is not a port (1-65535)`;
  if ((m[4] ?? '').split('/').some((seg) => seg === '.' || seg === '..')) return 'a path may not hold . or .. segments';
  return undefined;
}

export const GitAllowedEntry = z.string({ error: GIT_ALLOWED_HINT }).superRefine((entry, ctx) => {
  const problem = gitEntryProblem(entry);
  if (problem) ctx.addIssue({ code: 'custom', message: problem === GIT_ALLOWED_HINT ? problem : `${problem}; ${GIT_ALLOWED_HINT}` });
});

export const GitHost = z.string().regex(GIT_HOST_RE, { error: 'expected a host as git names it: github.com, or git.example.com:8443 with a port' });

export const GitSource = z.strictObject({
  /** argv run without a shell, stdin closed; its stdout (one line) is the token. */
  command: z.array(NonEmpty, { error: 'expected a command as a list (argv, run without a shell), like [gh, auth, token]' })
    .min(1, { error: 'expected a command as a list (argv, run without a shell), like [gh, auth, token]' }),
  /** The username sent with the token. Default `x-access-token` (GitHub's; GitLab, Gitea and Azure DevOps accept any). */
  username: NonEmpty.optional(),
});

export const GitSection = z.strictObject({
  enabled: z.boolean().optional(),
  /** What this shed may have git credentials for: hosts, or hosts with path globs. Empty = nothing. */
  allowed: z.array(GitAllowedEntry).optional(),
  /** Per host: where its token comes from instead of the host's `git credential fill`. */
  sources: z.record(GitHost, GitSource).optional(),
});

export const ApprovalSection = z.strictObject({
  gate: z.enum(['none', 'command', 'touchid']).optional(),
  policy: z.enum(['per-request', 'per-session', 'per-shed']).optional(),
  ttl: Duration.optional(),
  /** How long a gate may take before it counts as a denial. */
  timeout: Duration.optional(),
  /** argv for `gate: command`; run without a shell. */
  command: z.array(NonEmpty).min(1).optional(),
  /** What the gate guards: ssh signs, aws get_credentials, git get. */
  applies_to: z.array(z.enum(['ssh-agent', 'aws-credentials', 'git-credentials'])).optional(),
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
  git: BucketSection.optional(),
});

export const ShedSections = z.strictObject({
  ssh: SshSection.optional(),
  aws: AwsSection.optional(),
  docker: DockerSection.optional(),
  git: GitSection.optional(),
  approval: ApprovalSection.optional(),
  limits: LimitsSection.optional(),
});
export type ShedSections = z.infer<typeof ShedSections>;

const Port = z.number({ error: 'expected a port number' }).int().min(1).max(65_535);

/** Minting a bearer token over SSH (PROTOCOL.md 3a): `ssh -p <ssh_port> <user>@<host> credentials <client_name>`. */
export const BootstrapSection = z.strictObject({
  /** Default: the host of the server's url. */
  host: NonEmpty.optional(),
  ssh_port: Port.optional(),
  /** Default `_bootstrap`. */
  user: NonEmpty.optional(),
  /** The dedicated private key the server allowlists. */
  identity_file: NonEmpty.optional(),
  /** The server's pinned SSH host key. Default `~/.shed/known_hosts` (where `shed server add` writes it). */
  known_hosts: NonEmpty.optional(),
  /** The name the token is minted for. Default: this host's name. */
  client_name: NonEmpty.optional(),
});

/** Where a server is and how to trust it: the same keys on `server:` and on each `servers.<name>`. */
const CONNECTION_KEYS = {
  url: z.url({ error: 'expected the shed-server URL, like http://localhost:8080 or https://mini.local:8443' }).optional(),
  tls_pin: z.string().regex(/^sha256:[0-9a-fA-F:]{64,95}$/, { error: 'expected sha256:<64 hex digits of the certificate DER>' }).optional(),
  /** A file holding the bearer token (re-read when it changes). */
  token_file: NonEmpty.optional(),
  /** argv, run without a shell; stdout is a token or shed's JSON credentials bundle. */
  token_command: z.array(NonEmpty, { error: 'expected a command as a list (argv, run without a shell), like [shed, credentials, print]' })
    .min(1, { error: 'expected a command as a list (argv, run without a shell), like [shed, credentials, print]' }).optional(),
  bootstrap: BootstrapSection.optional(),
  client_cert: NonEmpty.optional(),
  client_key: NonEmpty.optional(),
  /** Namespaces to subscribe; every enabled one by default. */
  namespaces: z.array(z.enum(['ssh-agent', 'aws-credentials', 'docker-credentials', 'git-credentials'])).optional(),
};
/** The keys of a server that choose where its bearer token comes from; at most one per server. */
export const TOKEN_SOURCE_KEYS = ['token_file', 'token_command', 'bootstrap'] as const;

export const ServerSection = z.strictObject(CONNECTION_KEYS);

/** `sheds:` of the policy or of one server: a shed's sections by name, `"*"` for any shed not named. */
const ShedsMap = z.record(z.union([ShedName, z.literal('*')]), ShedSections.nullable());

/** A server by name: its connection (or none, to take it from discovery) and its policy over the global one. */
export const NamedServerSection = z.strictObject({
  ...CONNECTION_KEYS,
  /** Over the global `defaults`, for this server's sheds. */
  defaults: ShedSections.optional(),
  /** Over the global `sheds` entry of the same name, for this server's sheds. */
  sheds: ShedsMap.optional(),
});

export const DiscoverySection = z.strictObject({
  /** shed's client config. Default `~/.shed/config.yaml`. */
  source: NonEmpty.optional(),
  /** `all` (the default) or the names of the servers to broker for. */
  servers: z.union([z.literal('all'), z.array(ShedName)], { error: 'expected `all` or a list of server names' }).optional(),
  /** How to mint tokens for the secure-mode servers found there. */
  bootstrap: z.strictObject({
    identity_file: NonEmpty.optional(),
    known_hosts: NonEmpty.optional(),
    client_name: NonEmpty.optional(),
  }).optional(),
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

/** The name the top-level `server:` goes by in logs, audit lines and `servers()`. */
export const DEFAULT_SERVER_NAME = 'default';

export const PolicyDocument = z.strictObject({
  version: z.literal(1, { error: 'expected `version: 1`' }),
  server: ServerSection.optional(),
  /** More shed servers by name, each with its connection and its own policy layer. */
  servers: z.record(ShedName, NamedServerSection.nullable()).optional(),
  /** Servers found in shed's client config (`~/.shed/config.yaml`). `discovery:` alone means every one. */
  discovery: DiscoverySection.nullable().optional(),
  direct: DirectSection.optional(),
  audit: AuditSection.optional(),
  defaults: ShedSections.optional(),
  sheds: ShedsMap.optional(),
}).superRefine((doc, rawCtx) => {
  // Every message here is whole: it names the keys and the fix (validate adds nothing).
  const ctx = { addIssue: (issue: { code: 'custom'; path: PropertyKey[]; message: string }) => rawCtx.addIssue({ ...issue, params: { whole: true } }) };
  const connections: Array<[Array<string>, z.output<typeof ServerSection>]> = [];
  if (doc.server) connections.push([['server'], doc.server]);
  for (const [name, server] of Object.entries(doc.servers ?? {})) if (server) connections.push([['servers', name], server]);
  for (const [at, server] of connections) {
    const where = at.join('.');
    const sources = TOKEN_SOURCE_KEYS.filter((k) => server[k] !== undefined);
    if (sources.length > 1) {
      ctx.addIssue({
        code: 'custom',
        path: [...at, sources[1]!],
        message: `${where} has both ${sources[0]} and ${sources[1]}${sources[2] ? ` (and ${sources[2]})` : ''}: a server takes its bearer token from one source; keep one of them`,
      });
    }
    if ((server.client_cert === undefined) !== (server.client_key === undefined)) {
      const has = server.client_cert !== undefined ? 'client_cert' : 'client_key';
      ctx.addIssue({ code: 'custom', path: [...at, has], message: `client_cert and client_key go together (mutual TLS): set both, or neither` });
    }
    const https = server.url === undefined || /^https:/i.test(server.url);
    for (const key of ['tls_pin', 'client_cert'] as const) {
      if (server[key] !== undefined && !https) {
        ctx.addIssue({ code: 'custom', path: [...at, key], message: `${key} needs an https:// url, and ${where}.url is ${server.url}; use https://… or remove ${key}` });
      }
    }
    if (server.bootstrap && server.url !== undefined) {
      for (const key of ['ssh_port', 'identity_file'] as const) {
        if (server.bootstrap[key] === undefined) {
          const what = key === 'ssh_port' ? 'the server\'s SSH port (ssh_port in ~/.shed/config.yaml)' : 'the private key the server allowlists for minting';
          ctx.addIssue({ code: 'custom', path: [...at, 'bootstrap'], message: `bootstrap needs ${key}: ${what}` });
        }
      }
    }
  }
  for (const [name, server] of Object.entries(doc.servers ?? {})) {
    if (name === DEFAULT_SERVER_NAME && doc.server) {
      ctx.addIssue({ code: 'custom', path: ['servers', name], message: `the top-level server: is named ${DEFAULT_SERVER_NAME}; give this server another name` });
    }
    if (server?.url !== undefined) continue;
    const discovery = doc.discovery === undefined ? undefined : (doc.discovery ?? {});
    if (!discovery) {
      ctx.addIssue({ code: 'custom', path: ['servers', name], message: `servers.${name} has no url, and there is no discovery: block to find it in ~/.shed/config.yaml; add url: (or a discovery: block)` });
    } else if (Array.isArray(discovery.servers) && !discovery.servers.includes(name)) {
      ctx.addIssue({ code: 'custom', path: ['servers', name], message: `servers.${name} has no url, and discovery.servers (${discovery.servers.join(', ') || 'empty'}) does not include it; add url:, or add ${name} to discovery.servers` });
    }
  }
});
export type PolicyDocument = z.infer<typeof PolicyDocument>;
