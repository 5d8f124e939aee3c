import { describe, expect, it } from 'vitest';
import { op1, runSync } from '../lib/graph.js';
import { Tensor } from '../lib/tensor.js';
import * as T from '../lib/ops/tensor.js';
import { Rng, allFinite, finiteDiffCheck, maxAbsErr, relErr, seedInfo, withPoison } from './helpers.js';
import { numel } from './tensor_ref.js';

/** Float64 LlamaGen apply_rotary_emb on dense x [B, N, H, hd]. */
function ropeRef(x: ArrayLike<number>, shape: number[], f: ArrayLike<number>): Float64Array {
  const [B, N, H, hd] = shape as [number, number, number, number];
  const y = new Float64Array(x.length);
  for (let b = 0; b < B; ++b)
    for (let n = 0; n < N; ++n)
      for (let h = 0; h < H; ++h)
        for (let i = 0; i < hd / 2; ++i) {
          const o = ((b * N + n) * H + h) * hd + 2 * i;
          const c = f[(n * (hd / 2) + i) * 2]!;
          const s = f[(n * (hd / 2) + i) * 2 + 1]!;
          y[o] = x[o]! * c - x[o + 1]! * s;
          y[o + 1] = x[o + 1]! * c + x[o]! * s;
        }
  return y;
}

/** x [B, N, H, hd] as a strided view: 'heads' = permuted from [B, H, N, hd], 'channels' = from [B, N, hd, H]. */
function stridedX(rng: Rng, shape: number[], kind: 'dense' | 'heads' | 'channels'): { t: Tensor; data: Float32Array } {
  const [B, N, H, hd] = shape as [number, number, number, number];
  const data = rng.randn(numel(shape));
  if (kind === 'dense') return { t: Tensor.from(data, shape), data };
  const src = new Float32Array(data.length);
  for (let b = 0; b < B; ++b)
    for (let n = 0; n < N; ++n)
      for (let h = 0; h < H; ++h)
        for (let c = 0; c < hd; ++c) {
          const v = data[((b * N + n) * H + h) * hd + c]!;
          if (kind === 'heads') src[((b * H + h) * N + n) * hd + c] = v;
          else src[((b * N + n) * hd + c) * H + h] = v;
        }
  const t =
    kind === 'heads'
      ? Tensor.from(src, [B, H, N, hd]).permute(0, 2, 1, 3)
      : Tensor.from(src, [B, N, hd, H]).permute(0, 1, 3, 2);
  return { t, data };
}

describe('2D RoPE', () => {
  it('rope matches LlamaGen apply_rotary_emb on dense and strided inputs', () => {
    const rng = new Rng();
    for (const shape of [
      [2, 5, 3, 8],
      [1, 10, 1, 16],
      [3, 7, 2, 4],
    ]) {
      const f = Float32Array.from({ length: shape[1]! * (shape[3]! / 2) * 2 }, () => rng.uniform(-1, 1));
      const ft = Tensor.from(f, [shape[1]!, shape[3]! / 2, 2]);
      for (const kind of ['dense', 'heads', 'channels'] as const) {
        const x = stridedX(rng, shape, kind);
        const y = withPoison(() => runSync(T.rope(x.t, ft)));
        expect(y.shape).toEqual(shape);
        const got = y.toFloat32();
        expect(allFinite(got)).toBe(true);
        expect(relErr(got, ropeRef(x.data, shape, f)), `${shape} ${kind} ${seedInfo(rng.seed)}`).toBeLessThan(1e-6);
      }
    }
  });

  it('rope_backward matches finite differences and inverts a true rotation', () => {
    const rng = new Rng();
    const shape = [2, 10, 3, 8];
    const freqs = T.precompute2dFreqs(3, 8, 10000, 1);
    const f = freqs.toFloat32();
    const x = stridedX(rng, shape, 'heads');
    const g = rng.randn(numel(shape));
    const gx = withPoison(() => runSync(T.ropeBackward(Tensor.from(g, shape), freqs))).toFloat32();
    const loss = (v: Float32Array) => {
      const y = ropeRef(v, shape, f);
      let s = 0;
      for (let i = 0; i < y.length; ++i) s += y[i]! * g[i]!;
      return s;
    };
    const fd = finiteDiffCheck(x.data, loss, gx, { eps: 1e-2, count: 48, rng });
    expect(fd.maxRel, `${JSON.stringify(fd.worst)} ${seedInfo(rng.seed)}`).toBeLessThan(1e-3);
    // Rows >= 1 are rotations (cos^2 + sin^2 = 1), so backward(forward(x)) = x there; row 0 (cls) is zeroed.
    const y = runSync(T.rope(x.t, freqs));
    const back = runSync(T.ropeBackward(y, freqs)).toFloat32();
    const want = Float32Array.from(x.data, (v, i) => (Math.floor(i / (3 * 8)) % 10 === 0 ? 0 : v));
    expect(maxAbsErr(back, want), seedInfo(rng.seed)).toBeLessThan(1e-5);
  });

  it('rejects mismatched freqs', () => {
    const x = Tensor.zeros([1, 4, 2, 8]);
    expect(() => op1('rope', [x, Tensor.zeros([4, 3, 2])])).toThrow(/rope: 'freqs' must have shape \[4, 4, 2\]/);
    expect(() => op1('rope', [Tensor.zeros([1, 4, 2, 7]), Tensor.zeros([4, 3, 2])])).toThrow(RangeError);
  });
});

