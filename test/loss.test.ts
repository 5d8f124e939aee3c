import { describe, expect, it } from 'vitest';
import { Tensor } from '../lib/tensor.js';
import { runSync } from '../lib/graph.js';
import { crossEntropy, klDivSoftmax, mseLoss } from '../lib/ops/nn.js';
import { Rng, seedInfo, relErr, finiteDiffCheck } from './helpers.js';
import { f64, nonContig, runPoisoned } from './nn_ref.js';

function logSoftmaxRow(x: ArrayLike<number>, off: number, C: number): Float64Array {
  let m = -Infinity;
  for (let c = 0; c < C; ++c) m = Math.max(m, x[off + c]!);
  let s = 0;
  for (let c = 0; c < C; ++c) s += Math.exp(x[off + c]! - m);
  const l = Math.log(s) + m;
  return Float64Array.from({ length: C }, (_, c) => x[off + c]! - l);
}
type Red = 'mean' | 'sum' | 'none';
// float64 cross entropy (torch semantics) and its gradient for upstream g (scalar or [N])
function ceRef(x: ArrayLike<number>, t: number[], N: number, C: number, eps: number, ignore: number, red: Red) {
  const rows = new Float64Array(N);
  let count = 0;
  for (let n = 0; n < N; ++n) {
    if (t[n] === ignore) continue;
    ++count;
    const lp = logSoftmaxRow(x, n * C, C);
    let mean = 0;
    for (let c = 0; c < C; ++c) mean -= lp[c]! / C;
    rows[n] = (1 - eps) * -lp[t[n]!]! + eps * mean;
  }
  const total = rows.reduce((a, b) => a + b, 0);
  return { rows, count, loss: red === 'none' ? rows : [red === 'mean' ? total / count : total] };
}
function ceGradRef(
  x: ArrayLike<number>,
  t: number[],
  N: number,
  C: number,
  eps: number,
  ignore: number,
  red: Red,
  g: number[],
) {
  const { count } = ceRef(x, t, N, C, eps, ignore, red);
  const gx = new Float64Array(N * C);
  for (let n = 0; n < N; ++n) {
    if (t[n] === ignore) continue;
    const gn = red === 'none' ? g[n]! : red === 'mean' ? g[0]! / count : g[0]!;
    const lp = logSoftmaxRow(x, n * C, C);
    for (let c = 0; c < C; ++c) gx[n * C + c] = gn * (Math.exp(lp[c]!) - eps / C - (c === t[n] ? 1 - eps : 0));
  }
  return gx;
}

