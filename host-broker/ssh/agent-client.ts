/**
 * The agent-forward backend: a small client of the host's SSH agent
 * (OpenSSH ssh-agent, Secretive, 1Password, yubikey-agent) over its unix
 * socket, speaking draft-miller-ssh-agent. Idle connections are kept for
 * reuse, so a sign costs one round trip on an open socket.
 */
import net from 'node:net';
import {
  AGENT_MAX_MESSAGE, frame, parseIdentitiesAnswer, parseSignResponse, signRequest, SSH_AGENT_FAILURE, SSH_AGENT_IDENTITIES_ANSWER, SSH_AGENT_SIGN_RESPONSE,
  SSH_AGENTC_REQUEST_IDENTITIES, WireError, type WireSignature,
} from '../../protocol/ssh-wire.js';

const MAX_IDLE = 4;

export interface AgentIdentity {
  blob: Buffer;
  comment: string;
}

export type AgentErrorKind =
  /** Nothing answers at the socket (missing, refused, no permission). */
  | 'unreachable'
  /** The agent said SSH_AGENT_FAILURE. */
  | 'refused'
  /** No answer in time, or the connection dropped. */
  | 'timeout'
  /** The answer is not what the protocol says. */
  | 'protocol';

export class AgentError extends Error {
  override readonly name = 'AgentError';
  constructor(readonly kind: AgentErrorKind, message: string) {
    super(message);
  }
}

export { frame };

/** One open connection: a request at a time, the answer is one frame. */
class Connection {
  private buf: Buffer = Buffer.alloc(0);
  private waiter?: { resolve: (f: Buffer) => void; reject: (e: AgentError) => void };
  broken = false;

  constructor(readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    const fail = (why: string) => {
      this.broken = true;
      this.waiter?.reject(new AgentError('timeout', `the agent closed the connection (${why})`));
      this.waiter = undefined;
    };
    socket.on('error', (err: NodeJS.ErrnoException) => fail(err.code ?? err.message));
    socket.on('close', () => fail('closed'));
  }

  private onData(chunk: Buffer): void {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    if (this.buf.length < 4) return;
    const len = this.buf.readUInt32BE(0);
    if (len === 0 || len > AGENT_MAX_MESSAGE) {
      this.broken = true;
      this.waiter?.reject(new AgentError('protocol', `the agent sent a message of ${len} bytes`));
      this.waiter = undefined;
      this.socket.destroy();
      return;
    }
    if (this.buf.length < 4 + len) return;
    const answer = this.buf.subarray(4, 4 + len);
    this.buf = this.buf.subarray(4 + len);
    const w = this.waiter;
    this.waiter = undefined;
    if (!w || this.buf.length) this.broken = true; // unsolicited bytes: do not reuse
    w?.resolve(answer);
  }

  request(message: Buffer, timeoutMs: number, signal?: AbortSignal): Promise<Buffer> {
    return new Promise<Buffer>((resolve, reject) => {
      const done = () => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
      };
      const onAbort = () => {
        this.broken = true;
        this.waiter = undefined;
        done();
        this.socket.destroy();
        reject(new AgentError('timeout', 'the broker is stopping'));
      };
      const timer = setTimeout(() => {
        this.broken = true;
        this.waiter = undefined;
        done();
        this.socket.destroy();
        reject(new AgentError('timeout', `no answer from the agent within ${timeoutMs} ms`));
      }, timeoutMs);
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiter = {
        resolve: (f) => { done(); resolve(f); },
        reject: (e) => { done(); reject(e); },
      };
      this.socket.write(message);
    });
  }
}

export interface AgentClientOptions {
  /** For connect plus identities. */
  listTimeoutMs?: number;
  /** For a sign: an agent may wait for a touch or a confirmation. */
  signTimeoutMs?: number;
}

export class AgentClient {
  private readonly idle: Connection[] = [];
  private closed = false;
  readonly listTimeoutMs: number;
  readonly signTimeoutMs: number;

  constructor(readonly socketPath: string, options: AgentClientOptions = {}) {
    this.listTimeoutMs = options.listTimeoutMs ?? 5_000;
    this.signTimeoutMs = options.signTimeoutMs ?? 30_000;
  }

  async identities(signal?: AbortSignal): Promise<AgentIdentity[]> {
    const answer = await this.call(frame(SSH_AGENTC_REQUEST_IDENTITIES), this.listTimeoutMs, signal);
    if (answer[0] === SSH_AGENT_FAILURE) throw new AgentError('refused', 'the agent refused to list its keys');
    if (answer[0] !== SSH_AGENT_IDENTITIES_ANSWER) throw new AgentError('protocol', `the agent answered message ${answer[0]} to a key list`);
    try {
      return parseIdentitiesAnswer(answer.subarray(1));
    } catch (err) {
      if (err instanceof WireError) throw new AgentError('protocol', `malformed key list from the agent: ${err.message}`);
      throw err;
    }
  }

  async sign(blob: Buffer, data: Buffer, flags: number, signal?: AbortSignal): Promise<WireSignature> {
    const answer = await this.call(signRequest({ key: blob, data, flags }), this.signTimeoutMs, signal);
    if (answer[0] === SSH_AGENT_FAILURE) throw new AgentError('refused', 'the agent refused to sign');
    if (answer[0] !== SSH_AGENT_SIGN_RESPONSE) throw new AgentError('protocol', `the agent answered message ${answer[0]} to a sign request`);
    try {
      return parseSignResponse(answer.subarray(1));
    } catch (err) {
      if (err instanceof WireError) throw new AgentError('protocol', `malformed signature from the agent: ${err.message}`);
      throw err;
    }
  }

  /** True when the socket accepts a connection and answers a key list. */
  async answers(signal?: AbortSignal): Promise<boolean> {
    try {
      await this.identities(signal);
      return true;
    } catch {
      return false;
    }
  }

  close(): void {
    this.closed = true;
    for (const c of this.idle.splice(0)) c.socket.destroy();
  }

  private async call(message: Buffer, timeoutMs: number, signal?: AbortSignal): Promise<Buffer> {
    let conn = this.idle.pop();
    while (conn?.broken) {
      conn.socket.destroy();
      conn = this.idle.pop();
    }
    conn ??= await this.connect(timeoutMs);
    try {
      const answer = await conn.request(message, timeoutMs, signal);
      if (!conn.broken && !this.closed && this.idle.length < MAX_IDLE) this.idle.push(conn);
      else conn.socket.destroy();
      return answer;
    } catch (err) {
      conn.socket.destroy();
      throw err;
    }
  }

  private connect(timeoutMs: number): Promise<Connection> {
    return new Promise<Connection>((resolve, reject) => {
      const socket = net.createConnection(this.socketPath);
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new AgentError('unreachable', `no connection to ${this.socketPath} within ${timeoutMs} ms`));
      }, timeoutMs);
      socket.once('connect', () => {
        clearTimeout(timer);
        socket.removeAllListeners('error');
        resolve(new Connection(socket));
      });
      socket.once('error', (err: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        reject(new AgentError('unreachable', `cannot connect to ${this.socketPath} (${err.code ?? err.message})`));
      });
    });
  }
}
