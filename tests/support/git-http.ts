/**
 * Real git peers for the git-credentials tests: bare repositories served
 * over HTTP on loopback by git's own `git http-backend` (run as a CGI
 * program, as Apache or nginx run it) behind a small node:http server that
 * demands basic auth on every request, as a Git host does for a private
 * repository; isolated git environments for the "host" and the "guest";
 * and the guest helper bundled the way a guest ships it.
 */
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { bundleGuest } from '../../guest-services/bundle.js';
import { run, spawnTracked, tempDir } from './procs.js';

export const HTTP_BACKEND = '/usr/lib/git-core/git-http-backend';

/** Fixed author and committer, so commits are made the same way everywhere. */
const IDENTITY = {
  GIT_AUTHOR_NAME: 'Shed Test', GIT_AUTHOR_EMAIL: 'test@shed.invalid',
  GIT_COMMITTER_NAME: 'Shed Test', GIT_COMMITTER_EMAIL: 'test@shed.invalid',
};

/**
 * An environment for git that reads only `home`'s config: no system
 * config (or the file `systemConfig` in its place), no terminal prompt (a
 * test never waits on one), and the same author everywhere.
 */
export function gitEnv(home: string, extra: Record<string, string> = {}, systemConfig?: string): Record<string, string> {
  return {
    PATH: '/usr/bin:/bin',
    HOME: home,
    XDG_CONFIG_HOME: path.join(home, '.config'),
    ...(systemConfig ? { GIT_CONFIG_SYSTEM: systemConfig } : { GIT_CONFIG_NOSYSTEM: '1' }),
    GIT_TERMINAL_PROMPT: '0',
    LC_ALL: 'C',
    ...IDENTITY,
    ...extra,
  };
}

/** Run git, throwing with its stderr when it fails. */
export async function git(args: string[], env: Record<string, string>, options: { cwd?: string; input?: string } = {}): Promise<string> {
  const r = await run('git', args, { env, cwd: options.cwd, input: options.input, timeoutMs: 30_000 });
  if (r.code !== 0) throw new Error(`git ${args.join(' ')} failed (${r.code}): ${r.stderr.slice(-800)}`);
  return r.stdout;
}

export interface ServedRequest {
  method: string;
  /** The path asked for, with the query. */
  url: string;
  /** The user of an accepted basic-auth header, or undefined. */
  user?: string;
  status: number;
}

export interface GitServer {
  /** `127.0.0.1:<port>`: the host as git names it. */
  host: string;
  /** `http://127.0.0.1:<port>` */
  base: string;
  /** Where the bare repositories are (`<root>/acme/app.git`). */
  root: string;
  requests: ServedRequest[];
  /** The commit a repository's `main` points at. */
  head(repo: string): Promise<string>;
  stop(): Promise<void>;
}

function basicUser(header: string | undefined, users: Record<string, string>): string | undefined {
  const m = /^Basic ([A-Za-z0-9+/=]+)$/.exec(header ?? '');
  if (!m) return undefined;
  const decoded = Buffer.from(m[1]!, 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon < 0) return undefined;
  const user = decoded.slice(0, colon);
  return Object.hasOwn(users, user) && users[user] === decoded.slice(colon + 1) ? user : undefined;
}

/**
 * Serve `repos` (paths like `acme/app.git`, each created bare with one
 * commit on `main`) at `http://127.0.0.1:<port>/<repo>`, every request
 * needing basic auth as one of `users` (name → password). Pushes are
 * accepted (http-backend enables receive-pack for an authenticated user).
 */
