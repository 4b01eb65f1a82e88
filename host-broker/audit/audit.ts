/**
 * The audit trail's entry shape, its one-line JSON form, and the sink
 * interface. The JSON-lines file sink lives in audit-log.ts.
 */
import type { ApprovalOutcome, AuditResult } from '../handler.js';

export interface AuditEntry {
  ts: string;
  shed: string;
  ns: string;
  op: string;
  result: AuditResult;
  detail: string;
  approval: ApprovalOutcome;
  request_id: string;
}

/** The fields of a line, in the order they are written. */
export const AUDIT_FIELDS = ['ts', 'shed', 'ns', 'op', 'result', 'detail', 'approval', 'request_id'] as const;

/** One audit line (with its newline), fields always in AUDIT_FIELDS order whatever the entry's own key order. */
export function auditLine(entry: AuditEntry): string {
  const ordered: Record<string, string> = {};
  for (const field of AUDIT_FIELDS) ordered[field] = String(entry[field] ?? '');
  return `${JSON.stringify(ordered)}\n`;
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
