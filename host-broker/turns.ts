/**
 * Fair turns between sheds. Each turn of the event loop handles at most
 * `budget` requests of one shed; more wait in the shed's queue (`limit` at
 * most; past that the caller is told no at once) and are taken in later
 * turns, in order, each shed in its own queue. A shed that sends thousands
 * of requests at once (a burst on its socket, or on shed-server's stream)
 * thus makes a turn at most `budget` requests longer for every other shed;
 * a shed that sends one at a time is served at once, with no extra hop.
 */
export interface FairTurnsOptions {
  /** Requests of one shed handled per turn (8). */
  budget?: number;
  /** Requests of one shed waiting; past that, `run` returns false (256). */
  limit?: number;
}

interface Lane {
  queue: Array<() => void>;
  /** Handled in the current turn. */
  count: number;
}

export class FairTurns {
  readonly budget: number;
  readonly limit: number;
  private readonly lanes = new Map<string, Lane>();
  private scheduled = false;

  constructor(options: FairTurnsOptions = {}) {
    this.budget = options.budget ?? 8;
    this.limit = options.limit ?? 256;
  }

  /** Run `job` for `shed` now, or in a later turn; false when the shed's queue is full (the job will not run). */
  run(shed: string, job: () => void): boolean {
    let lane = this.lanes.get(shed);
    if (!lane) {
      lane = { queue: [], count: 0 };
      this.lanes.set(shed, lane);
    }
    if (lane.queue.length === 0 && lane.count < this.budget) {
      lane.count += 1;
      this.schedule();
      job();
      return true;
    }
    if (lane.queue.length >= this.limit) return false;
    lane.queue.push(job);
    this.schedule();
    return true;
  }

  /** Requests of `shed` waiting for their turn. */
  waiting(shed: string): number {
    return this.lanes.get(shed)?.queue.length ?? 0;
  }

  /** Drop what waits (shutdown). */
  clear(): void {
    for (const lane of this.lanes.values()) lane.queue.length = 0;
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => this.turn());
  }

  /** A new turn: each shed's count starts again, and each queue gives up to `budget` jobs. */
  private turn(): void {
    this.scheduled = false;
    for (const [shed, lane] of this.lanes) {
      lane.count = 0;
      const batch = lane.queue.splice(0, this.budget);
      if (batch.length) {
        lane.count = batch.length;
        this.schedule();
        for (const job of batch) job();
      } else {
        // An idle shed holds nothing.
        this.lanes.delete(shed);
      }
    }
  }
}
