/**
 * YAML with positions: a parsed policy file that can say where any key path
 * is (file:line:column), so every error points at the text to fix.
 */
import { isAlias, isMap, isPair, isScalar, isSeq, LineCounter, parseDocument, type Document, type Node } from 'yaml';

export type KeyPath = ReadonlyArray<string | number>;

export interface Position {
  file: string;
  /** 1-based; absent when the file could not be parsed at all. */
  line?: number;
  col?: number;
}

/** One problem with a policy, at a place in a file. */
export interface PolicyIssue extends Position {
  /** The key path in the policy document (`sheds.my-service.aws.role`); empty for a whole-file problem. */
  path: KeyPath;
  message: string;
}

/** `sheds.my-service.aws.role`, `defaults.docker.registries[1]`, `sheds."*".docker`. */
export function formatPath(path: KeyPath): string {
  let out = '';
  for (const seg of path) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else out += `${out ? '.' : ''}${/^[A-Za-z0-9_-]+$/.test(seg) ? seg : JSON.stringify(seg)}`;
  }
  return out;
}

/** `file:line:col: path: message` (the parts that are known). */
export function formatIssue(issue: PolicyIssue): string {
  const where = issue.line !== undefined ? `${issue.file}:${issue.line}:${issue.col ?? 1}` : issue.file;
  return `${where}: ${issue.path.length ? `${formatPath(issue.path)}: ` : ''}${issue.message}`;
}

export class YamlSource {
  readonly doc: Document;
  private readonly lines = new LineCounter();
  /** YAML syntax errors (duplicate keys included), each at its position. */
  readonly syntaxIssues: PolicyIssue[];

  constructor(readonly file: string, readonly text: string) {
    this.doc = parseDocument(text, { lineCounter: this.lines, uniqueKeys: true, prettyErrors: false, merge: true });
    this.syntaxIssues = this.doc.errors.map((e) => ({
      ...this.at(e.pos[0]),
      path: [],
      message: `YAML: ${e.message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '').replace(/:$/, '')}`,
    }));
  }

  /** The document as plain data (only meaningful when there are no syntax issues). */
  value(): unknown {
    return this.doc.toJS({ maxAliasCount: 100 });
  }

  at(offset: number): Position {
    const { line, col } = this.lines.linePos(offset);
    return { file: this.file, line, col };
  }

  /**
   * Where `path` is written: its value (or, with `key`, the key naming it).
   * A path that is not in the file points at its nearest written ancestor
   * (at the key naming it, when it has one: `aws:` for a missing `aws.x`).
   */
  locate(path: KeyPath, options: { key?: boolean } = {}): Position {
    let node: unknown = this.doc.contents;
    let keyNode: Node | undefined;
    let lastKey: Node | undefined;
    let last: Node | undefined = (node as Node | null) ?? undefined;
    for (let i = 0; i < path.length; i++) {
      if (isAlias(node)) node = node.resolve(this.doc);
      const seg = path[i]!;
      let next: unknown;
      keyNode = undefined;
      if (isMap(node)) {
        const pair = node.items.find((p) => isPair(p) && keyText(p.key) === String(seg));
        if (pair) {
          keyNode = pair.key as Node;
          next = pair.value ?? pair.key;
        }
      } else if (isSeq(node) && typeof seg === 'number') {
        next = node.items[seg];
      }
      if (next === undefined || next === null) {
        // Not written: the ancestor's key line (when the ancestor is a map entry) says where to add it.
        if (i > 0 && lastKey) last = lastKey;
        break;
      }
      lastKey = keyNode;
      node = next;
      last = (i === path.length - 1 && options.key && keyNode) ? keyNode : (next as Node);
      // A value with no text (`alpha:`) points at its key.
      if (isScalar(next) && next.value === null && keyNode && next.range?.[0] === next.range?.[1]) last = keyNode;
    }
    const offset = last?.range?.[0];
    return offset === undefined ? { file: this.file } : this.at(offset);
  }
}

function keyText(key: unknown): string | undefined {
  if (isScalar(key)) return String(key.value);
  return undefined;
}

/** The YAML type of a plain value, in the words of an error message. */
export function describeValue(value: unknown): string {
  if (value === null || value === undefined) return 'nothing';
  if (Array.isArray(value)) return 'a list';
  if (typeof value === 'object') return 'a map';
  if (typeof value === 'string') return `the string ${JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value)}`;
  return `${typeof value === 'number' ? 'the number' : 'the boolean'} ${String(value)}`;
}
