/**
 * The shed transport: the broker as shed-server's plugin listener
 * (PROTOCOL.md section 3). One SSE subscription per namespace
 * (`GET {url}/api/plugins/listeners/{ns}/messages`); each request's answer is
 * `POST`ed to `…/{ns}/respond` with `in_reply_to` and `shed` copied. The shed
 * a request came from is shed-server's `shed.name`, which shed-server sets
 * from the VM connection: nothing the guest wrote can name it.
 *
 * node:http/https rather than fetch, so TLS pinning is exact: with `tlsPin`
 * the connection is made here, the peer certificate's DER is hashed and
 * compared before the socket is handed to HTTP, so no byte (and no token) is
 * written to a server that is not the pinned one.
 */
import crypto from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import type net from 'node:net';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import { createParser, type EventSourceMessage } from 'eventsource-parser';
import { CommonCode } from '../../protocol/codes.js';
import { compiledOnceHot } from '../../protocol/compiled.js';
import { ApiErrorBody, describeIssues, Envelope, errorPayload, isShedName, MAX_BODY_BYTES } from '../../protocol/envelope.js';
import { NotRegularFile, readRegularFile } from '../../protocol/files.js';
import { LogThrottle, type Logger } from '../../protocol/log.js';
import { newId, nowTimestamp, responseEnvelope } from '../../protocol/messages.js';
import type { RequestSink, Transport } from './transport.js';

export interface ShedServerTimings {
  /** First reconnect delay (1 s). */
  initialBackoffMs: number;
  /** Longest reconnect delay (30 s). */
  maxBackoffMs: number;
  /** A connection up this long resets the delay to the first one (60 s). */
  resetAfterMs: number;
  /** Connect + response headers of a subscription or a respond call (10 s). */
  requestTimeoutMs: number;
  /** Delays between retries of a failed respond call (0.25, 0.5, 1, 2 s). */
  respondRetryMs: number[];
  /** A stream with no byte for this long is dead (shed-server writes a keep-alive comment every ~25 s): 90 s. */
  streamIdleMs: number;
}

export const DEFAULT_TIMINGS: ShedServerTimings = {
  initialBackoffMs: 1000,
  maxBackoffMs: 30_000,
  resetAfterMs: 60_000,
  requestTimeoutMs: 10_000,
  respondRetryMs: [250, 500, 1000, 2000],
  streamIdleMs: 90_000,
};

/** Respond calls on the wire at once; more wait for a connection. */
export const MAX_RESPOND_SOCKETS = 8;
/** Answers waiting to be delivered (on the wire, queued, or between retries); past that, new ones are dropped. */
export const MAX_PENDING_RESPONDS = 1024;

export interface ShedServerOptions {
  /** shed-server's base URL, like http://localhost:8080. */
  url: string;
  namespaces: readonly string[];
  log: Logger;
  /** File holding the bearer token (read at start; surrounding whitespace ignored). */
  tokenFile?: string;
  /** `sha256:<hex of the server certificate's DER>`: https checked by fingerprint instead of CAs. */
  tlsPin?: string;
  /** Client certificate and key (PEM files) for mutual TLS; no bearer header is sent then. */
  clientCert?: string;
  clientKey?: string;
  timings?: Partial<ShedServerTimings>;
}

/** The largest SSE event accepted: a 1 MiB publish body plus the envelope around it, with room for escaping. */
const MAX_EVENT_CHARS = 2 * MAX_BODY_BYTES;
const envelopeSchema = compiledOnceHot(Envelope);

interface Subscription {
  namespace: string;
  request?: http.ClientRequest;
  timer?: NodeJS.Timeout;
  connected: boolean;
  delayMs: number;
  /** Resolves the first attempt's promise (start() waits for one outcome per namespace). */
  settleFirst?: () => void;
  /** Last failure logged, so a repeating failure is logged at warn once and then at debug. */
  lastFailure?: string;
  /** Why it is not connected now (state()); cleared when it connects. */
  reason?: string;
}