describe('cross_entropy', () => {
  const cases: { N: number; C: number; eps: number; red: Red; ignoreFrac: number; ignore?: number }[] = [
    { N: 7, C: 33, eps: 0, red: 'mean', ignoreFrac: 0 },
    { N: 33, C: 7, eps: 0.1, red: 'mean', ignoreFrac: 0.3 },
    { N: 5, C: 1, eps: 0.1, red: 'sum', ignoreFrac: 0.2 },
    { N: 9, C: 1031, eps: 0.2, red: 'none', ignoreFrac: 0.3, ignore: 3 },
    { N: 1, C: 7, eps: 0, red: 'none', ignoreFrac: 0 },
    { N: 64, C: 257, eps: 0.1, red: 'sum', ignoreFrac: 0.1 },
  ];
  for (const cs of cases) {
    it(`forward/backward ${JSON.stringify(cs)}`, () => {
      const rng = new Rng();
      const info = seedInfo(rng.seed);
      const { N, C, eps, red } = cs;
      const ignore = cs.ignore ?? -100;
      const x = rng.randn(N * C, 3);
      const t = Array.from({ length: N }, () => (rng.next() < cs.ignoreFrac ? ignore : rng.int(C)));
      if (cs.ignore !== undefined && C > 3) t[0] = 3; // a real class equal to ignore_index is ignored too
      const tt = Tensor.from(BigInt64Array.from(t.map(BigInt)), [N]);
      const attrs = { label_smoothing: eps, ignore_index: ignore, reduction: red };
      const xt = N > 1 && C > 1 ? nonContig(x, [N, C]) : Tensor.from(x, [N, C]);
      const [loss] = runPoisoned('cross_entropy', [xt, tt], attrs);
      const ref = ceRef(x, t, N, C, eps, ignore, red);
      expect(loss!.shape).toEqual(red === 'none' ? [N] : []);
      if (red === 'mean' && ref.count === 0) expect(Number.isNaN(loss!.item())).toBe(true);
      else expect(relErr(f64(loss!), Array.from(ref.loss)), info).toBeLessThan(1e-6);
      if (red === 'none') for (let n = 0; n < N; ++n) if (t[n] === ignore) expect(loss!.toFloat32()[n]).toBe(0);
      const g = red === 'none' ? Array.from(rng.randn(N)) : [rng.uniform(0.5, 2)];
      const gt = Tensor.from(Float32Array.from(g), red === 'none' ? [N] : []);
      const [gx] = runPoisoned('cross_entropy_backward', [xt, tt, gt], attrs);
      const gr = ceGradRef(x, t, N, C, eps, ignore, red, g);
      expect(relErr(f64(gx!), gr), info).toBeLessThan(1e-5);
      for (let n = 0; n < N; ++n)
        if (t[n] === ignore) for (let c = 0; c < C; ++c) expect(gx!.toFloat32()[n * C + c]).toBe(0);
      const L = (xx: ArrayLike<number>) => {
        const r = ceRef(xx, t, N, C, eps, ignore, red);
        return red === 'none' ? r.rows.reduce((a, v, i) => a + v * g[i]!, 0) : (r.loss as number[])[0]! * g[0]!;
      };
      if (ref.count > 0) {
        const fd = finiteDiffCheck(x, L, gr, { eps: 1e-3, count: 16, rng });
        expect(fd.maxRel, `${info} ${JSON.stringify(fd.worst)}`).toBeLessThan(1e-4);
      }
    });
  }
  it('torch details: all ignored mean is NaN, bad targets are RangeErrors naming target', () => {
    const x = Tensor.from(new Float32Array(6), [2, 3]);
    const ign = Tensor.from(new BigInt64Array([-100n, -100n]), [2]);
    expect(Number.isNaN(runSync(crossEntropy(x, ign)).item())).toBe(true);
    expect(runSync(crossEntropy(x, ign, { reduction: 'sum' })).item()).toBe(0);
    expect(() => runSync(crossEntropy(x, Tensor.from(new BigInt64Array([0n, 3n]), [2])))).toThrow(RangeError);
    expect(() => runSync(crossEntropy(x, Tensor.from(new BigInt64Array([0n, 3n]), [2])))).toThrow(
      /cross_entropy: target\[1\] = 3/,
    );
    expect(() => runSync(crossEntropy(x, Tensor.from(new Float32Array(2), [2])))).toThrow(/cross_entropy: 'target'/);
    expect(() => runSync(crossEntropy(x, ign, { labelSmoothing: 2 }))).toThrow(RangeError);
    // uniform logits: loss = log C exactly
    expect(runSync(crossEntropy(x, Tensor.from(new BigInt64Array([1n, 2n]), [2]))).item()).toBeCloseTo(Math.log(3), 6);
  });
});

