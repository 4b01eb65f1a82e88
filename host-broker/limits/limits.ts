/**
 * Abuse limits, checked by the dispatcher before a handler runs: a token
 * bucket per shed and namespace (`limits.{ssh,aws,docker}.{per_minute,burst}`),
 * and bounded concurrency per shed (`limits.max_concurrent` in flight; more
 * wait in a queue of at most QUEUE_FACTOR × max_concurrent; past that they
 * are refused). Both refusals are RATE_LIMITED, which the dispatcher audits
 * as denied.
 *
 * `status` (a quiet operation) takes no token, so a shed over its rate can
 * still be diagnosed, but it is not free: at most `max_concurrent` of a
 * shed's status requests run at once, and more are refused at once.
 *
 * The numbers come from the requesting shed's effective policy on every
 * request, so a reload applies at once; a bucket keeps its tokens (capped at
 * the new burst) when its rate changes.
 */
import { CommonCode } from '../../protocol/codes.js';
import type { Namespace } from '../../protocol/envelope.js';
import type { Admission } from '../dispatch.js';
import { BoundedMap } from '../bounded-map.js';
import { BrokerError } from '../handler.js';
import { SECTION_OF, type Bucket } from '../policy/effective.js';

/** Waiting requests a shed may have, per allowed concurrent one. */
export const QUEUE_FACTOR = 4;
/** Buckets and slot tables kept; past that, idle ones are forgotten (a new bucket starts full, so nothing changes for their sheds). */
const MAX_TRACKED = 4096;

export class TokenBucket {
  private tokens: number;
  private last: number;

  constructor(
    public perMinute: number,
    public burst: number,
    now: number,
  ) {
    this.tokens = burst;
    this.last = now;
  }

  /** Take one token: 0 when taken, else the milliseconds until one is there. */
  take(now: number): number {
    this.refill(now);
    if (this.tokens >= 1) {
      this.tokens -= 1;
      return 0;
    }
    return Math.ceil(((1 - this.tokens) * 60_000) / this.perMinute);
  }

  /** Give back a token taken for a request that was then refused for another reason. */
  refund(): void {
    this.tokens = Math.min(this.burst, this.tokens + 1);
  }

  /** Adopt a new rate and burst (a policy reload). */
  resize(perMinute: number, burst: number, now: number): void {
    this.refill(now);
    this.perMinute = perMinute;
    this.burst = burst;
    this.tokens = Math.min(this.tokens, burst);
  }

  full(now: number): boolean {
    this.refill(now);
    return this.tokens >= this.burst;
  }

  private refill(now: number): void {
    const elapsed = Math.max(0, now - this.last);
    this.last = now;
    this.tokens = Math.min(this.burst, this.tokens + (elapsed * this.perMinute) / 60_000);
  }
}

interface Slots {
  active: number;
  waiting: Array<() => void>;
}

export interface LimitsSnapshot {
  /** Per shed: requests in flight and waiting. */
  sheds: Record<string, { active: number; waiting: number }>;
  buckets: number;
}

export class Limits {
  private readonly buckets: BoundedMap<string, TokenBucket>;
  private readonly slots: BoundedMap<string, Slots>;
  private readonly quietSlots: BoundedMap<string, Slots>;

  constructor(private readonly now: () => number = Date.now) {
    const idle = (s: Slots) => s.active === 0 && s.waiting.length === 0;
    // Insertion order: a full bucket is the one to forget, whenever it was made.
    this.buckets = new BoundedMap({ maxEntries: MAX_TRACKED, evictable: (b) => b.full(this.now()), now });
    this.slots = new BoundedMap({ maxEntries: MAX_TRACKED, evictable: idle, now });
    this.quietSlots = new BoundedMap({ maxEntries: MAX_TRACKED, evictable: idle, now });
  }

  /** The dispatcher's admission hook. */
  readonly admission: Admission = async ({ shed, namespace, quiet }) => {
    if (quiet) return this.acquire(this.quietSlots, shed.name, shed.limits.max_concurrent, 0);
    const bucket = this.bucketFor(shed.name, namespace, shed.limits[SECTION_OF[namespace]]);
    const waitMs = bucket.take(this.now());
    if (waitMs > 0) {
      const section = SECTION_OF[namespace];
      throw new BrokerError(
        CommonCode.RATE_LIMITED,
        `shed ${shed.name} is over its ${namespace} rate limit (${bucket.perMinute} per minute, burst ${bucket.burst}); retry in ${Math.ceil(waitMs / 1000)} s, or raise limits.${section} in the host policy`,
        { detail: `rate limit ${section} ${bucket.perMinute}/min burst ${bucket.burst}` },
      );
    }
    try {
      return await this.acquire(this.slots, shed.name, shed.limits.max_concurrent, QUEUE_FACTOR);
    } catch (err) {
      bucket.refund();
      throw err;
    }
  };

  snapshot(): LimitsSnapshot {
    const sheds: LimitsSnapshot['sheds'] = {};
    for (const [name, s] of this.slots.entries()) sheds[name] = { active: s.active, waiting: s.waiting.length };
    return { sheds, buckets: this.buckets.size };
  }

  private bucketFor(shed: string, namespace: Namespace, config: Bucket): TokenBucket {
    const key = `${shed}\0${namespace}`;
    const now = this.now();
    let bucket = this.buckets.get(key);
    if (!bucket) {
      bucket = new TokenBucket(config.per_minute, config.burst, now);
      if (!this.buckets.set(key, bucket)) throw tooManySheds();
    } else if (bucket.perMinute !== config.per_minute || bucket.burst !== config.burst) {
      bucket.resize(config.per_minute, config.burst, now);
    }
    return bucket;
  }

  /** A slot among `max` running, with room for `max × queueFactor` waiting; refused past that. */
  private async acquire(table: BoundedMap<string, Slots>, shed: string, max: number, queueFactor: number): Promise<() => void> {
    const s = table.getOrCreate(shed, () => ({ active: 0, waiting: [] }));
    if (!s) throw tooManySheds();
    if (s.active < max && s.waiting.length === 0) {
      s.active += 1;
    } else if (s.waiting.length >= max * queueFactor) {
      throw new BrokerError(
        CommonCode.RATE_LIMITED,
        `shed ${shed} has too many requests in flight (${s.active} running${queueFactor ? `, ${s.waiting.length} waiting` : ''}); retry shortly, or raise limits.max_concurrent in the host policy`,
        { detail: queueFactor ? `concurrency ${max} queue ${max * queueFactor} full` : `concurrency ${max} full` },
      );
    } else {
      // The releasing request hands its slot over: `active` stays as it is.
      await new Promise<void>((resolve) => s.waiting.push(resolve));
    }
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = s.waiting.shift();
      if (next) {
        next();
      } else {
        s.active -= 1;
        if (s.active === 0 && table.get(shed) === s) table.delete(shed);
      }
    };
  }
}

function tooManySheds(): BrokerError {
  return new BrokerError(CommonCode.RATE_LIMITED, 'the host broker is tracking the limits of too many busy sheds at once; retry shortly', { detail: 'limit tables full' });
}
