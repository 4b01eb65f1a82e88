/**
 * The guest's client for shed's plugin bus: `POST /v1/publish` to shed-agent
 * (`http://127.0.0.1:498/v1/publish`) or to a broker socket
 * (`unix:/abs/path.sock`), with a deadline, and every failure mapped to a
 * BusError that says what happened and what to do.
 *
 * Imports are kept to node:net (http1.ts), node:fs (guest.env, and the
 * owner of a socket it may not open) and the envelope schemas: the
 * docker helper starts a process per registry operation and pays for every
 * module loaded.
 */
import fs from 'node:fs';
import path from 'node:path';
import { ApiErrorBody, Envelope, isErrorPayload, type Payload } from '../protocol/envelope.js';
import { compiledOnceHot } from '../protocol/compiled.js';
import { GUEST_ENV_FILE, readGuestEnv } from './guest-env.js';
import { Http1Connection, Http1ProtocolError, postRequest, type Http1Response } from './http1.js';

const envelopeSchema = compiledOnceHot(Envelope);

export const DEFAULT_PUBLISH_URL = 'http://127.0.0.1:498/v1/publish';
export const DEFAULT_DEADLINE_MS = 3000;

/**
 * Where every guest program publishes unless told otherwise:
 * `$SHED_PUBLISH_URL`, else the one `install-guest --publish-url` wrote in
 * /etc/shed-extensions/guest.env, else shed-agent.
 */
export function publishUrlFromEnv(env: NodeJS.ProcessEnv = process.env, guestEnvFile: string = GUEST_ENV_FILE): string {
  return env.SHED_PUBLISH_URL || readGuestEnv(guestEnvFile).SHED_PUBLISH_URL || DEFAULT_PUBLISH_URL;
}
export const HOST_AGENT_START_HINT = 'start it on the host with `shed-host-agent run --config ~/.config/shed/extensions.yaml`';

export type BusErrorKind =
  /** Nothing listens at the publish URL (shed-agent down, or broker socket missing). */
  | 'unreachable'
  /** The publish API answered an error status (NO_CONNECTION, TIMEOUT, ...). */
  | 'api'
  /** No answer before the client's deadline. */
  | 'deadline'
  /** The host answered with an error payload (its code and text). */
  | 'host'
  /** The answer was not what the protocol says. */
  | 'malformed';

export class BusError extends Error {
  override readonly name = 'BusError';
  constructor(
    readonly kind: BusErrorKind,
    /** The API or host error code, or a local one (UNREACHABLE, DEADLINE, MALFORMED_RESPONSE). */
    readonly code: string,
    message: string,
    /** What the user should do next. */
    readonly hint: string,
    readonly status?: number,
  ) {
    super(message);
  }

  /** `message (hint)` on one line, for logs and status files. */
  describe(): string {
    return this.hint ? `${this.message}; ${this.hint}` : this.message;
  }
}

export interface PublishTarget {
  /** The URL as given, for messages. */
  url: string;
  socketPath?: string;
  host?: string;
  port?: number;
  path: string;
}

/** Parse `http://host:port/path` or `unix:/abs/path.sock` (HTTP to /v1/publish over the socket). */
export function parsePublishUrl(url: string): PublishTarget {
  if (url.startsWith('unix:')) {
    const socketPath = url.slice('unix:'.length);
    if (!socketPath.startsWith('/')) {
      throw new Error(`publish URL ${url} must name an absolute socket path, like unix:/run/shed/my-shed.sock`);
    }
    return { url, socketPath, path: '/v1/publish' };
  }
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new Error(`publish URL ${JSON.stringify(url)} is not a URL; use http://127.0.0.1:498/v1/publish or unix:/path/to.sock`);
  }
  if (parsed.protocol !== 'http:') {
    throw new Error(`publish URL ${url} must use http: or unix: (shed-agent speaks plain HTTP on loopback)`);
  }
  return {
    url,
    host: parsed.hostname.replace(/^\[(.*)\]$/, '$1'),
    port: parsed.port ? Number(parsed.port) : 80,
    path: `${parsed.pathname}${parsed.search}` || '/v1/publish',
  };
}

