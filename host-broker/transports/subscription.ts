/**
 * One namespace's subscription to a shed server: `GET …/listeners/{ns}/messages`
 * as Server-Sent Events, kept up for as long as the transport runs.
 *
 * - Reconnects on any drop with exponential backoff from 1 s to 30 s
 *   (jittered), resetting after a connection that stayed up for 60 s.
 * - A stream silent far longer than shed-server's ~25 s keep-alive is dead.
 * - An event larger than a 1 MiB publish body can make is cut off.
 * - With a token source, waits (without polling) for a token before
 *   connecting, and reports a 401 to it so it can get a new one.
 *
 * Its state is one line, for `shed-host-agent status`: `connected`,
 * `reconnecting: <reason>` or `stopped`.
 */
import type http from 'node:http';
import type net from 'node:net';
import { createParser, type EventSourceMessage } from 'eventsource-parser';
import { MAX_BODY_BYTES } from '../../protocol/envelope.js';
import type { Logger } from '../../protocol/log.js';
import { apiError, describeNetError, formatMs, jitter, readText, type ServerHttp } from './server-http.js';
import { PinMismatch } from './tls.js';
import type { TokenSource } from './token-source.js';

/** The largest SSE event accepted: a 1 MiB publish body plus the envelope around it, with room for escaping. */
export const MAX_EVENT_CHARS = 2 * MAX_BODY_BYTES;

export interface SubscriptionTimings {
  initialBackoffMs: number;
  maxBackoffMs: number;
  resetAfterMs: number;
  requestTimeoutMs: number;
  streamIdleMs: number;
}

/** What the subscriptions of one server share. */
export interface ServerContext {
  http: ServerHttp;
  tokens?: TokenSource;
  log: Logger;
  /** The server in log lines: its origin, and its name when it is not `default`. */
  where: string;
  /** Where its settings are written: `server` or `servers.<name>`. */
  keyPrefix: string;
  /** Why the server refuses this client, with what to do (shared with the responder). */
  explainStatus(status: number, error: { code: string; message: string } | undefined): string;
}

export class Subscription {
  private request: http.ClientRequest | undefined;
  private timer: NodeJS.Timeout | undefined;
  private delayMs: number;
  /** Resolves start()'s promise at the first outcome. */
  private settleFirst: (() => void) | undefined;
  /** Last failure logged, so a repeating failure is logged at warn once and then at debug. */
  private lastFailure: string | undefined;
  private status = 'connecting';
  private readonly abort = new AbortController();

  constructor(
    readonly namespace: string,
    private readonly ctx: ServerContext,
    private readonly timings: SubscriptionTimings,
    private readonly onEvent: (event: EventSourceMessage) => void,
  ) {
    this.delayMs = timings.initialBackoffMs;
  }

  /** `connected`, `reconnecting: <reason>` or `stopped`. */
  get state(): string {
    return this.status;
  }

  get connected(): boolean {
    return this.status === 'connected';
  }

  /** Connect; resolves once the first attempt connected or failed (a failure is retried in the background). */
  start(): Promise<void> {
    return new Promise<void>((resolve) => {
      this.settleFirst = resolve;
      void this.connect();
    });
  }

  stop(): void {
    this.abort.abort();
    clearTimeout(this.timer);
    this.request?.destroy();
    this.request = undefined;
    this.status = 'stopped';
    this.settle();
  }

  private get stopping(): boolean {
    return this.abort.signal.aborted;
  }

  private settle(): void {
    this.settleFirst?.();
    this.settleFirst = undefined;
  }

  private async connect(): Promise<void> {
    this.timer = undefined;
    if (this.stopping) return;
    const { tokens } = this.ctx;
    let token: string | undefined;
    if (tokens) {
      await tokens.firstOutcome;
      if (this.stopping) return;
      token = tokens.current();
      if (!token) {
        // No token to send: say why, and wait for one without polling.
        this.status = `reconnecting: ${tokens.problem() ?? 'waiting for a token'}`;
        this.settle();
        if (!(await tokens.available(this.abort.signal)) || this.stopping) return;
        token = tokens.current();
        if (!token) {
          this.scheduleRetry();
          return;
        }
      }
    }
    this.open(token);
  }

