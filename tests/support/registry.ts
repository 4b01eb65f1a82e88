/**
 * Real registry peers for the docker-credentials tests (TESTING.md recipes):
 * a `docker-registry` on loopback (with htpasswd basic auth, or open like a
 * public registry), a hand-built OCI image pushed to it with skopeo, a
 * throwaway GPG key and password store for `docker-credential-pass`, and the
 * guest helper bundled the way a guest ships it.
 */
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import zlib from 'node:zlib';
import { bundleGuest } from '../../guest-services/bundle.js';
import { capture, run, spawnTracked, stopProcess, tempDir, waitFor } from './procs.js';

export interface Registry {
  /** `127.0.0.1:<port>`, as clients name it. */
  host: string;
  port: number;
  stop(): Promise<void>;
}

function statusOf(url: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', reject);
    req.setTimeout(2000, () => req.destroy(new Error('timeout')));
  });
}

/** Start `docker-registry serve` on a free loopback port; with `users`, basic auth from an htpasswd file. */
export async function startRegistry(options: { users?: Record<string, string> } = {}): Promise<Registry> {
  const dir = tempDir('shed-reg');
  const lines = [
    'version: 0.1',
    'log: { level: info }',
    'storage:',
    `  filesystem: { rootdirectory: ${dir}/storage }`,
    'http:',
    '  addr: 127.0.0.1:0',
    '  secret: test-secret',
  ];
  if (options.users) {
    const htpasswd = path.join(dir, 'htpasswd');
    let text = '';
    for (const [user, password] of Object.entries(options.users)) {
      text += execFileSync('htpasswd', ['-Bbn', user, password], { encoding: 'utf8' }).trim() + '\n';
    }
    fs.writeFileSync(htpasswd, text, { mode: 0o600 });
    lines.push('auth:', '  htpasswd:', '    realm: basic-realm', `    path: ${htpasswd}`);
  }
  const config = path.join(dir, 'config.yml');
  fs.writeFileSync(config, `${lines.join('\n')}\n`);
  const child = spawnTracked('docker-registry', ['serve', config]);
  const out = capture(child);
  try {
    const port = await waitFor(() => {
      if (child.exitCode !== null) throw new Error(`docker-registry exited: ${out.stderr().slice(-500)}`);
      const m = /listening on 127\.0\.0\.1:(\d+)/.exec(out.stderr() + out.stdout());
      return m ? Number(m[1]) : undefined;
    }, 10_000, 'docker-registry to listen');
    const expected = options.users ? 401 : 200;
    await waitFor(async () => (await statusOf(`http://127.0.0.1:${port}/v2/`)) === expected, 10_000, `docker-registry /v2/ to answer ${expected}`);
    return { host: `127.0.0.1:${port}`, port, stop: async () => void (await stopProcess(child)) };
  } catch (err) {
    await stopProcess(child);
    throw err;
  }
}

function sha256(data: Buffer | string): string {
  return crypto.createHash('sha256').update(data).digest('hex');
}

/** A one-file ustar archive. */
function tarOf(name: string, content: Buffer): Buffer {
  const header = Buffer.alloc(512);
  header.write(name, 0, 100, 'utf8');
  header.write('0000644\0', 100);
  header.write('0000000\0', 108);
  header.write('0000000\0', 116);
  header.write(`${content.length.toString(8).padStart(11, '0')}\0`, 124);
  header.write(`${Math.floor(Date.UTC(2024, 0, 1) / 1000).toString(8).padStart(11, '0')}\0`, 136);
  header.write('        ', 148);
  header.write('0', 156);
  header.write('ustar\0', 257);
  header.write('00', 263);
  let sum = 0;
  for (const byte of header) sum += byte;
  header.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148);
  const padding = Buffer.alloc((512 - (content.length % 512)) % 512);
  return Buffer.concat([header, content, padding, Buffer.alloc(1024)]);
}

