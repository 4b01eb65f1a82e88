/**
 * Running a host program for a namespace handler (a Docker credential
 * helper, `git credential fill`, a policy's token command): no shell, its
 * own session (no controlling terminal to prompt on, and one process group
 * to kill), stdin given or closed, bounded in time and in output. On a
 * timeout, too much output or an abort, the whole group is killed (a helper
 * script and whatever it started).
 *
 * Its stdout may hold a secret: it is returned, never logged. Of its stderr
 * only a bounded tail is kept, for the host log.
 */
import { spawn } from 'node:child_process';
import { expandHome } from './policy/effective.js';

/** After the program exits, how long to wait for its pipes (a daemon it started may hold them). */
const PIPE_GRACE_MS = 250;
/** The end of stderr is what says why; this much of it is kept. */
const STDERR_TAIL_CHARS = 4096;

export interface ProgramOptions {
  /** Its whole environment. */
  env: NodeJS.ProcessEnv;
  /** Its working directory (default: the broker's). */
  cwd?: string;
  /** Written to stdin, which is then closed; stdin is closed at once without it. */
  input?: string;
  timeoutMs: number;
  /** Past this many bytes on stdout it is killed. */
  maxOutputBytes: number;
  signal?: AbortSignal;
}

export interface ProgramResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** May hold a secret: never log it. */
  stdout: string;
  /** The last 4096 characters of stderr. */
  stderr: string;
  /** The last non-empty line of stderr, at most 300 characters. */
  stderrTail: string;
}

export type ProgramFailure = 'not-found' | 'cannot-start' | 'timeout' | 'too-much-output' | 'aborted' | 'no-exit';

export class ProgramError extends Error {
  override readonly name = 'ProgramError';
  constructor(
    readonly kind: ProgramFailure,
    message: string,
    /** The errno code when it could not start. */
    readonly errno?: string,
  ) {
    super(message);
  }
}

function lastLine(text: string, max = 300): string {
  const lines = text.split('\n').map((l) => l.trim()).filter(Boolean);
  const last = lines[lines.length - 1] ?? '';
  return last.length > max ? `${last.slice(0, max)}…` : last;
}

/** Run `argv` (argv[0] on PATH, absolute, or `~/…`) as ProgramOptions says. Rejects with ProgramError. */
export function runProgram(argv: readonly string[], options: ProgramOptions): Promise<ProgramResult> {
  const [command, ...args] = argv;
  const file = expandHome(command ?? '');
  const { timeoutMs, maxOutputBytes } = options;
  return new Promise((resolve, reject) => {
    if (options.signal?.aborted) return reject(new ProgramError('aborted', 'shed-host-agent is stopping'));
    const child = spawn(file, args, {
      env: options.env,
      cwd: options.cwd,
      stdio: [options.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
      // Its own session: no controlling terminal to prompt on, and one group to kill.
      detached: true,
      shell: false,
    });
    const out: Buffer[] = [];
    let outBytes = 0;
    let err = '';
    let settled = false;
    let exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
    let failure: ProgramError | undefined;
    let graceTimer: NodeJS.Timeout | undefined;

    const killGroup = () => {
      try {
        if (child.pid) process.kill(-child.pid, 'SIGKILL');
      } catch {
        child.kill('SIGKILL');
      }
    };
    const finish = () => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      clearTimeout(graceTimer);
      options.signal?.removeEventListener('abort', onAbort);
      child.stdout?.destroy();
      child.stderr?.destroy();
      if (failure) return reject(failure);
      if (!exit) return reject(new ProgramError('no-exit', 'ended without an exit status'));
      resolve({ ...exit, stdout: Buffer.concat(out).toString('utf8'), stderr: err, stderrTail: lastLine(err) });
    };
    const fail = (error: ProgramError) => {
      failure ??= error;
      killGroup();
      // The exit (or close) event finishes; the grace timer covers a child that never reports.
      graceTimer ??= setTimeout(finish, PIPE_GRACE_MS);
    };
    const onAbort = () => fail(new ProgramError('aborted', 'shed-host-agent is stopping'));
    const timer = setTimeout(() => fail(new ProgramError('timeout', `did not finish within ${timeoutMs / 1000} s and was killed`)), timeoutMs);
    options.signal?.addEventListener('abort', onAbort, { once: true });

    child.stdout!.on('data', (chunk: Buffer) => {
      outBytes += chunk.length;
      if (outBytes > maxOutputBytes) return fail(new ProgramError('too-much-output', `printed more than ${maxOutputBytes / 1024} KiB and was killed`));
      out.push(chunk);
    });
    child.stderr!.on('data', (chunk: Buffer) => {
      // The end is what says why; keep a bounded tail.
      err = (err + chunk.toString('utf8')).slice(-STDERR_TAIL_CHARS);
    });
    child.once('error', (error: NodeJS.ErrnoException) => {
      failure ??= error.code === 'ENOENT'
        ? new ProgramError('not-found', `${file} was not found (PATH ${options.env.PATH ?? 'unset'})`, error.code)
        : new ProgramError('cannot-start', `${file} could not start (${error.code ?? error.message})`, error.code);
      finish();
    });
    child.once('exit', (code, signal) => {
      exit = { code, signal };
      graceTimer ??= setTimeout(finish, PIPE_GRACE_MS);
    });
    child.once('close', finish);
    if (child.stdin) {
      child.stdin.on('error', () => undefined);
      child.stdin.end(options.input);
    }
  });
}
