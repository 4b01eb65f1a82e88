/**
 * shed-ext-ssh-agent: an SSH agent on a unix socket inside the shed whose
 * keys live on the host. ssh, git, scp and ssh-keygen talk to it through
 * `SSH_AUTH_SOCK`; every request becomes a bus request to the host's
 * `ssh-agent` namespace, and no private key ever reaches this side.
 *
 * The agent protocol is the small codec in protocol/ssh-wire.ts: keys and
 * signatures are opaque blobs, so every key type the host's agent holds
 * (certificates, FIDO security keys, types not yet invented) reaches the
 * client, and every signature comes back byte for byte. It answers FAILURE
 * to every message it does not serve (add, remove, lock, ...).
 * `session-bind@openssh.com` goes to the host as `bind`, and the host's
 * verdict is the answer (a host without `bind` makes it a FAILURE, which
 * ssh tolerates); `query` names the extensions served.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { compile } from 'zod/mini';
import { LogThrottle, type Logger } from '../../protocol/log.js';
import { listenPrivate } from '../../protocol/private-socket.js';
import { compiledOnceHot, compileHotSchemas } from '../../protocol/compiled.js';
import { SshListResponse, SshSignResponse } from '../../protocol/ssh-agent.js';
import {
  encodeSignature, FAILURE, FrameSplitter, identitiesAnswer, keyFingerprint, parseExtension, parseSessionBind, parseSignRequest, queryAnswer,
  signResponse as agentSignResponse, SSH_AGENTC_EXTENSION, SSH_AGENTC_REQUEST_IDENTITIES, SSH_AGENTC_SIGN_REQUEST, SUCCESS,
  type AgentMessage, type Identity,
} from '../../protocol/ssh-wire.js';
import { BusClient, BusError } from '../bus-client.js';
import { StatusFile } from '../status-file.js';

export const DEFAULT_SOCK = '/run/shed-extensions/ssh-agent.sock';
export const STATUS_FILE = 'ssh-agent.status';
const NS = 'ssh-agent';
const listResponse = compiledOnceHot(SshListResponse);
const signResponse = compiledOnceHot(SshSignResponse);

/** Frames read ahead of the one being answered before the connection stops reading. */
const MAX_QUEUED = 16;


export interface SshAgentOptions {
  sockPath: string;
  publishUrl: string;
  log: Logger;
  /** The startup ping's limit; 2 s. */
  pingDeadlineMs?: number;
  /** For list and bind; 5 s. */
  deadlineMs?: number;
  /** For sign, which may wait for an approval on the host; 30 s (shed-agent's own limit). */
  signDeadlineMs?: number;
}

export interface RunningAgent {
  sockPath: string;
  statusPath: string;
  /** Whether the startup ping was answered. */
  connected: boolean;
  close(): Promise<void>;
}

/** Start serving; resolves once the socket listens and the startup ping has been answered or given up on. */
export async function startSshAgent(options: SshAgentOptions): Promise<RunningAgent> {
  const { sockPath, log } = options;
  compileHotSchemas(compile);
  const bus = new BusClient({ publishUrl: options.publishUrl, deadlineMs: options.deadlineMs ?? 5_000 });
  const signDeadlineMs = options.signDeadlineMs ?? 30_000;
  const statusPath = path.join(path.dirname(sockPath), STATUS_FILE);
  const sockets = new Set<net.Socket>();
  const status = new StatusFile(statusPath, log);

  /** Publish, keeping the status file in step with whether the host answers. */
  const call = async (payload: Record<string, unknown>, deadlineMs?: number): Promise<Record<string, unknown>> => {
    try {
      const answer = await bus.publish(NS, payload, { deadlineMs });
      status.set({ connected: true });
      return answer;
    } catch (err) {
      if (err instanceof BusError) status.set(err.kind === 'host' ? { connected: true } : { connected: false, why: err.describe() });
      throw err;
    }
  };

  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    serveConnection(socket, call, signDeadlineMs, log);
  });
  fs.mkdirSync(path.dirname(sockPath), { recursive: true, mode: 0o700 });
  await listenPrivate(server, sockPath, {
    notSocket: `${sockPath} exists and is not a socket; remove it or choose another --sock`,
    live: `another agent is already serving ${sockPath}; stop it or choose another --sock`,
  });
  log.info(`serving SSH agent on ${sockPath} (host via ${options.publishUrl})`);

  let connected = false;
  try {
    await bus.ping(NS, { deadlineMs: options.pingDeadlineMs ?? 2_000 });
    connected = true;
    status.set({ connected: true });
  } catch (err) {
    const why = err instanceof BusError ? err.describe() : (err as Error).message;
    status.set({ connected: false, why });
    log.warn(`the host's ssh-agent namespace does not answer (${why}); ssh will see an empty agent until shed-host-agent runs on the host with this shed in its policy`);
  }

  let closing: Promise<void> | undefined;
  return {
    sockPath,
    statusPath,
    connected,
    close() {
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const s of sockets) s.destroy();
        bus.close();
        fs.rmSync(sockPath, { force: true });
        status.remove();
      });
      return closing;
    },
  };
}

type Call = (payload: Record<string, unknown>, deadlineMs?: number) => Promise<Record<string, unknown>>;

/**
 * One client connection: split the byte stream into messages and answer
 * them strictly in order, at most MAX_QUEUED read ahead of the one being
 * answered (then the connection stops reading until the queue shrinks). A
 * message longer than AGENT_MAX_MESSAGE closes the connection, as OpenSSH's
 * agent does; anything else malformed gets SSH_AGENT_FAILURE.
 */