export interface BusClientOptions {
  publishUrl?: string;
  /** Default deadline of each call, in milliseconds. */
  deadlineMs?: number;
}

export interface CallOptions {
  deadlineMs?: number;
}

/** Idle connections kept for reuse. */
const MAX_IDLE = 8;
/**
 * Requests one client has on the wire at once; more wait their turn within
 * their deadline. The host serves a shed 16 at a time (limits.max_concurrent)
 * and takes 64 connections from it (limits.max_connections), shared by every
 * service of the shed: a burst of one service must not take them all.
 */
export const MAX_IN_FLIGHT = 16;

export class BusClient {
  readonly target: PublishTarget;
  readonly deadlineMs: number;
  /** Keep-alive: the ssh agent signs several times per login, each on an open connection. */
  private readonly idle: Http1Connection[] = [];
  private readonly busy = new Set<Http1Connection>();
  private closed = false;
  private inFlight = 0;
  private readonly waiting: Array<() => void> = [];

  constructor(options: BusClientOptions = {}) {
    this.target = parsePublishUrl(options.publishUrl ?? DEFAULT_PUBLISH_URL);
    this.deadlineMs = options.deadlineMs ?? DEFAULT_DEADLINE_MS;
  }

  /**
   * Publish a request and wait for the host's answer. Resolves with the
   * response payload; an error payload from the host rejects with kind `host`.
   */
  async publish(namespace: string, payload: Payload, options: CallOptions = {}): Promise<Payload> {
    const envelope = await this.request(namespace, payload, options.deadlineMs ?? this.deadlineMs);
    if (isErrorPayload(envelope.payload)) {
      const { code, error } = envelope.payload;
      throw new BusError('host', code, `the host refused ${namespace} ${String(payload.operation ?? '')}: ${error} (${code})`, hostHint(code));
    }
    return envelope.payload;
  }

  /** `{"operation":"ping"}`; resolves when the namespace's host listener answers `{"status":"ok"}`. */
  async ping(namespace: string, options: CallOptions = {}): Promise<void> {
    const answer = await this.publish(namespace, { operation: 'ping' }, options);
    if (answer.status !== 'ok') {
      throw new BusError('malformed', 'MALFORMED_RESPONSE', `ping on ${namespace} answered ${JSON.stringify(answer).slice(0, 200)}`, MISMATCH_HINT);
    }
  }

  /** Release the connections; calls in flight fail. */
  close(): void {
    this.closed = true;
    for (const c of this.idle.splice(0)) c.destroy();
    for (const c of this.busy) c.destroy();
    this.busy.clear();
  }

