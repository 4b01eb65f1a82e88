/**
 * A faithful in-process shed: shed-server's plugin API (PROTOCOL.md section 3)
 * and one shed-agent per shed (section 2), built from the protocol page and
 * nothing else. Both ends CHECK what they receive: every departure from the
 * protocol by the broker is answered as shed would and recorded in
 * `server.violations`, so a test can assert the broker spoke it exactly.
 *
 * A guest's request travels: BusClient → ShedAgentEmulator (`POST /v1/publish`,
 * gives it an id and timestamp) → the shed's channel → ShedServerEmulator
 * (adds `shed` from the channel, never from the body) → the namespace's SSE
 * listener → the broker → `POST …/respond` → back along the same channel.
 */
import http from 'node:http';
import https from 'node:https';
import type net from 'node:net';
import { isDeepStrictEqual } from 'node:util';
import { PUBLISH_API_STATUS, PublishApiCode } from '../../protocol/codes.js';
import { AGENT_WAIT_LIMIT_MS, apiErrorBody, describeIssues, Envelope, isShedName, MAX_BODY_BYTES, type Payload, type ShedInfo } from '../../protocol/envelope.js';
import { requestEnvelope, uuidv7Time } from '../../protocol/messages.js';
import type { ServerConnection } from '../../host-broker/transports/server-config.js';
import { ShedServerTransport, type ShedServerTimings } from '../../host-broker/transports/shed-server.js';
import { memoryLogger } from '../../protocol/log.js';
import { BusClient } from '../../guest-services/bus-client.js';
import { startHarness, type Harness, type HarnessOptions } from './harness.js';
import type { TokenAuthority } from './secure-shed.js';

/** Why a request from a shed got no response (shed-agent's codes). */
export class ChannelError extends Error {
  constructor(readonly code: PublishApiCode, message: string) {
    super(message);
  }
}

export interface ShedServerEmulatorOptions {
  /** Require `Authorization: Bearer <token>` on every call (401 otherwise). */
  token?: string;
  /**
   * Secure mode (PROTOCOL.md 3a): bearer tokens minted by this authority,
   * scope-checked (`credentials` for the plugin API, a `control` token gets
   * 403), 401 once expired or revoked; a stream whose token expires or is
   * revoked is cut.
   */
  authority?: TokenAuthority;
  /** Serve HTTPS with this certificate; `clientCa` makes a client certificate signed by it mandatory (mutual TLS). */
  tls?: { cert: string | Buffer; key: string | Buffer; clientCa?: string | Buffer };
  /** Re-send un-answered requests to a listener that (re)subscribes. Default: on when auth is (token or TLS), as shed-server does. */
  redeliver?: boolean;
  /** Send an SSE comment this often (shed-server may; the client must ignore them). Off by default. */
  heartbeatMs?: number;
}

interface Outstanding {
  envelope: Envelope;
  resolve: (response: Envelope) => void;
  reject: (err: ChannelError) => void;
  deliveries: number;
}

interface Channel {
  info: ShedInfo;
  outstanding: Map<string, Outstanding>;
}

interface Listener {
  namespace: string;
  res: http.ServerResponse;
  since: string;
  heartbeat?: NodeJS.Timeout;
  /** The token it subscribed with (secure mode): the stream ends when that token does. */
  token?: string;
}

/** How long shed-server keeps an un-answered request for re-delivery. */
const PENDING_KEEP_MS = 3600_000;

/** shed's namespace names: lowercase, digits, dots, dashes, underscores; `system:` is shed's own. */
const NAMESPACE_RE = /^[a-z0-9][a-z0-9._-]{0,127}$/;
const ANSWERED_MEMORY = 10_000;

