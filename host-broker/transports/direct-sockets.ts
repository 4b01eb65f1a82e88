/**
 * The embedded transport: one unix socket per shed named in the policy,
 * `<sockets_dir>/<shed>.sock`, each serving shed-agent's `POST /v1/publish`
 * API (PROTOCOL.md section 2) exactly. The socket a request arrives on is the
 * shed's identity: mounting that socket into a VM or container is the
 * capability, so sockets are 0600 in a 0700 directory.
 */
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { PUBLISH_API_STATUS, PublishApiCode } from '../../protocol/codes.js';
import { AGENT_WAIT_LIMIT_MS, apiErrorBody, isShedName, MAX_BODY_BYTES, type Payload } from '../../protocol/envelope.js';
import type { Logger } from '../../protocol/log.js';
import { requestEnvelope, responseEnvelope } from '../../protocol/messages.js';
import { listenPrivate } from '../../protocol/private-socket.js';
import type { RequestSink, Transport } from './transport.js';

/** sun_path is 108 bytes on Linux and 104 on macOS, NUL included. */
const MAX_SOCKET_PATH_BYTES = 103;

export interface DirectSocketsOptions {
  socketsDir: string;
  sheds: string[];
  log: Logger;
  /** How long a request may wait for its answer before 504 TIMEOUT (shed-agent's limit: 30 s). */
  waitLimitMs?: number;
}

interface Served {
  server: http.Server;
  path: string;
  /** Inode of the socket file we bound, so shutdown removes only our own file. */
  ino: number;
  pending: Set<http.ServerResponse>;
}

export class DirectSockets implements Transport {
  readonly description: string;
  private readonly served = new Map<string, Served>();
  private sink: RequestSink | undefined;
  private readonly waitLimitMs: number;
  private stopping = false;
  private sheds: string[];

  constructor(private readonly options: DirectSocketsOptions) {
    this.description = `direct sockets in ${options.socketsDir}`;
    this.waitLimitMs = options.waitLimitMs ?? AGENT_WAIT_LIMIT_MS;
    this.sheds = options.sheds;
  }

  socketPath(shed: string): string {
    return path.join(this.options.socketsDir, `${shed}.sock`);
  }

  /** Sheds with a live socket. */
  get servedSheds(): string[] {
    return [...this.served.keys()].sort();
  }

  async start(sink: RequestSink): Promise<void> {
    this.sink = sink;
    prepareDirectory(this.options.socketsDir, this.options.log);
    await this.setSheds(this.sheds);
  }

  /** Follow a policy change: open sockets for new sheds, close those of removed ones. */
  async setSheds(sheds: string[]): Promise<void> {
    this.sheds = sheds;
    if (!this.sink) return;
    const wanted = new Set(sheds);
    for (const shed of [...this.served.keys()]) {
      if (!wanted.has(shed)) await this.close(shed);
    }
    for (const shed of sheds) {
      if (!this.served.has(shed)) await this.open(shed);
    }
  }

  async stop(): Promise<void> {
    this.stopping = true;
    await Promise.all([...this.served.keys()].map((shed) => this.close(shed)));
  }

  private async open(shed: string): Promise<void> {
    if (!isShedName(shed)) throw new Error(`cannot serve a socket for ${JSON.stringify(shed)}: not a valid shed name`);
    const socketPath = this.socketPath(shed);
    if (Buffer.byteLength(socketPath) > MAX_SOCKET_PATH_BYTES) {
      throw new Error(`socket path ${socketPath} is longer than the ${MAX_SOCKET_PATH_BYTES} bytes unix sockets allow; set direct.sockets_dir to a shorter directory`);
    }
    const pending = new Set<http.ServerResponse>();
    const server = http.createServer((req, res) => this.onRequest(shed, req, res, pending));
    server.keepAliveTimeout = 60_000;
    await listenPrivate(server, socketPath, {
      notSocket: `${socketPath} exists and is not a socket; move it away so the broker can serve this shed`,
      live: `another process is serving ${socketPath}; stop the other shed-host-agent first`,
      onStale: (p) => this.options.log.info(`removed stale socket ${p}`),
    });
    server.on('error', (err) => this.options.log.error(`socket for shed ${shed}: ${err.message}`));
    this.served.set(shed, { server, path: socketPath, ino: fs.statSync(socketPath).ino, pending });
    this.options.log.info(`serving shed ${shed} on ${socketPath}`);
  }

