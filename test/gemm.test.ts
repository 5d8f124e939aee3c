import { describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { addon } from '../lib/native.js';
import { Tensor } from '../lib/tensor.js';
import { runSync } from '../lib/graph.js';
import { matmul, matmulBackward, linear, linearBackward } from '../lib/ops/linalg.js';
import { Rng, allFinite, finiteDiffCheck, relErr, seedInfo, withPoison } from './helpers.js';

const numel = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);

/** Float64 reference of alpha * op(a) op(b) with numpy batch broadcasting; a, b dense row-major. */
function refMatmul(
  a: ArrayLike<number>,
  as: number[],
  b: ArrayLike<number>,
  bs: number[],
  ta = false,
  tb = false,
  alpha = 1,
) {
  const [ar, ac] = as.slice(-2) as [number, number];
  const [br, bc] = bs.slice(-2) as [number, number];
  const M = ta ? ac : ar,
    K = ta ? ar : ac,
    N = tb ? br : bc;
  const ab = as.slice(0, -2),
    bb = bs.slice(0, -2);
  const nd = Math.max(ab.length, bb.length);
  const pa = [...Array(nd - ab.length).fill(1), ...ab],
    pb = [...Array(nd - bb.length).fill(1), ...bb];
  const out = pa.map((x, i) => Math.max(x, pb[i]!));
  const count = numel(out);
  const y = new Float64Array(count * M * N);
  const idx = new Array(nd).fill(0);
  for (let t = 0; t < count; ++t) {
    let ia = 0,
      ib = 0;
    for (let d = 0; d < nd; ++d) {
      ia = ia * pa[d]! + (pa[d] === 1 ? 0 : idx[d]);
      ib = ib * pb[d]! + (pb[d] === 1 ? 0 : idx[d]);
    }
    const ao = ia * ar * ac,
      bo = ib * br * bc;
    for (let i = 0; i < M; ++i)
      for (let j = 0; j < N; ++j) {
        let s = 0;
        for (let k = 0; k < K; ++k) {
          const av = ta ? a[ao + k * ac + i]! : a[ao + i * ac + k]!;
          const bv = tb ? b[bo + j * bc + k]! : b[bo + k * bc + j]!;
          s += av * bv;
        }
        y[t * M * N + i * N + j] = alpha * s;
      }
    for (let d = nd - 1; d >= 0; --d) {
      if (++idx[d] < out[d]!) break;
      idx[d] = 0;
    }
  }
  return { y, shape: [...out, M, N] };
}

/** Dense float64 transpose of the last two dims. */
function transposeLast(x: ArrayLike<number>, shape: number[]): Float64Array {
  const [r, c] = shape.slice(-2) as [number, number];
  const n = numel(shape.slice(0, -2));
  const o = new Float64Array(x.length);
  for (let t = 0; t < n; ++t)
    for (let i = 0; i < r; ++i) for (let j = 0; j < c; ++j) o[t * r * c + j * r + i] = x[t * r * c + i * c + j]!;
  return o;
}

/** Sums a gradient of the broadcast batch shape down to `shape` (float64). */
function reduceTo(g: Float64Array, gshape: number[], shape: number[]): Float64Array {
  const out = new Float64Array(numel(shape));
  const nd = gshape.length;
  const ps = [...Array(nd - shape.length).fill(1), ...shape];
  const idx = new Array(nd).fill(0);
  for (let i = 0; i < g.length; ++i) {
    let o = 0;
    for (let d = 0; d < nd; ++d) o = o * ps[d]! + (ps[d] === 1 ? 0 : idx[d]);
    out[o]! += g[i]!;
    for (let d = nd - 1; d >= 0; --d) {
      if (++idx[d] < gshape[d]!) break;
      idx[d] = 0;
    }
  }
  return out;
}

