/**
 * The original shed-extensions format (no `version`; `server`, `ssh`, `aws`,
 * `docker`, `logging` at the top; `aws.default_role` and
 * `aws.sheds.<name>.role`), read as the equivalent version 1 policy.
 *
 * The original admitted every shed (a shed without a role of its own got
 * `default_role`, or no AWS credentials): that is the `"*"` entry here, so a
 * translated file behaves as it did. Its values are checked by the same
 * rules as version 1's (ARNs, durations, registry patterns).
 */
import { stringify } from 'yaml';
import { z } from 'zod';
import { RegistryPattern, RoleArn, ShedName } from './schema.js';
import type { KeyPath } from './source.js';

const DurationText = z.string({ error: 'expected a duration such as 90s, 5m or 1h' })
  .regex(/^\d+(ms|s|m|h|d)$/, { error: 'expected a duration such as 90s, 5m or 1h (a whole number and one of ms, s, m, h, d)' });
const NonEmpty = z.string().min(1, { error: 'must not be empty' });

export const LegacyDocument = z.strictObject({
  server: z.url({ error: 'expected the shed-server URL, like http://localhost:8080' }).optional(),
  ssh: z.strictObject({
    mode: z.enum(['', 'agent-forward', 'local-keys']).optional(),
    approval: z.strictObject({
      enabled: z.boolean().optional(),
      policy: z.enum(['per-request', 'per-session', 'per-shed']).optional(),
      method: z.enum(['biometrics-or-password', 'biometrics']).optional(),
      session_ttl: DurationText.optional(),
    }).nullable().optional(),
  }).nullable().optional(),
  aws: z.strictObject({
    source_profile: NonEmpty.optional(),
    default_role: z.union([z.literal(''), RoleArn]).optional(),
    session_duration: DurationText.optional(),
    cache_refresh_before: DurationText.optional(),
    sheds: z.record(ShedName, z.strictObject({ role: RoleArn })).nullable().optional(),
  }).nullable().optional(),
  docker: z.strictObject({
    registries: z.array(RegistryPattern).nullable().optional(),
    allow_all: z.boolean().optional(),
    config_path: z.string().optional(),
  }).nullable().optional(),
  logging: z.strictObject({
    enabled: z.boolean().optional(),
    path: NonEmpty.optional(),
  }).nullable().optional(),
});
export type LegacyDocument = z.infer<typeof LegacyDocument>;

const LEGACY_KEYS = ['server', 'ssh', 'aws', 'docker', 'logging'];

/** True for a document in the original format: no `version`, and one of its top-level keys. */
export function isLegacy(raw: unknown): boolean {
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) return false;
  const keys = Object.keys(raw);
  return !keys.includes('version') && keys.some((k) => LEGACY_KEYS.includes(k));
}

export interface Translation {
  /** The equivalent version 1 document (raw: durations still text). */
  doc: Record<string, unknown>;
  /** Things of the original that have no exact equivalent, said once each. */
  remarks: string[];
}

type Plain = Record<string, unknown>;

export function translateLegacy(old: LegacyDocument): Translation {
  const remarks: string[] = [];
  const defaults: Plain = {};
  const doc: Plain = { version: 1, server: { url: old.server ?? 'http://localhost:8080' } };

  const ssh: Plain = {};
  if (old.ssh?.mode) ssh.mode = old.ssh.mode;
  if (Object.keys(ssh).length) defaults.ssh = ssh;
  const approval = old.ssh?.approval;
  if (approval?.enabled) {
    defaults.approval = {
      gate: 'touchid',
      ...(approval.policy && { policy: approval.policy }),
      ...(approval.session_ttl && { ttl: approval.session_ttl }),
    };
    if (approval.method === 'biometrics') remarks.push('ssh.approval.method biometrics: the touchid gate accepts Touch ID or the account password');
  }

  const aws: Plain = {};
  if (old.aws?.source_profile) aws.source_profile = old.aws.source_profile;
  if (old.aws?.session_duration) aws.session_duration = old.aws.session_duration;
  if (old.aws?.cache_refresh_before) aws.refresh_before = old.aws.cache_refresh_before;
  if (Object.keys(aws).length) defaults.aws = aws;

  const docker: Plain = {};
  if (old.docker?.registries) docker.registries = old.docker.registries;
  if (old.docker?.allow_all !== undefined) docker.allow_all = old.docker.allow_all;
  if (old.docker?.config_path) docker.config_path = old.docker.config_path;
  if (Object.keys(docker).length) defaults.docker = docker;

  if (old.logging?.path) {
    doc.audit = { dir: dirForLogPath(old.logging.path) };
    remarks.push(`logging.path ${old.logging.path} (one file) is now audit.dir ${dirForLogPath(old.logging.path)} (one file per shed)`);
  }
  if (old.logging?.enabled === false) remarks.push('logging.enabled false: the audit log is always written now');

  if (Object.keys(defaults).length) doc.defaults = defaults;
  const sheds: Plain = {};
  for (const [name, entry] of Object.entries(old.aws?.sheds ?? {})) sheds[name] = { aws: { role: entry.role } };
  sheds['*'] = old.aws?.default_role ? { aws: { role: old.aws.default_role } } : {};
  doc.sheds = sheds;
  return { doc, remarks };
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

/**
 * Where a version 1 key path of a translated document was written in the
 * original (for error positions and `policy show` origins).
 */
export function legacyPath(path: KeyPath): KeyPath {
  const [a, b, c, d] = path;
  if (a === 'server') return ['server'];
  if (a === 'audit') return ['logging', ...path.slice(1)];
  if (a === 'defaults') {
    if (b === 'approval') {
      return c === 'gate' ? ['ssh', 'approval', 'enabled'] : c === 'ttl' ? ['ssh', 'approval', 'session_ttl'] : ['ssh', 'approval', ...path.slice(2)];
    }
    if (b === 'aws' && c === 'refresh_before') return ['aws', 'cache_refresh_before'];
    return path.slice(1);
  }
  if (a === 'sheds' && c === 'aws' && d === 'role') return b === '*' ? ['aws', 'default_role'] : ['aws', 'sheds', b!, 'role'];
  if (a === 'sheds' && b !== '*') return ['aws', 'sheds', b!];
  return [];
}

/** The one-line notice: the file is in the original format, and what it is equivalent to. */
export function legacyNotice(file: string, translation: Translation): string {
  const flow = stringify(translation.doc, { collectionStyle: 'flow', lineWidth: 0 }).replace(/\s*\n\s*/g, ' ').trim();
  const remarks = translation.remarks.length ? ` (${translation.remarks.join('; ')})` : '';
  return `notice: ${file} is in the original shed-extensions format; it is read as this version 1 policy, write it so to silence this notice${remarks}: ${flow}`;
}
