/**
 * The running broker: the policy in force, the dispatcher, and the transports
 * that feed it. `reload()` swaps the policy atomically for new requests (a
 * request in flight keeps the one it started with) and moves direct sockets
 * to follow the sheds the policy names.
 */
import { compile } from 'zod/mini';
import { compileHotSchemas } from '../protocol/compiled.js';
import type { Payload } from '../protocol/envelope.js';
import type { Logger } from '../protocol/log.js';
import path from 'node:path';
import { ANSWERED_IDS_FILE, AnsweredIds, REDELIVERY_WINDOW_MS } from './answered-ids.js';
import { Approvals } from './approval/approvals.js';
import { AuditLog } from './audit/audit-log.js';
import type { AuditSink } from './audit/audit.js';
import { AuditGovernor } from './audit/governor.js';
import { DedupeWindow } from './dedupe.js';
import { Dispatcher, type Admission, type Approver } from './dispatch.js';
import type { NamespaceHandler } from './handler.js';
import { Limits } from './limits/limits.js';
import { createHandlers } from './namespaces.js';
import type { Policy, ServerSettings } from './policy/policy.js';
import { DEFAULT_CONNECTIONS_PER_SHED, DirectSockets } from './transports/direct-sockets.js';
import type { ServerConnection, TokenSourceSpec } from './transports/server-config.js';
import { DiscoveryWatcher } from './transports/discovery.js';
import { ServerSet } from './transports/server-set.js';
import { ShedServerTransport, type ShedServerTimings } from './transports/shed-server.js';
import { envelopeOf, type Reply, type RequestSink, type Transport } from './transports/transport.js';
import { FairTurns } from './turns.js';
import { stateDirOf } from './status/server.js';
import { shedKey, VIA_DIRECT, type ShedOrigin } from './origin.js';
import { DEFAULT_SERVER_NAME } from './policy/schema.js';

export interface BrokerOptions {
  /** Reads and validates the policy; called at start and on every reload. Throws PolicyError when invalid. */
  loadPolicy: () => Policy;
  log: Logger;
  /** Defaults to every namespace this build serves. */
  handlers?: NamespaceHandler[];
  /**
   * Where audit lines go; defaults to the per-shed JSON-lines files in the
   * policy's `audit.dir` (rotated by `max_bytes`/`keep`). Either way the
   * governor (audit/governor.ts) bounds each shed's denials in front of it.
   */
  audit?: AuditSink;
  /** Defaults to the policy's approval gates (approval/), checked at start and on reload. */
  approver?: Approver;
  /** Defaults to the policy's rate and concurrency limits (limits/). */
  admission?: Admission;
  /** Extra transports (tests); the policy's own are created by the broker. */
  transports?: Transport[];
  /** Reconnect and retry timings of the shed-server transport (tests shorten them). */
  shedServerTimings?: Partial<ShedServerTimings>;
  /** Where the broker keeps its state (the memory of answered request ids): default ~/.local/state/shed. */
  stateDir?: string;
}


/** A shed-server the broker subscribes to, as `status` names it. */
export interface ServerEntry {
  /** `default` for the top-level `server:`; else its name under `servers:` or in shed's config.yaml. */
  name: string;
  url: string;
  /** Per namespace: `connecting`, `connected`, `reconnecting: <reason>` or `stopped`. */
  state(): Record<string, string>;
  /** Why it is not served, when it could not start. */
  problem?: string;
}

/** The outcome of the last reload (status). */
export interface ReloadOutcome {
  at: string;
  applied: boolean;
  /** The error, when refused. */
  reason?: string;
}

/** How the audit trail fares (status). */
export interface AuditHealth {
  dir: string | undefined;
  required: boolean;
  lastError: string | undefined;
  lastErrorAt: string | undefined;
  failedLines: number;
  summarisedDenials: number;
  summaryLines: number;
}

export class Broker {
  private current: Policy | undefined;
  private phaseNow: 'starting' | 'running' | 'stopping' = 'starting';
  private loadedAt: string | undefined;
  private lastReloadOutcome: ReloadOutcome | undefined;
  private readonly serverEntries: ServerEntry[] = [];
  /** The servers under `servers:` and those discovery finds, each its own namespace of sheds. */
  private serverSet: ServerSet | undefined;
  private discovery: DiscoveryWatcher | undefined;
  /** The discovery spec the watcher runs with (JSON), to see a reload change it. */
  private discoveryKey: string | undefined;
  private dispatcher: Dispatcher | undefined;
  private direct: DirectSockets | undefined;
  private transports: Transport[] = [];
  private audit: AuditGovernor | undefined;
  private readonly turns = new FairTurns();
  private auditLog: AuditLog | undefined;
  private approvals: Approvals | undefined;
  private limits: Limits | undefined;
  private answered: AnsweredIds | undefined;

