/**
 * The status answer of a running broker (answer.ts), built on each request
 * from what the broker holds in memory: no backend is asked, no file read
 * (one stat of the audit directory), so a status request costs the broker a
 * few microseconds per shed.
 *
 * Text that others wrote (a shed-server's error message in a connection
 * state, a policy problem quoting a file) is escaped and bounded here with
 * protocol/text.ts, so the answer is safe to print as it is; the client
 * escapes again what it prints.
 */
import fs from 'node:fs';
import path from 'node:path';
import { printable } from '../../protocol/text.js';
import { VERSION } from '../../protocol/version.js';
import type { Broker } from '../broker.js';
import { STATUS_FORMAT, type StatusAnswer } from './answer.js';

/** The longest connection state or reason line kept. */
const MAX_STATE_CHARS = 300;
/** Lines of a refused reload's reason kept (a policy with many problems lists them all in the log). */
const MAX_REASON_LINES = 20;

export interface StatusMeta {
  /** The policy file `run` was given. */
  configPath: string;
  /** When the process started (ISO). */
  startedAt: string;
  pid?: number;
}

export function statusAnswer(broker: Broker, meta: StatusMeta): StatusAnswer {
  const policy = broker.policyInForce;
  const reload = broker.lastReload;
  const direct = broker.directSockets;
  const audit = broker.auditHealth;
  const auditDir = audit.dir ?? policy?.audit.dir ?? '';
  const writable = auditDir ? probeWritable(auditDir) : { writable: false, problem: 'not known yet (the policy is being read)' };
  const directState = direct?.state() ?? {};
  const counts = direct?.connections;
  const named = policy ? [...policy.namedSheds(), ...(policy.hasWildcard() ? ['*'] : [])] : [];
  return {
    format: STATUS_FORMAT,
    version: VERSION,
    pid: meta.pid ?? process.pid,
    started_at: meta.startedAt,
    phase: broker.phase,
    config: {
      path: meta.configPath,
      files: policy?.files ?? [],
      ...(broker.policyLoadedAt ? { loaded_at: broker.policyLoadedAt } : {}),
      ...(reload ? {
        last_reload: {
          at: reload.at,
          result: reload.applied ? 'applied' as const : 'refused' as const,
          ...(reload.reason !== undefined ? { reason: reasonLines(reload.reason) } : {}),
        },
      } : {}),
    },
    servers: broker.servers.map((s) => ({
      name: s.name,
      url: s.url,
      namespaces: escapeValues(s.state()),
      ...(s.problem !== undefined && { problem: printable(s.problem, 512) }),
    })),
    direct: {
      // The running transport's directory (an edit of it applies at the next start); the policy's while it starts.
      enabled: direct !== undefined || (policy?.direct.enabled ?? false),
      ...(direct ? { sockets_dir: direct.socketsDir } : policy?.direct.enabled ? { sockets_dir: policy.direct.socketsDir } : {}),
      connections: counts?.total ?? 0,
      ...(direct ? { max_connections: direct.maxConnections } : {}),
      sheds: Object.keys(directState).sort().map((name) => ({
        name,
        socket: direct!.socketPath(name),
        state: printable(directState[name]!, MAX_STATE_CHARS),
        connections: counts?.sheds[name] ?? 0,
      })),
    },
    // Each named shed's gate; a named server's sheds by their key (web@mini2).
    approvals: [
      ...named.map((shed) => [shed, undefined] as const),
      ...(policy?.serverScopes() ?? []).flatMap((server) => policy!.namedShedsOf(server).map((shed) => [shed, server] as const)),
    ].flatMap(([shed, server]) => {
      const effective = policy!.resolve(shed, server);
      const approval = effective?.approval;
      return approval ? [{ shed: effective.name, gate: approval.gate, policy: approval.policy, applies_to: [...approval.applies_to] }] : [];
    }),
    audit: {
      dir: auditDir,
      writable: writable.writable,
      ...(writable.problem ? { writable_problem: writable.problem } : {}),
      ...(audit.lastError !== undefined ? { last_error: printable(audit.lastError, MAX_STATE_CHARS) } : {}),
      ...(audit.lastErrorAt ? { last_error_at: audit.lastErrorAt } : {}),
      failed_lines: audit.failedLines,
      summarised_denials: audit.summarisedDenials,
      summary_lines: audit.summaryLines,
      required: audit.required,
    },
  };
}

function escapeValues(record: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(record)) out[printable(k, 128)] = printable(v, MAX_STATE_CHARS);
  return out;
}

/** A multi-line error as at most MAX_REASON_LINES escaped lines joined by `\n` (the only control character left in). */
function reasonLines(text: string): string {
  const lines = text.split('\n').map((l) => l.trim()).filter(Boolean);
  const kept = lines.slice(0, MAX_REASON_LINES).map((l) => printable(l, MAX_STATE_CHARS));
  if (lines.length > MAX_REASON_LINES) kept.push(`… and ${lines.length - MAX_REASON_LINES} more lines (see the shed-host-agent log)`);
  return kept.join('\n');
}

/** Whether the broker can write `dir` now, or create it; why not, when not. */
export function probeWritable(dir: string): { writable: boolean; problem?: string } {
  try {
    const st = fs.statSync(dir);
    if (!st.isDirectory()) return { writable: false, problem: `${dir} is not a directory` };
    fs.accessSync(dir, fs.constants.W_OK | fs.constants.X_OK);
    return { writable: true };
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'ENOENT') return { writable: false, problem: `${dir} is not writable (${code})` };
  }
  let parent = path.dirname(dir);
  while (!fs.existsSync(parent) && path.dirname(parent) !== parent) parent = path.dirname(parent);
  try {
    fs.accessSync(parent, fs.constants.W_OK | fs.constants.X_OK);
    return { writable: true };
  } catch (err) {
    return { writable: false, problem: `${dir} does not exist and ${parent} is not writable (${(err as NodeJS.ErrnoException).code})` };
  }
}