  private open(token: string | undefined): void {
    const { http: server, log, where } = this.ctx;
    const namespace = this.namespace;
    const started = Date.now();
    let connected = false;
    let finished = false;
    const fail = (reason: string, level: 'warn' | 'error' = 'warn', state = reason) => {
      if (finished) return;
      finished = true;
      this.request = undefined;
      clearTimeout(headerTimer);
      if (this.stopping) return;
      this.status = `reconnecting: ${state}`;
      this.settle();
      if (connected && Date.now() - started >= this.timings.resetAfterMs) this.delayMs = this.timings.initialBackoffMs;
      const wait = jitter(this.delayMs);
      const line = `${reason}; reconnecting in ${formatMs(wait)}`;
      if (reason !== this.lastFailure || connected) log[level](line);
      else log.debug(line);
      this.lastFailure = connected ? undefined : reason;
      this.delayMs = Math.min(this.delayMs * 2, this.timings.maxBackoffMs);
      this.timer = setTimeout(() => void this.connect(), wait);
    };

    const headers: http.OutgoingHttpHeaders = { accept: 'text/event-stream', 'cache-control': 'no-cache' };
    if (token) headers.authorization = `Bearer ${token}`;
    const req = server.openStream(server.endpoint(namespace, 'messages'), headers);
    this.request = req;
    const headerTimer = setTimeout(() => req.destroy(new Error(`no answer within ${formatMs(this.timings.requestTimeoutMs)}`)), this.timings.requestTimeoutMs);
    req.on('socket', (socket: net.Socket) => socket.setKeepAlive(true, 30_000));
    req.on('error', (err: NodeJS.ErrnoException) => {
      if (err instanceof PinMismatch) {
        fail(err.message, 'error');
        return;
      }
      const stateText = connected ? `the stream broke: ${err.message}` : describeNetError(err, `${this.ctx.keyPrefix}.url`, `${this.ctx.keyPrefix}.tls_pin`);
      fail(connected
        ? `the ${namespace} stream from ${where} broke: ${err.message}`
        : `cannot subscribe to ${namespace} on ${where}: ${describeNetError(err, `${this.ctx.keyPrefix}.url`, `${this.ctx.keyPrefix}.tls_pin`)}`, 'warn', stateText);
    });
    req.on('response', (res) => {
      clearTimeout(headerTimer);
      const status = res.statusCode ?? 0;
      const type = String(res.headers['content-type'] ?? '');
      if (status !== 200 || !type.startsWith('text/event-stream')) {
        if (status === 401 && token) this.ctx.tokens?.refused(token);
        readText(res, 64 * 1024).then(
          (text) => {
            const [reason, level, short] = this.describeStatus(status, type, text);
            fail(reason, level, short);
          },
          () => fail(`subscribing to ${namespace} on ${where}: answer ${status} was cut off`),
        );
        return;
      }
      connected = true;
      this.status = 'connected';
      this.lastFailure = undefined;
      this.settle();
      log.info(`subscribed to ${namespace} on ${where}`);
      const parser = createParser({
        maxBufferSize: MAX_EVENT_CHARS,
        onEvent: (event) => this.onEvent(event),
        onError: (err) => {
          if (err.type === 'max-buffer-size-exceeded') {
            res.destroy(new Error(`an event larger than ${MAX_EVENT_CHARS} characters`));
          } else {
            log.debug(`${namespace} stream: ${err.message}`);
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
      res.on('error', (err: NodeJS.ErrnoException) => {
        const closed = err.message === 'aborted' || err.code === 'ECONNRESET';
        fail(closed ? `the ${namespace} stream from ${where} closed` : `the ${namespace} stream from ${where} broke: ${err.message}`,
          'warn', closed ? 'the stream closed' : `the stream broke: ${err.message}`);
      });
      res.on('close', () => fail(`the ${namespace} stream from ${where} closed`, 'warn', 'the stream closed'));
    });
    req.end();
  }

  /** A token came and went before it could be used: try again after the usual delay. */
  private scheduleRetry(): void {
    if (this.stopping) return;
    const wait = jitter(this.delayMs);
    this.delayMs = Math.min(this.delayMs * 2, this.timings.maxBackoffMs);
    this.timer = setTimeout(() => void this.connect(), wait);
  }

  /** [log line, level, state text] for a refused subscription. */
  private describeStatus(status: number, type: string, text: string): [string, 'warn' | 'error', string] {
    const { where } = this.ctx;
    const namespace = this.namespace;
    const error = apiError(text);
    const code = error?.code;
    const prefix = `subscribing to ${namespace} on ${where}`;
    if (status === 409) {
      const short = `another listener holds namespace ${namespace} on ${where} (409 ${code ?? 'NAMESPACE_ALREADY_REGISTERED'}): stop the other shed-host-agent`;
      return [`${prefix}: ${short}`, 'error', short];
    }
    if (status === 200) {
      const short = `the answer is ${type || 'untyped'}, not an event stream; check that ${this.ctx.keyPrefix}.url points at shed-server`;
      return [`${prefix}: ${short}`, 'error', short];
    }
    const short = this.ctx.explainStatus(status, error);
    return [`${prefix}: ${short}`, status >= 500 || (status === 401 && this.ctx.tokens?.mints) ? 'warn' : 'error', short];
  }
}
