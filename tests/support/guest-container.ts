/**
 * Real guests for the end-to-end tests: a Debian root built offline here with
 * mmdebstrap (systemd, sshd, the AWS CLI, this machine's node), cached under
 * the temp directory keyed by what goes into it, and containers started from
 * it with rootful podman on runc (shared TESTING.md, "Containers"). Every
 * container started here is removed when the run ends, and containers a
 * killed run left behind are removed by the next.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { run, tempDir, waitFor } from './procs.js';

/** Debian packages of the guest root, beyond minbase. */
export const GUEST_PACKAGES = ['systemd', 'systemd-sysv', 'dbus', 'openssh-server', 'ca-certificates', 'awscli'];
/** Bumped when the way the root is built changes: a new cache key. */
const RECIPE = 'shed-ext guest root v1: mmdebstrap minbase bookworm + node from the host + masked timers';
const CACHE_DIR = path.join(os.tmpdir(), 'shed-ext-guest-roots');
const NAME_PREFIX = 'shed-ext-test-';
/** Timers that would wake apt and friends in a test guest. */
const MASKED = ['apt-daily.timer', 'apt-daily-upgrade.timer', 'dpkg-db-backup.timer', 'e2scrub_all.timer', 'fstrim.timer'];

export interface Runtime {
  /** The environment podman runs with (CONTAINERS_CONF: runc, the rlimits this host allows). */
  env: NodeJS.ProcessEnv;
}

/** Why containers cannot run here, or the runtime; checks what a `podman run` needs, short of running one. */
export async function containerRuntime(): Promise<Runtime | { skip: string }> {
  if (process.getuid?.() !== 0) return { skip: `rootful podman needs root; this run is uid ${process.getuid?.()}` };
  for (const tool of ['podman', 'runc', 'mmdebstrap', 'setpriv']) {
    if (!which(tool)) return { skip: `${tool} is not installed (.ci/run installs podman, runc, mmdebstrap)` };
  }
  const hard = spawnSync('sh', ['-c', 'ulimit -Hn'], { encoding: 'utf8' }).stdout.trim();
  const nofile = /^\d+$/.test(hard) ? hard : '1024';
  const conf = path.join(tempDir('shed-podman'), 'containers.conf');
  // TESTING.md pitfalls 1-3: podman's default nofile is above this host's hard limit, and crun rejects its cgroup layout.
  fs.writeFileSync(conf, `[containers]\ndefault_ulimits = ["nofile=${nofile}:${nofile}", "nproc=32768:32768"]\n[engine]\nruntime = "runc"\n`);
  const env = { ...process.env, CONTAINERS_CONF: conf };
  const info = await run('podman', ['info', '--format', '{{.Host.OCIRuntime.Name}}'], { env, timeoutMs: 60_000 });
  if (info.code !== 0) return { skip: `podman cannot run here: ${info.stderr.trim().split('\n').pop()}` };
  await removeLeftovers(env);
  return { env };
}

function which(tool: string): string | undefined {
  for (const dir of ['/usr/sbin', '/usr/bin', '/sbin', '/bin', ...(process.env.PATH ?? '').split(':')]) {
    const p = path.join(dir, tool);
    if (dir && fs.existsSync(p)) return p;
  }
  return undefined;
}

