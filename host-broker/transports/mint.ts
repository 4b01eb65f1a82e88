/**
 * Getting a token by running a program: `token_command` (argv, no shell) or
 * `bootstrap` (the OpenSSH client minting over shed's SSH port, PROTOCOL.md
 * 3a). Both print a bare token or the JSON credentials bundle on stdout.
 *
 * The program runs with a deadline and bounded output; on failure the
 * reason names the exit status and the last line of stderr (escaped, cut,
 * token-shaped text redacted). Its stdout is never quoted anywhere: it is
 * where the token is.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import { printable } from '../../protocol/text.js';

/** stdout beyond this is refused (a bundle is a few hundred bytes). */
export const MAX_MINT_STDOUT = 64 * 1024;
const MAX_MINT_STDERR = 16 * 1024;

export interface RunResult {
  stdout: string;
}

/**
 * Run argv without a shell, stdin closed, within `timeoutMs`, stdout bounded.
 * Resolves with stdout on exit 0; rejects with a reason fit for a log line
 * (exit status, last stderr line) otherwise. The program and anything it
 * started are killed on timeout, on too much output, and by `signal`.
 */
export function runBounded(argv: readonly string[], options: { timeoutMs: number; what: string; signal?: AbortSignal; env?: NodeJS.ProcessEnv; redact?: readonly string[] }): Promise<RunResult> {
  const { timeoutMs, what, signal } = options;
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(new Error(`${what} was not run: stopping`));
      return;
    }
    const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], shell: false, detached: true, env: options.env ?? process.env });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let outSize = 0;
    let errSize = 0;
    let killedFor: string | undefined;
    const kill = (why: string) => {
      if (killedFor) return;
      killedFor = why;
      try {
        // The whole group: a script's children keep stdout open otherwise.
        if (child.pid) process.kill(-child.pid, 'SIGKILL');
      } catch {
        child.kill('SIGKILL');
      }
    };
    const timer = setTimeout(() => kill(`did not finish within ${Math.round(timeoutMs / 100) / 10} s`), timeoutMs);
    const onAbort = () => kill('was stopped: the broker is stopping');
    signal?.addEventListener('abort', onAbort, { once: true });
    child.stdout!.on('data', (c: Buffer) => {
      outSize += c.length;
      if (outSize > MAX_MINT_STDOUT) kill(`printed more than ${MAX_MINT_STDOUT} bytes on stdout (a token or a bundle is far less)`);
      else out.push(c);
    });
    child.stderr!.on('data', (c: Buffer) => {
      errSize += c.length;
      // Keep the end: the last line says what went wrong.
      err.push(c);
      while (errSize > MAX_MINT_STDERR && err.length > 1) errSize -= err.shift()!.length;
    });
    const finish = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
    };
    child.once('error', (e: NodeJS.ErrnoException) => {
      finish();
      reject(new Error(`cannot run ${what}: ${e.code === 'ENOENT' ? `${printable(argv[0]!, 200)} was not found (check the path, or PATH of shed-host-agent)` : e.code ?? e.message}`));
    });
    child.once('close', (code, sig) => {
      finish();
      if (killedFor) {
        reject(new Error(`${what} ${killedFor}`));
        return;
      }
      if (code === 0) {
        resolve({ stdout: Buffer.concat(out).toString('utf8') });
        return;
      }
      const last = lastLine(Buffer.concat(err).toString('utf8'), options.redact ?? []);
      reject(new Error(`${what} ${code !== null ? `exited with status ${code}` : `was killed by ${sig}`}${last ? `: ${last}` : ' (nothing on stderr)'}`));
    });
  });
}

/** The last non-empty line of a program's stderr, as one safe line, with anything token-shaped redacted. */
export function lastLine(stderr: string, redact: readonly string[]): string {
  const lines = stderr.split(/\r?\n/).map((l) => l.trim()).filter(Boolean);
  let line = lines.at(-1) ?? '';
  for (const secret of redact) if (secret) line = line.split(secret).join('[redacted]');
  line = line.replace(/shed_([a-z]+)_[A-Za-z0-9_-]+/g, 'shed_$1_[redacted]');
  return printable(line, 300);
}

