/**
 * The one place where transports meet namespaces: refuse what the shed's
 * policy does not admit, answer `ping`, route to the handler, record the
 * outcome in the audit log before the answer leaves, and answer each request
 * id at most once.
 */
import { CommonCode } from '../protocol/codes.js';
import { errorPayload, isErrorPayload, isOperation, type Envelope, type Namespace, type Payload } from '../protocol/envelope.js';
import { LogThrottle, type Logger } from '../protocol/log.js';
import { printable } from '../protocol/text.js';
import { uuidv7Time } from '../protocol/messages.js';
import { auditName, type AuditEntry, type AuditSink } from './audit/audit.js';
import { DedupeWindow } from './dedupe.js';
import { BrokerError, type ApprovalOutcome, type ApprovalSubject, type NamespaceHandler, type RequestContext } from './handler.js';
import type { EffectiveShed } from './policy/effective.js';
import { shedDecision } from './policy/decide.js';
import type { Policy } from './policy/policy.js';
import type { SinkOptions } from './transports/transport.js';
import { directShed, shedKey, type ShedOrigin } from './origin.js';

/**
 * Decides an approval for one request. Resolves with how it was approved;
 * throws BrokerError APPROVAL_DENIED when it was not.
 */
export type Approver = (request: { shed: EffectiveShed; namespace: Namespace; operation: string }, subject: ApprovalSubject) => Promise<ApprovalOutcome>;

/**
 * A gate checked before a handler runs (rate limits, concurrency); may throw
 * BrokerError, returns a release function. `quiet` operations (status) are
 * asked too, so they can be bounded without being rate-limited.
 */
export type Admission = (request: { shed: EffectiveShed; namespace: Namespace; operation: string; requestId: string; quiet?: boolean }) => Promise<() => void>;

export interface DispatcherOptions {
  /** The policy in force; called once per request, so a reload applies to the next one. */
  policy: () => Policy;
  handlers: NamespaceHandler[];
  audit: AuditSink;
  log: Logger;
  approver?: Approver;
  admission?: Admission;
  dedupe?: DedupeWindow;
  /** How far a request id's time may be ahead of this host's clock (default MAX_CLOCK_SKEW_MS). */
  maxClockSkewMs?: number;
}

/** Allowed clock difference between a guest and the host for request ids. */
export const MAX_CLOCK_SKEW_MS = 60_000;

/** Who asked for what: the part of an audit line known before the request is served. */
type AuditBase = Pick<AuditEntry, 'shed' | 'server' | 'ns' | 'op' | 'request_id'>;

/** An audit line before its time stamp, with the error code of a denial. */
type AuditRecord = Omit<AuditEntry, 'ts'> & { code?: string };

/** Operations that are not credential operations: answered without an audit line. */
const QUIET_OPERATIONS = new Set(['ping', 'status']);

export class Dispatcher {
  private readonly handlers = new Map<string, NamespaceHandler>();
  private readonly dedupe: DedupeWindow;
  private readonly abort = new AbortController();
  /** Refusals a guest can repeat at will are logged once a minute with their count. */
  private readonly throttle: LogThrottle;

  constructor(private readonly options: DispatcherOptions) {
    for (const h of options.handlers) this.handlers.set(h.namespace, h);
    this.dedupe = options.dedupe ?? new DedupeWindow();
    this.throttle = new LogThrottle(options.log);
  }

  /** Namespaces with a handler. */
  get namespaces(): Namespace[] {
    return [...this.handlers.keys()] as Namespace[];
  }

