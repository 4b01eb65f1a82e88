/**
 * A loaded policy: the validated document, where it came from, and per-shed
 * resolution (cached; a reload builds a new Policy, so a request keeps the
 * policy it started with).
 */
import fs from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import { PolicyDocument } from './schema.js';
import { expandHome, resolveShed, type EffectiveShed } from './effective.js';

export const DEFAULT_POLICY_PATH = '~/.config/shed/extensions.yaml';
export const DEFAULT_SOCKETS_DIR = '~/.local/state/shed/sockets';
export const DEFAULT_AUDIT_PATH = '~/.local/share/shed/extensions-audit.log';
export const DEFAULT_SERVER_URL = 'http://localhost:8080';

export class PolicyError extends Error {
  override readonly name = 'PolicyError';
  constructor(readonly file: string, readonly problems: string[]) {
    super(`${file}: ${problems.length} problem${problems.length === 1 ? '' : 's'}:\n${problems.map((p) => `  ${p}`).join('\n')}`);
  }
}

export class Policy {
  private readonly cache = new Map<string, EffectiveShed | undefined>();

  constructor(
    readonly doc: PolicyDocument,
    /** Files the policy was read from (the main file first). */
    readonly files: string[] = [],
  ) {}

  /** The effective policy of `shed`, or undefined when neither its own entry nor `"*"` admits it. */
  resolve(shed: string): EffectiveShed | undefined {
    if (!this.cache.has(shed)) this.cache.set(shed, resolveShed(this.doc, shed));
    return this.cache.get(shed);
  }

  /** Sheds named in the policy (not `"*"`): each gets a direct socket. */
  namedSheds(): string[] {
    return Object.keys(this.doc.sheds ?? {}).filter((n) => n !== '*').sort();
  }

  hasWildcard(): boolean {
    return Object.hasOwn(this.doc.sheds ?? {}, '*');
  }

  /** Direct sockets run when `direct` is present or no `server` is configured, unless `direct.enabled: false`. */
  get direct(): { enabled: boolean; socketsDir: string } {
    const d = this.doc.direct;
    const enabled = d?.enabled ?? (d !== undefined || this.doc.server === undefined);
    return { enabled, socketsDir: path.resolve(expandHome(d?.sockets_dir ?? DEFAULT_SOCKETS_DIR)) };
  }

  get server(): (NonNullable<PolicyDocument['server']> & { url: string }) | undefined {
    const s = this.doc.server;
    return s ? { ...s, url: s.url ?? DEFAULT_SERVER_URL } : undefined;
  }

  get audit(): { path: string; maxBytes: number; keep: number; required: boolean } {
    const a = this.doc.audit ?? {};
    return {
      path: path.resolve(expandHome(a.path ?? DEFAULT_AUDIT_PATH)),
      maxBytes: a.max_bytes ?? 10 * 1024 * 1024,
      keep: a.keep ?? 5,
      required: a.required ?? false,
    };
  }
}

/** Validate a parsed document; problems name the key path. */
export function policyFromDocument(raw: unknown, file = '<policy>'): Policy {
  const parsed = PolicyDocument.safeParse(raw);
  if (!parsed.success) {
    throw new PolicyError(file, parsed.error.issues.map((i) => `${i.path.length ? i.path.join('.') : '(top level)'}: ${i.message}`));
  }
  return new Policy(parsed.data, [file]);
}

/** Read and validate a policy file. */
export function loadPolicyFile(file: string): Policy {
  const resolved = path.resolve(expandHome(file));
  let text: string;
  try {
    text = fs.readFileSync(resolved, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const hint = code === 'ENOENT' ? `create it (see config-examples/ in shed-extensions) or pass --config` : `check its permissions`;
    throw new PolicyError(resolved, [`cannot read the policy file (${code}): ${hint}`]);
  }
  const doc = YAML.parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length) {
    throw new PolicyError(resolved, doc.errors.map((e) => e.message.split('\n')[0] ?? e.message));
  }
  return policyFromDocument(doc.toJS(), resolved);
}

