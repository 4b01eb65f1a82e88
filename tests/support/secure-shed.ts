/**
 * A shed server in secure mode (PROTOCOL.md 3a), for tests: pinned HTTPS
 * with a self-signed certificate made by `openssl`, bearer tokens of scope
 * `credentials` that expire in seconds (401 after), stored hashed; and the
 * mint reached the way shed's host agent reaches it: a real OpenSSH sshd on
 * loopback whose authorized_keys entry forces a small script that asks this
 * stand-in for a bundle and prints it (`ssh -p <port> <user>@127.0.0.1
 * credentials <client-name>`).
 */
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import type net from 'node:net';
import path from 'node:path';
import type { ServerConnection } from '../../host-broker/transports/server-config.js';
import { ShedServerEmulator, type ShedServerEmulatorOptions } from './bus-emulator.js';
import { tempDir } from './procs.js';
import { makeKey, startSshd, type KeyPair, type Sshd } from './sshd.js';

export type Scope = 'credentials' | 'control';

interface Issued {
  scope: Scope;
  tokenId: string;
  client: string;
  expiresAt: number;
  revoked: boolean;
}

export type Verdict = { ok: true } | { ok: false; status: 401 | 403; code: string; message: string };

/** shed's token store: tokens `shed_<scope>_<base64url>`, kept hashed, with a scope and an expiry. */
export class TokenAuthority {
  private readonly issued = new Map<string, Issued>();
  /** Every mint, in order (client name, scope, when). */
  readonly mints: { client: string; scope: Scope; at: number }[] = [];
  /** Every token handed out (tests grep logs for them). */
  readonly tokens: string[] = [];
  /** Calls refused, by status. */
  readonly refusals: { status: number; code: string }[] = [];
  /** Filled in by the server (its certificate and ports). */
  fingerprint = '';
  httpsPort = 0;

  constructor(public ttlMs: number) {}

  mint(scope: Scope, client: string): Record<string, unknown> {
    const token = `shed_${scope}_${crypto.randomBytes(24).toString('base64url')}`;
    const tokenId = crypto.randomUUID();
    const expiresAt = Date.now() + this.ttlMs;
    this.issued.set(hash(token), { scope, tokenId, client, expiresAt, revoked: false });
    this.mints.push({ client, scope, at: Date.now() });
    this.tokens.push(token);
    return {
      http_port: 8080,
      https_port: this.httpsPort,
      tls_cert_fingerprint: this.fingerprint,
      token,
      scope,
      token_id: tokenId,
      expires_at: new Date(expiresAt).toISOString(),
    };
  }

  /** Whether a token is known, unexpired and not revoked. */
  valid(token: string): boolean {
    const t = this.issued.get(hash(token));
    return Boolean(t && !t.revoked && Date.now() < t.expiresAt);
  }

  /** The plugin API's check of an Authorization header. */
  verify(authorization: string | undefined, need: Scope): Verdict {
    const token = /^Bearer (\S+)$/.exec(authorization ?? '')?.[1];
    const t = token ? this.issued.get(hash(token)) : undefined;
    let verdict: Verdict;
    if (!token) verdict = { ok: false, status: 401, code: 'UNAUTHORIZED', message: 'missing bearer token' };
    else if (!t || t.revoked) verdict = { ok: false, status: 401, code: 'UNAUTHORIZED', message: 'invalid or revoked token' };
    else if (Date.now() >= t.expiresAt) verdict = { ok: false, status: 401, code: 'UNAUTHORIZED', message: 'token expired' };
    else if (t.scope !== need) verdict = { ok: false, status: 403, code: 'FORBIDDEN', message: `a ${t.scope} token cannot use this endpoint` };
    else verdict = { ok: true };
    if (!verdict.ok) this.refusals.push({ status: verdict.status, code: verdict.code });
    return verdict;
  }

  revokeAll(): void {
    for (const t of this.issued.values()) t.revoked = true;
  }
}

function hash(token: string): string {
  return crypto.createHash('sha256').update(token).digest('hex');
}

/**
 * The mint service behind the SSH forced command: loopback HTTP, reachable
 * only with a secret the forced-command script holds. `failing` makes it
 * refuse (the script then exits 1 with a message on stderr).
 */
export class MintService {
  readonly secret = crypto.randomBytes(16).toString('hex');
  failing = false;
  private readonly server = http.createServer((req, res) => this.handle(req, res));
  url = '';

  constructor(private readonly authority: TokenAuthority) {}

  async start(): Promise<void> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    this.url = `http://127.0.0.1:${(this.server.address() as net.AddressInfo).port}`;
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise((r) => this.server.close(r));
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    req.resume();
    const u = new URL(req.url ?? '/', 'http://x');
    if (req.headers['x-mint-secret'] !== this.secret || u.pathname !== '/mint') {
      res.writeHead(404).end();
      return;
    }
    if (this.failing) {
      res.writeHead(500).end();
      return;
    }
    const client = u.searchParams.get('client') ?? '';
    const scope = (u.searchParams.get('scope') ?? 'credentials') as Scope;
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(this.authority.mint(scope, client)));
  }
}

