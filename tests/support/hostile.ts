/**
 * A hostile guest for the adversarial tests (tests/adversarial/): generated
 * HTTP requests by the thousand (malformed framing, huge and trickled heads
 * and bodies, chunked edge cases, pipelined bursts, abandoned halves),
 * floods over many connections, and a real `shed-host-agent run` in its own
 * process whose descriptors and memory can be read from /proc.
 *
 * Generation is seeded: a failure names its seed, and the same seed gives
 * the same requests.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import { binCommand, capture, spawnTracked, stopProcess, tempDir, waitFor } from './procs.js';

/** mulberry32: small, fast, good enough to pick test cases. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface HostileRequest {
  /** Written in order, `gapMs` apart. */
  pieces: Buffer[];
  gapMs?: number;
  /** Destroy the connection after writing instead of waiting for an answer. */
  abandon?: boolean;
  kind: string;
}

type Rand = () => number;
const pick = <T>(r: Rand, items: readonly T[]): T => items[Math.floor(r() * items.length)]!;
const int = (r: Rand, max: number) => Math.floor(r() * max);

const NAMESPACES = ['ssh-agent', 'aws-credentials', 'docker-credentials'];
const OPERATIONS = ['list', 'sign', 'bind', 'status', 'ping', 'get_credentials', 'get', 'store', 'erase'];

/** Text a guest might choose to make someone log: controls, escapes, bidi, long runs, odd Unicode. */
function nastyText(r: Rand): string {
  return pick(r, [
    () => '\x1b[2J\x1b[31mowned\x07',
    () => 'line\nforged 2026-01-01T00:00:00Z shed-host-agent INFO ok',
    () => '\u202egnp.exe\u200b',
    () => '\ud800lone',
    () => 'x'.repeat(1 + int(r, 5000)),
    () => '\\x1b\\u0000',
    () => String.fromCodePoint(...Array.from({ length: 1 + int(r, 40) }, () => int(r, 0x2ffff))),
    () => '',
    () => '../../etc/passwd',
    () => '__proto__',
  ])();
}

function randomJson(r: Rand, depth = 0): unknown {
  if (depth > 3) return int(r, 10);
  return pick(r, [
    () => nastyText(r),
    () => r() * 1e300 * (r() < 0.5 ? -1 : 1),
    () => 2 ** 53 + int(r, 10),
    () => null,
    () => r() < 0.5,
    () => Array.from({ length: int(r, 5) }, () => randomJson(r, depth + 1)),
    () => Object.fromEntries(Array.from({ length: int(r, 5) }, () => [pick(r, ['__proto__', 'constructor', 'operation', nastyText(r).slice(0, 20)]), randomJson(r, depth + 1)])),
  ])();
}

/** A publish body as a guest might send it: well formed or not, with payloads of every shape. */
function publishBody(r: Rand): string {
  const namespace = r() < 0.7 ? pick(r, NAMESPACES) : nastyText(r);
  const operation = r() < 0.7 ? pick(r, OPERATIONS) : randomJson(r);
  const payload: Record<string, unknown> = { operation };
  for (let i = int(r, 4); i > 0; i--) payload[pick(r, ['public_key', 'data', 'flags', 'server_url', 'hostkey', nastyText(r).slice(0, 10)])] = randomJson(r);
  const body = r() < 0.9 ? { namespace, type: r() < 0.9 ? 'request' : pick(r, ['event', 'response', nastyText(r)]), payload } : randomJson(r);
  const text = JSON.stringify(body) ?? 'null';
  return pick(r, [
    () => text,
    () => text,
    () => text,
    () => text.slice(0, int(r, text.length)),
    () => `${'['.repeat(int(r, 20_000))}`,
    () => `{"namespace":"ssh-agent","payload":${'{"a":'.repeat(int(r, 5000))}1${'}'.repeat(5000)}}`,
    () => nastyText(r),
  ])();
}