class PinMismatch extends Error {}

/** shed-server said no to an answer (4xx): that request is over. */
class RespondRefused extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

export class ShedServerTransport implements Transport {
  readonly description: string;
  private readonly base: URL;
  private readonly timings: ShedServerTimings;
  private readonly subscriptions = new Map<string, Subscription>();
  private readonly inflight = new Set<http.ClientRequest>();
  /** Wakes a respond waiting to retry (stop() wakes them all, and they give up). */
  private readonly retryWaits = new Set<() => void>();
  /** The subscriptions' connections, and the respond calls' (at most MAX_RESPOND_SOCKETS). */
  private agent: http.Agent | undefined;
  private respondAgent: http.Agent | undefined;
  private pendingResponds = 0;
  private readonly throttle: LogThrottle;
  private authorization: string | undefined;
  private sink: RequestSink | undefined;
  private stopping = false;

  constructor(private readonly options: ShedServerOptions) {
    let base: URL;
    try {
      base = new URL(options.url);
    } catch {
      throw new Error(`server.url ${JSON.stringify(options.url)} is not a URL; use shed-server's address, like http://localhost:8080`);
    }
    if (base.protocol !== 'http:' && base.protocol !== 'https:') {
      throw new Error(`server.url ${options.url} must be http: or https:`);
    }
    if (options.tlsPin && base.protocol !== 'https:') {
      throw new Error(`server.tls_pin is set but server.url ${options.url} is not https:; use https://… or remove the pin`);
    }
    if (Boolean(options.clientCert) !== Boolean(options.clientKey)) {
      throw new Error('server.client_cert and server.client_key go together: set both for mutual TLS, or neither');
    }
    if (options.clientCert && base.protocol !== 'https:') {
      throw new Error(`server.client_cert is set but server.url ${options.url} is not https:; mutual TLS needs https://…`);
    }
    this.base = base;
    this.timings = { ...DEFAULT_TIMINGS, ...options.timings };
    this.throttle = new LogThrottle(options.log);
    this.description = `shed-server ${base.origin} (${options.namespaces.length ? options.namespaces.join(', ') : 'no namespaces'})`;
  }

  /**
   * Read the credentials, then open one subscription per namespace. Resolves
   * once each subscription has connected or failed its first attempt; a
   * server that is down is retried in the background, not an error.
   */
  async start(sink: RequestSink): Promise<void> {
    this.sink = sink;
    const { log } = this.options;
    this.agent = this.createAgent();
    this.respondAgent = this.createAgent(MAX_RESPOND_SOCKETS);
    if (this.options.tokenFile && !this.options.clientCert) {
      this.authorization = `Bearer ${readToken(this.options.tokenFile)}`;
      if (this.base.protocol === 'http:' && !isLoopback(this.base.hostname)) {
        log.warn(`the bearer token goes in clear text to ${this.base.host}: use https:// with server.tls_pin`);
      }
    } else if (this.options.tokenFile) {
      log.info('mutual TLS is configured: server.token_file is not used');
    }
    if (this.options.namespaces.length === 0) {
      log.warn(`no namespace to subscribe on ${this.base.origin}: the broker serves none (set server.namespaces or enable a namespace)`);
    }
    await Promise.all(
      this.options.namespaces.map((namespace) => new Promise<void>((resolve) => {
        const sub: Subscription = { namespace, connected: false, delayMs: this.timings.initialBackoffMs, settleFirst: resolve };
        this.subscriptions.set(namespace, sub);
        this.connect(sub);
      })),
    );
  }

  async stop(): Promise<void> {
    this.stopping = true;
    for (const sub of this.subscriptions.values()) {
      clearTimeout(sub.timer);
      sub.request?.destroy();
      sub.settleFirst?.();
    }
    this.subscriptions.clear();
    for (const wake of [...this.retryWaits]) wake();
    for (const req of this.inflight) req.destroy(new Error('the broker is stopping'));
    this.inflight.clear();
    this.agent?.destroy();
    this.respondAgent?.destroy();
    this.throttle.close();
  }

