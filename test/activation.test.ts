import { describe, expect, it } from 'vitest';
import { Tensor } from '../lib/tensor.js';
import { runSync } from '../lib/graph.js';
import { gelu, leakyRelu, logSoftmax, silu, softmax, swiglu } from '../lib/ops/nn.js';
import { Rng, seedInfo, relErr, finiteDiffCheck } from './helpers.js';
import { actGrad, erf, f64, maxRelElem, nonContig, runPoisoned, sigmoid, dot } from './nn_ref.js';

const K = Math.sqrt(2 / Math.PI);
// float64 references written to avoid cancellation in the tails
const refs: Record<string, { f: (x: number) => number; g: (x: number) => number }> = {
  silu: { f: (x) => x * sigmoid(x), g: (x) => actGrad('silu', x) },
  gelu: {
    f: (x) =>
      x >= 0
        ? 0.5 * x * (1 + erf(x / Math.SQRT2))
        : 0.5 * x * (1 - erf(-x / Math.SQRT2) === 0 ? 0 : 0.5 * x * erfc(-x / Math.SQRT2)),
    g: (x) => actGrad('gelu', x),
  },
  gelu_tanh: { f: (x) => x * sigmoid(2 * K * (x + 0.044715 * x ** 3)), g: (x) => actGrad('gelu_tanh', x) },
  leaky_relu: { f: (x) => (x > 0 ? x : 0.2 * x), g: (x) => (x > 0 ? 1 : 0.2) },
};
function erfc(x: number): number {
  // x >= 0
  if (x < 3) return 1 - erf(x);
  let f = x;
  for (let k = 80; k >= 1; --k) f = x + k / 2 / f;
  return Math.exp(-x * x) / Math.sqrt(Math.PI) / f;
}
refs.gelu!.f = (x) => (x >= 0 ? 0.5 * x * (1 + erf(x / Math.SQRT2)) : 0.5 * x * erfc(-x / Math.SQRT2));

function inputs(rng: Rng, n: number): Float32Array {
  const special = [
    0, -0, 1e-30, -1e-30, 1e-8, -1e-8, 88, -88, 90, -90, 100, -100, 20, -20, 5.5, -5.5, 87.5, -87.5, 104, -104,
  ];
  const a = rng.randn(n, 4);
  for (let i = 0; i < n && i < special.length; ++i) if (rng.next() < 0.5) a[i] = special[i]!;
  return a;
}

const ops: { name: string; ref: string; attrs?: Record<string, unknown>; tol: number; floor: number }[] = [
  { name: 'silu', ref: 'silu', tol: 4e-7, floor: 1e-30 },
  { name: 'gelu', ref: 'gelu', attrs: { approximate: 'none' }, tol: 2e-7, floor: 1e-37 },
  { name: 'gelu', ref: 'gelu_tanh', attrs: { approximate: 'tanh' }, tol: 6e-7, floor: 1e-30 },
  { name: 'leaky_relu', ref: 'leaky_relu', attrs: { slope: 0.2 }, tol: 1e-7, floor: 1e-30 },
];

