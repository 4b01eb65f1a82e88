/**
 * node:http configured for peers that may be hostile: the broker's direct
 * shed sockets and the guest's AWS endpoint. llhttp (fuzzed by the Node
 * project) parses; this module sets every limit deliberately and makes sure
 * a refused connection is gone, not parked:
 *
 * - the head must arrive within `headersTimeoutMs`, the whole request within
 *   `requestTimeoutMs`, however slowly it trickles (408, then closed);
 * - an idle keep-alive connection closes after `keepAliveTimeoutMs`;
 * - a head (or a chunked trailer) over `maxHeaderBytes` is 431, a chunk
 *   extension over 16 KiB or any malformed framing 400, then closed;
 * - a body over `maxBodyBytes` is 413 and the connection closed, without
 *   reading the rest (a declared Content-Length is refused before a byte);
 * - a connection may have at most `maxPipelined` requests in flight (real
 *   clients send one at a time); past that it is closed;
 * - at most `maxConnections` connections at once; more are closed as they
 *   are accepted, and `onDrop` is told;
 * - bodies hold memory from their first byte until their answer is sent:
 *   all of a server's together at most `maxBodyBytesInFlight` (and, with a
 *   shared `bodyBudget`, all servers' together at most its size); a body
 *   that would pass it is refused 503 and its connection closed, so 64
 *   connections of 1 MiB each cannot pin 64 MiB.
 *
 * A refusal is answered once when the socket can take it, and the socket is
 * destroyed at most CLOSE_GRACE_MS later whether or not its peer reads.
 */
import http from 'node:http';
import type net from 'node:net';

export interface HttpLimits {
  headersTimeoutMs: number;
  requestTimeoutMs: number;
  keepAliveTimeoutMs: number;
  maxHeaderBytes: number;
  maxBodyBytes: number;
  maxPipelined: number;
  maxConnections: number;
  maxBodyBytesInFlight: number;
}

export const DEFAULT_HTTP_LIMITS: HttpLimits = {
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 20_000,
  keepAliveTimeoutMs: 5_000,
  maxHeaderBytes: 16 * 1024,
  maxBodyBytes: 1024 * 1024,
  maxPipelined: 4,
  maxConnections: 64,
  maxBodyBytesInFlight: 8 * 1024 * 1024,
};

/** Bytes of request bodies held at once, shared by the servers that take from it. */
export class ByteBudget {
  private used = 0;
  constructor(readonly size: number) {}

  get inUse(): number {
    return this.used;
  }

  take(n: number): boolean {
    if (this.used + n > this.size) return false;
    this.used += n;
    return true;
  }

  give(n: number): void {
    this.used = Math.max(0, this.used - n);
  }
}

/** How long a refused connection may linger for its answer to be read. */
export const CLOSE_GRACE_MS = 1000;

/** A request whose body has been read whole (`rawBody`, which @hono/node-server also honours). */
export type BufferedRequest = http.IncomingMessage & { rawBody: Buffer };

/** The JSON body of a refusal: `code` is an UPPER_SNAKE reason, `message` what happened and what to do. */
export type RefusalBody = (status: number, code: string, message: string) => string;

export interface HardenedServerOptions {
  limits?: Partial<HttpLimits>;
  /** Serves a request whose body is whole; the response is the handler's to end. */
  onRequest: (req: BufferedRequest, res: http.ServerResponse) => void;
  refusal: RefusalBody;
  /** Told of each connection closed because the server was at maxConnections. */
  onDrop?: () => void;
  /** A budget for bodies shared with other servers (all sheds' sockets). */
  bodyBudget?: ByteBudget;
  /** Told of each body refused because a budget was spent. */
  onBudget?: () => void;
}

const REFUSALS: Record<string, [number, string, string]> = {
  ERR_HTTP_REQUEST_TIMEOUT: [408, 'REQUEST_TIMEOUT', 'the request did not arrive whole in time'],
  HPE_HEADER_OVERFLOW: [431, 'HEADERS_TOO_LARGE', 'the request head is too large'],
  HPE_CHUNK_EXTENSIONS_OVERFLOW: [400, 'BAD_REQUEST', 'a chunk extension is too large'],
};

/** Per connection: requests read and not yet answered, and the newest one's response (for a parse error in its body). */
interface ConnectionState {
  inFlight: number;
  latest?: http.ServerResponse;
}
const connections = new WeakMap<net.Socket, ConnectionState>();

