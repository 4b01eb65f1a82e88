/**
 * The approval policy around the gates: which requests are gated, how long
 * an approval lasts, and one prompt for many waiters.
 *
 * - Gated: the namespaces `approval.applies_to` lists (`[ssh-agent]` by
 *   default) when the shed has a gate (`gated`); for them, the requests that
 *   ask (ssh `sign`, aws `get_credentials`). Everything else answers 'none'.
 * - `per-request`: every request asks. `per-shed` (the default): one
 *   approval lasts `ttl` for that shed. `per-session`: one approval lasts
 *   `ttl` for every shed (of that namespace, through the same gate), and the
 *   prompt says so. An approval is valid for the shorter of the ttl it was
 *   granted under and the asking shed's.
 * - Single flight, per shed: while a shed's prompt is open, that shed's other
 *   requests it would cover wait for it instead of opening their own. Its
 *   initiator is audited `prompt`, the waiters `cached`; a denial denies
 *   them and is not remembered (the next request asks again). Another
 *   shed never waits on that prompt, nor is denied by it: it asks for itself
 *   (under per-session, an approval given meanwhile serves it).
 */
import { CommonCode } from '../../protocol/codes.js';
import type { Namespace } from '../../protocol/envelope.js';
import type { Logger } from '../../protocol/log.js';
import type { Approver } from '../dispatch.js';
import { BrokerError, type ApprovalOutcome, type ApprovalSubject } from '../handler.js';
import type { EffectiveApproval, EffectiveShed } from '../policy/effective.js';
import type { Policy } from '../policy/policy.js';
import { formatDuration } from '../policy/schema.js';
import { printable } from '../../protocol/text.js';
import { BoundedMap } from '../bounded-map.js';
import { askTouchId, checkGate, CommandRunner, type GateRequest, type GateVerdict } from './gates.js';

/** Approvals remembered, and prompts open, at most; past that the oldest approval is forgotten (its shed asks again). */
const MAX_GRANTS = 1024;
const MAX_FLIGHTS = 1024;

export interface ApprovalsOptions {
  log: Logger;
  now?: () => number;
}

interface Grant {
  at: number;
  ttl: number;
}

/**
 * Does the shed's gate guard this namespace? The one answer to that
 * question: the approver, the handlers (which check a key is held before
 * anyone is asked) and `explain` all ask here. A gate guards what
 * `approval.applies_to` lists (`[ssh-agent]` by default), nothing else.
 */
export function gated(approval: EffectiveApproval, namespace: Namespace): boolean {
  return approval.gate !== 'none' && (approval.applies_to as readonly string[]).includes(namespace);
}

export class Approvals {
  private readonly grants: BoundedMap<string, Grant>;
  private readonly flights: BoundedMap<string, Promise<void>>;
  private readonly runner = new CommandRunner();
  private readonly now: () => number;

  constructor(private readonly options: ApprovalsOptions) {
    this.now = options.now ?? Date.now;
    this.grants = new BoundedMap({ maxEntries: MAX_GRANTS, now: this.now });
    // An open prompt is never forgotten; past the cap a new one is refused.
    this.flights = new BoundedMap({ maxEntries: MAX_FLIGHTS, evictable: () => false, now: this.now });
  }

  /** The dispatcher's approver. */
  readonly approver: Approver = async ({ shed, namespace, operation }, subject) => this.approve(shed, namespace, operation, subject);

  /**
   * Every gate the policy configures (defaults, named sheds, "*"), checked
   * for this host: the problems, each naming the shed and the fix. Empty
   * when all can work.
   */
  async check(policy: Policy): Promise<string[]> {
    const sheds = [undefined, ...policy.serverScopes()].flatMap((server) => policy.listedSheds(server).map((name) => ({ name, server })));
    const seen = new Map<string, string | undefined>();
    const problems: string[] = [];
    for (const { name, server } of sheds) {
      const approval = policy.resolve(name, server)?.approval;
      if (!approval) continue;
      const key = JSON.stringify([approval.gate, approval.command ?? []]);
      if (!seen.has(key)) seen.set(key, await checkGate(approval));
      const problem = seen.get(key);
      if (problem) problems.push(`shed ${name === '*' ? '"*"' : name}${server ? ` of server ${server}` : ''}: ${problem}`);
    }
    return problems;
  }

