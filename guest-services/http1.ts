/**
 * The bus's HTTP/1.1 client: POST one JSON body, read one response, keep the
 * connection for the next request. It covers what shed-agent (Go net/http)
 * and the broker's sockets (Node) may answer: Content-Length and chunked
 * bodies, a body that ends with the connection, interim 1xx responses,
 * `Connection: close` and HTTP/1.0. Anything else is an Http1ProtocolError,
 * and a connection that saw one is never reused.
 *
 * Why not node:http: the ssh agent's added latency is bounded (bench/ssh-sign)
 * and node:http's client machinery (agent, ClientRequest, IncomingMessage
 * streams) costs ~0.3 ms of CPU per request on a small VM, against ~0.05 ms
 * here; undici measured no better. It also spares the one-shot docker helper
 * loading node:http at start-up.
 */
import net from 'node:net';
import { bodyFraming, Http1ProtocolError, keepsAlive, readChunked, readHead, type BodyFraming } from '../protocol/http1.js';

export { Http1ProtocolError };

/** The largest response accepted: answers are a few kilobytes. */
export const MAX_RESPONSE_BYTES = 4 * 1024 * 1024;
const MAX_HEAD_BYTES = 64 * 1024;

export interface Http1Response {
  status: number;
  body: Buffer;
}

export interface Http1Endpoint {
  socketPath?: string;
  host?: string;
  port?: number;
}

/** `POST path` with a JSON body, as one buffer ready to write. */
export function postRequest(endpoint: Http1Endpoint, path: string, json: string): Buffer {
  const host = endpoint.socketPath ? 'localhost' : `${endpoint.host!.includes(':') ? `[${endpoint.host}]` : endpoint.host}:${endpoint.port}`;
  const body = Buffer.from(json, 'utf8');
  const head = `POST ${path} HTTP/1.1\r\nHost: ${host}\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n`;
  return Buffer.concat([Buffer.from(head, 'latin1'), body]);
}

interface ResponseHead {
  status: number;
  bodyAt: number;
  framing: BodyFraming;
  keepAlive: boolean;
}

/** The response head at the start of `buf`, or undefined until it is all there. */
function parseHead(buf: Buffer): ResponseHead | undefined {
  const head = readHead(buf, MAX_HEAD_BYTES);
  if (!head) return undefined;
  const statusLine = /^HTTP\/1\.([01]) (\d{3})(?: .*)?$/.exec(head.startLine);
  if (!statusLine) throw new Http1ProtocolError(`not an HTTP/1.x status line: ${JSON.stringify(head.startLine.slice(0, 40))}`);
  const status = Number(statusLine[2]);
  let keepAlive = keepsAlive(head, Number(statusLine[1]));
  let framing = bodyFraming(head, MAX_RESPONSE_BYTES, { kind: 'close' });
  if (status < 200 || status === 204 || status === 304) framing = { kind: 'length', length: 0 };
  if (framing.kind === 'close') keepAlive = false;
  return { status, bodyAt: head.bodyAt, framing, keepAlive };
}

interface Waiter {
  resolve: (r: Http1Response) => void;
  reject: (e: Error) => void;
}