  /**
   * Handle one message that arrived for `shed` (named by the transport: the
   * socket it came on, or shed-server's `shed` field; never the payload).
   * The envelope's shape is the transport's to check where it crosses the
   * trust boundary (shed-server's events against the Envelope schema; the
   * direct sockets build theirs from a checked publish body); its id's time
   * and uniqueness, the policy and the payload are checked here.
   * Resolves with the response payload, or undefined when nothing must be
   * answered (an event, a response, a repeated request id). A bare name is a
   * shed of the direct sockets.
   */
  async dispatch(envelope: Envelope, from: ShedOrigin | string, options: SinkOptions = {}): Promise<Payload | undefined> {
    const origin = typeof from === 'string' ? directShed(from) : from;
    // Every per-shed state and every log line goes by the key: `alice`, or `alice@mini2` for a named server's shed.
    const shed = shedKey(origin);
    if (envelope.type !== 'request') {
      this.options.log.debug(`shed ${shed}: ignoring ${envelope.type} on ${printable(envelope.namespace, 64)}`);
      return undefined;
    }
    const operation = typeof envelope.payload.operation === 'string' ? envelope.payload.operation : '';
    const base = this.auditBase(envelope, origin, operation);

    // An id the transport made itself (a direct socket) is new and now by construction.
    const dated = options.freshId ? undefined : this.checkIdTime(envelope.id);
    if (dated) {
      this.throttle.warn(`${shed} ${dated.code}`, `shed ${shed}: request ${envelope.id} on ${base.ns} refused: ${dated.message}`);
      await this.record({ ...base, result: 'denied', detail: dated.code, approval: 'none', code: dated.code });
      return errorPayload(dated.code, dated.message);
    }
    if (!options.freshId && !this.dedupe.take(shed, envelope.id)) {
      this.throttle.warn(`${shed} duplicate`, `shed ${shed}: request ${envelope.id} on ${base.ns} seen already; not answering it twice`);
      await this.record({ ...base, result: 'denied', detail: CommonCode.DUPLICATE_REQUEST, approval: 'none', code: CommonCode.DUPLICATE_REQUEST });
      return undefined;
    }

    const deny = async (code: string, message: string, detail: string = code) => {
      await this.record({ ...base, result: 'denied', detail, approval: 'none', code });
      return errorPayload(code, message);
    };

    // One policy for the whole request, even if a reload lands meanwhile.
    const current = this.options.policy();
    // The shed-level verdict is shared with `shed-host-agent explain`.
    const verdict = shedDecision(current, origin, envelope.namespace, this.handlers.has(envelope.namespace));
    if (!verdict.allowed || !verdict.shed) {
      return deny(verdict.code ?? CommonCode.SHED_NOT_ALLOWED, verdict.message ?? verdict.rule);
    }
    const policy = verdict.shed;
    const namespace = envelope.namespace as Namespace;
    const handler = this.handlers.get(namespace)!;
    if (!operation) {
      return deny(CommonCode.INVALID_REQUEST, 'the payload has no "operation"');
    }
    if (operation === 'ping') return { status: 'ok' };

    return this.serve(handler, policy, namespace, operation, envelope, base, current.audit.required);
  }

  /**
   * Refuse a request without serving it: the shed has too many waiting for
   * their turn (turns.ts). Audited like any denial, and its id taken, so a
   * re-delivery is not answered a second time. Undefined when nothing must
   * be answered (an event, a repeated id).
   */
  async overloaded(envelope: Envelope, from: ShedOrigin | string, options: SinkOptions = {}): Promise<Payload | undefined> {
    const origin = typeof from === 'string' ? directShed(from) : from;
    const shed = shedKey(origin);
    if (envelope.type !== 'request' || (!options.freshId && !this.dedupe.take(shed, envelope.id))) return undefined;
    const operation = typeof envelope.payload.operation === 'string' ? envelope.payload.operation : '';
    const code = CommonCode.RATE_LIMITED;
    await this.record({
      ...this.auditBase(envelope, origin, operation),
      result: 'denied',
      detail: 'too many requests waiting for their turn',
      approval: 'none',
      code,
    });
    return errorPayload(code, `the host broker has too many requests of shed ${shed} waiting for their turn; retry in a moment`);
  }

  private async serve(
    handler: NamespaceHandler,
    policy: EffectiveShed,
    namespace: Namespace,
    operation: string,
    envelope: Envelope,
    base: AuditBase,
    auditRequired: boolean,
  ): Promise<Payload> {
    const quiet = QUIET_OPERATIONS.has(operation);
    const approver = this.options.approver ?? noApprover;
    const ctx: RequestContext = {
      shed: policy.name,
      requestId: envelope.id,
      namespace,
      operation,
      policy,
      log: this.options.log,
      signal: this.abort.signal,
      approval: 'none',
      async approve(subject) {
        try {
          ctx.approval = await approver({ shed: policy, namespace, operation }, subject);
        } catch (err) {
          ctx.approval = 'denied';
          throw err;
        }
      },
    };
    let release: (() => void) | undefined;
    let answer: Payload;
    let entry: AuditRecord;
    try {
      if (this.options.admission) {
        release = await this.options.admission({ shed: policy, namespace, operation, requestId: envelope.id, quiet });
      }
      answer = await handler.handle(operation, envelope.payload, ctx);
      entry = { ...base, result: 'ok', detail: ctx.detail ?? '', approval: ctx.approval };
    } catch (err) {
      if (err instanceof BrokerError) {
        answer = errorPayload(err.code, err.message);
        entry = { ...base, result: err.result, detail: err.options.detail ?? ctx.detail ?? err.code, approval: ctx.approval, code: err.code };
      } else {
        // The text of an unexpected error may quote input or key material: the
        // guest gets a generic message, the host log the error's kind and where.
        this.options.log.error(`shed ${policy.name}: ${namespace} ${operation} failed (request ${envelope.id}): ${describeUnexpected(err)}`);
        answer = errorPayload(CommonCode.INTERNAL_ERROR, `internal error in the ${namespace} handler; see the shed-host-agent log on the host (request ${envelope.id})`);
        entry = { ...base, result: 'error', detail: CommonCode.INTERNAL_ERROR, approval: ctx.approval };
      }
    } finally {
      release?.();
    }
    if (quiet) {
      // A failing audit log is loud in status answers too; its cause (and the
      // host's paths) stay in the host log.
      if (operation === 'status' && this.options.audit.lastError && !isErrorPayload(answer)) {
        return { ...answer, audit: 'failing' };
      }
      return answer;
    }
    if (!(await this.record(entry)) && auditRequired) {
      return errorPayload(CommonCode.AUDIT_UNAVAILABLE, 'the host cannot write its audit log and policy requires it (audit.required); see the shed-host-agent log on the host');
    }
    return answer;
  }

