/**
 * `shed-ext install-guest --root DIR`: lay the guest side into an image root
 * (for a Dockerfile `COPY`, or `--root /` inside the image build):
 *
 *   /usr/local/lib/shed-extensions/<bin>.mjs      single-file bundles (need only node; the docker and git helpers' are .cjs)
 *   /usr/local/lib/shed-extensions/systemd/guest/ pristine copies of the files below
 *   /usr/local/bin/<bin>                           sh launchers: exec node <bundle>
 *   /usr/local/lib/systemd/system/*.service        the units, enabled through
 *   /etc/systemd/system/multi-user.target.wants/   symlinks (what `systemctl enable` makes)
 *   /etc/shed-extensions.d/<namespace>.yaml        manifests: shed-agent enables (`systemctl enable
 *                                                  --now`) and reports only extensions that have one
 *   /etc/environment.d/shed-extensions.conf        SSH_AUTH_SOCK, AWS_CONTAINER_* for systemd user sessions
 *   /etc/profile.d/shed-extensions.sh              the same for login shells, plus the plain token variable
 *   /etc/skel/.docker/config.json                  {"credsStore": "shed"} for new users
 *   /etc/containers/registries.conf.d/50-shed-extensions.conf   credential-helpers = ["shed"]
 *   /etc/gitconfig                                 credential.helper=shed, credential.useHttpPath=true (the rest of the file kept)
 *
 * and the steps of guest-setup.ts: the user (sysusers.d, created now), the
 * uid check against a visible broker socket, /etc/shed-extensions/guest.env,
 * the sshd drop-in, the container entrypoint, and with --publish-url the
 * units' drop-ins.
 *
 * Idempotent: a second run over the same root changes nothing (same bytes,
 * same modes, files not rewritten, so same mtimes). Never follows a symlink
 * at a destination; never removes a directory.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { VERSION } from '../../protocol/version.js';
import {
  checkPublishUrl, DEFAULT_AWS_PORT, ensureUser, inspectSocket, mountNotice, planUser, renderGuestFile, setupEntries, SetupError,
  socketOpensFor, socketRefusal, type GuestSettings, type SetupEntry, type UserResult,
} from './guest-setup.js';
import { withGitCredentialSettings } from './gitconfig.js';

/** The guest binaries, by the name they are installed under. */
export const GUEST_BINARIES = ['shed-ext-ssh-agent', 'shed-ext-aws-credentials', 'docker-credential-shed', 'git-credential-shed', 'shed-ext'] as const;
export type GuestBinary = (typeof GUEST_BINARIES)[number];

export const LIB_DIR = '/usr/local/lib/shed-extensions';
export const BIN_DIR = '/usr/local/bin';
export const UNIT_DIR = '/usr/local/lib/systemd/system';
export const WANTS_DIR = '/etc/systemd/system/multi-user.target.wants';
/** The system gitconfig (`git config --system`), where git finds credential.helper=shed. */
export const SYSTEM_GITCONFIG = '/etc/gitconfig';
/** Where shed-agent looks for extension manifests (`<namespace>.yaml`). */
export const MANIFEST_DIR = '/etc/shed-extensions.d';
/** The extensions this package ships a manifest for, by namespace. */
export const EXTENSION_NAMESPACES = ['ssh-agent', 'aws-credentials', 'docker-credentials', 'git-credentials'] as const;

/** Folder (inside a bundle directory) holding the guest config files, as in the repo's systemd/guest. */
export const GUEST_FILES_DIR = path.join('systemd', 'guest');

