/**
 * The parts of `shed-ext install-guest` that make an image whole beyond
 * copying files (install.ts calls these as steps):
 *
 *  - the user the units run as: a sysusers.d entry, and the user created now
 *    (systemd-sysusers when the root has systemd, else useradd), so the units
 *    never fail with 217/USER and a container without systemd has it too;
 *  - the uid check: the broker's direct socket opens only for the uid
 *    shed-host-agent runs as, so a guest user with another uid is cut off;
 *  - `--publish-url unix:<path>`: the unit drop-ins (the variable, and the
 *    mount made visible through the units' PrivateTmp/ProtectHome) and the
 *    environment for every way in (environment.d, profile.d, sshd for
 *    non-login `ssh vm cmd`, /etc/shed-extensions/guest.env for everything
 *    else, the docker helper included);
 *  - the container entrypoint that runs `shed-ext serve` beside a command.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { parsePublishUrl } from '../bus-client.js';
import { formatGuestEnv, GUEST_ENV_FILE, parseGuestEnv } from '../guest-env.js';
import { TOKEN_RE } from './token.js';

export const RUN_DIR = '/run/shed-extensions';
export const AGENT_SOCK = `${RUN_DIR}/ssh-agent.sock`;
export const TOKEN_FILE = `${RUN_DIR}/aws-token`;
export const DEFAULT_AWS_PORT = 499;
/** The uid a new guest user gets unless told: the first user's on most Linux hosts, where the broker runs. */
export const DEFAULT_UID = 1000;
/** Where we recommend mounting the shed's directory: not under /tmp or /home, which the units' PrivateTmp/ProtectHome hide. */
export const RECOMMENDED_MOUNT = '/run/shed-bus';

export const SYSUSERS_FILE = '/usr/local/lib/sysusers.d/shed-extensions.conf';
export const SSHD_DROP_IN = '/etc/ssh/sshd_config.d/05-shed-extensions.conf';
/** Written at boot, by root, with the AWS endpoint's token (0600): sshd reads it through the drop-in. */
export const SSHD_RUNTIME_FILE = '/run/shed-extensions.sshd.conf';
export const ENTRYPOINT = '/usr/local/lib/shed-extensions/entrypoint.sh';
/** The first line of every file written only for --publish-url: what marks it ours to remove. */
export const PUBLISH_MARKER = '# shed-extensions: written by `shed-ext install-guest --publish-url`';
/** The units that talk to the broker, and so get the publish drop-in. */
export const BUS_UNITS = ['shed-ext-ssh-agent.service', 'shed-ext-aws-credentials.service'] as const;
export const PUBLISH_DROP_IN = '50-shed-publish-url.conf';

export class SetupError extends Error {
  override readonly name = 'SetupError';
}

export interface GuestSettings {
  /** The user the units run as, and who runs ssh/aws/docker in the guest. */
  user: string;
  awsPort: number;
  /** `unix:/abs/path` or `http://…`; none: shed-agent's default. */
  publishUrl?: string;
}

/** A path the installer writes, removes, or makes a directory. install.ts carries these out. */
export type SetupEntry =
  | { kind: 'file'; dest: string; mode: number; content: Buffer }
  | { kind: 'dir'; dest: string; mode: number; uid: number; gid: number }
  /** Removed when present and its content starts with `marker` (ours, from an earlier run with other options). */
  | { kind: 'absent'; dest: string; marker: string };

// ---------------------------------------------------------------------------
// Options

/** Characters that pass through systemd's Environment=, sshd's SetEnv and sh without quoting. */
const SAFE_PATH_RE = /^\/[A-Za-z0-9._/@+-]*$/;

