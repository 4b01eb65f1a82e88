/**
 * Processes and temp directories for tests: everything started here is
 * killed, and everything created here removed, when the run ends (or by the
 * test's own teardown, earlier).
 */
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

const children = new Set<ChildProcess>();
const dirs = new Set<string>();

/** Spawn a process that the run will kill if the test does not. */
export function spawnTracked(command: string, args: string[], options: SpawnOptions = {}): ChildProcess {
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], ...options });
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

/** Stop a child: SIGTERM, then SIGKILL after `graceMs`. Resolves with its exit code (or signal). */
export async function stopProcess(child: ChildProcess, graceMs = 3000): Promise<number | string | null> {
  if (child.exitCode !== null || child.signalCode !== null) return child.exitCode ?? child.signalCode;
  const exited = new Promise<number | string | null>((resolve) => child.once('exit', (code, signal) => resolve(code ?? signal)));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  const result = await exited;
  clearTimeout(timer);
  return result;
}

export async function stopAll(): Promise<void> {
  await Promise.all([...children].map((c) => stopProcess(c, 1000)));
  for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
  dirs.clear();
}

/** A fresh directory under /tmp (short, so unix socket paths fit), removed at the end of the run. */
export function tempDir(prefix = 'shed'): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `${prefix}-`));
  fs.chmodSync(dir, 0o700);
  dirs.add(dir);
  return dir;
}

export function removeDir(dir: string): void {
  fs.rmSync(dir, { recursive: true, force: true });
  dirs.delete(dir);
}

/** The project's binaries, run from source through tsx. */
export const BINS = {
  'shed-host-agent': 'host-broker/cli/main.ts',
  'shed-ext-ssh-agent': 'guest-services/ssh-agent/main.ts',
  'shed-ext-aws-credentials': 'guest-services/aws-credentials/main.ts',
  'docker-credential-shed': 'guest-services/docker-credential/main.ts',
  'shed-ext': 'guest-services/status/main.ts',
} as const;

/** tsx by absolute URL, so binaries run from any working directory. */
const TSX_LOADER = import.meta.resolve('tsx');

/** [command, args] that run one of the project's binaries. */
export function binCommand(name: keyof typeof BINS, args: string[] = []): [string, string[]] {
  return [process.execPath, ['--import', TSX_LOADER, path.join(REPO_ROOT, BINS[name]), ...args]];
}

/** Collect a child's stdout and stderr as text, live. */
export function capture(child: ChildProcess): { stdout: () => string; stderr: () => string } {
  let out = '';
  let err = '';
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (err += d.toString()));
  return { stdout: () => out, stderr: () => err };
}

/** Run a command to completion with an optional stdin; never hangs past `timeoutMs`. */
export function run(
  command: string,
  args: string[],
  options: SpawnOptions & { input?: string; timeoutMs?: number } = {},
): Promise<{ code: number | null; signal: string | null; stdout: string; stderr: string }> {
  const { input, timeoutMs = 30_000, ...spawnOptions } = options;
  return new Promise((resolve, reject) => {
    const child = spawnTracked(command, args, { ...spawnOptions, stdio: ['pipe', 'pipe', 'pipe'] });
    const out = capture(child);
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    // 'close', not 'exit': a process can exit before its pipes are read to
    // the end. Should something it started keep them open, the result comes
    // a moment after the exit with what was read by then.
    let lingering: NodeJS.Timeout | undefined;
    const finish = (code: number | null, signal: string | null) => {
      clearTimeout(timer);
      clearTimeout(lingering);
      resolve({ code, signal, stdout: out.stdout(), stderr: out.stderr() });
    };
    child.once('exit', (code, signal) => {
      lingering = setTimeout(() => finish(code, signal), 5000);
    });
    child.once('close', finish);
    // A program may exit without reading its stdin: that is its business, not an error here.
    child.stdin?.on('error', () => undefined);
    child.stdin?.end(input ?? '');
  });
}

/** Poll `check` until it returns a truthy value or `timeoutMs` passes. */
export async function waitFor<T>(check: () => T | Promise<T>, timeoutMs = 10_000, what = 'condition'): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  while (Date.now() < deadline) {
    try {
      const value = await check();
      if (value) return value as NonNullable<T>;
    } catch (err) {
      lastError = err;
    }
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastError ? `: ${(lastError as Error).message}` : ''}`);
}
