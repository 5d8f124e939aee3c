import { describe, expect, it } from 'vitest';
import { Tensor } from '../lib/tensor.js';
import { runSync } from '../lib/graph.js';
import { groupNorm, groupNormBackward, layerNorm, rmsNorm } from '../lib/ops/nn.js';
import { Rng, seedInfo, relErr, finiteDiffCheck } from './helpers.js';
import { act, actGrad, dot, f64, nonContig, runPoisoned, type ActName } from './nn_ref.js';

// ---------------- float64 references ----------------
interface GN {
  B: number;
  C: number;
  HW: number;
  G: number;
  eps: number;
  act: ActName;
}
function gnRef(x: ArrayLike<number>, w: ArrayLike<number> | null, b: ArrayLike<number> | null, p: GN) {
  const { B, C, HW, G, eps } = p,
    Cg = C / G,
    D = Cg * HW;
  const y = new Float64Array(x.length),
    z = new Float64Array(x.length),
    mean = new Float64Array(B * G),
    rstd = new Float64Array(B * G);
  for (let bg = 0; bg < B * G; ++bg) {
    let s = 0;
    for (let i = 0; i < D; ++i) s += x[bg * D + i]!;
    const m = s / D;
    let q = 0;
    for (let i = 0; i < D; ++i) q += (x[bg * D + i]! - m) ** 2;
    const rs = 1 / Math.sqrt(q / D + eps);
    mean[bg] = m;
    rstd[bg] = rs;
    const g = bg % G;
    for (let c = 0; c < Cg; ++c) {
      const ch = g * Cg + c;
      for (let i = 0; i < HW; ++i) {
        const k = bg * D + c * HW + i;
        z[k] = (x[k]! - m) * rs * (w ? w[ch]! : 1) + (b ? b[ch]! : 0);
        y[k] = act(p.act, z[k]!);
      }
    }
  }
  return { y, z, mean, rstd };
}
function gnBackRef(
  x: ArrayLike<number>,
  w: ArrayLike<number> | null,
  b: ArrayLike<number> | null,
  gy: ArrayLike<number>,
  p: GN,
) {
  const { B, C, HW, G } = p,
    Cg = C / G,
    D = Cg * HW;
  const { z, mean, rstd } = gnRef(x, w, b, p);
  const gx = new Float64Array(x.length),
    gw = new Float64Array(C),
    gb = new Float64Array(C);
  for (let bg = 0; bg < B * G; ++bg) {
    const g = bg % G,
      m = mean[bg]!,
      rs = rstd[bg]!;
    const gxh = new Float64Array(D),
      xh = new Float64Array(D);
    let m1 = 0,
      m2 = 0;
    for (let c = 0; c < Cg; ++c) {
      const ch = g * Cg + c;
      for (let i = 0; i < HW; ++i) {
        const k = bg * D + c * HW + i,
          j = c * HW + i;
        const gz = gy[k]! * actGrad(p.act, z[k]!);
        xh[j] = (x[k]! - m) * rs;
        gxh[j] = gz * (w ? w[ch]! : 1);
        gw[ch]! += gz * xh[j]!;
        gb[ch]! += gz;
        m1 += gxh[j]!;
        m2 += gxh[j]! * xh[j]!;
      }
    }
    m1 /= D;
    m2 /= D;
    for (let j = 0; j < D; ++j) gx[bg * D + j] = rs * (gxh[j]! - m1 - xh[j]! * m2);
  }
  return { gx, gw, gb };
}

