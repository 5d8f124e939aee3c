import { describe, expect, it } from 'vitest';
import { op1 } from '../lib/graph.js';
import { addon } from '../lib/native.js';
import { freshSeed } from './helpers.js';

describe('random_normal', () => {
  it('has the requested moments, respects truncation and is independent of the thread count', () => {
    const seed = freshSeed();
    const n = 200_000;
    const before = addon.getNumThreads();
    addon.setNumThreads(2);
    const a = op1('random_normal', [], { shape: [n], std: 0.5, mean: 1, seed, truncate: 2 }).toFloat32();
    addon.setNumThreads(1);
    const b = op1('random_normal', [], { shape: [n], std: 0.5, mean: 1, seed, truncate: 2 }).toFloat32();
    addon.setNumThreads(before);
    expect(Buffer.compare(Buffer.from(a.buffer), Buffer.from(b.buffer))).toBe(0);
    let m = 0;
    let lo = Infinity;
    let hi = -Infinity;
    for (const v of a) {
      m += v;
      lo = Math.min(lo, v);
      hi = Math.max(hi, v);
    }
    m /= n;
    let v2 = 0;
    for (const v of a) v2 += (v - m) ** 2;
    const sd = Math.sqrt(v2 / n);
    expect(Math.abs(m - 1)).toBeLessThan(0.01);
    // a normal truncated at +-2 sigma has std 0.8796 sigma
    expect(Math.abs(sd - 0.5 * 0.8796)).toBeLessThan(0.01);
    expect(lo).toBeGreaterThanOrEqual(0);
    expect(hi).toBeLessThanOrEqual(2);
    const c = op1('random_normal', [], { shape: [8], seed: seed + 1 }).toFloat32();
    expect(Array.from(c)).not.toEqual(Array.from(a.slice(0, 8)));
  });
  it('rejects a negative std', () => {
    expect(() => op1('random_normal', [], { shape: [2], std: -1 })).toThrow(RangeError);
  });
});
