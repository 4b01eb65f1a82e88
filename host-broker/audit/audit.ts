/**
 * The audit trail's entry shape and sink interface. The JSON-lines file sink
 * lives in audit-log.ts.
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

export interface AuditSink {
  /** Resolves once the line is written (before the answer leaves); rejects when it cannot be. */
  write(entry: AuditEntry): Promise<void>;
  close?(): Promise<void>;
}

/** Keeps entries in memory: tests, and `run` without an audit path. */
export class MemoryAudit implements AuditSink {
  readonly entries: AuditEntry[] = [];
  async write(entry: AuditEntry): Promise<void> {
    this.entries.push(entry);
  }
}
