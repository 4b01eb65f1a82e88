/**
 * HTTP to one shed server, shared by its subscriptions and its responder:
 * the plugin API's URLs, the connections (a pool for the streams, a small
 * bounded one for respond calls, both over TLS checked by tls.ts when the
 * URL is https), and the wording of what went wrong.
 */
import http from 'node:http';
import { ApiErrorBody } from '../../protocol/envelope.js';
import { PinMismatch, TlsAgent, type ClientIdentity, type Pin } from './tls.js';

export interface ServerHttpOptions {
  base: URL;
  /** The pin for the next TLS connection (https only). */
  pin: () => Pin | undefined;
  identity?: ClientIdentity;
  /** Respond calls on the wire at once. */
  maxRespondSockets: number;
}

export interface PlainResponse {
  status: number;
  text: string;
}

/** The answer's body is read up to this much; the rest is dropped. */
const MAX_ANSWER_TEXT = 64 * 1024;

export class ServerHttp {
  readonly base: URL;
  private readonly streams: http.Agent;
  private readonly responds: http.Agent;
  /** Respond calls on the wire (stop() cuts them). */
  private readonly inflight = new Set<http.ClientRequest>();

  constructor(options: ServerHttpOptions) {
    this.base = options.base;
    if (options.base.protocol === 'http:') {
      this.streams = new http.Agent({ keepAlive: true });
      this.responds = new http.Agent({ keepAlive: true, maxSockets: options.maxRespondSockets });
    } else {
      this.streams = new TlsAgent(options.pin, options.identity, Infinity);
      this.responds = new TlsAgent(options.pin, options.identity, options.maxRespondSockets);
    }
  }

  get origin(): string {
    return this.base.origin;
  }

  endpoint(namespace: string, leaf: 'messages' | 'respond'): URL {
    return new URL(`${this.base.pathname.replace(/\/+$/, '')}/api/plugins/listeners/${encodeURIComponent(namespace)}/${leaf}`, this.base);
  }

  /** A subscription's GET (the caller handles the response and its errors). */
  openStream(url: URL, headers: http.OutgoingHttpHeaders): http.ClientRequest {
    return this.request(url, { agent: this.streams, method: 'GET', headers });
  }

  /** POST a JSON body; resolves with the status and (bounded) text of the answer. */
  post(url: URL, body: string, headers: http.OutgoingHttpHeaders, timeoutMs: number): Promise<PlainResponse> {
    return new Promise((resolve, reject) => {
      const req = this.request(url, {
        agent: this.responds,
        method: 'POST',
        headers: { ...headers, 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
      });
      this.inflight.add(req);
      const timer = setTimeout(() => req.destroy(new Error(`no answer within ${formatMs(timeoutMs)}`)), timeoutMs);
      const done = () => {
        clearTimeout(timer);
        this.inflight.delete(req);
      };
      req.on('error', (err) => {
        done();
        reject(err instanceof PinMismatch ? err : new Error(describeNetError(err)));
      });
      req.on('response', (res) => {
        readText(res, MAX_ANSWER_TEXT).then(
          (text) => {
            done();
            resolve({ status: res.statusCode ?? 0, text });
          },
          (err: Error) => {
            done();
            reject(err);
          },
        );
      });
      req.end(body);
    });
  }

  /** Cut every connection and call. */
  destroy(): void {
    for (const req of this.inflight) req.destroy(new Error('the broker is stopping'));
    this.inflight.clear();
    this.streams.destroy();
    this.responds.destroy();
  }

  private request(url: URL, options: http.RequestOptions): http.ClientRequest {
    // The TLS agent makes its own TLS sockets: HTTP runs over them as over plain TCP.
    return http.request({
      ...options,
      protocol: 'http:',
      hostname: url.hostname.replace(/^\[(.*)\]$/, '$1'),
      port: url.port || (url.protocol === 'https:' ? 443 : 80),
      path: `${url.pathname}${url.search}`,
    });
  }
}

export function readText(res: http.IncomingMessage, limit: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    res.on('data', (c: Buffer) => {
      size += c.length;
      if (size <= limit) chunks.push(c);
    });
    res.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    res.on('error', reject);
  });
}

/** The `{"error":{"code","message"}}` body of a plugin API answer, cut to log size; undefined when it has none. */
export function apiError(text: string): { code: string; message: string } | undefined {
  try {
    const parsed = ApiErrorBody.safeParse(JSON.parse(text));
    return parsed.success ? { code: parsed.data.error.code.slice(0, 64), message: parsed.data.error.message.slice(0, 200) } : undefined;
  } catch {
    return undefined;
  }
}

export function describeNetError(err: NodeJS.ErrnoException, urlKey = 'server.url', pinKey = 'server.tls_pin'): string {
  switch (err.code) {
    case 'ECONNREFUSED':
      return `connection refused (is shed-server running? check ${urlKey})`;
    case 'ENOTFOUND':
      return `unknown host (check ${urlKey})`;
    case 'ECONNRESET':
      return 'the connection was reset';
    case 'DEPTH_ZERO_SELF_SIGNED_CERT':
    case 'SELF_SIGNED_CERT_IN_CHAIN':
    case 'UNABLE_TO_VERIFY_LEAF_SIGNATURE':
      return `the server certificate is not trusted (${err.code}); pin it with ${pinKey}: sha256:<hex>`;
    default:
      return err.code ? `${err.message} (${err.code})` : err.message;
  }
}

export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '[::1]' || host === '::1' || /^127\./.test(host);
}

/** ±20 %, so many brokers restarted together do not reconnect in lockstep. */
export function jitter(ms: number): number {
  return Math.round(ms * (0.8 + Math.random() * 0.4));
}

export function formatMs(ms: number): string {
  return ms >= 1000 ? `${(ms / 1000).toFixed(ms % 1000 === 0 ? 0 : 1)} s` : `${ms} ms`;
}

/** Wait `ms`, or less when `signal` aborts; never rejects. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
  });
}