function lnRef(x: ArrayLike<number>, w: ArrayLike<number> | null, b: ArrayLike<number> | null, C: number, eps: number) {
  const R = x.length / C,
    y = new Float64Array(x.length),
    mean = new Float64Array(R),
    rstd = new Float64Array(R);
  for (let r = 0; r < R; ++r) {
    let s = 0;
    for (let c = 0; c < C; ++c) s += x[r * C + c]!;
    const m = s / C;
    let q = 0;
    for (let c = 0; c < C; ++c) q += (x[r * C + c]! - m) ** 2;
    const rs = 1 / Math.sqrt(q / C + eps);
    mean[r] = m;
    rstd[r] = rs;
    for (let c = 0; c < C; ++c) y[r * C + c] = (x[r * C + c]! - m) * rs * (w ? w[c]! : 1) + (b ? b[c]! : 0);
  }
  return { y, mean, rstd };
}
function lnBackRef(x: ArrayLike<number>, w: ArrayLike<number> | null, gy: ArrayLike<number>, C: number, eps: number) {
  const { mean, rstd } = lnRef(x, w, null, C, eps);
  const R = x.length / C,
    gx = new Float64Array(x.length),
    gw = new Float64Array(C),
    gb = new Float64Array(C);
  for (let r = 0; r < R; ++r) {
    let m1 = 0,
      m2 = 0;
    const xh = new Float64Array(C),
      g = new Float64Array(C);
    for (let c = 0; c < C; ++c) {
      xh[c] = (x[r * C + c]! - mean[r]!) * rstd[r]!;
      g[c] = gy[r * C + c]! * (w ? w[c]! : 1);
      gw[c]! += gy[r * C + c]! * xh[c]!;
      gb[c]! += gy[r * C + c]!;
      m1 += g[c]!;
      m2 += g[c]! * xh[c]!;
    }
    for (let c = 0; c < C; ++c) gx[r * C + c] = rstd[r]! * (g[c]! - m1 / C - (xh[c]! * m2) / C);
  }
  return { gx, gw, gb };
}

function rmsRef(x: ArrayLike<number>, w: ArrayLike<number>, C: number, eps: number) {
  const R = x.length / C,
    y = new Float64Array(x.length),
    rstd = new Float64Array(R);
  for (let r = 0; r < R; ++r) {
    let q = 0;
    for (let c = 0; c < C; ++c) q += x[r * C + c]! ** 2;
    const rs = 1 / Math.sqrt(q / C + eps);
    rstd[r] = rs;
    for (let c = 0; c < C; ++c) y[r * C + c] = x[r * C + c]! * rs * w[c]!;
  }
  return { y, rstd };
}
function rmsBackRef(x: ArrayLike<number>, w: ArrayLike<number>, gy: ArrayLike<number>, C: number, eps: number) {
  const { rstd } = rmsRef(x, w, C, eps);
  const R = x.length / C,
    gx = new Float64Array(x.length),
    gw = new Float64Array(C);
  for (let r = 0; r < R; ++r) {
    const rs = rstd[r]!;
    let s = 0;
    for (let c = 0; c < C; ++c) s += gy[r * C + c]! * w[c]! * x[r * C + c]!;
    s /= C;
    for (let c = 0; c < C; ++c) {
      gx[r * C + c] = rs * gy[r * C + c]! * w[c]! - x[r * C + c]! * rs ** 3 * s;
      gw[c]! += gy[r * C + c]! * x[r * C + c]! * rs;
    }
  }
  return { gx, gw };
}