  constructor(private readonly options: BrokerOptions) {}

  get policy(): Policy {
    if (!this.current) throw new Error('the broker has not started');
    return this.current;
  }

  /** Why the audit log cannot be written, while it cannot (for status and doctor). */
  get auditError(): string | undefined {
    return this.audit?.lastError;
  }

  /** The policy in force; undefined until start() has read it. */
  get policyInForce(): Policy | undefined {
    return this.current;
  }

  /** When the policy in force was read (ISO time). */
  get policyLoadedAt(): string | undefined {
    return this.loadedAt;
  }

  /** The last reload tried, applied or refused. */
  get lastReload(): ReloadOutcome | undefined {
    return this.lastReloadOutcome;
  }

  /** `starting` until every transport is up, `stopping` once stop() began. */
  get phase(): 'starting' | 'running' | 'stopping' {
    return this.phaseNow;
  }

  /** The shed-servers subscribed to: the top-level one, then the named ones by name. */
  get servers(): readonly ServerEntry[] {
    const named = (this.serverSet?.entries() ?? []).map((e) => ({ name: e.name, url: e.url, state: () => e.state, ...(e.problem !== undefined && { problem: e.problem }) }));
    return [...this.serverEntries, ...named];
  }

  get auditHealth(): AuditHealth {
    const policy = this.current;
    return {
      dir: this.auditLog?.dir ?? policy?.audit.dir,
      required: policy?.audit.required ?? false,
      lastError: this.audit?.lastError,
      lastErrorAt: this.audit?.lastError !== undefined ? this.audit.lastFailureAt : undefined,
      failedLines: this.audit?.failedWrites ?? 0,
      summarisedDenials: this.audit?.summarised ?? 0,
      summaryLines: this.audit?.summaryLines ?? 0,
    };
  }

  /** The direct-socket transport, when the policy enables it. */
  get directSockets(): DirectSockets | undefined {
    return this.direct;
  }

  /**
   * Start everything, or nothing: when any part fails (an unreadable token
   * file, a socket path in use), what was started is stopped again, its
   * sockets removed, and the error thrown.
   */
  async start(): Promise<void> {
    try {
      await this.startAll();
      if (!this.stopRequested) this.phaseNow = 'running';
    } catch (err) {
      await this.stop().catch((stopErr: Error) => this.options.log.error(`while undoing a failed start: ${stopErr.message}`));
      throw err;
    }
  }

  /** Set by stop(): a start still under way gives up at its next step. */
  private stopRequested = false;

  private async startAll(): Promise<void> {
    const { log } = this.options;
    compileHotSchemas(compile);
    this.current = this.options.loadPolicy();
    this.loadedAt = new Date().toISOString();
    const policy = this.current;
    if (!this.options.approver) {
      this.approvals = new Approvals({ log });
      await this.checkGates(policy);
    }
    if (!this.options.admission) this.limits = new Limits();
    if (!this.options.audit) this.auditLog = new AuditLog(policy.audit.dir, { maxBytes: policy.audit.maxBytes, keep: policy.audit.keep, log });
    this.audit = new AuditGovernor(this.options.audit ?? this.auditLog!, { denialsPerMinute: () => this.policy.audit.denialsPerMinute, log });
    const handlers = this.options.handlers ?? createHandlers({ log });
    // shed-server re-delivers an un-answered request for about an hour, also
    // to a restarted broker: ids are remembered that long, on disk too, and a
    // request id that old is accepted (not refused as stale).
    this.answered = new AnsweredIds({ file: path.join(stateDirOf(this.options.stateDir), ANSWERED_IDS_FILE), log });
    const answered = this.answered;
    const dedupe = new DedupeWindow({ windowMs: REDELIVERY_WINDOW_MS, onTake: (shed, id, at) => answered.record(shed, id, at) });
    for (const e of answered.load()) dedupe.seed(e.shed, e.id, e.at);
    this.dispatcher = new Dispatcher({
      dedupe,
      policy: () => this.policy,
      handlers,
      audit: this.audit,
      log,
      approver: this.options.approver ?? this.approvals?.approver,
      admission: this.options.admission ?? this.limits?.admission,
    });
    const transports: Transport[] = [...(this.options.transports ?? [])];
    if (policy.direct.enabled) {
      this.direct = new DirectSockets({
        socketsDir: policy.direct.socketsDir,
        sheds: policy.namedSheds(),
        log,
        maxConnections: policy.direct.maxConnections,
        connectionsPerShed: (shed) => this.policy.resolve(shed)?.limits.max_connections ?? DEFAULT_CONNECTIONS_PER_SHED,
      });
      transports.push(this.direct);
    }
    // The top-level `server:` starts with the broker, all or nothing; the
    // named servers (servers:, discovery) come and go with the policy and
    // shed's config.yaml, and one that cannot start is reported, not fatal.
    const top = policy.servers().find((s) => s.name === DEFAULT_SERVER_NAME);
    if (top) {
      const transport = new ShedServerTransport({
        server: top,
        defaultNamespaces: this.dispatcher.namespaces,
        log,
        timings: this.options.shedServerTimings,
      });
      transports.push(transport);
      this.serverEntries.push({ name: DEFAULT_SERVER_NAME, url: top.url, state: () => transport.state() });
    }
    if (transports.length === 0 && policy.serverScopes().length === 0 && !policy.discovery()) {
      throw new Error('the policy enables no transport: add a `server:` section or leave `direct:` enabled');
    }
    for (const transport of transports) {
      // Kept before it starts, so a start that fails half-way is stopped too.
      this.transports.push(transport);
      await transport.start(this.sinkFor(transport === this.direct ? VIA_DIRECT : DEFAULT_SERVER_NAME));
      if (this.stopRequested) throw new Error('stopped while starting');
      log.info(`listening: ${transport.description}`);
    }
    this.serverSet = new ServerSet({
      log,
      sinkFor: (connection) => this.sinkFor(connection.name, connection.policyScope ?? connection.name),
      defaultNamespaces: this.dispatcher.namespaces,
      timings: this.options.shedServerTimings,
    });
    this.followDiscovery(policy);
    await this.updateServers(policy);
    if (this.stopRequested) throw new Error('stopped while starting');
    if (policy.hasWildcard()) {
      log.info('the "*" entry admits unnamed sheds over shed-server; it has no direct socket');
    }
  }