/** Reference gradients of alpha op(a) op(b) (float64), shaped like a and b. */
function refMatmulGrads(
  a: Float32Array,
  as: number[],
  b: Float32Array,
  bs: number[],
  gy: Float32Array,
  ta: boolean,
  tb: boolean,
  alpha: number,
) {
  const { shape: ys } = refMatmul(a, as, b, bs, ta, tb, alpha);
  const Ad = ta ? transposeLast(a, as) : Float64Array.from(a);
  const Bd = tb ? transposeLast(b, bs) : Float64Array.from(b);
  const aS = ta ? [...as.slice(0, -2), as.at(-1)!, as.at(-2)!] : as;
  const bS = tb ? [...bs.slice(0, -2), bs.at(-1)!, bs.at(-2)!] : bs;
  // gA = alpha gy B^T over the broadcast batch; gB = alpha A^T gy.
  const gA = refMatmul(gy, ys, Bd, bS, false, true, alpha);
  const gB = refMatmul(Ad, aS, gy, ys, true, false, alpha);
  let ga = reduceTo(gA.y, gA.shape, aS);
  let gb = reduceTo(gB.y, gB.shape, bS);
  if (ta) ga = transposeLast(ga, aS);
  if (tb) gb = transposeLast(gb, bS);
  return { ga, gb };
}

const tol = (K: number) => 2e-6 * Math.sqrt(Math.max(K, 1)) + 2e-6;

describe('matmul', () => {
  const sizes: [number, number, number][] = [
    [1, 1, 1],
    [7, 33, 1],
    [33, 7, 257],
    [257, 33, 7],
    [1, 257, 33],
    [257, 257, 33],
    [33, 1, 257],
    [65, 130, 300],
    [300, 200, 150],
    [6, 16, 256],
    // N past one 3072-column block per thread (single-threaded, then split over 2 threads).
    [1, 6200, 3],
    [7, 6500, 40],
  ];
  for (const [M, N, K] of sizes) {
    for (const [ta, tb] of [
      [false, false],
      [true, false],
      [false, true],
      [true, true],
    ] as const) {
      it(`M=${M} N=${N} K=${K} trans_a=${ta} trans_b=${tb} matches float64 (poisoned output)`, () => {
        const rng = new Rng();
        const as = ta ? [K, M] : [M, K],
          bs = tb ? [N, K] : [K, N];
        const a = rng.randn(numel(as)),
          b = rng.randn(numel(bs));
        const alpha = ta && tb ? -0.75 : 1;
        const y = withPoison(() =>
          runSync(matmul(Tensor.from(a, as), Tensor.from(b, bs), { transA: ta, transB: tb, alpha })),
        );
        expect(y.shape).toEqual([M, N]);
        const got = y.toFloat32();
        expect(allFinite(got), seedInfo(rng.seed)).toBe(true);
        const ref = refMatmul(a, as, b, bs, ta, tb, alpha).y;
        expect(relErr(got, ref), seedInfo(rng.seed)).toBeLessThan(tol(K));
      });
    }
  }

  it('broadcasts batch dims (shared 2-D b, size-1 dims on either side)', () => {
    const rng = new Rng();
    const cases: [number[], number[]][] = [
      [
        [2, 3, 7, 5],
        [5, 9],
      ],
      [
        [1, 7, 5],
        [4, 5, 9],
      ],
      [
        [3, 1, 7, 5],
        [4, 5, 9],
      ],
      [
        [4, 33, 20],
        [4, 20, 17],
      ],
      [
        [5, 40, 64],
        [64, 48],
      ],
    ];
    for (const [as, bs] of cases) {
      const a = rng.randn(numel(as)),
        b = rng.randn(numel(bs));
      const y = withPoison(() => runSync(matmul(Tensor.from(a, as), Tensor.from(b, bs))));
      const ref = refMatmul(a, as, b, bs);
      expect(y.shape).toEqual(ref.shape);
      expect(allFinite(y.toFloat32())).toBe(true);
      expect(relErr(y.toFloat32(), ref.y), `${as} x ${bs} ${seedInfo(rng.seed)}`).toBeLessThan(1e-5);
    }
  });

  it('takes transposed and permuted (strided) views', () => {
    const rng = new Rng();
    // a stored [K, M] and viewed as [M, K]; b stored [N, K] viewed as [K, N].
    const M = 37,
      K = 29,
      N = 41;
    const aT = rng.randn(K * M),
      bT = rng.randn(N * K);
    const av = Tensor.from(aT, [K, M]).permute(1, 0);
    const bv = Tensor.from(bT, [N, K]).permute(1, 0);
    const y = withPoison(() => runSync(matmul(av, bv)));
    const ref = refMatmul(aT, [K, M], bT, [N, K], true, true).y;
    expect(relErr(y.toFloat32(), ref), seedInfo(rng.seed)).toBeLessThan(1e-5);
    // a strided view with trans_b on a dense b; trans_a on a transposed view (cancels out).
    const y2 = runSync(matmul(av, Tensor.from(bT, [N, K]), { transB: true }));
    expect(relErr(y2.toFloat32(), refMatmul(aT, [K, M], bT, [N, K], true, true).y)).toBeLessThan(1e-5);
    const y2b = withPoison(() => runSync(matmul(bv, Tensor.from(aT, [K, M]), { transA: true })));
    expect(y2b.shape).toEqual([N, M]);
    expect(relErr(y2b.toFloat32(), refMatmul(bT, [N, K], aT, [K, M]).y)).toBeLessThan(1e-5);
    // batch-permuted a [M, B, K] -> [B, M, K] (rows not stackable), and a fully strided case.
    const B = 3;
    const base = rng.randn(M * B * K);
    const ap = Tensor.from(base, [M, B, K]).permute(1, 0, 2);
    const dense = ap.contiguous().toFloat32();
    const b2 = rng.randn(K * N);
    const y3 = withPoison(() => runSync(matmul(ap, Tensor.from(b2, [K, N]))));
    expect(relErr(y3.toFloat32(), refMatmul(dense, [B, M, K], b2, [K, N]).y)).toBeLessThan(1e-5);
    const odd = Tensor.from(rng.randn(4 * 5 * 6), [4, 5, 6]).permute(2, 0, 1); // [6, 4, 5], last stride 6
    const oddDense = odd.contiguous().toFloat32();
    const b3 = rng.randn(5 * 7);
    const y4 = runSync(matmul(odd, Tensor.from(b3, [5, 7])));
    expect(relErr(y4.toFloat32(), refMatmul(oddDense, [6, 4, 5], b3, [5, 7]).y)).toBeLessThan(1e-5);
  });

  it('rejects mismatched shapes naming the op and argument', () => {
    const a = Tensor.zeros([3, 4]),
      b = Tensor.zeros([5, 6]);
    expect(() => runSync(matmul(a, b))).toThrow(/matmul: inner dims differ/);
    expect(() => runSync(matmul(Tensor.zeros([4]), b))).toThrow(TypeError);
    expect(() => runSync(matmul(Tensor.zeros([2, 3, 4]), Tensor.zeros([3, 4, 2])))).toThrow(/batch dims/);
    expect(() => runSync(matmul(a, b, { alpha: 'x' as never }))).toThrow(/opts.alpha/);
  });

  it('handles K = 0 (zeros) and empty outputs', () => {
    const y = withPoison(() => runSync(matmul(Tensor.zeros([3, 0]), Tensor.zeros([0, 4]))));
    expect(Array.from(y.toFloat32())).toEqual(new Array(12).fill(0));
    expect(runSync(matmul(Tensor.zeros([0, 5]), Tensor.zeros([5, 4]))).shape).toEqual([0, 4]);
  });
});