export interface BootstrapSpec {
  host: string;
  port: number;
  user: string;
  identityFile: string;
  knownHosts: string;
  clientName: string;
}

const HOST_RE = /^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[?[0-9A-Fa-f:.]+\]?)$/;
const USER_RE = /^[A-Za-z_][A-Za-z0-9_.-]{0,63}$/;
const CLIENT_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** Checks what goes on ssh's command line: nothing may pass for an option or reach a remote shell as syntax. */
export function checkBootstrap(spec: BootstrapSpec, key: string): void {
  if (!HOST_RE.test(spec.host)) throw new Error(`${key}.host ${JSON.stringify(printable(spec.host, 80))} is not a host name or address`);
  if (!Number.isInteger(spec.port) || spec.port < 1 || spec.port > 65_535) throw new Error(`${key}.ssh_port ${spec.port} is not a TCP port`);
  if (!USER_RE.test(spec.user)) throw new Error(`${key}.user ${JSON.stringify(printable(spec.user, 80))} is not a user name`);
  if (!CLIENT_RE.test(spec.clientName)) {
    throw new Error(`${key}.client_name ${JSON.stringify(printable(spec.clientName, 80))} must be letters, digits, dots, dashes or underscores (at most 64), starting with a letter or digit`);
  }
  for (const [name, file] of [['identity_file', spec.identityFile], ['known_hosts', spec.knownHosts]] as const) {
    if (!file.startsWith('/')) throw new Error(`${key}.${name} ${JSON.stringify(printable(file, 200))} must be an absolute path (or start with ~/)`);
  }
}

/**
 * The OpenSSH client's command line for a mint: only the given identity, no
 * prompts, the server's host key checked against the given known_hosts alone.
 */
export function bootstrapArgv(spec: BootstrapSpec): string[] {
  return [
    'ssh',
    '-p', String(spec.port),
    '-i', spec.identityFile,
    '-o', 'IdentitiesOnly=yes',
    '-o', 'BatchMode=yes',
    '-o', 'StrictHostKeyChecking=yes',
    '-o', `UserKnownHostsFile=${spec.knownHosts}`,
    // Only the pinned file decides: a key in the system-wide list does not count.
    '-o', 'GlobalKnownHostsFile=/dev/null',
    '-o', 'ConnectTimeout=10',
    '-o', 'LogLevel=ERROR',
    '-o', 'ForwardAgent=no',
    '-o', 'ClearAllForwardings=yes',
    '-T',
    `${spec.user}@${spec.host.replace(/^\[(.*)\]$/, '$1')}`,
    'credentials',
    spec.clientName,
  ];
}

/** Before running ssh: the files it needs exist, so the reason is plain rather than ssh's. */
export function bootstrapPreflight(spec: BootstrapSpec, key: string): void {
  for (const [name, file, fix] of [
    ['identity_file', spec.identityFile, 'create it (ssh-keygen -t ed25519 -f …) and add its public key to the server\'s bootstrap allowlist'],
    ['known_hosts', spec.knownHosts, 'pin the server\'s SSH host key there first (`shed server add` writes ~/.shed/known_hosts)'],
  ] as const) {
    try {
      fs.accessSync(file, fs.constants.R_OK);
    } catch (err) {
      throw new Error(`${key}.${name} ${file} cannot be read (${(err as NodeJS.ErrnoException).code}): ${fix}`, { cause: err });
    }
  }
}

/** What to do about what ssh said, after its own words. */
export function bootstrapHint(reason: string, spec: BootstrapSpec, key: string): string {
  if (/Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED|No .* host key is known/i.test(reason)) {
    return `${reason}; the server's SSH host key is not the one pinned in ${spec.knownHosts}: if it changed on purpose, pin the new key there (shed server add), otherwise do not trust this server`;
  }
  if (/Permission denied/i.test(reason)) {
    return `${reason}; the server does not accept ${spec.identityFile} for ${spec.user}: add its public key to the server's bootstrap allowlist`;
  }
  if (/Connection refused|Connection timed out|No route to host|Could not resolve hostname/i.test(reason)) {
    return `${reason}; check ${key}.host and ${key}.ssh_port (${spec.host}:${spec.port}) reach shed-server's SSH port`;
  }
  return reason;
}
