/**
 * Asking the running daemon over its status socket (server.ts). Tells apart
 * the three outcomes a user must act on differently: an answer; nothing
 * answers (not running: NotRunning, exit 1); something answers that is not a
 * shed-host-agent status (StatusGarbage, exit 2).
 */
import net from 'node:net';
import { describeIssues } from '../../protocol/envelope.js';
import { printable } from '../../protocol/text.js';
import { MAX_ANSWER_BYTES, STATUS_FORMAT, STATUS_REQUEST, StatusAnswer } from './answer.js';

/** Nothing answers on the socket, or it cannot be opened. */
export class NotRunning extends Error {
  override readonly name = 'NotRunning';
}

/** The socket answered, but not with a status this client understands. */
export class StatusGarbage extends Error {
  override readonly name = 'StatusGarbage';
}

export const DEFAULT_QUERY_TIMEOUT_MS = 5000;

/** How a user starts the daemon on this platform. */
export function startHint(platform = process.platform): string {
  return platform === 'darwin'
    ? '`launchctl kickstart gui/$(id -u)/dev.shed.host-agent` (or `shed-host-agent run`)'
    : '`systemctl --user start shed-host-agent` (or `shed-host-agent run`)';
}

export async function queryStatus(socketPath: string, timeoutMs = DEFAULT_QUERY_TIMEOUT_MS): Promise<StatusAnswer> {
  const text = await exchange(socketPath, timeoutMs);
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new StatusGarbage(`${socketPath} answered ${text.length} bytes that are not JSON (${JSON.stringify(printable(text, 40))}): is another program using that path? Stop it, or give shed-host-agent its own --state-dir`);
  }
  const record = typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
  if (record && typeof record.format === 'number' && record.format !== STATUS_FORMAT) {
    const version = typeof record.version === 'string' ? ` (shed-host-agent ${printable(record.version, 40)})` : '';
    throw new StatusGarbage(`the daemon on ${socketPath}${version} answers status format ${record.format}; this shed-host-agent reads format ${STATUS_FORMAT}: run the \`status\` of the same version as the daemon`);
  }
  const parsed = StatusAnswer.safeParse(value);
  if (!parsed.success) {
    throw new StatusGarbage(`${socketPath} answered JSON that is not a shed-host-agent status (${describeIssues(parsed.error)}): is another program using that path?`);
  }
  return parsed.data;
}

/** Send the request, read the answer to its end: at most MAX_ANSWER_BYTES, within timeoutMs. */
function exchange(socketPath: string, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(socketPath);
    const chunks: Buffer[] = [];
    let size = 0;
    let settled = false;
    const finish = (err: Error | undefined, text?: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      if (err) reject(err);
      else resolve(text!);
    };
    const timer = setTimeout(() => finish(new NotRunning(
      `shed-host-agent did not answer on ${socketPath} within ${timeoutMs / 1000} s: it may be hung; check its log (journalctl --user -u shed-host-agent), or restart it`)), timeoutMs);
    socket.once('connect', () => socket.write(STATUS_REQUEST));
    socket.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > MAX_ANSWER_BYTES) {
        finish(new StatusGarbage(`${socketPath} answered more than ${MAX_ANSWER_BYTES} bytes, which no status is: is another program using that path?`));
        return;
      }
      chunks.push(chunk);
    });
    socket.once('end', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      if (text.length === 0) {
        finish(new StatusGarbage(`${socketPath} accepted the status request and closed without an answer: is another program using that path? (shed-host-agent's log says why it dropped a client)`));
        return;
      }
      finish(undefined, text.endsWith('\n') ? text.slice(0, -1) : text);
    });
    socket.once('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED' || err.code === 'ENOTSOCK') {
        finish(new NotRunning(`shed-host-agent is not running (no answer on ${socketPath}); start it with ${startHint()}. A daemon run with --state-dir DIR answers \`shed-host-agent status --state-dir DIR\``));
      } else if (err.code === 'EACCES' || err.code === 'EPERM') {
        finish(new NotRunning(`shed-host-agent status: cannot open the status socket ${socketPath} (${err.code}): run \`shed-host-agent status\` as the user who runs the daemon`));
      } else if (err.code === 'ECONNRESET' || err.code === 'EPIPE') {
        finish(new StatusGarbage(`${socketPath} dropped the status request (${err.code}): is another program using that path?`));
      } else {
        finish(new NotRunning(`shed-host-agent status: cannot reach shed-host-agent on ${socketPath}: ${err.code ?? err.message}`));
      }
    });
  });
}
