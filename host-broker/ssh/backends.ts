/**
 * Where the host's signatures come from, behind one interface:
 *
 * - agent-forward: the host's agent at `ssh.agent_socket` or `$SSH_AUTH_SOCK`
 *   (OpenSSH ssh-agent, 1Password, Secretive, yubikey-agent): whatever keys
 *   it holds, certificates and security keys included, passed through;
 * - local-keys: `~/.ssh/id_{ed25519,ecdsa,rsa}` and `ssh.keys`, each with the
 *   certificate beside it (`<key>-cert.pub`) when there is one;
 * - auto: the agent while it can be reached, else the key files. An agent
 *   that is reached but fails is an error, never a silent switch.
 *
 * Every failure is a BrokerError whose message is fit for the guest; the
 * reason, with paths, goes to the host log.
 */
import { SshCode } from '../../protocol/codes.js';
import type { Logger } from '../../protocol/log.js';
import { keyFingerprint, type WireSignature } from '../../protocol/ssh-wire.js';
import { BrokerError } from '../handler.js';
import type { EffectiveSsh } from '../policy/effective.js';
import { AgentClient, AgentError, type AgentClientOptions } from './agent-client.js';
import { LocalKeys, signWithLocalKey, type LocalKey } from './local-keys.js';

export interface Identity {
  blob: Buffer;
  comment: string;
  /** The key's fingerprint as `ssh-keygen -lf` prints it (a certificate's: its key's). */
  fingerprint: string;
}

export interface SshBackend {
  readonly mode: 'agent-forward' | 'local-keys';
  list(signal: AbortSignal): Promise<Identity[]>;
  /** Whether it holds `blob` (asked before a human is asked to approve a sign). */
  holds(blob: Buffer, signal: AbortSignal): Promise<boolean>;
  sign(blob: Buffer, data: Buffer, flags: number, signal: AbortSignal): Promise<WireSignature>;
  /** For logs: where its keys are. */
  describe(): string;
}

/** What a request needs to know of the broker's backends. */
export interface BackendContext {
  shed: string;
  log: Logger;
}

export interface SshBackendsOptions {
  log: Logger;
  /** `SSH_AUTH_SOCK` comes from here; the broker's own environment by default. */
  env?: NodeJS.ProcessEnv;
  /** Whose `~/.ssh` local-keys reads. */
  homedir: () => string;
  agent?: AgentClientOptions;
}

/** The backends of every shed, sharing agent connections and parsed key files. */
export class SshBackends {
  private readonly agents = new Map<string, AgentClient>();
  private readonly local: LocalKeys;
  private readonly env: NodeJS.ProcessEnv;

  constructor(private readonly options: SshBackendsOptions) {
    this.local = new LocalKeys(options.log);
    this.env = options.env ?? process.env;
  }

  /** The backend the shed's policy names (auto: the agent while it can be reached, else the key files). */
  for(ssh: EffectiveSsh, ctx: BackendContext): SshBackend {
    const socket = ssh.agent_socket ?? (this.env.SSH_AUTH_SOCK || undefined);
    const local = new LocalKeysBackend(this.local, this.options.homedir(), ssh.keys, ctx);
    if (ssh.mode === 'local-keys' || (ssh.mode === 'auto' && !socket)) return local;
    if (!socket) {
      return new UnavailableBackend(ctx, 'ssh.mode is agent-forward but neither ssh.agent_socket nor SSH_AUTH_SOCK names a socket');
    }
    const agent = new AgentForwardBackend(this.agentFor(socket), ctx);
    return ssh.mode === 'auto' ? new AutoBackend(agent, local) : agent;
  }

  close(): void {
    for (const agent of this.agents.values()) agent.close();
    this.agents.clear();
  }

  private agentFor(socket: string): AgentClient {
    let client = this.agents.get(socket);
    if (!client) this.agents.set(socket, (client = new AgentClient(socket, this.options.agent)));
    return client;
  }
}

/** The host's agent cannot be used: every call says so (and the host log says why). */
function unavailable(ctx: BackendContext, why: string): BrokerError {
  ctx.log.warn(`shed ${ctx.shed}: ssh-agent: the host's SSH agent is not usable (${why}); start it and load keys (ssh-add), or set ssh.mode: local-keys in the policy`);
  return new BrokerError(SshCode.AGENT_UNAVAILABLE, 'the host\'s SSH agent does not answer; see the shed-host-agent log on the host', { result: 'error' });
}

function notFound(fp: string, where: string): BrokerError {
  return new BrokerError(SshCode.KEY_NOT_FOUND, `the host has no key ${fp} (${where})`, { result: 'error', detail: `${fp}: not held by the host` });
}

class UnavailableBackend implements SshBackend {
  readonly mode = 'agent-forward' as const;
  constructor(private readonly ctx: BackendContext, private readonly why: string) {}
  async list(): Promise<Identity[]> {
    throw unavailable(this.ctx, this.why);
  }
  async holds(): Promise<boolean> {
    throw unavailable(this.ctx, this.why);
  }
  async sign(): Promise<WireSignature> {
    throw unavailable(this.ctx, this.why);
  }
  describe(): string {
    return 'no SSH agent';
  }
}

/** Thrown inside AutoBackend when the agent cannot be reached at all, so the key files are tried. */
class Unreachable extends Error {}

class AgentForwardBackend implements SshBackend {
  readonly mode = 'agent-forward' as const;
  /** In auto mode, an unreachable agent is not an error but a reason to use the key files. */
  fallThrough = false;