export interface Certificate {
  cert: string;
  key: string;
  /** `sha256:<hex>` of the DER, as shed prints it. */
  fingerprint: string;
}

/** A self-signed certificate for 127.0.0.1 made by the openssl CLI. */
export function makeCertificate(dir: string, name = 'server'): Certificate {
  const crt = path.join(dir, `${name}.crt`);
  const key = path.join(dir, `${name}.key`);
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', crt,
    '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 15_000 });
  const cert = fs.readFileSync(crt, 'utf8');
  const der = new crypto.X509Certificate(cert).raw;
  return { cert, key: fs.readFileSync(key, 'utf8'), fingerprint: `sha256:${crypto.createHash('sha256').update(der).digest('hex')}` };
}

/** The forced command: `credentials <client>` asks the mint service for a bundle and prints it; anything else is refused. */
function mintScript(mint: MintService, scope: Scope): string {
  return `#!/bin/sh
set -u
case "\${SSH_ORIGINAL_COMMAND:-}" in
  "credentials "*) client=\${SSH_ORIGINAL_COMMAND#credentials } ;;
  *) echo "shed bootstrap: unknown command; use: credentials <client-name>" >&2; exit 2 ;;
esac
case "$client" in
  ""|*[!A-Za-z0-9._-]*) echo "shed bootstrap: invalid client name" >&2; exit 2 ;;
esac
if ! out=$(curl -sS --fail --max-time 10 -H "x-mint-secret: ${mint.secret}" "${mint.url}/mint?client=$client&scope=${scope}" 2>/dev/null); then
  echo "shed bootstrap: the server could not mint a token for $client" >&2
  exit 1
fi
printf '%s\\n' "$out"
`;
}

export interface SecureShed {
  dir: string;
  server: ShedServerEmulator;
  authority: TokenAuthority;
  mint: MintService;
  certificate: Certificate;
  sshd: Sshd;
  /** The key allowed to mint (its private file is the bootstrap identity). */
  identity: KeyPair;
  /** A known_hosts file pinning the sshd's host key. */
  knownHosts: string;
  /** The connection a broker uses: bootstrap over the sshd, url of the HTTPS server; overrides merged in. */
  connection(overrides?: Partial<ServerConnection>): ServerConnection;
  /** The forced-command script (a token_command can run it too, with SSH_ORIGINAL_COMMAND set). */
  script: string;
  stop(): Promise<void>;
}

export interface SecureShedOptions {
  /** Token lifetime (default 60 s). */
  ttlMs?: number;
  /** Scope the forced command mints (default credentials; control to test the 403). */
  scope?: Scope;
  emulator?: Omit<ShedServerEmulatorOptions, 'authority' | 'tls'>;
  name?: string;
}

/** Everything of a secure-mode shed server: HTTPS emulator, token authority, mint service, sshd with the forced command. */
export async function startSecureShed(options: SecureShedOptions = {}): Promise<SecureShed> {
  const dir = tempDir('shed-sec');
  const certificate = makeCertificate(dir);
  const authority = new TokenAuthority(options.ttlMs ?? 60_000);
  authority.fingerprint = certificate.fingerprint;
  const server = new ShedServerEmulator({ ...options.emulator, authority, tls: { cert: certificate.cert, key: certificate.key } });
  await server.start();
  authority.httpsPort = Number(new URL(server.url).port);
  const mint = new MintService(authority);
  await mint.start();
  const script = path.join(dir, 'shed-bootstrap.sh');
  fs.writeFileSync(script, mintScript(mint, options.scope ?? 'credentials'), { mode: 0o700 });
  const identity = await makeKey(dir, 'bootstrap_ed25519', 'ed25519');
  const restrict = 'no-pty,no-port-forwarding,no-agent-forwarding,no-X11-forwarding';
  let sshd: Sshd;
  try {
    sshd = await startSshd(path.join(dir, 'sshd'), [`command="${script}",${restrict} ${identity.pubLine}`]);
  } catch (err) {
    await mint.stop();
    await server.stop();
    throw err;
  }
  const knownHosts = path.join(dir, 'known_hosts');
  fs.writeFileSync(knownHosts, `${sshd.knownHostsLine}\n`, { mode: 0o600 });
  return {
    dir,
    server,
    authority,
    mint,
    certificate,
    sshd,
    identity,
    knownHosts,
    script,
    connection: (overrides = {}) => ({
      name: options.name ?? 'default',
      url: server.url,
      namespaces: ['ssh-agent'],
      token: {
        kind: 'bootstrap',
        host: '127.0.0.1',
        port: sshd.port,
        user: 'root',
        identityFile: identity.file,
        knownHosts,
        clientName: 'test-laptop',
      },
      ...overrides,
    }),
    async stop() {
      await sshd.stop();
      await mint.stop();
      await server.stop();
    },
  };
}
