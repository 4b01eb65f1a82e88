/**
 * The direct sockets' HTTP/1.1 server: just enough of RFC 9112 for the
 * publish API, strictly. Requests on a connection are read and answered one
 * at a time (pipelined ones wait their turn); a body is delimited by
 * Content-Length or chunked coding, never both; `Expect: 100-continue` is
 * honoured; HTTP/1.0 keeps the connection only when asked. A head over
 * 16 KiB is 431, a body over the limit 413, a malformed message 400, a
 * request that does not arrive whole within the request timeout 408, each
 * followed by closing the connection. Idle connections close after the
 * keep-alive timeout.
 *
 * Why not node:http: on the ssh-agent path (bench/ssh-sign) node:http's
 * server machinery cost ~0.2 ms per request on a small VM, a fifth of the
 * latency budget; this one touches a few functions per request.
 */
import net from 'node:net';
import { bodyFraming, Http1ProtocolError, keepsAlive, readChunked, readHead, type BodyFraming } from '../../protocol/http1.js';

export const MAX_HEAD_BYTES = 16 * 1024;

export interface Http1Request {
  method: string;
  /** The request target as sent, e.g. `/v1/publish`. */
  target: string;
  /** Header fields by lower-case name. */
  fields: Map<string, string>;
  body: Buffer;
}

export interface Http1Reply {
  status: number;
  /** Extra header fields (content-type and content-length are set from `body`). */
  fields?: Record<string, string>;
  /** JSON text. */
  body: string;
  /** Close the connection after this reply. */
  close?: boolean;
}

/**
 * Serve one request: call `respond` once. `onClose` registers what to do if
 * the client goes away before that.
 */
export type Http1Handler = (request: Http1Request, respond: (reply: Http1Reply) => void, onClose: (fn: () => void) => void) => void;

export interface Http1ServerOptions {
  maxBodyBytes: number;
  /** The reply to a request this server refuses itself (malformed, too large, too slow). */
  refusal: (status: number, message: string) => Http1Reply;
  /** An idle keep-alive connection is closed after this long (60 s). */
  keepAliveMs?: number;
  /** A request must arrive whole within this long of its first byte (60 s). */
  requestTimeoutMs?: number;
}

const REASONS: Record<number, string> = {
  100: 'Continue', 200: 'OK', 202: 'Accepted', 400: 'Bad Request', 404: 'Not Found', 405: 'Method Not Allowed',
  408: 'Request Timeout', 413: 'Content Too Large', 431: 'Request Header Fields Too Large', 500: 'Internal Server Error',
  503: 'Service Unavailable', 504: 'Gateway Timeout',
};

let dateSecond = 0;
let dateField = '';
/** The Date field, formatted once a second. */
function httpDate(): string {
  const now = Date.now();
  const second = Math.floor(now / 1000);
  if (second !== dateSecond) {
    dateSecond = second;
    dateField = new Date(now).toUTCString();
  }
  return dateField;
}

export class Http1Server {
  readonly server: net.Server;
  private readonly connections = new Set<Connection>();

  constructor(handler: Http1Handler, readonly options: Http1ServerOptions) {
    this.server = net.createServer((socket) => {
      const conn = new Connection(socket, handler, options);
      this.connections.add(conn);
      socket.once('close', () => this.connections.delete(conn));
    });
  }

  /** Stop listening and drop every connection. */
  close(): Promise<void> {
    return new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      for (const c of this.connections) c.socket.destroy();
    });
  }
}

interface PendingHead {
  method: string;
  target: string;
  fields: Map<string, string>;
  bodyAt: number;
  framing: BodyFraming;
  keepAlive: boolean;
  continued: boolean;
}

class Connection {
  private buf: Buffer = Buffer.alloc(0);
  private head: PendingHead | undefined;
  /** A request is with the handler; further bytes wait. */
  private busy = false;
  /** Part of a request has arrived (its timeout is running). */
  private receiving = false;
  private closing = false;
  private timer: NodeJS.Timeout | undefined;
  private onGone: (() => void) | undefined;

  constructor(
    readonly socket: net.Socket,
    private readonly handler: Http1Handler,
    private readonly options: Http1ServerOptions,
  ) {
    socket.on('data', (chunk: Buffer) => {
      this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
      // Bytes past one whole request are only ever a pipelined request or two.
      if (this.buf.length > MAX_HEAD_BYTES + options.maxBodyBytes + 64 * 1024) socket.pause();
      if (!this.busy) this.next();
    });
    socket.on('error', () => socket.destroy());
    socket.on('close', () => {
      clearTimeout(this.timer);
      const gone = this.onGone;
      this.onGone = undefined;
      gone?.();
    });
    this.arm(options.keepAliveMs ?? 60_000);
  }

