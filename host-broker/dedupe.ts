/**
 * A bounded, time-windowed record of request ids already taken: shed-server
 * re-delivers un-answered requests after a reconnect, and each id must be
 * answered at most once.
 */
export class DedupeWindow {
  /** id → time first seen; Map keeps insertion order, so the oldest is first. */
  private readonly seen = new Map<string, number>();

  constructor(
    readonly windowMs = 10 * 60_000,
    readonly maxEntries = 100_000,
    private readonly now: () => number = Date.now,
  ) {}

  /** True the first time an id is offered within the window; false for a repeat. */
  take(id: string): boolean {
    const t = this.now();
    this.expire(t);
    if (this.seen.has(id)) return false;
    this.seen.set(id, t);
    if (this.seen.size > this.maxEntries) {
      const oldest = this.seen.keys().next().value;
      if (oldest !== undefined) this.seen.delete(oldest);
    }
    return true;
  }

  get size(): number {
    return this.seen.size;
  }

  private expire(t: number): void {
    for (const [id, at] of this.seen) {
      if (t - at < this.windowMs) break;
      this.seen.delete(id);
    }
  }
}