  /**
   * Each namespace's subscription: `connected`, `connecting` (its first
   * attempt), `reconnecting: <why the last attempt failed>`, or `stopped`.
   * The reason may quote the server's own words: whoever shows it escapes it.
   */
  state(): Record<string, string> {
    const out: Record<string, string> = {};
    for (const namespace of this.options.namespaces) {
      const sub = this.subscriptions.get(namespace);
      if (this.stopping) out[namespace] = 'stopped';
      else if (sub?.connected) out[namespace] = 'connected';
      else out[namespace] = sub?.reason ? `reconnecting: ${sub.reason}` : 'connecting';
    }
    return out;
  }

  /** Namespaces with a live subscription (for status and tests). */
  get connectedNamespaces(): string[] {
    return [...this.subscriptions.values()].filter((s) => s.connected).map((s) => s.namespace).sort();
  }

  private endpoint(namespace: string, leaf: 'messages' | 'respond'): URL {
    return new URL(`${this.base.pathname.replace(/\/+$/, '')}/api/plugins/listeners/${encodeURIComponent(namespace)}/${leaf}`, this.base);
  }

  private headers(extra: Record<string, string | number>): http.OutgoingHttpHeaders {
    return this.authorization ? { ...extra, authorization: this.authorization } : extra;
  }

  private createAgent(maxSockets = Infinity): http.Agent {
    const { tlsPin, clientCert, clientKey } = this.options;
    const tlsOptions: tls.ConnectionOptions = {};
    if (clientCert && clientKey) {
      tlsOptions.cert = readFileOrExplain(clientCert, 'server.client_cert');
      tlsOptions.key = readFileOrExplain(clientKey, 'server.client_key');
    }
    if (this.base.protocol === 'http:') return new http.Agent({ keepAlive: true, maxSockets });
    if (!tlsPin) return new https.Agent({ keepAlive: true, maxSockets, ...tlsOptions });
    const pin = normalizePin(tlsPin);
    return new PinnedAgent(pin, tlsOptions, maxSockets);
  }