  /**
   * The sink of one transport: every request it yields comes from `via`
   * (`direct`, `default`, or a named server, whose sheds are keyed
   * `<shed>@<server>`), and is dispatched in its shed's turn.
   */
  private sinkFor(via: string, server?: string): RequestSink {
    const { log } = this.options;
    const dispatcher = this.dispatcher!;
    const turns = this.turns;
    const answer = (shed: string, reply: Reply, work: Promise<Payload | undefined>) => {
      work.then(
        (payload) => (payload ? reply(payload) : undefined),
        (err: Error) => log.error(`dispatch failed for shed ${shed}: ${err.name}`),
      ).catch((err: Error) => log.warn(`could not answer shed ${shed}: ${err.message}`));
    };
    return (request, name, reply, options) => {
      const origin: ShedOrigin = { name, via, ...(server !== undefined && { server }) };
      const shed = shedKey(origin);
      // Each shed in its own turns (turns.ts): a burst of one delays the others by a few requests at most.
      const queued = turns.run(shed, () => {
        const envelope = envelopeOf(request);
        if (envelope) answer(shed, reply, dispatcher.dispatch(envelope, origin, options));
      });
      if (queued) return;
      const envelope = envelopeOf(request);
      if (envelope) answer(shed, reply, dispatcher.overloaded(envelope, origin, options));
    };
  }

  /** Start, restart or stop the discovery watcher as the policy's `discovery:` says. */
  private followDiscovery(policy: Policy): void {
    const spec = policy.discovery();
    const key = spec && JSON.stringify(spec);
    if (key === this.discoveryKey) return;
    this.discovery?.stop();
    this.discovery = undefined;
    this.discoveryKey = key;
    if (!spec) return;
    this.discovery = new DiscoveryWatcher({
      spec,
      log: this.options.log,
      onChange: () => {
        if (!this.stopRequested) void this.updateServers(this.policy);
      },
    });
    this.discovery.start();
    this.options.log.info(`following the servers of ${spec.source} (${spec.servers === 'all' ? 'all of them' : spec.servers.join(', ')})`);
  }

  /**
   * Serve the named servers: each `servers.<name>` with a url, then each one
   * discovery finds that the policy does not connect to itself, with what
   * `servers.<name>` sets for it laid over what discovery found.
   */
  private async updateServers(policy: Policy): Promise<void> {
    const explicit = policy.servers().filter((s) => s.name !== DEFAULT_SERVER_NAME);
    const taken = new Set(explicit.map((s) => s.name));
    const found: ServerConnection[] = [];
    for (const s of this.discovery?.servers ?? []) {
      if (s.name === DEFAULT_SERVER_NAME) {
        this.options.log.warn(`${policy.discovery()?.source ?? 'shed\'s config.yaml'} names a server "${DEFAULT_SERVER_NAME}", which is the top-level server's name here: skipping it (rename it there)`);
        continue;
      }
      if (!taken.has(s.name)) found.push(overlay(s, policy.serverSettings(s.name)));
    }
    await this.serverSet?.update([...explicit, ...found]);
  }