interface BN {
  B: number;
  C: number;
  S: number;
  eps: number;
  training: boolean;
}
function bnRef(
  x: ArrayLike<number>,
  w: ArrayLike<number> | null,
  b: ArrayLike<number> | null,
  rm: ArrayLike<number>,
  rv: ArrayLike<number>,
  p: BN,
  momentum: number,
) {
  const { B, C, S, eps } = p,
    n = B * S;
  const y = new Float64Array(x.length),
    mean = new Float64Array(C),
    invstd = new Float64Array(C),
    nrm = new Float64Array(C),
    nrv = new Float64Array(C);
  for (let c = 0; c < C; ++c) {
    let m: number, v: number;
    if (p.training) {
      let s = 0;
      for (let bb = 0; bb < B; ++bb) for (let i = 0; i < S; ++i) s += x[(bb * C + c) * S + i]!;
      m = s / n;
      let q = 0;
      for (let bb = 0; bb < B; ++bb) for (let i = 0; i < S; ++i) q += (x[(bb * C + c) * S + i]! - m) ** 2;
      v = q / n;
      nrm[c] = (1 - momentum) * rm[c]! + momentum * m;
      nrv[c] = (1 - momentum) * rv[c]! + (momentum * q) / (n - 1);
    } else {
      m = rm[c]!;
      v = rv[c]!;
      nrm[c] = rm[c]!;
      nrv[c] = rv[c]!;
    }
    const is = 1 / Math.sqrt(v + eps);
    mean[c] = m;
    invstd[c] = is;
    for (let bb = 0; bb < B; ++bb)
      for (let i = 0; i < S; ++i) {
        const k = (bb * C + c) * S + i;
        y[k] = (x[k]! - m) * is * (w ? w[c]! : 1) + (b ? b[c]! : 0);
      }
  }
  return { y, mean, invstd, nrm, nrv };
}

// ---------------- helpers ----------------
function rand(rng: Rng, n: number, scale = 1, offset = 0): Float32Array {
  const a = rng.randn(n, scale);
  for (let i = 0; i < n; ++i) a[i] = a[i]! + offset;
  return a;
}
function t(a: Float32Array, shape: number[]): Tensor {
  return Tensor.from(a, shape);
}
const prod = (s: number[]) => s.reduce((a, b) => a * b, 1);