export class ShedServerEmulator {
  /** Every protocol departure seen from a client, in words. Tests assert it stays empty. */
  readonly violations: string[] = [];
  /** Plugin-API calls as they arrive, newest last: `GET /api/plugins/listeners/ssh-agent/messages`. */
  readonly calls: string[] = [];
  /** Authorization headers seen on plugin-API calls (tests check mTLS sends none). */
  readonly authorizations: (string | undefined)[] = [];
  private readonly server: http.Server;
  private readonly listeners = new Map<string, Listener>();
  private readonly channels = new Map<string, Channel>();
  private readonly responses = new Map<string, number>();
  /** Request ids answered or given up by their shed-agent: a late answer to them is no violation. */
  private readonly closed = new Set<string>();
  private readonly redeliver: boolean;
  private readonly sockets = new Set<net.Socket>();
  private address = '';
  private sweeper: NodeJS.Timeout | undefined;
  /** Respond calls still to fail with 503 (failRespondsFor). */
  private failing = 0;
  /** Respond calls refused with 503 by failRespondsFor, per request id. */
  readonly failedResponds = new Map<string, number>();
  /** Requests re-sent on a (re)subscribe, in the order sent. */
  readonly redelivered: string[] = [];

  constructor(private readonly options: ShedServerEmulatorOptions = {}) {
    this.redeliver = options.redeliver ?? Boolean(options.token || options.tls || options.authority);
    if (options.authority) {
      // A stream lives as long as its token: cut the ones whose token expired or was revoked.
      this.sweeper = setInterval(() => {
        for (const l of [...this.listeners.values()]) {
          if (l.token && !options.authority!.valid(l.token)) {
            this.unregister(l);
            l.res.destroy();
          }
        }
      }, 50);
    }
    const handler = (req: http.IncomingMessage, res: http.ServerResponse) => this.onRequest(req, res);
    if (options.tls) {
      const tlsOptions: https.ServerOptions = { cert: options.tls.cert, key: options.tls.key };
      if (options.tls.clientCa) Object.assign(tlsOptions, { ca: options.tls.clientCa, requestCert: true, rejectUnauthorized: true });
      this.server = https.createServer(tlsOptions, handler);
    } else {
      this.server = http.createServer(handler);
    }
    this.server.on('connection', (s: net.Socket) => {
      this.sockets.add(s);
      s.once('close', () => this.sockets.delete(s));
    });
  }

  /** The base URL, like http://127.0.0.1:41234 (set by start()). */
  get url(): string {
    return this.address;
  }

  /** TLS handshakes the server refused (wrong or missing client certificate). */
  tlsErrors: string[] = [];