  constructor(private readonly agent: AgentClient, private readonly ctx: BackendContext) {}

  describe(): string {
    return `the host's SSH agent at ${this.agent.socketPath}`;
  }

  async list(signal: AbortSignal): Promise<Identity[]> {
    try {
      const keys = await this.agent.identities(signal);
      return keys.map((k) => ({ blob: k.blob, comment: k.comment, fingerprint: keyFingerprint(k.blob) }));
    } catch (err) {
      throw this.failure(err);
    }
  }

  async holds(blob: Buffer, signal: AbortSignal): Promise<boolean> {
    return (await this.list(signal)).some((k) => k.blob.equals(blob));
  }

  async sign(blob: Buffer, data: Buffer, flags: number, signal: AbortSignal): Promise<WireSignature> {
    const fp = keyFingerprint(blob);
    try {
      return await this.agent.sign(blob, data, flags, signal);
    } catch (err) {
      if (!(err instanceof AgentError) || err.kind !== 'refused') throw this.failure(err, fp);
      // Refused: for want of the key, or a confirmation or touch that did not come.
      const held = await this.agent.identities(signal).catch(() => undefined);
      if (held && !held.some((k) => k.blob.equals(blob))) {
        throw new BrokerError(SshCode.KEY_NOT_FOUND, `the host's SSH agent does not hold key ${fp}; load it on the host with ssh-add`, { result: 'error', detail: `${fp}: not in the agent` });
      }
      this.ctx.log.warn(`shed ${this.ctx.shed}: the host's SSH agent refused to sign with ${fp} (a confirmation or touch may have been declined)`);
      throw new BrokerError(SshCode.SIGN_FAILED, `the host's SSH agent refused to sign with ${fp}; it may have asked for a confirmation or a touch that did not come`, { result: 'error' });
    }
  }

  private failure(err: unknown, fp?: string): Error {
    if (!(err instanceof AgentError)) return err as Error;
    if (err.kind === 'unreachable') return this.fallThrough ? new Unreachable(err.message) : unavailable(this.ctx, err.message);
    if (!fp) return unavailable(this.ctx, err.message);
    this.ctx.log.warn(`shed ${this.ctx.shed}: signing with ${fp} through the host's SSH agent failed: ${err.message}`);
    return new BrokerError(SshCode.SIGN_FAILED, `signing with ${fp} failed on the host (${err.kind}); see the shed-host-agent log`, { result: 'error' });
  }
}

class LocalKeysBackend implements SshBackend {
  readonly mode = 'local-keys' as const;

  constructor(private readonly local: LocalKeys, private readonly home: string, private readonly extra: string[], private readonly ctx: BackendContext) {}

  describe(): string {
    return `the key files in ${this.home}/.ssh and ssh.keys`;
  }

  private keys(): LocalKey[] {
    return this.local.load(this.home, this.extra);
  }

  async list(): Promise<Identity[]> {
    // Each key, then its certificate when it has one (as ssh-add lists them).
    return this.keys().flatMap((k) => [
      { blob: k.blob, comment: k.comment, fingerprint: k.fingerprint },
      ...(k.cert ? [{ blob: k.cert, comment: k.comment, fingerprint: k.fingerprint }] : []),
    ]);
  }

  async holds(blob: Buffer): Promise<boolean> {
    return this.find(blob) !== undefined;
  }

  async sign(blob: Buffer, data: Buffer, flags: number): Promise<WireSignature> {
    const key = this.find(blob);
    const fp = keyFingerprint(blob);
    if (!key) throw notFound(fp, 'local-keys: ~/.ssh/id_ed25519, id_ecdsa, id_rsa and ssh.keys');
    try {
      return signWithLocalKey(key, data, flags);
    } catch (err) {
      this.ctx.log.warn(`shed ${this.ctx.shed}: signing with ${fp} from ${key.file} failed: ${(err as Error).name}`);
      throw new BrokerError(SshCode.SIGN_FAILED, `signing with ${fp} failed on the host; see the shed-host-agent log`, { result: 'error' });
    }
  }

  /** The key whose blob, or whose certificate's, is `blob`. */
  private find(blob: Buffer): LocalKey | undefined {
    return this.keys().find((k) => k.blob.equals(blob) || k.cert?.equals(blob));
  }
}

/** The agent while it can be reached, else the key files; `mode` says which answered last. */
class AutoBackend implements SshBackend {
  mode: 'agent-forward' | 'local-keys' = 'agent-forward';

  constructor(private readonly agent: AgentForwardBackend, private readonly local: LocalKeysBackend) {
    agent.fallThrough = true;
  }

  describe(): string {
    return this.mode === 'agent-forward' ? this.agent.describe() : this.local.describe();
  }

  list(signal: AbortSignal): Promise<Identity[]> {
    return this.either((b) => b.list(signal));
  }

  holds(blob: Buffer, signal: AbortSignal): Promise<boolean> {
    return this.either((b) => b.holds(blob, signal));
  }

  sign(blob: Buffer, data: Buffer, flags: number, signal: AbortSignal): Promise<WireSignature> {
    return this.either((b) => b.sign(blob, data, flags, signal));
  }

  private async either<T>(call: (b: SshBackend) => Promise<T>): Promise<T> {
    try {
      const out = await call(this.agent);
      this.mode = 'agent-forward';
      return out;
    } catch (err) {
      if (!(err instanceof Unreachable)) throw err;
      this.mode = 'local-keys';
      return call(this.local);
    }
  }
}
