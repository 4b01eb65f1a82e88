/**
 * `shed-host-agent doctor`: checks the host side the policy relies on and
 * prints one line per check, with the fix for each failure. Each probe is a
 * small function that touches only what it names (it never signs, never
 * assumes a role, never asks a credential helper for a secret).
 */
import { fromIni } from '@aws-sdk/credential-providers';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { memoryLogger } from '../../protocol/log.js';
import { Approvals } from '../approval/approvals.js';
import { findExecutable } from '../approval/gates.js';
import { dockerConfigPath, readDockerConfig } from '../docker/config.js';
import { helperCommand } from '../docker/helper-process.js';
import { runProgram } from '../git/host-process.js';
import { normalizeHost, parseAllowed } from '../git/rules.js';
import { expandHome, type EffectiveShed } from '../policy/effective.js';
import { loadPolicyFile, policyFromDocument, PolicyError, shellQuote, type Policy } from '../policy/policy.js';
import { listedSheds } from '../policy/show.js';
import { AgentClient } from '../ssh/agent-client.js';
import { LocalKeys } from '../ssh/local-keys.js';
import { fingerprint } from '../ssh/wire.js';
import { certificatePin, normalizePin } from '../transports/shed-server.js';
import type { Io } from './io.js';

export interface Check {
  name: string;
  status: 'ok' | 'warn' | 'fail';
  detail: string;
  /** What to do, for warn and fail. */
  fix?: string;
}

const ok = (name: string, detail: string): Check => ({ name, status: 'ok', detail });
const fail = (name: string, detail: string, fix: string): Check => ({ name, status: 'fail', detail, fix });
const warn = (name: string, detail: string, fix: string): Check => ({ name, status: 'warn', detail, fix });

/** The host's SSH agent answers a key list. Returns the fingerprints it holds. */
export async function probeSshAgent(socket: string | undefined, timeoutMs = 3000): Promise<{ check: Check; fingerprints: string[] }> {
  const name = 'ssh agent';
  if (!socket) {
    return { check: fail(name, 'no agent socket: SSH_AUTH_SOCK is unset and ssh.agent_socket is not set', 'start ssh-agent (eval "$(ssh-agent)") and ssh-add your key, or set ssh.agent_socket in the policy'), fingerprints: [] };
  }
  const client = new AgentClient(socket, { listTimeoutMs: timeoutMs });
  try {
    const keys = await client.identities();
    const fingerprints = keys.map((k) => fingerprint(k.blob));
    if (keys.length === 0) return { check: warn(name, `${socket} answers but holds no keys`, `ssh-add your key (ssh-add ~/.ssh/id_ed25519)`), fingerprints };
    return { check: ok(name, `${socket} holds ${keys.length} key${keys.length === 1 ? '' : 's'}: ${fingerprints.join(', ')}`), fingerprints };
  } catch (err) {
    return { check: fail(name, `${socket} does not answer: ${(err as Error).message}`, 'start the agent (or fix SSH_AUTH_SOCK / ssh.agent_socket); check with ssh-add -l'), fingerprints: [] };
  } finally {
    client.close();
  }
}

/** The private keys local-keys mode would use (~/.ssh/id_* and ssh.keys) are readable and usable. */
export function probeLocalKeys(home: string, extra: string[]): { check: Check; fingerprints: string[] } {
  const name = 'ssh local keys';
  const log = memoryLogger('doctor');
  const keys = new LocalKeys(log).load(home, extra.map(expandHome));
  const skipped = log.lines.map((l) => l.replace(/^.*?(skipping|ssh key)/, '$1'));
  const fingerprints = keys.map((k) => k.fingerprint);
  if (keys.length === 0) {
    return { check: fail(name, `no usable key in ${path.join(home, '.ssh')} (id_ed25519, id_ecdsa, id_rsa)${extra.length ? ` or ssh.keys` : ''}${skipped.length ? `: ${skipped.join('; ')}` : ''}`, 'create one (ssh-keygen -t ed25519), make it mode 600, or use agent-forward mode with a running agent'), fingerprints };
  }
  const detail = `${keys.length} usable: ${keys.map((k) => `${k.fingerprint} (${k.file})`).join(', ')}`;
  if (skipped.length) return { check: warn(name, `${detail}; skipped: ${skipped.join('; ')}`, 'fix or remove the skipped files'), fingerprints };
  return { check: ok(name, detail), fingerprints };
}

