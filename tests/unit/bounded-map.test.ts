import { expect } from 'chai';
import { BoundedMap } from '../../host-broker/bounded-map.js';

describe('BoundedMap', () => {
  it('keeps at most maxEntries, dropping the oldest inserted (fifo)', () => {
    const m = new BoundedMap<string, number>({ maxEntries: 3 });
    for (const [i, k] of ['a', 'b', 'c', 'd'].entries()) expect(m.set(k, i)).to.equal(true);
    expect([...m.entries()].map(([k]) => k)).to.deep.equal(['b', 'c', 'd']);
    expect(m.get('b')).to.equal(1);
    m.set('e', 4);
    expect(m.has('b')).to.equal(false);
    expect(m.evictions).to.equal(2);
  });

  it('drops the least recently used first in lru order', () => {
    const m = new BoundedMap<string, number>({ maxEntries: 3, order: 'lru' });
    m.set('a', 1);
    m.set('b', 2);
    m.set('c', 3);
    m.get('a');
    m.set('d', 4);
    expect([...m.entries()].map(([k]) => k)).to.deep.equal(['c', 'a', 'd']);
  });

  it('never returns an expired entry, and reuses its place before evicting a live one', () => {
    let now = 0;
    const m = new BoundedMap<string, number>({ maxEntries: 2, ttlMs: 100, now: () => now });
    m.set('short', 1, 10);
    m.set('long', 2);
    now = 50;
    expect(m.get('short')).to.equal(undefined);
    m.set('new', 3);
    expect(m.get('long')).to.equal(2);
    expect(m.evictions).to.equal(0);
    now = 200;
    expect(m.size).to.equal(2);
    expect([...m.entries()]).to.deep.equal([]);
    m.sweep();
    expect(m.size).to.equal(0);
  });

  it('refuses a new entry rather than evict one in use', () => {
    const m = new BoundedMap<string, { active: number }>({ maxEntries: 2, evictable: (v) => v.active === 0 });
    m.set('a', { active: 1 });
    m.set('b', { active: 0 });
    expect(m.set('c', { active: 1 })).to.equal(true);
    expect(m.has('b')).to.equal(false);
    expect(m.set('d', { active: 1 })).to.equal(false);
    expect(m.getOrCreate('d', () => ({ active: 1 }))).to.equal(undefined);
    expect(m.size).to.equal(2);
    // Replacing an existing key never needs room.
    expect(m.set('a', { active: 2 })).to.equal(true);
  });
});