describe('group_norm', () => {
  const cases: { shape: number[]; G: number; act: ActName; affine: boolean; nc: boolean }[] = [
    { shape: [2, 7, 7, 5], G: 7, act: 'silu', affine: true, nc: true },
    { shape: [1, 33, 7, 5], G: 11, act: 'none', affine: true, nc: false },
    { shape: [3, 33, 1, 1], G: 3, act: 'gelu', affine: true, nc: false },
    { shape: [2, 1, 7, 5], G: 1, act: 'gelu_tanh', affine: false, nc: true },
    { shape: [1, 64, 9], G: 32, act: 'silu', affine: false, nc: false },
    { shape: [2, 32, 5, 7], G: 32, act: 'silu', affine: true, nc: true },
  ];
  for (const cs of cases) {
    it(`forward ${JSON.stringify(cs)} matches float64`, () => {
      const rng = new Rng();
      const [B, C] = cs.shape as [number, number];
      const n = prod(cs.shape),
        HW = n / (B * C);
      const x = rand(rng, n, 2, 1.5);
      const w = cs.affine ? rand(rng, C, 1, 0.5) : null,
        b = cs.affine ? rand(rng, C) : null;
      const p: GN = { B, C, HW, G: cs.G, eps: 1e-6, act: cs.act };
      const ref = gnRef(x, w, b, p);
      const xt = cs.nc ? nonContig(x, cs.shape) : t(x, cs.shape);
      const [y, mean, rstd] = runPoisoned('group_norm', [xt, w && t(w, [C]), b && t(b, [C])], {
        groups: cs.G,
        eps: 1e-6,
        act: cs.act,
      });
      expect(y!.shape).toEqual(cs.shape);
      expect(mean!.shape).toEqual([B, cs.G]);
      expect(relErr(f64(y!), ref.y), seedInfo(rng.seed)).toBeLessThan(1e-6);
      expect(relErr(f64(mean!), ref.mean), seedInfo(rng.seed)).toBeLessThan(1e-7);
      expect(relErr(f64(rstd!), ref.rstd), seedInfo(rng.seed)).toBeLessThan(1e-7);
    });

    it(`backward ${JSON.stringify(cs)} matches float64 and finite differences`, () => {
      const rng = new Rng();
      const [B, C] = cs.shape as [number, number];
      const n = prod(cs.shape),
        HW = n / (B * C);
      const x = rand(rng, n, 1.5, 0.5);
      const w = cs.affine ? rand(rng, C, 1, 0.5) : null,
        b = cs.affine ? rand(rng, C) : null;
      const gy = rand(rng, n);
      const p: GN = { B, C, HW, G: cs.G, eps: 1e-5, act: cs.act };
      const [, mean, rstd] = runPoisoned('group_norm', [t(x, cs.shape), w && t(w, [C]), b && t(b, [C])], {
        groups: cs.G,
        act: cs.act,
      });
      const gyt = cs.nc ? nonContig(gy, cs.shape) : t(gy, cs.shape);
      const [gx, gw, gb] = runPoisoned(
        'group_norm_backward',
        [cs.nc ? nonContig(x, cs.shape) : t(x, cs.shape), w && t(w, [C]), mean!, rstd!, gyt, b && t(b, [C])],
        {
          groups: cs.G,
          act: cs.act,
          has_weight: cs.affine,
          has_bias: cs.affine,
        },
      );
      const ref = gnBackRef(x, w, b, gy, p);
      const info = seedInfo(rng.seed);
      expect(relErr(f64(gx!), ref.gx), info).toBeLessThan(2e-5);
      if (cs.affine) {
        expect(relErr(f64(gw!), ref.gw), info).toBeLessThan(2e-5);
        expect(relErr(f64(gb!), ref.gb), info).toBeLessThan(2e-5);
      } else {
        expect(gw).toBeNull();
        expect(gb).toBeNull();
      }
      // the float64 reference gradient against finite differences of the float64 loss sum(gy * y)
      const loss = (xx: ArrayLike<number>, ww = w, bb = b) => dot(gnRef(xx, ww, bb, p).y, gy);
      const fx = finiteDiffCheck(x, (xx) => loss(xx), ref.gx, { eps: 1e-3, count: 16, rng });
      expect(fx.maxRel, `${info} ${JSON.stringify(fx.worst)}`).toBeLessThan(1e-4);
      if (w && b) {
        const fw = finiteDiffCheck(w, (ww) => loss(x, ww, b), ref.gw, { eps: 1e-3, count: 8, rng });
        expect(fw.maxRel, info).toBeLessThan(1e-4);
        const fb = finiteDiffCheck(b, (bb) => loss(x, w, bb), ref.gb, { eps: 1e-3, count: 8, rng });
        expect(fb.maxRel, info).toBeLessThan(1e-4);
      }
    });
  }

  it('GN(32) + SiLU over [1, 128, 256, 256] matches float64 to ~1e-6 (offset mean)', () => {
    const rng = new Rng();
    const shape = [1, 128, 256, 256],
      C = 128,
      n = prod(shape);
    const x = rand(rng, n, 0.5, 4); // mean >> std stresses the statistics
    const w = rand(rng, C, 0.5, 1),
      b = rand(rng, C, 0.2);
    const p: GN = { B: 1, C, HW: 65536, G: 32, eps: 1e-6, act: 'silu' };
    const ref = gnRef(x, w, b, p);
    const [y, mean, rstd] = runSync(
      groupNorm(t(x, shape), t(w, [C]), t(b, [C]), { groups: 32, eps: 1e-6, act: 'silu' }),
    );
    expect(relErr(f64(y), ref.y), seedInfo(rng.seed)).toBeLessThan(1e-6);
    expect(relErr(f64(mean), ref.mean), seedInfo(rng.seed)).toBeLessThan(1e-7);
    expect(relErr(f64(rstd), ref.rstd), seedInfo(rng.seed)).toBeLessThan(1e-7);
  }, 60_000);

  it('group_norm_backward with a fused activation needs the bias', () => {
    const x = Tensor.from(new Float32Array(2 * 4 * 3), [2, 4, 3]);
    const w = Tensor.from(new Float32Array(4).fill(1), [4]);
    const [, mean, rstd] = runSync(groupNorm(x, w, w, { groups: 2, act: 'silu' }));
    expect(() =>
      runSync(groupNormBackward(x, w, null, mean, rstd, x, { groups: 2, act: 'silu', hasBias: true })),
    ).toThrow(/bias/);
  });

  it('rejects bad arguments naming op and argument', () => {
    const x = Tensor.from(new Float32Array(2 * 6 * 4), [2, 6, 4]);
    expect(() => runSync(groupNorm(x, null, null, { groups: 4 }))).toThrow(RangeError);
    expect(() => runSync(groupNorm(x, null, null, { groups: 4 }))).toThrow(/group_norm.*groups/);
    expect(() => runSync(groupNorm(x, Tensor.from(new Float32Array(5), [5]), null, { groups: 3 }))).toThrow(
      /group_norm: 'weight'/,
    );
    expect(() => runSync(groupNorm(x, null, null, { groups: 0 }))).toThrow(RangeError);
    expect(() => runSync(groupNorm(x, null, null, { groups: 3, act: 'relu' as never }))).toThrow(TypeError);
    expect(() => runSync(groupNorm(Tensor.from(new Int32Array(4), [1, 4]), null, null, { groups: 1 }))).toThrow(
      TypeError,
    );
  });
});

