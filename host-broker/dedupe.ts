/**
 * The request ids already taken, per shed, for a time window: shed-server
 * re-delivers un-answered requests after a reconnect, and each id must be
 * answered at most once. Each shed has its own bounded table, so a shed
 * that sends ids by the thousand pushes out only its own.
 */
import { BoundedMap } from './bounded-map.js';

export interface DedupeOptions {
  /** How long an id is remembered (10 min). */
  windowMs?: number;
  /** Ids remembered per shed; past that its oldest are forgotten (10,000). */
  perShed?: number;
  /** Sheds remembered; past that the least recently active is forgotten (4096). */
  maxSheds?: number;
  now?: () => number;
  /** Told of every id taken (answered-ids.ts keeps them across a restart). */
  onTake?: (shed: string, id: string, at: number) => void;
}

export class DedupeWindow {
  readonly windowMs: number;
  private readonly perShed: number;
  private readonly now: () => number;
  private readonly sheds: BoundedMap<string, BoundedMap<string, true>>;
  private readonly onTake: DedupeOptions['onTake'];

  constructor(options: DedupeOptions = {}) {
    this.windowMs = options.windowMs ?? 10 * 60_000;
    this.perShed = options.perShed ?? 10_000;
    this.now = options.now ?? Date.now;
    this.onTake = options.onTake;
    this.sheds = new BoundedMap({ maxEntries: options.maxSheds ?? 4096, order: 'lru', ttlMs: this.windowMs, now: this.now });
  }

  /** True the first time `shed` offers `id` within the window; false for a repeat. */
  take(shed: string, id: string): boolean {
    let seen = this.sheds.get(shed);
    if (!seen) {
      seen = new BoundedMap({ maxEntries: this.perShed, ttlMs: this.windowMs, now: this.now });
    }
    // Re-set on every take: the shed's table lives as long as its newest id.
    this.sheds.set(shed, seen);
    if (seen.has(id)) return false;
    seen.set(id, true);
    this.onTake?.(shed, id, this.now());
    return true;
  }

  /** Remember an id taken at `at` (before a restart), for what is left of the window. */
  seed(shed: string, id: string, at: number): void {
    const left = this.windowMs - (this.now() - at);
    if (left <= 0) return;
    let seen = this.sheds.get(shed);
    if (!seen) seen = new BoundedMap({ maxEntries: this.perShed, ttlMs: this.windowMs, now: this.now });
    this.sheds.set(shed, seen);
    seen.set(id, true, left);
  }

  /** Ids remembered, across sheds. */
  get size(): number {
    let n = 0;
    for (const [, seen] of this.sheds.entries()) n += seen.size;
    return n;
  }
}
