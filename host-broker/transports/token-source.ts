/**
 * Where a shed server's bearer token comes from (`TokenSourceSpec`). One
 * source serves every subscription and answer of its server, so a refresh
 * is done once for all of them.
 *
 * - `file`: read at start (an unreadable file stops the start), read again
 *   when it changes and on a 401; a refused token is not sent again until
 *   the file holds another.
 * - `command` and `bootstrap`: a program prints a bare token or the
 *   credentials bundle (mint.ts). A bundle's token is refreshed at a
 *   jittered half of its remaining life; any token once on a 401. One
 *   refresh runs at a time. A failing one is logged with its reason and
 *   tried again with backoff; the token in hand is used until it expires.
 *
 * Token text never reaches a log line or an error: messages name the source.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from '../../protocol/log.js';
import { checkToken, parseCredentials, type Credentials } from './credentials.js';
import { bootstrapArgv, bootstrapHint, bootstrapPreflight, checkBootstrap, runBounded } from './mint.js';
import type { TokenSourceSpec } from './server-config.js';
import { formatMs, jitter } from './server-http.js';
import { readFileOrExplain, type Pin } from './tls.js';

export interface TokenSource {
  /** What the token comes from, in words for log lines: `server.token_file /path`. */
  readonly label: string;
  /** True when the broker gets new tokens itself (command, bootstrap); false for a file the user fills. */
  readonly mints: boolean;
  /** Resolves once the first attempt to get a token has an outcome (either way). */
  readonly firstOutcome: Promise<void>;
  /** Start getting tokens; rejects only for what must stop the broker from starting (an unreadable token_file). */
  start(): Promise<void>;
  stop(): void;
  /** The token to send now; undefined while there is none valid. */
  current(): string | undefined;
  /** The pin the credentials name (a bundle's `tls_cert_fingerprint`), when they name one. */
  pin(): Pin | undefined;
  /** Why there is no valid token now (never the token), for state lines and errors. */
  problem(): string | undefined;
  /** A token is being fetched right now. */
  pending(): boolean;
  /** Resolves when the fetch under way (if any) ends, either way. */
  settled(): Promise<void>;
  /** Resolves true once current() has a token; false when `signal` aborts first. */
  available(signal: AbortSignal): Promise<boolean>;
  /** The server answered 401 to `token`: it is no longer used, and a new one is fetched (once, however many callers say so). */
  refused(token: string): void;
}

export interface TokenTimings {
  /** A token program's deadline (30 s). */
  mintTimeoutMs: number;
  /** First delay after a failed mint (2 s), doubling up to mintMaxBackoffMs (5 min). */
  mintBackoffMs: number;
  mintMaxBackoffMs: number;
  /** The earliest a bundle's token is refreshed after it was got (10 s), unless it expires sooner. */
  minRefreshMs: number;
}

export const DEFAULT_TOKEN_TIMINGS: TokenTimings = {
  mintTimeoutMs: 30_000,
  mintBackoffMs: 2000,
  mintMaxBackoffMs: 300_000,
  minRefreshMs: 10_000,
};

/** The longest wait before a proactive refresh. */
const MAX_REFRESH_DELAY_MS = 12 * 3600_000;

export interface TokenSourceOptions {
  /** Where the server's settings are written: `server` or `servers.<name>`. */
  key: string;
  log: Logger;
  timings?: Partial<TokenTimings>;
  /** Refuses credentials that do not fit the server (a bundle's pin against the configured one): the reason, or undefined. */
  check?: (credentials: Credentials) => string | undefined;
}

/** The source a spec names. Throws when the spec itself is unusable (a host name that is not one). */
export function createTokenSource(spec: TokenSourceSpec, options: TokenSourceOptions): TokenSource {
  const { key } = options;
  switch (spec.kind) {
    case 'file':
      return new FileTokenSource(spec.path, `${key}.token_file`, options.log);
    case 'command': {
      if (spec.argv.length === 0 || !spec.argv[0]) throw new Error(`${key}.token_command is empty: give the program and its arguments, like [shed, credentials, print]`);
      const label = `${key}.token_command (${path.basename(spec.argv[0])})`;
      return new MintingTokenSource({
        ...options,
        label,
        obtain: (signal, timeoutMs, redact) => runBounded(spec.argv, { timeoutMs, what: label, signal, redact }),
      });
    }
    case 'bootstrap': {
      const k = `${key}.bootstrap`;
      checkBootstrap(spec, k);
      const argv = bootstrapArgv(spec);
      const label = `${k} (ssh ${spec.user}@${spec.host} port ${spec.port})`;
      return new MintingTokenSource({
        ...options,
        label,
        obtain: (signal, timeoutMs, redact) => {
          bootstrapPreflight(spec, k);
          return runBounded(argv, { timeoutMs, what: 'ssh', signal, redact });
        },
        hint: (reason) => bootstrapHint(reason, spec, k),
      });
    }
  }
}

