// Float64 reference helpers shared by the nn op tests (norm, activation, loss).
import { Tensor } from '../lib/tensor.js';
import { op } from '../lib/graph.js';
import { withPoison } from './helpers.js';

/** The elements of a float32 tensor as float64. */
export function f64(t: Tensor): Float64Array {
  return Float64Array.from(t.toFloat32());
}

/**
 * A NON-contiguous float32 tensor with logical `shape` and row-major values `arr`: stored with
 * the last two dims swapped, then permuted back.
 */
export function nonContig(arr: Float32Array, shape: number[]): Tensor {
  const r = shape.length;
  if (r < 2) throw new Error('nonContig needs rank >= 2');
  const H = shape[r - 2]!,
    W = shape[r - 1]!;
  const outer = arr.length / (H * W);
  const base = new Float32Array(arr.length);
  for (let o = 0; o < outer; ++o)
    for (let h = 0; h < H; ++h) for (let w = 0; w < W; ++w) base[o * H * W + w * H + h] = arr[o * H * W + h * W + w]!;
  const bshape = [...shape.slice(0, r - 2), W, H];
  const perm = [...Array(r - 2).keys(), r - 1, r - 2];
  const t = Tensor.from(base, bshape).permute(...perm);
  if (t.native.isContiguous && H > 1 && W > 1) throw new Error('nonContig: expected a non-contiguous view');
  return t;
}

/** Runs an op with poisoned allocations and checks no float32 output holds NaN (the poison). */
export function runPoisoned(
  name: string,
  inputs: (Tensor | null)[],
  attrs?: Record<string, unknown>,
): (Tensor | null)[] {
  const out = withPoison(() => op(name, inputs, attrs as never));
  for (const [i, t] of out.entries()) {
    if (t && t.dtype === 'float32' && t.toFloat32().some((v) => Number.isNaN(v)))
      throw new Error(`${name}: output ${i} has NaN (unwritten under poison?)`);
  }
  return out;
}

/** erf to ~1e-15 (series below 3, continued fraction for erfc above). */
export function erf(x: number): number {
  const ax = Math.abs(x);
  if (ax < 3) {
    let term = ax,
      sum = ax;
    const x2 = ax * ax;
    for (let n = 1; n < 200; ++n) {
      term *= -x2 / n;
      const d = term / (2 * n + 1);
      sum += d;
      if (Math.abs(d) < 1e-17 * Math.abs(sum)) break;
    }
    const v = (2 / Math.sqrt(Math.PI)) * sum;
    return x < 0 ? -v : v;
  }
  // erfc(x) = exp(-x^2)/sqrt(pi) / (x + (1/2)/(x + 1/(x + (3/2)/(x + 2/(x + ...)))))
  let f = ax;
  for (let k = 80; k >= 1; --k) f = ax + k / 2 / f;
  const erfc = Math.exp(-ax * ax) / Math.sqrt(Math.PI) / f;
  return x < 0 ? erfc - 1 : 1 - erfc;
}

export const sigmoid = (x: number) => 1 / (1 + Math.exp(-x));
export type ActName = 'none' | 'silu' | 'gelu' | 'gelu_tanh';
const K = Math.sqrt(2 / Math.PI);
export function act(a: ActName, x: number): number {
  switch (a) {
    case 'none':
      return x;
    case 'silu':
      return x * sigmoid(x);
    case 'gelu':
      return 0.5 * x * (1 + erf(x / Math.SQRT2));
    case 'gelu_tanh':
      return 0.5 * x * (1 + Math.tanh(K * (x + 0.044715 * x * x * x)));
  }
}
export function actGrad(a: ActName, x: number): number {
  switch (a) {
    case 'none':
      return 1;
    case 'silu': {
      const s = sigmoid(x);
      return s * (1 + x * (1 - s));
    }
    case 'gelu':
      return 0.5 * (1 + erf(x / Math.SQRT2)) + (x * Math.exp(-0.5 * x * x)) / Math.sqrt(2 * Math.PI);
    case 'gelu_tanh': {
      const u = K * (x + 0.044715 * x * x * x),
        t = Math.tanh(u);
      return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * K * (1 + 3 * 0.044715 * x * x);
    }
  }
}

/** max_i |a_i - b_i| / max(|b_i|, floor). */
export function maxRelElem(a: ArrayLike<number>, b: ArrayLike<number>, floor = 1e-30): number {
  let m = 0;
  for (let i = 0; i < a.length; ++i) {
    if (Number.isNaN(a[i]!)) return Infinity;
    m = Math.max(m, Math.abs(a[i]! - b[i]!) / Math.max(Math.abs(b[i]!), floor));
  }
  return m;
}

/** sum_i a_i * b_i in float64. */
export function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; ++i) s += a[i]! * b[i]!;
  return s;
}