/** Containers of runs whose process is gone (killed before their teardown). */
async function removeLeftovers(env: NodeJS.ProcessEnv): Promise<void> {
  const list = await run('podman', ['ps', '-a', '--format', '{{.Names}}'], { env });
  const stale = list.stdout.split('\n').filter((name) => {
    const m = new RegExp(`^${NAME_PREFIX}(\\d+)-`).exec(name);
    return m && !alive(Number(m[1]));
  });
  if (stale.length) await run('podman', ['rm', '-f', '-t', '0', ...stale], { env, timeoutMs: 60_000 });
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** The apt sources this machine uses (deb822 or a list), for mmdebstrap to use the same mirror. */
function aptSources(): string {
  const dir = '/etc/apt/sources.list.d';
  const deb822 = fs.existsSync(dir) ? fs.readdirSync(dir).filter((f) => f.endsWith('.sources')).sort().map((f) => path.join(dir, f)) : [];
  return deb822[0] ?? '/etc/apt/sources.list';
}

/**
 * The guest root, built once and kept under the temp directory by a key of
 * its inputs (packages, the recipe, the apt sources, this node binary): the
 * first run pays for the build (about 1.5 min here), later runs reuse it.
 * Containers use it through an overlay (`--rootfs DIR:O`), so it stays clean.
 */
export async function guestRoot(log: (line: string) => void = () => undefined): Promise<string> {
  const sources = aptSources();
  const node = fs.statSync(process.execPath);
  const key = createHash('sha256')
    .update(JSON.stringify([RECIPE, GUEST_PACKAGES, fs.readFileSync(sources, 'utf8'), process.version, node.size, node.mtimeMs]))
    .digest('hex').slice(0, 16);
  fs.mkdirSync(CACHE_DIR, { recursive: true, mode: 0o700 });
  const root = path.join(CACHE_DIR, key);
  if (fs.existsSync(path.join(root, '.complete'))) return root;

  const building = path.join(CACHE_DIR, `.build-${key}-${process.pid}`);
  fs.rmSync(building, { recursive: true, force: true });
  const logFile = `${building}.log`;
  log(`building the guest root ${key} with mmdebstrap (once; cached in ${CACHE_DIR})`);
  const started = Date.now();
  const r = await run('mmdebstrap', ['--variant=minbase', `--include=${GUEST_PACKAGES.join(',')}`, 'bookworm', building, sources], { timeoutMs: 15 * 60_000 });
  fs.writeFileSync(logFile, `${r.stdout}${r.stderr}`);
  if (r.code !== 0) {
    fs.rmSync(building, { recursive: true, force: true });
    throw new Error(`mmdebstrap could not build the guest root (exit ${r.code}); log ${logFile}:\n${r.stderr.split('\n').slice(-15).join('\n')}`);
  }
  // bookworm's nodejs is 18: the guest gets this machine's node (glibc, runs in bookworm).
  fs.copyFileSync(process.execPath, path.join(building, 'usr/local/bin/node'));
  fs.chmodSync(path.join(building, 'usr/local/bin/node'), 0o755);
  for (const unit of MASKED) {
    const p = path.join(building, 'etc/systemd/system', unit);
    fs.rmSync(p, { force: true });
    fs.symlinkSync('/dev/null', p);
  }
  fs.writeFileSync(path.join(building, '.complete'), `${new Date().toISOString()} ${Math.round((Date.now() - started) / 1000)} s\n`);
  try {
    fs.renameSync(building, root);
  } catch {
    // Another run finished the same root first: use it.
    fs.rmSync(building, { recursive: true, force: true });
  }
  log(`built the guest root in ${Math.round((Date.now() - started) / 1000)} s`);
  // Roots of other inputs are stale now; each is ~400 MB.
  for (const name of fs.readdirSync(CACHE_DIR)) {
    const m = /^\.build-[0-9a-f]+-(\d+)(\.log)?$/.exec(name);
    if (name !== key && !(m && alive(Number(m[1])))) fs.rmSync(path.join(CACHE_DIR, name), { recursive: true, force: true });
  }
  return root;
}

let counter = 0;

export interface Container {
  name: string;
  /** `podman exec` with stdin; never throws for a non-zero exit. */
  exec(args: string[], options?: { user?: string; env?: Record<string, string>; input?: string; interactive?: boolean; timeoutMs?: number }): ReturnType<typeof run>;
  logs(): Promise<string>;
  /** `podman stop` (the stop signal, then SIGKILL after `timeoutS`); resolves with the time it took and the exit code. */
  stop(timeoutS?: number): Promise<{ ms: number; exitCode: number }>;
  remove(): Promise<void>;
}

/** `podman run -d … --rootfs ROOT:O command…` (options before the rootfs: podman reads the first positional as the rootfs). */
export async function startContainer(rt: Runtime, root: string, options: string[], command: string[]): Promise<Container> {
  const name = `${NAME_PREFIX}${process.pid}-${++counter}`;
  const started = await run('podman', ['run', '-d', '--name', name, ...options, '--rootfs', `${root}:O`, ...command], { env: rt.env, timeoutMs: 120_000 });
  const container: Container = {
    name,
    exec: (args, o = {}) => run('podman', [
      'exec', ...(o.input !== undefined || o.interactive ? ['-i'] : []), ...(o.user ? ['--user', o.user] : []),
      ...Object.entries(o.env ?? {}).flatMap(([k, v]) => ['--env', `${k}=${v}`]), name, ...args,
    ], { env: rt.env, input: o.input, timeoutMs: o.timeoutMs ?? 60_000 }),
    logs: async () => {
      const r = await run('podman', ['logs', name], { env: rt.env });
      return `${r.stdout}${r.stderr}`;
    },
    stop: async (timeoutS = 10) => {
      const t0 = Date.now();
      await run('podman', ['stop', '-t', String(timeoutS), name], { env: rt.env, timeoutMs: (timeoutS + 30) * 1000 });
      const ms = Date.now() - t0;
      const code = await run('podman', ['inspect', name, '--format', '{{.State.ExitCode}}'], { env: rt.env });
      return { ms, exitCode: Number(code.stdout.trim()) };
    },
    remove: async () => {
      await run('podman', ['rm', '-f', '-t', '0', name], { env: rt.env, timeoutMs: 60_000 });
      live.delete(container);
    },
  };
  live.add(container);
  if (started.code !== 0) {
    await container.remove();
    throw new ContainerStartError(`podman run failed (exit ${started.code}): ${started.stderr.trim()}`);
  }
  return container;
}

export class ContainerStartError extends Error {
  override readonly name = 'ContainerStartError';
}

const live = new Set<Container>();

/** Remove every container this run started and has not removed (an after hook of the suite that started them). */
export async function removeAllContainers(): Promise<void> {
  await Promise.all([...live].map((c) => c.remove()));
}

/**
 * systemd as PID 1 is up: `systemctl is-system-running --wait` answers a
 * final state. Right after `podman run` it can fail before PID 1 listens
 * (TESTING.md pitfall 8), or say "offline": asked again until it settles.
 */
export async function systemState(c: Container, timeoutMs = 90_000): Promise<string> {
  return waitFor(async () => {
    const r = await c.exec(['systemctl', 'is-system-running', '--wait'], { timeoutMs: 60_000 });
    const state = r.stdout.trim();
    return state && !['offline', 'initializing', 'starting'].includes(state) ? state : undefined;
  }, timeoutMs, 'systemd in the guest to finish booting');
}

/** Sections of a script's output: `<<<name` … `>>>name CODE` (see `sectionScript`). */
export interface Section {
  out: string;
  code: number;
}

/** A bash script that runs each command and marks its output and exit code. */
export function sectionScript(commands: Record<string, string>): string {
  return [
    'step() { name=$1; shift; printf "<<<%s\\n" "$name"; ( eval "$1" ) </dev/null 2>&1; printf "\\n>>>%s %s\\n" "$name" "$?"; }',
    ...Object.entries(commands).map(([name, cmd]) => `step ${name} ${shellQuote(cmd)}`),
    '',
  ].join('\n');
}

export function parseSections(text: string): Record<string, Section> {
  const out: Record<string, Section> = {};
  for (const m of text.matchAll(/<<<(\S+)\n([\s\S]*?)\n>>>\1 (\d+)\n/g)) out[m[1]!] = { out: m[2]!, code: Number(m[3]) };
  return out;
}

export function shellQuote(s: string): string {
  return `'${s.replaceAll("'", "'\\''")}'`;
}
