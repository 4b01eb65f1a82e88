/**
 * What keeps one shed from flooding the audit trail. Every credential
 * served, and every failure to serve one, is written as its own line: those
 * requests have passed the shed's rate limits, so their number is bounded
 * by policy. Denials are not: a guest can send garbage, unknown operations
 * or requests over its rate limit as fast as it likes. So each shed may have
 * `audit.denials_per_minute` denials written one by one (a minute's worth
 * may come at once); past that they are counted, and once an interval
 * (60 s) the shed gets one summary line: how many, of which kinds, the
 * first and last request ids. Nothing is dropped: the lines written and the
 * counts of the summaries add up to every denial.
 */
import type { Logger } from '../../protocol/log.js';
import { BoundedMap } from '../bounded-map.js';
import { TokenBucket } from '../limits/limits.js';
import { SUMMARY_OP, type AuditEntry, type AuditSink } from './audit.js';

export interface AuditGovernorOptions {
  /** The shed's budget of denials written one by one, per minute (read on every denial: a reload applies at once). */
  denialsPerMinute: (shed: string) => number;
  log: Logger;
  /** How often summaries are written (60 s). */
  intervalMs?: number;
  now?: () => number;
}

/** Kinds of denial told apart in one summary; the rest are counted as "other". */
const MAX_KINDS = 8;

interface ShedBudget {
  bucket: TokenBucket;
  /** How the shed's requests arrive (the `server` of its lines). */
  server?: string;
  /** Denials counted since the last summary, by `CODE ns op`. */
  kinds: Map<string, number>;
  suppressed: number;
  namespaces: Set<string>;
  firstId?: string;
  lastId?: string;
}

export class AuditGovernor implements AuditSink {
  private readonly now: () => number;
  private readonly intervalMs: number;
  private readonly sheds: BoundedMap<string, ShedBudget>;
  private readonly timer: NodeJS.Timeout;
  private closed = false;
  /** Denials counted into summary lines instead of written one by one, since start (status). */
  summarised = 0;
  /** Summary lines written since start. */
  summaryLines = 0;
  /** Lines that could not be written (the request was served unaudited, or refused under audit.required), since start. */
  failedWrites = 0;
  /** When a line last failed to be written (ISO time). */
  lastFailureAt: string | undefined;

  constructor(private readonly sink: AuditSink, private readonly options: AuditGovernorOptions) {
    this.now = options.now ?? Date.now;
    this.intervalMs = options.intervalMs ?? 60_000;
    // A shed with counts waiting for their summary is never forgotten.
    this.sheds = new BoundedMap({ maxEntries: 4096, order: 'lru', evictable: (b) => b.suppressed === 0, now: this.now });
    this.timer = setInterval(() => void this.flush(), this.intervalMs);
    this.timer.unref();
  }

  get lastError(): string | undefined {
    return this.sink.lastError;
  }

  /** Write a line; a denial (with its error `code`, which the line itself may not name) may be counted instead. */
  async write(denial: AuditEntry & { code?: string }): Promise<void> {
    const { code, ...entry } = denial;
    if (entry.result !== 'denied' || this.closed) return this.pass(entry);
    const perMinute = Math.max(1, this.options.denialsPerMinute(entry.shed));
    const budget = this.sheds.getOrCreate(entry.shed, () => ({
      bucket: new TokenBucket(perMinute, perMinute, this.now()), server: entry.server, kinds: new Map(), suppressed: 0, namespaces: new Set(),
    }));
    // Too many sheds at once with counts pending: write it rather than lose it.
    if (!budget) return this.pass(entry);
    if (budget.bucket.perMinute !== perMinute) budget.bucket.resize(perMinute, perMinute, this.now());
    if (budget.bucket.take(this.now()) === 0) return this.pass(entry);
    if (budget.suppressed === 0) {
      this.options.log.warn(`shed ${entry.shed}: more than ${perMinute} denied requests a minute; the audit log sums up the rest once a minute`);
    }
    budget.suppressed += 1;
    this.summarised += 1;
    budget.firstId ??= entry.request_id;
    budget.lastId = entry.request_id;
    budget.namespaces.add(entry.ns);
    const kind = `${code ?? 'denied'} ${entry.ns} ${entry.op}`;
    if (budget.kinds.has(kind) || budget.kinds.size < MAX_KINDS) budget.kinds.set(kind, (budget.kinds.get(kind) ?? 0) + 1);
    else budget.kinds.set('other', (budget.kinds.get('other') ?? 0) + 1);
  }

  /** Write the summary of every shed that has counts. */
  async flush(): Promise<void> {
    const due = [...this.sheds.entries()].filter(([, b]) => b.suppressed > 0);
    await Promise.all(due.map(async ([shed, b]) => {
      const summary = this.summary(shed, b);
      b.suppressed = 0;
      b.kinds = new Map();
      b.namespaces = new Set();
      b.firstId = undefined;
      b.lastId = undefined;
      try {
        await this.pass(summary);
        this.summaryLines += 1;
      } catch (err) {
        this.options.log.error(`audit: the summary of ${summary.count} denied requests of shed ${shed} could not be written: ${(err as Error).message}`);
      }
    }));
  }

  /** Write through to the sink, counting what it could not write. */
  private pass(entry: AuditEntry): Promise<void> {
    return this.sink.write(entry).catch((err: unknown) => {
      this.failedWrites += 1;
      this.lastFailureAt = new Date(this.now()).toISOString();
      throw err;
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    await this.flush();
    await this.sink.close?.();
  }

  private summary(shed: string, b: ShedBudget): AuditEntry {
    const kinds = [...b.kinds].sort((x, y) => y[1] - x[1]).map(([kind, n]) => `${n} ${kind}`).join(', ');
    const ns = b.namespaces.size === 1 ? [...b.namespaces][0]! : '*';
    return {
      ts: new Date(this.now()).toISOString(),
      shed,
      ...(b.server !== undefined && { server: b.server }),
      ns,
      op: SUMMARY_OP,
      result: 'denied',
      detail: `${b.suppressed} more denied requests (over audit.denials_per_minute: ${b.bucket.perMinute}): ${kinds}; first request ${b.firstId}, last ${b.lastId}`,
      approval: 'none',
      request_id: b.lastId ?? '',
      count: b.suppressed,
    };
  }
}
