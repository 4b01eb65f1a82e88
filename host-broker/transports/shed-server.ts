/**
 * The shed transport: the broker as one shed server's plugin listener
 * (PROTOCOL.md section 3). One subscription per namespace (subscription.ts),
 * each request's answer posted back by the responder (responder.ts), with a
 * bearer token from the server's token source (token-source.ts) over TLS
 * checked by tls.ts. The shed a request came from is shed-server's
 * `shed.name`, which shed-server sets from the VM connection: nothing the
 * guest wrote can name it.
 */
import type { EventSourceMessage } from 'eventsource-parser';
import { CommonCode } from '../../protocol/codes.js';
import { compiledOnceHot } from '../../protocol/compiled.js';
import { describeIssues, Envelope, errorPayload, isShedName } from '../../protocol/envelope.js';
import type { Logger } from '../../protocol/log.js';
import { newId, nowTimestamp, responseEnvelope } from '../../protocol/messages.js';
import { Responder } from './responder.js';
import type { ServerConnection } from './server-config.js';
import { isLoopback, ServerHttp } from './server-http.js';
import { Subscription, type ServerContext } from './subscription.js';
import { normalizePin, readClientIdentity, type ClientIdentity, type Pin } from './tls.js';
import type { Credentials } from './credentials.js';
import { createTokenSource, DEFAULT_TOKEN_TIMINGS, type TokenSource, type TokenTimings } from './token-source.js';
import type { RequestSink, Transport } from './transport.js';
import { DEFAULT_SERVER_NAME } from '../policy/schema.js';

export { certificatePin, normalizePin } from './tls.js';

export interface ShedServerTimings extends TokenTimings {
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
  ...DEFAULT_TOKEN_TIMINGS,
};

/** Respond calls on the wire at once; more wait for a connection. */
export const MAX_RESPOND_SOCKETS = 8;
/** Answers waiting to be delivered (on the wire, queued, or between retries); past that, new ones are dropped. */
export const MAX_PENDING_RESPONDS = 1024;

export interface ShedServerOptions {
  /** The server: where, how to trust it, where its token comes from. */
  server: ServerConnection;
  log: Logger;
  /** Namespaces to subscribe when `server.namespaces` is unset (the broker's handlers). */
  defaultNamespaces?: readonly string[];
  timings?: Partial<ShedServerTimings>;
  /** A token source made elsewhere (tests); by default made from `server.token`. */
  tokenSource?: TokenSource;
}

const envelopeSchema = compiledOnceHot(Envelope);

export class ShedServerTransport implements Transport {
  readonly description: string;
  /** The server's name: `default` for the top-level `server:`. */
  readonly server: string;
  readonly namespaces: readonly string[];
  private readonly connection: ServerConnection;
  private readonly base: URL;
  private readonly timings: ShedServerTimings;
  private readonly keyPrefix: string;
  private readonly where: string;
  private readonly configPin: Pin | undefined;
  private readonly tokens: TokenSource | undefined;
  private readonly subscriptions = new Map<string, Subscription>();
  private http: ServerHttp | undefined;
  private responder: Responder | undefined;
  private sink: RequestSink | undefined;
  private stopped = false;
  private warnedPlain = false;