  private async close(shed: string): Promise<void> {
    const served = this.served.get(shed);
    if (!served) return;
    this.served.delete(shed);
    for (const res of served.pending) {
      sendError(res, PublishApiCode.SHUTTING_DOWN, 'the host broker is stopping or no longer serves this shed');
    }
    served.pending.clear();
    await new Promise<void>((resolve) => {
      served.server.close(() => resolve());
      served.server.closeAllConnections();
    });
    try {
      if (fs.lstatSync(served.path).ino === served.ino) fs.unlinkSync(served.path);
    } catch {
      // Already gone.
    }
    this.options.log.info(`closed the socket of shed ${shed}`);
  }

  private onRequest(shed: string, req: http.IncomingMessage, res: http.ServerResponse, pending: Set<http.ServerResponse>): void {
    const url = (req.url ?? '').split('?')[0];
    if (url !== '/v1/publish') {
      sendJson(res, 404, apiErrorBody('NOT_FOUND', `no such endpoint ${url}; the bus API is POST /v1/publish`));
      req.resume();
      return;
    }
    if (req.method !== 'POST') {
      res.setHeader('allow', 'POST');
      sendJson(res, 405, apiErrorBody('METHOD_NOT_ALLOWED', '/v1/publish takes POST'));
      req.resume();
      return;
    }
    if (Number(req.headers['content-length'] ?? 0) > MAX_BODY_BYTES) {
      refuseTooLarge(req, res);
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        refuseTooLarge(req, res);
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => {
      if (size > MAX_BODY_BYTES) return;
      this.onBody(shed, Buffer.concat(chunks).toString('utf8'), res, pending);
    });
  }

  private onBody(shed: string, text: string, res: http.ServerResponse, pending: Set<http.ServerResponse>): void {
    if (this.stopping || !this.sink) {
      sendError(res, PublishApiCode.SHUTTING_DOWN, 'the host broker is stopping');
      return;
    }
    let body: unknown;
    try {
      body = JSON.parse(text);
    } catch {
      sendError(res, PublishApiCode.INVALID_BODY, 'the body is not JSON');
      return;
    }
    if (typeof body !== 'object' || body === null || Array.isArray(body)) {
      sendError(res, PublishApiCode.INVALID_BODY, 'the body must be a JSON object');
      return;
    }
    const { namespace, type = 'request', payload = {} } = body as Record<string, unknown>;
    if (typeof namespace !== 'string' || namespace === '') {
      sendError(res, PublishApiCode.MISSING_NAMESPACE, 'the body has no namespace');
      return;
    }
    if (type !== 'request' && type !== 'event') {
      sendError(res, PublishApiCode.INVALID_TYPE, 'type must be "request" or "event"');
      return;
    }
    if (typeof payload !== 'object' || payload === null || Array.isArray(payload)) {
      sendError(res, PublishApiCode.INVALID_BODY, 'payload must be a JSON object');
      return;
    }
    const envelope = requestEnvelope(namespace, payload as Payload, { name: shed, backend: 'direct-socket' }, type);
    if (type === 'event') {
      res.writeHead(202).end();
      this.sink(envelope, shed, async () => undefined);
      return;
    }
    pending.add(res);
    const timer = setTimeout(() => {
      if (pending.delete(res)) sendError(res, PublishApiCode.TIMEOUT, `no response within ${this.waitLimitMs / 1000} s`);
    }, this.waitLimitMs);
    res.on('close', () => {
      clearTimeout(timer);
      pending.delete(res);
    });
    this.sink(envelope, shed, async (answer) => {
      clearTimeout(timer);
      if (!pending.delete(res)) return;
      sendJson(res, 200, responseEnvelope(envelope, answer));
    });
  }
}

function sendJson(res: http.ServerResponse, status: number, body: unknown): void {
  if (res.headersSent || res.destroyed) return;
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) }).end(text);
}

function sendError(res: http.ServerResponse, code: PublishApiCode, message: string): void {
  sendJson(res, PUBLISH_API_STATUS[code], apiErrorBody(code, message));
}

function refuseTooLarge(req: http.IncomingMessage, res: http.ServerResponse): void {
  res.setHeader('connection', 'close');
  sendError(res, PublishApiCode.BODY_TOO_LARGE, `the body is larger than ${MAX_BODY_BYTES} bytes`);
  req.resume();
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
