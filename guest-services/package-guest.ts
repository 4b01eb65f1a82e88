/**
 * The guest artifact: one versioned tarball an image builder uses without
 * this repository. `npm run guest-tarball` writes
 * build/shed-extensions-guest-<version>.tar.gz, whose one top directory
 * holds
 *
 *   shed-ext.mjs, shed-ext-ssh-agent.mjs, shed-ext-aws-credentials.mjs,
 *   docker-credential-shed.cjs            the bundles (need only node 20+)
 *   systemd/guest/...                     units, environment, docker and containers config (and manifests when the bundle has them)
 *   bin/                                  the launchers install-guest lays in /usr/local/bin
 *   install.sh                            `./install.sh [--publish-url URL] [--user NAME] [--uid N] [--root DIR]`
 *   devcontainer-feature.json             the same directory is a Dev Container Feature (install.sh reads its options)
 *   VERSION, README
 *
 * The tar is written here (ustar, gzip): sorted, owned by root, one mtime,
 * so the same inputs give the same bytes (set SOURCE_DATE_EPOCH to pin it).
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import zlib from 'node:zlib';
import { VERSION } from '../protocol/version.js';
import { bundleGuest } from './bundle.js';
import { AGENT_SOCK, DEFAULT_AWS_PORT, ENTRYPOINT, RECOMMENDED_MOUNT, TOKEN_FILE } from './status/guest-setup.js';
import { GUEST_BINARIES, launcher } from './status/install.js';

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const FEATURE_ID = 'shed-extensions';

export function tarballName(version = VERSION): string {
  return `shed-extensions-guest-${version}`;
}

/** install.sh: the image builder's installer, and the Dev Container Feature's. */
export function installScript(): string {
  return `#!/bin/sh
# shed-extensions ${VERSION}: install the guest side into this image (run as root).
#
#   ./install.sh --publish-url unix:${RECOMMENDED_MOUNT}/bus.sock [--user NAME] [--uid N] [--aws-port P] [--root DIR]
#
# takes the options of \`shed-ext install-guest\` (default --root /). As a Dev
# Container Feature (this directory, with devcontainer-feature.json) it takes
# the Feature's options instead: PUBLISHURL, SERVICEUSER, SERVICEUID.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
node=$(command -v node 2>/dev/null || true)
if [ -z "$node" ]; then
  echo "shed-extensions: node (Node.js 20 or newer) is not installed in this image; install it first (in a Dev Container: the ghcr.io/devcontainers/features/node Feature, or a node base image)" >&2
  exit 1
fi
major=$("$node" -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 20 ]; then
  echo "shed-extensions: node $("$node" --version) is too old; the guest programs need Node.js 20 or newer" >&2
  exit 1
fi
if [ $# -eq 0 ] && [ -n "\${_REMOTE_USER+x}\${_CONTAINER_USER+x}" ]; then
  # A Dev Container Feature: the services run as the dev container's user (shed when that is root).
  user=\${SERVICEUSER:-\${_REMOTE_USER:-shed}}
  [ "$user" != root ] || user=shed
  set -- --publish-url "\${PUBLISHURL:-unix:${RECOMMENDED_MOUNT}/bus.sock}" --user "$user"
  if [ -n "\${SERVICEUID:-}" ]; then set -- "$@" --uid "$SERVICEUID"; fi
fi
exec "$node" "$here/shed-ext.mjs" install-guest --root / --from "$here" "$@"
`;
}