  constructor(private readonly options: ShedServerOptions) {
    const server = options.server;
    this.connection = server;
    this.server = server.name;
    this.keyPrefix = server.name === DEFAULT_SERVER_NAME ? 'server' : `servers.${server.name}`;
    const key = this.keyPrefix;
    let base: URL;
    try {
      base = new URL(server.url);
    } catch {
      throw new Error(`${key}.url ${JSON.stringify(server.url)} is not a URL; use shed-server's address, like http://localhost:8080`);
    }
    if (base.protocol !== 'http:' && base.protocol !== 'https:') {
      throw new Error(`${key}.url ${server.url} must be http: or https:`);
    }
    if (server.tlsPin && base.protocol !== 'https:') {
      throw new Error(`${key}.tls_pin is set but ${key}.url ${server.url} is not https:; use https://… or remove the pin`);
    }
    if (Boolean(server.clientCert) !== Boolean(server.clientKey)) {
      throw new Error(`${key}.client_cert and ${key}.client_key go together: set both for mutual TLS, or neither`);
    }
    if (server.clientCert && base.protocol !== 'https:') {
      throw new Error(`${key}.client_cert is set but ${key}.url ${server.url} is not https:; mutual TLS needs https://…`);
    }
    this.configPin = server.tlsPin ? { hex: normalizePin(server.tlsPin, `${key}.tls_pin`), source: `${key}.tls_pin` } : undefined;
    this.base = base;
    this.timings = { ...DEFAULT_TIMINGS, ...options.timings };
    this.where = server.name === DEFAULT_SERVER_NAME ? base.origin : `${base.origin} (server ${server.name})`;
    this.namespaces = [...(server.namespaces ?? options.defaultNamespaces ?? [])];
    // Mutual TLS replaces the bearer token: no token is read or sent then.
    this.tokens = server.clientCert ? undefined : (options.tokenSource ?? this.makeTokenSource());
    const label = server.name === DEFAULT_SERVER_NAME ? 'shed-server' : `shed-server ${server.name}`;
    this.description = `${label} ${base.origin} (${this.namespaces.length ? this.namespaces.join(', ') : 'no namespaces'})`;
  }

