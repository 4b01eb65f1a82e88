/**
 * The embedded transport: one unix socket per shed named in the policy,
 * `<sockets_dir>/<shed>.sock`, each serving shed-agent's `POST /v1/publish`
 * API (PROTOCOL.md section 2) exactly. The socket a request arrives on is the
 * shed's identity: mounting that socket into a VM or container is the
 * capability, so sockets are 0600 in a 0700 directory.
 */
import fs from 'node:fs';
import path from 'node:path';
import { PUBLISH_API_STATUS, PublishApiCode } from '../../protocol/codes.js';
import { AGENT_WAIT_LIMIT_MS, apiErrorBody, isShedName, MAX_BODY_BYTES, MAX_NAMESPACE_LENGTH, type Payload } from '../../protocol/envelope.js';
import type { Logger } from '../../protocol/log.js';
import { requestEnvelope, responseEnvelope } from '../../protocol/messages.js';
import { listenPrivate } from '../../protocol/private-socket.js';
import { Http1Server, type Http1Reply, type Http1Request } from './http1-server.js';
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

/** Answers a request still waiting for the host. */
type Respond = (reply: Http1Reply) => void;

interface Served {
  server: Http1Server;
  path: string;
  /** Inode of the socket file we bound, so shutdown removes only our own file. */
  ino: number;
  pending: Set<Respond>;
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
    const pending = new Set<Respond>();
    const server = new Http1Server((req, respond, onClose) => this.onRequest(shed, req, respond, onClose, pending), {
      maxBodyBytes: MAX_BODY_BYTES,
      refusal: (status, message) => ({ status, body: JSON.stringify(apiErrorBody(status === 413 ? PublishApiCode.BODY_TOO_LARGE : httpCode(status), message)) }),
    });
    await listenPrivate(server.server, socketPath, {
      notSocket: `${socketPath} exists and is not a socket; move it away so the broker can serve this shed`,
      live: `another process is serving ${socketPath}; stop the other shed-host-agent first`,
      onStale: (p) => this.options.log.info(`removed stale socket ${p}`),
    });
    server.server.on('error', (err) => this.options.log.error(`socket for shed ${shed}: ${err.message}`));
    this.served.set(shed, { server, path: socketPath, ino: fs.statSync(socketPath).ino, pending });
    this.options.log.info(`serving shed ${shed} on ${socketPath}`);
  }

  private async close(shed: string): Promise<void> {
    const served = this.served.get(shed);
    if (!served) return;
    this.served.delete(shed);
    for (const respond of served.pending) {
      respond(errorReply(PublishApiCode.SHUTTING_DOWN, 'the host broker is stopping or no longer serves this shed'));
    }
    served.pending.clear();
    await served.server.close();
    try {
      if (fs.lstatSync(served.path).ino === served.ino) fs.unlinkSync(served.path);
    } catch {
      // Already gone.
    }
    this.options.log.info(`closed the socket of shed ${shed}`);
  }

  private onRequest(shed: string, req: Http1Request, respond: Respond, onClose: (fn: () => void) => void, pending: Set<Respond>): void {
    const url = req.target.split('?')[0];
    if (url !== '/v1/publish') {
      respond(jsonReply(404, apiErrorBody('NOT_FOUND', `no such endpoint ${url}; the bus API is POST /v1/publish`)));
      return;
    }
    if (req.method !== 'POST') {
      respond({ ...jsonReply(405, apiErrorBody('METHOD_NOT_ALLOWED', '/v1/publish takes POST')), fields: { allow: 'POST' } });
      return;
    }
    if (this.stopping || !this.sink) {
      respond(errorReply(PublishApiCode.SHUTTING_DOWN, 'the host broker is stopping'));
      return;
    }
    let body: unknown;
    try {
      body = JSON.parse(req.body.toString('utf8'));
    } catch {
      respond(errorReply(PublishApiCode.INVALID_BODY, 'the body is not JSON'));
      return;
    }
    if (typeof body !== 'object' || body === null || Array.isArray(body)) {
      respond(errorReply(PublishApiCode.INVALID_BODY, 'the body must be a JSON object'));
      return;
    }
    const { namespace, type = 'request', payload = {} } = body as Record<string, unknown>;
    if (typeof namespace !== 'string' || namespace === '') {
      respond(errorReply(PublishApiCode.MISSING_NAMESPACE, 'the body has no namespace'));
      return;
    }
    if (namespace.length > MAX_NAMESPACE_LENGTH) {
      respond(errorReply(PublishApiCode.INVALID_BODY, `namespace is longer than ${MAX_NAMESPACE_LENGTH} characters`));
      return;
    }
    if (type !== 'request' && type !== 'event') {
      respond(errorReply(PublishApiCode.INVALID_TYPE, 'type must be "request" or "event"'));
      return;
    }
    if (typeof payload !== 'object' || payload === null || Array.isArray(payload)) {
      respond(errorReply(PublishApiCode.INVALID_BODY, 'payload must be a JSON object'));
      return;
    }
    const envelope = requestEnvelope(namespace, payload as Payload, { name: shed, backend: 'direct-socket' }, type);
    if (type === 'event') {
      respond({ status: 202, body: '' });
      this.sink(envelope, shed, async () => undefined);
      return;
    }
    const timer = setTimeout(() => {
      if (pending.delete(respond)) respond(errorReply(PublishApiCode.TIMEOUT, `no response within ${this.waitLimitMs / 1000} s`));
    }, this.waitLimitMs);
    pending.add(respond);
    onClose(() => {
      clearTimeout(timer);
      pending.delete(respond);
    });
    this.sink(envelope, shed, async (answer) => {
      clearTimeout(timer);
      if (!pending.delete(respond)) return;
      respond(jsonReply(200, responseEnvelope(envelope, answer)));
    });
  }
}

function jsonReply(status: number, body: unknown): Http1Reply {
  return { status, body: JSON.stringify(body) };
}

function errorReply(code: PublishApiCode, message: string): Http1Reply {
  return jsonReply(PUBLISH_API_STATUS[code], apiErrorBody(code, message));
}

/** The error code of a request the HTTP layer refused. */
function httpCode(status: number): string {
  switch (status) {
    case 408:
      return 'REQUEST_TIMEOUT';
    case 431:
      return 'HEADERS_TOO_LARGE';
    default:
      return 'BAD_REQUEST';
  }
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