export function featureJson(): string {
  const feature = {
    id: FEATURE_ID,
    version: VERSION,
    name: 'shed-extensions',
    description: 'An SSH agent, an AWS credentials endpoint and a docker credential helper whose keys and credentials stay on the host: '
      + 'shed-host-agent answers through the shed\'s directory mounted into the container, under its policy.',
    documentationURL: 'https://github.com/charliek/shed-extensions#guest-setup',
    options: {
      publishUrl: {
        type: 'string',
        default: `unix:${RECOMMENDED_MOUNT}/bus.sock`,
        description: `Where the broker is: the shed's directory (<sockets_dir>/<shed> on the host) mounted at ${RECOMMENDED_MOUNT}, or shed-agent's http URL.`,
      },
      serviceUser: {
        type: 'string',
        default: '',
        description: 'The user the services run as and who uses them; default the remoteUser (shed when that is root). Its uid must be the uid shed-host-agent runs as.',
      },
      serviceUid: {
        type: 'string',
        default: '',
        description: 'The uid of serviceUser when the Feature creates it (default 1000); an existing user keeps its own (updateRemoteUserUID matches it to yours).',
      },
    },
    containerEnv: {
      SSH_AUTH_SOCK: AGENT_SOCK,
      AWS_CONTAINER_CREDENTIALS_FULL_URI: `http://127.0.0.1:${DEFAULT_AWS_PORT}/credentials`,
      AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE: TOKEN_FILE,
    },
    entrypoint: ENTRYPOINT,
    installsAfter: ['ghcr.io/devcontainers/features/node', 'ghcr.io/devcontainers/features/common-utils'],
  };
  return `${JSON.stringify(feature, null, 2)}\n`;
}

function readme(): string {
  return `shed-extensions guest ${VERSION}

The guest side of shed-extensions: the SSH agent, the AWS credentials endpoint
and the docker credential helper, as single-file bundles that need only
Node.js 20 or newer. The host side (shed-host-agent) holds the keys.

In an image build, as root, with the shed's directory to be mounted at ${RECOMMENDED_MOUNT}:

  ./install.sh --publish-url unix:${RECOMMENDED_MOUNT}/bus.sock --uid <uid shed-host-agent runs as>

With systemd the units start at boot; without it run \`shed-ext serve\` (the
container's command, with --init) or use ${ENTRYPOINT} as the entrypoint.

As a Dev Container Feature: copy this directory to .devcontainer/shed-extensions
and add "features": { "./shed-extensions": {} } and the mount of the shed's
directory to devcontainer.json.

\`node shed-ext.mjs install-guest --help\` lists every option.
`;
}

// ---------------------------------------------------------------------------
// A minimal ustar writer

interface TarEntry {
  name: string;
  mode: number;
  /** Absent for a directory. */
  data?: Buffer;
}

function octal(value: number, width: number): string {
  return `${value.toString(8).padStart(width - 1, '0')}\0`;
}