  async start(port = 0): Promise<void> {
    this.server.on('tlsClientError', (err) => this.tlsErrors.push(err.message));
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, '127.0.0.1', () => {
        this.server.off('error', reject);
        resolve();
      });
    });
    const { port: bound } = this.server.address() as net.AddressInfo;
    this.address = `${this.options.tls ? 'https' : 'http'}://127.0.0.1:${bound}`;
  }

  /** Stop listening; every stream ends and every shed's channel drops (CONNECTION_LOST to waiting guests). */
  async stop(): Promise<void> {
    clearInterval(this.sweeper);
    for (const name of [...this.channels.keys()]) this.disconnectShed(name);
    this.dropStreams();
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
      for (const s of this.sockets) s.destroy();
    });
  }

  // --- test controls ---

  /** A VM's message channel comes up: `shed` is what shed-server will stamp on its requests. */
  connectShed(name: string, backend = 'vz'): void {
    if (!isShedName(name)) throw new Error(`${name} is not a valid shed name`);
    if (!this.channels.has(name)) this.channels.set(name, { info: { name, backend, server: 'local' }, outstanding: new Map() });
  }

  /** The VM's channel drops: its waiting requests fail with CONNECTION_LOST, answers to it get 404 SHED_NOT_CONNECTED. */
  disconnectShed(name: string): void {
    const channel = this.channels.get(name);
    if (!channel) return;
    this.channels.delete(name);
    for (const [id, o] of channel.outstanding) {
      this.closed.add(id);
      o.reject(new ChannelError(PublishApiCode.CONNECTION_LOST, 'the message channel to the host dropped while waiting'));
    }
  }

  isConnected(name: string): boolean {
    return this.channels.has(name);
  }

  /** Cut every SSE stream (as a shed-server restart or a network blip would); requests stay outstanding. */
  dropStreams(): void {
    for (const l of [...this.listeners.values()]) {
      this.unregister(l);
      l.res.destroy();
    }
  }

  /** The next `n` respond calls get 503 (an answer that does not get through). */
  failRespondsFor(n: number): void {
    this.failing = n;
  }

  /** The ids of the requests shed-server holds as pending, oldest first. */
  pendingIds(): string[] {
    return [...this.channels.values()].flatMap((c) => [...c.outstanding.keys()]).sort();
  }

  /** Whether shed-server still holds a request as pending. */
  isPending(requestId: string): boolean {
    return [...this.channels.values()].some((c) => c.outstanding.has(requestId));
  }

  /** How many responses arrived for a request id. */
  responseCount(requestId: string): number {
    return this.responses.get(requestId) ?? 0;
  }

  /** How many times a still-outstanding request was sent to a listener. */
  deliveryCount(requestId: string): number {
    for (const c of this.channels.values()) {
      const o = c.outstanding.get(requestId);
      if (o) return o.deliveries;
    }
    return 0;
  }

  listenerNamespaces(): string[] {
    return [...this.listeners.keys()].sort();
  }

  /** Write a raw SSE `data:` line to a namespace's listener (malformed-input tests). */
  inject(namespace: string, data: string): boolean {
    const l = this.listeners.get(namespace);
    if (!l) return false;
    l.res.write(`event: message\ndata: ${data}\n\n`);
    return true;
  }

  // --- the VM side (called by ShedAgentEmulator) ---

  /**
   * A message from a shed's VM. shed-server stamps `shed` from the channel.
   * Resolves with the response envelope for a request, at once for an event.
   */
  fromShed(name: string, message: Envelope): Promise<Envelope | undefined> {
    const channel = this.channels.get(name);
    if (!channel) return Promise.reject(new ChannelError(PublishApiCode.NO_CONNECTION, 'this VM has no message channel to the host'));
    const envelope: Envelope = { ...message, shed: { ...channel.info } };
    if (envelope.type === 'event') {
      this.send(envelope.namespace, envelope);
      return Promise.resolve(undefined);
    }
    return new Promise<Envelope>((resolve, reject) => {
      const o: Outstanding = { envelope, resolve, reject, deliveries: 0 };
      channel.outstanding.set(envelope.id, o);
      // No listener: shed-server cannot route it; only re-delivery (auth on) ever sends it.
      if (this.send(envelope.namespace, envelope)) o.deliveries++;
    });
  }

  /** The shed-agent stopped waiting (its limit, or its client left). */
  abandon(name: string, id: string): void {
    if (this.channels.get(name)?.outstanding.delete(id)) this.remember(id);
  }

  // --- the plugin API ---

  private onRequest(req: http.IncomingMessage, res: http.ServerResponse): void {
    const url = (req.url ?? '').split('?')[0]!;
    this.calls.push(`${req.method} ${url}`);
    const auth = req.headers.authorization;
    this.authorizations.push(auth);
    const mtls = Boolean(this.options.tls?.clientCa);
    if (mtls && auth) this.violations.push(`${req.method} ${url}: an Authorization header was sent over mutual TLS`);
    if (this.options.token && !mtls && auth !== `Bearer ${this.options.token}`) {
      req.resume();
      sendError(res, 401, 'UNAUTHORIZED', auth ? 'invalid token' : 'missing bearer token');
      return;
    }
    if (this.options.authority && url.startsWith('/api/plugins/')) {
      const verdict = this.options.authority.verify(auth, 'credentials');
      if (!verdict.ok) {
        req.resume();
        sendError(res, verdict.status, verdict.code, verdict.message);
        return;
      }
    }
    if (req.method === 'GET' && url === '/api/plugins/listeners') {
      req.resume();
      sendJson(res, 200, { listeners: [...this.listeners.values()].map((l) => ({ namespace: l.namespace, connected_at: l.since })) });
      return;
    }
    if (req.method === 'GET' && url === '/api/plugins/sheds') {
      req.resume();
      sendJson(res, 200, { sheds: [...this.channels.values()].map((c) => c.info) });
      return;
    }
    const m = /^\/api\/plugins\/listeners\/([^/]+)\/(messages|respond)$/.exec(url);
    if (!m) {
      req.resume();
      sendError(res, 404, 'NOT_FOUND', `no such endpoint ${url}`);
      return;
    }
    let namespace: string;
    try {
      namespace = decodeURIComponent(m[1]!);
    } catch {
      namespace = '';
    }
    if (namespace.startsWith('system:')) {
      req.resume();
      sendError(res, 403, 'NAMESPACE_RESERVED', 'system: namespaces are reserved');
      return;
    }
    if (!NAMESPACE_RE.test(namespace)) {
      req.resume();
      sendError(res, 400, 'INVALID_NAMESPACE', `invalid namespace ${JSON.stringify(namespace.slice(0, 64))}`);
      return;
    }
    if (m[2] === 'messages' && req.method === 'GET') {
      req.resume();
      this.subscribe(namespace, req, res);
    } else if (m[2] === 'respond' && req.method === 'POST') {
      this.onRespond(namespace, req, res);
    } else {
      req.resume();
      sendError(res, 405, 'METHOD_NOT_ALLOWED', `${req.method} is not allowed on ${url}`);
    }
  }

  private subscribe(namespace: string, req: http.IncomingMessage, res: http.ServerResponse): void {
    if (!String(req.headers.accept ?? '').includes('text/event-stream')) {
      this.violations.push(`subscribe to ${namespace} without Accept: text/event-stream`);
    }
    if (this.listeners.has(namespace)) {
      sendError(res, 409, 'NAMESPACE_ALREADY_REGISTERED', `namespace ${namespace} already has a listener`);
      return;
    }
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
    res.flushHeaders();
    const bearer = /^Bearer (.+)$/.exec(String(req.headers.authorization ?? ''))?.[1];
    const listener: Listener = { namespace, res, since: new Date().toISOString(), token: this.options.authority ? bearer : undefined };
    this.listeners.set(namespace, listener);
    if (this.options.heartbeatMs) {
      listener.heartbeat = setInterval(() => res.write(': keepalive\n\n'), this.options.heartbeatMs);
    }
    res.on('close', () => this.unregister(listener));
    if (this.redeliver) {
      // Oldest first (ids are UUIDv7, so time-ordered); swept after about an hour.
      const pending: Outstanding[] = [];
      for (const channel of this.channels.values()) {
        for (const [id, o] of channel.outstanding) {
          if (Date.now() - (uuidv7Time(id) ?? 0) > PENDING_KEEP_MS) {
            channel.outstanding.delete(id);
            this.remember(id);
          } else if (o.envelope.namespace === namespace) {
            pending.push(o);
          }
        }
      }
      pending.sort((a, b) => (a.envelope.id < b.envelope.id ? -1 : a.envelope.id > b.envelope.id ? 1 : 0));
      for (const o of pending) {
        if (this.send(namespace, o.envelope)) {
          o.deliveries++;
          this.redelivered.push(o.envelope.id);
        }
      }
    }
  }

  private unregister(l: Listener): void {
    clearInterval(l.heartbeat);
    if (this.listeners.get(l.namespace) === l) this.listeners.delete(l.namespace);
  }

  private send(namespace: string, envelope: Envelope): boolean {
    const l = this.listeners.get(namespace);
    if (!l) return false;
    l.res.write(`event: message\ndata: ${JSON.stringify(envelope)}\n\n`);
    return true;
  }

  private onRespond(namespace: string, req: http.IncomingMessage, res: http.ServerResponse): void {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size <= 2 * MAX_BODY_BYTES) chunks.push(c);
    });
    req.on('end', () => {
      if (size > 2 * MAX_BODY_BYTES) {
        this.violations.push(`respond on ${namespace}: a ${size}-byte body`);
        sendError(res, 413, 'BODY_TOO_LARGE', 'the response envelope is too large');
        return;
      }
      if (!String(req.headers['content-type'] ?? '').startsWith('application/json')) {
        this.violations.push(`respond on ${namespace} without Content-Type: application/json`);
      }
      let raw: unknown;
      try {
        raw = JSON.parse(Buffer.concat(chunks).toString('utf8'));
      } catch {
        this.violations.push(`respond on ${namespace}: the body is not JSON`);
        sendError(res, 400, 'INVALID_BODY', 'the body is not JSON');
        return;
      }
      const shedName = (raw as { shed?: { name?: unknown } } | null)?.shed?.name;
      if (typeof shedName !== 'string' || shedName === '') {
        this.violations.push(`respond on ${namespace}: no shed.name`);
        sendError(res, 400, 'MISSING_SHED', 'the response has no shed.name');
        return;
      }
      const parsed = Envelope.safeParse(raw);
      if (!parsed.success) {
        this.violations.push(`respond on ${namespace}: not an envelope (${describeIssues(parsed.error)})`);
        sendError(res, 400, 'INVALID_BODY', `not an envelope: ${describeIssues(parsed.error)}`);
        return;
      }
      const response = parsed.data;
      if (response.type !== 'response') this.violations.push(`respond on ${namespace}: type ${response.type}, not response`);
      if (response.namespace !== namespace) this.violations.push(`respond on ${namespace}: the envelope names namespace ${response.namespace}`);
      const requestId = response.in_reply_to ?? '';
      if (!requestId) this.violations.push(`respond on ${namespace}: no in_reply_to`);
      if (this.failing > 0) {
        this.failing -= 1;
        this.failedResponds.set(requestId, (this.failedResponds.get(requestId) ?? 0) + 1);
        sendError(res, 503, 'UNAVAILABLE', 'shed-server cannot take answers right now');
        return;
      }
      this.responses.set(requestId, (this.responses.get(requestId) ?? 0) + 1);
      const channel = this.channels.get(shedName);
      if (!channel) {
        sendError(res, 404, 'SHED_NOT_CONNECTED', `shed ${shedName} is not connected`);
        return;
      }
      const o = channel.outstanding.get(requestId);
      if (!o && this.options.authority) {
        // Ownership (auth on): an answer to no pending request of that shed is refused, and that request is over.
        if (this.responseCount(requestId) > 1) this.violations.push(`respond on ${namespace}: request ${requestId} answered ${this.responseCount(requestId)} times`);
        sendError(res, 403, 'REQUEST_NOT_PENDING', `no pending request ${requestId} of shed ${shedName}`);
        return;
      }
      if (!o) {
        if (!this.closed.has(requestId)) {
          const elsewhere = [...this.channels.values()].find((c) => c.outstanding.has(requestId));
          this.violations.push(elsewhere
            ? `respond on ${namespace}: request ${requestId} came from shed ${elsewhere.info.name}, the answer names shed ${shedName}`
            : `respond on ${namespace}: in_reply_to ${requestId} matches no outstanding request`);
        } else if (this.responseCount(requestId) > 1) {
          this.violations.push(`respond on ${namespace}: request ${requestId} answered ${this.responseCount(requestId)} times`);
        }
        res.writeHead(204).end();
        return;
      }
      if (!isDeepStrictEqual(response.shed, o.envelope.shed)) {
        this.violations.push(`respond on ${namespace}: shed ${JSON.stringify(response.shed)} is not the request's ${JSON.stringify(o.envelope.shed)}`);
      }
      if (response.namespace !== o.envelope.namespace) {
        this.violations.push(`respond on ${namespace}: answers a ${o.envelope.namespace} request`);
      }
      channel.outstanding.delete(requestId);
      this.remember(requestId);
      res.writeHead(204).end();
      o.resolve(response);
    });
  }

  private remember(id: string): void {
    this.closed.add(id);
    if (this.closed.size > ANSWERED_MEMORY) this.closed.delete(this.closed.values().next().value!);
  }
}

