/**
 * The audit trail's entry shape, its one-line JSON form, and the sink
 * interface. The JSON-lines files live in audit-log.ts; the per-shed budget
 * for denials in governor.ts.
 *
 * A line holds text a guest chose (an operation name, a registry, an ssh
 * user name reach `op` and `detail`): every field is bounded and its unsafe
 * characters escaped (protocol/text.ts) before it is written, so a line is
 * always one line of printable text, whatever reads it.
 */
import { printable } from '../../protocol/text.js';
import type { ApprovalOutcome, AuditResult } from '../handler.js';

export interface AuditEntry {
  ts: string;
  /** The shed's key (origin.ts): `alice`, or `alice@mini2` for a shed of a named server. */
  shed: string;
  /** How the request arrived: `direct`, `default` (the top-level server) or a named server. Absent in lines of earlier versions. */
  server?: string;
  ns: string;
  op: string;
  result: AuditResult;
  detail: string;
  approval: ApprovalOutcome;
  request_id: string;
  /** Summary lines only: how many requests the line stands for. */
  count?: number;
}

/** The fields of a line, in the order they are written (a summary line adds `count`). */
export const AUDIT_FIELDS = ['ts', 'shed', 'ns', 'op', 'result', 'detail', 'approval', 'request_id'] as const;

/** The longest `server` a line keeps. */
const SERVER_LIMIT = 64;

/** The most characters of each field a line keeps (then `…`). */
export const FIELD_LIMITS: Record<(typeof AUDIT_FIELDS)[number], number> = {
  ts: 32, shed: 64, ns: 64, op: 64, result: 16, detail: 1024, approval: 16, request_id: 64,
};

/** `op` of a line that sums up requests not written one by one. */
export const SUMMARY_OP = '(summary)';

/** One audit line (with its newline): fields in AUDIT_FIELDS order, each bounded and printable. */
export function auditLine(entry: AuditEntry): string {
  const ordered: Record<string, string | number> = {};
  for (const field of AUDIT_FIELDS) {
    ordered[field] = printable(String(entry[field] ?? ''), FIELD_LIMITS[field]);
    if (field === 'shed' && entry.server !== undefined) ordered.server = printable(entry.server, SERVER_LIMIT);
  }
  if (entry.count !== undefined) ordered.count = entry.count;
  return `${JSON.stringify(ordered)}\n`;
}

/**
 * How an operation or namespace name a guest sent is written: as it is when
 * it is one this broker knows, else `unknown "<first 24 characters>"`
 * (escaped with the rest of the line by auditLine).
 */
export function auditName(name: string, known: boolean): string {
  return known ? name : `unknown "${name.length > 24 ? `${name.slice(0, 24)}…` : name}"`;
}

/** Parse one line of the log; undefined when it is not an audit entry. */
export function parseAuditLine(line: string): AuditEntry | undefined {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    return undefined;
  }
  if (typeof value !== 'object' || value === null) return undefined;
  const record = value as Record<string, unknown>;
  for (const field of AUDIT_FIELDS) if (typeof record[field] !== 'string') return undefined;
  if (record.count !== undefined && typeof record.count !== 'number') return undefined;
  if (record.server !== undefined && typeof record.server !== 'string') return undefined;
  if (Number.isNaN(Date.parse(record.ts as string))) return undefined;
  return record as unknown as AuditEntry;
}

export interface AuditSink {
  /** Resolves once the line is written (before the answer leaves); rejects when it cannot be. */
  write(entry: AuditEntry): Promise<void>;
  close?(): Promise<void>;
  /** Why the last write failed, until a write succeeds again: for `status` and doctor. */
  readonly lastError?: string;
}

/** Keeps entries in memory: tests, and `run` without an audit path. */
export class MemoryAudit implements AuditSink {
  readonly entries: AuditEntry[] = [];
  async write(entry: AuditEntry): Promise<void> {
    this.entries.push(entry);
  }
}