/** Checks `--publish-url` for install-guest: parseable, and a socket path every config format takes as it is. */
export function checkPublishUrl(url: string): void {
  let target;
  try {
    target = parsePublishUrl(url);
  } catch (err) {
    throw new SetupError(`--publish-url: ${(err as Error).message}`);
  }
  if (target.socketPath) {
    const p = target.socketPath;
    if (!SAFE_PATH_RE.test(p) || p.includes('//') || p.split('/').includes('..')) {
      throw new SetupError(`--publish-url ${JSON.stringify(url)}: the socket path may hold only letters, digits and . _ / @ + - (it goes into systemd units and sshd_config unquoted); mount the shed's directory at a plain path such as ${RECOMMENDED_MOUNT}`);
    }
    if (p === RUN_DIR || p.startsWith(`${RUN_DIR}/`)) {
      throw new SetupError(`--publish-url: ${p} is inside ${RUN_DIR}, the guest services' own runtime directory; mount the shed's directory elsewhere, such as ${RECOMMENDED_MOUNT}`);
    }
  } else if (/[\s"'\\%$`]/.test(url)) {
    throw new SetupError(`--publish-url ${JSON.stringify(url)} holds characters that need quoting; use a plain URL`);
  }
}

// ---------------------------------------------------------------------------
// Rendering the shipped templates for these settings

/** A unit or environment template from systemd/guest with this guest's user, port and publish URL. */
export function renderGuestFile(src: string, text: string, s: GuestSettings): string {
  let out = text;
  if (src.endsWith('.service')) {
    out = out.replace(/^User=shed$/gm, `User=${s.user}`).replace(/ --user shed\b/g, ` --user ${s.user}`);
    return out.replace(/ --port 499\b/g, ` --port ${s.awsPort}`);
  }
  out = out.replaceAll('http://127.0.0.1:499/credentials', `http://127.0.0.1:${s.awsPort}/credentials`);
  if (s.publishUrl && src.startsWith('environment.d/')) {
    out += `# install-guest --publish-url: where the guest programs reach the host broker\nSHED_PUBLISH_URL=${s.publishUrl}\n`;
  }
  if (s.publishUrl && src.startsWith('profile.d/')) {
    out += `\n# install-guest --publish-url: where the guest programs reach the host broker.\nif [ -z "\${SHED_PUBLISH_URL-}" ]; then\n  SHED_PUBLISH_URL=${s.publishUrl}\n  export SHED_PUBLISH_URL\nfi\n`;
  }
  return out;
}

/** The guest's environment, in the order every file lists it. */
export function guestEnvVars(s: GuestSettings): Array<[string, string]> {
  const vars: Array<[string, string]> = [
    ['SSH_AUTH_SOCK', AGENT_SOCK],
    ['AWS_CONTAINER_CREDENTIALS_FULL_URI', `http://127.0.0.1:${s.awsPort}/credentials`],
    ['AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE', TOKEN_FILE],
  ];
  if (s.publishUrl) vars.push(['SHED_PUBLISH_URL', s.publishUrl]);
  return vars;
}

export function guestEnvFile(s: GuestSettings): string {
  return formatGuestEnv([
    'shed-extensions: this guest\'s settings, written by `shed-ext install-guest`.',
    'Every guest program takes SHED_PUBLISH_URL from here when neither --publish-url',
    'nor its environment gives one; the rest is what a session needs (a Dockerfile',
    'ENV, `docker run --env-file`, a Dev Container\'s containerEnv can use these lines).',
  ].join('\n'), guestEnvVars(s));
}

/**
 * The drop-in for a unit that publishes: the variable, and the mount made
 * visible. PrivateTmp= gives the unit its own /tmp, and ProtectHome= hides
 * /home, /root and /run/user: a socket mounted there is bound back in,
 * read-only (connecting to a socket needs no write access to the mount).
 */
export function publishDropIn(publishUrl: string): string {
  const target = parsePublishUrl(publishUrl);
  const lines = [PUBLISH_MARKER, '# Takes effect after `systemctl daemon-reload` and a restart of the unit.'];
  if (target.socketPath) {
    const dir = path.dirname(target.socketPath);
    lines.push('', '[Unit]', `RequiresMountsFor=${dir}`);
    lines.push('', '[Service]', `Environment=SHED_PUBLISH_URL=${publishUrl}`);
    const hidden = hiddenBy(dir);
    if (hidden === 'ProtectHome') lines.push(`# ${dir} is under a directory ProtectHome= hides: keep the rest hidden, bind this one in.`, 'ProtectHome=tmpfs', `BindReadOnlyPaths=-${dir}`);
    if (hidden === 'PrivateTmp') lines.push(`# ${dir} is in /tmp, which PrivateTmp= replaces with the unit's own: bind this one in.`, `BindReadOnlyPaths=-${dir}`);
  } else {
    lines.push('', '[Service]', `Environment=SHED_PUBLISH_URL=${publishUrl}`);
  }
  return `${lines.join('\n')}\n`;
}

/** Which hardening setting of the units hides `dir`, if any. */
export function hiddenBy(dir: string): 'ProtectHome' | 'PrivateTmp' | undefined {
  const under = (base: string) => dir === base || dir.startsWith(`${base}/`);
  if (['/home', '/root', '/run/user'].some(under)) return 'ProtectHome';
  if (['/tmp', '/var/tmp'].some(under)) return 'PrivateTmp';
  return undefined;
}

/**
 * sshd's part: non-login `ssh vm cmd` sessions read no profile, so sshd sets
 * the variables itself, for the guest user only. sshd takes the first SetEnv
 * that applies: the file written at boot (with the AWS token for older AWS
 * clients, which ignore the _FILE variable) when it is there, else the line
 * below. A Match block in an included file ends with that file.
 */
export function sshdDropIn(s: GuestSettings): string {
  return [
    '# shed-extensions: written by `shed-ext install-guest`. The environment of the',
    `# ssh sessions of ${s.user}, non-login ones too (\`ssh vm git push\` reads no profile).`,
    '# sshd uses the first SetEnv that applies: the file shed-ext-aws-token.service',
    '# writes at boot (the same plus the AWS endpoint\'s token, for older AWS clients',
    '# that ignore AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE), else the line below.',
    '# It replaces an agent forwarded with `ssh -A` for this user: the shed\'s agent',
    '# is the one to use here.',
    `Include ${SSHD_RUNTIME_FILE}`,
    `Match User ${s.user}`,
    `    SetEnv ${guestEnvVars(s).map(([k, v]) => `${k}=${v}`).join(' ')}`,
    '',
  ].join('\n');
}

/** The runtime sshd file, from guest.env and the token. */
export function sshdRuntimeFile(user: string, env: Record<string, string>, token: string): string {
  const vars = Object.entries(env).filter(([k, v]) => /^[A-Z_][A-Z0-9_]*$/.test(k) && /^[^\s"'\\]+$/.test(v));
  vars.push(['AWS_CONTAINER_AUTHORIZATION_TOKEN', token]);
  return [
    '# shed-extensions: written at boot by shed-ext-aws-token.service (`shed-ext sshd-env`),',
    '# read by sshd through /etc/ssh/sshd_config.d/05-shed-extensions.conf. Holds a token: 0600, root.',
    `Match User ${user}`,
    `    SetEnv ${vars.map(([k, v]) => `${k}=${v}`).join(' ')}`,
    '',
  ].join('\n');
}

/**
 * `shed-ext sshd-env`: write SSHD_RUNTIME_FILE (root, 0600) from guest.env
 * and the token, when the sshd drop-in is installed. Run by the token unit
 * as root (`ExecStartPost=+`), before sshd starts.
 */
export function writeSshdEnv(options: { user: string; tokenFile?: string; envFile?: string; out?: string; dropIn?: string }): { written: boolean; path: string; why?: string } {
  const out = options.out ?? SSHD_RUNTIME_FILE;
  const dropIn = options.dropIn ?? SSHD_DROP_IN;
  if (!/^[a-z_][a-z0-9_-]{0,31}$/.test(options.user)) throw new SetupError(`--user ${JSON.stringify(options.user)} is not a valid user name`);
  if (!fs.existsSync(dropIn)) return { written: false, path: out, why: `${dropIn} is not installed (no sshd in this guest)` };
  const tokenFile = options.tokenFile ?? TOKEN_FILE;
  let token: string;
  try {
    token = readTokenAsRoot(tokenFile);
  } catch (err) {
    if (err instanceof SetupError) throw err;
    throw new SetupError(`cannot read the AWS endpoint token ${tokenFile} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}); shed-ext-aws-token.service creates it`);
  }
  if (!TOKEN_RE.test(token)) throw new SetupError(`${tokenFile} does not hold a token; restart shed-ext-aws-token.service to make a new one`);
  let env: Record<string, string> = {};
  try {
    env = parseGuestEnv(fs.readFileSync(options.envFile ?? GUEST_ENV_FILE, 'utf8'));
  } catch {
    // No guest.env: the token alone still helps.
  }
  const tmp = `${out}.${process.pid}`;
  fs.rmSync(tmp, { force: true });
  const fd = fs.openSync(tmp, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW, 0o600);
  try {
    fs.writeSync(fd, sshdRuntimeFile(options.user, env, token));
    fs.fchmodSync(fd, 0o600);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, out);
  return { written: true, path: out };
}

/**
 * The token file, read as root from a directory the guest user owns: not
 * through a link (the user could point it at any file root may read), only a
 * regular file, and only a token's worth of bytes.
 */
function readTokenAsRoot(file: string): string {
  const fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) throw new SetupError(`${file} is not a regular file; restart shed-ext-aws-token.service to make a new token`);
    const buf = Buffer.alloc(512);
    return buf.toString('latin1', 0, fs.readSync(fd, buf, 0, buf.length, 0));
  } finally {
    fs.closeSync(fd);
  }
}

/** `u` line of sysusers.d(5): the user, its uid (and a group of the same id), its home and shell. */
export function sysusersEntry(user: string, uid: number, home: string, shell: string): string {
  return `# shed-extensions: the user the guest units run as (written by \`shed-ext install-guest\`).\nu ${user} ${uid} "shed-extensions guest user" ${home} ${shell}\n`;
}

/**
 * The entrypoint of a container without systemd: start `shed-ext serve` as
 * the guest user beside the container's command, then run the command. Under
 * systemd (the command is init) the units do it instead.
 */
export function entrypointScript(user: string): string {
  return `#!/bin/sh
# shed-extensions: run \`shed-ext serve\` (the SSH agent and the AWS endpoint) as
# ${user} beside this container's own command, then exec that command. Written by
# \`shed-ext install-guest\`; a Dev Container Feature's entrypoint, or yours:
#   ENTRYPOINT ["${ENTRYPOINT}"]   CMD ["your", "command"]
# Under systemd (the command is init) the units serve instead. SHED_EXT_SERVE=0 skips it.
case "\${1-}" in
  /sbin/init|/lib/systemd/systemd|/usr/lib/systemd/systemd|init|systemd) exec "$@" ;;
esac
if [ "\${SHED_EXT_SERVE-1}" != 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    group=$(id -gn ${user} 2>/dev/null) || { echo "shed-extensions: no user ${user} in this container; rerun install-guest --user NAME" >&2; exec "$@"; }
    mkdir -p ${RUN_DIR} && chown ${user}:"$group" ${RUN_DIR} && chmod 0755 ${RUN_DIR}
    if command -v setpriv >/dev/null 2>&1; then
      setpriv --reuid=${user} --regid="$group" --init-groups /usr/local/bin/shed-ext serve &
    else
      su -s /bin/sh -c 'exec /usr/local/bin/shed-ext serve' ${user} &
    fi
  else
    /usr/local/bin/shed-ext serve &
  fi
fi
if [ $# -eq 0 ]; then wait; exit; fi
exec "$@"
`;
}

/** What install-guest lays for these settings beyond the shipped files. */
export function setupEntries(s: GuestSettings, user: UserInfo | undefined, root: string): SetupEntry[] {
  const file = (dest: string, content: string, mode = 0o644): SetupEntry => ({ kind: 'file', dest, mode, content: Buffer.from(content) });
  const entries: SetupEntry[] = [file(GUEST_ENV_FILE, guestEnvFile(s))];
  const uid = user?.uid ?? DEFAULT_UID;
  entries.push(file(SYSUSERS_FILE, sysusersEntry(s.user, uid, user?.home ?? `/home/${s.user}`, user?.shell ?? defaultShell(root))));
  if (hasSshd(root)) entries.push(file(SSHD_DROP_IN, sshdDropIn(s)));
  entries.push(file(ENTRYPOINT, entrypointScript(s.user), 0o755));
  for (const unit of BUS_UNITS) {
    const dest = `/etc/systemd/system/${unit}.d/${PUBLISH_DROP_IN}`;
    entries.push(s.publishUrl ? file(dest, publishDropIn(s.publishUrl)) : { kind: 'absent', dest, marker: PUBLISH_MARKER });
  }
  // For a container without systemd (systemd's RuntimeDirectory= makes it at boot).
  if (user && user.gid !== undefined) entries.push({ kind: 'dir', dest: RUN_DIR, mode: 0o755, uid: user.uid, gid: user.gid });
  return entries;
}

// ---------------------------------------------------------------------------
// The user

export interface UserInfo {
  name: string;
  uid: number;
  gid?: number;
  home: string;
  shell: string;
}

export type UserAction =
  /** Already in the root's /etc/passwd. */
  | 'exists'
  /** Created now (by `how`). */
  | 'created'
  /** Left to systemd-sysusers at boot (the sysusers.d entry). */
  | 'at-boot'
  /** Not created: the root has no /etc/passwd (a tree to copy into an image). */
  | 'skipped';

export interface UserResult {
  action: UserAction;
  user: UserInfo;
  how?: string;
  note?: string;
}

function passwdEntries(root: string): UserInfo[] | undefined {
  let text: string;
  try {
    text = fs.readFileSync(path.join(root, 'etc/passwd'), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  return text.split('\n').filter((l) => l && !l.startsWith('#')).map((l) => l.split(':')).filter((f) => f.length >= 7)
    .map((f) => ({ name: f[0]!, uid: Number(f[2]), gid: Number(f[3]), home: f[5]!, shell: f[6]! }));
}

/** The user as the root knows it now; undefined when absent. */
export function lookupUser(root: string, name: string): UserInfo | undefined {
  return passwdEntries(root)?.find((u) => u.name === name);
}

function defaultShell(root: string): string {
  return fs.existsSync(path.join(root, 'bin/bash')) || fs.existsSync(path.join(root, 'usr/bin/bash')) ? '/bin/bash' : '/bin/sh';
}

function hasSystemd(root: string): boolean {
  return ['usr/lib/systemd/systemd', 'lib/systemd/systemd'].some((p) => fs.existsSync(path.join(root, p)));
}

function hasSshd(root: string): boolean {
  return fs.existsSync(path.join(root, 'etc/ssh/sshd_config')) || fs.existsSync(path.join(root, 'usr/sbin/sshd'));
}

/**
 * Decide the user before anything is written: the existing one (its uid
 * checked against `uid` when given), or the one to create (its uid free).
 */
export function planUser(root: string, name: string, uid: number | undefined, socketOwner: number | undefined): UserInfo {
  const entries = passwdEntries(root) ?? [];
  const existing = entries.find((u) => u.name === name);
  if (existing) {
    if (uid !== undefined && existing.uid !== uid) {
      throw new SetupError(`the user ${name} exists in this root with uid ${existing.uid}, not --uid ${uid}: change it (\`usermod -u ${uid} ${name}\`) or leave out --uid`);
    }
    return existing;
  }
  const want = uid ?? (socketOwner !== undefined && socketOwner !== 0 ? socketOwner : DEFAULT_UID);
  const taken = entries.find((u) => u.uid === want);
  if (taken) {
    throw new SetupError(`uid ${want} already belongs to ${taken.name} in this root: run the units as that user (--user ${taken.name}), or give ${name} another uid (--uid N, the uid shed-host-agent runs as on the host)`);
  }
  return { name, uid: want, home: `/home/${name}`, shell: defaultShell(root) };
}

/** Create the user now if it is missing: systemd-sysusers with the sysusers.d entry, else useradd. */
export function ensureUser(root: string, planned: UserInfo): UserResult {
  const entries = passwdEntries(root);
  const found = entries?.find((u) => u.name === planned.name);
  if (found) return { action: 'exists', user: found };
  if (!entries) {
    return { action: 'skipped', user: planned, note: `${root} has no /etc/passwd, so ${planned.name} was not created: systemd-sysusers creates it at boot from ${SYSUSERS_FILE}; an image without systemd needs \`useradd --uid ${planned.uid} --create-home ${planned.name}\`` };
  }
  const isRoot = path.resolve(root) === '/';
  const attempts: string[] = [];
  if (hasSystemd(root)) {
    const sysusers = findProgram('systemd-sysusers');
    if (sysusers) {
      // With --root, a file named on the command line is read as it is given: the root's copy.
      const r = spawnSync(sysusers, isRoot ? [SYSUSERS_FILE] : [`--root=${root}`, path.join(root, SYSUSERS_FILE)], { encoding: 'utf8', timeout: 30_000 });
      if (r.status === 0 && lookupUser(root, planned.name)) return created(root, planned, 'systemd-sysusers');
      attempts.push(`systemd-sysusers: ${(r.stderr || r.error?.message || `exit ${r.status}`).trim()}`);
    }
  }
  const useradd = findProgram('useradd');
  if (useradd) {
    const args = [...(isRoot ? [] : ['--root', path.resolve(root)]), '--uid', String(planned.uid), '--user-group', '--create-home',
      '--home-dir', planned.home, '--shell', planned.shell, '--comment', 'shed-extensions guest user', planned.name];
    const r = spawnSync(useradd, args, { encoding: 'utf8', timeout: 30_000 });
    if (r.status === 0 && lookupUser(root, planned.name)) return created(root, planned, 'useradd');
    attempts.push(`useradd: ${(r.stderr || r.error?.message || `exit ${r.status}`).trim()}`);
  } else if (isRoot && findProgram('adduser')) {
    // busybox (Alpine): no --root, no --uid long option.
    const r = spawnSync('adduser', ['-D', '-u', String(planned.uid), '-h', planned.home, '-s', planned.shell, '-g', 'shed-extensions guest user', planned.name], { encoding: 'utf8', timeout: 30_000 });
    if (r.status === 0 && lookupUser(root, planned.name)) return created(root, planned, 'adduser');
    attempts.push(`adduser: ${(r.stderr || r.error?.message || `exit ${r.status}`).trim()}`);
  }
  if (hasSystemd(root)) {
    return {
      action: 'at-boot', user: planned,
      note: `${planned.name} is created at boot by systemd-sysusers from ${SYSUSERS_FILE}${attempts.length ? ` (creating it now failed: ${attempts.join('; ')})` : ''}`,
    };
  }
  throw new SetupError(`cannot create the user ${planned.name} in ${root} (${attempts.length ? attempts.join('; ') : 'no useradd here'}); `
    + `run install-guest as root, or create it in the image first: useradd --uid ${planned.uid} --user-group --create-home ${planned.name}`);
}

function created(root: string, planned: UserInfo, how: string): UserResult {
  const user = lookupUser(root, planned.name)!;
  // systemd-sysusers makes no home; useradd --create-home did.
  const home = path.join(root, user.home);
  if (user.home.startsWith('/home/') && !fs.existsSync(home)) {
    fs.mkdirSync(home, { recursive: true, mode: 0o750 });
    fs.chownSync(home, user.uid, user.gid ?? user.uid);
  }
  return { action: 'created', user, how };
}

function findProgram(name: string): string | undefined {
  for (const dir of ['/usr/sbin', '/usr/bin', '/sbin', '/bin', ...(process.env.PATH ?? '').split(':')]) {
    if (!dir) continue;
    const p = path.join(dir, name);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {
      // next
    }
  }
  return undefined;
}

// ---------------------------------------------------------------------------
// The uid check

export interface SocketCheck {
  /** The path examined (the socket, or its directory when the socket is not there yet). */
  path: string;
  uid: number;
  gid: number;
  mode: number;
  isSocket: boolean;
}

/**
 * What of the broker socket is visible from this root now: the socket, else
 * its directory (the shed's, 0700, owned by the broker's uid). Undefined when
 * neither is (an image built before anything is mounted).
 */
export function inspectSocket(root: string, publishUrl: string | undefined): SocketCheck | undefined {
  if (!publishUrl) return undefined;
  const socketPath = parsePublishUrl(publishUrl).socketPath;
  if (!socketPath) return undefined;
  for (const p of [socketPath, path.dirname(socketPath)]) {
    try {
      const st = fs.statSync(path.join(root, p));
      return { path: p, uid: st.uid, gid: st.gid, mode: st.mode & 0o7777, isSocket: st.isSocket() };
    } catch {
      // not there
    }
  }
  return undefined;
}

/** Whether `uid`/`gid` may use what `check` found: connect to the socket (write), or enter its directory (search). */
export function socketOpensFor(check: SocketCheck, uid: number, gid: number | undefined): boolean {
  if (uid === 0) return true;
  const shift = check.uid === uid ? 6 : check.gid === gid ? 3 : 0;
  const bit = check.isSocket ? 0o2 : 0o1;
  return ((check.mode >> shift) & bit) !== 0;
}

export function socketRefusal(check: SocketCheck, user: UserInfo): string {
  return `the broker socket at ${check.path} belongs to uid ${check.uid} (mode ${check.mode.toString(8).padStart(4, '0')}), `
    + `but the guest user ${user.name} has uid ${user.uid}: the guest services could not open it. `
    + `The guest user's uid must be the uid shed-host-agent runs as on the host: install with --uid ${check.uid} (a user not yet created), `
    + `change the user (\`usermod -u ${check.uid} ${user.name}\`), or run shed-host-agent as uid ${user.uid}`;
}

/** A notice for a mount path the units must bind back in. */
export function mountNotice(publishUrl: string | undefined): string | undefined {
  const socketPath = publishUrl ? parsePublishUrl(publishUrl).socketPath : undefined;
  if (!socketPath) return undefined;
  const dir = path.dirname(socketPath);
  const hidden = hiddenBy(dir);
  if (!hidden) return undefined;
  return `${dir} is hidden from the units by ${hidden}=; their drop-ins bind it back in, but programs with the same hardening will not see it: mount the shed's directory at ${RECOMMENDED_MOUNT} instead`;
}