function head(method: string, target: string, fields: string[], version = 'HTTP/1.1'): string {
  return `${method} ${target} ${version}\r\n${fields.map((f) => `${f}\r\n`).join('')}\r\n`;
}

/** One well-formed publish request. */
export function publishRequest(body: string, extra: string[] = []): Buffer {
  return Buffer.from(head('POST', '/v1/publish', ['Host: localhost', 'Content-Type: application/json', ...extra, `Content-Length: ${Buffer.byteLength(body)}`]) + body);
}

function chunked(r: Rand, body: string): string {
  let out = '';
  let at = 0;
  while (at < body.length) {
    const n = 1 + int(r, 64);
    const part = body.slice(at, at + n);
    const ext = r() < 0.3 ? `;${nastyText(r).replace(/[\r\n]/g, '').slice(0, 30)}=${'v'.repeat(int(r, 50))}` : '';
    out += `${Buffer.byteLength(part).toString(16)}${ext}\r\n${part}\r\n`;
    at += n;
  }
  const trailers = Array.from({ length: int(r, 3) }, (_, i) => `X-T${i}: ${'t'.repeat(int(r, 100))}\r\n`).join('');
  return `${out}0\r\n${trailers}\r\n`;
}

/** Mutate bytes: flips, inserted CR/LF/NUL, deleted or repeated ranges. */
function mutate(r: Rand, buf: Buffer): Buffer {
  const bytes = [...buf];
  for (let n = 1 + int(r, 4); n > 0 && bytes.length; n--) {
    const at = int(r, bytes.length);
    switch (int(r, 5)) {
      case 0: bytes[at] = int(r, 256); break;
      case 1: bytes.splice(at, 0, pick(r, [0x0d, 0x0a, 0x00, 0x20, 0x3a, 0x09])); break;
      case 2: bytes.splice(at, 1 + int(r, 20)); break;
      case 3: bytes.splice(at, 0, ...bytes.slice(at, at + int(r, 40))); break;
      default: bytes.splice(at, 0, ...Buffer.from(pick(r, ['\r\n\r\n', 'Transfer-Encoding: chunked\r\n', 'Content-Length: 99999999999\r\n', ' HTTP/1.0', '\n']))); break;
    }
  }
  return Buffer.from(bytes);
}