  private request(namespace: string, payload: Payload, deadlineMs: number): Promise<Envelope> {
    const message = postRequest(this.target, this.target.path, JSON.stringify({ namespace, type: 'request', payload }));
    return new Promise<Envelope>((resolve, reject) => {
      let settled = false;
      let current: Http1Connection | undefined;
      /** A new connection on its way, abandoned at the deadline. */
      let connecting: AbortController | undefined;
      const timer = setTimeout(() => {
        settled = true;
        connecting?.abort();
        reject(new BusError(
          'deadline',
          'DEADLINE',
          `no answer on ${namespace} within ${formatMs(deadlineMs)}: shed-host-agent may not be running`,
          HOST_AGENT_START_HINT,
        ));
        current?.destroy();
      }, deadlineMs);
      const finish = (fn: () => void) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        fn();
      };
      const send = async (mayRetry: boolean): Promise<Http1Response> => {
        let conn = this.idle.pop();
        while (conn && !conn.reusable) conn = this.idle.pop();
        const reused = conn !== undefined;
        if (!conn) {
          connecting = new AbortController();
          conn = await Http1Connection.connect(this.target, connecting.signal);
        }
        if (settled || this.closed) {
          conn.destroy();
          throw Object.assign(new Error('the client was closed'), { code: 'ECONNRESET' });
        }
        current = conn;
        this.busy.add(conn);
        try {
          const response = await conn.request(message);
          if (conn.reusable && !this.closed && this.idle.length < MAX_IDLE) this.idle.push(conn);
          else conn.destroy();
          return response;
        } catch (err) {
          conn.destroy();
          // A pooled connection that the peer closed while idle (a restart,
          // its keep-alive timeout) fails before any answer: retry once on a new one.
          const code = (err as NodeJS.ErrnoException).code;
          if (mayRetry && reused && !conn.answered && (code === 'ECONNRESET' || code === 'EPIPE') && !settled) return send(false);
          throw err;
        } finally {
          this.busy.delete(conn);
        }
      };
      const go = async (): Promise<Http1Response> => {
        try {
          if (settled || this.closed) throw Object.assign(new Error('the client was closed'), { code: 'ECONNRESET' });
          return await send(true);
        } finally {
          this.give();
        }
      };
      // A free place is taken at once (no extra turn); otherwise the request waits for one.
      const sent = this.inFlight < MAX_IN_FLIGHT ? (this.inFlight += 1, go()) : new Promise<void>((r) => this.waiting.push(r)).then(go);
      sent.then(
        (res) => finish(() => {
          try {
            resolve(this.interpret(res.status, res.body.toString('utf8'), namespace));
          } catch (err) {
            reject(err);
          }
        }),
        (err: Error) => finish(() => reject(err instanceof Http1ProtocolError
          ? new BusError('malformed', 'MALFORMED_RESPONSE', `${this.target.url} answered with broken HTTP: ${err.message}`, MISMATCH_HINT)
          : this.transportError(err, namespace))),
      );
    });
  }

  /** Hand the place to the next waiting request, or free it. */
  private give(): void {
    const next = this.waiting.shift();
    if (next) next();
    else this.inFlight -= 1;
  }

  private interpret(status: number, text: string, namespace: string): Envelope {
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      throw new BusError('malformed', 'MALFORMED_RESPONSE', `${this.target.url} answered ${status} with a body that is not JSON`, MISMATCH_HINT, status);
    }
    if (status !== 200) {
      const parsed = ApiErrorBody.safeParse(json);
      if (!parsed.success) {
        throw new BusError('malformed', 'MALFORMED_RESPONSE', `${this.target.url} answered ${status} without an error body`, MISMATCH_HINT, status);
      }
      const { code, message } = parsed.data.error;
      throw new BusError('api', code, `publish on ${namespace} failed: ${message} (${status} ${code})`, apiHint(code), status);
    }
    const parsed = envelopeSchema.safeParse(json);
    if (!parsed.success || parsed.data.type !== 'response') {
      throw new BusError('malformed', 'MALFORMED_RESPONSE', `${this.target.url} answered 200 with something that is not a response envelope`, MISMATCH_HINT, status);
    }
    return parsed.data;
  }

  private transportError(err: NodeJS.ErrnoException, namespace: string): BusError {
    const t = this.target;
    const code = err.code ?? 'EIO';
    if (t.socketPath) {
      if (code === 'ENOENT' || code === 'ECONNREFUSED') {
        return new BusError('unreachable', 'UNREACHABLE', `cannot reach the broker socket ${t.socketPath} (${code})`,
          'check that shed-host-agent is running with this shed in its policy and that its socket is mounted here');
      }
      if (code === 'EACCES' || code === 'EPERM') {
        const { why, hint } = socketAccessProblem(t.socketPath);
        return new BusError('unreachable', 'UNREACHABLE', `no permission to connect to ${t.socketPath}${why ? `: ${why}` : ''}`, hint);
      }
    } else if (code === 'ECONNREFUSED') {
      if (t.url === DEFAULT_PUBLISH_URL) {
        return new BusError('unreachable', 'UNREACHABLE', `nothing listens on ${t.host}:${t.port}, shed-agent's address, and no other publish URL is configured here`,
          'in a shed VM start shed-agent (`systemctl start shed-agent`); a guest that reaches the broker through a mounted direct socket needs '
          + `SHED_PUBLISH_URL=unix:/mount/point/bus.sock (\`shed-ext install-guest --publish-url\` writes it to ${GUEST_ENV_FILE}) or --publish-url`);
      }
      return new BusError('unreachable', 'UNREACHABLE', `nothing listens on ${t.host}:${t.port} (shed-agent is not running)`,
        'start shed-agent in this VM (`systemctl start shed-agent`) or pass --publish-url');
    }
    if (code === 'ECONNRESET' || code === 'EPIPE') {
      return new BusError('unreachable', 'CONNECTION_LOST', `the connection to ${t.url} dropped during ${namespace} (${code})`,
        'retry; if it keeps happening check shed-agent or the broker logs');
    }
    return new BusError('unreachable', 'UNREACHABLE', `cannot reach ${t.url}: ${err.message}`, 'check --publish-url and that shed-agent is running');
  }
}