describe('layer_norm', () => {
  const cases = [
    { shape: [257, 512], affine: true, nc: false },
    { shape: [3, 7, 33], affine: true, nc: true },
    { shape: [5, 1], affine: true, nc: false },
    { shape: [4, 7], affine: false, nc: true },
    { shape: [33], affine: true, nc: false },
  ];
  for (const cs of cases) {
    it(`forward + backward ${JSON.stringify(cs)}`, () => {
      const rng = new Rng();
      const info = seedInfo(rng.seed);
      const C = cs.shape[cs.shape.length - 1]!,
        n = prod(cs.shape);
      const x = rand(rng, n, 2, 3),
        gy = rand(rng, n);
      const w = cs.affine ? rand(rng, C, 1, 0.5) : null,
        b = cs.affine ? rand(rng, C) : null;
      const xt = cs.nc ? nonContig(x, cs.shape) : t(x, cs.shape);
      const [y, mean, rstd] = runPoisoned('layer_norm', [xt, w && t(w, [C]), b && t(b, [C])], { eps: 1e-5 });
      const ref = lnRef(x, w, b, C, 1e-5);
      expect(mean!.shape).toEqual(cs.shape.slice(0, -1));
      expect(relErr(f64(y!), ref.y), info).toBeLessThan(1e-6);
      expect(relErr(f64(mean!), ref.mean), info).toBeLessThan(1e-7);
      expect(relErr(f64(rstd!), ref.rstd), info).toBeLessThan(1e-7);
      const gyt = cs.nc ? nonContig(gy, cs.shape) : t(gy, cs.shape);
      const [gx, gw, gb] = runPoisoned('layer_norm_backward', [xt, w && t(w, [C]), mean!, rstd!, gyt], {
        has_weight: cs.affine,
        has_bias: cs.affine,
      });
      const g = lnBackRef(x, w, gy, C, 1e-5);
      const gxTol = C === 1 ? 1e-3 : 2e-5; // C = 1: gx is 0 up to rounding
      if (C === 1) expect(Math.max(...Array.from(f64(gx!), Math.abs)), info).toBeLessThan(1e-3);
      else expect(relErr(f64(gx!), g.gx), info).toBeLessThan(gxTol);
      if (cs.affine) {
        expect(relErr(f64(gw!), g.gw), info).toBeLessThan(2e-5);
        expect(relErr(f64(gb!), g.gb), info).toBeLessThan(2e-5);
      } else {
        expect(gw).toBeNull();
        expect(gb).toBeNull();
      }
      if (C > 1) {
        const f = finiteDiffCheck(x, (xx) => dot(lnRef(xx, w, b, C, 1e-5).y, gy), g.gx, { eps: 1e-3, count: 12, rng });
        expect(f.maxRel, `${info} ${JSON.stringify(f.worst)}`).toBeLessThan(1e-4);
      }
      if (w && b) {
        const fw = finiteDiffCheck(w, (ww) => dot(lnRef(x, ww, b, C, 1e-5).y, gy), g.gw, { eps: 1e-3, count: 8, rng });
        expect(fw.maxRel, info).toBeLessThan(1e-4);
      }
    });
  }
  it('wrapper and errors', () => {
    const x = Tensor.from(new Float32Array([1, 2, 3, 4, 5, 6]), [2, 3]);
    const [y] = runSync(layerNorm(x));
    expect(relErr(f64(y), lnRef([1, 2, 3, 4, 5, 6], null, null, 3, 1e-5).y)).toBeLessThan(1e-6);
    expect(() => runSync(layerNorm(x, Tensor.from(new Float32Array(2), [2])))).toThrow(/layer_norm: 'weight'/);
    expect(() => runSync(layerNorm(x, null, null, { eps: -1 }))).toThrow(RangeError);
  });
});