/** Guest config files: source under systemd/guest → destination in the image. */
export const GUEST_FILES: ReadonlyArray<{ src: string; dest: string; unit?: boolean }> = [
  { src: 'shed-ext-ssh-agent.service', dest: `${UNIT_DIR}/shed-ext-ssh-agent.service`, unit: true },
  { src: 'shed-ext-aws-token.service', dest: `${UNIT_DIR}/shed-ext-aws-token.service`, unit: true },
  { src: 'shed-ext-aws-credentials.service', dest: `${UNIT_DIR}/shed-ext-aws-credentials.service`, unit: true },
  { src: 'shed-ext-docker-credentials.service', dest: `${UNIT_DIR}/shed-ext-docker-credentials.service`, unit: true },
  { src: 'shed-ext-git-credentials.service', dest: `${UNIT_DIR}/shed-ext-git-credentials.service`, unit: true },
  ...EXTENSION_NAMESPACES.map((ns) => ({ src: `shed-extensions.d/${ns}.yaml`, dest: `${MANIFEST_DIR}/${ns}.yaml` })),
  { src: 'environment.d/shed-extensions.conf', dest: '/etc/environment.d/shed-extensions.conf' },
  { src: 'profile.d/shed-extensions.sh', dest: '/etc/profile.d/shed-extensions.sh' },
  { src: 'docker/config.json', dest: '/etc/skel/.docker/config.json' },
  { src: 'containers/registries.conf', dest: '/etc/containers/registries.conf.d/50-shed-extensions.conf' },
];

export const DEFAULT_SERVICE_USER = 'shed';
/** What `useradd` accepts, conservatively. */
const USER_RE = /^[a-z_][a-z0-9_-]{0,31}$/;

export interface InstallOptions {
  /** The image root. */
  root: string;
  /** Directory with the `<bin>.mjs`/`.cjs` bundles and systemd/guest (default: found, see findBundleDir). */
  from?: string;
  /** The user the guest units run as (default `shed`). */
  user?: string;
  /** The uid of that user when it is created (default: the broker socket's owner when visible, else 1000). */
  uid?: number;
  /** Where the guest programs publish: `unix:/mount/point/bus.sock` for a direct socket. */
  publishUrl?: string;
  /** The AWS endpoint's port (default 499). */
  awsPort?: number;
}

export type Action = 'created' | 'updated' | 'unchanged' | 'removed';

export interface InstallResult {
  root: string;
  from: string;
  entries: Array<{ path: string; action: Action }>;
  /** The user the units run as, and what was done about it. */
  user?: UserResult;
  /** Things the user should know (not errors). */
  notes: string[];
}

type Entry =
  | { kind: 'symlink'; dest: string; target: string }
  | SetupEntry;

export class InstallError extends Error {
  override readonly name = 'InstallError';
}

/**
 * A binary's bundle file. The docker and git helpers' are CommonJS: Docker and git start them
 * once per operation, and Node starts a CommonJS file ~10% faster
 * than an ES module (its ESM loader's own start-up); the services are ESM.
 */
export function bundleFile(bin: GuestBinary): string {
  return bin === 'docker-credential-shed' || bin === 'git-credential-shed' ? `${bin}.cjs` : `${bin}.mjs`;
}

function hasBundles(dir: string): boolean {
  return GUEST_BINARIES.every((b) => fs.existsSync(path.join(dir, bundleFile(b)))) && fs.existsSync(path.join(dir, GUEST_FILES_DIR));
}

/**
 * Where the bundles are: beside this module when it runs bundled
 * (build/guest, an unpacked guest tarball, or an installed
 * /usr/local/lib/shed-extensions), else the build/guest of the
 * shed-extensions package this module belongs to, whether it runs from
 * source (guest-services/status) or from the package's bin (dist/…).
 */
export function findBundleDir(explicit?: string): string {
  if (explicit) {
    const dir = path.resolve(explicit);
    if (!hasBundles(dir)) {
      throw new InstallError(`${dir} does not hold the guest bundles (${GUEST_BINARIES.map(bundleFile).join(', ')} and ${GUEST_FILES_DIR}/): `
        + 'run `npm run bundle` and pass --from build/guest');
    }
    return dir;
  }
  const here = path.dirname(fileURLToPath(import.meta.url));
  const pkg = packageRoot(here);
  const candidates = [here, ...(pkg ? [path.join(pkg, 'build', 'guest')] : [])];
  const found = candidates.find(hasBundles);
  if (!found) {
    throw new InstallError(`no guest bundles found (looked in ${candidates.join(' and ')}): `
      + `run \`npm run bundle\` in ${pkg ?? 'the shed-extensions checkout'} first, or pass --from DIR`);
  }
  return found;
}

