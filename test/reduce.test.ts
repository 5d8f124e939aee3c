import { describe, expect, it } from 'vitest';
import { op1, runSync } from '../lib/graph.js';
import { Tensor } from '../lib/tensor.js';
import * as T from '../lib/ops/tensor.js';
import { Rng, allFinite, finiteDiffCheck, maxAbsErr, relErr, seedInfo, withPoison } from './helpers.js';
import { coordsOf, distinctValues, mapRef, numel, randTensor } from './tensor_ref.js';

type Kind = 'sum' | 'mean' | 'var' | 'amax' | 'amin';

/** Float64 reduction over `dims` of dense data; returns [values, keepdim shape]. */
function reduceRef(
  data: ArrayLike<number>,
  shape: number[],
  dims: number[],
  kind: Kind,
  unbiased = true,
): { v: Float64Array; keep: number[] } {
  const keep = shape.map((s, d) => (dims.includes(d) ? 1 : s));
  const groups: number[][] = Array.from({ length: numel(keep) }, () => []);
  for (let i = 0; i < data.length; ++i) {
    const c = coordsOf(i, shape);
    let o = 0;
    for (let d = 0; d < shape.length; ++d) o = o * keep[d]! + (dims.includes(d) ? 0 : c[d]!);
    groups[o]!.push(data[i]!);
  }
  const v = Float64Array.from(groups, (g) => {
    const s = g.reduce((a, b) => a + b, 0);
    if (kind === 'sum') return s;
    if (kind === 'mean') return s / g.length;
    if (kind === 'amax') return Math.max(...g);
    if (kind === 'amin') return Math.min(...g);
    const m = s / g.length;
    return g.reduce((a, b) => a + (b - m) * (b - m), 0) / (g.length - (unbiased ? 1 : 0));
  });
  return { v, keep };
}

const CASES: { shape: number[]; dims?: number[] }[] = [
  { shape: [7] },
  { shape: [33, 5], dims: [0] },
  { shape: [33, 5], dims: [1] },
  { shape: [2, 3, 4, 5], dims: [0, 2, 3] },
  { shape: [2, 3, 4, 5], dims: [1, 3] },
  { shape: [3, 257], dims: [-1] },
  { shape: [4, 1, 6], dims: [1] },
  { shape: [5, 300, 3], dims: [0, 1] },
  { shape: [1, 9, 7] },
];