  /**
   * Get a token (a token_file that cannot be read stops the start), then open
   * one subscription per namespace. Resolves once each subscription has
   * connected or failed its first attempt; a server that is down is retried
   * in the background, not an error.
   */
  async start(sink: RequestSink): Promise<void> {
    this.sink = sink;
    const { log } = this.options;
    let identity: ClientIdentity | undefined;
    if (this.connection.clientCert && this.connection.clientKey) {
      identity = readClientIdentity(this.connection.clientCert, this.connection.clientKey, this.keyPrefix);
      if (this.connection.token) log.info(`mutual TLS is configured: ${this.keyPrefix}'s token is not used`);
    }
    if (this.tokens) {
      await this.tokens.start();
      if (this.base.protocol === 'http:' && !isLoopback(this.base.hostname)) {
        log.warn(`the bearer token goes in clear text to ${this.base.host}: use https:// with ${this.keyPrefix}.tls_pin`);
      }
    }
    if (this.stopped) return;
    this.http = new ServerHttp({ base: this.base, pin: () => this.pin(), identity, maxRespondSockets: MAX_RESPOND_SOCKETS });
    const ctx: ServerContext = {
      http: this.http,
      tokens: this.tokens,
      log,
      where: this.where,
      keyPrefix: this.keyPrefix,
      explainStatus: (status, error) => this.explainStatus(status, error),
    };
    this.responder = new Responder(ctx, this.timings, MAX_PENDING_RESPONDS);
    if (this.namespaces.length === 0) {
      log.warn(`no namespace to subscribe on ${this.where}: the broker serves none (set ${this.keyPrefix}.namespaces or enable a namespace)`);
    }
    for (const namespace of this.namespaces) {
      this.subscriptions.set(namespace, new Subscription(namespace, ctx, this.timings, (event) => this.onEvent(namespace, event)));
    }
    if (this.stopped) return;
    await Promise.all([...this.subscriptions.values()].map((s) => s.start()));
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const sub of this.subscriptions.values()) sub.stop();
    this.responder?.stop();
    this.tokens?.stop();
    this.http?.destroy();
  }

  /** Per namespace: `connecting` (first attempt), `connected`, `reconnecting: <reason>` or `stopped` (for `shed-host-agent status`). */
  state(): Record<string, string> {
    const out: Record<string, string> = {};
    for (const namespace of this.namespaces) {
      out[namespace] = this.stopped ? 'stopped' : (this.subscriptions.get(namespace)?.state ?? 'connecting');
    }
    return out;
  }


  /** The pin for the next TLS connection: the config's, else the one the credentials bundle names. */
  private pin(): Pin | undefined {
    return this.configPin ?? this.tokens?.pin();
  }

  private makeTokenSource(): TokenSource | undefined {
    const spec = this.connection.token;
    if (!spec) return undefined;
    return createTokenSource(spec, {
      key: this.keyPrefix,
      log: this.options.log,
      timings: { ...DEFAULT_TIMINGS, ...this.options.timings },
      check: (credentials) => this.checkCredentials(credentials),
    });
  }

  /**
   * A bundle names the server's certificate: it pins TLS when the config
   * does not. A configured pin that disagrees means one of the two is not
   * this server: the credentials are refused (and the mint retried).
   */
  private checkCredentials(credentials: Credentials): string | undefined {
    const key = this.keyPrefix;
    if (credentials.tlsPin && this.configPin && credentials.tlsPin !== this.configPin.hex) {
      return `${key}.tls_pin (sha256:${this.configPin.hex}) disagrees with the TLS fingerprint the server's credentials name (sha256:${credentials.tlsPin}): refusing them; if the server's certificate changed on purpose, update ${key}.tls_pin (or remove it to use the server's)`;
    }
    if (credentials.tlsPin && this.base.protocol === 'http:' && !this.warnedPlain) {
      this.warnedPlain = true;
      this.options.log.warn(`the server's credentials name a TLS certificate${credentials.httpsPort ? ` (HTTPS on port ${credentials.httpsPort})` : ''}, but ${key}.url ${this.base.origin} is plain http: set ${key}.url to https://…`);
    }
    return undefined;
  }

  private onEvent(namespace: string, event: EventSourceMessage): void {
    const { log } = this.options;
    if (event.event !== undefined && event.event !== 'message') {
      log.debug(`${namespace} stream: ignoring a ${JSON.stringify(event.event.slice(0, 40))} event`);
      return;
    }
    let raw: unknown;
    try {
      raw = JSON.parse(event.data);
    } catch {
      log.warn(`${namespace} stream: dropped an event whose data is not JSON (${event.data.length} characters)`);
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
      log.debug(`${namespace} stream: ignoring a response envelope`);
      return;
    }
    const shed = envelope.shed!.name;
    this.sink?.(envelope, shed, (payload) => this.deliver(namespace, responseEnvelope(envelope, payload)));
  }

  private deliver(namespace: string, envelope: Envelope): Promise<void> {
    return this.responder ? this.responder.deliver(namespace, envelope) : Promise.resolve();
  }

  /** Answer INVALID_REQUEST when the envelope names its id and shed; otherwise there is no one to answer. */
  private rejectInvalid(namespace: string, raw: unknown, problem: string): void {
    const { log } = this.options;
    const r = (typeof raw === 'object' && raw !== null ? raw : {}) as Record<string, unknown>;
    const shed = typeof r.shed === 'object' && r.shed !== null ? (r.shed as Record<string, unknown>) : undefined;
    const shedName = typeof shed?.name === 'string' && isShedName(shed.name) ? shed.name : undefined;
    const id = typeof r.id === 'string' && r.id.length > 0 && r.id.length <= 64 ? r.id : undefined;
    if (!id || !shed || !shedName || r.type === 'response') {
      log.warn(`${namespace} stream: dropped a message that cannot be answered (${problem})`);
      return;
    }
    log.warn(`${namespace} stream: shed ${shedName} request ${id}: ${problem}`);
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

  private explainStatus(status: number, error: { code: string; message: string } | undefined): string {
    const code = error?.code;
    const label = `${status}${code ? ` ${code}` : ''}`;
    const key = this.keyPrefix;
    const tokens = this.tokens;
    switch (status) {
      case 401:
        if (!tokens) return `${label}: shed-server wants a valid token; set ${key}.token_file (or token_command, or bootstrap) as shed-server requires`;
        if (tokens.mints) return `${label}: shed-server refused the token from ${tokens.label} (expired or revoked); getting a new one`;
        return `${label}: shed-server wants a valid token; check ${tokens.label.replace(/^(\S+) (.*)$/, '$1 ($2)')} holds the token shed-server expects`;
      case 403:
        if (code === 'NAMESPACE_RESERVED') return `${label}: system: namespaces are reserved to shed; remove it from ${key}.namespaces`;
        return `${label}: shed-server does not let this client in (a token of scope \`credentials\` is needed; a \`control\` token is refused); check ${tokens ? tokens.label : `${key}'s token or client certificate`}`;
      case 400:
        return `${label}: ${error?.message ?? 'shed-server refused the request'}; check ${key}.namespaces and the shed-server version`;
      case 404:
        return `${label}: no plugin API at ${this.base.origin}; check ${key}.url points at shed-server`;
      default:
        return `${label}${error ? `: ${error.message}` : ''}`;
    }
  }
}
