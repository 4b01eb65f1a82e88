/**
 * `shed-ext status`: ask each namespace's host handler for its `status`,
 * concurrently, 2 s each, and say per namespace whether this VM is connected
 * and what the host will serve it. Status answers carry counts, a mode, a role
 * ARN and an expiry: never a secret.
 */
import { BusClient, BusError } from '../bus-client.js';
import { NAMESPACES, type Namespace, type Payload } from '../../protocol/envelope.js';

/** PROTOCOL/issue: each namespace gets 2 s. */
export const STATUS_DEADLINE_MS = 2000;

export type NamespaceState =
  /** The host answered the status operation. */
  | 'connected'
  /** The host answered, and its policy turns this namespace off for this shed (on purpose). */
  | 'disabled'
  /** The host answered, but its backend for this namespace cannot serve. */
  | 'unavailable'
  /** The host answered with a refusal (shed not in its policy, ...). */
  | 'refused'
  /** No answer from the host: shed-agent down, no channel, broker not running, deadline. */
  | 'not_connected';

export interface NamespaceStatus {
  namespace: Namespace;
  state: NamespaceState;
  /** The host's status answer, when it gave one. */
  status?: Payload;
  /** Why not connected: the bus error's code, text and what to do. */
  error?: { code: string; message: string; hint: string };
  /** The human summary in parentheses. */
  summary: string;
}

export interface StatusReport {
  publish_url: string;
  /** Every namespace connected (or disabled on purpose by the host policy). */
  ok: boolean;
  namespaces: NamespaceStatus[];
}

/** What `collectStatus` needs of the bus: BusClient fits. */
export interface StatusBus {
  publish(namespace: string, payload: Payload, options?: { deadlineMs?: number }): Promise<Payload>;
}

/** Query every namespace at once; never rejects. */
export async function collectStatus(
  bus: StatusBus,
  publishUrl: string,
  options: { deadlineMs?: number; namespaces?: readonly Namespace[] } = {},
): Promise<StatusReport> {
  const deadlineMs = options.deadlineMs ?? STATUS_DEADLINE_MS;
  const namespaces = await Promise.all((options.namespaces ?? NAMESPACES).map((ns) => statusOf(bus, ns, deadlineMs)));
  return { publish_url: publishUrl, ok: namespaces.every((n) => n.state === 'connected' || n.state === 'disabled'), namespaces };
}

async function statusOf(bus: StatusBus, namespace: Namespace, deadlineMs: number): Promise<NamespaceStatus> {
  let status: Payload;
  try {
    status = await bus.publish(namespace, { operation: 'status' }, { deadlineMs });
  } catch (err) {
    return fromError(bus, namespace, err, deadlineMs);
  }
  if (status.connected === false) {
    // The host answered, but its backend for this namespace cannot serve (no agent, no Docker config).
    return { namespace, state: 'unavailable', status, summary: describeUnavailable(namespace, status) };
  }
  const summary = describeStatus(namespace, status);
  if (status.audit === 'failing') {
    const warning = 'warning: the host cannot write its audit log; see the shed-host-agent log on the host';
    return { namespace, state: 'connected', status, summary: summary ? `${summary}; ${warning}` : warning };
  }
  return { namespace, state: 'connected', status, summary };
}

async function fromError(bus: StatusBus, namespace: Namespace, err: unknown, deadlineMs: number): Promise<NamespaceStatus> {
  if (!(err instanceof BusError)) {
    const message = err instanceof Error ? err.message : String(err);
    return { namespace, state: 'not_connected', error: { code: 'INTERNAL_ERROR', message, hint: '' }, summary: message };
  }
  const error = { code: err.code, message: err.message, hint: err.hint };
  if (err.kind === 'host' && err.code === 'UNKNOWN_OPERATION') {
    // An older host without `status`: connectivity is still worth knowing.
    try {
      await bus.publish(namespace, { operation: 'ping' }, { deadlineMs });
      return { namespace, state: 'connected', summary: 'the host is too old to report details; upgrade shed-host-agent' };
    } catch (pingErr) {
      return fromError(bus, namespace, pingErr, deadlineMs);
    }
  }
  if (err.kind === 'host' && err.code === 'NAMESPACE_DISABLED') {
    return { namespace, state: 'disabled', error, summary: err.message };
  }
  if (err.kind === 'host') return { namespace, state: 'refused', error, summary: err.describe() };
  return { namespace, state: 'not_connected', error, summary: err.describe() };
}

