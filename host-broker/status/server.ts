/**
 * The status socket: read-only, one request shape, bounded.
 *
 * A client connects to `<state dir>/host-agent-status.sock` (0600 in a 0700
 * directory: only the broker's user can connect), writes `status\n`, and
 * gets one line of JSON (answer.ts), then the daemon closes. There is no
 * other request: the first byte that does not fit `status\n` gets the
 * connection dropped at once, and so does a client that has not sent its
 * request, or not taken its answer, within `timeoutMs` (1 s), however it
 * trickles. At most `maxClients` (8) connections are open at once; more are
 * closed as they arrive. The answer is built from memory (snapshot.ts), so a
 * client that hammers the socket costs the broker next to nothing.
 *
 * The socket also keeps two brokers off the same state directory: a live
 * status socket there refuses the second one's start; a stale one (a broker
 * that died) is removed, as direct sockets are.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { LogThrottle, type Logger } from '../../protocol/log.js';
import { listenPrivate } from '../../protocol/private-socket.js';
import { expandHome } from '../policy/effective.js';
import { DEFAULT_STATE_DIR, STATUS_REQUEST, STATUS_SOCKET_NAME } from './answer.js';

/** sun_path is 108 bytes on Linux and 104 on macOS, NUL included. */
const MAX_SOCKET_PATH_BYTES = 103;

export const DEFAULT_STATUS_TIMEOUT_MS = 1000;
export const DEFAULT_MAX_STATUS_CLIENTS = 8;

/** The state directory: `--state-dir` when given, else ~/.local/state/shed (absolute). */
export function stateDirOf(stateDir?: string): string {
  return path.resolve(expandHome(stateDir ?? DEFAULT_STATE_DIR));
}

/** The status socket of the broker that runs with this state directory. */
export function statusSocketPath(stateDir?: string): string {
  return path.join(stateDirOf(stateDir), STATUS_SOCKET_NAME);
}

export interface StatusServerOptions {
  socketPath: string;
  /** The answer, built on each request. */
  answer: () => unknown;
  log: Logger;
  /** How long a client may take to send its request and take its answer (1 s). */
  timeoutMs?: number;
  /** Connections open at once (8); more are closed as they arrive. */
  maxClients?: number;
}

export class StatusServer {
  private readonly server: net.Server;
  private readonly clients = new Set<net.Socket>();
  private readonly throttle: LogThrottle;
  private readonly timeoutMs: number;
  private readonly maxClients: number;
  private ino = 0;
  private listening = false;
  /** Requests answered since start (tests, and a sign of life). */
  answered = 0;
  /** Connections dropped: junk, too slow, or over the limit. */
  dropped = 0;

  constructor(private readonly options: StatusServerOptions) {
    this.timeoutMs = options.timeoutMs ?? DEFAULT_STATUS_TIMEOUT_MS;
    this.maxClients = options.maxClients ?? DEFAULT_MAX_STATUS_CLIENTS;
    this.throttle = new LogThrottle(options.log);
    this.server = net.createServer((socket) => this.onConnection(socket));
  }

  get socketPath(): string {
    return this.options.socketPath;
  }

  /** Listen; throws, with the fix, when another broker answers there or the path cannot be used. */
  async start(): Promise<void> {
    const socketPath = this.options.socketPath;
    if (Buffer.byteLength(socketPath) > MAX_SOCKET_PATH_BYTES) {
      throw new Error(`the status socket path ${socketPath} is longer than the ${MAX_SOCKET_PATH_BYTES} bytes unix sockets allow; give a shorter --state-dir`);
    }
    preparePrivateDir(path.dirname(socketPath), this.options.log);
    await listenPrivate(this.server, socketPath, {
      notSocket: `${socketPath} exists and is not a socket; move it away so shed-host-agent can answer \`status\` there`,
      live: `another shed-host-agent is running with state directory ${path.dirname(socketPath)} (its status socket ${socketPath} answers): stop it first (\`shed-host-agent status\` shows it), or give this one its own --state-dir`,
      onStale: (p) => this.options.log.info(`removed stale status socket ${p}`),
    });
    this.listening = true;
    this.ino = fs.statSync(socketPath).ino;
    this.server.on('error', (err) => this.options.log.error(`status socket ${socketPath}: ${err.message}`));
  }

  /** Stop answering, drop every client, and remove the socket file (ours only: a successor's is left alone). */
  async close(): Promise<void> {
    this.throttle.close();
    if (!this.listening) return;
    this.listening = false;
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const socket of this.clients) socket.destroy();
    await closed;
    try {
      if (fs.lstatSync(this.options.socketPath).ino === this.ino) fs.unlinkSync(this.options.socketPath);
    } catch {
      // Already gone.
    }
  }

  private onConnection(socket: net.Socket): void {
    socket.on('error', () => undefined);
    if (this.clients.size >= this.maxClients) {
      socket.destroy();
      this.drop('busy', `more than ${this.maxClients} clients at once on the status socket: closing new ones until they finish`);
      return;
    }
    this.clients.add(socket);
    // One deadline for the whole exchange: the request in, the answer out.
    const deadline = setTimeout(() => {
      socket.destroy();
      this.drop('slow', `a status client took more than ${this.timeoutMs} ms to ask or to read its answer: dropped`);
    }, this.timeoutMs);
    socket.once('close', () => {
      clearTimeout(deadline);
      this.clients.delete(socket);
    });
    let got = '';
    let done = false;
    const junk = () => {
      done = true;
      socket.destroy();
      this.drop('junk', 'a status client sent something other than the status request: dropped (the socket takes only `status`)');
    };
    socket.on('data', (chunk: Buffer) => {
      if (done) return;
      // Only a prefix of the one request is ever kept: at most its 7 bytes.
      got += chunk.subarray(0, STATUS_REQUEST.length - got.length + 1).toString('latin1');
      if (!(got.length <= STATUS_REQUEST.length ? STATUS_REQUEST.startsWith(got) : got.startsWith(STATUS_REQUEST))) {
        junk();
        return;
      }
      if (got.length < STATUS_REQUEST.length) return;
      done = true;
      this.respond(socket);
    });
    // Closed its side before asking.
    socket.once('end', () => {
      if (!done) {
        done = true;
        socket.destroy();
      }
    });
  }

  private respond(socket: net.Socket): void {
    let text: string;
    try {
      text = `${JSON.stringify(this.options.answer())}\n`;
    } catch (err) {
      this.options.log.error(`status: could not build the answer: ${(err as Error).message}`);
      socket.destroy();
      return;
    }
    this.answered += 1;
    // Once the answer is in the kernel's hands the connection is closed (the
    // client still reads what is queued for it); a client that does not take
    // it is dropped at the deadline. Whatever else it sends is discarded.
    socket.once('finish', () => socket.destroy());
    socket.end(text);
  }

  private drop(kind: string, message: string): void {
    this.dropped += 1;
    this.throttle.warn(kind, message);
  }
}

/** Create the state directory 0700, owned by us; tighten it if it is looser. */
function preparePrivateDir(dir: string, log: Logger): void {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const st = fs.lstatSync(dir);
  if (!st.isDirectory()) throw new Error(`${dir} is not a directory; give a --state-dir that is one`);
  if (typeof process.getuid === 'function' && st.uid !== process.getuid()) {
    throw new Error(`${dir} belongs to another user (uid ${st.uid}); give a --state-dir you own`);
  }
  if ((st.mode & 0o777) !== 0o700) {
    fs.chmodSync(dir, 0o700);
    log.info(`tightened ${dir} to mode 0700`);
  }
}
