/**
 * The ssh-agent namespace: signatures with the host's SSH keys for a shed,
 * decided by the shed's `ssh:` policy. No private key ever leaves this
 * process: the guest gets public keys and signatures.
 *
 * Backends, chosen per shed and per request:
 * - agent-forward: the host's agent at `ssh.agent_socket` or `$SSH_AUTH_SOCK`;
 * - local-keys: `~/.ssh/id_{ed25519,ecdsa,rsa}` and `ssh.keys`;
 * - auto: agent-forward when that agent answers, else local-keys.
 *
 * Rules (rules.ts): `allowed_keys` filters `list` and refuses `sign`;
 * `signing_namespaces` governs SSHSIG data; `allowed_hosts` restricts user
 * authentication to servers whose host key is listed, proven by a `bind`
 * (session-bind@openssh.com) whose server signature verified.
 */
import os from 'node:os';
import { CommonCode, SshCode } from '../../protocol/codes.js';
import { compiledOnceHot } from '../../protocol/compiled.js';
import { describeIssues, OPERATIONS, type Payload } from '../../protocol/envelope.js';
import type { Logger } from '../../protocol/log.js';
import { SshBindRequest, SshSignRequest, type SshBindResponse, type SshKey, type SshListResponse, type SshSignResponse, type SshStatusResponse } from '../../protocol/ssh-agent.js';
import { BrokerError, unknownOperation, type NamespaceHandler, type RequestContext } from '../handler.js';
import type { EffectiveSsh } from '../policy/effective.js';
import { AgentClient, AgentError, type AgentClientOptions } from './agent-client.js';
import { MAX_SESSION_ID, SessionBindings, verifySessionSignature } from './bindings.js';
import { LocalKeys, signWithLocalKey, type LocalKey } from './local-keys.js';
import { hostKeyDecision, keyDecision, signingNamespaceDecision } from './rules.js';
import { blobType, describeKey, fingerprint, looksLikeSshsig, parseSshsigNamespace, parseUserAuthRequest, type WireSignature } from './wire.js';

const NS = 'ssh-agent';
const signRequest = compiledOnceHot(SshSignRequest);
const bindRequest = compiledOnceHot(SshBindRequest);

export interface SshHandlerDeps {
  log: Logger;
  /** `SSH_AUTH_SOCK` comes from here; the broker's own environment by default. */
  env?: NodeJS.ProcessEnv;
  /** Whose `~/.ssh` local-keys reads; `os.homedir()` at each request by default. */
  homedir?: () => string;
  bindings?: SessionBindings;
  agent?: AgentClientOptions;
}

type Backend =
  | { mode: 'agent-forward'; agent: AgentClient }
  | { mode: 'local-keys'; keys: LocalKey[] };

interface Identity {
  blob: Buffer;
  comment: string;
  fingerprint: string;
}