describe('soft targets and distillation', () => {
  it('soft_cross_entropy forward/backward', () => {
    const rng = new Rng();
    const info = seedInfo(rng.seed);
    for (const [N, C] of [
      [7, 33],
      [1, 1],
      [5, 257],
    ] as const) {
      const x = rng.randn(N * C, 2);
      const q = new Float32Array(N * C);
      for (let n = 0; n < N; ++n) {
        let s = 0;
        for (let c = 0; c < C; ++c) s += q[n * C + c] = rng.next();
        for (let c = 0; c < C; ++c) q[n * C + c]! /= s;
      }
      const loss = (xx: ArrayLike<number>, qq: ArrayLike<number>) => {
        let tot = 0;
        for (let n = 0; n < N; ++n) {
          const lp = logSoftmaxRow(xx, n * C, C);
          for (let c = 0; c < C; ++c) tot -= qq[n * C + c]! * lp[c]!;
        }
        return tot / N;
      };
      const [l] = runPoisoned('soft_cross_entropy', [Tensor.from(x, [N, C]), Tensor.from(q, [N, C])], {
        reduction: 'mean',
      });
      expect(Math.abs(l!.item() - loss(x, q)) / Math.max(1e-6, Math.abs(loss(x, q))), info).toBeLessThan(1e-6);
      const [gx, gq] = runPoisoned(
        'soft_cross_entropy_backward',
        [Tensor.from(x, [N, C]), Tensor.from(q, [N, C]), Tensor.from(new Float32Array([1]), [])],
        { reduction: 'mean' },
      );
      const gxr = new Float64Array(N * C),
        gqr = new Float64Array(N * C);
      for (let n = 0; n < N; ++n) {
        const lp = logSoftmaxRow(x, n * C, C);
        let sq = 0;
        for (let c = 0; c < C; ++c) sq += q[n * C + c]!;
        for (let c = 0; c < C; ++c) {
          gxr[n * C + c] = (Math.exp(lp[c]!) * sq - q[n * C + c]!) / N;
          gqr[n * C + c] = -lp[c]! / N;
        }
      }
      if (C > 1) expect(relErr(f64(gx!), gxr), info).toBeLessThan(1e-5);
      else expect(Math.max(...Array.from(f64(gx!), Math.abs)), info).toBeLessThan(1e-6);
      expect(relErr(f64(gq!), gqr), info).toBeLessThan(1e-5);
      if (C > 1)
        expect(finiteDiffCheck(x, (xx) => loss(xx, q), gxr, { eps: 1e-3, rng }).maxRel, info).toBeLessThan(1e-4);
      expect(finiteDiffCheck(q, (qq) => loss(x, qq), gqr, { eps: 1e-3, rng }).maxRel, info).toBeLessThan(1e-4);
    }
  });

  it('kl_div_softmax (T = 4, batchmean) forward/backward', () => {
    const rng = new Rng();
    const info = seedInfo(rng.seed);
    for (const [N, C, T] of [
      [8, 33, 4],
      [1, 7, 1],
      [3, 1031, 4],
    ] as const) {
      const s = rng.randn(N * C, 3),
        tt = rng.randn(N * C, 3);
      const kl = (ss: ArrayLike<number>) => {
        let tot = 0;
        for (let n = 0; n < N; ++n) {
          const lq = logSoftmaxRow(
            Array.from(ss, (v) => v / T),
            n * C,
            C,
          );
          const lp = logSoftmaxRow(
            Array.from(tt, (v) => v / T),
            n * C,
            C,
          );
          for (let c = 0; c < C; ++c) tot += Math.exp(lp[c]!) * (lp[c]! - lq[c]!);
        }
        return tot / N;
      };
      const st = nonContig(s, [N, C]);
      const [l] = runPoisoned('kl_div_softmax', [st, Tensor.from(tt, [N, C])], { temperature: T });
      expect(Math.abs(l!.item() - kl(s)) / kl(s), info).toBeLessThan(2e-6);
      const [gs] = runPoisoned(
        'kl_div_softmax_backward',
        [st, Tensor.from(tt, [N, C]), Tensor.from(new Float32Array([16]), [])],
        { temperature: T },
      );
      const gr = new Float64Array(N * C);
      for (let n = 0; n < N; ++n) {
        const lq = logSoftmaxRow(
            Array.from(s, (v) => v / T),
            n * C,
            C,
          ),
          lp = logSoftmaxRow(
            Array.from(tt, (v) => v / T),
            n * C,
            C,
          );
        for (let c = 0; c < C; ++c) gr[n * C + c] = (16 / (N * T)) * (Math.exp(lq[c]!) - Math.exp(lp[c]!));
      }
      expect(relErr(f64(gs!), gr), info).toBeLessThan(1e-5);
      const fd = finiteDiffCheck(s, (ss) => 16 * kl(ss), gr, { eps: 1e-3, rng });
      expect(fd.maxRel, `${info} ${JSON.stringify(fd.worst)}`).toBeLessThan(1e-4);
    }
    expect(() =>
      runSync(
        klDivSoftmax(Tensor.from(new Float32Array(2), [1, 2]), Tensor.from(new Float32Array(2), [1, 2]), {
          temperature: 0,
        }),
      ),
    ).toThrow(RangeError);
    // identical distributions: KL = 0
    const z = Tensor.from(new Float32Array([1, 2, 3, 4]), [2, 2]);
    expect(Math.abs(runSync(klDivSoftmax(z, z, { temperature: 4 })).item())).toBeLessThan(1e-7);
  });
});

