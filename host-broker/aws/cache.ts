/**
 * Issued role credentials, per (shed, role, policy hash): served while more
 * than `refresh_before` remains, refreshed by exactly one STS call however
 * many requests wait for it, and never poisoned by a failed refresh (the next
 * caller tries again).
 */

export interface IssuedCredentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken: string;
  /** Epoch milliseconds. */
  expiresAt: number;
  /** Epoch milliseconds, when the host received them. */
  issuedAt: number;
  /** The assumed-role ARN STS answered (for logs and audit). */
  assumedRoleArn?: string;
}

export interface CacheHit {
  credentials: IssuedCredentials;
  /** How it was served: from the cache, by a refresh this call started or joined, or (refresh failed) the still-valid old set. */
  source: 'cache' | 'sts' | 'stale';
}

/** Below this much validity, an old set is not served even when a refresh fails. */
export const STALE_FLOOR_MS = 60_000;

export class CredentialCache {
  private readonly entries = new Map<string, IssuedCredentials>();
  private readonly inflight = new Map<string, Promise<IssuedCredentials>>();
  /** The key each shed last asked with: an entry under an older key is dropped when a new one is stored. */
  private readonly currentKey = new Map<string, string>();

  constructor(private readonly now: () => number = Date.now) {}

  static key(shed: string, role: string, policyHash: string): string {
    return `${shed}\u0000${role}\u0000${policyHash}`;
  }

  /** The entry for a key while it is still valid. */
  peek(key: string): IssuedCredentials | undefined {
    const entry = this.entries.get(key);
    return entry && entry.expiresAt > this.now() ? entry : undefined;
  }

  /**
   * The credentials for `key`, from the cache while more than `refreshBeforeMs`
   * remains (at most half their lifetime), else from `refresh`, which runs once
   * for all concurrent callers of the same key.
   */
  async get(shed: string, key: string, refreshBeforeMs: number, refresh: () => Promise<IssuedCredentials>, onStale?: (err: unknown) => void): Promise<CacheHit> {
    this.currentKey.set(shed, key);
    const entry = this.entries.get(key);
    if (entry && !this.needsRefresh(entry, refreshBeforeMs)) return { credentials: entry, source: 'cache' };
    let flight = this.inflight.get(key);
    if (!flight) {
      flight = refresh().then((fresh) => {
        this.store(shed, key, fresh);
        return fresh;
      });
      const settled = flight.finally(() => this.inflight.delete(key));
      settled.catch(() => undefined);
      this.inflight.set(key, flight);
    }
    try {
      return { credentials: await flight, source: 'sts' };
    } catch (err) {
      const old = this.entries.get(key);
      if (old && old.expiresAt - this.now() > STALE_FLOOR_MS) {
        onStale?.(err);
        return { credentials: old, source: 'stale' };
      }
      throw err;
    }
  }

  /** Forget everything (the broker stops). */
  clear(): void {
    this.entries.clear();
    this.currentKey.clear();
  }

  get size(): number {
    return this.entries.size;
  }

  private needsRefresh(entry: IssuedCredentials, refreshBeforeMs: number): boolean {
    const lifetime = entry.expiresAt - entry.issuedAt;
    const margin = Math.min(refreshBeforeMs, lifetime / 2);
    return entry.expiresAt - this.now() <= margin;
  }

  private store(shed: string, key: string, fresh: IssuedCredentials): void {
    // A refresh that finishes after the shed's policy changed serves its
    // waiters but is not kept: the next request uses the new policy.
    if (this.currentKey.get(shed) !== key) return;
    const now = this.now();
    for (const [k, e] of this.entries) {
      if ((k.startsWith(`${shed}\u0000`) && k !== key) || e.expiresAt <= now) this.entries.delete(k);
    }
    this.entries.set(key, fresh);
  }
}