/** The AWS source profile resolves to credentials through the SDK's provider for it, as the broker loads it. */
export async function probeAwsProfile(profile: string, options: { configFile?: string; credentialsFile?: string; timeoutMs?: number } = {}): Promise<Check> {
  const name = `aws profile ${profile}`;
  try {
    const provider = fromIni({ profile, filepath: options.credentialsFile, configFilepath: options.configFile, ignoreCache: true });
    const creds = await withTimeout(provider(), options.timeoutMs ?? 10_000, 'timed out');
    const kind = creds.sessionToken ? 'temporary credentials' : 'long-lived keys';
    return ok(name, `resolves to ${kind}${creds.expiration ? ` until ${creds.expiration.toISOString()}` : ''}`);
  } catch (err) {
    // The SDK's messages name the profile and file, never a secret.
    const message = (err as Error).message.split('\n')[0]!.slice(0, 300);
    return fail(name, `does not resolve: ${message}`, `configure it on the host: aws configure --profile ${profile} (or aws sso login --profile ${profile}), or set aws.source_profile`);
  }
}

/** The host Docker config parses; returns the helpers it names. */
export function probeDockerConfig(file: string): { check: Check; helpers: string[] } {
  const name = 'docker config';
  try {
    const config = readDockerConfig(file);
    if (!config.exists) return { check: warn(name, `${file} does not exist: no registry credentials on this host`, 'run docker login <registry> on the host (or set docker.config_path)'), helpers: [] };
    const helpers = [...new Set([...(config.credsStore ? [config.credsStore] : []), ...config.credHelpers.values()])];
    const parts = [config.credsStore && `credsStore ${config.credsStore}`, config.credHelpers.size && `${config.credHelpers.size} credHelpers`, config.auths.length && `${config.auths.length} inline auths`].filter(Boolean);
    if (config.problems.length) return { check: warn(name, `${file}: ${parts.join(', ') || 'no credentials'}; skipped entries: ${config.problems.join('; ')}`, 'fix those entries (docker login again)'), helpers };
    return { check: ok(name, `${file}: ${parts.join(', ') || 'no credentials configured'}`), helpers };
  } catch (err) {
    return { check: fail(name, (err as Error).message, `fix or recreate ${file} (docker login on the host writes it)`), helpers: [] };
  }
}

/** `docker-credential-<helper>` is an executable on PATH. */
export function probeDockerHelper(helper: string, envPath = process.env.PATH ?? ''): Check {
  const command = helperCommand(helper);
  const problem = findExecutable(command, envPath);
  return problem
    ? fail(`docker helper ${helper}`, `${command}: ${problem}`, `install ${command} on the PATH of shed-host-agent, or change credsStore/credHelpers in the Docker config`)
    : ok(`docker helper ${helper}`, `${command} is on PATH`);
}

/** git runs on this host, as the broker runs it (`git --version`). */
export async function probeGit(env: NodeJS.ProcessEnv, timeoutMs = 5000): Promise<Check> {
  const name = 'git';
  try {
    const r = await runProgram(['git', '--version'], { env, timeoutMs });
    if (r.code === 0) return ok(name, `${r.stdout.trim()} is on PATH`);
    return fail(name, `git --version exited ${r.signal ?? r.code}${r.stderrTail ? `: ${r.stderrTail}` : ''}`, 'reinstall git on the host');
  } catch (err) {
    return fail(name, `git cannot run here: ${(err as Error).message}`, 'install git on the host (on the PATH of shed-host-agent), or give every allowed host a command in git.sources');
  }
}

/**
 * The host's git has a credential helper for `git credential fill` to ask
 * (`credential.helper`, or one for a URL). Lists them; never asks one for
 * anything.
 */