describe('activations', () => {
  for (const o of ops) {
    for (const n of [1, 7, 33, 257, 4099]) {
      it(`${o.ref} forward/backward n=${n}`, () => {
        const rng = new Rng();
        const info = seedInfo(rng.seed);
        const x = inputs(rng, n),
          gy = rng.randn(n);
        const r = refs[o.ref]!;
        const [y] = runPoisoned(o.name, [Tensor.from(x, [n])], o.attrs);
        const yr = Float64Array.from(x, r.f);
        // gelu_tanh: float32 rounding of u is amplified by the conditioning of sigmoid(2u)
        const cond = (v: number) =>
          o.ref === 'gelu_tanh'
            ? 1 + Math.abs(2 * K * (v + 0.044715 * v ** 3)) * (1 - sigmoid(2 * K * (v + 0.044715 * v ** 3)))
            : 1;
        const yv = f64(y!);
        let worst = 0;
        for (let i = 0; i < n; ++i)
          worst = Math.max(worst, Math.abs(yv[i]! - yr[i]!) / Math.max(Math.abs(yr[i]!), o.floor) / cond(x[i]!));
        expect(worst, info).toBeLessThan(o.tol);
        const [gx] = runPoisoned(`${o.name}_backward`, [Tensor.from(x, [n]), Tensor.from(gy, [n])], o.attrs);
        const gr = Float64Array.from(x, (v, i) => r.g(v) * gy[i]!);
        // relative to max(|gx|, 0.1 |gy|): near a zero of the derivative the error is absolute
        const gv = f64(gx!);
        let gworst = 0;
        for (let i = 0; i < n; ++i)
          gworst = Math.max(
            gworst,
            Math.abs(gv[i]! - gr[i]!) / Math.max(Math.abs(gr[i]!), 0.1 * Math.abs(gy[i]!), 1e-30) / cond(x[i]!),
          );
        // ~50 float32 ulps: the derivative chains about ten rounded operations, each conditioned by cond(x)
        expect(gworst, info).toBeLessThan(3e-6);
        // the reference derivative against finite differences (points away from leaky_relu's kink)
        const xs = Float32Array.from(x, (v) => (Math.abs(v) < 0.01 ? 0.5 : Math.max(-30, Math.min(30, v))));
        const grs = Float64Array.from(xs, (v, i) => r.g(v) * gy[i]!);
        // The function is evaluated in float64, so a small step is exact to ~1e-10: with 1e-3 the
        // central difference's own truncation error (eps^2 f''' / 6) exceeds 1e-4 of a derivative
        // near one of its zeros (seed 465556808).
        const fd = finiteDiffCheck(xs, (xx) => dot(Float64Array.from(xx, r.f), gy), grs, {
          eps: 1e-5,
          count: Math.min(n, 16),
          rng,
        });
        expect(fd.maxRel, `${info} ${JSON.stringify(fd.worst)}`).toBeLessThan(1e-4);
      });
    }
    it(`${o.ref} accepts non-contiguous input`, () => {
      const rng = new Rng();
      const shape = [3, 7, 5],
        n = 105;
      const x = rng.randn(n, 3),
        gy = rng.randn(n);
      const [y] = runPoisoned(o.name, [nonContig(x, shape)], o.attrs);
      const [y2] = runPoisoned(o.name, [Tensor.from(x, shape)], o.attrs);
      expect(y!.shape).toEqual(shape);
      expect(Array.from(y!.toFloat32())).toEqual(Array.from(y2!.toFloat32()));
      const [g] = runPoisoned(`${o.name}_backward`, [nonContig(x, shape), nonContig(gy, shape)], o.attrs);
      const [g2] = runPoisoned(`${o.name}_backward`, [Tensor.from(x, shape), Tensor.from(gy, shape)], o.attrs);
      expect(Array.from(g!.toFloat32())).toEqual(Array.from(g2!.toFloat32()));
    });
  }

  it('exp-based results do not depend on position (vector body vs tail)', () => {
    const rng = new Rng();
    const x = rng.randn(37, 3);
    const [a] = runPoisoned('silu', [Tensor.from(x, [37])]);
    const [b] = runPoisoned('silu', [Tensor.from(x.slice(3), [34])]);
    expect(Array.from(a!.toFloat32().slice(3))).toEqual(Array.from(b!.toFloat32()));
  });

  it('swiglu forward/backward', () => {
    const rng = new Rng();
    const info = seedInfo(rng.seed);
    for (const shape of [[1], [7, 33], [3, 5, 7]]) {
      const n = shape.reduce((p, q) => p * q, 1);
      const a = rng.randn(n, 3),
        b = rng.randn(n),
        gy = rng.randn(n);
      const [y] = runPoisoned('swiglu', [
        shape.length > 1 ? nonContig(a, shape) : Tensor.from(a, shape),
        Tensor.from(b, shape),
      ]);
      const yr = Float64Array.from(a, (v, i) => v * sigmoid(v) * b[i]!);
      expect(maxRelElem(f64(y!), yr, 1e-30), info).toBeLessThan(6e-7);
      const [ga, gb] = runPoisoned('swiglu_backward', [
        Tensor.from(a, shape),
        Tensor.from(b, shape),
        Tensor.from(gy, shape),
      ]);
      const gar = Float64Array.from(a, (v, i) => gy[i]! * b[i]! * actGrad('silu', v));
      const gbr = Float64Array.from(a, (v, i) => gy[i]! * v * sigmoid(v));
      const gav = f64(ga!);
      let gw = 0;
      for (let i = 0; i < n; ++i)
        gw = Math.max(
          gw,
          Math.abs(gav[i]! - gar[i]!) / Math.max(Math.abs(gar[i]!), 0.1 * Math.abs(gy[i]! * b[i]!), 1e-30),
        );
      expect(gw, info).toBeLessThan(2e-6);
      expect(maxRelElem(f64(gb!), gbr, 1e-6), info).toBeLessThan(2e-6);
      const loss = (aa: ArrayLike<number>, bb: ArrayLike<number>) => {
        let s = 0;
        for (let i = 0; i < n; ++i) s += aa[i]! * sigmoid(aa[i]!) * bb[i]! * gy[i]!;
        return s;
      };
      // Finite differences away from silu's stationary point (a ~ -1.2785): there the derivative
      // vanishes and the O(eps^2) truncation error is no longer small relative to it. At >= 0.1
      // from it |silu'| >= 0.02 and the error is below eps^2 / 6 * |silu'''| / 0.02 ~ 3e-6 relative.
      const aFd = Float32Array.from(a, (v) => (Math.abs(v + 1.2785) < 0.1 ? v + 0.3 : v));
      const garFd = Float64Array.from(aFd, (v, i) => gy[i]! * b[i]! * actGrad('silu', v));
      expect(finiteDiffCheck(aFd, (aa) => loss(aa, b), garFd, { eps: 1e-3, rng }).maxRel, info).toBeLessThan(1e-4);
      expect(finiteDiffCheck(b, (bb) => loss(a, bb), gbr, { eps: 1e-3, rng }).maxRel, info).toBeLessThan(1e-4);
    }
    expect(() => runSync(swiglu(Tensor.from(new Float32Array(3)), Tensor.from(new Float32Array(4))))).toThrow(
      /swiglu: b/,
    );
  });

  it('wrappers run and validate', () => {
    const x = Tensor.from(new Float32Array([-1, 0, 2]));
    expect(runSync(silu(x)).toFloat32()[2]).toBeCloseTo(2 * sigmoid(2), 6);
    expect(runSync(gelu(x, { approximate: 'tanh' })).shape).toEqual([3]);
    expect(runSync(leakyRelu(x, { slope: 0.1 })).toFloat32()[0]).toBeCloseTo(-0.1, 7);
    expect(() => runSync(gelu(x, { approximate: 'fast' as never }))).toThrow(TypeError);
    expect(() => runSync(leakyRelu(x, { slope: NaN }))).toThrow(RangeError);
    expect(() => runPoisoned('gelu', [x], { approximate: 'fast' })).toThrow(/gelu: option 'approximate'/);
    expect(() => runPoisoned('silu_backward', [x, Tensor.from(new Float32Array(2))])).toThrow(
      /silu_backward: 'gy'|silu_backward: gy/,
    );
  });
});