export interface ShedAgentEmulatorOptions {
  /** shed-agent's wait limit for a request (30 s). */
  waitLimitMs?: number;
}

/**
 * shed-agent inside one VM: `POST /v1/publish` on 127.0.0.1:<random port>
 * with exactly the status codes of PROTOCOL.md section 2.
 */
export class ShedAgentEmulator {
  private readonly http: http.Server;
  private readonly pending = new Set<http.ServerResponse>();
  private readonly waitLimitMs: number;
  private stopping = false;
  private port = 0;
  /** The shed this VM is; unset for a spare agent not yet handed out. */
  shed: string | undefined;

  constructor(private readonly server: ShedServerEmulator, shed?: string, options: ShedAgentEmulatorOptions = {}) {
    this.shed = shed;
    this.waitLimitMs = options.waitLimitMs ?? AGENT_WAIT_LIMIT_MS;
    this.http = http.createServer((req, res) => this.onRequest(req, res));
    this.http.keepAliveTimeout = 60_000;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}/v1/publish`;
  }

  async start(): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.http.once('error', reject);
      this.http.listen(0, '127.0.0.1', () => {
        this.http.off('error', reject);
        resolve();
      });
    });
    this.port = (this.http.address() as net.AddressInfo).port;
  }

  /** Stop: waiting requests get 503 SHUTTING_DOWN. */
  async stop(): Promise<void> {
    this.stopping = true;
    for (const res of this.pending) sendApiError(res, PublishApiCode.SHUTTING_DOWN, 'shed-agent is stopping');
    this.pending.clear();
    await new Promise<void>((resolve) => {
      this.http.close(() => resolve());
      this.http.closeAllConnections();
    });
  }

  private onRequest(req: http.IncomingMessage, res: http.ServerResponse): void {
    const url = (req.url ?? '').split('?')[0];
    if (url !== '/v1/publish') {
      req.resume();
      sendJson(res, 404, apiErrorBody('NOT_FOUND', `no such endpoint ${url}`));
      return;
    }
    if (req.method !== 'POST') {
      req.resume();
      res.setHeader('allow', 'POST');
      sendJson(res, 405, apiErrorBody('METHOD_NOT_ALLOWED', '/v1/publish takes POST'));
      return;
    }
    if (Number(req.headers['content-length'] ?? 0) > MAX_BODY_BYTES) {
      tooLarge(req, res);
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY_BYTES) {
        tooLarge(req, res);
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => {
      if (size <= MAX_BODY_BYTES) this.onBody(Buffer.concat(chunks).toString('utf8'), res);
    });
  }

  private onBody(text: string, res: http.ServerResponse): void {
    if (this.stopping) {
      sendApiError(res, PublishApiCode.SHUTTING_DOWN, 'shed-agent is stopping');
      return;
    }
    let body: unknown;
    try {
      body = JSON.parse(text);
    } catch {
      sendApiError(res, PublishApiCode.INVALID_BODY, 'invalid JSON body');
      return;
    }
    if (typeof body !== 'object' || body === null || Array.isArray(body)) {
      sendApiError(res, PublishApiCode.INVALID_BODY, 'the body must be a JSON object');
      return;
    }
    // Whatever else the body holds (a `shed`, an `id`) is ignored: shed-agent builds the envelope.
    const { namespace, type = 'request', payload = {} } = body as Record<string, unknown>;
    if (typeof namespace !== 'string' || namespace === '') {
      sendApiError(res, PublishApiCode.MISSING_NAMESPACE, 'namespace is required');
      return;
    }
    if (type !== 'request' && type !== 'event') {
      sendApiError(res, PublishApiCode.INVALID_TYPE, 'type must be request or event');
      return;
    }
    if (typeof payload !== 'object' || payload === null || Array.isArray(payload)) {
      sendApiError(res, PublishApiCode.INVALID_BODY, 'payload must be a JSON object');
      return;
    }
    const shed = this.shed;
    if (!shed || !this.server.isConnected(shed)) {
      sendApiError(res, PublishApiCode.NO_CONNECTION, 'no connection to the host');
      return;
    }
    const envelope = requestEnvelope(namespace, payload as Payload, undefined, type);
    if (type === 'event') {
      this.server.fromShed(shed, envelope).then(
        () => res.writeHead(202).end(),
        (err: ChannelError) => sendApiError(res, err.code, err.message),
      );
      return;
    }
    this.pending.add(res);
    const finish = () => {
      clearTimeout(timer);
      const waiting = this.pending.delete(res);
      if (waiting) this.server.abandon(shed, envelope.id);
      return waiting;
    };
    const timer = setTimeout(() => {
      if (finish()) sendApiError(res, PublishApiCode.TIMEOUT, `no response within ${this.waitLimitMs} ms`);
    }, this.waitLimitMs);
    res.on('close', () => finish());
    this.server.fromShed(shed, envelope).then(
      (response) => {
        if (this.pending.delete(res)) {
          clearTimeout(timer);
          sendJson(res, 200, response);
        }
      },
      (err: ChannelError) => {
        if (this.pending.delete(res)) {
          clearTimeout(timer);
          sendApiError(res, err.code, err.message);
        }
      },
    );
  }
}

function sendJson(res: http.ServerResponse, status: number, body: unknown): void {
  if (res.headersSent || res.destroyed) return;
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) }).end(text);
}

function sendError(res: http.ServerResponse, status: number, code: string, message: string): void {
  sendJson(res, status, apiErrorBody(code, message));
}

function sendApiError(res: http.ServerResponse, code: PublishApiCode, message: string): void {
  sendJson(res, PUBLISH_API_STATUS[code], apiErrorBody(code, message));
}

function tooLarge(req: http.IncomingMessage, res: http.ServerResponse): void {
  res.setHeader('connection', 'close');
  sendApiError(res, PublishApiCode.BODY_TOO_LARGE, `body larger than ${MAX_BODY_BYTES} bytes`);
  req.resume();
}

// --- the shed harness ---

export interface ShedHarnessOptions extends HarnessOptions {
  /** The emulated shed-server's options (token, TLS, re-delivery). */
  server?: ShedServerEmulatorOptions;
  /** A shed-server emulator already running (a secure one, secure-shed.ts): used instead of a new one, and left running. */
  emulator?: ShedServerEmulator;
  /**
   * The broker's transport built from this connection (token_command,
   * bootstrap: what the policy's `server:` cannot say yet) rather than from
   * the policy's `server:` section; its url is the emulator's unless given.
   */
  connection?: Omit<ServerConnection, 'url'> & { url?: string };
  /** Extra keys of the policy's `server:` section (token_file, tls_pin, client_cert, …); `url` is filled in. */
  serverPolicy?: Record<string, unknown>;
  /** shed-agent's wait limit (30 s). */
  agentWaitLimitMs?: number;
  /** The broker's reconnect timings; fast by default so drop/reconnect tests take milliseconds. */
  timings?: Partial<ShedServerTimings>;
  /** Runs once the emulators are up, before the broker starts (e.g. to occupy a namespace). */
  beforeBroker?: (server: ShedServerEmulator) => Promise<void> | void;
}

export interface ShedHarness extends Harness {
  server: ShedServerEmulator;
  /** The shed-agent of `shed` (created on demand, its channel connected). */
  agent(shed: string): ShedAgentEmulator;
}

export const FAST_TIMINGS: Partial<ShedServerTimings> = {
  initialBackoffMs: 50,
  maxBackoffMs: 400,
  resetAfterMs: 2000,
  respondRetryMs: [50, 100, 200],
  mintBackoffMs: 100,
  mintMaxBackoffMs: 800,
  minRefreshMs: 200,
};

const SPARE_AGENTS = 4;

/**
 * A broker on the shed transport: the emulated shed-server, one emulated
 * shed-agent per shed named in the policy (more on demand), and a broker whose
 * policy has `server: {url}` and direct sockets off.
 */
export async function startShedBroker(options: ShedHarnessOptions): Promise<ShedHarness> {
  const owned = !options.emulator;
  const server = options.emulator ?? new ShedServerEmulator(options.server);
  if (owned) await server.start();
  const agents = new Map<string, ShedAgentEmulator>();
  const spares: ShedAgentEmulator[] = [];
  const starting = new Set<Promise<void>>();
  const agentOptions = { waitLimitMs: options.agentWaitLimitMs };
  const addSpare = () => {
    const agent = new ShedAgentEmulator(server, undefined, agentOptions);
    const p = agent.start().then(() => {
      spares.push(agent);
    });
    starting.add(p);
    void p.finally(() => starting.delete(p));
    return p;
  };
  const agent = (shed: string): ShedAgentEmulator => {
    let a = agents.get(shed);
    if (!a) {
      a = spares.shift();
      if (!a) throw new Error(`no spare shed-agent ready for shed ${shed}: create fewer new sheds at once, or name it in the policy`);
      a.shed = shed;
      agents.set(shed, a);
      server.connectShed(shed);
      void addSpare();
    }
    return a;
  };
  try {
    for (const shed of Object.keys((options.policy.sheds as object | undefined) ?? {})) {
      if (shed === '*') continue;
      const a = new ShedAgentEmulator(server, shed, agentOptions);
      await a.start();
      agents.set(shed, a);
      server.connectShed(shed);
    }
    await Promise.all(Array.from({ length: SPARE_AGENTS }, addSpare));
    await options.beforeBroker?.(server);
  } catch (err) {
    await Promise.all([...agents.values(), ...spares].map((a) => a.stop()));
    if (owned) await server.stop();
    throw err;
  }
  const stopEmulators = async () => {
    await Promise.all([...starting]);
    await Promise.all([...agents.values(), ...spares].map((a) => a.stop()));
    if (owned) await server.stop();
  };
  const timings = { ...FAST_TIMINGS, ...options.timings };
  const log = (options.log as ShedHarness['log'] | undefined) ?? memoryLogger('shed-host-agent');
  const connection = options.connection;
  let harness: Harness;
  try {
    harness = await startHarness({ ...options, log }, {
      prefix: 'shed-s',
      policy: (doc) => connection
        ? { ...doc, direct: { enabled: false } }
        : {
          ...doc,
          server: { ...(doc.server as object | undefined), ...options.serverPolicy, url: server.url },
          direct: { enabled: false },
        },
      publishUrl: (shed) => agent(shed).url,
      broker: connection
        ? {
          transports: [new ShedServerTransport({
            server: { ...connection, url: connection.url ?? server.url },
            defaultNamespaces: (options.handlers ?? []).map((h) => h.namespace),
            log,
            timings,
          })],
        }
        : { shedServerTimings: timings },
      afterStop: stopEmulators,
    });
  } catch (err) {
    await stopEmulators();
    throw err;
  }
  return { ...harness, server, agent };
}

/**
 * Stand-in shed servers, each with one shed connected through its own
 * stand-in shed-agent and a guest client of that shed (tests of many servers).
 */
export class ShedServerFleet {
  private readonly emulators: ShedServerEmulator[] = [];
  private readonly agents: ShedAgentEmulator[] = [];
  private readonly clients: BusClient[] = [];

  /** A started server with `shed` connected, the shed's guest client, and the server's port. */
  async add(shed: string, deadlineMs: number): Promise<{ emulator: ShedServerEmulator; guest: BusClient; port: number }> {
    const emulator = new ShedServerEmulator();
    await emulator.start();
    this.emulators.push(emulator);
    emulator.connectShed(shed);
    const agent = new ShedAgentEmulator(emulator, shed);
    await agent.start();
    this.agents.push(agent);
    const guest = new BusClient({ publishUrl: agent.url, deadlineMs });
    this.clients.push(guest);
    return { emulator, guest, port: Number(new URL(emulator.url).port) };
  }

  /** Close the clients, then stop the agents and the servers. */
  async stop(): Promise<void> {
    this.clients.splice(0).forEach((c) => c.close());
    await Promise.all(this.agents.splice(0).map((a) => a.stop()));
    await Promise.all(this.emulators.splice(0).map((e) => e.stop()));
  }
}