function serveConnection(socket: net.Socket, call: Call, signDeadlineMs: number, log: Logger): void {
  const splitter = new FrameSplitter();
  const queue: AgentMessage[] = [];
  let busy = false;

  const pump = async () => {
    if (busy) return;
    busy = true;
    while (queue.length && !socket.destroyed) {
      const message = queue.shift()!;
      if (queue.length < MAX_QUEUED / 2 && socket.isPaused()) socket.resume();
      let reply: Buffer;
      try {
        reply = await answer(message, call, signDeadlineMs, log);
      } catch (err) {
        log.debug(`answering agent message ${message.type}: ${(err as Error).message}`);
        reply = FAILURE;
      }
      if (!socket.destroyed) socket.write(reply);
    }
    busy = false;
  };

  socket.on('data', (chunk: Buffer) => {
    try {
      queue.push(...splitter.push(chunk));
    } catch (err) {
      throttleOf(log).warn('oversized', `closing an agent connection: ${(err as Error).message}`);
      socket.destroy();
      return;
    }
    if (queue.length >= MAX_QUEUED) socket.pause();
    void pump();
  });
  socket.on('error', () => socket.destroy());
}

/** The extensions this agent serves (the `query` extension names them). */
const EXTENSIONS = ['query', 'session-bind@openssh.com'];

/** The answer to one message. The guest holds no key: whatever would change keys is refused. */
async function answer(message: AgentMessage, call: Call, signDeadlineMs: number, log: Logger): Promise<Buffer> {
  switch (message.type) {
    case SSH_AGENTC_REQUEST_IDENTITIES: {
      if (message.body.length !== 0) return FAILURE;
      let keys: Identity[];
      try {
        const parsed = listResponse.safeParse(await call({ operation: 'list' }));
        if (!parsed.success) throw new Error('the host answered list with something that is not a key list');
        keys = parsed.data.keys.map((k) => ({ blob: Buffer.from(k.blob, 'base64'), comment: k.comment }));
      } catch (err) {
        logRefusal(log, 'listing keys', err as Error);
        return FAILURE;
      }
      // Whatever type the host's agent holds (certificates, security keys), byte for byte.
      return identitiesAnswer(keys);
    }
    case SSH_AGENTC_SIGN_REQUEST: {
      const req = parsed(() => parseSignRequest(message.body));
      if (!req) return FAILURE;
      try {
        const answer = signResponse.safeParse(await call({
          operation: 'sign', public_key: req.key.toString('base64'), data: req.data.toString('base64'), flags: req.flags,
        }, signDeadlineMs));
        if (!answer.success) throw new Error('the host answered sign with something that is not a signature');
        const { format, blob, rest } = answer.data;
        // The host's agent's signature as it made it: format, blob, and what follows (a security key's flags and counter).
        return agentSignResponse(encodeSignature({ format, blob: Buffer.from(blob, 'base64'), rest: Buffer.from(rest, 'base64') }));
      } catch (err) {
        logRefusal(log, `signing with ${keyFingerprint(req.key)}`, err as Error);
        return FAILURE;
      }
    }
    case SSH_AGENTC_EXTENSION:
      return answerExtension(message.body, call, log);
    default:
      // add, remove, remove all, lock, unlock, smartcard, constrained adds, unknown: this agent holds no keys to change.
      return FAILURE;
  }
}

async function answerExtension(body: Buffer, call: Call, log: Logger): Promise<Buffer> {
  const ext = parsed(() => parseExtension(body));
  if (ext?.name === 'query') return ext.contents.length === 0 ? queryAnswer(EXTENSIONS) : FAILURE;
  if (ext?.name !== 'session-bind@openssh.com') return FAILURE;
  const bind = parsed(() => parseSessionBind(ext.contents));
  if (!bind) return FAILURE;
  try {
    const answer = await call({
      operation: 'bind',
      hostkey: bind.hostkey.toString('base64'),
      session_id: bind.sessionId.toString('base64'),
      signature: bind.signature.toString('base64'),
      is_forwarding: bind.forwarding,
    });
    return answer.bound === true ? SUCCESS : FAILURE;
  } catch (err) {
    // An older host without `bind` is not worth a warning per login: ssh carries on without it.
    if (err instanceof BusError && err.code === 'UNKNOWN_OPERATION') log.debug('the host does not know bind (older shed-host-agent); answering FAILURE');
    else logRefusal(log, 'binding a session', err as Error);
    return FAILURE;
  }
}

/** What `parse` makes of a message, or undefined when it does not parse (the answer is then FAILURE). */
function parsed<T>(parse: () => T): T | undefined {
  try {
    return parse();
  } catch {
    return undefined;
  }
}

/** What a client can cause at will is logged once a minute per kind, with its count (LogThrottle). */
const throttles = new WeakMap<Logger, LogThrottle>();

function throttleOf(log: Logger): LogThrottle {
  let throttle = throttles.get(log);
  if (!throttle) throttles.set(log, (throttle = new LogThrottle(log)));
  return throttle;
}

function logRefusal(log: Logger, what: string, err: Error): void {
  const throttle = throttleOf(log);
  const kind = err instanceof BusError ? `${what.split(' ')[0]} ${err.kind} ${err.code}` : `${what.split(' ')[0]} ${err.name}`;
  if (err instanceof BusError) {
    if (err.kind === 'deadline') throttle.warn(kind, `${what}: the host did not answer in time; ${err.hint}`);
    else throttle.warn(kind, `${what} failed: ${err.describe()}`);
  } else {
    throttle.warn(kind, `${what} failed: ${err.message}`);
  }
}
