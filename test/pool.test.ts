import { describe, expect, it } from 'vitest';
import { Tensor } from '../lib/tensor.js';
import { op1, runAsync, runSync } from '../lib/graph.js';
import { Tape } from '../lib/autograd.js';
import { maxPool2d, maxPool2dBackward, maxPool2dOutputSize, type MaxPool2dOptions } from '../lib/ops/pool.js';
import { Rng, allFinite, finiteDiffCheck, maxAbsErr, relErr, seedInfo, withPoison } from './helpers.js';

interface Cfg {
  name: string;
  shape: [number, number, number, number];
  kernel: [number, number];
  stride: [number, number];
  padding: [number, number];
}

const cfg = (
  name: string,
  shape: Cfg['shape'],
  k: number | [number, number],
  s?: number | [number, number],
  p: number | [number, number] = 0,
): Cfg => {
  const pair = (v: number | [number, number]): [number, number] => (typeof v === 'number' ? [v, v] : v);
  return { name, shape, kernel: pair(k), stride: pair(s ?? k), padding: pair(p) };
};
const opts = (c: Cfg): MaxPool2dOptions => ({ kernel: c.kernel, stride: c.stride, padding: c.padding });
const outHW = (c: Cfg): [number, number] => [
  Math.floor((c.shape[2] + 2 * c.padding[0] - c.kernel[0]) / c.stride[0]) + 1,
  Math.floor((c.shape[3] + 2 * c.padding[1] - c.kernel[1]) / c.stride[1]) + 1,
];

const CASES: Cfg[] = [
  cfg('2x2 s2 (VGG), even', [2, 3, 8, 8], 2),
  cfg('2x2 s2, odd H and W (last row/col dropped)', [2, 3, 7, 9], 2),
  cfg('3x3 s2 p1 (overlapping)', [1, 4, 9, 6], 3, 2, 1),
  cfg('3x3 s1 p1 (heavy overlap)', [2, 2, 5, 7], 3, 1, 1),
  cfg('rectangular 2x3 s[1,2] p[1,0]', [1, 3, 6, 11], [2, 3], [1, 2], [1, 0]),
  cfg('kernel = input (global max)', [2, 5, 4, 3], [4, 3]),
  cfg('1x1 s1 (identity)', [1, 2, 3, 4], 1),
  cfg('many planes (threaded), 2x2 s2', [3, 37, 33, 31], 2),
];

/** Float64 reference with torch's rule: strictly greater (first max wins ties) or NaN replaces. */
function refPool(c: Cfg, x: ArrayLike<number>): { y: Float64Array; idx: number[] } {
  const [B, C, H, W] = c.shape;
  const [Ho, Wo] = outHW(c);
  const y = new Float64Array(B * C * Ho * Wo);
  const idx = new Array<number>(y.length);
  for (let pl = 0; pl < B * C; ++pl)
    for (let oh = 0; oh < Ho; ++oh)
      for (let ow = 0; ow < Wo; ++ow) {
        const h0 = Math.max(oh * c.stride[0] - c.padding[0], 0);
        const h1 = Math.min(oh * c.stride[0] - c.padding[0] + c.kernel[0], H);
        const w0 = Math.max(ow * c.stride[1] - c.padding[1], 0);
        const w1 = Math.min(ow * c.stride[1] - c.padding[1] + c.kernel[1], W);
        let best = -Infinity;
        let at = h0 * W + w0;
        for (let ih = h0; ih < h1; ++ih)
          for (let iw = w0; iw < w1; ++iw) {
            const v = x[pl * H * W + ih * W + iw]!;
            if (v > best || Number.isNaN(v)) {
              best = v;
              at = ih * W + iw;
            }
          }
        const o = (pl * Ho + oh) * Wo + ow;
        y[o] = best;
        idx[o] = at;
      }
  return { y, idx };
}

/** Float64 gradient of sum(gy * y): gy routed to the recorded index of each output. */
function refUnpool(c: Cfg, idx: ArrayLike<number>, gy: ArrayLike<number>): Float64Array {
  const [B, C, H, W] = c.shape;
  const [Ho, Wo] = outHW(c);
  const gx = new Float64Array(B * C * H * W);
  for (let pl = 0; pl < B * C; ++pl)
    for (let j = 0; j < Ho * Wo; ++j) gx[pl * H * W + idx[pl * Ho * Wo + j]!]! += gy[pl * Ho * Wo + j]!;
  return gx;
}