export function createSshHandler(deps: SshHandlerDeps): NamespaceHandler {
  const env = deps.env ?? process.env;
  const home = deps.homedir ?? (() => os.homedir());
  const bindings = deps.bindings ?? new SessionBindings();
  const local = new LocalKeys(deps.log);
  const agents = new Map<string, AgentClient>();

  const agentSocket = (ssh: EffectiveSsh): string | undefined => ssh.agent_socket ?? (env.SSH_AUTH_SOCK || undefined);

  const agentFor = (socket: string): AgentClient => {
    let client = agents.get(socket);
    if (!client) agents.set(socket, (client = new AgentClient(socket, deps.agent)));
    return client;
  };

  const localBackend = (ssh: EffectiveSsh): Backend => ({ mode: 'local-keys', keys: local.load(home(), ssh.keys) });

  const unavailable = (ctx: RequestContext, why: string): BrokerError => {
    ctx.log.warn(`shed ${ctx.shed}: ssh-agent: the host's SSH agent is not usable (${why}); start it and load keys (ssh-add), or set ssh.mode: local-keys in the policy`);
    return new BrokerError(SshCode.AGENT_UNAVAILABLE, 'the host\'s SSH agent does not answer; see the shed-host-agent log on the host', { result: 'error' });
  };

  /**
   * The backend and its keys for this request. In auto mode a socket that
   * cannot be reached means local-keys; an agent that is reached but fails
   * is an error, not a silent switch.
   */
  async function identities(ctx: RequestContext): Promise<{ backend: Backend; keys: Identity[] }> {
    const ssh = ctx.policy.ssh;
    const socket = agentSocket(ssh);
    if (ssh.mode === 'local-keys' || (ssh.mode === 'auto' && !socket)) {
      const backend = localBackend(ssh);
      return { backend, keys: backend.mode === 'local-keys' ? backend.keys.map(localIdentity) : [] };
    }
    if (!socket) throw unavailable(ctx, 'ssh.mode is agent-forward but neither ssh.agent_socket nor SSH_AUTH_SOCK names a socket');
    const agent = agentFor(socket);
    try {
      const keys = await agent.identities(ctx.signal);
      return { backend: { mode: 'agent-forward', agent }, keys: keys.map((k) => ({ ...k, fingerprint: fingerprint(k.blob) })) };
    } catch (err) {
      if (!(err instanceof AgentError)) throw err;
      if (ssh.mode === 'auto' && err.kind === 'unreachable') {
        const backend = localBackend(ssh);
        return { backend, keys: backend.mode === 'local-keys' ? backend.keys.map(localIdentity) : [] };
      }
      throw unavailable(ctx, err.message);
    }
  }

  async function list(ctx: RequestContext): Promise<SshListResponse> {
    const { keys } = await identities(ctx);
    const shown = keys.filter((k) => keyDecision(ctx.policy.ssh, k.fingerprint).allowed);
    const hidden = keys.length - shown.length;
    ctx.detail = `${shown.map((k) => k.fingerprint).join(',') || '(no keys)'}${hidden ? ` (+${hidden} not in allowed_keys)` : ''}`.slice(0, 900);
    return { keys: shown.map(toWireKey) };
  }

  async function status(ctx: RequestContext): Promise<SshStatusResponse> {
    try {
      const { backend, keys } = await identities(ctx);
      const allowed = keys.filter((k) => keyDecision(ctx.policy.ssh, k.fingerprint).allowed);
      return { connected: true, mode: backend.mode, key_count: allowed.length };
    } catch (err) {
      if (!(err instanceof BrokerError)) throw err;
      return { connected: false, mode: ctx.policy.ssh.mode, key_count: 0, problem: err.message };
    }
  }

  /**
   * What the data to sign is, checked against the shed's rules. Returns a
   * description for the approval prompt; throws the refusal.
   */
  function checkData(ctx: RequestContext, key: Buffer, fp: string, data: Buffer): string {
    const ssh = ctx.policy.ssh;
    const refuse = (code: string, message: string, rule: string): BrokerError =>
      new BrokerError(code, message, { detail: `${fp}: ${rule}`.slice(0, 900) });

    const namespace = parseSshsigNamespace(data);
    if (namespace !== undefined) {
      const d = signingNamespaceDecision(ssh, namespace);
      if (!d.allowed) {
        throw refuse(d.code ?? SshCode.SIGNING_NAMESPACE_NOT_ALLOWED,
          `shed ${ctx.shed} may not make SSHSIG signatures in namespace ${JSON.stringify(namespace.slice(0, 64))}; the host policy's ssh.signing_namespaces decides (${d.rule})`, d.rule);
      }
      return `an SSHSIG signature in namespace ${JSON.stringify(namespace.slice(0, 64))}`;
    }
    if (looksLikeSshsig(data) && ssh.signing_namespaces !== undefined) {
      throw refuse(SshCode.SIGNING_NAMESPACE_NOT_ALLOWED, 'the data starts like an SSHSIG signature but does not parse as one; refused because ssh.signing_namespaces is set', 'malformed SSHSIG data');
    }

    const auth = parseUserAuthRequest(data);
    if (auth) {
      const who = `an ssh login as ${JSON.stringify(auth.user.slice(0, 64))}`;
      if (ssh.allowed_hosts === undefined) return who;
      if (!auth.key.equals(key)) {
        throw refuse(SshCode.HOST_NOT_ALLOWED, 'the login request names another key than the one asked to sign it; refused', 'user-auth request for another key');
      }
      const bound = bindings.lookup(ctx.shed, auth.sessionId);
      if (!bound) {
        throw refuse(SshCode.HOST_NOT_ALLOWED,
          `logins from shed ${ctx.shed} are restricted to the servers in ssh.allowed_hosts, and this ssh session was not bound to a server host key; use OpenSSH 8.9 or newer in the shed, talking to this agent directly`,
          'session not bound (no session-bind, or it expired)');
      }
      if (bound.forwarding) {
        throw refuse(SshCode.HOST_NOT_ALLOWED, 'this session id was bound for agent forwarding, not for a login; refused', 'session bound for forwarding');
      }
      if (auth.hostkey && !auth.hostkey.equals(bound.hostkey)) {
        throw refuse(SshCode.HOST_NOT_ALLOWED, 'the server host key in the login request differs from the one the session was bound to; refused', 'hostbound key differs from the session binding');
      }
      const hostFp = fingerprint(bound.hostkey);
      const d = hostKeyDecision(ssh, bound.hostkey);
      if (!d.allowed) {
        throw refuse(d.code ?? SshCode.HOST_NOT_ALLOWED,
          `shed ${ctx.shed} may not log in to the server with host key ${hostFp}: it is not in the host policy's ssh.allowed_hosts`, d.rule);
      }
      return `${who} to the server with host key ${hostFp}`;
    }

    if (ssh.allowed_hosts !== undefined) {
      throw refuse(SshCode.HOST_NOT_ALLOWED,
        `shed ${ctx.shed}'s keys are restricted by ssh.allowed_hosts, and this data is neither an ssh login nor an SSHSIG signature; refused`,
        'unidentified data under allowed_hosts');
    }
    return 'arbitrary data';
  }

  async function sign(payload: Payload, ctx: RequestContext): Promise<SshSignResponse> {
    const parsed = signRequest.safeParse(payload);
    if (!parsed.success) {
      throw new BrokerError(CommonCode.INVALID_REQUEST, `sign needs {"public_key","data","flags"} in base64: ${describeIssues(parsed.error)}`);
    }
    const blob = Buffer.from(parsed.data.public_key, 'base64');
    const data = Buffer.from(parsed.data.data, 'base64');
    const flags = parsed.data.flags;
    const fp = fingerprint(blob);
    ctx.detail = fp;
    if (!blobType(blob)) throw new BrokerError(CommonCode.INVALID_REQUEST, 'public_key is not an SSH public key blob');

    const kd = keyDecision(ctx.policy.ssh, fp);
    if (!kd.allowed) {
      throw new BrokerError(kd.code ?? SshCode.KEY_NOT_ALLOWED, `key ${fp} is not allowed for shed ${ctx.shed}; add it to ssh.allowed_keys in the host policy`, { detail: `${fp}: ${kd.rule}` });
    }
    const purpose = checkData(ctx, blob, fp, data);

    const ssh = ctx.policy.ssh;
    const socket = agentSocket(ssh);
    let localKey: LocalKey | undefined;
    let agent: AgentClient | undefined;
    if (ssh.mode === 'local-keys' || (ssh.mode === 'auto' && !socket)) {
      localKey = findLocal(ssh, blob);
    } else if (!socket) {
      throw unavailable(ctx, 'ssh.mode is agent-forward but neither ssh.agent_socket nor SSH_AUTH_SOCK names a socket');
    } else {
      agent = agentFor(socket);
      // Do not ask a human to approve a key the agent does not hold; without a gate, the sign itself finds out.
      if (ctx.policy.approval.gate !== 'none' && ctx.policy.approval.applies_to.includes(NS)) {
        const found = await identities(ctx);
        if (found.backend.mode === 'local-keys') {
          agent = undefined;
          localKey = findLocal(ssh, blob);
        } else if (!found.keys.some((k) => k.blob.equals(blob))) {
          throw notFound(ctx, fp);
        }
      }
    }

    await ctx.approve({ subject: fp, description: `sign with ${describeKey(blob)} for ${purpose}` });

    let sig: WireSignature;
    if (agent) {
      try {
        sig = await agent.sign(blob, data, flags, ctx.signal);
      } catch (err) {
        if (!(err instanceof AgentError)) throw err;
        if (err.kind === 'unreachable' && ssh.mode === 'auto') {
          sig = signLocal(findLocal(ssh, blob), data, flags, fp, ctx);
        } else if (err.kind === 'unreachable') {
          throw unavailable(ctx, err.message);
        } else if (err.kind === 'refused') {
          const held = await agent.identities(ctx.signal).catch(() => undefined);
          if (held && !held.some((k) => k.blob.equals(blob))) throw notFound(ctx, fp);
          ctx.log.warn(`shed ${ctx.shed}: the host's SSH agent refused to sign with ${fp} (a confirmation or touch may have been declined)`);
          throw new BrokerError(SshCode.SIGN_FAILED, `the host's SSH agent refused to sign with ${fp}; it may have asked for a confirmation or a touch that did not come`, { result: 'error' });
        } else {
          ctx.log.warn(`shed ${ctx.shed}: signing with ${fp} through the host's SSH agent failed: ${err.message}`);
          throw new BrokerError(SshCode.SIGN_FAILED, `signing with ${fp} failed on the host (${err.kind}); see the shed-host-agent log`, { result: 'error' });
        }
      }
    } else {
      sig = signLocal(localKey!, data, flags, fp, ctx);
    }
    return { format: sig.format, blob: sig.blob.toString('base64'), rest: sig.rest.toString('base64') };
  }

  function findLocal(ssh: EffectiveSsh, blob: Buffer): LocalKey {
    const key = local.load(home(), ssh.keys).find((k) => k.blob.equals(blob));
    if (!key) throw new BrokerError(SshCode.KEY_NOT_FOUND, `the host has no usable key ${fingerprint(blob)} (local-keys: ~/.ssh/id_ed25519, id_ecdsa, id_rsa and ssh.keys)`, { result: 'error' });
    return key;
  }

  function signLocal(key: LocalKey, data: Buffer, flags: number, fp: string, ctx: RequestContext): WireSignature {
    try {
      return signWithLocalKey(key, data, flags);
    } catch (err) {
      ctx.log.warn(`shed ${ctx.shed}: signing with ${fp} from ${key.file} failed: ${(err as Error).name}`);
      throw new BrokerError(SshCode.SIGN_FAILED, `signing with ${fp} failed on the host; see the shed-host-agent log`, { result: 'error' });
    }
  }

  function notFound(ctx: RequestContext, fp: string): BrokerError {
    return new BrokerError(SshCode.KEY_NOT_FOUND, `the host's SSH agent does not hold key ${fp}; load it on the host with ssh-add`, { result: 'error', detail: `${fp}: not in the agent` });
  }

  async function bind(payload: Payload, ctx: RequestContext): Promise<SshBindResponse> {
    const parsed = bindRequest.safeParse(payload);
    if (!parsed.success) {
      throw new BrokerError(CommonCode.INVALID_REQUEST, `bind needs {"hostkey","session_id","signature"} in base64 and "is_forwarding": ${describeIssues(parsed.error)}`);
    }
    const hostkey = Buffer.from(parsed.data.hostkey, 'base64');
    const sessionId = Buffer.from(parsed.data.session_id, 'base64');
    const signature = Buffer.from(parsed.data.signature, 'base64');
    const hostFp = blobType(hostkey) ? fingerprint(hostkey) : '(not a key)';
    ctx.detail = `host key ${hostFp}`;
    if (sessionId.length > MAX_SESSION_ID) {
      throw new BrokerError(SshCode.BIND_FAILED, `session id of ${sessionId.length} bytes is longer than ${MAX_SESSION_ID}`, { detail: `host key ${hostFp}: session id too long` });
    }
    if (!verifySessionSignature(hostkey, sessionId, signature)) {
      throw new BrokerError(SshCode.BIND_FAILED, 'the server\'s signature over the session id does not verify with the given host key; the session is not bound', { detail: `host key ${hostFp}: signature does not verify` });
    }
    bindings.bind(ctx.shed, sessionId, hostkey, parsed.data.is_forwarding);
    const ssh = ctx.policy.ssh;
    if (ssh.allowed_hosts !== undefined) {
      const d = hostKeyDecision(ssh, hostkey);
      ctx.detail = `host key ${hostFp}${parsed.data.is_forwarding ? ' (forwarding)' : ''}: ${d.allowed ? 'in allowed_hosts' : 'not in allowed_hosts'}`;
    } else if (parsed.data.is_forwarding) {
      ctx.detail += ' (forwarding)';
    }
    return { bound: true };
  }

  return {
    namespace: NS,
    operations: OPERATIONS[NS],
    async handle(operation, payload, ctx) {
      switch (operation) {
        case 'list':
          return list(ctx);
        case 'sign':
          return sign(payload, ctx);
        case 'bind':
          return bind(payload, ctx);
        case 'status':
          return status(ctx);
        default:
          throw unknownOperation(NS, operation);
      }
    },
    async close() {
      for (const agent of agents.values()) agent.close();
      agents.clear();
      bindings.clear();
    },
  };
}

function localIdentity(k: LocalKey): Identity {
  return { blob: k.blob, comment: k.comment, fingerprint: k.fingerprint };
}

function toWireKey(k: Identity): SshKey {
  return { format: blobType(k.blob) ?? 'unknown', blob: k.blob.toString('base64'), comment: k.comment };
}