export async function startGitServer(options: { users: Record<string, string>; repos: string[] }): Promise<GitServer> {
  const dir = tempDir('shed-git');
  const root = path.join(dir, 'repos');
  const home = path.join(dir, 'home');
  fs.mkdirSync(home);
  const env = gitEnv(home);
  for (const repo of options.repos) {
    const bare = path.join(root, repo);
    fs.mkdirSync(path.dirname(bare), { recursive: true });
    await git(['init', '-q', '--bare', '-b', 'main', bare], env);
    const work = path.join(dir, 'seed', repo);
    fs.mkdirSync(work, { recursive: true });
    await git(['init', '-q', '-b', 'main'], env, { cwd: work });
    fs.writeFileSync(path.join(work, 'README'), `${repo}\n`);
    await git(['add', 'README'], env, { cwd: work });
    await git(['commit', '-q', '-m', `seed ${repo}`], env, { cwd: work });
    await git(['push', '-q', bare, 'main'], env, { cwd: work });
  }

  const requests: ServedRequest[] = [];
  const children = new Set<ReturnType<typeof spawnTracked>>();
  const server = http.createServer((req, res) => {
    const entry: ServedRequest = { method: req.method ?? '', url: req.url ?? '', status: 0 };
    requests.push(entry);
    const user = basicUser(req.headers.authorization, options.users);
    if (!user) {
      entry.status = 401;
      req.resume();
      res.writeHead(401, { 'WWW-Authenticate': 'Basic realm="shed test git"', 'Content-Type': 'text/plain' });
      res.end('authentication required\n');
      return;
    }
    entry.user = user;
    const url = new URL(req.url ?? '/', 'http://localhost');
    const cgiEnv: Record<string, string> = {
      PATH: '/usr/bin:/bin', HOME: home, GIT_CONFIG_NOSYSTEM: '1',
      GIT_PROJECT_ROOT: root, GIT_HTTP_EXPORT_ALL: '1',
      GATEWAY_INTERFACE: 'CGI/1.1', SERVER_PROTOCOL: 'HTTP/1.1', SERVER_SOFTWARE: 'shed-test',
      REQUEST_METHOD: req.method ?? 'GET', PATH_INFO: decodeURIComponent(url.pathname), QUERY_STRING: url.search.slice(1),
      REMOTE_USER: user, REMOTE_ADDR: req.socket.remoteAddress ?? '127.0.0.1', CONTENT_TYPE: req.headers['content-type'] ?? '',
    };
    if (req.headers['content-length'] !== undefined) cgiEnv.CONTENT_LENGTH = req.headers['content-length'];
    if (req.headers['content-encoding'] !== undefined) cgiEnv.HTTP_CONTENT_ENCODING = String(req.headers['content-encoding']);
    if (req.headers['git-protocol'] !== undefined) cgiEnv.GIT_PROTOCOL = String(req.headers['git-protocol']);
    const child = spawnTracked(HTTP_BACKEND, [], { env: cgiEnv, stdio: ['pipe', 'pipe', 'pipe'] });
    children.add(child);
    child.once('close', () => children.delete(child));
    child.stdin!.on('error', () => undefined);
    req.pipe(child.stdin!);
    let head = Buffer.alloc(0);
    let headDone = false;
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    child.stdout!.on('data', (chunk: Buffer) => {
      if (headDone) {
        res.write(chunk);
        return;
      }
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf('\r\n\r\n') >= 0 ? head.indexOf('\r\n\r\n') : head.indexOf('\n\n');
      if (end < 0) return;
      const sep = head.indexOf('\r\n\r\n') >= 0 ? 4 : 2;
      const fields = head.subarray(0, end).toString('latin1').split(/\r?\n/);
      let status = 200;
      const headers: Record<string, string> = {};
      for (const field of fields) {
        const colon = field.indexOf(':');
        if (colon < 0) continue;
        const name = field.slice(0, colon).trim();
        const value = field.slice(colon + 1).trim();
        if (name.toLowerCase() === 'status') status = Number(value.split(' ')[0]);
        else headers[name] = value;
      }
      headDone = true;
      entry.status = status;
      res.writeHead(status, headers);
      res.write(head.subarray(end + sep));
    });
    child.once('close', (code) => {
      if (!headDone) {
        entry.status = 500;
        res.writeHead(500, { 'Content-Type': 'text/plain' });
        res.end(`git http-backend failed (${code}): ${stderr.slice(-300)}\n`);
      } else {
        res.end();
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    host: `127.0.0.1:${port}`,
    base: `http://127.0.0.1:${port}`,
    root,
    requests,
    head: async (repo) => (await git(['--git-dir', path.join(root, repo), 'rev-parse', 'main'], env)).trim(),
    async stop() {
      for (const child of children) child.kill('SIGKILL');
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** Store a credential in `home`'s git the way a user's git does after a login: `git credential approve` into credential-store. */
export async function storeHostCredential(home: string, credential: { protocol: string; host: string; username: string; password: string }): Promise<void> {
  const env = gitEnv(home);
  await git(['config', '--global', 'credential.helper', 'store'], env);
  const { protocol, host, username, password } = credential;
  await git(['credential', 'approve'], env, { input: `protocol=${protocol}\nhost=${host}\nusername=${username}\npassword=${password}\n\n` });
}

/** `git-credential-shed` bundled as a guest ships it (single-file CommonJS). */
export async function bundleGitCredentialShed(outDir: string = tempDir('shed-gbundle')): Promise<{ file: string; inputs: string[] }> {
  const { bundles } = await bundleGuest({ outDir, only: ['git-credential-shed'] });
  const bundle = bundles[0]!;
  return { file: bundle.file, inputs: bundle.inputs };
}

/** A bin directory holding a `git-credential-shed` launcher that runs `bundle` with this node (as install-guest's launcher does with the VM's). */
export function gitGuestBinDir(bundle: string): string {
  const bin = tempDir('shed-gitbin');
  fs.writeFileSync(path.join(bin, 'git-credential-shed'), `#!/bin/sh\nexec '${process.execPath}' '${bundle}' "$@"\n`, { mode: 0o755 });
  return bin;
}