/** `agent-forward mode, 3 keys available`, `role arn:…, cached until …`, `2 registries`, `2 allowed hosts or repositories`. */
export function describeStatus(namespace: Namespace, status: Payload): string {
  switch (namespace) {
    case 'ssh-agent': {
      const parts: string[] = [];
      if (typeof status.mode === 'string' && status.mode) parts.push(`${status.mode} mode`);
      if (typeof status.key_count === 'number') parts.push(`${plural(status.key_count, 'key')} available`);
      return parts.join(', ');
    }
    case 'aws-credentials': {
      if (typeof status.role !== 'string' || !status.role) return 'no role assigned to this shed by the host policy';
      const cached = typeof status.cached_until === 'string' && status.cached_until
        ? `cached until ${status.cached_until}`
        : 'not cached yet';
      return `role ${status.role}, ${cached}`;
    }
    case 'docker-credentials': {
      if (status.allow_all === true) return 'all registries';
      return typeof status.registry_count === 'number' ? plural(status.registry_count, 'registry', 'registries') : '';
    }
    case 'git-credentials': {
      if (typeof status.allowed_count !== 'number') return '';
      if (status.allowed_count === 0) return 'no git hosts allowed for this shed by the host policy';
      const sources = typeof status.source_count === 'number' && status.source_count > 0 ? `, ${plural(status.source_count, 'token command')}` : '';
      return `${plural(status.allowed_count, 'allowed host or repository', 'allowed hosts or repositories')}${sources}`;
    }
  }
}

/** Why the host's backend cannot serve: its own words when it gives them. */
export function describeUnavailable(namespace: Namespace, status: Payload): string {
  for (const key of ['problem', 'error', 'reason']) {
    const value = status[key];
    if (typeof value === 'string' && value) return value.slice(0, 500);
  }
  switch (namespace) {
    case 'ssh-agent':
      return 'the host has no SSH agent or keys to sign with; see the shed-host-agent log on the host';
    case 'aws-credentials':
      return 'the host cannot issue AWS credentials; see the shed-host-agent log on the host';
    case 'docker-credentials':
      return 'the host has no Docker config to read registry credentials from: run `docker login <registry>` on the host';
    case 'git-credentials':
      return 'the host cannot run git to look up credentials; see the shed-host-agent log on the host';
  }
}

function plural(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}

const MARK: Record<NamespaceState, string> = {
  connected: '✓ connected',
  disabled: '- disabled',
  unavailable: '✗ unavailable',
  refused: '✗ refused',
  not_connected: '✗ not connected',
};

/** One line per namespace, as the original shed-ext printed them. */
export function formatReport(report: StatusReport): string {
  return report.namespaces
    .map((n) => `${n.namespace}: ${MARK[n.state]}${n.summary ? ` (${oneLine(n.summary)})` : ''}\n`)
    .join('');
}

function oneLine(text: string): string {
  return text.replace(/\s*\n\s*/g, ' ');
}

/** Run the whole status check against `publishUrl`. */
export async function runStatus(publishUrl: string, deadlineMs = STATUS_DEADLINE_MS): Promise<StatusReport> {
  const client = new BusClient({ publishUrl, deadlineMs });
  try {
    return await collectStatus(client, publishUrl, { deadlineMs });
  } finally {
    client.close();
  }
}
