// Float64 reference helpers shared by the tensor-op tests (broadcast indexing, strided inputs).
import { Tensor } from '../lib/tensor.js';
import type { Rng } from './helpers.js';

export function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

export function stridesOf(shape: readonly number[]): number[] {
  const st = new Array<number>(shape.length);
  let s = 1;
  for (let i = shape.length - 1; i >= 0; --i) {
    st[i] = s;
    s *= shape[i]!;
  }
  return st;
}

/** Coordinates of flat index i in a row-major shape. */
export function coordsOf(i: number, shape: readonly number[]): number[] {
  const c = new Array<number>(shape.length);
  for (let d = shape.length - 1; d >= 0; --d) {
    c[d] = i % shape[d]!;
    i = Math.floor(i / shape[d]!);
  }
  return c;
}

/** NumPy broadcast of shapes (throws on mismatch). */
export function broadcastShape(...shapes: number[][]): number[] {
  const nd = Math.max(...shapes.map((s) => s.length));
  const out = new Array<number>(nd).fill(1);
  for (const s of shapes) {
    for (let i = 0; i < s.length; ++i) {
      const o = nd - s.length + i;
      if (s[i] === out[o] || s[i] === 1) continue;
      if (out[o] === 1) out[o] = s[i]!;
      else throw new Error('shapes do not broadcast');
    }
  }
  return out;
}

/** Flat index into `shape` of the element read for output coords `c` under broadcasting. */
export function bIndex(c: readonly number[], shape: readonly number[]): number {
  let idx = 0;
  const off = c.length - shape.length;
  for (let d = 0; d < shape.length; ++d) idx = idx * shape[d]! + (shape[d] === 1 ? 0 : c[off + d]!);
  return idx;
}

/** Element-wise map with broadcasting, in float64. */
export function mapRef(
  out: number[],
  inputs: { data: ArrayLike<number>; shape: number[] }[],
  f: (...v: number[]) => number,
): Float64Array {
  const n = numel(out);
  const r = new Float64Array(n);
  for (let i = 0; i < n; ++i) {
    const c = coordsOf(i, out);
    r[i] = f(...inputs.map((x) => x.data[bIndex(c, x.shape)]!));
  }
  return r;
}

/**
 * A random float32 tensor of `shape`, non-contiguous when `strided` (a permuted view of a dense
 * tensor with the dims reversed) and its dense row-major values.
 */
export function randTensor(
  rng: Rng,
  shape: number[],
  strided = false,
  scale = 1,
  values?: Float32Array,
): { t: Tensor; data: Float32Array } {
  const data = values ?? rng.randn(numel(shape), scale);
  if (data.length !== numel(shape))
    throw new RangeError(`randTensor: ${data.length} values for shape [${shape.join(', ')}]`);
  if (!strided || shape.length < 2) return { t: Tensor.from(data, shape), data };
  const rev = [...shape].reverse();
  const revData = new Float32Array(data.length);
  const revSt = stridesOf(rev);
  for (let i = 0; i < data.length; ++i) {
    const c = coordsOf(i, shape);
    let j = 0;
    for (let d = 0; d < c.length; ++d) j += c[d]! * revSt[c.length - 1 - d]!;
    revData[j] = data[i]!;
  }
  const dims = rev.map((_, i) => rev.length - 1 - i);
  const t = Tensor.from(revData, rev).permute(...dims);
  return { t, data };
}

/**
 * `n` distinct float32 values in random order whose pairwise gaps are all at least `gap`: a random
 * permutation of the grid k * 2 * gap, each jittered by less than `gap`, centred on 0. Inputs for
 * finite differences of piecewise functions (max, min, sort, top-k): a step below gap / 2 can never
 * cross a tie.
 */
export function distinctValues(rng: Rng, n: number, gap: number): Float32Array {
  const perm = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; --i) {
    const j = rng.int(i + 1);
    [perm[i], perm[j]] = [perm[j]!, perm[i]!];
  }
  return Float32Array.from(perm, (k) => (k - n / 2) * 2 * gap + rng.next() * 0.9 * gap);
}

export function toNumbers(a: ArrayLike<number | bigint>): number[] {
  return Array.from(a as ArrayLike<number>, (v) => Number(v));
}