describe('reductions', () => {
  for (const kind of ['sum', 'mean', 'var', 'amax', 'amin'] as Kind[]) {
    it(`${kind} matches a float64 reference over several dims, keepdim and strided inputs`, () => {
      const rng = new Rng();
      for (const c of CASES) {
        for (const keepdim of [false, true]) {
          const x = randTensor(rng, c.shape, keepdim, 2);
          const y = withPoison(() => op1(kind, [x.t], { dims: c.dims, keepdim }));
          const dims = (c.dims ?? c.shape.map((_, d) => d)).map((d) => (d < 0 ? d + c.shape.length : d));
          const ref = reduceRef(x.data, c.shape, dims, kind);
          const want = keepdim ? ref.keep : c.shape.filter((_, d) => !dims.includes(d));
          expect(y.shape).toEqual(want);
          const got = y.toFloat32();
          if (kind === 'var' && dims.every((d) => c.shape[d] === 1)) {
            // One element per group: the unbiased variance is 0/0 = NaN, as torch.
            expect(got.every(Number.isNaN)).toBe(true);
            continue;
          }
          expect(relErr(got, ref.v), `${kind} ${JSON.stringify(c)} ${seedInfo(rng.seed)}`).toBeLessThan(
            kind === 'amax' || kind === 'amin' ? 1e-30 : 2e-7,
          );
          expect(allFinite(got)).toBe(true);
        }
      }
    });
  }

  it('var honours unbiased=false', () => {
    const rng = new Rng();
    const x = randTensor(rng, [6, 11]);
    const y = runSync(T.variance(x.t, { dims: [1], unbiased: false })).toFloat32();
    expect(relErr(y, reduceRef(x.data, [6, 11], [1], 'var', false).v), seedInfo(rng.seed)).toBeLessThan(2e-7);
  });

  it('sums 16M elements to ~1e-7 relative accuracy', () => {
    const rng = new Rng();
    const n = 1 << 24;
    const data = new Float32Array(n);
    for (let i = 0; i < n; ++i) data[i] = rng.next() + 0.5;
    let ref = 0;
    for (let i = 0; i < n; ++i) ref += data[i]!;
    const x = Tensor.from(data, [n]);
    const s = op1('sum', [x]).item();
    expect(Math.abs(s - ref) / ref, seedInfo(rng.seed)).toBeLessThan(1e-7);
    const cols = op1('sum', [x.view(4096, 4096)], { dims: [0] }).toFloat32();
    let c0 = 0;
    for (let i = 0; i < 4096; ++i) c0 += data[i * 4096]!;
    expect(Math.abs(cols[0]! - c0) / c0, seedInfo(rng.seed)).toBeLessThan(1e-7);
  });

  it('argmax returns the lowest index on ties, int64, with keepdim', () => {
    const x = Tensor.from(new Float32Array([1, 3, 3, 0, 5, 5, 5, 2, -1, -1, -1, -1]), [3, 4]);
    const y = op1('argmax', [x], { dim: 1 });
    expect(y.dtype).toBe('int64');
    expect(Array.from(y.toArray<'int64'>())).toEqual([1n, 0n, 0n]);
    const y0 = op1('argmax', [x], { dim: 0, keepdim: true });
    expect(y0.shape).toEqual([1, 4]);
    expect(Array.from(y0.toArray<'int64'>())).toEqual([1n, 1n, 1n, 1n]);
    const z = Tensor.from(new Float32Array([0, 2, 3, 2, 3, 1]), [3, 2]);
    expect(Array.from(op1('argmax', [z], { dim: 0 }).toArray<'int64'>())).toEqual([1n, 0n]);
    const rng = new Rng();
    const r = randTensor(rng, [5, 33, 7], true);
    const a = runSync(T.argmax(r.t, 1)).toArray<'int64'>();
    for (let o = 0; o < 5; ++o)
      for (let i = 0; i < 7; ++i) {
        let best = 0;
        for (let j = 1; j < 33; ++j) if (r.data[(o * 33 + j) * 7 + i]! > r.data[(o * 33 + best) * 7 + i]!) best = j;
        expect(Number(a[o * 7 + i]), seedInfo(rng.seed)).toBe(best);
      }
  });

  it('sum_to reduces broadcast gradients back to the input shape', () => {
    const rng = new Rng();
    for (const [g, s] of [
      [
        [2, 3, 4, 5],
        [1, 3, 1, 1],
      ],
      [
        [2, 3, 4, 5],
        [3, 1, 1],
      ],
      [[6, 33], [33]],
      [[6, 33], []],
      [
        [4, 5],
        [4, 5],
      ],
      [
        [3, 4, 5],
        [4, 1],
      ],
    ] as [number[], number[]][]) {
      const gt = randTensor(rng, g, true);
      const y = withPoison(() => runSync(T.sumTo(gt.t, s)));
      expect(y.shape).toEqual(s);
      // Reference: scatter every element of g onto its broadcast source.
      const ref = new Float64Array(numel(s));
      for (let i = 0; i < gt.data.length; ++i) {
        const c = coordsOf(i, g).slice(g.length - s.length);
        let o = 0;
        for (let d = 0; d < s.length; ++d) o = o * s[d]! + (s[d] === 1 ? 0 : c[d]!);
        ref[o]! += gt.data[i]!;
      }
      expect(relErr(y.toFloat32(), ref), `${g} -> ${s} ${seedInfo(rng.seed)}`).toBeLessThan(2e-7);
    }
    expect(() => op1('sum_to', [Tensor.zeros([3, 4])], { shape: [5] })).toThrow(/sum_to/);
  });

  it('expand materializes a broadcast (float32 and int32)', () => {
    const rng = new Rng();
    const x = randTensor(rng, [3, 1, 5]);
    const y = withPoison(() => runSync(T.expand(x.t, [2, 3, 4, 5])));
    const ref = mapRef([2, 3, 4, 5], [{ data: x.data, shape: [3, 1, 5] }], (v) => v);
    expect(maxAbsErr(y.toFloat32(), ref)).toBe(0);
    const xi = Tensor.from(Int32Array.from([4, -2]), [2, 1]);
    expect(Array.from(op1('expand', [xi], { shape: [2, 3] }).toArray<'int32'>())).toEqual([4, 4, 4, -2, -2, -2]);
    expect(() => op1('expand', [x.t], { shape: [3, 2, 4] })).toThrow(RangeError);
  });

  it('amax_backward splits the gradient evenly among ties and matches finite differences', () => {
    const x = Tensor.from(new Float32Array([1, 4, 4, 2, 7, 0, 7, 7]), [2, 4]);
    const y = op1('amax', [x], { dims: [1] });
    const gy = Tensor.from(new Float32Array([3, 6]), [2]);
    const gx = op1('amax_backward', [x, y, gy], { dims: [1] }).toFloat32();
    expect(Array.from(gx)).toEqual([0, 1.5, 1.5, 0, 2, 0, 2, 2]);
    const rng = new Rng();
    for (const c of [
      { shape: [5, 9, 3], dims: [1] },
      { shape: [4, 6, 7], dims: [0, 2] },
      { shape: [33], dims: undefined },
    ]) {
      for (const keepdim of [false, true]) {
        // Distinct values 1e-2 apart: the step (1e-4) never crosses a tie, where amax has a kink.
        // Away from ties amax is linear in x, so the difference quotient is exact up to float64
        // rounding of the loss (~1e-15 / 1e-4); 1e-6 leaves room for that and nothing else.
        const gap = 1e-2;
        const xr = randTensor(rng, c.shape, true, 1, distinctValues(rng, numel(c.shape), gap));
        const yr = runSync(T.amax(xr.t, { dims: c.dims, keepdim }));
        const g = rng.randn(yr.numel);
        const gxr = withPoison(() =>
          runSync(T.amaxBackward(xr.t, yr, Tensor.from(g, yr.shape), { dims: c.dims, keepdim })),
        ).toFloat32();
        const dims = c.dims ?? c.shape.map((_, d) => d);
        const loss = (v: Float32Array) => {
          const m = reduceRef(v, c.shape, dims, 'amax').v;
          return m.reduce((s, mi, i) => s + mi * g[i]!, 0);
        };
        const fd = finiteDiffCheck(xr.data, loss, gxr, { eps: gap / 100, count: numel(c.shape), rng });
        expect(fd.maxRel, `${JSON.stringify(c)} ${JSON.stringify(fd.worst)} ${seedInfo(rng.seed)}`).toBeLessThan(1e-6);
      }
    }
  });

  it('mean backward composes from expand + scale and matches finite differences', () => {
    const rng = new Rng();
    const x = randTensor(rng, [4, 7, 3]);
    const g = rng.randn(4 * 3);
    const gx = runSync(
      (function* () {
        const e = yield* T.expand(Tensor.from(g, [4, 1, 3]), [4, 7, 3]);
        return yield* T.scale(e, 1 / 7);
      })(),
    ).toFloat32();
    const loss = (v: Float32Array) => reduceRef(v, [4, 7, 3], [1], 'mean').v.reduce((s, m, i) => s + m * g[i]!, 0);
    const fd = finiteDiffCheck(x.data, loss, gx, { eps: 1e-2, count: 30, rng });
    expect(fd.maxRel, seedInfo(rng.seed)).toBeLessThan(1e-3);
  });

  it('rejects bad dims', () => {
    const x = Tensor.zeros([3, 4]);
    expect(() => op1('sum', [x], { dims: [2] })).toThrow(/sum: option 'dims'/);
    expect(() => op1('sum', [x], { dims: [1, -1] })).toThrow(RangeError);
    expect(() => op1('argmax', [x], { dim: -3 })).toThrow(RangeError);
  });
});