/** A generated request against a publish endpoint (`target`, e.g. /v1/publish or /credentials). */
export function hostileRequest(r: Rand, target = '/v1/publish'): HostileRequest {
  const body = publishBody(r);
  const roll = r();
  const simple = (b: string, extra: string[] = []) => Buffer.from(head('POST', target, ['Host: localhost', ...extra, `Content-Length: ${Buffer.byteLength(b)}`]) + b);
  if (roll < 0.3) return { kind: 'publish', pieces: [simple(body)] };
  if (roll < 0.55) return { kind: 'mutated', pieces: [mutate(r, simple(body))] };
  if (roll < 0.65) {
    return { kind: 'chunked', pieces: [Buffer.from(head('POST', target, ['Host: localhost', 'Transfer-Encoding: chunked']) + chunked(r, body))] };
  }
  if (roll < 0.72) {
    return {
      kind: 'framing',
      pieces: [Buffer.from(pick(r, [
        () => head('POST', target, ['Host: x', 'Content-Length: 5', 'Transfer-Encoding: chunked']) + '0\r\n\r\n',
        () => head('POST', target, ['Host: x', 'Content-Length: 5', 'Content-Length: 6']) + 'hello!',
        () => head('POST', target, ['Host: x', 'Content-Length: -1']),
        () => head('POST', target, ['Host: x', 'Transfer-Encoding: chunked']) + 'fffffffffffffffffff\r\n',
        () => head('POST', target, ['Host: x', 'Transfer-Encoding: gzip, chunked']) + '0\r\n\r\n',
        () => head('POST', target, ['Host: x', ' folded: value']),
        () => head(nastyText(r).replace(/[\r\n ]/g, '').slice(0, 20) || 'X', target, ['Host: x']),
        () => head('GET', `/${'a'.repeat(int(r, 20_000))}`, ['Host: x']),
        () => head('POST', target, [], 'HTTP/1.1'),
        () => head('POST', target, ['Host: x'], 'HTTP/2.0'),
        () => 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n',
        () => `GET ${target}\r\n`,
        () => '\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03',
        () => head('POST', target, ['Host: x', `X-Null: a\0b`, 'Content-Length: 0']),
        () => head('POST', target, Array.from({ length: 500 }, (_, i) => `X-${i}: y`).concat(['Host: x', 'Content-Length: 0'])),
      ])())],
    };
  }
  if (roll < 0.76) {
    return {
      kind: 'oversized',
      pieces: [Buffer.from(pick(r, [
        () => head('POST', target, ['Host: x', `X-Big: ${'b'.repeat(17 * 1024)}`, 'Content-Length: 0']),
        () => head('POST', target, ['Host: x', `Content-Length: ${2 * 1024 * 1024}`]),
        () => head('POST', target, ['Host: x', 'Transfer-Encoding: chunked']) + `${(1024 * 1024 + 1).toString(16)}\r\n${'z'.repeat(1024 * 1024 + 1)}\r\n0\r\n\r\n`,
        () => head('POST', target, ['Host: x', 'Transfer-Encoding: chunked']) + `1\r\na\r\n0\r\n${'T: x\r\n'.repeat(40_000)}\r\n`,
      ])())],
      abandon: r() < 0.3,
    };
  }
  if (roll < 0.88) {
    const whole = r() < 0.5 ? simple(body) : Buffer.from(head('POST', target, ['Host: localhost', 'Transfer-Encoding: chunked']) + chunked(r, body));
    const cut = int(r, whole.length);
    if (r() < 0.6) return { kind: 'abandoned', pieces: [whole.subarray(0, cut)], abandon: true };
    const pieces: Buffer[] = [];
    for (let at = 0; at < whole.length;) {
      const n = 1 + int(r, Math.max(1, whole.length / 4));
      pieces.push(whole.subarray(at, at + n));
      at += n;
    }
    return { kind: 'trickled', pieces: pieces.slice(0, 8).concat(pieces.length > 8 ? [Buffer.concat(pieces.slice(8))] : []), gapMs: 1 + int(r, 5) };
  }
  const burst = Array.from({ length: 2 + int(r, 30) }, () => simple(publishBody(r)));
  return { kind: 'pipelined', pieces: [Buffer.concat(burst)] };
}

export interface Answered {
  status: number;
  body: string;
}

/** The HTTP responses in what a connection received (status and body of each, by Content-Length). */
export function parseResponses(raw: Buffer): Answered[] {
  const out: Answered[] = [];
  let at = 0;
  while (at < raw.length) {
    const end = raw.indexOf('\r\n\r\n', at);
    if (end < 0) break;
    const headText = raw.toString('latin1', at, end);
    const status = /^HTTP\/1\.[01] (\d{3})/.exec(headText);
    if (!status) break;
    const length = Number(/\r\ncontent-length: *(\d+)/i.exec(headText)?.[1] ?? 0);
    out.push({ status: Number(status[1]), body: raw.toString('utf8', end + 4, end + 4 + length) });
    at = end + 4 + length;
  }
  return out;
}

export type Target = { socketPath: string } | { host: string; port: number };

export interface FloodStats {
  requests: number;
  connections: number;
  /** HTTP status → count. */
  statuses: Record<number, number>;
  /** Responses read, with their bodies (200s only, to count what reached the dispatcher). */
  bodies: string[];
  /** Connections the server closed without an answer. */
  closedSilently: number;
  /** Connections still open after their time (left to the server's timeouts, then destroyed here). */
  lingering: number;
}