const numel = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);
const int64s = (t: Tensor) => Array.from(t.toArray<'int64'>(), Number);

/** Distinct values with gaps of `gap` in random order (no ties, and a step < gap/2 never reorders them). */
function distinct(rng: Rng, n: number, gap: number): Float32Array {
  const v = Float32Array.from({ length: n }, (_, i) => (i - n / 2) * gap);
  for (let i = n - 1; i > 0; --i) {
    const j = rng.int(i + 1);
    [v[i], v[j]] = [v[j]!, v[i]!];
  }
  return v;
}

describe('max_pool2d forward', () => {
  for (const c of CASES) {
    it(`${c.name}: values and indices equal the float64 reference`, () => {
      const rng = new Rng();
      const x = rng.tensor(c.shape);
      const [y, idx] = withPoison(() => runSync(maxPool2d(x, opts(c))));
      const [Ho, Wo] = outHW(c);
      expect(y.shape).toEqual([c.shape[0], c.shape[1], Ho, Wo]);
      expect(idx.shape).toEqual(y.shape);
      expect(idx.dtype).toBe('int64');
      expect(maxPool2dOutputSize([c.shape[2], c.shape[3]], opts(c))).toEqual([Ho, Wo]);
      const ref = refPool(c, x.toFloat32());
      const yv = y.toFloat32();
      expect(allFinite(yv), seedInfo(rng.seed)).toBe(true);
      expect(maxAbsErr(yv, ref.y), seedInfo(rng.seed)).toBe(0);
      expect(int64s(idx), seedInfo(rng.seed)).toEqual(ref.idx);
    });
  }

  it('ties pick the first maximum in row-major window order', () => {
    const rng = new Rng();
    for (const c of [CASES[0]!, CASES[2]!, CASES[3]!, CASES[4]!]) {
      // Values from {0, 1, 2}: most windows hold several equal maxima.
      const xs = Float32Array.from({ length: numel(c.shape) }, () => rng.int(3));
      const [y, idx] = withPoison(() => runSync(maxPool2d(Tensor.from(xs, c.shape), opts(c))));
      const ref = refPool(c, xs);
      expect(Array.from(y.toFloat32()), `${c.name}, ${seedInfo(rng.seed)}`).toEqual(Array.from(ref.y));
      expect(int64s(idx), `${c.name}, ${seedInfo(rng.seed)}`).toEqual(ref.idx);
    }
  });

  it('padding never wins: an all -inf window picks its first in-plane element; NaN propagates', () => {
    const c = cfg('3x3 s2 p1', [1, 1, 4, 4], 3, 2, 1);
    const xs = new Float32Array(16).fill(-Infinity);
    const [y, idx] = runSync(maxPool2d(Tensor.from(xs, c.shape), opts(c)));
    expect(Array.from(y.toFloat32())).toEqual([-Infinity, -Infinity, -Infinity, -Infinity]);
    expect(int64s(idx)).toEqual(refPool(c, xs).idx);
    expect(int64s(idx)).toEqual([0, 1, 4, 5]);
    const xn = Float32Array.from({ length: 16 }, (_, i) => i);
    xn[5] = NaN;
    xn[6] = NaN;
    const [yn, idn] = runSync(maxPool2d(Tensor.from(xn, c.shape), opts(c)));
    // Window (0, 0) covers rows/cols 0..1: NaN at 5. Window (0, 1) covers rows 0..1, cols 1..3: the later NaN (6).
    const yv = Array.from(yn.toFloat32());
    expect(Number.isNaN(yv[0]!) && Number.isNaN(yv[1]!) && Number.isNaN(yv[2]!) && Number.isNaN(yv[3]!)).toBe(true);
    expect(int64s(idn)).toEqual(refPool(c, xn).idx);
    expect(int64s(idn).slice(0, 2)).toEqual([5, 6]);
  });

  it('runAsync gives the same result as runSync', async () => {
    const x = new Rng().tensor([2, 4, 10, 10]);
    const [ya, ia] = await runAsync(maxPool2d(x, { kernel: 2 }));
    const [ys, is] = runSync(maxPool2d(x, { kernel: 2 }));
    expect(Array.from(ya.toFloat32())).toEqual(Array.from(ys.toFloat32()));
    expect(int64s(ia)).toEqual(int64s(is));
  });
});