/** What the three kinds share: the token in hand, its validity, and who waits for one. */
abstract class BaseTokenSource implements TokenSource {
  abstract readonly label: string;
  abstract readonly mints: boolean;
  abstract readonly firstOutcome: Promise<void>;
  protected credentials: Credentials | undefined;
  /** The token in hand got a 401: it is not sent again. */
  protected refusedToken: string | undefined;
  /** Why the last attempt to get a token failed. */
  protected failure: string | undefined;
  protected stopped = false;
  private readonly waiters = new Set<() => void>();

  abstract start(): Promise<void>;
  abstract refused(token: string): void;

  stop(): void {
    this.stopped = true;
    this.wake();
  }

  current(): string | undefined {
    const c = this.credentials;
    if (!c || this.stopped || c.token === this.refusedToken) return undefined;
    if (c.expiresAt !== undefined && Date.now() >= c.expiresAt) return undefined;
    return c.token;
  }

  pin(): Pin | undefined {
    const hex = this.credentials?.tlsPin;
    return hex ? { hex, source: `the tls_cert_fingerprint of the credentials from ${this.label}` } : undefined;
  }

  pending(): boolean {
    return false;
  }

  settled(): Promise<void> {
    return Promise.resolve();
  }

  problem(): string | undefined {
    if (this.current()) return undefined;
    if (this.stopped) return 'stopped';
    const c = this.credentials;
    if (this.failure && (!c || c.token === this.refusedToken || (c.expiresAt !== undefined && Date.now() >= c.expiresAt))) return this.failure;
    if (c && c.token === this.refusedToken) return `shed-server refused the token from ${this.label} (401)`;
    if (c?.expiresAt !== undefined) return `the token from ${this.label} expired at ${new Date(c.expiresAt).toISOString()}`;
    return this.failure ?? `waiting for a token from ${this.label}`;
  }

  available(signal: AbortSignal): Promise<boolean> {
    if (this.current()) return Promise.resolve(true);
    if (this.stopped || signal.aborted) return Promise.resolve(false);
    return new Promise<boolean>((resolve) => {
      const check = () => {
        if (this.current()) finish(true);
        else if (this.stopped || signal.aborted) finish(false);
      };
      const finish = (ok: boolean) => {
        this.waiters.delete(check);
        signal.removeEventListener('abort', check);
        resolve(ok);
      };
      this.waiters.add(check);
      signal.addEventListener('abort', check, { once: true });
    });
  }

  /** A token arrived (or the source stopped): let the waiters look. */
  protected wake(): void {
    for (const w of [...this.waiters]) w();
  }
}

/** `token_file`. */
export class FileTokenSource extends BaseTokenSource {
  readonly mints = false;
  readonly firstOutcome = Promise.resolve();
  readonly label: string;
  private watcher: fs.FSWatcher | undefined;
  private debounce: NodeJS.Timeout | undefined;

  constructor(private readonly file: string, private readonly key: string, private readonly log?: Logger) {
    super();
    this.label = `${key} ${file}`;
  }

  /** Read the file (throws when it cannot be used), then watch it. */
  async start(): Promise<void> {
    this.credentials = { token: this.read() };
    // The directory, not the file: editors and rotation tools replace the file.
    try {
      const base = path.basename(this.file);
      this.watcher = fs.watch(path.dirname(this.file), { persistent: false }, (_event, name) => {
        if (name !== null && String(name) !== base) return;
        clearTimeout(this.debounce);
        this.debounce = setTimeout(() => this.reread('changed'), 50);
      });
      this.watcher.on('error', () => {
        this.watcher?.close();
        this.watcher = undefined;
      });
    } catch (err) {
      this.log?.warn(`cannot watch ${this.label} for changes (${(err as NodeJS.ErrnoException).code}): it is read again on a 401`);
    }
  }

  override stop(): void {
    clearTimeout(this.debounce);
    this.watcher?.close();
    super.stop();
  }

  refused(token: string): void {
    if (this.stopped || token !== this.credentials?.token || token === this.refusedToken) return;
    // The file may hold a newer token already (a missed change).
    if (this.reread('refused')) return;
    this.refusedToken = token;
    this.log?.error(`shed-server refused the token in ${this.label} (401): put a valid token in the file; it is read again when it changes`);
  }

  override problem(): string | undefined {
    const c = this.credentials;
    if (c && c.token === this.refusedToken && !this.stopped) return `shed-server refused the token in ${this.label} (401); put a valid token in the file`;
    return super.problem();
  }

  private read(): string {
    return checkToken(readFileOrExplain(this.file, this.key).toString('utf8'), this.label);
  }

  /** Read the file again; true when it holds a new token (now in use). */
  private reread(why: 'changed' | 'refused'): boolean {
    if (this.stopped) return false;
    let token: string;
    try {
      token = this.read();
    } catch (err) {
      const message = `${(err as Error).message}${this.current() ? '; still using the token read before' : ''}`;
      if (message !== this.failure) this.log?.warn(message);
      this.failure = message;
      return false;
    }
    this.failure = undefined;
    if (token === this.credentials?.token) return false;
    this.credentials = { token };
    this.refusedToken = undefined;
    this.log?.info(`${this.label} ${why === 'changed' ? 'changed' : 'holds a new token'}: using the token it holds now`);
    this.wake();
    return true;
  }
}

