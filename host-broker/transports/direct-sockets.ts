/**
 * The embedded transport: one unix socket per shed named in the policy,
 * `<sockets_dir>/<shed>/bus.sock`, each serving shed-agent's `POST /v1/publish`
 * API (PROTOCOL.md section 2) exactly. The socket a request arrives on is the
 * shed's identity: mounting it into a VM or container is the capability, so
 * sockets are 0600 in 0700 directories.
 *
 * Each shed has a directory of its own, kept across restarts, so that a
 * container can mount the directory: a restart binds a new socket file, which
 * a mount of the file itself would not see, but a mount of the directory
 * does. `<sockets_dir>/<shed>.sock`, where earlier versions bound the socket,
 * is a link to it for a release.
 *
 * HTTP is node:http with every limit set (protocol/http-server.ts). Each
 * shed's socket takes at most `limits.max_connections` connections (64) and
 * all of them together at most a budget drawn from the open-file limit;
 * connections past either are closed as they are accepted, so a shed that
 * holds its maximum delays no other shed.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import type http from 'node:http';
import type net from 'node:net';
import path from 'node:path';
import { PUBLISH_API_STATUS, PublishApiCode } from '../../protocol/codes.js';
import { AGENT_WAIT_LIMIT_MS, apiErrorBody, isShedName, MAX_BODY_BYTES, MAX_NAMESPACE_LENGTH, type Envelope, type Payload } from '../../protocol/envelope.js';
import { ByteBudget, createHardenedServer, DEFAULT_HTTP_LIMITS, sendJson, type BufferedRequest } from '../../protocol/http-server.js';
import { LogThrottle, type Logger } from '../../protocol/log.js';
import { requestEnvelope, responseEnvelope } from '../../protocol/messages.js';
import { listenPrivate, socketAnswers } from '../../protocol/private-socket.js';
import type { RequestSink, Transport } from './transport.js';

/** The socket's name in its shed's directory. */
export const SOCKET_NAME = 'bus.sock';

/** The envelopes of a direct socket carry ids it made itself. */
const FRESH = { freshId: true };

/** sun_path is 108 bytes on Linux and 104 on macOS, NUL included. */
const MAX_SOCKET_PATH_BYTES = 103;
/** Connections one shed may hold at once unless its policy says otherwise (limits.max_connections). */
export const DEFAULT_CONNECTIONS_PER_SHED = 64;
/** How often refused connections are summed up in the log. */
const DROP_LOG_INTERVAL_MS = 60_000;

export interface DirectSocketsOptions {
  socketsDir: string;
  sheds: string[];
  log: Logger;
  /** How long a request may wait for its answer before 504 TIMEOUT (shed-agent's limit: 30 s). */
  waitLimitMs?: number;
  /** Connections a shed may hold at once (asked again on every setSheds). */
  connectionsPerShed?: (shed: string) => number;
  /** Connections across every shed; past it, new ones are closed at once. Default: from the open-file limit. */
  maxConnections?: number;
  /** Bytes of request bodies being received across every shed at once (64 MiB); 8 MiB per shed. */
  maxBodyBytesInFlight?: number;
}

/** A reply to one request: an HTTP status and a JSON body. */
interface Answer {
  status: number;
  /** Sent as JSON; none for a 202. */
  body?: unknown;
  fields?: http.OutgoingHttpHeaders;
}

interface Served {
  server: http.Server;
  path: string;
  /** Inode of the socket file we bound, so shutdown removes only our own file. */
  ino: number;
  /** Requests waiting for the host, answered SHUTTING_DOWN when the socket closes. */
  pending: Set<(answer: Answer) => void>;
  sockets: Set<net.Socket>;
}

export class DirectSockets implements Transport {
  readonly description: string;
  private readonly served = new Map<string, Served>();
  private sink: RequestSink | undefined;
  private readonly waitLimitMs: number;
  private stopping = false;
  private sheds: string[];
  /** Connections open across every shed. */
  private open = 0;
  readonly maxConnections: number;
  private readonly throttle: LogThrottle;
  private readonly bodyBudget: ByteBudget;

  constructor(private readonly options: DirectSocketsOptions) {
    this.description = `direct sockets in ${options.socketsDir}`;
    this.waitLimitMs = options.waitLimitMs ?? AGENT_WAIT_LIMIT_MS;
    this.sheds = options.sheds;
    this.maxConnections = options.maxConnections ?? connectionBudget(openFileLimit());
    this.throttle = new LogThrottle(options.log, DROP_LOG_INTERVAL_MS);
    this.bodyBudget = new ByteBudget(options.maxBodyBytesInFlight ?? 64 * 1024 * 1024);
  }

