/**
 * shed-ext-ssh-agent: an SSH agent on a unix socket inside the shed whose
 * keys live on the host. ssh, git, scp and ssh-keygen talk to it through
 * `SSH_AUTH_SOCK`; every request becomes a bus request to the host's
 * `ssh-agent` namespace, and no private key ever reaches this side.
 *
 * The agent protocol is ssh2's `AgentProtocol` (server side), fed one whole
 * frame at a time so replies keep their order. It answers FAILURE to every
 * message it does not serve (add, remove, lock, ...). OpenSSH's
 * `session-bind@openssh.com` extension it cannot surface, so frames of type
 * SSH_AGENTC_EXTENSION are handled here: the bind goes to the host as `bind`,
 * and the host's verdict is the answer. A host without `bind` makes it a
 * FAILURE, which ssh tolerates.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import ssh2 from 'ssh2';
import { compile } from 'zod/mini';
import type { Logger } from '../../protocol/log.js';
import { listenPrivate } from '../../protocol/private-socket.js';
import { compiledOnceHot, compileHotSchemas } from '../../protocol/compiled.js';
import {
  AGENT_MAX_MESSAGE, fingerprint, SSH_AGENT_FAILURE, SSH_AGENT_RSA_SHA2_256, SSH_AGENT_RSA_SHA2_512, SSH_AGENT_SUCCESS,
  SSH_AGENTC_EXTENSION, SSH_AGENTC_REQUEST_IDENTITIES, SSH_AGENTC_SIGN_REQUEST, SshListResponse, SshSignResponse,
} from '../../protocol/ssh-agent.js';
import { BusClient, BusError } from '../bus-client.js';
import { StatusFile } from '../status-file.js';

export const DEFAULT_SOCK = '/run/shed-extensions/ssh-agent.sock';
export const STATUS_FILE = 'ssh-agent.status';
const NS = 'ssh-agent';
const listResponse = compiledOnceHot(SshListResponse);
const signResponse = compiledOnceHot(SshSignResponse);

/** Frames read ahead of the one being answered before the connection stops reading. */
const MAX_QUEUED = 16;