describe('matmul_backward', () => {
  const cases: [number[], number[], boolean, boolean][] = [
    [[7, 5], [5, 3], false, false],
    [[5, 7], [5, 3], true, false],
    [[7, 5], [3, 5], false, true],
    [[5, 7], [3, 5], true, true],
    [[2, 3, 6, 4], [4, 5], false, false],
    [[2, 3, 6, 4], [5, 4], false, true],
    [[3, 4, 6], [2, 1, 4, 5], true, false],
    [[2, 1, 33, 17], [3, 17, 9], false, false],
    [[65, 130], [130, 70], false, false],
  ];
  for (const [as, bs, ta, tb] of cases) {
    it(`a ${as} b ${bs} trans ${ta}/${tb}: analytic float64 and finite differences`, () => {
      const rng = new Rng();
      const a = rng.randn(numel(as)),
        b = rng.randn(numel(bs));
      const alpha = 1.5;
      const ys = refMatmul(a, as, b, bs, ta, tb, alpha).shape;
      const r = rng.randn(numel(ys));
      const [ga, gb] = withPoison(() =>
        runSync(
          matmulBackward(Tensor.from(a, as), Tensor.from(b, bs), Tensor.from(r, ys), { transA: ta, transB: tb, alpha }),
        ),
      );
      expect(ga.shape).toEqual(as);
      expect(gb.shape).toEqual(bs);
      const gaf = ga.toFloat32(),
        gbf = gb.toFloat32();
      expect(allFinite(gaf) && allFinite(gbf), seedInfo(rng.seed)).toBe(true);
      const ref = refMatmulGrads(a, as, b, bs, r, ta, tb, alpha);
      expect(relErr(gaf, ref.ga), seedInfo(rng.seed)).toBeLessThan(1e-5);
      expect(relErr(gbf, ref.gb), seedInfo(rng.seed)).toBeLessThan(1e-5);
      // L = sum(r * y), y from the float64 reference.
      const loss = (aa: Float32Array, bb: Float32Array) => {
        const y = refMatmul(aa, as, bb, bs, ta, tb, alpha).y;
        let s = 0;
        for (let i = 0; i < y.length; ++i) s += y[i]! * r[i]!;
        return s;
      };
      const fa = finiteDiffCheck(a, (x) => loss(x, b), gaf, { rng, count: 12 });
      const fb = finiteDiffCheck(b, (x) => loss(a, x), gbf, { rng, count: 12 });
      expect(fa.maxRel, `${JSON.stringify(fa.worst)} ${seedInfo(rng.seed)}`).toBeLessThan(1e-2);
      expect(fb.maxRel, `${JSON.stringify(fb.worst)} ${seedInfo(rng.seed)}`).toBeLessThan(1e-2);
    });
  }
});

