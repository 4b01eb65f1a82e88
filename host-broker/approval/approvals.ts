/**
 * The approval policy around the gates: which requests are gated, how long
 * an approval lasts, and one prompt for many waiters.
 *
 * - Gated: ssh-agent requests that ask (`sign`) whenever the shed has a gate;
 *   aws-credentials ones only when `approval.applies_to` lists
 *   aws-credentials. Everything else answers 'none'.
 * - `per-request`: every request asks. `per-session`: one approval lasts
 *   `ttl` for every shed (of that namespace, through the same gate).
 *   `per-shed`: one approval lasts `ttl` for that shed. An approval is valid
 *   for the shorter of the ttl it was granted under and the asking shed's.
 * - Single flight: while a prompt is open, other requests that it would
 *   cover wait for it instead of opening their own. Its initiator is audited
 *   `prompt`, the waiters `cached`; a denial denies them all and is not
 *   remembered (the next request asks again).
 */
import { CommonCode } from '../../protocol/codes.js';
import type { Namespace } from '../../protocol/envelope.js';
import type { Logger } from '../../protocol/log.js';
import type { Approver } from '../dispatch.js';
import { BrokerError, type ApprovalOutcome, type ApprovalSubject } from '../handler.js';
import type { EffectiveApproval, EffectiveShed } from '../policy/effective.js';
import type { Policy } from '../policy/policy.js';
import { formatDuration } from '../policy/schema.js';
import { askTouchId, checkGate, CommandRunner, type GateRequest, type GateVerdict } from './gates.js';

/** Past this many remembered approvals, expired ones are dropped. */
const MAX_GRANTS = 1024;

export interface ApprovalsOptions {
  log: Logger;
  now?: () => number;
}

interface Grant {
  at: number;
  ttl: number;
}

/** Does the shed's gate guard this namespace? */
export function gated(approval: EffectiveApproval, namespace: Namespace): boolean {
  if (approval.gate === 'none') return false;
  if (namespace === 'ssh-agent') return true;
  if (namespace === 'aws-credentials') return approval.applies_to.includes('aws-credentials');
  return false;
}

export class Approvals {
  private readonly grants = new Map<string, Grant>();
  private readonly flights = new Map<string, Promise<void>>();
  private readonly runner = new CommandRunner();
  private readonly now: () => number;

  constructor(private readonly options: ApprovalsOptions) {
    this.now = options.now ?? Date.now;
  }

  /** The dispatcher's approver. */
  readonly approver: Approver = async ({ shed, namespace, operation }, subject) => this.approve(shed, namespace, operation, subject);

  /**
   * Every gate the policy configures (defaults, named sheds, "*"), checked
   * for this host: the problems, each naming the shed and the fix. Empty
   * when all can work.
   */
  async check(policy: Policy): Promise<string[]> {
    const sheds = [...policy.namedSheds(), ...(policy.hasWildcard() ? ['*'] : [])];
    const seen = new Map<string, string | undefined>();
    const problems: string[] = [];
    for (const name of sheds) {
      const approval = policy.resolve(name)?.approval;
      if (!approval) continue;
      const key = JSON.stringify([approval.gate, approval.command ?? []]);
      if (!seen.has(key)) seen.set(key, await checkGate(approval));
      const problem = seen.get(key);
      if (problem) problems.push(`shed ${name === '*' ? '"*"' : name}: ${problem}`);
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
    const request: GateRequest = { shed: shed.name, namespace, operation, subject };
    if (approval.policy === 'per-request') {
      await this.ask(approval, request);
      return 'prompt';
    }
    const key = this.keyOf(approval, shed.name, namespace);
    const grant = this.grants.get(key);
    if (grant && this.now() - grant.at < Math.min(grant.ttl, approval.ttl)) return 'cached';
    const open = this.flights.get(key);
    if (open) {
      await open;
      return 'cached';
    }
    const flight = this.ask(approval, request).then(() => this.remember(key, approval.ttl));
    this.flights.set(key, flight);
    try {
      await flight;
    } finally {
      this.flights.delete(key);
    }
    return 'prompt';
  }

  /** Same gate, same scope, same namespace → same approval. */
  private keyOf(approval: EffectiveApproval, shed: string, namespace: Namespace): string {
    const scope = approval.policy === 'per-shed' ? `shed:${shed}` : 'session';
    return JSON.stringify([approval.gate, approval.command ?? [], scope, namespace]);
  }

  private remember(key: string, ttl: number): void {
    const now = this.now();
    if (this.grants.size >= MAX_GRANTS) {
      for (const [k, g] of this.grants) if (now - g.at >= g.ttl) this.grants.delete(k);
    }
    this.grants.set(key, { at: now, ttl });
  }

  /** Ask the gate once; throws APPROVAL_DENIED unless approved. */
  private async ask(approval: EffectiveApproval, request: GateRequest): Promise<void> {
    const { log } = this.options;
    const what = `${request.namespace} ${request.operation} for shed ${request.shed} (${request.subject.subject})`;
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