describe('l1_loss / mse_loss', () => {
  for (const kind of ['l1', 'mse'] as const) {
    for (const red of ['mean', 'sum', 'none'] as const) {
      it(`${kind} ${red}`, () => {
        const rng = new Rng();
        const info = seedInfo(rng.seed);
        const shape = [3, 7, 33],
          n = 693;
        const a = rng.randn(n),
          b = rng.randn(n);
        b[5] = a[5]!; // a tie: torch sign(0) = 0
        const f = (d: number) => (kind === 'l1' ? Math.abs(d) : d * d);
        const per = Float64Array.from(a, (v, i) => f(v - b[i]!));
        const tot = per.reduce((p, q) => p + q, 0);
        const [l] = runPoisoned(`${kind}_loss`, [nonContig(a, shape), Tensor.from(b, shape)], { reduction: red });
        expect(relErr(f64(l!), red === 'none' ? per : [red === 'mean' ? tot / n : tot]), info).toBeLessThan(1e-6);
        const g = red === 'none' ? rng.randn(n) : Float32Array.from([rng.uniform(0.5, 2)]);
        const [ga, gb] = runPoisoned(
          `${kind}_loss_backward`,
          [Tensor.from(a, shape), nonContig(b, shape), Tensor.from(g, red === 'none' ? shape : [])],
          { reduction: red },
        );
        const gr = Float64Array.from(a, (v, i) => {
          const d = v - b[i]!,
            gi = red === 'none' ? g[i]! : red === 'mean' ? g[0]! / n : g[0]!;
          return kind === 'l1' ? gi * Math.sign(d) : 2 * d * gi;
        });
        expect(relErr(f64(ga!), gr), info).toBeLessThan(1e-6);
        expect(
          relErr(
            f64(gb!),
            Float64Array.from(gr, (v) => -v),
          ),
          info,
        ).toBeLessThan(1e-6);
        expect(ga!.toFloat32()[5] === 0).toBe(true); // sign(0) = 0 (l1), 2 * 0 * g (mse)
        const L = (aa: ArrayLike<number>) => {
          let s = 0;
          for (let i = 0; i < n; ++i)
            s += f(aa[i]! - b[i]!) * (red === 'none' ? g[i]! : red === 'mean' ? g[0]! / n : g[0]!);
          return s;
        };
        const aa = Float32Array.from(a, (v, i) => (Math.abs(v - b[i]!) < 0.01 ? b[i]! + 0.5 : v)); // away from the l1 kink
        const gra = Float64Array.from(aa, (v, i) => {
          const d = v - b[i]!,
            gi = red === 'none' ? g[i]! : red === 'mean' ? g[0]! / n : g[0]!;
          return kind === 'l1' ? gi * Math.sign(d) : 2 * d * gi;
        });
        expect(finiteDiffCheck(aa, L, gra, { eps: 1e-3, rng }).maxRel, info).toBeLessThan(1e-4);
      });
    }
  }
  it('errors', () => {
    const a = Tensor.from(new Float32Array(3)),
      b = Tensor.from(new Float32Array(4));
    expect(() => runSync(mseLoss(a, b))).toThrow(/mse_loss: 'b'/);
    expect(() => runSync(mseLoss(a, a, { reduction: 'avg' as never }))).toThrow(TypeError);
  });
});