  /** Deny what is waiting on a gate command (shutdown) and forget approvals. */
  close(): void {
    this.runner.close();
    this.grants.clear();
  }

  /** Forget every remembered approval (the next gated request asks). */
  forget(): void {
    this.grants.clear();
  }

  private async approve(shed: EffectiveShed, namespace: Namespace, operation: string, subject: ApprovalSubject): Promise<ApprovalOutcome> {
    const approval = shed.approval;
    if (!gated(approval, namespace)) return 'none';
    const scope = approval.policy === 'per-request' ? 'request' : approval.policy === 'per-shed' ? 'shed' : 'session';
    const request: GateRequest = { shed: shed.name, namespace, operation, subject, scope, ttl: approval.ttl };
    if (approval.policy === 'per-request') {
      await this.ask(approval, request);
      return 'prompt';
    }
    const key = this.keyOf(approval, scope === 'shed' ? `shed:${shed.name}` : 'session', namespace);
    const grant = this.grants.get(key);
    if (grant && this.now() - grant.at < Math.min(grant.ttl, approval.ttl)) return 'cached';
    // One prompt at a time per shed: this shed's other requests wait for it; other sheds ask for themselves.
    const flightKey = this.keyOf(approval, `shed:${shed.name}`, namespace);
    const open = this.flights.get(flightKey);
    if (open) {
      await open;
      return 'cached';
    }
    let settle!: { resolve: () => void; reject: (err: unknown) => void };
    const flight = new Promise<void>((resolve, reject) => (settle = { resolve, reject }));
    flight.catch(() => undefined);
    if (!this.flights.set(flightKey, flight)) {
      throw new BrokerError(CommonCode.APPROVAL_DENIED, 'too many approval prompts are open on the host; retry once they are answered', { detail: `${subject.subject} (too many prompts open)` });
    }
    try {
      await this.ask(approval, request);
      this.remember(key, approval.ttl);
      settle.resolve();
    } catch (err) {
      settle.reject(err);
      throw err;
    } finally {
      this.flights.delete(flightKey);
    }
    return 'prompt';
  }

  /** Same gate, same scope, same namespace → same approval. */
  private keyOf(approval: EffectiveApproval, scope: string, namespace: Namespace): string {
    return JSON.stringify([approval.gate, approval.command ?? [], scope, namespace]);
  }

  private remember(key: string, ttl: number): void {
    this.grants.set(key, { at: this.now(), ttl }, ttl);
  }

  /** Ask the gate once; throws APPROVAL_DENIED unless approved. */
  private async ask(approval: EffectiveApproval, request: GateRequest): Promise<void> {
    const { log } = this.options;
    const what = `${request.namespace} ${request.operation} for shed ${request.shed} (${printable(request.subject.subject, 200)})`;
    log.info(`approval: asking gate ${approval.gate} about ${what}`);
    let verdict: GateVerdict & { stderr?: string };
    if (approval.gate === 'command') verdict = await this.runner.run(approval.command ?? [], request, approval.timeout);
    else if (approval.gate === 'touchid') verdict = await askTouchId(request, approval.timeout);
    else verdict = { approved: false, reason: `unknown gate ${String(approval.gate)}` };
    if (verdict.approved) {
      log.info(`approval: granted ${what}`);
      return;
    }
    const said = verdict.stderr ? `; it said: ${verdict.stderr.split('\n')[0]!.slice(0, 200)}` : '';
    log.warn(`approval: denied ${what}: ${verdict.reason}${said}`);
    const message = verdict.timedOut
      ? `nobody approved ${request.subject.description} for shed ${request.shed} on the host within ${formatDuration(approval.timeout)}; approve it when the host asks, then retry`
      : `the host's approval gate refused ${request.subject.description} for shed ${request.shed}; approve it when the host asks, or see approval in the host policy`;
    throw new BrokerError(CommonCode.APPROVAL_DENIED, message, { detail: `${request.subject.subject} (${verdict.reason})` });
  }
}
