/**
 * A small seeded PRNG for training: xoshiro128** (32-bit state words, period 2^128 - 1) seeded
 * through splitmix32, with uniform / integer / normal draws, shuffles, and a state that can be
 * saved as JSON and restored exactly (used for data shuffling, augmentation and keep-count
 * sampling, and saved in training checkpoints so a resumed run draws the same numbers).
 */
import { checkInt, rangeError, typeError } from '../errors.js';

/** The JSON-serializable state of a `TrainRng` (see `state()` / `restore()`). */
export interface RngState {
  /** Always `'xoshiro128**'`. */
  readonly algorithm: 'xoshiro128**';
  /** The four 32-bit state words, as unsigned integers. */
  readonly s: readonly [number, number, number, number];
  /** The second value of the last Box-Muller pair, not yet returned by `normal()` (or null). */
  readonly spare: number | null;
}

/** One step of splitmix32 on `x` (an unsigned 32-bit integer): returns [next x, output]. */
function splitmix32(x: number): [number, number] {
  const nx = (x + 0x9e3779b9) >>> 0;
  let z = nx;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
  return [nx, (z ^ (z >>> 16)) >>> 0];
}

/** Folds one 32-bit word into a running 32-bit hash (murmur3-style mixing). */
function mixWord(h: number, w: number): number {
  let k = Math.imul(w >>> 0, 0xcc9e2d51);
  k = (k << 15) | (k >>> 17);
  k = Math.imul(k, 0x1b873593);
  h ^= k;
  h = (h << 13) | (h >>> 19);
  return (Math.imul(h, 5) + 0xe6546b64) >>> 0;
}