describe('rms_norm', () => {
  const cases = [
    { shape: [257, 512], nc: false },
    { shape: [2, 7, 33], nc: true },
    { shape: [3, 1], nc: false },
    { shape: [7], nc: false },
  ];
  for (const cs of cases) {
    it(`forward + backward ${JSON.stringify(cs)}`, () => {
      const rng = new Rng();
      const info = seedInfo(rng.seed);
      const C = cs.shape[cs.shape.length - 1]!,
        n = prod(cs.shape);
      const x = rand(rng, n, 2, 0.3),
        gy = rand(rng, n),
        w = rand(rng, C, 0.5, 1);
      const xt = cs.nc ? nonContig(x, cs.shape) : t(x, cs.shape);
      const [y, rstd] = runPoisoned('rms_norm', [xt, t(w, [C])], { eps: 1e-5 });
      const ref = rmsRef(x, w, C, 1e-5);
      expect(rstd!.shape).toEqual(cs.shape.slice(0, -1));
      expect(relErr(f64(y!), ref.y), info).toBeLessThan(1e-6);
      expect(relErr(f64(rstd!), ref.rstd), info).toBeLessThan(1e-6);
      const [gx, gw] = runPoisoned('rms_norm_backward', [
        xt,
        t(w, [C]),
        rstd!,
        cs.nc ? nonContig(gy, cs.shape) : t(gy, cs.shape),
      ]);
      const g = rmsBackRef(x, w, gy, C, 1e-5);
      if (C === 1) {
        // gx = gy w r eps / (x^2 + eps): nearly total cancellation with a float32 rstd; check absolutely
        let m = 0;
        for (let i = 0; i < n; ++i)
          m = Math.max(m, Math.abs(f64(gx!)[i]! - g.gx[i]!) / Math.abs(gy[i]! * w[0]! * ref.rstd[i]!));
        expect(m, info).toBeLessThan(1e-5);
      } else {
        expect(relErr(f64(gx!), g.gx), info).toBeLessThan(2e-5);
        const f = finiteDiffCheck(x, (xx) => dot(rmsRef(xx, w, C, 1e-5).y, gy), g.gx, { eps: 1e-3, count: 12, rng });
        expect(f.maxRel, `${info} ${JSON.stringify(f.worst)}`).toBeLessThan(1e-4);
      }
      expect(relErr(f64(gw!), g.gw), info).toBeLessThan(2e-5);
      const fw = finiteDiffCheck(w, (ww) => dot(rmsRef(x, ww, C, 1e-5).y, gy), g.gw, { eps: 1e-3, count: 8, rng });
      expect(fw.maxRel, info).toBeLessThan(1e-4);
    });
  }
  it('follows float32 semantics: y = float32(x * rstd) * weight', () => {
    const rng = new Rng();
    const C = 64,
      x = rand(rng, 4 * C),
      w = rand(rng, C);
    const [y, rstd] = runSync(rmsNorm(t(x, [4, C]), t(w, [C])));
    const yv = y.toFloat32(),
      rv = rstd.toFloat32();
    let mism = 0;
    for (let r = 0; r < 4; ++r)
      for (let c = 0; c < C; ++c) {
        const e = Math.fround(Math.fround(x[r * C + c]! * rv[r]!) * w[c]!);
        if (e !== yv[r * C + c]) ++mism;
      }
    expect(mism, seedInfo(rng.seed)).toBe(0);
    expect(() => runSync(rmsNorm(t(x, [4, C]), undefined as never))).toThrow(TypeError);
  });
});