/**
 * Send `count` generated requests over connections `concurrency` at a time;
 * each connection ends (FIN) once written, so the server answers and closes.
 */
export async function flood(target: Target, count: number, concurrency: number, make: (i: number) => HostileRequest, waitMs = 3000): Promise<FloodStats> {
  const stats: FloodStats = { requests: 0, connections: 0, statuses: {}, bodies: [], closedSilently: 0, lingering: 0 };
  let next = 0;
  const one = async (req: HostileRequest) => {
    const socket = 'socketPath' in target ? net.connect(target.socketPath) : net.connect(target.port, target.host);
    socket.on('error', () => undefined);
    const chunks: Buffer[] = [];
    socket.on('data', (d: Buffer) => chunks.push(d));
    const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    stats.connections += 1;
    await new Promise<void>((resolve) => {
      socket.once('connect', resolve);
      socket.once('error', () => resolve());
    });
    for (const piece of req.pieces) {
      if (socket.destroyed) break;
      socket.write(piece);
      if (req.gapMs) await new Promise((r) => setTimeout(r, req.gapMs));
    }
    if (req.abandon) {
      socket.destroy();
      return;
    }
    if (!socket.destroyed) socket.end();
    const timer = setTimeout(() => {
      stats.lingering += 1;
      socket.destroy();
    }, waitMs);
    await closed;
    clearTimeout(timer);
    const answers = parseResponses(Buffer.concat(chunks));
    if (answers.length === 0) stats.closedSilently += 1;
    for (const a of answers) {
      stats.statuses[a.status] = (stats.statuses[a.status] ?? 0) + 1;
      if (a.status === 200) stats.bodies.push(a.body);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (next < count) {
      const i = next++;
      stats.requests += 1;
      await one(make(i));
    }
  }));
  return stats;
}