export async function probeGitHelpers(env: NodeJS.ProcessEnv, timeoutMs = 5000): Promise<Check> {
  const name = 'git credential helpers';
  try {
    const r = await runProgram(['git', 'config', '--get-regexp', '^credential\\..*helper$'], { env, timeoutMs });
    const helpers = r.code === 0 ? r.stdout.split('\n').filter(Boolean).map((l) => l.replace(/^credential\./, '').replace(/\.?helper /, ' ').trim()) : [];
    if (r.code !== 0 && r.code !== 1) return fail(name, `git config exited ${r.signal ?? r.code}${r.stderrTail ? `: ${r.stderrTail}` : ''}`, 'fix the git config it names');
    if (helpers.length === 0) {
      return warn(name, 'the host\'s git has no credential.helper: `git credential fill` will find no credentials for the sheds',
        'configure one (git config --global credential.helper osxkeychain, libsecret, manager or store) and log in once on the host, or give the hosts a command in git.sources');
    }
    return ok(name, `git credential fill asks ${helpers.join('; ')}`);
  } catch (err) {
    return fail(name, `git cannot run here: ${(err as Error).message}`, 'install git on the host');
  }
}

/** A git.sources command's program is an executable (it is not run: it would print a token). */
export function probeGitSource(host: string, command: string[], envPath = process.env.PATH ?? ''): Check {
  const problem = findExecutable(command[0] ?? '', envPath);
  return problem
    ? fail(`git source ${host}`, `git.sources.${host} command ${JSON.stringify(command[0])}: ${problem}`, 'install it on the PATH of shed-host-agent, or give its absolute path')
    : ok(`git source ${host}`, `${command[0]} is there (not run: it prints a token)`);
}

/** shed-server answers its plugin API (GET /api/plugins/listeners) with the configured auth. */
export async function probeShedServer(server: NonNullable<Policy['server']>, timeoutMs = 3000): Promise<Check> {
  const name = 'shed-server';
  const base = new URL(server.url);
  const url = new URL('/api/plugins/listeners', base);
  const headers: Record<string, string> = { accept: 'application/json' };
  let cert: Buffer | undefined;
  let key: Buffer | undefined;
  try {
    if (server.client_cert && server.client_key) {
      cert = fs.readFileSync(expandHome(server.client_cert));
      key = fs.readFileSync(expandHome(server.client_key));
    } else if (server.token_file) {
      const token = fs.readFileSync(expandHome(server.token_file), 'utf8').trim();
      if (!token) return fail(name, `server.token_file ${server.token_file} is empty`, 'put shed-server\'s token in it');
      headers.authorization = `Bearer ${token}`;
    }
  } catch (err) {
    return fail(name, `cannot read ${(err as NodeJS.ErrnoException).path ?? 'a credential file'} (${(err as NodeJS.ErrnoException).code})`, 'fix server.token_file / server.client_cert / server.client_key');
  }
  try {
    let socket: tls.TLSSocket | undefined;
    if (base.protocol === 'https:' && server.tls_pin) {
      // Compare the pin before any byte of the request (and its token) is sent.
      socket = await pinnedSocket(base, server.tls_pin, cert, key, timeoutMs);
    }
    const status = await new Promise<number>((resolve, reject) => {
      const lib = base.protocol === 'https:' ? https : http;
      const req = lib.request(url, {
        method: 'GET', headers, timeout: timeoutMs, cert, key, agent: false,
        ...(socket && { createConnection: () => socket }),
      }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('timeout', () => req.destroy(new Error(`no answer in ${timeoutMs} ms`)));
      req.on('error', reject);
      req.end();
    });
    if (status === 200) return ok(name, `${server.url} answers the plugin API`);
    if (status === 401 || status === 403) return fail(name, `${server.url} refuses this client (HTTP ${status})`, server.token_file ? `check that server.token_file (${server.token_file}) holds the token shed-server expects` : 'set server.token_file (or a client certificate) as shed-server requires');
    return fail(name, `${server.url} answered HTTP ${status} to GET /api/plugins/listeners`, 'check server.url points at shed-server');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return fail(name, `${server.url} cannot be reached: ${code ?? (err as Error).message}`, code === 'ECONNREFUSED' ? 'start shed-server, or fix server.url' : 'check server.url, server.tls_pin and the network');
  }
}

function pinnedSocket(base: URL, pin: string, cert: Buffer | undefined, key: Buffer | undefined, timeoutMs: number): Promise<tls.TLSSocket> {
  const want = normalizePin(pin);
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: base.hostname, port: Number(base.port || 443), servername: base.hostname, rejectUnauthorized: false, cert, key, ALPNProtocols: ['http/1.1'] });
    const timer = setTimeout(() => socket.destroy(new Error(`no TLS handshake in ${timeoutMs} ms`)), timeoutMs);
    socket.once('secureConnect', () => {
      clearTimeout(timer);
      const got = certificatePin(socket.getPeerCertificate().raw);
      if (got !== want) {
        socket.destroy();
        reject(new Error(`the server certificate is sha256:${got}, not the pinned server.tls_pin`));
      } else {
        resolve(socket);
      }
    });
    socket.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

