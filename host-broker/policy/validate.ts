/**
 * zod's findings as policy issues: each at the key path and file position it
 * concerns, in words an admin can act on (unknown keys name the keys that
 * are allowed there, and the nearest one when it looks like a typo).
 */
import { z } from 'zod';
import { describeValue, type KeyPath, type PolicyIssue, type Position } from './source.js';

export type Locate = (path: KeyPath, options?: { key?: boolean }) => Position;

type Issue = z.core.$ZodIssue;

/**
 * Validate `value` with `schema`; issues name paths under `prefix` (where
 * `value` sits in the whole policy) and positions from `locate` (given the
 * path relative to the file).
 */
export function validate<S extends z.ZodType>(
  schema: S,
  value: unknown,
  locate: Locate,
  file: string,
  prefix: KeyPath = [],
): { data: z.output<S>; issues: [] } | { data?: undefined; issues: PolicyIssue[] } {
  const parsed = schema.safeParse(value);
  if (parsed.success) return { data: parsed.data, issues: [] };
  const out: PolicyIssue[] = [];
  const add = (issue: Issue, base: KeyPath) => {
    const rel = [...base, ...issue.path.filter((seg): seg is string | number => typeof seg !== 'symbol')];
    // A union with its own message, whose every branch refuses the value itself: say the union's words.
    if (issue.code === 'invalid_union' && !/^Invalid/.test(issue.message) && issue.errors.every((branch) => branch.every((sub) => sub.path.length === 0))) {
      out.push({ ...at(locate(rel), file), path: [...prefix, ...rel], message: `${issue.message}; got ${describeValue(get(value, rel))}` });
      return;
    }
    if (issue.code === 'invalid_union' && issue.errors.length) {
      const best = [...issue.errors].sort((a, b) => a.length - b.length)[0]!;
      for (const sub of best) add(sub, rel);
      return;
    }
    if (issue.code === 'unrecognized_keys') {
      const known = knownKeys(schema, rel);
      for (const key of issue.keys) {
        out.push({ ...at(locate(rel.concat(key), { key: true }), file), path: [...prefix, ...rel, key], message: unknownKeyMessage(key, known, prefix.length + rel.length === 0) });
      }
      return;
    }
    if (issue.code === 'invalid_key') {
      const inner = issue.issues[0]?.message ?? 'not a valid key here';
      const parent = rel[rel.length - 2];
      const what = parent === 'sheds' ? 'a shed name' : parent === 'servers' && rel.length === 2 ? 'a server name' : 'allowed as a key here';
      out.push({ ...at(locate(rel, { key: true }), file), path: [...prefix, ...rel], message: `${JSON.stringify(String(rel[rel.length - 1]))} is not ${what}: ${inner.replace(/^shed names/, parent === 'servers' ? 'server names, like shed names,' : 'shed names')}` });
      return;
    }
    // The policy's own cross-key checks say everything themselves.
    if (issue.code === 'custom' && issue.params?.whole === true) {
      out.push({ ...at(locate(rel), file), path: [...prefix, ...rel], message: issue.message });
      return;
    }
    const actual = get(value, rel);
    let message = issue.message;
    if (issue.code === 'invalid_value' && /^Invalid/.test(message)) {
      message = `expected ${issue.values.length === 1 ? String(issue.values[0]) : `one of ${issue.values.map(String).join(', ')}`}`;
    } else if (issue.code === 'invalid_type' && /^Invalid/.test(message)) {
      message = `expected ${article(issue.expected)}`;
    } else if (/^(Too|Invalid)/.test(message)) {
      message = message.replace(/^Too (small|big): expected (\w+) to have /, 'expected $2 to have ').replace(/^Invalid input: /, '');
    }
    const got = actual === undefined ? 'it is missing' : `got ${describeValue(actual)}`;
    out.push({ ...at(locate(rel), file), path: [...prefix, ...rel], message: `${message}; ${got}` });
  };
  for (const issue of parsed.error.issues) add(issue, []);
  return { issues: out };
}

function at(pos: Position, file: string): Position {
  return { ...pos, file: pos.file ?? file };
}

function article(type: string): string {
  if (type === 'object' || type === 'record') return 'a map';
  if (type === 'array') return 'a list';
  if (type === 'boolean') return 'true or false';
  return /^[aeiou]/.test(type) ? `an ${type}` : `a ${type}`;
}

function get(value: unknown, path: KeyPath): unknown {
  let v = value;
  for (const seg of path) {
    if (v === null || typeof v !== 'object') return undefined;
    v = (v as Record<string | number, unknown>)[seg];
  }
  return v;
}

const SECTION_HINT = new Set(['ssh', 'aws', 'docker', 'git', 'approval', 'limits']);

function unknownKeyMessage(key: string, known: string[], topLevel: boolean): string {
  if (topLevel && SECTION_HINT.has(key)) {
    return `unknown key ${JSON.stringify(key)} at the top level: in version 1, ${key} settings go under \`defaults:\` (every shed) or a shed's entry under \`sheds:\``;
  }
  const near = known.map((k) => [k, distance(k, key)] as const).filter(([, d]) => d <= Math.max(1, Math.floor(key.length / 4))).sort((a, b) => a[1] - b[1])[0];
  const hint = near ? ` (did you mean ${JSON.stringify(near[0])}?)` : '';
  return `unknown key ${JSON.stringify(key)}${hint}${known.length ? `; allowed here: ${known.join(', ')}` : ''}`;
}

/** The keys an object schema allows at `path` (through optional, nullable, records, lists, unions of objects). */
export function knownKeys(schema: z.ZodType, path: KeyPath): string[] {
  let nodes: z.core.$ZodType[] = [schema];
  for (const seg of [...path, undefined]) {
    nodes = nodes.flatMap(unwrap);
    if (seg === undefined) break;
    nodes = nodes.flatMap((n): z.core.$ZodType[] => {
      if (n instanceof z.ZodObject) {
        const child = n.shape[String(seg)];
        return child ? [child] : [];
      }
      if (n instanceof z.ZodRecord) return [n.valueType];
      if (n instanceof z.ZodArray) return [n.element];
      return [];
    });
  }
  const keys = new Set<string>();
  for (const n of nodes) if (n instanceof z.ZodObject) for (const k of Object.keys(n.shape)) keys.add(k);
  return [...keys];
}

/** The schemas a value at this node is checked against, wrappers (optional, nullable, default, pipe, union) removed. */
function unwrap(node: z.core.$ZodType): z.core.$ZodType[] {
  if (node instanceof z.ZodOptional || node instanceof z.ZodNullable || node instanceof z.ZodDefault) return unwrap(node.unwrap());
  if (node instanceof z.ZodPipe) return unwrap(node.in);
  if (node instanceof z.ZodUnion) return node.options.flatMap(unwrap);
  return [node];
}

function distance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0]!;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const cur = row[j]!;
      row[j] = Math.min(row[j]! + 1, row[j - 1]! + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = cur;
    }
  }
  return row[b.length]!;
}