  get socketsDir(): string {
    return this.options.socketsDir;
  }

  /** The shed's own directory: what a container mounts. */
  shedDir(shed: string): string {
    return path.join(this.options.socketsDir, shed);
  }

  socketPath(shed: string): string {
    return path.join(this.shedDir(shed), SOCKET_NAME);
  }

  /** Where earlier versions bound the shed's socket; now a link to socketPath. */
  legacyPath(shed: string): string {
    return path.join(this.options.socketsDir, `${shed}.sock`);
  }

  /** Sheds with a live socket. */
  get servedSheds(): string[] {
    return [...this.served.keys()].sort();
  }

  /** Connections open now, per shed and in all (status, tests). */
  get connections(): { total: number; sheds: Record<string, number> } {
    const sheds: Record<string, number> = {};
    for (const [name, s] of this.served) sheds[name] = s.sockets.size;
    return { total: this.open, sheds };
  }

  /** Each shed the policy names: `serving, N connections`, or `stopped` (not serving: the broker is stopping, or its socket could not be opened). */
  state(): Record<string, string> {
    const out: Record<string, string> = {};
    for (const shed of this.sheds) out[shed] = 'stopped';
    for (const [shed, s] of this.served) {
      const n = s.sockets.size;
      out[shed] = `serving, ${n} connection${n === 1 ? '' : 's'}`;
    }
    return out;
  }

  async start(sink: RequestSink): Promise<void> {
    this.sink = sink;
    prepareDirectory(this.options.socketsDir, this.options.log);
    await this.setSheds(this.sheds);
  }

  /** Follow a policy change: open sockets for new sheds, close those of removed ones, apply connection caps. */
  async setSheds(sheds: string[]): Promise<void> {
    this.sheds = sheds;
    if (!this.sink) return;
    const wanted = new Set(sheds);
    for (const shed of [...this.served.keys()]) {
      if (!wanted.has(shed)) await this.close(shed);
    }
    for (const shed of sheds) {
      const served = this.served.get(shed);
      if (served) served.server.maxConnections = this.capOf(shed);
      else await this.openShed(shed);
    }
  }

  async stop(): Promise<void> {
    this.stopping = true;
    this.throttle.close();
    await Promise.all([...this.served.keys()].map((shed) => this.close(shed)));
  }

  private capOf(shed: string): number {
    return this.options.connectionsPerShed?.(shed) ?? DEFAULT_CONNECTIONS_PER_SHED;
  }

  private async openShed(shed: string): Promise<void> {
    if (!isShedName(shed)) throw new Error(`cannot serve a socket for ${JSON.stringify(shed)}: not a valid shed name`);
    const socketPath = this.socketPath(shed);
    if (Buffer.byteLength(socketPath) > MAX_SOCKET_PATH_BYTES) {
      throw new Error(`socket path ${socketPath} is longer than the ${MAX_SOCKET_PATH_BYTES} bytes unix sockets allow; set direct.sockets_dir to a shorter directory`);
    }
    prepareDirectory(this.shedDir(shed), this.options.log);
    const served: Served = { server: undefined as unknown as http.Server, path: socketPath, ino: 0, pending: new Set(), sockets: new Set() };
    const server = createHardenedServer({
      limits: { ...DEFAULT_HTTP_LIMITS, maxBodyBytes: MAX_BODY_BYTES, maxConnections: this.capOf(shed) },
      refusal: (_status, code, message) => JSON.stringify(apiErrorBody(code, message)),
      onRequest: (req, res) => this.onRequest(shed, served, req, res),
      onDrop: () => this.dropped(shed, served),
      bodyBudget: this.bodyBudget,
      onBudget: () => this.throttle.warn(`budget ${shed}`, `shed ${shed} sends more request bodies at once than the broker holds (8 MiB a shed, ${Math.round(this.bodyBudget.size / 1048576)} MiB in all): refusing some with 503`),
    });
    served.server = server;
    server.on('connection', (socket: net.Socket) => {
      if (this.open >= this.maxConnections) {
        socket.destroy();
        this.droppedOverTotal();
        return;
      }
      this.open += 1;
      served.sockets.add(socket);
      socket.once('close', () => {
        this.open -= 1;
        served.sockets.delete(socket);
      });
    });
    await listenPrivate(server, socketPath, {
      notSocket: `${socketPath} exists and is not a socket; move it away so the broker can serve this shed`,
      live: `another process is serving ${socketPath}; stop the other shed-host-agent first`,
      onStale: (p) => this.options.log.info(`removed stale socket ${p}`),
    });
    server.on('error', (err) => this.options.log.error(`socket for shed ${shed}: ${err.message}`));
    served.ino = fs.statSync(socketPath).ino;
    this.served.set(shed, served);
    await this.linkLegacy(shed);
    this.options.log.info(`serving shed ${shed} on ${socketPath}`);
  }