/** What a process's descriptors point at (`socket:[123]`, a path, `anon_inode:[eventfd]`), by kind. */
export function fdKinds(pid: number): Record<string, number> {
  const kinds: Record<string, number> = {};
  for (const fd of fs.readdirSync(`/proc/${pid}/fd`)) {
    let target: string;
    try {
      target = fs.readlinkSync(`/proc/${pid}/fd/${fd}`);
    } catch {
      continue;
    }
    const kind = target.startsWith('socket:') ? 'socket' : target.startsWith('/') ? target : target.replace(/\[.*$/, '');
    kinds[kind] = (kinds[kind] ?? 0) + 1;
  }
  return kinds;
}

/** Descriptors and resident memory of a process, from /proc. */
export function procStats(pid: number): { fds: number; rssMb: number } {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const rssKb = Number(/^VmRSS:\s+(\d+)/m.exec(status)?.[1] ?? 0);
  return { fds: fs.readdirSync(`/proc/${pid}/fd`).length, rssMb: rssKb / 1024 };
}

export interface BrokerProcess {
  pid: number;
  /** The heap in use after a full collection, in MB (the broker runs with tests/support/heap-probe.cjs). */
  heapUsedMb(): Promise<number>;
  dir: string;
  auditDir: string;
  socketPath(shed: string): string;
  stderr(): string;
  /** SIGTERM and wait; resolves with the exit code. */
  stop(): Promise<number | string | null>;
}

/** The real `shed-host-agent run` in its own process, with `policy` (sockets and audit in a temp dir filled in). */
export async function startBrokerProcess(policy: Record<string, unknown>, env: NodeJS.ProcessEnv = {}): Promise<BrokerProcess> {
  const dir = tempDir('shed-adv');
  const socks = path.join(dir, 'socks');
  const auditDir = path.join(dir, 'audit');
  const config = path.join(dir, 'extensions.yaml');
  fs.writeFileSync(config, stringify({ ...policy, direct: { ...(policy.direct as object), sockets_dir: socks }, audit: { ...(policy.audit as object), dir: auditDir } }), { mode: 0o600 });
  const [cmd, args] = binCommand('shed-host-agent', ['run', '--config', config]);
  const probe = path.join(path.dirname(fileURLToPath(import.meta.url)), 'heap-probe.cjs');
  const nodeOptions = `${process.env.NODE_OPTIONS ?? ''} --expose-gc --require ${probe}`.trim();
  const child = spawnTracked(cmd, args, { env: { ...process.env, HOME: dir, SSH_AUTH_SOCK: '', NODE_OPTIONS: nodeOptions, ...env } });
  const out = capture(child);
  await waitFor(() => /shed-host-agent ready/.test(out.stderr()) || child.exitCode !== null, 30_000, 'the broker to start');
  if (child.exitCode !== null) throw new Error(`the broker did not start:\n${out.stderr()}`);
  return {
    pid: child.pid!,
    async heapUsedMb() {
      const before = out.stderr().length;
      process.kill(child.pid!, 'SIGUSR2');
      const m = await waitFor(() => /HEAP_USED (\d+)/.exec(out.stderr().slice(before)), 10_000, 'the heap figure');
      return Number(m[1]) / 1048576;
    },
    dir,
    auditDir,
    socketPath: (shed) => path.join(socks, shed, 'bus.sock'),
    stderr: out.stderr,
    stop: () => stopProcess(child, 10_000),
  };
}

/** Every line of a shed's audit file(s), parsed. */
export function auditOf(auditDir: string, shed: string): Array<Record<string, unknown>> {
  const file = path.join(auditDir, `${shed}.log`);
  const files = [file, ...Array.from({ length: 10 }, (_, i) => `${file}.${i + 1}`)].filter((f) => fs.existsSync(f));
  return files.flatMap((f) => fs.readFileSync(f, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>));
}

/**
 * Run `attack` while a well-behaved client asks (`probe`, timed) every
 * 25 ms, and at least `min` times (some attacks are over, or still being
 * worked through, in a moment). Resolves with the attack's result and the
 * client's latencies in milliseconds.
 */
export async function probeWhile<T>(attack: () => Promise<T>, probe: () => Promise<unknown>, min = 20): Promise<{ result: T; latencies: number[]; quiet: number[] }> {
  const timed = async () => {
    const t0 = performance.now();
    await probe();
    return performance.now() - t0;
  };
  // The yardstick: the same probe just before, with nothing attacking.
  const quiet: number[] = [];
  for (let i = 0; i < 10; i++) {
    quiet.push(await timed());
    await new Promise((r) => setTimeout(r, 25));
  }
  const latencies: number[] = [];
  let done = false;
  const probing = (async () => {
    while (!done || latencies.length < min) {
      latencies.push(await timed());
      await new Promise((r) => setTimeout(r, 25));
    }
  })();
  const result = await attack().finally(() => (done = true));
  await probing;
  return { result, latencies, quiet };
}

/**
 * What an attack may do to a well-behaved client's latency: p90 within
 * 100 ms, or within 5 times its quiet p90 when the machine itself is that
 * slow (CI shares its CPUs with other work), and never past a second (or
 * twice that bound). An attack that stalls the service fails either way.
 */
export function expectUnharmed({ latencies, quiet }: { latencies: number[]; quiet: number[] }, who = 'the client'): void {
  expect(latencies.length, `${who} was asked during the attack`).to.be.above(3);
  const quietP90 = percentile(quiet, 0.9);
  const bound = Math.max(100, 5 * quietP90);
  expect(percentile(latencies, 0.9), `${who}'s p90 (ms) of ${latencies.length}, quiet p90 ${quietP90.toFixed(1)} ms`).to.be.below(bound);
  expect(Math.max(...latencies), `${who}'s slowest answer (ms)`).to.be.below(Math.max(1000, 2 * bound));
}

/** p-th percentile of `samples` (0..1). */
export function percentile(samples: number[], p: number): number {
  const s = [...samples].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(p * s.length))] ?? NaN;
}