function refLinear(
  x: ArrayLike<number>,
  rows: number,
  K: number,
  w: ArrayLike<number>,
  N: number,
  bias?: ArrayLike<number>,
) {
  const y = new Float64Array(rows * N);
  for (let i = 0; i < rows; ++i)
    for (let j = 0; j < N; ++j) {
      let s = bias ? bias[j]! : 0;
      for (let k = 0; k < K; ++k) s += x[i * K + k]! * w[j * K + k]!;
      y[i * N + j] = s;
    }
  return y;
}

describe('linear', () => {
  const shapes: [number[], number][] = [
    [[1, 1], 1],
    [[7, 33], 1],
    [[2, 33, 7], 257],
    [[257, 64], 33],
    [[3, 5, 100], 48],
    [[145, 512], 96],
  ];
  for (const [xs, N] of shapes) {
    for (const withBias of [false, true]) {
      it(`x ${xs} -> ${N} bias=${withBias}: forward and backward vs float64`, () => {
        const rng = new Rng();
        const K = xs.at(-1)!,
          rows = numel(xs.slice(0, -1));
        const x = rng.randn(numel(xs)),
          w = rng.randn(N * K, 0.2),
          bias = withBias ? rng.randn(N) : undefined;
        const y = withPoison(() =>
          runSync(linear(Tensor.from(x, xs), Tensor.from(w, [N, K]), bias ? Tensor.from(bias, [N]) : null)),
        );
        expect(y.shape).toEqual([...xs.slice(0, -1), N]);
        const yf = y.toFloat32();
        expect(allFinite(yf), seedInfo(rng.seed)).toBe(true);
        expect(relErr(yf, refLinear(x, rows, K, w, N, bias)), seedInfo(rng.seed)).toBeLessThan(tol(K));
        const gy = rng.randn(rows * N);
        const [gx, gw, gb] = withPoison(() =>
          runSync(
            linearBackward(Tensor.from(x, xs), Tensor.from(w, [N, K]), Tensor.from(gy, [...xs.slice(0, -1), N]), {
              hasBias: withBias,
            }),
          ),
        );
        // gx = gy w, gw = gy^T x, gb = colsum(gy)
        const rgx = refMatmul(gy, [rows, N], w, [N, K]).y;
        const rgw = refMatmul(gy, [rows, N], x, [rows, K], true, false).y;
        expect(relErr(gx.toFloat32(), rgx), seedInfo(rng.seed)).toBeLessThan(1e-5);
        expect(relErr(gw.toFloat32(), rgw), seedInfo(rng.seed)).toBeLessThan(1e-5);
        if (withBias) {
          const rgb = new Float64Array(N);
          for (let i = 0; i < rows; ++i) for (let j = 0; j < N; ++j) rgb[j]! += gy[i * N + j]!;
          expect(relErr(gb!.toFloat32(), rgb), seedInfo(rng.seed)).toBeLessThan(1e-5);
        } else {
          expect(gb).toBeNull();
        }
      });
    }
  }

  it('finite differences of every linear_backward output', () => {
    const rng = new Rng();
    const rows = 5,
      K = 7,
      N = 4;
    const x = rng.randn(rows * K),
      w = rng.randn(N * K),
      bias = rng.randn(N),
      r = rng.randn(rows * N);
    const loss = (xx: Float32Array, ww: Float32Array, bb: Float32Array) => {
      const y = refLinear(xx, rows, K, ww, N, bb);
      let s = 0;
      for (let i = 0; i < y.length; ++i) s += y[i]! * r[i]!;
      return s;
    };
    const [gx, gw, gb] = runSync(
      linearBackward(Tensor.from(x, [rows, K]), Tensor.from(w, [N, K]), Tensor.from(r, [rows, N]), { hasBias: true }),
    );
    for (const [name, v, f, g] of [
      ['x', x, (t: Float32Array) => loss(t, w, bias), gx.toFloat32()],
      ['w', w, (t: Float32Array) => loss(x, t, bias), gw.toFloat32()],
      ['bias', bias, (t: Float32Array) => loss(x, w, t), gb!.toFloat32()],
    ] as const) {
      const fd = finiteDiffCheck(v, f, g, { rng, count: 16 });
      expect(fd.maxRel, `${name} ${JSON.stringify(fd.worst)} ${seedInfo(rng.seed)}`).toBeLessThan(1e-2);
    }
  });

  it('accepts strided x and a transposed w view', () => {
    const rng = new Rng();
    const T = 9,
      B = 3,
      K = 20,
      N = 11;
    const base = rng.randn(T * B * K);
    const xv = Tensor.from(base, [T, B, K]).permute(1, 0, 2); // [B, T, K], not contiguous
    const xd = xv.contiguous().toFloat32();
    const wT = rng.randn(K * N);
    const wv = Tensor.from(wT, [K, N]).permute(1, 0); // [N, K] view of a [K, N] array
    const wd = wv.contiguous().toFloat32();
    const y = withPoison(() => runSync(linear(xv, wv)));
    expect(y.shape).toEqual([B, T, N]);
    expect(relErr(y.toFloat32(), refLinear(xd, B * T, K, wd, N)), seedInfo(rng.seed)).toBeLessThan(1e-5);
    // a column slice-like view: x [B, T, K] permuted from [B, K, T] has last stride != 1.
    const xb = Tensor.from(rng.randn(B * K * T), [B, K, T]).permute(0, 2, 1);
    const y2 = runSync(linear(xb, wv));
    expect(relErr(y2.toFloat32(), refLinear(xb.contiguous().toFloat32(), B * T, K, wd, N))).toBeLessThan(1e-5);
  });

  it('rejects bad shapes naming the argument', () => {
    expect(() => runSync(linear(Tensor.zeros([3, 4]), Tensor.zeros([5, 3])))).toThrow(/linear: 'w'/);
    expect(() => runSync(linear(Tensor.zeros([3, 4]), Tensor.zeros([5, 4]), Tensor.zeros([4])))).toThrow(
      /linear: 'bias'/,
    );
    expect(() => runSync(linearBackward(Tensor.zeros([3, 4]), Tensor.zeros([5, 4]), Tensor.zeros([3, 4])))).toThrow(
      /linear_backward: 'gy'/,
    );
    expect(() => runSync(linear(Tensor.zeros([3, 4]), 'w' as never))).toThrow(TypeError);
  });
});

