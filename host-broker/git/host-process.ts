/**
 * Running a host program for the git-credentials namespace (`git credential
 * fill`, a policy's `command` source) so that it can never ask anyone
 * anything: no shell, its own session (so no controlling terminal to open),
 * git's and ssh's prompts turned off in its environment, stdin given or
 * closed, bounded in time and output. On a timeout or an abort, its whole
 * process group is killed (a helper script and whatever it started).
 *
 * Its stdout may hold a secret: it is returned, never logged. Of its stderr
 * only the last line is kept, for the host log.
 */
import { spawn } from 'node:child_process';
import { expandHome } from '../policy/effective.js';

/** How long a host program may take: the guest waits 30 s, an approval prompt may take 25 of them. */
export const HOST_PROGRAM_TIMEOUT_MS = 10_000;
/** More than any credential; a program that prints more is cut off. */
export const MAX_PROGRAM_OUTPUT = 64 * 1024;
/** After the program exits, how long to wait for its pipes (a daemon it started may hold them). */
const PIPE_GRACE_MS = 250;

export interface ProgramOptions {
  /** The broker's environment, which quietEnvironment() hardens. */
  env: NodeJS.ProcessEnv;
  /** Written to stdin, which is then closed; stdin is closed at once without it. */
  input?: string;
  timeoutMs?: number;
  signal?: AbortSignal;
}

export interface ProgramResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** May hold a secret: never log it. */
  stdout: string;
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

/**
 * The environment a host program runs with: the broker's, with every way
 * git or ssh could ask a person turned off. `GIT_ASKPASS=''` also
 * overrides a `core.askPass` in the user's git config (git takes the
 * variable first, and an empty one means none); Git Credential Manager
 * reads `GCM_INTERACTIVE`. Variables that would point git at some other
 * repository, or trace what it does, are removed; messages are in English
 * (`LC_ALL=C`) so the log reads the same everywhere.
 */
export function quietEnvironment(base: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [name, value] of Object.entries(base)) {
    if (/^GIT_(TRACE|DIR$|WORK_TREE$|COMMON_DIR$|INDEX_FILE$|OBJECT_DIRECTORY$|NAMESPACE$|CEILING_DIRECTORIES$|PREFIX$)/.test(name)) continue;
    env[name] = value;
  }
  env.GIT_TERMINAL_PROMPT = '0';
  env.GIT_ASKPASS = '';
  env.SSH_ASKPASS = '';
  env.SSH_ASKPASS_REQUIRE = 'never';
  env.GCM_INTERACTIVE = 'never';
  env.LC_ALL = 'C';
  return env;
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
  const timeoutMs = options.timeoutMs ?? HOST_PROGRAM_TIMEOUT_MS;
  return new Promise((resolve, reject) => {
    if (options.signal?.aborted) return reject(new ProgramError('aborted', 'shed-host-agent is stopping'));
    const child = spawn(file, args, {
      env: quietEnvironment(options.env),
      // `/`: a repository the broker happens to run in must not lend its config to `git credential fill`.
      cwd: '/',
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
      resolve({ ...exit, stdout: Buffer.concat(out).toString('utf8'), stderrTail: lastLine(err) });
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
      if (outBytes > MAX_PROGRAM_OUTPUT) return fail(new ProgramError('too-much-output', `printed more than ${MAX_PROGRAM_OUTPUT / 1024} KiB and was killed`));
      out.push(chunk);
    });
    child.stderr!.on('data', (chunk: Buffer) => {
      // The end is what says why; keep a bounded tail.
      err = (err + chunk.toString('utf8')).slice(-4096);
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