/**
 * A git-credentials payload as a hostile guest might publish it: every
 * field missing, of the wrong type, huge, with control characters, dot
 * segments, odd protocols and hosts, prototype keys; and requests that
 * look right (for `allowedHost`, under `acme/`), which the policy may serve.
 */
export function gitCredentialPayload(r: Rand, allowedHost: string): Record<string, unknown> {
  const text = () => (r() < 0.5 ? nastyText(r) : randomJson(r));
  const host = () => pick(r, [
    () => allowedHost,
    () => allowedHost.toUpperCase(),
    () => `${allowedHost}:443`,
    () => `user:pw@${allowedHost}`,
    () => `${allowedHost}.evil.example`,
    () => `evil.example/${allowedHost}`,
    () => '[::1]:99999',
    () => `${'a'.repeat(63)}.`.repeat(5),
    () => 'h'.repeat(int(r, 300_000)),
    () => text(),
  ])();
  const gitPath = () => pick(r, [
    () => `acme/app${int(r, 100)}.git`,
    () => 'acme/../other/secret.git',
    () => 'acme/./app.git',
    () => 'acme/%2e%2e/x',
    () => `acme/${'x/'.repeat(int(r, 3000))}`,
    () => 'acme\\..\\x',
    () => 'acme/\0/x',
    () => `acme/\x1b[2J\n${nastyText(r)}`,
    () => undefined,
    () => text(),
  ])();
  const payload: Record<string, unknown> = { operation: r() < 0.9 ? 'get' : pick(r, ['store', 'erase', 'fill', 'status', nastyText(r), randomJson(r)]) };
  if (r() < 0.9) payload.protocol = r() < 0.8 ? pick(r, ['https', 'http', 'HTTPS', 'ssh', 'file', 'ext', 'cert', '']) : text();
  if (r() < 0.9) payload.host = host();
  if (r() < 0.8) payload.path = gitPath();
  for (let i = int(r, 3); i > 0; i--) payload[pick(r, ['__proto__', 'constructor', 'username', 'password', 'url', nastyText(r).slice(0, 20)])] = randomJson(r);
  return payload;
}

/** Input for a guest's git-credential-shed as something hostile (or broken) might write it to its stdin. */
export function gitHelperInput(r: Rand, allowedHost: string): Buffer {
  const line = () => pick(r, [
    () => 'protocol=https',
    () => `host=${allowedHost}`,
    () => `path=acme/app${int(r, 10)}.git`,
    () => 'path=acme/../other/secret.git',
    () => `protocol=${nastyText(r).replace(/\n/g, '')}`,
    () => `host=${nastyText(r).replace(/\n/g, '')}`,
    () => 'capability[]=authtype',
    () => `wwwauth[]=Basic realm="${nastyText(r).replace(/\n/g, '')}"`,
    () => 'no equals sign here',
    () => '=value-without-key',
    () => `username=${'u'.repeat(int(r, 5000))}`,
    () => '',
  ])();
  return pick(r, [
    () => Buffer.from(`${Array.from({ length: 1 + int(r, 8) }, line).join(pick(r, ['\n', '\r\n']))}${pick(r, ['\n\n', '\n', ''])}`),
    () => Buffer.from(`protocol=https\nhost=${allowedHost}\npath=acme/app.git\n\n`),
    () => Buffer.from(Array.from({ length: int(r, 4096) }, () => int(r, 256))),
    () => Buffer.concat([Buffer.from(`protocol=https\nhost=${allowedHost}\npath=`), Buffer.from([0xff, 0xfe, 0x00, 0xc3]), Buffer.from('\n\n')]),
    () => Buffer.from(`protocol=https\nhost=${allowedHost}\npath=${'p'.repeat(70_000 + int(r, 2_000_000))}\n\n`),
    () => Buffer.from('x=y\n'.repeat(int(r, 50_000))),
    () => Buffer.alloc(0),
  ])();
}