interface MintingOptions extends TokenSourceOptions {
  label: string;
  /** Run the program: resolves with its stdout. */
  obtain: (signal: AbortSignal, timeoutMs: number, redact: string[]) => Promise<{ stdout: string }>;
  /** Adds what to do to a failure's reason. */
  hint?: (reason: string) => string;
}

/** `token_command` and `bootstrap`: a program prints the token. */
export class MintingTokenSource extends BaseTokenSource {
  readonly mints = true;
  readonly label: string;
  readonly firstOutcome: Promise<void>;
  private settleFirst: (() => void) | undefined;
  private readonly timings: TokenTimings;
  private readonly abort = new AbortController();
  private inflight: Promise<void> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private failures = 0;
  /** 401s in a row to tokens that had barely been got: the next refresh waits. */
  private refusedStreak = 0;
  private gotAt = 0;
  private lastLogged: string | undefined;

  constructor(private readonly options: MintingOptions) {
    super();
    this.label = options.label;
    this.timings = { ...DEFAULT_TOKEN_TIMINGS, ...options.timings };
    this.firstOutcome = new Promise((resolve) => (this.settleFirst = resolve));
  }

  /** Start the first mint in the background: a failing one is retried, not an error. */
  async start(): Promise<void> {
    void this.refresh();
  }

  override stop(): void {
    clearTimeout(this.timer);
    this.abort.abort();
    this.settleFirst?.();
    super.stop();
  }

  override pending(): boolean {
    return this.inflight !== undefined;
  }

  override settled(): Promise<void> {
    return this.inflight ?? Promise.resolve();
  }

  refused(token: string): void {
    if (this.stopped || token !== this.credentials?.token || token === this.refusedToken) return;
    this.refusedToken = token;
    // Tokens refused one after the other soon after they were got: the next one would likely be too, so wait.
    this.refusedStreak = Date.now() - this.gotAt < 30_000 ? this.refusedStreak + 1 : 1;
    const wait = this.refusedStreak <= 1 ? 0 : this.backoff(this.refusedStreak - 1);
    this.options.log.info(`shed-server refused the token from ${this.label} (401: expired or revoked); getting a new one${wait ? ` in ${formatMs(wait)}` : ''}`);
    if (this.inflight) return;
    clearTimeout(this.timer);
    if (wait) this.timer = setTimeout(() => void this.refresh(), wait);
    else void this.refresh();
  }

  /** Get a new token now, or join the attempt under way. */
  refresh(): Promise<void> {
    if (this.stopped) return Promise.resolve();
    if (!this.inflight) {
      clearTimeout(this.timer);
      this.inflight = this.mint().finally(() => {
        this.inflight = undefined;
        this.settleFirst?.();
        this.settleFirst = undefined;
      });
    }
    return this.inflight;
  }

  private async mint(): Promise<void> {
    const { log } = this.options;
    let credentials: Credentials;
    try {
      const redact = [this.credentials?.token ?? ''].filter(Boolean);
      const { stdout } = await this.options.obtain(this.abort.signal, this.timings.mintTimeoutMs, redact);
      credentials = parseCredentials(stdout, this.label, 'it must print the token or the credentials bundle');
      const refusal = this.options.check?.(credentials);
      if (refusal) throw new Error(refusal);
    } catch (err) {
      if (this.stopped) return;
      this.failures += 1;
      const reason = this.options.hint ? this.options.hint((err as Error).message) : (err as Error).message;
      const wait = this.backoff(this.failures);
      this.failure = `cannot get a token from ${this.label}: ${reason}`;
      const holding = this.current() ? '; the token in hand is used until it expires' : '';
      const line = `${this.failure}; trying again in ${formatMs(wait)}${holding}`;
      if (this.failure !== this.lastLogged) log.warn(line);
      else log.debug(line);
      this.lastLogged = this.failure;
      this.timer = setTimeout(() => void this.refresh(), wait);
      this.wake();
      return;
    }
    if (this.stopped) return;
    const recovered = this.failures > 0;
    this.failures = 0;
    this.failure = undefined;
    this.lastLogged = undefined;
    this.credentials = credentials;
    this.refusedToken = undefined;
    this.gotAt = Date.now();
    const until = credentials.expiresAt !== undefined ? `, valid until ${new Date(credentials.expiresAt).toISOString()}` : '';
    log.info(`got a token from ${this.label}${until}${recovered ? ' (working again)' : ''}`);
    if (credentials.expiresAt !== undefined) {
      const remaining = credentials.expiresAt - Date.now();
      // Half the remaining life, jittered; not sooner than minRefreshMs unless the token would expire first.
      // (At most 12 h: a timer cannot wait past 24.8 days.)
      const delay = Math.min(Math.max(jitter(remaining / 2), this.timings.minRefreshMs), Math.floor(remaining * 0.9), MAX_REFRESH_DELAY_MS);
      this.timer = setTimeout(() => void this.refresh(), Math.max(0, delay));
    }
    this.wake();
  }

  private backoff(n: number): number {
    return jitter(Math.min(this.timings.mintBackoffMs * 2 ** (n - 1), this.timings.mintMaxBackoffMs));
  }
}