export function createHardenedServer(options: HardenedServerOptions): http.Server {
  const limits = { ...DEFAULT_HTTP_LIMITS, ...options.limits };
  const server = http.createServer({
    headersTimeout: limits.headersTimeoutMs,
    requestTimeout: limits.requestTimeoutMs,
    keepAliveTimeout: limits.keepAliveTimeoutMs,
    maxHeaderSize: limits.maxHeaderBytes,
    connectionsCheckingInterval: Math.min(1000, limits.headersTimeoutMs),
    // Checked below instead, so the refusal has a JSON body like every other.
    requireHostHeader: false,
  });
  server.maxConnections = limits.maxConnections;
  if (options.onDrop) server.on('drop', options.onDrop);
  const own = new ByteBudget(limits.maxBodyBytesInFlight);
  const shared = options.bodyBudget;
  const take = (n: number) => {
    if (!own.take(n)) return false;
    if (shared && !shared.take(n)) {
      own.give(n);
      return false;
    }
    return true;
  };
  const give = (n: number) => {
    own.give(n);
    shared?.give(n);
  };

  server.on('clientError', (err: NodeJS.ErrnoException, socket: net.Socket) => {
    const [status, code, message] = REFUSALS[err.code ?? ''] ?? [400, 'BAD_REQUEST', 'the request is not valid HTTP/1.1'];
    const body = options.refusal(status, code, `${message}; the connection is closed`);
    // A body that goes wrong after its head was read: its response is the way to answer.
    const res = connections.get(socket)?.latest;
    if (res && !res.headersSent) {
      res.shouldKeepAlive = false;
      sendJson(res, status, body);
      closeSoon(socket);
      return;
    }
    refuseSocket(socket, status, body);
  });

  server.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
    const socket = req.socket;
    let state = connections.get(socket);
    if (!state) connections.set(socket, (state = { inFlight: 0 }));
    state.latest = res;
    const pending = ++state.inFlight;
    const conn = state;
    // What this body holds of the budgets, given back when its answer has gone (or the
    // connection has): a request waiting for its turn or its answer still holds its body.
    let held = 0;
    const release = () => {
      give(held);
      held = 0;
    };
    res.once('close', () => {
      conn.inFlight -= 1;
      release();
    });
    if (pending > limits.maxPipelined) {
      // A flood of pipelined requests would all be served at once.
      socket.destroy();
      return;
    }
    const refuse = (status: number, code: string, message: string) => {
      res.shouldKeepAlive = false;
      sendJson(res, status, options.refusal(status, code, message));
      closeSoon(socket);
    };
    if (req.httpVersionMinor === 1 && req.headers.host === undefined) {
      refuse(400, 'BAD_REQUEST', 'an HTTP/1.1 request needs a Host header');
      return;
    }
    const declared = req.headers['content-length'];
    if (declared !== undefined && Number(declared) > limits.maxBodyBytes) {
      refuse(413, 'BODY_TOO_LARGE', `the body (${declared} bytes) is larger than ${limits.maxBodyBytes} bytes`);
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    let over = false;
    req.on('data', (chunk: Buffer) => {
      if (over) return;
      size += chunk.length;
      if (size > limits.maxBodyBytes) {
        over = true;
        chunks.length = 0;
        release();
        refuse(413, 'BODY_TOO_LARGE', `the body is larger than ${limits.maxBodyBytes} bytes`);
        return;
      }
      if (!take(chunk.length)) {
        over = true;
        chunks.length = 0;
        release();
        options.onBudget?.();
        refuse(503, 'BUSY', 'the host is receiving too much at once from this shed; retry in a moment');
        return;
      }
      held += chunk.length;
      chunks.push(chunk);
    });
    req.on('end', () => {
      if (over || res.writableEnded) return;
      const buffered = req as BufferedRequest;
      buffered.rawBody = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size);
      chunks.length = 0;
      options.onRequest(buffered, res);
    });
    // An aborted request: the socket is gone or going; nothing to answer.
    req.on('error', () => socket.destroy());
  });
  return server;
}

/** Answer JSON, unless the response has begun or the peer is gone. */
export function sendJson(res: http.ServerResponse, status: number, body: string, fields: http.OutgoingHttpHeaders = {}): void {
  if (res.headersSent || res.writableEnded || res.destroyed) return;
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...fields });
  res.end(body);
}

/** Write one raw refusal on a socket the parser gave up on, then make sure it closes. */
function refuseSocket(socket: net.Socket, status: number, body: string): void {
  // Not while a response is being written on it: that would corrupt it.
  if (socket.writable && !(socket as net.Socket & { _httpMessage?: unknown })._httpMessage) {
    socket.end(`HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
  }
  closeSoon(socket);
}

/**
 * Close a refused connection gracefully ("lingering close"): the answer is
 * sent and the write side shut, while what the peer still sends is read and
 * dropped for up to CLOSE_GRACE_MS, so a client still writing its body sees
 * the answer instead of a reset; then the socket is destroyed whatever the
 * peer does. node:http would destroy it as soon as the answer is written
 * (destroySoon); that call is made to linger instead.
 */
function closeSoon(socket: net.Socket): void {
  if (socket.destroyed) return;
  const timer = setTimeout(() => socket.destroy(), CLOSE_GRACE_MS);
  timer.unref();
  socket.once('close', () => clearTimeout(timer));
  socket.destroySoon = () => {
    if (!socket.writableEnded) socket.end();
  };
  socket.end();
}