/** The nearest directory at or above `dir` whose package.json is shed-extensions'. */
export function packageRoot(dir: string): string | undefined {
  for (let d = dir, i = 0; i < 8; i++, d = path.dirname(d)) {
    try {
      const pkg = JSON.parse(fs.readFileSync(path.join(d, 'package.json'), 'utf8')) as { name?: unknown };
      if (pkg.name === 'shed-extensions') return d;
    } catch {
      // none here, or not JSON
    }
    if (path.dirname(d) === d) break;
  }
  return undefined;
}

export function launcher(bin: GuestBinary): string {
  const bundle = `${LIB_DIR}/${bundleFile(bin)}`;
  return `#!/bin/sh
# ${bin} (shed-extensions ${VERSION}), installed by \`shed-ext install-guest\`: runs the bundle with this VM's node.
command -v node >/dev/null 2>&1 || { echo "${bin}: node (Node.js 20 or newer) is not installed or not on PATH; install it in the guest image" >&2; exit 127; }
exec node ${bundle} "$@"
`;
}

/** Everything install-guest writes, in order, computed before anything is touched. */
export function plan(from: string, user: string | GuestSettings): Entry[] {
  const settings: GuestSettings = typeof user === 'string' ? { user, awsPort: DEFAULT_AWS_PORT } : user;
  const entries: Entry[] = [];
  for (const bin of GUEST_BINARIES) {
    entries.push({ kind: 'file', dest: `${LIB_DIR}/${bundleFile(bin)}`, mode: 0o644, content: fs.readFileSync(path.join(from, bundleFile(bin))) });
  }
  for (const file of GUEST_FILES) {
    const raw = fs.readFileSync(path.join(from, GUEST_FILES_DIR, file.src));
    entries.push({ kind: 'file', dest: `${LIB_DIR}/${GUEST_FILES_DIR}/${file.src}`, mode: 0o644, content: raw });
    const rendered = renderGuestFile(file.src, raw.toString('utf8'), settings);
    const content = rendered === raw.toString('utf8') ? raw : Buffer.from(rendered);
    entries.push({ kind: 'file', dest: file.dest, mode: 0o644, content });
  }
  for (const bin of GUEST_BINARIES) {
    entries.push({ kind: 'file', dest: `${BIN_DIR}/${bin}`, mode: 0o755, content: Buffer.from(launcher(bin)) });
  }
  for (const file of GUEST_FILES.filter((f) => f.unit)) {
    entries.push({ kind: 'symlink', dest: `${WANTS_DIR}/${path.basename(file.dest)}`, target: file.dest });
  }
  return entries;
}

