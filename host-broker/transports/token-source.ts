/**
 * Where a shed server's bearer token comes from (`TokenSourceSpec`).
 * A source is shared by every subscription and answer of its server.
 */
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
  /** Resolves true once current() has a token; false when `signal` aborts first. */
  available(signal: AbortSignal): Promise<boolean>;
  /** The server answered 401 to `token`: it is no longer used, and a new one is fetched (once, however many callers say so). */
  refused(token: string): void;
}

/** The longest token accepted, and the characters a header value may hold. */
const MAX_TOKEN_CHARS = 8192;
const TOKEN_RE = /^[\x21-\x7e]+$/;

/** A token as read from a file: one line of printable ASCII. Throws, naming `what`, never quoting the text. */
export function checkToken(text: string, what: string): string {
  const token = text.trim();
  if (!token) throw new Error(`${what} is empty; put shed-server's token in it`);
  if (/[\r\n\0]/.test(token)) throw new Error(`${what} holds more than one line; it must hold only the token`);
  if (token.length > MAX_TOKEN_CHARS) throw new Error(`${what} holds ${token.length} characters, more than a token (${MAX_TOKEN_CHARS} at most)`);
  if (!TOKEN_RE.test(token)) throw new Error(`${what} holds characters a token cannot have (spaces or non-ASCII); it must hold only the token`);
  return token;
}

/** `token_file`: read at start. */
export class FileTokenSource implements TokenSource {
  readonly mints = false;
  readonly firstOutcome = Promise.resolve();
  readonly label: string;
  private token: string | undefined;

  constructor(private readonly file: string, private readonly key = 'server.token_file') {
    this.label = `${key} ${file}`;
  }

  async start(): Promise<void> {
    this.token = checkToken(readFileOrExplain(this.file, this.key).toString('utf8'), `${this.key} ${this.file}`);
  }

  stop(): void {}

  current(): string | undefined {
    return this.token;
  }

  pin(): Pin | undefined {
    return undefined;
  }

  problem(): string | undefined {
    return this.token ? undefined : `${this.label} holds no usable token`;
  }

  pending(): boolean {
    return false;
  }

  async available(signal: AbortSignal): Promise<boolean> {
    if (this.token) return true;
    await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
    return false;
  }

  refused(): void {}
}
