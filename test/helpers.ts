// Shared test utilities: seeded random inputs (a fresh seed per run unless MERGEVQ_SEED is set,
// printed on failure), float64 comparisons, poisoned outputs, finite-difference gradient checks.
import { addon } from '../lib/native.js';
import { Tensor } from '../lib/tensor.js';

const baseSeed = process.env.MERGEVQ_SEED ? Number(process.env.MERGEVQ_SEED) : (Date.now() ^ (process.pid << 16)) >>> 0;
let seedCounter = 0;

/** A fresh seed for one test; reproducible with MERGEVQ_SEED=<base>. */
export function freshSeed(): number {
  return (baseSeed + 0x9e3779b9 * ++seedCounter) >>> 0;
}
export function seedInfo(seed: number): string {
  return `seed ${seed} (base MERGEVQ_SEED=${baseSeed})`;
}

/** A small fast PRNG (mulberry32) with normal and uniform draws. */
export class Rng {
  private s: number;
  constructor(readonly seed: number = freshSeed()) {
    this.s = seed >>> 0;
  }
  next(): number {
    let t = (this.s = (this.s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  uniform(lo = -1, hi = 1): number {
    return lo + (hi - lo) * this.next();
  }
  normal(): number {
    const u = Math.max(this.next(), 1e-12);
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * this.next());
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  /** Float32Array of n normal draws times `scale`. */
  randn(n: number, scale = 1): Float32Array {
    const a = new Float32Array(n);
    for (let i = 0; i < n; ++i) a[i] = this.normal() * scale;
    return a;
  }
  /** A float32 Tensor of normal draws. */
  tensor(shape: number[], scale = 1): Tensor {
    return Tensor.from(
      this.randn(
        shape.reduce((a, b) => a * b, 1),
        scale,
      ),
      shape,
    );
  }
}

/** ||a - b|| / ||b|| in float64 (0 when both are zero). */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`relErr: lengths differ (${a.length} vs ${b.length})`);
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; ++i) {
    const d = a[i]! - b[i]!;
    num += d * d;
    den += b[i]! * b[i]!;
  }
  if (den === 0) return Math.sqrt(num);
  return Math.sqrt(num / den);
}

/** Max |a - b|. NaN anywhere in `a` gives Infinity (an unwritten, poisoned element). */
export function maxAbsErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; ++i) {
    if (Number.isNaN(a[i]!)) return Infinity;
    m = Math.max(m, Math.abs(a[i]! - b[i]!));
  }
  return m;
}

/** Runs fn with native allocations poisoned (NaN-filled), so unwritten outputs show as NaN. */
export function withPoison<T>(fn: () => T): T {
  addon.setPoison(true);
  try {
    return fn();
  } finally {
    addon.setPoison(false);
  }
}

/** True when no element is NaN (poisoned outputs that were never written are NaN). */
export function allFinite(a: ArrayLike<number>): boolean {
  for (let i = 0; i < a.length; ++i) if (!Number.isFinite(a[i]!)) return false;
  return true;
}

/**
 * Central finite differences of a scalar function of one float32 input, evaluated in float64
 * by the caller's `f` (which receives a perturbed copy). Checks `count` random coordinates.
 * Returns the max relative error between `analytic` and the numeric estimate at those coordinates.
 */
export function finiteDiffCheck(
  x: Float32Array,
  f: (x: Float32Array) => number,
  analytic: ArrayLike<number>,
  opts: { eps?: number; count?: number; rng?: Rng; richardson?: boolean } = {},
): { maxRel: number; worst: { i: number; numeric: number; analytic: number } } {
  const eps = opts.eps ?? 1e-2;
  const rng = opts.rng ?? new Rng();
  const count = Math.min(opts.count ?? 24, x.length);
  let maxRel = 0;
  let worst = { i: -1, numeric: 0, analytic: 0 };
  const scale = Math.max(1e-3, ...Array.from(analytic, (v) => Math.abs(v)).slice(0, 4096));
  for (let c = 0; c < count; ++c) {
    const i = count === x.length ? c : rng.int(x.length);
    const central = (step: number) => {
      const xp = Float32Array.from(x);
      const xm = Float32Array.from(x);
      xp[i] = x[i]! + step;
      xm[i] = x[i]! - step;
      const h = (xp[i]! - xm[i]!) / 2; // the step actually representable in float32
      return (f(xp) - f(xm)) / (2 * h);
    };
    // Richardson: (4 D(eps/2) - D(eps)) / 3 cancels the eps^2 truncation term of the central
    // difference, for float32 functions whose rounding needs a large step.
    const numeric = opts.richardson ? (4 * central(eps / 2) - central(eps)) / 3 : central(eps);
    const rel = Math.abs(numeric - analytic[i]!) / Math.max(Math.abs(numeric), Math.abs(analytic[i]!), scale * 1e-2);
    if (rel > maxRel) {
      maxRel = rel;
      worst = { i, numeric, analytic: analytic[i]! };
    }
  }
  return { maxRel, worst };
}

/**
 * Model arguments of a tiny G+R tokenizer on 16 px one-channel images (4x4 = 16 tokens, 7 merged
 * per stage, layer3 class head over 10 classes, learned source recovery of width `recEmbedDim`).
 */
export function tinyGRArgs(recEmbedDim = 16) {
  return {
    ddconfig: {
      z_channels: 8,
      resolution: 16,
      in_channels: 1,
      out_ch: 1,
      ch: 32,
      ch_mult: [1, 2, 2],
      num_res_blocks: 1,
      num_att_blocks: 3,
      num_heads: 2,
      dist_head: 'layer3',
      num_classes: 10,
      merge_num: 7,
      cand_distribution: 'gaussian-3',
      init_values: 0.1,
    },
    k2lconfig: { learn_source: true, rec_embed_dim: recEmbedDim, num_layers: 1, num_heads: 2 },
    n_embed: 256,
    embed_dim: 8,
  };
}

/** Config of a tiny MergeAR/plain GPT over the tiny G+R tokenizer's 256 codes (16 positions, bits [3, 5], 4 classes). */
export function tinyGPTArgs() {
  return {
    vocab_size: 256,
    block_size: 16,
    spatial_n_layer: 1,
    factorized_n_layer: 1,
    n_head: 2,
    dim: 16,
    class_num: 4,
    factorized_bits: [3, 5],
    multiple_of: 8,
  };
}