  /**
   * `<shed>.sock` → `<shed>/bus.sock`, for guests set up by earlier versions.
   * A socket left there by an earlier version that died is replaced; one a
   * live process serves, or any other file, is left alone with a warning.
   */
  private async linkLegacy(shed: string): Promise<void> {
    const link = this.legacyPath(shed);
    const target = path.join(shed, SOCKET_NAME);
    try {
      const st = fs.lstatSync(link);
      if (st.isSymbolicLink() && fs.readlinkSync(link) === target) return;
      if (st.isSocket() && (await socketAnswers(link))) {
        this.options.log.warn(`${link} is served by another process (an earlier shed-host-agent?): not linking it to ${this.socketPath(shed)}; stop that process`);
        return;
      }
      if (!st.isSymbolicLink() && !st.isSocket()) {
        this.options.log.warn(`${link} exists and is not a socket or a link: not linking it to ${this.socketPath(shed)}; move it away`);
        return;
      }
      fs.unlinkSync(link);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    fs.symlinkSync(target, link);
  }

  /** One log line when a shed first hits its cap, then one a minute with the count while it keeps at it. */
  private dropped(shed: string, served: Served): void {
    this.throttle.warn(`cap ${shed}`, `shed ${shed} holds its ${served.server.maxConnections} connections (limits.max_connections): closing new ones until it lets some go`);
  }

  private droppedOverTotal(): void {
    this.throttle.warn('total', `${this.open} connections are open across all sheds, the most this broker takes (direct.max_connections, from the open-file limit): closing new ones; raise it (or ulimit -n) if this is legitimate`);
  }

  private async close(shed: string): Promise<void> {
    const served = this.served.get(shed);
    if (!served) return;
    this.served.delete(shed);
    for (const answer of [...served.pending]) {
      answer(errorAnswer(PublishApiCode.SHUTTING_DOWN, 'the host broker is stopping or no longer serves this shed'));
    }
    served.pending.clear();
    const closed = new Promise<void>((resolve) => served.server.close(() => resolve()));
    for (const socket of served.sockets) socket.destroy();
    await closed;
    try {
      if (fs.lstatSync(served.path).ino === served.ino) fs.unlinkSync(served.path);
    } catch {
      // Already gone.
    }
    // The link goes with the socket; the shed's directory stays, for whatever mounts it.
    const link = this.legacyPath(shed);
    try {
      if (fs.readlinkSync(link) === path.join(shed, SOCKET_NAME)) fs.unlinkSync(link);
    } catch {
      // Not ours, or gone.
    }
    this.options.log.info(`closed the socket of shed ${shed}`);
  }

  private onRequest(shed: string, served: Served, req: BufferedRequest, res: http.ServerResponse): void {
    const reply = (answer: Answer) => {
      if (answer.body === undefined) res.writeHead(answer.status, { 'content-length': 0 }).end();
      else sendJson(res, answer.status, JSON.stringify(answer.body), answer.fields);
    };
    const url = (req.url ?? '').split('?')[0]!;
    if (url !== '/v1/publish') {
      reply({ status: 404, body: apiErrorBody('NOT_FOUND', `no such endpoint ${JSON.stringify(url.slice(0, 64))}; the bus API is POST /v1/publish`) });
      return;
    }
    if (req.method !== 'POST') {
      reply({ status: 405, body: apiErrorBody('METHOD_NOT_ALLOWED', '/v1/publish takes POST'), fields: { allow: 'POST' } });
      return;
    }
    if (this.stopping || !this.sink) {
      reply(errorAnswer(PublishApiCode.SHUTTING_DOWN, 'the host broker is stopping'));
      return;
    }
    const pending = served.pending;
    const answer = (a: Answer) => {
      clearTimeout(timer);
      if (pending.delete(answer)) reply(a);
    };
    const timer = setTimeout(() => answer(errorAnswer(PublishApiCode.TIMEOUT, `no response within ${this.waitLimitMs / 1000} s`)), this.waitLimitMs);
    pending.add(answer);
    // The guest went away: nothing to answer, and nothing kept for it.
    res.once('close', () => {
      clearTimeout(timer);
      pending.delete(answer);
    });
    // The body is parsed in the shed's turn, not here: a shed's 64 connections
    // all ready at once would otherwise parse up to 64 MiB of JSON in one go.
    let envelope: Envelope | undefined;
    const open = (): Envelope | undefined => {
      envelope = this.envelopeOf(shed, req.rawBody, answer);
      if (envelope?.type === 'event') answer({ status: 202 });
      return envelope;
    };
    this.sink(open, shed, async (payload) => {
      // A sink may answer without looking at the request (tests do): the envelope is made then.
      const request = envelope ?? open();
      if (request) answer({ status: 200, body: responseEnvelope(request, payload) });
    }, FRESH);
  }

  /** The envelope a publish body makes, or undefined when the body was refused (answered with the reason). */
  private envelopeOf(shed: string, raw: Buffer, answer: (a: Answer) => void): Envelope | undefined {
    const refuse = (code: PublishApiCode, message: string) => {
      answer(errorAnswer(code, message));
      return undefined;
    };
    let body: unknown;
    try {
      body = JSON.parse(raw.toString('utf8'));
    } catch {
      return refuse(PublishApiCode.INVALID_BODY, 'the body is not JSON');
    }
    if (typeof body !== 'object' || body === null || Array.isArray(body)) {
      return refuse(PublishApiCode.INVALID_BODY, 'the body must be a JSON object');
    }
    const { namespace, type = 'request', payload = {} } = body as Record<string, unknown>;
    if (typeof namespace !== 'string' || namespace === '') {
      return refuse(PublishApiCode.MISSING_NAMESPACE, 'the body has no namespace');
    }
    if (namespace.length > MAX_NAMESPACE_LENGTH) {
      return refuse(PublishApiCode.INVALID_BODY, `namespace is longer than ${MAX_NAMESPACE_LENGTH} characters`);
    }
    if (type !== 'request' && type !== 'event') {
      return refuse(PublishApiCode.INVALID_TYPE, 'type must be "request" or "event"');
    }
    if (typeof payload !== 'object' || payload === null || Array.isArray(payload)) {
      return refuse(PublishApiCode.INVALID_BODY, 'payload must be a JSON object');
    }
    return requestEnvelope(namespace, payload as Payload, { name: shed, backend: 'direct-socket' }, type);
  }
}

function errorAnswer(code: PublishApiCode, message: string): Answer {
  return { status: PUBLISH_API_STATUS[code], body: apiErrorBody(code, message) };
}

/** The process's open-file limit (RLIMIT_NOFILE, soft), as Node raised it at start. */
export function openFileLimit(): number {
  try {
    const m = /^Max open files\s+(\d+|unlimited)/m.exec(fs.readFileSync('/proc/self/limits', 'utf8'));
    if (m) return m[1] === 'unlimited' ? 1 << 20 : Number(m[1]);
  } catch {
    // Not Linux: ask a shell, which inherits the limit.
  }
  const out = spawnSync('/bin/sh', ['-c', 'ulimit -n'], { encoding: 'utf8', timeout: 2000 });
  const n = /^\d+/.exec(out.stdout ?? '')?.[0];
  if (n) return Number(n);
  return out.stdout?.trim() === 'unlimited' ? 1 << 20 : 1024;
}

/**
 * The guests' share of the open-file limit: half of what is left after 256
 * for the broker's own use (audit files, policy watches, agent and helper
 * connections, which a request may open while its guest connection is open).
 */
export function connectionBudget(limit: number): number {
  return Math.max(64, Math.floor((limit - 256) / 2));
}

/** Create the sockets directory 0700, owned by us; tighten it if it is looser. */
function prepareDirectory(dir: string, log: Logger): void {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const st = fs.lstatSync(dir);
  if (!st.isDirectory()) throw new Error(`${dir} is not a directory; set direct.sockets_dir to a directory`);
  if (typeof process.getuid === 'function' && st.uid !== process.getuid()) {
    throw new Error(`${dir} belongs to another user (uid ${st.uid}); use a sockets_dir you own`);
  }
  if ((st.mode & 0o777) !== 0o700) {
    fs.chmodSync(dir, 0o700);
    log.info(`tightened ${dir} to mode 0700`);
  }
}