  private connect(sub: Subscription): void {
    if (this.stopping) return;
    sub.timer = undefined;
    const url = this.endpoint(sub.namespace, 'messages');
    const started = Date.now();
    let connected = false;
    let finished = false;
    const fail = (reason: string, level: 'warn' | 'error' = 'warn') => {
      if (finished) return;
      finished = true;
      sub.request = undefined;
      sub.connected = false;
      sub.reason = reason;
      clearTimeout(headerTimer);
      sub.settleFirst?.();
      sub.settleFirst = undefined;
      if (this.stopping) return;
      if (connected && Date.now() - started >= this.timings.resetAfterMs) sub.delayMs = this.timings.initialBackoffMs;
      const wait = jitter(sub.delayMs);
      const line = `${reason}; reconnecting in ${formatMs(wait)}`;
      if (reason !== sub.lastFailure || connected) this.options.log[level](line);
      else this.options.log.debug(line);
      sub.lastFailure = connected ? undefined : reason;
      sub.delayMs = Math.min(sub.delayMs * 2, this.timings.maxBackoffMs);
      sub.timer = setTimeout(() => this.connect(sub), wait);
    };

    const req = this.request(url, {
      method: 'GET',
      headers: this.headers({ accept: 'text/event-stream', 'cache-control': 'no-cache' }),
    });
    sub.request = req;
    const headerTimer = setTimeout(() => req.destroy(new Error(`no answer within ${formatMs(this.timings.requestTimeoutMs)}`)), this.timings.requestTimeoutMs);
    req.on('socket', (socket: net.Socket) => socket.setKeepAlive(true, 30_000));
    req.on('error', (err) => fail(this.describeFailure(sub.namespace, err, connected)));
    req.on('response', (res) => {
      clearTimeout(headerTimer);
      const status = res.statusCode ?? 0;
      const type = String(res.headers['content-type'] ?? '');
      if (status !== 200 || !type.startsWith('text/event-stream')) {
        readText(res, 64 * 1024).then(
          (text) => fail(...this.describeStatus(sub.namespace, status, type, text)),
          () => fail(`subscribing to ${sub.namespace} on ${this.base.origin}: answer ${status} was cut off`),
        );
        return;
      }
      connected = true;
      sub.connected = true;
      sub.reason = undefined;
      sub.lastFailure = undefined;
      sub.settleFirst?.();
      sub.settleFirst = undefined;
      this.options.log.info(`subscribed to ${sub.namespace} on ${this.base.origin}`);
      const parser = createParser({
        maxBufferSize: MAX_EVENT_CHARS,
        onEvent: (event) => this.onEvent(sub.namespace, event),
        onError: (err) => {
          if (err.type === 'max-buffer-size-exceeded') {
            res.destroy(new Error(`an event larger than ${MAX_EVENT_CHARS} characters`));
          } else {
            this.options.log.debug(`${sub.namespace} stream: ${err.message}`);
          }
        },
      });
      res.setEncoding('utf8');
      // shed-server writes a keep-alive comment every ~25 s: a stream silent far longer is dead.
      const idle = setTimeout(() => res.destroy(new Error(`silent for ${formatMs(this.timings.streamIdleMs)}`)), this.timings.streamIdleMs);
      res.on('close', () => clearTimeout(idle));
      res.on('data', (chunk: string) => {
        idle.refresh();
        parser.feed(chunk);
      });
      res.on('error', (err: NodeJS.ErrnoException) => fail(err.message === 'aborted' || err.code === 'ECONNRESET'
        ? `the ${sub.namespace} stream from ${this.base.origin} closed`
        : `the ${sub.namespace} stream from ${this.base.origin} broke: ${err.message}`));
      res.on('close', () => fail(`the ${sub.namespace} stream from ${this.base.origin} closed`));
    });
    req.end();
  }

  private onEvent(namespace: string, event: EventSourceMessage): void {
    if (event.event !== undefined && event.event !== 'message') {
      this.options.log.debug(`${namespace} stream: ignoring a ${JSON.stringify(event.event.slice(0, 40))} event`);
      return;
    }
    let raw: unknown;
    try {
      raw = JSON.parse(event.data);
    } catch {
      this.options.log.warn(`${namespace} stream: dropped an event whose data is not JSON (${event.data.length} characters)`);
      return;
    }
    const parsed = envelopeSchema.safeParse(raw);
    const problem = !parsed.success
      ? `invalid envelope: ${describeIssues(parsed.error)}`
      : parsed.data.namespace !== namespace
        ? `a ${parsed.data.namespace.slice(0, 64)} envelope arrived on the ${namespace} subscription`
        : !parsed.data.shed
          ? 'the envelope has no `shed` (shed-server sets it from the VM connection)'
          : undefined;
    if (problem) {
      this.rejectInvalid(namespace, raw, problem);
      return;
    }
    const envelope = parsed.data!;
    if (envelope.type === 'response') {
      this.options.log.debug(`${namespace} stream: ignoring a response envelope`);
      return;
    }
    const shed = envelope.shed!.name;
    this.sink?.(envelope, shed, (payload) => this.deliver(namespace, responseEnvelope(envelope, payload)));
  }

  /**
   * Send an answer, within bounds: at most MAX_PENDING_RESPONDS waiting, the
   * rest dropped (shed-server re-delivers what is not answered, or the guest
   * times out). Failures are logged here, each kind once a minute with its
   * count, so a server that refuses every answer cannot flood the log.
   */
  private async deliver(namespace: string, envelope: Envelope): Promise<void> {
    const shed = envelope.shed?.name ?? '?';
    if (this.pendingResponds >= MAX_PENDING_RESPONDS) {
      this.throttle.warn('backlog', `${MAX_PENDING_RESPONDS} answers are waiting for ${this.base.origin} to take them: dropped the answer to shed ${shed} request ${envelope.in_reply_to} (shed-server re-delivers it, or the guest times out)`);
      return;
    }
    this.pendingResponds += 1;
    try {
      await this.respond(namespace, envelope);
    } catch (err) {
      const kind = err instanceof RespondRefused ? `refused ${err.status}` : 'failed';
      this.throttle.warn(kind, (err as Error).message);
    } finally {
      this.pendingResponds -= 1;
    }
  }

