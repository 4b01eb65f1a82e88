/**
 * Approval gates: what asks the human. `command` runs a configured argv
 * (no shell) with the request described in environment variables; exit 0
 * approves, anything else, a failure to start, or no answer within the
 * timeout denies (and the command's process group is killed). `touchid`
 * uses macOS LocalAuthentication through the optional native package
 * `macos-touchid`, loaded only when a policy asks for it.
 *
 * A gate never approves by default: every failure is a denial.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { Namespace } from '../../protocol/envelope.js';
import type { ApprovalSubject } from '../handler.js';
import { expandHome, type EffectiveApproval } from '../policy/effective.js';
import { formatDuration } from '../policy/schema.js';
import { printable } from '../../protocol/text.js';

export interface GateRequest {
  shed: string;
  namespace: Namespace;
  operation: string;
  subject: ApprovalSubject;
  /** What an approval covers: this request, this shed for `ttl`, or every shed for `ttl`. */
  scope?: 'request' | 'shed' | 'session';
  /** Milliseconds an approval lasts (shed and session scopes). */
  ttl?: number;
}

/** What an approval of `request` covers, in words for the human ("" for one request). */
export function scopeText(request: GateRequest): string {
  const ttl = request.ttl !== undefined ? formatDuration(request.ttl) : '';
  if (request.scope === 'session') return `approving allows every shed (not only ${request.shed}) for ${ttl}`;
  if (request.scope === 'shed') return `approving allows shed ${request.shed} for ${ttl}`;
  return '';
}

export type GateVerdict = { approved: true } | { approved: false; reason: string; timedOut?: boolean };

/** The native package behind `gate: touchid` (not installed by default). */
export const TOUCHID_PACKAGE = 'macos-touchid';

/** Grace between SIGTERM and SIGKILL for a gate command that timed out. */
const KILL_GRACE_MS = 2000;
/** How much of a gate command's stderr is kept for the log. */
const STDERR_KEEP = 2048;

/** The environment a gate command runs with: the broker's, plus the request. */
export function gateEnvironment(request: GateRequest, base: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...base };
  for (const name of Object.keys(env)) if (name.startsWith('SHED_') && name !== 'SHED_LOG_LEVEL') delete env[name];
  env.SHED_NAME = request.shed;
  env.SHED_NAMESPACE = request.namespace;
  env.SHED_OPERATION = request.operation;
  env.SHED_APPROVAL_SUBJECT = printable(request.subject.subject, 512);
  env.SHED_APPROVAL_DESCRIPTION = printable(request.subject.description, 512);
  env.SHED_APPROVAL_SCOPE = request.scope ?? 'request';
  env.SHED_APPROVAL_SCOPE_TEXT = scopeText(request);
  if (request.namespace === 'ssh-agent') env.SHED_KEY_FINGERPRINT = printable(request.subject.subject, 512);
  if (request.namespace === 'aws-credentials') env.SHED_ROLE_ARN = printable(request.subject.subject, 512);
  if (request.namespace === 'git-credentials') env.SHED_GIT_URL = printable(request.subject.subject, 512);
  return env;
}

/** Runs gate commands; remembers the ones running so they can be killed at shutdown. */
export class CommandRunner {
  private readonly running = new Set<ChildProcess>();

  run(argv: string[], request: GateRequest, timeoutMs: number): Promise<GateVerdict & { stderr: string }> {
    const [command, ...args] = argv;
    const file = expandHome(command!);
    return new Promise((resolve) => {
      let stderr = '';
      let settled = false;
      let killTimer: NodeJS.Timeout | undefined;
      const timers: { answer?: NodeJS.Timeout } = {};
      const finish = (verdict: GateVerdict) => {
        if (settled) return;
        settled = true;
        clearTimeout(timers.answer);
        resolve({ ...verdict, stderr: stderr.trim() });
      };
      let child: ChildProcess;
      try {
        // detached: its own process group, so a timeout kills the script and
        // whatever it started (a dialog, a sleep), not just the first process.
        child = spawn(file, args, { stdio: ['ignore', 'ignore', 'pipe'], detached: true, env: gateEnvironment(request), shell: false });
      } catch (err) {
        finish({ approved: false, reason: `could not run ${file}: ${(err as Error).message}` });
        return;
      }
      this.running.add(child);
      timers.answer = setTimeout(() => {
        killGroup(child, 'SIGTERM');
        killTimer = setTimeout(() => killGroup(child, 'SIGKILL'), KILL_GRACE_MS);
        killTimer.unref();
        finish({ approved: false, reason: `no answer within ${formatDuration(timeoutMs)}`, timedOut: true });
      }, timeoutMs);
      child.stderr?.on('data', (d: Buffer) => {
        if (stderr.length < STDERR_KEEP) stderr += d.toString('utf8').slice(0, STDERR_KEEP - stderr.length);
      });
      child.once('error', (err) => {
        this.running.delete(child);
        finish({ approved: false, reason: `could not run ${file}: ${(err as NodeJS.ErrnoException).code ?? err.message}` });
      });
      child.once('exit', (code, signal) => {
        this.running.delete(child);
        if (killTimer) clearTimeout(killTimer);
        if (code === 0) finish({ approved: true });
        else finish({ approved: false, reason: code !== null ? `${path.basename(file)} exited ${code}` : `${path.basename(file)} was killed by ${signal}` });
      });
    });
  }