/** An OCI image layout with one layer holding `hello.txt`, tagged `tag`. Returns the layout directory. */
export function buildOciLayout(text = 'hello from a shed test\n', tag = 'v1'): string {
  const dir = tempDir('shed-oci');
  const blobs = path.join(dir, 'blobs', 'sha256');
  fs.mkdirSync(blobs, { recursive: true });
  const blob = (data: Buffer) => {
    const hex = sha256(data);
    fs.writeFileSync(path.join(blobs, hex), data);
    return { digest: `sha256:${hex}`, size: data.length };
  };
  const tar = tarOf('hello.txt', Buffer.from(text));
  const layer = blob(zlib.gzipSync(tar));
  const config = blob(Buffer.from(JSON.stringify({
    architecture: 'amd64',
    os: 'linux',
    config: {},
    rootfs: { type: 'layers', diff_ids: [`sha256:${sha256(tar)}`] },
  })));
  const manifest = blob(Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', ...layer }],
  })));
  fs.writeFileSync(path.join(dir, 'index.json'), JSON.stringify({
    schemaVersion: 2,
    manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', ...manifest, annotations: { 'org.opencontainers.image.ref.name': tag } }],
  }));
  fs.writeFileSync(path.join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  return dir;
}

/** An environment where skopeo sees nothing of this machine's own config. */
export function isolatedEnv(home: string, extra: Record<string, string> = {}): Record<string, string> {
  return {
    PATH: '/usr/local/bin:/usr/bin:/bin',
    HOME: home,
    DOCKER_CONFIG: path.join(home, '.docker'),
    REGISTRY_AUTH_FILE: path.join(home, 'auth.json'),
    ...extra,
  };
}

/** Push the layout's `v1` to `docker://<host>/<repo>:v1` (with `creds` as user:pass, or anonymously). */
export async function pushImage(layout: string, registry: Registry, repo: string, creds?: string): Promise<void> {
  const home = tempDir('shed-push');
  const args = ['--insecure-policy', 'copy', '--dest-tls-verify=false'];
  if (creds) args.push('--dest-creds', creds);
  args.push(`oci:${layout}:v1`, `docker://${registry.host}/${repo}:v1`);
  const result = await run('skopeo', args, { env: isolatedEnv(home), timeoutMs: 30_000 });
  if (result.code !== 0) throw new Error(`skopeo push to ${registry.host}/${repo} failed: ${result.stderr.slice(-500)}`);
}

export interface PassStore {
  /** GNUPGHOME, PASSWORD_STORE_DIR and PATH for docker-credential-pass. */
  env: Record<string, string>;
  /** `docker-credential-pass store`. */
  store(serverUrl: string, username: string, secret: string): Promise<void>;
  stop(): Promise<void>;
}

/** A throwaway GPG key and password store that `docker-credential-pass` works with headless. */
export async function startPassStore(): Promise<PassStore> {
  const gnupgHome = tempDir('gpg'); // short: gpg-agent's socket lives in it
  const storeDir = tempDir('shed-pass');
  const env = { PATH: '/usr/bin:/bin', HOME: storeDir, GNUPGHOME: gnupgHome, PASSWORD_STORE_DIR: storeDir };
  const must = async (cmd: string, args: string[], input?: string) => {
    const r = await run(cmd, args, { env, input, timeoutMs: 30_000 });
    if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.code}): ${r.stderr.slice(-500)}`);
    return r;
  };
  const stop = async () => {
    await run('gpgconf', ['--kill', 'gpg-agent'], { env, timeoutMs: 10_000 }).catch(() => undefined);
  };
  try {
    await must('gpg', ['--batch', '--quiet', '--passphrase', '', '--quick-gen-key', 'test@example.test', 'default', 'default', 'never']);
    await must('pass', ['init', 'test@example.test']);
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    env,
    async store(serverUrl, username, secret) {
      await must('docker-credential-pass', ['store'], JSON.stringify({ ServerURL: serverUrl, Username: username, Secret: secret }));
    },
    stop,
  };
}

/**
 * Bundle docker-credential-shed into one ESM file exactly as a guest ships it
 * (guest-services/bundle.ts). Returns the bundle path and the source files it pulled in.
 */
export async function bundleDockerCredentialShed(outDir: string = tempDir('shed-bundle')): Promise<{ file: string; inputs: string[] }> {
  const { bundles } = await bundleGuest({ outDir, only: ['docker-credential-shed'] });
  const bundle = bundles[0]!;
  return { file: bundle.file, inputs: bundle.inputs };
}

/** A bin directory holding a `docker-credential-shed` that runs `bundle` with this node. */
export function guestBinDir(bundle: string): string {
  const bin = tempDir('shed-gbin');
  fs.writeFileSync(path.join(bin, 'docker-credential-shed'), `#!/bin/sh\nexec '${process.execPath}' '${bundle}' "$@"\n`, { mode: 0o755 });
  return bin;
}
