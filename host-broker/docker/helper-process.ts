/**
 * Running a host-side Docker credential helper (`docker-credential-<name>
 * get|list`) the way Docker does: no shell, the server URL on stdin, JSON on
 * stdout. Bounded in time and output; a hung helper (and anything it started)
 * is killed. Its stderr goes to the host log only; its stdout may hold a
 * secret and is never logged.
 */
import { CREDENTIALS_NOT_FOUND_TEXT } from '../../protocol/docker-credentials.js';
import type { Logger } from '../../protocol/log.js';
import { BrokerError } from '../handler.js';
import { ProgramError, runProgram, type ProgramResult } from '../host-program.js';

export const HELPER_TIMEOUT_MS = 5000;
/** More than any real helper prints; a helper that floods is cut off. */
const MAX_OUTPUT_BYTES = 1024 * 1024;

export interface HelperOptions {
  env: NodeJS.ProcessEnv;
  log: Logger;
  timeoutMs?: number;
  signal?: AbortSignal;
}

interface HelperRun {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  /** Its last 4096 characters. */
  stderr: string;
}

export function helperCommand(helper: string): string {
  return `docker-credential-${helper}`;
}

/** One line of a helper's stderr for the host log. */
function oneLine(text: string, max = 500): string {
  const flat = text.trim().replace(/\s*\n\s*/g, ' | ');
  return flat.length > max ? `${flat.slice(0, max)}…` : flat;
}

function helperFailed(command: string, why: string, detail: string): BrokerError {
  return new BrokerError('HELPER_FAILED', `the host's credential helper ${command} ${why}; see the shed-host-agent log on the host`, { result: 'error', detail });
}

/** Run `docker-credential-<helper> <action>` with `input` on stdin. Throws BrokerError HELPER_FAILED when it cannot run or does not finish. */
export async function runHelper(helper: string, action: 'get' | 'list', input: string, options: HelperOptions): Promise<HelperRun> {
  const command = helperCommand(helper);
  const timeoutMs = options.timeoutMs ?? HELPER_TIMEOUT_MS;
  let run: ProgramResult;
  try {
    run = await runProgram([command, action], { env: options.env, input, timeoutMs, maxOutputBytes: MAX_OUTPUT_BYTES, signal: options.signal });
  } catch (err) {
    if (!(err instanceof ProgramError)) throw err;
    throw helperError(command, action, err, timeoutMs, options);
  }
  if (run.stderr.trim()) options.log.warn(`${command} ${action} wrote on stderr: ${oneLine(run.stderr)}`);
  return { code: run.code, signal: run.signal, stdout: run.stdout, stderr: run.stderr };
}

/** What the guest and the host log are told when a helper could not run or finish. */
function helperError(command: string, action: string, err: ProgramError, timeoutMs: number, options: HelperOptions): BrokerError {
  switch (err.kind) {
    case 'not-found':
      options.log.warn(`${command} is not on shed-host-agent's PATH (${options.env.PATH ?? ''})`);
      return helperFailed(command, 'is not installed on the host (not on shed-host-agent\'s PATH)', `${command}: not found`);
    case 'cannot-start':
      options.log.warn(`${command} could not start: ${err.errno ?? err.message}`);
      return helperFailed(command, `could not start (${err.errno ?? 'error'})`, `${command}: ${err.errno ?? 'spawn failed'}`);
    case 'timeout':
      options.log.warn(`${command} ${action} did not finish within ${timeoutMs} ms; killed it`);
      return helperFailed(command, `did not answer within ${timeoutMs / 1000} s and was stopped (is it waiting for an unlock or a prompt?)`, `${command}: timed out`);
    case 'too-much-output':
      return helperFailed(command, 'printed more than 1 MiB', `${command}: output too large`);
    case 'aborted':
      return new BrokerError('INTERNAL_ERROR', 'shed-host-agent is stopping; retry once it is back', { result: 'error', detail: `${command}: aborted` });
    case 'no-exit':
      return helperFailed(command, 'ended without an exit status', `${command}: no exit status`);
  }
}

export type HelperAnswer = { found: true; username: string; secret: string } | { found: false };

/** `get` for `serverUrl`; empty Username and Secret (docker-credential-pass's answer) count as no credentials. */
export async function helperGet(helper: string, serverUrl: string, options: HelperOptions): Promise<HelperAnswer> {
  const command = helperCommand(helper);
  const run = await runHelper(helper, 'get', `${serverUrl}\n`, options);
  if (run.code !== 0) {
    const said = run.stdout.trim();
    if (said === CREDENTIALS_NOT_FOUND_TEXT) return { found: false };
    // A failing helper's stdout is its error text (the helper protocol); keep it on the host.
    options.log.warn(`${command} get for ${serverUrl} failed (${run.signal ?? `exit ${run.code}`}): ${oneLine(said, 300)}`);
    throw helperFailed(command, `failed (${run.signal ?? `exit ${run.code}`})`, `${command}: exit ${run.signal ?? run.code}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(run.stdout);
  } catch {
    options.log.warn(`${command} get for ${serverUrl} printed something that is not JSON (${run.stdout.length} bytes)`);
    throw helperFailed(command, 'answered something that is not JSON', `${command}: bad output`);
  }
  const obj = (typeof json === 'object' && json !== null ? json : {}) as Record<string, unknown>;
  const username = typeof obj.Username === 'string' ? obj.Username : '';
  const secret = typeof obj.Secret === 'string' ? obj.Secret : '';
  if (username === '' && secret === '') return { found: false };
  return { found: true, username, secret };
}

/** `list`: server URL → username, as the helper stores them. */
export async function helperList(helper: string, options: HelperOptions): Promise<Record<string, string>> {
  const command = helperCommand(helper);
  const run = await runHelper(helper, 'list', '', options);
  if (run.code !== 0) {
    options.log.warn(`${command} list failed (${run.signal ?? `exit ${run.code}`}): ${oneLine(run.stdout, 300)}`);
    throw helperFailed(command, `failed to list (${run.signal ?? `exit ${run.code}`})`, `${command}: list exit ${run.signal ?? run.code}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(run.stdout.trim() || '{}');
  } catch {
    throw helperFailed(command, 'listed something that is not JSON', `${command}: bad list output`);
  }
  const out: Record<string, string> = {};
  if (typeof json === 'object' && json !== null && !Array.isArray(json)) {
    for (const [url, user] of Object.entries(json)) if (typeof user === 'string') out[url] = user;
  }
  return out;
}