  /** Kill every gate command still running (broker shutdown): their requests are denied. */
  close(): void {
    for (const child of this.running) killGroup(child, 'SIGKILL');
    this.running.clear();
  }
}

function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    try {
      child.kill(signal);
    } catch {
      // Gone already.
    }
  }
}

/** The subset of `macos-touchid` the gate uses. */
interface TouchIdModule {
  canAuthenticate(): boolean;
  authenticate(reason: string, callback: (err: Error | null, ok?: boolean) => void): void;
}

let touchIdModule: Promise<TouchIdModule> | undefined;

/** Load the Touch ID package once; rejects with what to do when it cannot be used here. */
export function loadTouchId(platform: NodeJS.Platform = process.platform): Promise<TouchIdModule> {
  if (platform !== 'darwin') {
    return Promise.reject(new Error(`approval gate "touchid" needs macOS (this host is ${platform}); use gate: command with a prompt program (zenity, kdialog, a script) or gate: none`));
  }
  touchIdModule ??= (async () => {
    let mod: TouchIdModule;
    try {
      const name: string = TOUCHID_PACKAGE;
      const loaded = (await import(name)) as { default?: TouchIdModule } & TouchIdModule;
      mod = loaded.default ?? loaded;
    } catch {
      throw new Error(`approval gate "touchid" needs the optional package ${TOUCHID_PACKAGE}: install it next to shed-host-agent (npm install ${TOUCHID_PACKAGE}), or use gate: command`);
    }
    if (typeof mod.canAuthenticate !== 'function' || typeof mod.authenticate !== 'function') {
      throw new Error(`the installed ${TOUCHID_PACKAGE} does not have canAuthenticate/authenticate; reinstall it, or use gate: command`);
    }
    if (!mod.canAuthenticate()) {
      throw new Error('approval gate "touchid": this Mac cannot authenticate with Touch ID now (no sensor, none enrolled, or locked out); enrol a finger in System Settings, or use gate: command');
    }
    return mod;
  })();
  touchIdModule.catch(() => {
    touchIdModule = undefined;
  });
  return touchIdModule;
}

/** Ask Touch ID; denial on cancel, failure or timeout. */
export async function askTouchId(request: GateRequest, timeoutMs: number): Promise<GateVerdict> {
  let mod: TouchIdModule;
  try {
    mod = await loadTouchId();
  } catch (err) {
    return { approved: false, reason: (err as Error).message };
  }
  const scope = scopeText(request);
  const reason = `allow shed ${request.shed} to ${printable(request.subject.description, 400)}${scope ? ` (${scope})` : ''}`;
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve({ approved: false, reason: `no answer within ${formatDuration(timeoutMs)}`, timedOut: true }), timeoutMs);
    try {
      mod.authenticate(reason, (err, ok) => {
        clearTimeout(timer);
        resolve(!err && ok !== false ? { approved: true } : { approved: false, reason: `Touch ID: ${err ? err.message : 'not authenticated'}` });
      });
    } catch (err) {
      clearTimeout(timer);
      resolve({ approved: false, reason: `Touch ID: ${(err as Error).message}` });
    }
  });
}

/**
 * Whether a shed's gate can work on this host: undefined when it can, else
 * the problem and its fix (the broker refuses to start, or a reload).
 */
export async function checkGate(approval: EffectiveApproval): Promise<string | undefined> {
  switch (approval.gate) {
    case 'none':
      return undefined;
    case 'touchid':
      try {
        await loadTouchId();
        return undefined;
      } catch (err) {
        return (err as Error).message;
      }
    case 'command': {
      const argv = approval.command;
      if (!argv || argv.length === 0) return 'approval gate "command" needs approval.command: the argv of a program that exits 0 to approve, e.g. [/usr/local/bin/approve-shed]';
      const problem = findExecutable(argv[0]!);
      return problem && `approval.command ${JSON.stringify(argv[0])}: ${problem}`;
    }
  }
}

/** Undefined when `command` names an executable file (an absolute path, `~/…`, or a name on PATH); else why not. */
export function findExecutable(command: string, envPath = process.env.PATH ?? ''): string | undefined {
  const file = expandHome(command);
  if (file.includes('/')) {
    if (!path.isAbsolute(file)) return 'use an absolute path (or a name on PATH): the broker does not run programs relative to its working directory';
    return executableProblem(file);
  }
  for (const dir of envPath.split(path.delimiter)) {
    if (dir && path.isAbsolute(dir) && executableProblem(path.join(dir, file)) === undefined) return undefined;
  }
  return `not found on PATH (${envPath || 'empty'}); give its absolute path`;
}

function executableProblem(file: string): string | undefined {
  try {
    if (!fs.statSync(file).isFile()) return `${file} is not a file`;
    fs.accessSync(file, fs.constants.X_OK);
    return undefined;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return `${file} does not exist`;
    if (code === 'EACCES') return `${file} is not executable (chmod +x it)`;
    return `${file}: ${code ?? (err as Error).message}`;
  }
}
