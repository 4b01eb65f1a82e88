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
import { runProgram as runHostProgram, type ProgramResult } from '../host-program.js';

export { ProgramError, type ProgramFailure, type ProgramResult } from '../host-program.js';

/** How long a host program may take: the guest waits 30 s, an approval prompt may take 25 of them. */
export const HOST_PROGRAM_TIMEOUT_MS = 10_000;
/** More than any credential; a program that prints more is cut off. */
export const MAX_PROGRAM_OUTPUT = 64 * 1024;

export interface GitProgramOptions {
  /** The broker's environment, which quietEnvironment() hardens. */
  env: NodeJS.ProcessEnv;
  /** Written to stdin, which is then closed; stdin is closed at once without it. */
  input?: string;
  timeoutMs?: number;
  signal?: AbortSignal;
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

/** Run `argv` with prompts off (quietEnvironment), from `/`, bounded (host-program.ts). Rejects with ProgramError. */
export function runProgram(argv: readonly string[], options: GitProgramOptions): Promise<ProgramResult> {
  return runHostProgram(argv, {
    env: quietEnvironment(options.env),
    // `/`: a repository the broker happens to run in must not lend its config to `git credential fill`.
    cwd: '/',
    input: options.input,
    timeoutMs: options.timeoutMs ?? HOST_PROGRAM_TIMEOUT_MS,
    maxOutputBytes: MAX_PROGRAM_OUTPUT,
    signal: options.signal,
  });
}
