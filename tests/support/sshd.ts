/**
 * Real OpenSSH for tests (TESTING.md recipes): key pairs from ssh-keygen, a
 * foreground sshd on a free loopback port, a real ssh-agent, and the ssh
 * options that keep a client away from the user's own configuration.
 */
import type { ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import ssh2 from 'ssh2';
import { capture, run, spawnTracked, stopProcess, waitFor } from './procs.js';

export interface KeyPair {
  type: string;
  /** Private key file (0600). */
  file: string;
  /** The public key, in a directory without the private key. */
  pubFile: string;
  /** `ssh-ed25519 AAAA… comment` */
  pubLine: string;
  /** As `ssh-keygen -lf` prints it. */
  fingerprint: string;
  /**
   * Private key material as it could leak: the private scalar (RSA: and
   * primes) in base64, base64url and hex. Tests grep outputs for these.
   */
  secrets: string[];
}

/** `ssh-keygen -t type` into `dir/name` (no passphrase unless given; `bits` for ecdsa 384/521 or a larger RSA). */
export async function makeKey(dir: string, name: string, type: 'ed25519' | 'ecdsa' | 'rsa', passphrase = '', bits?: number): Promise<KeyPair> {
  const file = path.join(dir, name);
  const args = ['-q', '-t', type, '-N', passphrase, '-C', `${name}@test`, '-f', file];
  if (bits !== undefined) args.push('-b', String(bits));
  else if (type === 'rsa') args.push('-b', '2048');
  const r = await run('ssh-keygen', args);
  if (r.code !== 0) throw new Error(`ssh-keygen failed: ${r.stderr}`);
  const pubLine = fs.readFileSync(`${file}.pub`, 'utf8').trim();
  // Clients get a copy of the public key away from the private one: ssh-keygen -Y sign -f key.pub
  // would otherwise fall back to the private key file beside it when the agent refuses.
  const pubDir = path.join(dir, 'pub');
  fs.mkdirSync(pubDir, { recursive: true, mode: 0o700 });
  const pubFile = path.join(pubDir, `${name}.pub`);
  fs.copyFileSync(`${file}.pub`, pubFile);
  const fp = await run('ssh-keygen', ['-lf', `${file}.pub`]);
  const fingerprint = fp.stdout.split(/\s+/)[1]!;
  return { type, file, pubFile, pubLine, fingerprint, secrets: passphrase ? [] : privateSecrets(file) };
}

function privateSecrets(file: string): string[] {
  const key = ssh2.utils.parseKey(fs.readFileSync(file));
  if (key instanceof Error) throw key;
  const jwk = crypto.createPrivateKey(key.getPrivatePEM()).export({ format: 'jwk' });
  // The private scalar (and RSA's primes) in every common spelling; 40 characters of each catch a partial leak too.
  const parts = [jwk.d, jwk.p, jwk.q].filter((v): v is string => Boolean(v)).map((v) => Buffer.from(v, 'base64url'));
  return parts.flatMap((b) => [b.toString('base64').slice(0, 40), b.toString('base64url').slice(0, 40), b.toString('hex').slice(0, 40)]);
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

export interface Sshd {
  port: number;
  hostKey: KeyPair;
  /** A known_hosts line for this server: `[127.0.0.1]:port ssh-ed25519 AAAA…` */
  knownHostsLine: string;
  stderr: () => string;
  stop(): Promise<void>;
}

/**
 * A foreground sshd on 127.0.0.1 that lets `authorizedKeys` log in as the
 * current user (root here); `extraConfig` adds sshd_config lines
 * (`TrustedUserCAKeys …`).
 */
export async function startSshd(dir: string, authorizedKeys: string[], hostKeyType: 'ed25519' | 'ecdsa' | 'rsa' = 'ed25519', extraConfig: string[] = []): Promise<Sshd> {
  fs.mkdirSync('/run/sshd', { recursive: true, mode: 0o755 });
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const hostKey = await makeKey(dir, `host_${hostKeyType}`, hostKeyType);
  const authorized = path.join(dir, 'authorized_keys');
  fs.writeFileSync(authorized, `${authorizedKeys.join('\n')}\n`, { mode: 0o600 });
  for (let attempt = 0; ; attempt++) {
    const port = await freePort();
    const config = path.join(dir, 'sshd_config');
    fs.writeFileSync(config, [
      `Port ${port}`,
      'ListenAddress 127.0.0.1',
      `HostKey ${hostKey.file}`,
      `PidFile ${path.join(dir, 'sshd.pid')}`,
      `AuthorizedKeysFile ${authorized}`,
      'UsePAM no',
      'StrictModes no',
      'PasswordAuthentication no',
      'KbdInteractiveAuthentication no',
      'PermitRootLogin prohibit-password',
      'LogLevel INFO',
      'Subsystem sftp internal-sftp',
      ...extraConfig,
      '',
    ].join('\n'));
    const child = spawnTracked('/usr/sbin/sshd', ['-D', '-e', '-f', config]);
    const out = capture(child);
    try {
      await waitFor(() => out.stderr().includes('Server listening') || child.exitCode !== null, 5000, 'sshd to listen');
    } catch (err) {
      await stopProcess(child);
      throw err;
    }
    if (child.exitCode !== null) {
      if (attempt < 3 && /Address already in use/.test(out.stderr())) continue;
      throw new Error(`sshd exited: ${out.stderr()}`);
    }
    const [type, b64] = hostKey.pubLine.split(' ');
    return {
      port,
      hostKey,
      knownHostsLine: `[127.0.0.1]:${port} ${type} ${b64}`,
      stderr: out.stderr,
      stop: async () => { await stopProcess(child); },
    };
  }
}

export interface RealAgent {
  sock: string;
  child: ChildProcess;
  stop(): Promise<void>;
}

/** A real OpenSSH ssh-agent in the foreground on `sock`, with `keys` added. */
export async function startRealAgent(sock: string, keys: KeyPair[]): Promise<RealAgent> {
  const child = spawnTracked('ssh-agent', ['-D', '-a', sock]);
  await waitFor(() => fs.existsSync(sock), 5000, 'ssh-agent socket');
  for (const k of keys) {
    const r = await run('ssh-add', [k.file], { env: { ...cleanEnv(), SSH_AUTH_SOCK: sock } });
    if (r.code !== 0) throw new Error(`ssh-add ${k.file} failed: ${r.stderr}`);
  }
  return { sock, child, stop: async () => { await stopProcess(child); } };
}

/** PATH and HOME only: nothing of the developer's own ssh setup leaks into a test. */
export function cleanEnv(home = '/nonexistent'): NodeJS.ProcessEnv {
  return { PATH: '/usr/bin:/bin:/usr/sbin:/sbin', HOME: home, LANG: 'C' };
}

/** ssh options for a test client: no config, batch mode, a private known_hosts. */
export function sshOptions(port: number, knownHosts: string, extra: string[] = []): string[] {
  return [
    '-F', 'none',
    '-o', 'BatchMode=yes',
    '-o', 'LogLevel=ERROR',
    '-o', `UserKnownHostsFile=${knownHosts}`,
    '-o', 'StrictHostKeyChecking=no',
    '-o', 'ConnectTimeout=10',
    '-p', String(port),
    ...extra,
  ];
}