describe('max_pool2d backward', () => {
  for (const c of CASES) {
    it(`${c.name}: scatter of gy equals the float64 reference`, () => {
      const rng = new Rng();
      const x = rng.tensor(c.shape);
      const [y, idx] = runSync(maxPool2d(x, opts(c)));
      const gy = rng.tensor(y.shape);
      const gx = withPoison(() => runSync(maxPool2dBackward(gy, idx, { inputShape: c.shape })));
      expect(gx.shape).toEqual(c.shape);
      const ref = refUnpool(c, int64s(idx), gy.toFloat32());
      const got = gx.toFloat32();
      expect(allFinite(got), seedInfo(rng.seed)).toBe(true);
      // At most kh*kw float32 additions per element.
      expect(relErr(got, ref), seedInfo(rng.seed)).toBeLessThan(1e-6);
      // int32 indices give the same gradient.
      const idx32 = Tensor.from(Int32Array.from(int64s(idx)), idx.shape);
      expect(Array.from(runSync(maxPool2dBackward(gy, idx32, { inputShape: c.shape })).toFloat32())).toEqual(
        Array.from(got),
      );
    });
  }

  for (const c of CASES.slice(0, 5)) {
    it(`${c.name}: Tape gradient matches finite differences (inputs without ties)`, () => {
      const rng = new Rng();
      // Gaps of 0.05 and a step of 0.01: a perturbation never changes which element is the maximum.
      const xs = distinct(rng, numel(c.shape), 0.05);
      const x = Tensor.from(xs, c.shape);
      const tape = new Tape();
      const [y] = runSync(maxPool2d(x, opts(c)), tape.observe);
      const w = rng.tensor(y.shape);
      const wv = w.toFloat32();
      const grads = runSync(tape.backward(y, w));
      const gx = grads.get(x)!.toFloat32();
      const f = (xp: Float32Array) => {
        const yp = runSync(maxPool2d(Tensor.from(xp, c.shape), opts(c)))[0].toFloat32();
        let s = 0;
        for (let i = 0; i < yp.length; ++i) s += wv[i]! * yp[i]!;
        return s;
      };
      const { maxRel, worst } = finiteDiffCheck(xs, f, gx, { eps: 1e-2, count: xs.length, rng });
      // y is piecewise the identity on x, so the only error is float32 rounding of the step.
      expect(maxRel, `${JSON.stringify(worst)} ${seedInfo(rng.seed)}`).toBeLessThan(1e-4);
    });
  }

  it('with ties the gradient is the defined subgradient: all of gy to the first maximum', () => {
    const rng = new Rng();
    for (const c of [CASES[0]!, CASES[3]!, CASES[4]!]) {
      const xs = Float32Array.from({ length: numel(c.shape) }, () => rng.int(2));
      const x = Tensor.from(xs, c.shape);
      const tape = new Tape();
      const [y] = runSync(maxPool2d(x, opts(c)), tape.observe);
      const gy = rng.tensor(y.shape);
      const gx = runSync(tape.backward(y, gy)).get(x)!.toFloat32();
      const want = refUnpool(c, refPool(c, xs).idx, gy.toFloat32());
      expect(relErr(gx, want), `${c.name}, ${seedInfo(rng.seed)}`).toBeLessThan(1e-6);
    }
  });
});