// ---------------- softmax ----------------
function softmaxRef(x: ArrayLike<number>, shape: number[], dim: number, log: boolean): Float64Array {
  const d = dim < 0 ? dim + shape.length : dim;
  const D = shape[d]!,
    inner = shape.slice(d + 1).reduce((a, b) => a * b, 1),
    outer = x.length / (D * inner);
  const y = new Float64Array(x.length);
  for (let o = 0; o < outer; ++o)
    for (let i = 0; i < inner; ++i) {
      let m = -Infinity;
      for (let k = 0; k < D; ++k) m = Math.max(m, x[(o * D + k) * inner + i]!);
      let s = 0;
      for (let k = 0; k < D; ++k) s += Math.exp(x[(o * D + k) * inner + i]! - m);
      for (let k = 0; k < D; ++k) {
        const j = (o * D + k) * inner + i;
        y[j] = log ? x[j]! - m - Math.log(s) : Math.exp(x[j]! - m) / s;
      }
    }
  return y;
}

describe('softmax / log_softmax', () => {
  const cases = [
    { shape: [7, 33], dim: -1 },
    { shape: [7, 33, 5], dim: 1 },
    { shape: [4, 1], dim: -1 },
    { shape: [5, 3, 2], dim: 0 },
    { shape: [3, 1031], dim: 1 },
    { shape: [2, 7, 5], dim: 2 },
  ];
  for (const cs of cases) {
    for (const log of [false, true]) {
      it(`${log ? 'log_softmax' : 'softmax'} ${JSON.stringify(cs)}`, () => {
        const rng = new Rng();
        const info = seedInfo(rng.seed);
        const n = cs.shape.reduce((a, b) => a * b, 1);
        const x = rng.randn(n, 4);
        if (n > 4) {
          x[0] = 1e4;
          x[1] = -Infinity;
          x[2] = -1e4;
        } // large offsets and -inf entries
        const name = log ? 'log_softmax' : 'softmax';
        const [y] = runPoisoned(name, [nonContig(x, cs.shape)], { dim: cs.dim }).map((t) => t);
        const yr = softmaxRef(x, cs.shape, cs.dim, log);
        const yv = f64(y!);
        if (log) {
          for (let i = 0; i < n; ++i)
            if (yr[i] === -Infinity) {
              expect(yv[i]).toBe(-Infinity);
              yv[i] = 0;
              yr[i] = 0;
            }
          expect(maxRelElem(yv, yr, 1), info).toBeLessThan(1e-6);
        } else {
          // float32 rounding of x - max is amplified by |x - max| <= |log y|
          let worst = 0;
          for (let i = 0; i < n; ++i) {
            const e = Math.abs(yv[i]! - yr[i]!);
            worst = Math.max(worst, yr[i]! > 1e-30 ? e / yr[i]! / (2 + Math.abs(Math.log(yr[i]!))) : e / 1e-36);
          }
          expect(worst, info).toBeLessThan(3e-7);
        }
        // backward on finite inputs
        const xf = rng.randn(n, 2),
          gy = rng.randn(n);
        const [yf] = runPoisoned(name, [Tensor.from(xf, cs.shape)], { dim: cs.dim });
        const [gx] = runPoisoned(`${name}_backward`, [yf!, nonContig(gy, cs.shape)], { dim: cs.dim });
        const yfr = softmaxRef(xf, cs.shape, cs.dim, log);
        // float64 analytic gradient
        const d = cs.dim < 0 ? cs.dim + cs.shape.length : cs.dim;
        const D = cs.shape[d]!,
          inner = cs.shape.slice(d + 1).reduce((a, b) => a * b, 1),
          outer = n / (D * inner);
        const gr = new Float64Array(n);
        for (let o = 0; o < outer; ++o)
          for (let i = 0; i < inner; ++i) {
            let s = 0;
            for (let k = 0; k < D; ++k) {
              const j = (o * D + k) * inner + i;
              s += log ? gy[j]! : gy[j]! * yfr[j]!;
            }
            for (let k = 0; k < D; ++k) {
              const j = (o * D + k) * inner + i;
              gr[j] = log ? gy[j]! - Math.exp(yfr[j]!) * s : yfr[j]! * (gy[j]! - s);
            }
          }
        expect(relErr(f64(gx!), gr), info).toBeLessThan(1e-5);
        const fd = finiteDiffCheck(xf, (xx) => dot(softmaxRef(xx, cs.shape, cs.dim, log), gy), gr, {
          eps: 1e-3,
          count: 16,
          rng,
        });
        expect(fd.maxRel, `${info} ${JSON.stringify(fd.worst)}`).toBeLessThan(1e-4);
      });
    }
  }
  it('wrappers and errors', () => {
    const x = Tensor.from(new Float32Array([1, 2, 3, 4]), [2, 2]);
    expect(relErr(f64(runSync(softmax(x, { dim: 0 }))), softmaxRef([1, 2, 3, 4], [2, 2], 0, false))).toBeLessThan(1e-6);
    expect(relErr(f64(runSync(logSoftmax(x))), softmaxRef([1, 2, 3, 4], [2, 2], -1, true))).toBeLessThan(1e-6);
    expect(() => runSync(softmax(x, { dim: 2 }))).toThrow(RangeError);
    expect(() => runSync(softmax(x, { dim: 2 }))).toThrow(/softmax: option 'dim'/);
    expect(() => runSync(softmax(x, { dim: 0.5 }))).toThrow(TypeError);
  });
});
