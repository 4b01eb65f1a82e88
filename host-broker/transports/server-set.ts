/**
 * Many shed servers at once: one ShedServerTransport per ServerConnection,
 * started and stopped as the list changes (the policy's `servers:`, and
 * discovery's servers as config.yaml is edited). Each server's requests go
 * to the sink made for that server (`sinkFor`), so the dispatcher knows
 * which server, and so which namespace of shed names, a request came from.
 *
 * A connection whose settings change is restarted; one that cannot start (a
 * bad URL, an unreadable token file) is logged and reported as stopped, and
 * tried again when its settings next change. Updates apply in order; a
 * server that is slow to start does not hold up the next update.
 */
import type { Logger } from '../../protocol/log.js';
import type { ServerConnection } from './server-config.js';
import { ShedServerTransport, type ShedServerTimings } from './shed-server.js';
import type { RequestSink } from './transport.js';

export interface ServerSetOptions {
  log: Logger;
  /** The sink for one server's requests. */
  sinkFor: (server: ServerConnection) => RequestSink;
  /** Namespaces for a server that names none (the broker's handlers). */
  defaultNamespaces?: readonly string[];
  timings?: Partial<ShedServerTimings>;
}

interface Running {
  connection: ServerConnection;
  /** JSON of the connection, to see a change. */
  key: string;
  transport?: ShedServerTransport;
  /** Why it is not running (construction or start failed). */
  problem?: string;
  started: Promise<void>;
}

export class ServerSet {
  private readonly running = new Map<string, Running>();
  private chain: Promise<void> = Promise.resolve();
  private stopped = false;

  constructor(private readonly options: ServerSetOptions) {}

  /**
   * Serve exactly these servers (by name; a later duplicate name is
   * refused). Resolves once removed servers are stopped and added ones have
   * had their first attempt to connect.
   */
  update(servers: readonly ServerConnection[]): Promise<void> {
    let starts: Promise<void>[] = [];
    const step = this.chain.then(async () => {
      starts = await this.apply(servers);
    });
    this.chain = step.catch(() => undefined);
    return step.then(() => Promise.all(starts)).then(() => undefined);
  }

  /** Names of the servers served (running or failed). */
  get names(): string[] {
    return [...this.running.keys()].sort();
  }

  /** Per server, per namespace: `connected`, `reconnecting: <reason>` or `stopped`. */
  state(): Record<string, Record<string, string>> {
    const out: Record<string, Record<string, string>> = {};
    for (const [name, r] of [...this.running].sort(([a], [b]) => a.localeCompare(b))) {
      if (r.transport && !r.problem) {
        out[name] = r.transport.state();
      } else {
        const namespaces = r.connection.namespaces ?? this.options.defaultNamespaces ?? [];
        out[name] = Object.fromEntries(namespaces.map((ns) => [ns, 'stopped']));
      }
    }
    return out;
  }

  /** Each server served or refused, in name order, with its URL and state (for status). */
  entries(): Array<{ name: string; url: string; state: Record<string, string>; problem?: string }> {
    const states = this.state();
    return [...this.running.keys()].sort().map((name) => {
      const r = this.running.get(name)!;
      return { name, url: r.connection.url, state: states[name] ?? {}, ...(r.problem !== undefined && { problem: r.problem }) };
    });
  }


  async stop(): Promise<void> {
    this.stopped = true;
    await this.update([]);
  }

  private async apply(servers: readonly ServerConnection[]): Promise<Promise<void>[]> {
    const { log } = this.options;
    const wanted = new Map<string, ServerConnection>();
    for (const s of this.stopped ? [] : servers) {
      if (wanted.has(s.name)) {
        log.error(`server ${s.name} is named twice; serving the first (rename one of them)`);
        continue;
      }
      wanted.set(s.name, s);
    }
    const stops: Promise<void>[] = [];
    for (const [name, r] of this.running) {
      const next = wanted.get(name);
      if (next && JSON.stringify(next) === r.key) continue;
      this.running.delete(name);
      if (r.transport) {
        log.info(`server ${name}: ${next ? 'settings changed, restarting' : 'no longer listed, stopping'} (${r.connection.url})`);
        stops.push(r.transport.stop().catch((err: Error) => log.error(`server ${name}: stopping failed: ${err.message}`)));
      }
    }
    await Promise.all(stops);
    const starts: Promise<void>[] = [];
    for (const [name, connection] of wanted) {
      if (this.running.has(name)) continue;
      const r: Running = { connection, key: JSON.stringify(connection), started: Promise.resolve() };
      this.running.set(name, r);
      try {
        r.transport = new ShedServerTransport({
          server: connection,
          log,
          defaultNamespaces: this.options.defaultNamespaces,
          timings: this.options.timings,
        });
      } catch (err) {
        r.problem = (err as Error).message;
        log.error(`server ${name} is not served: ${r.problem}`);
        continue;
      }
      const transport = r.transport;
      r.started = transport.start(this.options.sinkFor(connection)).then(
        () => log.info(`serving ${transport.description}`),
        async (err: Error) => {
          r.problem = err.message;
          log.error(`server ${name} is not served: ${err.message}`);
          await transport.stop().catch(() => undefined);
        },
      );
      starts.push(r.started);
    }
    return starts;
  }
}
