/**
 * What a namespace handler sees. Handlers know nothing of transports: they get
 * an operation, its payload and the requesting shed's effective policy, and
 * return a payload or throw a BrokerError.
 */
import type { Namespace, Payload } from '../protocol/envelope.js';
import type { Logger } from '../protocol/log.js';
import type { EffectiveShed } from './policy/effective.js';

export type AuditResult = 'ok' | 'denied' | 'error';
export type ApprovalOutcome = 'none' | 'prompt' | 'cached' | 'denied';

/**
 * An expected failure with a protocol code. `message` goes to the guest, so it
 * must never hold secret material; `detail` goes to the audit log (also never
 * secret: fingerprints, ARNs, registry hosts).
 */
export class BrokerError extends Error {
  override readonly name = 'BrokerError';
  constructor(
    readonly code: string,
    message: string,
    readonly options: { result?: AuditResult; detail?: string } = {},
  ) {
    super(message);
  }

  get result(): AuditResult {
    return this.options.result ?? 'denied';
  }
}

/** What the approval gate is asked about. */
export interface ApprovalSubject {
  /** Key fingerprint for a sign, role ARN for credentials. */
  subject: string;
  /** Shown to the human, e.g. "sign with SHA256:… (ED25519)". */
  description: string;
}

export interface RequestContext {
  readonly shed: string;
  readonly requestId: string;
  readonly namespace: Namespace;
  readonly operation: string;
  /** The shed's effective policy when the request arrived; a reload does not change it. */
  readonly policy: EffectiveShed;
  readonly log: Logger;
  /** Aborted when the broker stops. */
  readonly signal: AbortSignal;
  /** The audit entry's `detail`: a fingerprint, role ARN, registry host; never secret. */
  detail?: string;
  /** The audit entry's `approval`. */
  approval: ApprovalOutcome;
  /**
   * Ask the shed's approval gate; resolves when approved, throws BrokerError
   * APPROVAL_DENIED otherwise. Records the outcome on the context.
   */
  approve(subject: ApprovalSubject): Promise<void>;
}

export interface NamespaceHandler {
  readonly namespace: Namespace;
  /** The operations it serves (`ping` aside); the protocol's list for the namespace when absent. An audit line names others as unknown. */
  readonly operations?: readonly string[];
  /**
   * Serve one operation. `ping` never reaches a handler (the dispatcher
   * answers it); everything else does, `status` included. An operation the
   * handler does not know must throw BrokerError UNKNOWN_OPERATION.
   */
  handle(operation: string, payload: Payload, ctx: RequestContext): Promise<Payload>;
  /** Release backends (agent connections, timers). */
  close?(): Promise<void>;
}

export function unknownOperation(namespace: string, operation: string): BrokerError {
  return new BrokerError('UNKNOWN_OPERATION', `${namespace} has no operation ${JSON.stringify(operation.slice(0, 64))} on this host; upgrade shed-host-agent if the guest is newer`);
}

/**
 * A policy rule's verdict. Handlers and `shed-host-agent explain` call the
 * same rule functions, so a dry run says exactly what the broker would do.
 */
export interface Decision {
  allowed: boolean;
  /** The error code when refused. */
  code?: string;
  /** The rule that decided, in words: "allowed_keys lists SHA256:…", "no allowed_hosts: any host". */
  rule: string;
}