  /** Answer INVALID_REQUEST when the envelope names its id and shed; otherwise there is no one to answer. */
  private rejectInvalid(namespace: string, raw: unknown, problem: string): void {
    const r = (typeof raw === 'object' && raw !== null ? raw : {}) as Record<string, unknown>;
    const shed = typeof r.shed === 'object' && r.shed !== null ? (r.shed as Record<string, unknown>) : undefined;
    const shedName = typeof shed?.name === 'string' && isShedName(shed.name) ? shed.name : undefined;
    const id = typeof r.id === 'string' && r.id.length > 0 && r.id.length <= 64 ? r.id : undefined;
    if (!id || !shed || !shedName || r.type === 'response') {
      this.options.log.warn(`${namespace} stream: dropped a message that cannot be answered (${problem})`);
      return;
    }
    this.options.log.warn(`${namespace} stream: shed ${shedName} request ${id}: ${problem}`);
    const answer: Envelope = {
      id: newId(),
      namespace,
      type: 'response',
      in_reply_to: id,
      final: true,
      timestamp: nowTimestamp(),
      payload: errorPayload(CommonCode.INVALID_REQUEST, problem),
      shed: { ...shed, name: shedName },
    };
    void this.deliver(namespace, answer);
  }

  /**
   * POST the response; 204 is success. Network errors and 5xx are retried a
   * few times within a few seconds; a refusal (4xx) is final and explained.
   */
  private async respond(namespace: string, envelope: Envelope): Promise<void> {
    const body = JSON.stringify(envelope);
    const shed = envelope.shed?.name ?? '?';
    const what = `the answer to shed ${shed} request ${envelope.in_reply_to}`;
    const delays = this.timings.respondRetryMs;
    for (let attempt = 0; ; attempt++) {
      if (this.stopping) throw new Error(`${what} was not sent: the broker is stopping`);
      let outcome: { status: number; text: string } | Error;
      try {
        outcome = await this.post(this.endpoint(namespace, 'respond'), body);
      } catch (err) {
        outcome = err as Error;
      }
      if (!(outcome instanceof Error)) {
        const { status, text } = outcome;
        if (status === 204 || status === 200) return;
        const error = apiError(text);
        // A refusal ends that request: it is not retried.
        if (status === 404 && error?.code === 'SHED_NOT_CONNECTED') {
          throw new RespondRefused(status, `shed ${shed} is no longer connected to shed-server; ${what} was dropped`);
        }
        if (status === 403) {
          throw new RespondRefused(status, `shed-server refused ${what} (403${error ? ` ${error.code}` : ''}): it holds no such pending request of that shed (answered already, or swept); the request is over`);
        }
        if (status < 500) throw new RespondRefused(status, `shed-server refused ${what}: ${this.explainStatus(status, error)}`);
      }
      const reason = outcome instanceof Error ? outcome.message : `${outcome.status} ${apiError(outcome.text)?.code ?? ''}`.trim();
      if (attempt >= delays.length || this.stopping) {
        throw new Error(`could not deliver ${what} to ${this.base.origin} after ${attempt + 1} attempts: ${reason}`);
      }
      this.options.log.debug(`${what}: ${reason}; retrying`);
      await new Promise<void>((resolve) => {
        const wake = () => {
          clearTimeout(t);
          this.retryWaits.delete(wake);
          resolve();
        };
        const t = setTimeout(wake, delays[attempt]);
        this.retryWaits.add(wake);
      });
    }
  }