describe('precompute2dFreqs (LlamaGen precompute_freqs_cis_2d)', () => {
  it('puts [row-angle pairs, column-angle pairs] per grid cell and zeros on cls rows (hand-derived values)', () => {
    // hd = 8: half = 4, freqs = 1 / 10000^([0, 2] / 4) = [1, 0.01]; hd/4 = 2 pairs per axis.
    const t = T.precompute2dFreqs(3, 8, 10000, 1);
    expect(t.shape).toEqual([10, 4, 2]);
    const f = t.toFloat32();
    for (let i = 0; i < 8; ++i) expect(f[i]).toBe(0); // cls row: cos = sin = 0
    // Cell (y = 1, x = 2) is sequence row 1 + 1*3 + 2 = 6.
    const r6 = Array.from(f.slice(6 * 8, 7 * 8));
    const want6 = [
      0.5403023058681398,
      0.8414709848078965, // y * 1 = 1
      0.9999500004166653,
      0.009999833334166664, // y * 0.01
      -0.4161468365471424,
      0.9092974268256817, // x * 1 = 2
      0.9998000066665778,
      0.01999866669333308, // x * 0.01 = 0.02
    ];
    r6.forEach((v, i) => expect(Math.abs(v - want6[i]!), `row 6 entry ${i}`).toBeLessThan(2e-7));
    // Cell (0, 0) is row 1: all angles 0.
    expect(Array.from(f.slice(8, 16))).toEqual([1, 0, 1, 0, 1, 0, 1, 0]);
    // hd = 16: freqs = 10000^(-[0, 2, 4, 6] / 8) = [1, 0.1, 0.01, 0.001]; cell (y = 1, x = 0) -> row 1 + 2 = 3 with 2x2 grid.
    const u = T.precompute2dFreqs(2, 16, 10000, 1).toFloat32();
    const r3 = Array.from(u.slice(3 * 16, 4 * 16));
    const angles = [1, 0.1, 0.01, 0.001, 0, 0, 0, 0];
    angles.forEach((a, k) => {
      expect(Math.abs(r3[2 * k]! - Math.cos(a)), `pair ${k} cos`).toBeLessThan(2e-7);
      expect(Math.abs(r3[2 * k + 1]! - Math.sin(a)), `pair ${k} sin`).toBeLessThan(2e-7);
    });
    // No cls rows and another base.
    const v = T.precompute2dFreqs(2, 4, 100, 0);
    expect(v.shape).toEqual([4, 2, 2]);
    const vf = v.toFloat32();
    // hd = 4: one pair per axis with freq 1; cell (1, 1) = row 3: angles (1, 1).
    expect(Math.abs(vf[12]! - Math.cos(1))).toBeLessThan(2e-7);
    expect(Math.abs(vf[15]! - Math.sin(1))).toBeLessThan(2e-7);
    expect(() => T.precompute2dFreqs(3, 6)).toThrow(RangeError);
  });
});