function header(entry: TarEntry, mtime: number): Buffer {
  const h = Buffer.alloc(512, 0);
  let name = entry.data ? entry.name : `${entry.name.replace(/\/$/, '')}/`;
  let prefix = '';
  if (Buffer.byteLength(name) > 100) {
    const whole = name;
    const cut = [...whole.matchAll(/\//g)].map((m) => m.index).find((i) => Buffer.byteLength(whole.slice(i + 1)) <= 100 && Buffer.byteLength(whole.slice(0, i)) <= 155);
    if (cut === undefined) throw new Error(`path too long for a tar header: ${entry.name}`);
    prefix = whole.slice(0, cut);
    name = whole.slice(cut + 1);
  }
  h.write(name, 0, 100, 'utf8');
  h.write(octal(entry.mode, 8), 100, 8, 'ascii');
  h.write(octal(0, 8), 108, 8, 'ascii');
  h.write(octal(0, 8), 116, 8, 'ascii');
  h.write(octal(entry.data?.length ?? 0, 12), 124, 12, 'ascii');
  h.write(octal(mtime, 12), 136, 12, 'ascii');
  h.write('        ', 148, 8, 'ascii');
  h.write(entry.data ? '0' : '5', 156, 1, 'ascii');
  h.write('ustar\0', 257, 6, 'ascii');
  h.write('00', 263, 2, 'ascii');
  h.write('root', 265, 32, 'ascii');
  h.write('root', 297, 32, 'ascii');
  h.write(prefix, 345, 155, 'utf8');
  let sum = 0;
  for (const b of h) sum += b;
  h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 8, 'ascii');
  return h;
}

export function tarGz(entries: TarEntry[], mtime: number): Buffer {
  const parts: Buffer[] = [];
  for (const e of [...entries].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
    parts.push(header(e, mtime));
    if (e.data) {
      parts.push(e.data);
      const pad = (512 - (e.data.length % 512)) % 512;
      if (pad) parts.push(Buffer.alloc(pad));
    }
  }
  parts.push(Buffer.alloc(1024));
  return zlib.gzipSync(Buffer.concat(parts), { level: 9 });
}

/** Every file and directory under `dir`, as tar entries under `top/`. Scripts and bundles keep their exec bits. */
function treeEntries(dir: string, top: string): TarEntry[] {
  const out: TarEntry[] = [{ name: top, mode: 0o755 }];
  const walk = (rel: string) => {
    for (const name of fs.readdirSync(path.join(dir, rel)).sort()) {
      const r = rel ? `${rel}/${name}` : name;
      const st = fs.lstatSync(path.join(dir, r));
      if (st.isDirectory()) {
        out.push({ name: `${top}/${r}`, mode: 0o755 });
        walk(r);
      } else if (st.isFile()) {
        out.push({ name: `${top}/${r}`, mode: st.mode & 0o111 ? 0o755 : 0o644, data: fs.readFileSync(path.join(dir, r)) });
      }
    }
  };
  walk('');
  return out;
}

export interface GuestPackage {
  /** The staged directory (what the tarball holds): also a Dev Container Feature. */
  dir: string;
  tarball: string;
  bytes: number;
}

/** Bundle, stage and pack. `outDir` gets `<name>/` and `<name>.tar.gz`. */
export async function packageGuest(options: { outDir?: string; mtime?: number } = {}): Promise<GuestPackage> {
  const outDir = path.resolve(options.outDir ?? path.join(REPO_ROOT, 'build'));
  const name = tarballName();
  const dir = path.join(outDir, name);
  fs.rmSync(dir, { recursive: true, force: true });
  await bundleGuest({ outDir: dir });
  fs.mkdirSync(path.join(dir, 'bin'), { recursive: true });
  for (const bin of GUEST_BINARIES) fs.writeFileSync(path.join(dir, 'bin', bin), launcher(bin), { mode: 0o755 });
  fs.writeFileSync(path.join(dir, 'install.sh'), installScript(), { mode: 0o755 });
  fs.writeFileSync(path.join(dir, 'devcontainer-feature.json'), featureJson(), { mode: 0o644 });
  fs.writeFileSync(path.join(dir, 'VERSION'), `${VERSION}\n`, { mode: 0o644 });
  fs.writeFileSync(path.join(dir, 'README'), readme(), { mode: 0o644 });
  const envEpoch = Number(process.env.SOURCE_DATE_EPOCH);
  const mtime = options.mtime ?? (Number.isInteger(envEpoch) && envEpoch > 0 ? envEpoch : Math.floor(Date.now() / 1000));
  const tarball = path.join(outDir, `${name}.tar.gz`);
  const data = tarGz(treeEntries(dir, name), mtime);
  fs.writeFileSync(tarball, data, { mode: 0o644 });
  return { dir, tarball, bytes: data.length };
}

async function main(): Promise<number> {
  try {
    const result = await packageGuest({ outDir: process.argv[2] });
    const rel = (p: string) => path.relative(process.cwd(), p) || '.';
    process.stdout.write(`${rel(result.tarball)}  ${(result.bytes / 1024).toFixed(0)} KiB\n`
      + `${rel(result.dir)}/  the same, unpacked (also a Dev Container Feature)\n`
      + `next, in an image build: tar xzf ${path.basename(result.tarball)} && ./${tarballName()}/install.sh --publish-url unix:${RECOMMENDED_MOUNT}/bus.sock\n`);
    return 0;
  } catch (err) {
    process.stderr.write(`guest-tarball: ${(err as Error).message}\n`);
    return 1;
  }
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  process.exitCode = await main();
}