  private post(url: URL, body: string): Promise<{ status: number; text: string }> {
    return new Promise((resolve, reject) => {
      const req = this.request(url, {
        agent: this.respondAgent,
        method: 'POST',
        headers: this.headers({ 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }),
      });
      this.inflight.add(req);
      const timer = setTimeout(() => req.destroy(new Error(`no answer within ${formatMs(this.timings.requestTimeoutMs)}`)), this.timings.requestTimeoutMs);
      const done = () => {
        clearTimeout(timer);
        this.inflight.delete(req);
      };
      req.on('error', (err) => {
        done();
        reject(err instanceof PinMismatch ? err : new Error(describeNetError(err)));
      });
      req.on('response', (res) => {
        readText(res, 64 * 1024).then(
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

  private request(url: URL, options: http.RequestOptions): http.ClientRequest {
    const target: http.RequestOptions = {
      agent: this.agent,
      ...options,
      hostname: url.hostname.replace(/^\[(.*)\]$/, '$1'),
      port: url.port || (url.protocol === 'https:' ? 443 : 80),
      path: `${url.pathname}${url.search}`,
    };
    if (url.protocol === 'http:') return http.request(target);
    // The pinned agent makes its own TLS sockets: HTTP runs over them as over plain TCP.
    if (target.agent instanceof PinnedAgent) return http.request({ ...target, protocol: 'http:' });
    return https.request(target);
  }

  private describeFailure(namespace: string, err: Error, connected: boolean): string {
    if (err instanceof PinMismatch) return err.message;
    const where = `${namespace} on ${this.base.origin}`;
    return connected ? `the ${namespace} stream from ${this.base.origin} broke: ${err.message}` : `cannot subscribe to ${where}: ${describeNetError(err)}`;
  }

  private describeStatus(namespace: string, status: number, type: string, text: string): [string, 'warn' | 'error'] {
    const error = apiError(text);
    const code = error?.code;
    const where = `subscribing to ${namespace} on ${this.base.origin}`;
    if (status === 409) {
      return [`${where}: another listener holds namespace ${namespace} on ${this.base.origin} (409 ${code ?? 'NAMESPACE_ALREADY_REGISTERED'}): stop the other shed-host-agent`, 'error'];
    }
    if (status === 200) {
      return [`${where}: the answer is ${type || 'untyped'}, not an event stream; check that server.url points at shed-server`, 'error'];
    }
    return [`${where}: ${this.explainStatus(status, error)}`, status >= 500 ? 'warn' : 'error'];
  }

  private explainStatus(status: number, error: { code: string; message: string } | undefined): string {
    const code = error?.code;
    const label = `${status}${code ? ` ${code}` : ''}`;
    switch (status) {
      case 401:
        return `${label}: shed-server wants a valid token; ${this.options.tokenFile ? `check server.token_file (${this.options.tokenFile}) holds the token shed-server expects` : 'set server.token_file to a file holding shed-server\'s token'}`;
      case 403:
        return code === 'NAMESPACE_RESERVED'
          ? `${label}: system: namespaces are reserved to shed; remove it from server.namespaces`
          : `${label}: shed-server does not let this client in; check server.token_file or the client certificate`;
      case 400:
        return `${label}: ${error?.message ?? 'shed-server refused the request'}; check server.namespaces and the shed-server version`;
      case 404:
        return `${label}: no plugin API at ${this.base.origin}; check server.url points at shed-server`;
      default:
        return `${label}${error ? `: ${error.message}` : ''}`;
    }
  }
}

/**
 * Keep-alive HTTP over TLS sockets whose certificate is checked against the
 * pin before HTTP sees the socket. CA verification is replaced, not added to:
 * the pin is the trust anchor (shed-server's certificate is self-signed).
 */
class PinnedAgent extends http.Agent {
  constructor(private readonly pin: string, private readonly tlsOptions: tls.ConnectionOptions, maxSockets: number) {
    super({ keepAlive: true, maxSockets });
  }

  override createConnection(options: http.ClientRequestArgs, callback?: (err: Error | null, stream: Duplex) => void): Duplex | null | undefined {
    const host = options.host ?? 'localhost';
    const socket = tls.connect({
      ...this.tlsOptions,
      host,
      port: Number(options.port ?? 443),
      servername: isIpAddress(host) ? undefined : host,
      rejectUnauthorized: false,
    });
    const onError = (err: Error) => callback?.(err, socket);
    socket.once('error', onError);
    socket.once('secureConnect', () => {
      socket.off('error', onError);
      const got = certificatePin(socket.getPeerCertificate()?.raw);
      if (got !== this.pin) {
        socket.destroy();
        callback?.(new PinMismatch(`the TLS certificate of ${host}:${options.port} does not match server.tls_pin (got sha256:${got}): not connecting; if shed-server's certificate changed on purpose, update the pin`), socket);
        return;
      }
      callback?.(null, socket);
    });
    return undefined;
  }
}

/** SHA-256 hex of a peer certificate's DER, as `server.tls_pin` names it ('none' without one). */
export function certificatePin(raw: Buffer | undefined): string {
  return raw ? crypto.createHash('sha256').update(raw).digest('hex') : 'none';
}

/** The hex digest a `server.tls_pin` names (`sha256:` prefix and colons optional). */
export function normalizePin(pin: string): string {
  const hex = pin.replace(/^sha256:/i, '').replace(/:/g, '').toLowerCase();
  if (!/^[0-9a-f]{64}$/.test(hex)) throw new Error('server.tls_pin must be sha256:<64 hex digits of the certificate DER>');
  return hex;
}

function readToken(file: string): string {
  const text = readFileOrExplain(file, 'server.token_file').toString('utf8').trim();
  if (!text) throw new Error(`server.token_file ${file} is empty; put shed-server's token in it`);
  if (/[\r\n\0]/.test(text)) throw new Error(`server.token_file ${file} holds more than one line; it must hold only the token`);
  return text;
}

function readFileOrExplain(file: string, key: string): Buffer {
  try {
    return readRegularFile(file).data;
  } catch (err) {
    if (err instanceof NotRegularFile) throw new Error(`${key} ${file} is a ${err.kind}; it must be a regular file`, { cause: err });
    throw new Error(`cannot read ${key} ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err });
  }
}

function readText(res: http.IncomingMessage, limit: number): Promise<string> {
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
function apiError(text: string): { code: string; message: string } | undefined {
  try {
    const parsed = ApiErrorBody.safeParse(JSON.parse(text));
    return parsed.success ? { code: parsed.data.error.code.slice(0, 64), message: parsed.data.error.message.slice(0, 200) } : undefined;
  } catch {
    return undefined;
  }
}

function describeNetError(err: NodeJS.ErrnoException): string {
  switch (err.code) {
    case 'ECONNREFUSED':
      return 'connection refused (is shed-server running? check server.url)';
    case 'ENOTFOUND':
      return 'unknown host (check server.url)';
    case 'ECONNRESET':
      return 'the connection was reset';
    case 'DEPTH_ZERO_SELF_SIGNED_CERT':
    case 'SELF_SIGNED_CERT_IN_CHAIN':
    case 'UNABLE_TO_VERIFY_LEAF_SIGNATURE':
      return `the server certificate is not trusted (${err.code}); pin it with server.tls_pin: sha256:<hex>`;
    default:
      return err.code ? `${err.message} (${err.code})` : err.message;
  }
}

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '[::1]' || host === '::1' || /^127\./.test(host);
}

function isIpAddress(host: string): boolean {
  return /^[\d.]+$/.test(host) || host.includes(':');
}

/** ±20 %, so many brokers restarted together do not reconnect in lockstep. */
function jitter(ms: number): number {
  return Math.round(ms * (0.8 + Math.random() * 0.4));
}

function formatMs(ms: number): string {
  return ms >= 1000 ? `${(ms / 1000).toFixed(ms % 1000 === 0 ? 0 : 1)} s` : `${ms} ms`;
}