  /**
   * A request id carries its creation time (UUIDv7). One older than the
   * dedupe window (less the allowed skew, so an id is still remembered for as
   * long as it is accepted) cannot be told from a replay; one dated ahead of
   * this host's clock by more than the skew is refused too.
   */
  private checkIdTime(id: string): { code: string; message: string } | undefined {
    const at = uuidv7Time(id);
    if (at === undefined) {
      return { code: CommonCode.INVALID_REQUEST, message: 'the request id is not a UUIDv7 (time-ordered UUID, as shed-agent makes them)' };
    }
    const now = Date.now();
    const skew = Math.min(this.options.maxClockSkewMs ?? MAX_CLOCK_SKEW_MS, this.dedupe.windowMs / 2);
    if (at > now + skew) {
      return { code: CommonCode.INVALID_REQUEST, message: `the request id is dated ${Math.round((at - now) / 1000)} s ahead of the host's clock; sync the guest's clock (NTP) and retry` };
    }
    const maxAge = this.dedupe.windowMs - skew;
    if (now - at > maxAge) {
      return { code: CommonCode.DUPLICATE_REQUEST, message: `the request id is ${Math.round((now - at) / 1000)} s old, older than the ${Math.round(maxAge / 1000)} s replay window: the host cannot tell it from a replay; send a new request (and check the guest's clock)` };
    }
    return undefined;
  }

  /** Who asked for what, as an audit line names it: what the guest named is written as it is only when this broker knows it. */
  private auditBase(envelope: Envelope, origin: ShedOrigin, operation: string): AuditBase {
    const known = this.handlers.get(envelope.namespace)?.operations;
    return {
      shed: shedKey(origin),
      server: origin.via,
      ns: auditName(envelope.namespace, this.handlers.has(envelope.namespace)),
      op: operation ? auditName(operation, known ? operation === 'ping' || known.includes(operation) : isOperation(envelope.namespace, operation)) : '(none)',
      request_id: envelope.id,
    };
  }

  /** Write an audit line; false (and a loud log line) when it could not be written. */
  private async record(record: AuditRecord): Promise<boolean> {
    const { code, ...entry } = record;
    try {
      // The governor (audit/governor.ts) takes the code of a denial; a plain sink the line alone.
      await this.options.audit.write(Object.assign({ ts: new Date().toISOString(), ...entry }, code && entry.result === 'denied' ? { code } : {}));
      return true;
    } catch (err) {
      this.options.log.error(`audit log write failed, ${entry.ns} ${entry.op} for shed ${entry.shed} is unaudited: ${(err as Error).message}`);
      return false;
    }
  }

  /** Abort in-flight handlers and close them. */
  async close(): Promise<void> {
    this.abort.abort();
    this.throttle.close();
    await Promise.all([...this.handlers.values()].map((h) => h.close?.()));
  }
}

const noApprover: Approver = async ({ shed }) => {
  if (shed.approval.gate === 'none') return 'none';
  throw new BrokerError(CommonCode.APPROVAL_DENIED, `approval gate ${shed.approval.gate} is not available on this host`);
};

function describeUnexpected(err: unknown): string {
  if (!(err instanceof Error)) return typeof err;
  const code = (err as NodeJS.ErrnoException).code;
  const where = (err.stack ?? '').split('\n').slice(1, 4).map((l) => l.trim()).join(' < ');
  return `${err.name}${code ? ` ${code}` : ''} at ${where}`;
}