const FAILURE = Buffer.from([0, 0, 0, 1, SSH_AGENT_FAILURE]);
const SUCCESS = Buffer.from([0, 0, 0, 1, SSH_AGENT_SUCCESS]);

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
 * One client connection: split the byte stream into frames (ssh may write a
 * frame's length and body separately), answer them strictly in order.
 */
function serveConnection(socket: net.Socket, call: Call, signDeadlineMs: number, log: Logger): void {
  /**
   * REQUEST_IDENTITIES and SIGN_REQUEST go through ssh2's AgentProtocol, one
   * per connection (a fresh one per message costs ~3 times as much), fed
   * only frames known to be exactly well formed: its parser leaves the body
   * of a message it does not serve in its buffer, and stops reading after a
   * sign request it cannot parse. Frames are answered one at a time, so its
   * next reply is the current frame's.
   */
  let proto: InstanceType<typeof ssh2.AgentProtocol> | undefined;
  let reply: ((frame: Buffer) => void) | undefined;
  const answered = (frame: Buffer) => {
    const r = reply;
    reply = undefined;
    r?.(frame);
  };

  const protocol = (): InstanceType<typeof ssh2.AgentProtocol> => {
    if (proto) return proto;
    const p = new ssh2.AgentProtocol(false);
    proto = p;
    p.on('data', answered);
    p.on('error', (err: Error) => {
      log.debug(`agent protocol error: ${err.message}`);
      if (proto === p) proto = undefined;
      answered(FAILURE);
    });

    p.on('identities', (req) => {
      call({ operation: 'list' })
        .then((answer) => {
          const parsed = listResponse.safeParse(answer);
          if (!parsed.success) throw new Error('the host answered list with something that is not a key list');
          const keys = parsed.data.keys.map((k) => ({ pubKey: { pubKey: Buffer.from(k.blob, 'base64'), comment: k.comment } }));
          p.getIdentitiesReply(req, keys as never);
        })
        .catch((err: Error) => {
          logRefusal(log, 'listing keys', err);
          p.failureReply(req);
        });
    });

    p.on('sign', (req, pubKey, data, flags) => {
      const blob = pubKey.getPublicSSH();
      const flagBits = flags.hash === 'sha256' ? SSH_AGENT_RSA_SHA2_256 : flags.hash === 'sha512' ? SSH_AGENT_RSA_SHA2_512 : 0;
      call({ operation: 'sign', public_key: blob.toString('base64'), data: data.toString('base64'), flags: flagBits }, signDeadlineMs)
        .then((answer) => {
          const parsed = signResponse.safeParse(answer);
          if (!parsed.success) throw new Error('the host answered sign with something that is not a signature');
          // ssh2 keeps the signature format it will write (rsa-sha2-512, ssh-ed25519, ...) as the request's context; its typings omit it.
          const expected = (req as unknown as { getContext(): string }).getContext();
          if (parsed.data.format !== expected || parsed.data.rest) {
            throw new Error(`the host signed as ${parsed.data.format.slice(0, 64)} where ${expected} was asked`);
          }
          p.signReply(req, Buffer.from(parsed.data.blob, 'base64'));
        })
        .catch((err: Error) => {
          logRefusal(log, `signing with ${fingerprint(blob)}`, err);
          p.failureReply(req);
        });
    });
    return p;
  };

  const answerStandard = (frame: Buffer): Promise<Buffer> => new Promise<Buffer>((resolve) => {
    reply = resolve;
    protocol().write(frame);
  });

  const answerExtension = async (frame: Buffer): Promise<Buffer> => {
    const ext = parseExtension(frame);
    if (ext?.name !== 'session-bind@openssh.com' || !ext.bind) return FAILURE;
    const { hostkey, sessionId, signature, forwarding } = ext.bind;
    try {
      const answer = await call({
        operation: 'bind',
        hostkey: hostkey.toString('base64'),
        session_id: sessionId.toString('base64'),
        signature: signature.toString('base64'),
        is_forwarding: forwarding,
      });
      return answer.bound === true ? SUCCESS : FAILURE;
    } catch (err) {
      // An older host without `bind` is not worth a warning per login: ssh carries on without it.
      if (err instanceof BusError && err.code === 'UNKNOWN_OPERATION') log.debug('the host does not know bind (older shed-host-agent); answering FAILURE');
      else logRefusal(log, 'binding a session', err as Error);
      return FAILURE;
    }
  };

  const answer = (frame: Buffer): Promise<Buffer> => {
    switch (frame.length > 4 ? frame[4] : -1) {
      case SSH_AGENTC_EXTENSION:
        return answerExtension(frame);
      case SSH_AGENTC_REQUEST_IDENTITIES:
        return frame.length === 5 ? answerStandard(frame) : Promise.resolve(FAILURE);
      case SSH_AGENTC_SIGN_REQUEST:
        return isSignRequest(frame) ? answerStandard(frame) : Promise.resolve(FAILURE);
      default:
        // add, remove, lock, smartcard, unknown, empty: this agent holds no keys to change.
        return Promise.resolve(FAILURE);
    }
  };

  let buf: Buffer = Buffer.alloc(0);
  const queue: Buffer[] = [];
  let busy = false;

  const pump = async () => {
    if (busy) return;
    busy = true;
    while (queue.length && !socket.destroyed) {
      const frame = queue.shift()!;
      if (queue.length < MAX_QUEUED / 2 && socket.isPaused()) socket.resume();
      const reply = await answer(frame);
      if (!socket.destroyed) socket.write(reply);
    }
    busy = false;
  };

  socket.on('data', (chunk: Buffer) => {
    buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
    while (buf.length >= 4) {
      const len = buf.readUInt32BE(0);
      // A longer message closes the connection, as ssh-agent does.
      if (len > AGENT_MAX_MESSAGE) {
        log.warn(`closing an agent connection that sent a ${len}-byte message (limit ${AGENT_MAX_MESSAGE})`);
        socket.destroy();
        return;
      }
      if (buf.length < 4 + len) break;
      queue.push(buf.subarray(0, 4 + len));
      buf = buf.subarray(4 + len);
    }
    if (queue.length >= MAX_QUEUED) socket.pause();
    void pump();
  });
  socket.on('error', () => socket.destroy());
  socket.once('close', () => proto?.destroy());
}

/** `string key_blob, string data, uint32 flags` and nothing more, with a key ssh2 can parse. */
function isSignRequest(frame: Buffer): boolean {
  let p = 5;
  const skipString = (): Buffer | undefined => {
    if (p + 4 > frame.length) return undefined;
    const len = frame.readUInt32BE(p);
    if (p + 4 + len > frame.length) return undefined;
    const s = frame.subarray(p + 4, p + 4 + len);
    p += 4 + len;
    return s;
  };
  const key = skipString();
  if (!key || !skipString() || p + 4 !== frame.length) return false;
  return parsableKey(key);
}

/** Key blobs ssh2 parsed before: a login signs with the same few keys, and each parse costs a DER encoding. */
const parsedKeys = new Map<string, boolean>();
const MAX_PARSED_KEYS = 64;

function parsableKey(blob: Buffer): boolean {
  const id = blob.toString('base64');
  let ok = parsedKeys.get(id);
  if (ok === undefined) {
    ok = !(ssh2.utils.parseKey(blob) instanceof Error);
    if (parsedKeys.size >= MAX_PARSED_KEYS) parsedKeys.delete(parsedKeys.keys().next().value!);
    parsedKeys.set(id, ok);
  }
  return ok;
}

interface Extension {
  name: string;
  bind?: { hostkey: Buffer; sessionId: Buffer; signature: Buffer; forwarding: boolean };
}

/** SSH_AGENTC_EXTENSION: `string name`, then the extension's own fields (PROTOCOL.agent). */
export function parseExtension(frame: Buffer): Extension | undefined {
  let p = 5;
  const str = (): Buffer => {
    if (p + 4 > frame.length) throw new RangeError('truncated');
    const len = frame.readUInt32BE(p);
    if (p + 4 + len > frame.length) throw new RangeError('truncated');
    const s = frame.subarray(p + 4, p + 4 + len);
    p += 4 + len;
    return s;
  };
  try {
    const name = str().toString('utf8');
    if (name !== 'session-bind@openssh.com') return { name };
    const hostkey = str();
    const sessionId = str();
    const signature = str();
    if (p + 1 !== frame.length) return { name };
    return { name, bind: { hostkey, sessionId, signature, forwarding: frame[p] !== 0 } };
  } catch {
    return undefined;
  }
}

function logRefusal(log: Logger, what: string, err: Error): void {
  if (err instanceof BusError) {
    if (err.kind === 'deadline') log.warn(`${what}: the host did not answer in time; ${err.hint}`);
    else log.warn(`${what} failed: ${err.describe()}`);
  } else {
    log.warn(`${what} failed: ${err.message}`);
  }
}