export function installGuest(options: InstallOptions): InstallResult {
  const user = options.user ?? DEFAULT_SERVICE_USER;
  if (!USER_RE.test(user)) throw new InstallError(`--user ${JSON.stringify(user)} is not a valid user name`);
  const awsPort = options.awsPort ?? DEFAULT_AWS_PORT;
  if (!Number.isInteger(awsPort) || awsPort < 1 || awsPort > 65535) throw new InstallError(`--aws-port must be a port number (1-65535), not ${JSON.stringify(options.awsPort)}`);
  if (options.uid !== undefined && (!Number.isInteger(options.uid) || options.uid < 1 || options.uid > 0x7fffffff)) {
    throw new InstallError(`--uid must be a user id above 0, not ${JSON.stringify(options.uid)}`);
  }
  const settings: GuestSettings = { user, awsPort, publishUrl: options.publishUrl };
  const from = findBundleDir(options.from);
  const root = path.resolve(options.root);
  const notes: string[] = [];
  let planned;
  try {
    if (options.publishUrl !== undefined) checkPublishUrl(options.publishUrl);
    // The uid check comes before anything is written: a guest user the broker's socket shuts out is no install.
    const socket = inspectSocket(root, options.publishUrl);
    planned = planUser(root, user, options.uid, socket?.uid);
    if (socket && !socketOpensFor(socket, planned.uid, planned.gid)) throw new SetupError(socketRefusal(socket, planned));
  } catch (err) {
    if (err instanceof SetupError) throw new InstallError(err.message);
    throw err;
  }
  const notice = mountNotice(options.publishUrl);
  if (notice) notes.push(notice);
  // Read (and refuse, when it is a symlink) before anything is written.
  const gitconfig = path.join(root, SYSTEM_GITCONFIG);
  const gitconfigText = Buffer.from(withGitCredentialSettings(readExistingText(gitconfig)));
  ensureDir(root, root);
  const result: InstallResult = { root, from, entries: [], notes };
  // The sysusers.d entry first: creating the user reads it.
  const isSysusers = (e: Entry) => e.kind === 'file' && e.dest.includes('/sysusers.d/');
  const record = (entry: Entry) => {
    const done = carryOut(entry, root);
    // Nothing to remove is nothing to report.
    if (!(entry.kind === 'absent' && done.action === 'unchanged')) result.entries.push(done);
  };
  for (const entry of setupEntries(settings, planned, root).filter(isSysusers)) record(entry);
  try {
    result.user = ensureUser(root, planned);
  } catch (err) {
    if (err instanceof SetupError) throw new InstallError(err.message);
    throw err;
  }
  if (result.user.note) notes.push(result.user.note);
  // With the user known, the rest (the runtime directory is the user's).
  const known = result.user.action === 'skipped' || result.user.action === 'at-boot' ? undefined : result.user.user;
  for (const entry of [...plan(from, settings), ...setupEntries(settings, known ?? planned, root).filter((e) => !isSysusers(e) && (known || e.kind !== 'dir'))]) {
    record(entry);
  }
  // git asks git-credential-shed (on PATH through its launcher), with the repository's path.
  ensureDir(path.dirname(gitconfig), root);
  result.entries.push({ path: SYSTEM_GITCONFIG, action: writeFile(gitconfig, gitconfigText, 0o644) });
  return result;
}

function carryOut(entry: Entry, root: string): { path: string; action: Action } {
  const dest = path.join(root, entry.dest);
  if (entry.kind === 'absent') return { path: entry.dest, action: removeOurs(dest, entry.marker) };
  ensureDir(path.dirname(dest), root);
  switch (entry.kind) {
    case 'file':
      return { path: entry.dest, action: writeFile(dest, entry.content, entry.mode) };
    case 'symlink':
      return { path: entry.dest, action: writeSymlink(dest, entry.target) };
    case 'dir':
      return { path: entry.dest, action: ownedDir(dest, entry.mode, entry.uid, entry.gid) };
  }
}

/** Remove a file an earlier run wrote (it starts with `marker`); anything else is left alone. */
function removeOurs(dest: string, marker: string): Action {
  const stat = lstat(dest);
  if (!stat?.isFile()) return 'unchanged';
  if (!fs.readFileSync(dest, 'utf8').startsWith(marker)) return 'unchanged';
  fs.rmSync(dest);
  return 'removed';
}

/** A directory with this mode and owner (chown only when running as root; otherwise the owner is left). */
function ownedDir(dest: string, mode: number, uid: number, gid: number): Action {
  const stat = lstat(dest);
  if (stat && !stat.isDirectory()) throw new InstallError(`${dest} exists and is not a directory; move it away and retry`);
  const canChown = process.getuid?.() === 0;
  if (stat && (stat.mode & 0o7777) === mode && (!canChown || (stat.uid === uid && stat.gid === gid))) return 'unchanged';
  if (!stat) fs.mkdirSync(dest);
  fs.chmodSync(dest, mode);
  if (canChown) fs.chownSync(dest, uid, gid);
  return stat ? 'updated' : 'created';
}