/** A file the broker writes (audit log) or a directory it creates (sockets): writable, or creatable. */
export function probeWritable(name: string, target: string, kind: 'file' | 'dir'): Check {
  try {
    const st = fs.statSync(target);
    if (kind === 'dir' && !st.isDirectory()) return fail(name, `${target} exists and is not a directory`, `remove or rename ${target}`);
    fs.accessSync(target, fs.constants.W_OK);
    return ok(name, `${target} is writable`);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'ENOENT') return fail(name, `${target} is not writable (${code})`, `chmod u+w ${shellQuote(target)} (or change its owner to the user running shed-host-agent)`);
  }
  let dir = path.dirname(target);
  while (!fs.existsSync(dir) && path.dirname(dir) !== dir) dir = path.dirname(dir);
  try {
    fs.accessSync(dir, fs.constants.W_OK | fs.constants.X_OK);
    return ok(name, `${target} will be created (in ${dir})`);
  } catch (err) {
    return fail(name, `${target} cannot be created: ${dir} is not writable (${(err as NodeJS.ErrnoException).code})`, `mkdir -p -m 700 ${shellQuote(path.dirname(target))} as the user running shed-host-agent`);
  }
}

export interface DoctorEnv {
  env: NodeJS.ProcessEnv;
  home: string;
  timeoutMs?: number;
}