/** One connection; one request at a time. */
export class Http1Connection {
  private buf: Buffer = Buffer.alloc(0);
  private head: ResponseHead | undefined;
  private waiter: Waiter | undefined;
  private ended = false;
  /** Whether any byte of the current response has arrived (a request that got none may be retried). */
  answered = false;
  /** False once the connection must not carry another request. */
  reusable = true;

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('end', () => {
      this.ended = true;
      this.reusable = false;
      this.onData(Buffer.alloc(0));
    });
    socket.on('error', (err) => this.fail(err));
    socket.on('close', () => {
      this.reusable = false;
      this.fail(Object.assign(new Error('the peer closed the connection'), { code: 'ECONNRESET' }));
    });
  }

  /**
   * Connect; rejects with the socket's error (ENOENT, ECONNREFUSED, EACCES,
   * ...), or at once when `signal` aborts (the caller's deadline).
   */
  static connect(endpoint: Http1Endpoint, signal?: AbortSignal): Promise<Http1Connection> {
    return new Promise((resolve, reject) => {
      const socket = endpoint.socketPath
        ? net.createConnection(endpoint.socketPath)
        : net.createConnection({ host: endpoint.host, port: endpoint.port ?? 80 });
      const onAbort = () => {
        socket.destroy();
        reject(Object.assign(new Error('connect abandoned'), { code: 'ECONNABORTED' }));
      };
      const onError = (err: Error) => {
        signal?.removeEventListener('abort', onAbort);
        reject(err);
      };
      if (signal?.aborted) return onAbort();
      signal?.addEventListener('abort', onAbort, { once: true });
      socket.once('error', onError);
      socket.once('connect', () => {
        signal?.removeEventListener('abort', onAbort);
        socket.off('error', onError);
        resolve(new Http1Connection(socket));
      });
    });
  }

  /** Send a whole request; resolves with the whole response. */
  request(message: Buffer): Promise<Http1Response> {
    if (this.waiter || !this.reusable) return Promise.reject(new Error('connection busy or closed'));
    this.answered = false;
    this.socket.ref();
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject };
      this.socket.write(message);
    });
  }

  destroy(): void {
    this.reusable = false;
    this.socket.destroy();
  }

  private onData(chunk: Buffer): void {
    if (chunk.length) {
      this.answered = true;
      this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    }
    if (!this.waiter) {
      // Bytes nobody asked for: this connection is out of step.
      if (this.buf.length) this.destroy();
      return;
    }
    try {
      const done = this.parse();
      if (!done) {
        if (this.ended && !this.answered) throw Object.assign(new Error('the peer closed the connection before answering'), { code: 'ECONNRESET' });
        if (this.ended) throw new Http1ProtocolError('the connection closed in the middle of a response');
        if (this.buf.length > MAX_RESPONSE_BYTES + MAX_HEAD_BYTES) throw new Http1ProtocolError(`response larger than ${MAX_RESPONSE_BYTES} bytes`);
        return;
      }
      const w = this.waiter;
      this.waiter = undefined;
      this.head = undefined;
      if (this.buf.length) this.reusable = false;
      this.buf = Buffer.alloc(0);
      if (this.reusable) this.socket.unref();
      else this.socket.destroy();
      w.resolve(done);
    } catch (err) {
      this.fail(err as Error);
    }
  }

  /** The complete response, once it is all in the buffer. */
  private parse(): Http1Response | undefined {
    for (;;) {
      if (!this.head) {
        const head = parseHead(this.buf);
        if (!head) return undefined;
        if (head.status === 101) throw new Http1ProtocolError('the peer switched protocols');
        if (head.status < 200) {
          // 100 Continue and other interim responses precede the real one.
          this.buf = this.buf.subarray(head.bodyAt);
          continue;
        }
        this.head = head;
        if (!head.keepAlive) this.reusable = false;
      }
      const { framing, bodyAt, status } = this.head;
      const rest = this.buf.subarray(bodyAt);
      if (framing.kind === 'length') {
        if (rest.length < framing.length) return undefined;
        this.buf = rest.subarray(framing.length);
        return { status, body: Buffer.from(rest.subarray(0, framing.length)) };
      }
      if (framing.kind === 'chunked') {
        const parsed = readChunked(rest, MAX_RESPONSE_BYTES);
        if (!parsed) return undefined;
        this.buf = rest.subarray(parsed.used);
        return { status, body: parsed.body };
      }
      if (!this.ended) return undefined;
      this.buf = Buffer.alloc(0);
      return { status, body: Buffer.from(rest) };
    }
  }

  private fail(err: Error): void {
    this.reusable = false;
    const w = this.waiter;
    this.waiter = undefined;
    this.socket.destroy();
    w?.reject(err);
  }
}