  /**
   * Re-read the policy. A valid one replaces the old for new requests and
   * moves the direct sockets; an invalid one is refused and the old stays.
   * Returns the error when refused.
   */
  async reload(): Promise<Error | undefined> {
    let next: Policy;
    try {
      next = this.options.loadPolicy();
      await this.checkGates(next);
    } catch (err) {
      this.options.log.error(`policy reload refused, the previous policy stays in force: ${(err as Error).message}`);
      this.lastReloadOutcome = { at: new Date().toISOString(), applied: false, reason: (err as Error).message };
      return err as Error;
    }
    const previous = this.current;
    this.current = next;
    this.loadedAt = new Date().toISOString();
    this.lastReloadOutcome = { at: this.loadedAt, applied: true };
    for (const section of transportChanges(previous, next)) {
      this.options.log.warn(`policy reload: ${section} changed, but transports are set up at start; restart shed-host-agent to apply it (the running ones keep their settings)`);
    }
    // Named servers and discovery follow the policy at once.
    this.followDiscovery(next);
    await this.updateServers(next);
    this.auditLog?.configure(next.audit.dir, { maxBytes: next.audit.maxBytes, keep: next.audit.keep });
    await this.direct?.setSheds(next.namedSheds());
    this.options.log.info(`policy reloaded from ${next.files.join(', ')}: ${next.namedSheds().length} named sheds${next.hasWildcard() ? ' and "*"' : ''}`);
    return undefined;
  }

  /** Throws, naming each shed and the fix, when a configured approval gate cannot work on this host. */
  private async checkGates(policy: Policy): Promise<void> {
    const problems = (await this.approvals?.check(policy)) ?? [];
    if (problems.length > 0) {
      throw new Error(`the approval gate cannot work on this host:\n  ${problems.join('\n  ')}`);
    }
  }

  async stop(): Promise<void> {
    this.stopRequested = true;
    this.phaseNow = 'stopping';
    this.turns.clear();
    this.approvals?.close();
    this.discovery?.stop();
    await this.serverSet?.stop();
    for (const t of this.transports.splice(0)) await t.stop();
    await this.dispatcher?.close();
    this.answered?.close();
    await this.audit?.close?.();
  }
}

/**
 * A discovered server with what the policy's `servers.<name>` sets for it
 * laid over: its pin, client certificate, namespaces, url, and token source
 * (a partial `bootstrap` completes the one discovery made).
 */
export function overlay(found: ServerConnection, settings: ServerSettings | undefined): ServerConnection {
  if (!settings) return found;
  const out: ServerConnection = { ...found, policyScope: settings.policyScope };
  if (settings.url !== undefined) out.url = settings.url;
  if (settings.tlsPin !== undefined) out.tlsPin = settings.tlsPin;
  if (settings.clientCert !== undefined) out.clientCert = settings.clientCert;
  if (settings.clientKey !== undefined) out.clientKey = settings.clientKey;
  if (settings.namespaces !== undefined) out.namespaces = settings.namespaces;
  const token = settings.token;
  if (token?.kind === 'bootstrap') {
    const base = found.token?.kind === 'bootstrap' ? found.token : undefined;
    const merged = { ...base, ...Object.fromEntries(Object.entries(token).filter(([, v]) => v !== undefined)) };
    if (isBootstrap(merged)) out.token = merged;
  } else if (token) {
    out.token = token;
  }
  return out;
}

function isBootstrap(t: Partial<Extract<TokenSourceSpec, { kind: 'bootstrap' }>>): t is Extract<TokenSourceSpec, { kind: 'bootstrap' }> {
  return t.kind === 'bootstrap' && typeof t.host === 'string' && typeof t.port === 'number' && typeof t.user === 'string'
    && typeof t.identityFile === 'string' && typeof t.knownHosts === 'string' && typeof t.clientName === 'string';
}

/** The transport sections (`server:`, `direct:`) that differ between two policies. */
function transportChanges(before: Policy | undefined, after: Policy): string[] {
  if (!before) return [];
  const changed: string[] = [];
  if (JSON.stringify(before.server) !== JSON.stringify(after.server)) changed.push('server:');
  if (JSON.stringify(before.direct) !== JSON.stringify(after.direct)) changed.push('direct:');
  return changed;
}