/** Every check the policy calls for. */
export async function runChecks(config: string, denv: DoctorEnv): Promise<Check[]> {
  const checks: Check[] = [];
  let policy: Policy;
  try {
    policy = loadPolicyFile(config);
    checks.push(ok('policy', `${policy.files.join(', ')}: ${policy.namedSheds().length} named sheds${policy.hasWildcard() ? ' and "*"' : ''}`));
  } catch (err) {
    if (!(err instanceof PolicyError)) throw err;
    checks.push(fail('policy', `${err.problems.length} problem${err.problems.length === 1 ? '' : 's'}, first: ${err.problems[0]}`, `run shed-host-agent check --config ${shellQuote(config)} and fix each one`));
    policy = policyFromDocument({ version: 1, sheds: { '*': {} } });
  }
  const sheds = listedSheds(policy).map((n) => policy.resolve(n)).filter((e): e is EffectiveShed => e !== undefined);

  const sshSheds = sheds.filter((e) => e.ssh.enabled);
  const held = new Set<string>();
  const sockets = new Set(sshSheds.filter((e) => e.ssh.mode !== 'local-keys').map((e) => e.ssh.agent_socket ?? denv.env.SSH_AUTH_SOCK ?? ''));
  const autoOnly = sshSheds.every((e) => e.ssh.mode === 'auto');
  for (const socket of sockets) {
    const { check, fingerprints } = await probeSshAgent(socket || undefined, denv.timeoutMs);
    // In auto mode a missing agent is fine when local keys work.
    checks.push(check.status === 'fail' && autoOnly ? { ...check, status: 'warn', fix: `${check.fix} (auto mode falls back to ~/.ssh keys)` } : check);
    fingerprints.forEach((f) => held.add(f));
  }
  const localSheds = sshSheds.filter((e) => e.ssh.mode !== 'agent-forward');
  if (localSheds.length) {
    const extra = [...new Set(localSheds.flatMap((e) => e.ssh.keys))];
    const { check, fingerprints } = probeLocalKeys(denv.home, extra);
    const needed = localSheds.some((e) => e.ssh.mode === 'local-keys') || checks.every((c) => !c.name.startsWith('ssh agent') || c.status !== 'ok');
    checks.push(check.status === 'fail' && !needed ? { ...check, status: 'warn' } : check);
    fingerprints.forEach((f) => held.add(f));
  }
  for (const fp of new Set(sshSheds.flatMap((e) => e.ssh.allowed_keys))) {
    if (!held.has(fp)) {
      const who = sshSheds.filter((e) => e.ssh.allowed_keys.includes(fp)).map((e) => e.name).join(', ');
      checks.push(warn(`ssh allowed key ${fp}`, `listed in allowed_keys (${who}) but no backend holds it`, 'ssh-add that key on the host, or remove it from allowed_keys'));
    }
  }

  const profiles = new Set(sheds.filter((e) => e.aws.enabled && e.aws.role).map((e) => e.aws.source_profile));
  for (const profile of profiles) {
    checks.push(await probeAwsProfile(profile, { configFile: denv.env.AWS_CONFIG_FILE, credentialsFile: denv.env.AWS_SHARED_CREDENTIALS_FILE, timeoutMs: denv.timeoutMs }));
  }

  const dockerFiles = new Set(sheds.filter((e) => e.docker.enabled && (e.docker.allow_all || e.docker.registries.length)).map((e) => dockerConfigPath(e.docker, denv.env, denv.home)));
  for (const file of dockerFiles) {
    const { check, helpers } = probeDockerConfig(file);
    checks.push(check);
    for (const helper of helpers) checks.push(probeDockerHelper(helper, denv.env.PATH ?? ''));
  }

  const gitSheds = sheds.filter((e) => e.git.enabled && e.git.allowed.length);
  if (gitSheds.length) {
    checks.push(await probeGit(denv.env, denv.timeoutMs));
    // `git credential fill` answers every allowed host without a source; its helpers matter only then.
    const sourced = (e: EffectiveShed, text: string) => {
      const entry = parseAllowed(text);
      return entry !== undefined && Object.keys(e.git.sources).some((k) => normalizeHost(k, entry.scheme) === entry.host);
    };
    if (gitSheds.some((e) => e.git.allowed.some((a) => !sourced(e, a)))) {
      checks.push(await probeGitHelpers(denv.env, denv.timeoutMs));
    }
    const commands = new Map<string, string[]>();
    for (const e of gitSheds) for (const [host, source] of Object.entries(e.git.sources)) commands.set(`${host} ${source.command[0]}`, [host, ...source.command]);
    for (const [host, ...command] of commands.values()) checks.push(probeGitSource(host!, command, denv.env.PATH ?? ''));
    const plain = [...new Set(gitSheds.flatMap((e) => e.git.allowed.map(parseAllowed)).filter((a) => a?.scheme === 'http' && !/^(localhost|127\.[\d.]+|\[::1\])(:\d+)?$/.test(a.host)).map((a) => a!.text))];
    if (plain.length) {
      checks.push(warn('git plain http', `git.allowed names ${plain.join(', ')} over plain http: their tokens cross the network unencrypted`, 'use https for them if the server has it'));
    }
  }

  if (policy.server) checks.push(await probeShedServer(policy.server, denv.timeoutMs));
  if (policy.direct.enabled) checks.push(probeWritable('sockets dir', policy.direct.socketsDir, 'dir'));
  checks.push(probeWritable('audit log', policy.audit.dir, 'dir'));

  const approvals = new Approvals({ log: memoryLogger('doctor') });
  const gates = await approvals.check(policy).finally(() => approvals.close());
  checks.push(gates.length ? fail('approval gates', gates.join('; '), 'install the gate program (or fix approval.command), or set approval.gate') : ok('approval gates', 'every configured gate can run here'));
  return checks;
}

export function formatCheck(c: Check): string {
  const tag = { ok: 'ok  ', warn: 'WARN', fail: 'FAIL' }[c.status];
  return `${tag}  ${c.name}: ${c.detail}${c.fix ? ` -- fix: ${c.fix}` : ''}`;
}

export async function doctorCommand(config: string, io: Io, denv: DoctorEnv = { env: process.env, home: os.homedir() }): Promise<number> {
  const checks = await runChecks(config, denv);
  for (const c of checks) io.out(`${formatCheck(c)}\n`);
  const failed = checks.filter((c) => c.status === 'fail').length;
  io.out(failed ? `${failed} check${failed === 1 ? '' : 's'} failed\n` : 'all checks passed\n');
  return failed ? 1 : 0;
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([p, new Promise<T>((_, reject) => (timer = setTimeout(() => reject(new Error(what)), ms)))]).finally(() => clearTimeout(timer));
}