/** A regular file's text, undefined when there is none; a symlink or anything else there is refused (never followed). */
function readExistingText(file: string): string | undefined {
  const stat = lstat(file);
  if (!stat) return undefined;
  if (!stat.isFile()) throw new InstallError(`${file} is not a regular file (a symlink or another kind); replace it with a file and retry`);
  return fs.readFileSync(file, 'utf8');
}

/** mkdir -p with 0755 for what is created; existing directories are left as they are. */
function ensureDir(dir: string, root: string): void {
  let stat: fs.Stats | undefined;
  try {
    stat = fs.statSync(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  if (stat) {
    if (!stat.isDirectory()) throw new InstallError(`${dir} exists and is not a directory; move it away and retry`);
    return;
  }
  if (dir === root) fs.mkdirSync(dir, { recursive: true });
  else {
    ensureDir(path.dirname(dir), root);
    fs.mkdirSync(dir);
  }
  fs.chmodSync(dir, 0o755);
}

function lstat(file: string): fs.Stats | undefined {
  try {
    return fs.lstatSync(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

function writeFile(dest: string, content: Buffer, mode: number): Action {
  const stat = lstat(dest);
  if (stat?.isDirectory()) throw new InstallError(`${dest} is a directory; move it away and retry`);
  if (stat?.isFile() && (stat.mode & 0o7777) === mode && fs.readFileSync(dest).equals(content)) return 'unchanged';
  const tmp = path.join(path.dirname(dest), `.${path.basename(dest)}.install-${process.pid}`);
  fs.rmSync(tmp, { force: true });
  fs.writeFileSync(tmp, content, { mode, flag: 'wx' });
  fs.chmodSync(tmp, mode);
  fs.renameSync(tmp, dest);
  return stat ? 'updated' : 'created';
}

function writeSymlink(dest: string, target: string): Action {
  const stat = lstat(dest);
  if (stat?.isSymbolicLink() && fs.readlinkSync(dest) === target) return 'unchanged';
  if (stat?.isDirectory()) throw new InstallError(`${dest} is a directory; move it away and retry`);
  const tmp = path.join(path.dirname(dest), `.${path.basename(dest)}.install-${process.pid}`);
  fs.rmSync(tmp, { force: true });
  fs.symlinkSync(target, tmp);
  fs.renameSync(tmp, dest);
  return stat ? 'updated' : 'created';
}

export function formatInstall(result: InstallResult): string {
  const count = (a: Action) => result.entries.filter((e) => e.action === a).length;
  const lines = result.entries.filter((e) => e.action !== 'unchanged').map((e) => `  ${e.action.padEnd(8)} ${e.path}\n`);
  const removed = count('removed');
  const user = result.user;
  const userLine = !user ? ''
    : user.action === 'exists' ? `The units run as ${user.user.name} (uid ${user.user.uid}).\n`
      : user.action === 'created' ? `Created the user ${user.user.name} (uid ${user.user.uid}, with ${user.how}); the units run as it.\n`
        : '';
  return `${lines.join('')}installed shed-extensions ${VERSION} into ${result.root}: `
    + `${count('created')} created, ${count('updated')} updated, ${count('unchanged')} unchanged${removed ? `, ${removed} removed` : ''}\n`
    + userLine
    + result.notes.map((n) => `Note: ${n}\n`).join('')
    + 'The units start at boot (enabled for multi-user.target); the image needs node 20 or newer, and shed-agent or the shed\'s mounted directory '
    + '(--publish-url). Without systemd: `shed-ext serve` (or /usr/local/lib/shed-extensions/entrypoint.sh before your command).\n'
    + `shed-agent enables and reports the extensions its server lists under extensions.enabled, through the manifests in ${MANIFEST_DIR}.\n`;
}