  /** Read as much of the next request as is there; hand it over when whole. */
  private next(): void {
    if (this.closing || this.socket.destroyed) return;
    let request: Http1Request;
    let keepAlive: boolean;
    try {
      const parsed = this.parse();
      if (!parsed) {
        // The request timeout runs from a request's first byte: trickling bytes does not extend it.
        if (this.buf.length === 0 && !this.head) this.arm(this.options.keepAliveMs ?? 60_000);
        else if (!this.receiving) {
          this.receiving = true;
          this.arm(this.options.requestTimeoutMs ?? 60_000, true);
        }
        if (this.socket.isPaused()) this.socket.resume();
        return;
      }
      ({ request, keepAlive } = parsed);
    } catch (err) {
      if (!(err instanceof Http1ProtocolError)) throw err;
      this.refuse(err.status, err.message);
      return;
    }
    clearTimeout(this.timer);
    this.receiving = false;
    this.busy = true;
    let answered = false;
    this.handler(
      request,
      (reply) => {
        if (answered) return;
        answered = true;
        this.onGone = undefined;
        this.send(reply, reply.close || !keepAlive, request.method === 'HEAD');
        this.busy = false;
        this.next();
      },
      (fn) => {
        this.onGone = fn;
      },
    );
  }

  private parse(): { request: Http1Request; keepAlive: boolean } | undefined {
    if (!this.head) {
      const head = readHead(this.buf, MAX_HEAD_BYTES);
      if (!head) return undefined;
      const line = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+) (\S+) HTTP\/1\.([01])$/.exec(head.startLine);
      if (!line) throw new Http1ProtocolError(`not an HTTP/1.x request line: ${JSON.stringify(head.startLine.slice(0, 60))}`);
      const minor = Number(line[3]);
      if (minor === 1 && !head.fields.has('host')) throw new Http1ProtocolError('an HTTP/1.1 request without Host');
      this.head = {
        method: line[1]!,
        target: line[2]!,
        fields: head.fields,
        bodyAt: head.bodyAt,
        framing: bodyFraming(head, this.options.maxBodyBytes, { kind: 'length', length: 0 }),
        keepAlive: keepsAlive(head, minor),
        continued: false,
      };
    }
    const h = this.head;
    const rest = this.buf.subarray(h.bodyAt);
    let body: Buffer | undefined;
    let used = 0;
    if (h.framing.kind === 'length') {
      if (rest.length >= h.framing.length) {
        body = rest.subarray(0, h.framing.length);
        used = h.framing.length;
      }
    } else {
      const chunked = readChunked(rest, this.options.maxBodyBytes);
      if (chunked) ({ body, used } = chunked);
    }
    if (!body) {
      if (!h.continued && (h.fields.get('expect') ?? '').toLowerCase() === '100-continue') {
        h.continued = true;
        this.socket.write('HTTP/1.1 100 Continue\r\n\r\n');
      }
      return undefined;
    }
    this.head = undefined;
    this.buf = rest.subarray(used);
    return { request: { method: h.method, target: h.target, fields: h.fields, body: Buffer.from(body) }, keepAlive: h.keepAlive };
  }

  private send(reply: Http1Reply, close: boolean, headOnly: boolean): void {
    if (this.socket.destroyed) return;
    const body = Buffer.from(reply.body, 'utf8');
    let head = `HTTP/1.1 ${reply.status} ${REASONS[reply.status] ?? 'Unknown'}\r\ndate: ${httpDate()}\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\n`;
    for (const [name, value] of Object.entries(reply.fields ?? {})) head += `${name}: ${value}\r\n`;
    head += close ? 'connection: close\r\n\r\n' : '\r\n';
    this.socket.write(headOnly ? head : Buffer.concat([Buffer.from(head, 'latin1'), body]));
    if (close) {
      this.closing = true;
      this.socket.end();
    }
  }

  /** Answer a request this server will not pass on, and close. */
  private refuse(status: number, message: string): void {
    clearTimeout(this.timer);
    this.send(this.options.refusal(status, message), true, false);
    this.buf = Buffer.alloc(0);
  }

  private arm(ms: number, partial = false): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      if (this.busy) return;
      if (partial) this.refuse(408, `the request did not arrive whole within ${ms / 1000} s`);
      else this.socket.destroy();
    }, ms);
    this.timer.unref();
  }
}
