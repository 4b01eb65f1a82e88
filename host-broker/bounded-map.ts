/**
 * The one shape of every table the broker keeps per shed or per request
 * (request ids seen, rate buckets, concurrency slots, approvals): a Map with
 * a size cap, an optional time to live, and a stated eviction order, so no
 * guest can grow one without bound or push another shed's entries out of a
 * shared table.
 *
 * - Expired entries are never returned, and are dropped as they are met.
 * - Order is insertion (`fifo`) or last use (`lru`: `get` refreshes).
 * - At the cap, `set` makes room by dropping the oldest entry that has
 *   expired or that the table may evict (`evictable`; any by default), in
 *   one pass from the oldest. When none may go, the new entry is refused:
 *   `set` returns false and the caller says no to its request rather than
 *   forget what is in use.
 */

export interface BoundedMapOptions<K, V> {
  maxEntries: number;
  /** Default time to live of an entry, in milliseconds; none when unset. */
  ttlMs?: number;
  /** `fifo` (default): the oldest inserted goes first; `lru`: the least recently used. */
  order?: 'fifo' | 'lru';
  /** Whether an entry may be evicted to make room (default: any). */
  evictable?: (value: V, key: K) => boolean;
  now?: () => number;
}

interface Slot<V> {
  value: V;
  /** Epoch ms after which the entry is gone; Infinity without a ttl. */
  expiresAt: number;
}

export class BoundedMap<K, V> {
  private readonly map = new Map<K, Slot<V>>();
  private readonly now: () => number;
  /** Entries evicted at the cap since creation (for status and tests). */
  evictions = 0;

  constructor(private readonly options: BoundedMapOptions<K, V>) {
    if (!(options.maxEntries >= 1)) throw new Error('BoundedMap needs maxEntries >= 1');
    this.now = options.now ?? Date.now;
  }

  get maxEntries(): number {
    return this.options.maxEntries;
  }

  get size(): number {
    return this.map.size;
  }

  get(key: K): V | undefined {
    const slot = this.map.get(key);
    if (!slot) return undefined;
    if (slot.expiresAt <= this.now()) {
      this.map.delete(key);
      return undefined;
    }
    if (this.options.order === 'lru') {
      this.map.delete(key);
      this.map.set(key, slot);
    }
    return slot.value;
  }

  has(key: K): boolean {
    return this.get(key) !== undefined;
  }

  /**
   * Store `value` as the newest entry (replacing one under the same key).
   * False when the table is full of entries that may not be evicted.
   */
  set(key: K, value: V, ttlMs = this.options.ttlMs): boolean {
    const expiresAt = ttlMs === undefined ? Infinity : this.now() + ttlMs;
    if (this.map.delete(key) || this.map.size < this.options.maxEntries || this.makeRoom()) {
      this.map.set(key, { value, expiresAt });
      return true;
    }
    return false;
  }

  /** The value under `key`, made by `create` and stored when absent; undefined when it cannot be stored. */
  getOrCreate(key: K, create: () => V): V | undefined {
    const found = this.get(key);
    if (found !== undefined) return found;
    const value = create();
    return this.set(key, value) ? value : undefined;
  }

  delete(key: K): boolean {
    return this.map.delete(key);
  }

  clear(): void {
    this.map.clear();
  }

  /** Live entries, oldest first. */
  *entries(): IterableIterator<[K, V]> {
    const now = this.now();
    for (const [key, slot] of this.map) if (slot.expiresAt > now) yield [key, slot.value];
  }

  /** Drop every expired entry. */
  sweep(): void {
    const now = this.now();
    for (const [key, slot] of this.map) if (slot.expiresAt <= now) this.map.delete(key);
  }

  /** Free one place: the oldest entry that has expired or may be evicted. */
  private makeRoom(): boolean {
    const now = this.now();
    const evictable = this.options.evictable;
    for (const [key, slot] of this.map) {
      const expired = slot.expiresAt <= now;
      if (expired || !evictable || evictable(slot.value, key)) {
        this.map.delete(key);
        if (!expired) this.evictions += 1;
        return true;
      }
    }
    return false;
  }
}