describe('max_pool2d argument checks', () => {
  const x = Tensor.zeros([1, 2, 5, 5]);
  it('the wrapper names the bad option', () => {
    expect(() => runSync(maxPool2d(x, {} as MaxPool2dOptions))).toThrow(TypeError);
    expect(() => runSync(maxPool2d(x, { kernel: 0 }))).toThrow(/opts.kernel/);
    expect(() => runSync(maxPool2d(x, { kernel: 2, stride: 0 }))).toThrow(/opts.stride/);
    expect(() => runSync(maxPool2d(x, { kernel: 2, padding: -1 }))).toThrow(/opts.padding/);
    expect(() => runSync(maxPool2d(x, { kernel: 3, padding: 2 }))).toThrow(/at most half the kernel/);
    expect(() => runSync(maxPool2d(x, { kernel: [2, 2, 2] as unknown as [number, number] }))).toThrow(TypeError);
    expect(() => runSync(maxPool2d(x, { kernel: 1.5 }))).toThrow(TypeError);
    expect(() => runSync(maxPool2d('x' as unknown as Tensor, { kernel: 2 }))).toThrow(/x must be a Tensor/);
    expect(() => maxPool2dOutputSize([1, 5], { kernel: 2 })).toThrow(RangeError);
  });
  it('the native op validates shapes, dtypes and options before writing', () => {
    expect(() => runSync(maxPool2d(Tensor.zeros([2, 5, 5]), { kernel: 2 }))).toThrow(
      /max_pool2d: 'x' must be float32 \[B, C, H, W\]/,
    );
    expect(() => runSync(maxPool2d(Tensor.zeros([1, 1, 4, 4], 'int32'), { kernel: 2 }))).toThrow(TypeError);
    expect(() => runSync(maxPool2d(x, { kernel: 6 }))).toThrow(/larger than the padded input/);
    expect(() => runSync(maxPool2d(Tensor.zeros([1, 1, 0, 4]), { kernel: 1 }))).toThrow(/H >= 1 and W >= 1/);
    expect(() => op1('max_pool2d', [x], {})).toThrow(/option 'kernel'/);
    expect(() => op1('max_pool2d', [x], { kernel: [3, 3], padding: [2, 2] })).toThrow(RangeError);
    expect(() => op1('max_pool2d', [x], { kernel: [2, 2, 2] })).toThrow(TypeError);
    expect(() => op1('max_pool2d', [x], { kernel: 2, stride: 0 })).toThrow(/'stride' must be >= 1/);
  });
  it('the backward rejects bad indices and shapes and leaves its inputs unchanged', () => {
    // Increasing values: every window picks its bottom-right element, so window (1, 1) records 18.
    const [y, idx] = runSync(
      maxPool2d(
        Tensor.from(
          Float32Array.from({ length: 50 }, (_, i) => i),
          [1, 2, 5, 5],
        ),
        { kernel: 2 },
      ),
    );
    expect(int64s(idx)).toEqual([6, 8, 16, 18, 6, 8, 16, 18]);
    const gy = new Rng().tensor(y.shape);
    const before = Array.from(gy.toFloat32());
    const bad = Tensor.from(BigInt64Array.from(int64s(idx).map((v, i) => BigInt(i === 3 ? 25 : v))), idx.shape);
    expect(() => runSync(maxPool2dBackward(gy, bad, { inputShape: [1, 2, 5, 5] }))).toThrow(
      /index 25 in 'indices' \(element 3\) is out of range \[0, 25\)/,
    );
    expect(() => runSync(maxPool2dBackward(gy, idx, { inputShape: [1, 2, 4, 4] }))).toThrow(/out of range \[0, 16\)/);
    expect(() => runSync(maxPool2dBackward(gy, idx, { inputShape: [1, 3, 5, 5] }))).toThrow(
      /must start with gy's \[B, C\]/,
    );
    expect(() => runSync(maxPool2dBackward(gy, idx, { inputShape: [1, 2, 5] }))).toThrow(/opts.inputShape/);
    expect(() => op1('max_pool2d_backward', [gy, idx], { shape: [1, 2, 5] })).toThrow(/option 'shape'/);
    expect(() => op1('max_pool2d_backward', [gy, idx], {})).toThrow(/option 'shape'/);
    expect(() => op1('max_pool2d_backward', [gy, idx], { shape: [1, 2, -1, 5] })).toThrow(RangeError);
    expect(() => runSync(maxPool2dBackward(gy, Tensor.zeros(idx.shape), { inputShape: [1, 2, 5, 5] }))).toThrow(
      TypeError,
    );
    expect(() =>
      op1('max_pool2d_backward', [gy, Tensor.zeros([1, 2, 2, 3], 'int64')], { shape: [1, 2, 5, 5] }),
    ).toThrow(/'indices' must have the shape of gy/);
    expect(Array.from(gy.toFloat32())).toEqual(before);
    expect(int64s(bad)[3]).toBe(25);
  });
});