function finalize(h: number, len: number): number {
  h ^= len;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/**
 * Derives a 32-bit seed from a base seed and any number of parts (non-negative safe integers or
 * strings), e.g. `deriveSeed(seed, 'shuffle', epoch)`. Distinct part lists give unrelated seeds,
 * so independent streams (per epoch, per sample, per purpose) need no shared generator.
 */
export function deriveSeed(seed: number, ...parts: readonly (number | string)[]): number {
  checkInt('seed', seed, 0, Number.MAX_SAFE_INTEGER);
  let h = 0x2545f491;
  let len = 0;
  const word = (w: number) => {
    h = mixWord(h, w);
    ++len;
  };
  word(seed % 4294967296);
  word(Math.floor(seed / 4294967296));
  for (const [i, p] of parts.entries()) {
    if (typeof p === 'number') {
      checkInt(`parts[${i}]`, p, 0, Number.MAX_SAFE_INTEGER);
      word(0x6e756d00); // tag: number
      word(p % 4294967296);
      word(Math.floor(p / 4294967296));
    } else if (typeof p === 'string') {
      word(0x73747200 ^ (p.length & 0xff)); // tag: string
      word(p.length);
      for (let j = 0; j < p.length; ++j) word(p.charCodeAt(j));
    } else {
      typeError(`parts[${i}]`, 'a non-negative integer or a string', p);
    }
  }
  return finalize(h, len);
}

const TWO_POW_32 = 4294967296;

/** A seeded xoshiro128** generator. Not for cryptography. */
export class TrainRng {
  private s0 = 0;
  private s1 = 0;
  private s2 = 0;
  private s3 = 0;
  private spare: number | null = null;

  /**
   * @param seed a non-negative safe integer; equal seeds give equal streams.
   */
  constructor(seed = 0) {
    checkInt('seed', seed, 0, Number.MAX_SAFE_INTEGER);
    // Both halves of the seed feed splitmix32, whose outputs fill the four state words.
    let x = (seed % TWO_POW_32) ^ Math.imul(Math.floor(seed / TWO_POW_32), 0x27d4eb2f);
    const w: number[] = [];
    for (let i = 0; i < 4; ++i) {
      const [nx, out] = splitmix32(x >>> 0);
      x = nx;
      w.push(out);
    }
    [this.s0, this.s1, this.s2, this.s3] = w as [number, number, number, number];
    if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s0 = 1; // the all-zero state is a fixed point
  }

  /** A generator for `deriveSeed(seed, ...parts)`. */
  static derive(seed: number, ...parts: readonly (number | string)[]): TrainRng {
    return new TrainRng(deriveSeed(seed, ...parts));
  }

  /** A generator restored from a saved state. */
  static fromState(state: RngState): TrainRng {
    const r = new TrainRng(0);
    r.restore(state);
    return r;
  }

  /** The next 32-bit output, an unsigned integer in [0, 2^32). */
  nextU32(): number {
    const s0 = this.s0;
    const s1 = this.s1;
    const s2 = this.s2;
    const s3 = this.s3;
    const m = Math.imul(s1, 5);
    const r = Math.imul((m << 7) | (m >>> 25), 9) >>> 0;
    const t = s1 << 9;
    const n2 = s2 ^ s0;
    const n3 = s3 ^ s1;
    const n1 = s1 ^ n2;
    const n0 = s0 ^ n3;
    this.s0 = n0 >>> 0;
    this.s1 = n1 >>> 0;
    this.s2 = (n2 ^ t) >>> 0;
    this.s3 = ((n3 << 11) | (n3 >>> 21)) >>> 0;
    return r;
  }

  /** A double in [0, 1) with 53 random bits. */
  next(): number {
    const hi = this.nextU32() >>> 5; // 27 bits
    const lo = this.nextU32() >>> 6; // 26 bits
    return (hi * 67108864 + lo) / 9007199254740992;
  }

  /** A double uniform in [lo, hi). */
  uniform(lo = 0, hi = 1): number {
    if (typeof lo !== 'number' || !Number.isFinite(lo)) typeError('lo', 'a finite number', lo);
    if (typeof hi !== 'number' || !Number.isFinite(hi)) typeError('hi', 'a finite number', hi);
    if (!(hi >= lo)) rangeError('hi', `a number >= lo (${lo})`, hi);
    const v = lo + (hi - lo) * this.next();
    return v < hi ? v : lo; // rounding can reach hi; keep the interval half-open
  }

  /** An integer uniform in [0, n), without modulo bias; n in [1, 2^53]. */
  int(n: number): number {
    checkInt('n', n, 1, 9007199254740992);
    if (n <= TWO_POW_32) {
      // Rejection: accept r below the largest multiple of n that fits in 32 bits.
      const limit = TWO_POW_32 - (TWO_POW_32 % n);
      for (;;) {
        const r = this.nextU32();
        if (r < limit) return r % n;
      }
    }
    const total = 9007199254740992;
    const limit = total - (total % n);
    for (;;) {
      const r = (this.nextU32() >>> 11) * TWO_POW_32 + this.nextU32(); // 53 bits
      if (r < limit) return r % n;
    }
  }

  /** An integer uniform in [lo, hi] (both inclusive). */
  intRange(lo: number, hi: number): number {
    checkInt('lo', lo, -Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER);
    checkInt('hi', hi, lo, Number.MAX_SAFE_INTEGER);
    return lo + this.int(hi - lo + 1);
  }

  /** True with probability p. */
  bernoulli(p = 0.5): boolean {
    if (typeof p !== 'number' || !(p >= 0 && p <= 1)) rangeError('p', 'a number in [0, 1]', p);
    return this.next() < p;
  }

  /** A normal draw (Box-Muller; pairs are cached, and the cache is part of the state). */
  normal(mean = 0, std = 1): number {
    if (typeof mean !== 'number' || !Number.isFinite(mean)) typeError('mean', 'a finite number', mean);
    if (typeof std !== 'number' || !(std >= 0) || !Number.isFinite(std)) rangeError('std', 'a finite number >= 0', std);
    let z: number;
    if (this.spare !== null) {
      z = this.spare;
      this.spare = null;
    } else {
      const u1 = 1 - this.next(); // (0, 1]
      const u2 = this.next();
      const r = Math.sqrt(-2 * Math.log(u1));
      z = r * Math.cos(2 * Math.PI * u2);
      this.spare = r * Math.sin(2 * Math.PI * u2);
    }
    return mean + std * z;
  }

  /** Shuffles `a` in place (Fisher-Yates) and returns it. */
  shuffle<T extends { length: number; [i: number]: unknown }>(a: T): T {
    for (let i = a.length - 1; i > 0; --i) {
      const j = this.int(i + 1);
      const t = a[i];
      a[i] = a[j];
      a[j] = t;
    }
    return a;
  }

  /** A uniformly random permutation of 0..n-1. */
  permutation(n: number): Uint32Array {
    checkInt('n', n, 0, 0xffffffff);
    const p = new Uint32Array(n);
    for (let i = 0; i < n; ++i) p[i] = i;
    return this.shuffle(p);
  }

  /** The current state, as a plain JSON-serializable object. */
  state(): RngState {
    return { algorithm: 'xoshiro128**', s: [this.s0, this.s1, this.s2, this.s3], spare: this.spare };
  }

  /** Restores a state returned by `state()` (possibly after a JSON round trip). */
  restore(state: RngState): void {
    if (state === null || typeof state !== 'object') typeError('state', 'an RngState object', state);
    if (state.algorithm !== 'xoshiro128**') typeError('state.algorithm', "'xoshiro128**'", state.algorithm);
    const s = state.s as unknown;
    if (!Array.isArray(s) || s.length !== 4) typeError('state.s', 'an array of 4 unsigned 32-bit integers', s);
    for (let i = 0; i < 4; ++i) checkInt(`state.s[${i}]`, s[i], 0, 0xffffffff);
    if ((s[0] | s[1] | s[2] | s[3]) === 0) rangeError('state.s', 'not all zero (the all-zero state is invalid)', 0);
    const spare = state.spare as unknown;
    if (spare !== null && (typeof spare !== 'number' || !Number.isFinite(spare)))
      typeError('state.spare', 'null or a finite number', spare);
    [this.s0, this.s1, this.s2, this.s3] = s as [number, number, number, number];
    this.spare = spare as number | null;
  }

  /** An independent copy with the same state. */
  clone(): TrainRng {
    return TrainRng.fromState(this.state());
  }
}