describe('sgemm kernel dispatch', () => {
  const kernelIn = (env: Record<string, string>) => {
    const script =
      `const a = require(${JSON.stringify(new URL('../lib/addon.cjs', import.meta.url).pathname)});` +
      `const [t] = a.runOp('gemm_kernel', []); process.stdout.write(JSON.stringify(Array.from(new Int32Array(t.read()))));`;
    return JSON.parse(
      execFileSync(process.execPath, ['-e', script], { env: { ...process.env, ...env }, encoding: 'utf8' }),
    ) as number[];
  };
  it('MERGEVQ_SIMD=avx2 selects the AVX2/FMA kernel; the default follows the CPU', () => {
    expect(kernelIn({ MERGEVQ_SIMD: 'avx2' })).toEqual([16, 0]);
    const [, avx512] = new Int32Array(addon.runOp('gemm_kernel', [])[0]!.read());
    if (process.platform === 'linux') {
      const cpuHasAvx512 = /\bavx512f\b/.test(execFileSync('cat', ['/proc/cpuinfo'], { encoding: 'utf8' }));
      // this process follows the CPU unless it was started with the override itself
      expect(avx512).toBe(cpuHasAvx512 && process.env.MERGEVQ_SIMD !== 'avx2' ? 1 : 0);
    }
  });
});