describe('batch_norm', () => {
  const cases: { shape: number[]; training: boolean; affine: boolean; nc: boolean }[] = [
    { shape: [4, 7, 5, 7], training: true, affine: true, nc: true },
    { shape: [3, 33, 1, 1], training: true, affine: false, nc: false },
    { shape: [2, 1, 7, 5], training: false, affine: true, nc: true },
    { shape: [5, 3], training: true, affine: true, nc: false },
  ];
  for (const cs of cases) {
    it(`forward + backward ${JSON.stringify(cs)}`, () => {
      const rng = new Rng();
      const info = seedInfo(rng.seed);
      const [B, C] = cs.shape as [number, number];
      const n = prod(cs.shape),
        S = n / (B * C);
      const x = rand(rng, n, 2, 1),
        gy = rand(rng, n);
      const w = cs.affine ? rand(rng, C, 1, 0.5) : null,
        b = cs.affine ? rand(rng, C) : null;
      const rm = rand(rng, C, 0.5),
        rv = Float32Array.from(rand(rng, C, 0.3), (v) => 1 + Math.abs(v));
      const xt = cs.nc ? nonContig(x, cs.shape) : t(x, cs.shape);
      const rmT = t(rm, [C]),
        rvT = t(rv, [C]);
      const [y, mean, invstd, nrm, nrv] = runPoisoned('batch_norm', [xt, w && t(w, [C]), b && t(b, [C]), rmT, rvT], {
        training: cs.training,
        momentum: 0.1,
        eps: 1e-5,
      });
      const p: BN = { B, C, S, eps: 1e-5, training: cs.training };
      const ref = bnRef(x, w, b, rm, rv, p, 0.1);
      expect(relErr(f64(y!), ref.y), info).toBeLessThan(1e-6);
      expect(relErr(f64(mean!), ref.mean), info).toBeLessThan(1e-6);
      expect(relErr(f64(invstd!), ref.invstd), info).toBeLessThan(1e-6);
      expect(relErr(f64(nrm!), ref.nrm), info).toBeLessThan(1e-6);
      expect(relErr(f64(nrv!), ref.nrv), info).toBeLessThan(1e-6);
      // inputs untouched, outputs are new tensors
      expect(Array.from(rmT.toFloat32())).toEqual(Array.from(rm));
      const [gx, gw, gb] = runPoisoned(
        'batch_norm_backward',
        [xt, w && t(w, [C]), mean!, invstd!, cs.nc ? nonContig(gy, cs.shape) : t(gy, cs.shape)],
        { training: cs.training },
      );
      // float64 analytic gradients: finite differences of the float64 loss give them directly
      const loss = (xx: ArrayLike<number>, ww = w, bb = b) => dot(bnRef(xx, ww, bb, rm, rv, p, 0.1).y, gy);
      const gref = new Float64Array(n),
        gwRef = new Float64Array(C),
        gbRef = new Float64Array(C);
      for (let c = 0; c < C; ++c) {
        let sg = 0,
          sgx = 0;
        for (let bb = 0; bb < B; ++bb)
          for (let i = 0; i < S; ++i) {
            const k = (bb * C + c) * S + i;
            sg += gy[k]!;
            sgx += gy[k]! * (x[k]! - ref.mean[c]!) * ref.invstd[c]!;
          }
        gwRef[c] = sgx;
        gbRef[c] = sg;
        const wc = w ? w[c]! : 1,
          is = ref.invstd[c]!,
          nn = B * S;
        for (let bb = 0; bb < B; ++bb)
          for (let i = 0; i < S; ++i) {
            const k = (bb * C + c) * S + i;
            const xh = (x[k]! - ref.mean[c]!) * is;
            gref[k] = cs.training ? wc * is * (gy[k]! - sg / nn - (xh * sgx) / nn) : wc * is * gy[k]!;
          }
      }
      // In training the input gradient is what is left after removing its projections on 1 and
      // x_hat: with few values per channel (3 here) most of |gy| cancels, and float32 rounding is
      // relative to the terms, not to the result. cond = ||terms|| / ||gx||.
      let termSq = 0,
        gSq = 0;
      for (let c = 0; c < C; ++c) {
        let sg = 0,
          sgx = 0;
        for (let bb = 0; bb < B; ++bb)
          for (let i = 0; i < S; ++i) {
            const k = (bb * C + c) * S + i;
            sg += gy[k]!;
            sgx += gy[k]! * (x[k]! - ref.mean[c]!) * ref.invstd[c]!;
          }
        const wc = w ? w[c]! : 1,
          is = ref.invstd[c]!,
          nn = B * S;
        for (let bb = 0; bb < B; ++bb)
          for (let i = 0; i < S; ++i) {
            const k = (bb * C + c) * S + i;
            const xh = (x[k]! - ref.mean[c]!) * is;
            termSq += (wc * is * (Math.abs(gy[k]!) + Math.abs(sg / nn) + Math.abs((xh * sgx) / nn))) ** 2;
            gSq += gref[k]! ** 2;
          }
      }
      const cond = cs.training ? Math.max(1, Math.sqrt(termSq / Math.max(gSq, 1e-300))) : 1;
      expect(relErr(f64(gx!), gref), `${info} cond ${cond}`).toBeLessThan(5e-6 * cond); // ~80 float32 ulps of the terms
      expect(relErr(f64(gw!), gwRef), info).toBeLessThan(2e-5);
      expect(relErr(f64(gb!), gbRef), info).toBeLessThan(2e-5);
      // The loss's curvature grows as invstd^2: the step is a fraction of the smallest channel std,
      // so the O(eps^2) truncation error stays ~1e-6 relative whatever the spread of the values.
      const minStd = Math.min(...Array.from(ref.invstd, (v) => 1 / v));
      const f = finiteDiffCheck(x, (xx) => loss(xx), gref, { eps: Math.min(1e-3, 1e-3 * minStd), count: 12, rng });
      expect(f.maxRel, `${info} ${JSON.stringify(f.worst)}`).toBeLessThan(1e-4);
      if (w) {
        const fw = finiteDiffCheck(w, (ww) => loss(x, ww), gwRef, { eps: 1e-3, count: 3, rng });
        expect(fw.maxRel, info).toBeLessThan(1e-4);
      }
    });
  }
  it('rejects eval without running stats and one value per channel in training', () => {
    const x = Tensor.from(new Float32Array(6), [1, 6]);
    expect(() => runPoisoned('batch_norm', [x, null, null, null, null], { training: false })).toThrow(
      /batch_norm.*running/,
    );
    expect(() => runPoisoned('batch_norm', [x, null, null, null, null], { training: true })).toThrow(RangeError);
    const [, , , nrm] = runPoisoned(
      'batch_norm',
      [Tensor.from(new Float32Array([1, 2, 3, 5]), [2, 2]), null, null, null, null],
      { training: true },
    );
    expect(nrm).toBeNull();
  });
});