/**
 * Why this process may not open the broker socket: the socket is 0600 in a
 * 0700 directory, both owned by the uid shed-host-agent runs as on the host
 * (a mount keeps the uid), so only that uid (or root) gets in.
 */
export function socketAccessProblem(socketPath: string): { why: string; hint: string } {
  const uid = process.getuid?.();
  const fallback = {
    why: '',
    hint: 'the broker socket and its directory open only for the uid shed-host-agent runs as on the host: run the guest programs as that uid',
  };
  if (uid === undefined) return fallback;
  // The socket itself, or its directory when that is what we may not enter.
  for (const target of [socketPath, path.dirname(socketPath)]) {
    let st: fs.Stats;
    try {
      st = fs.statSync(target);
    } catch {
      continue;
    }
    if (st.uid === uid) continue;
    const what = target === socketPath ? 'it' : `its directory ${target}`;
    return {
      why: `${what} belongs to uid ${st.uid} (mode ${(st.mode & 0o777).toString(8).padStart(4, '0')}) and this process runs as uid ${uid}`,
      hint: `the guest user's uid must be the broker's: run the guest programs as uid ${st.uid} (a new image: \`shed-ext install-guest --uid ${st.uid}\`; `
        + `an existing user: \`usermod -u ${st.uid} <user>\`), or run shed-host-agent on the host as uid ${uid}`,
    };
  }
  return fallback;
}

const MISMATCH_HINT = 'the peer at the publish URL does not speak shed\'s bus protocol; check --publish-url and the shed-agent version';

function apiHint(code: string): string {
  switch (code) {
    case 'NO_CONNECTION':
    case 'CONNECTION_LOST':
      return 'this VM has no message channel to the host: check that shed-server is running and restart the shed if it persists';
    case 'TIMEOUT':
      return `the host did not answer; shed-host-agent may not be running: ${HOST_AGENT_START_HINT}`;
    case 'SHUTTING_DOWN':
      return 'shed-agent is stopping; retry once it is back';
    case 'SEND_FAILED':
      return 'shed-agent could not write to the host; retry, and check shed-server if it persists';
    default:
      return 'this is a bug in the client or a version mismatch with shed-agent; report it with the message above';
  }
}

function hostHint(code: string): string {
  switch (code) {
    case 'SHED_NOT_ALLOWED':
      return 'add this shed (or a "*" entry) to the host policy, then `shed-host-agent check`';
    case 'NAMESPACE_DISABLED':
      return 'the host policy disables this namespace for this shed; see `shed-host-agent policy show <shed>` on the host';
    case 'UNKNOWN_OPERATION':
      return 'the host\'s shed-host-agent is older than this guest; upgrade it';
    case 'RATE_LIMITED':
      return 'this shed exceeded its rate limit; wait a moment and retry';
    case 'APPROVAL_DENIED':
      return 'the request was not approved on the host';
    case 'INTERNAL_ERROR':
      return 'see the shed-host-agent log on the host';
    default:
      return 'see `shed-host-agent explain` on the host for the policy decision';
  }
}

function formatMs(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000} s` : `${ms} ms`;
}
