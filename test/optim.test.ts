// The optimizer / EMA / clipping ops against float64 references on fresh random inputs (odd and
// large sizes, the multithreaded path included), against torch 1.13 when /usr/bin/python3 has it,
// argument errors that must leave every tensor unchanged, and the lib/train pieces built on them.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { addon } from '../lib/native.js';
import { op, runAsync, runSync } from '../lib/graph.js';
import { adamStep, clone, copyInto, emaUpdate, l2Norms, libmCos, scaleInplace } from '../lib/ops/optim.js';
import { Tensor } from '../lib/tensor.js';
import { Adam, AdamW, GradAccumulator, arParamGroups, clipGradNorm } from '../lib/train/optim.js';
import { LitEma, emaBufferName } from '../lib/train/ema.js';
import { arLrWd, linearWarmup, lrDropLr, pyRound } from '../lib/train/schedule.js';
import { Rng, relErr, seedInfo, withPoison } from './helpers.js';

const SIZES = [1, 7, 1031, 100_003]; // the last one is split over the thread pool

interface AdamCfg {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  decoupled: boolean;
  step: number;
}
/** torch's Adam / AdamW single-tensor step in float64. */
function adamRef(p0: Float32Array, g0: Float32Array, m0: Float32Array, v0: Float32Array, c: AdamCfg) {
  const n = p0.length;
  const p = Float64Array.from(p0);
  const m = Float64Array.from(m0);
  const v = Float64Array.from(v0);
  const bc1 = 1 - c.beta1 ** c.step;
  const bc2 = 1 - c.beta2 ** c.step;
  for (let i = 0; i < n; ++i) {
    let g = g0[i]!;
    if (!c.decoupled) g += c.weightDecay * p[i]!;
    else p[i] = p[i]! * (1 - c.lr * c.weightDecay);
    m[i] = c.beta1 * m[i]! + (1 - c.beta1) * g;
    v[i] = c.beta2 * v[i]! + (1 - c.beta2) * g * g;
    const denom = Math.sqrt(v[i]!) / Math.sqrt(bc2) + c.eps;
    p[i] = p[i]! - (c.lr / bc1) * (m[i]! / denom);
  }
  return { p, m, v };
}
function randomState(rng: Rng, n: number) {
  const p = rng.randn(n);
  const g = rng.randn(n, 0.5);
  const m = rng.randn(n, 0.1);
  const v = Float32Array.from(rng.randn(n, 0.1), (x) => x * x);
  return { p, g, m, v };
}
const snapshot = (ts: Tensor[]) => ts.map((t) => Array.from(t.toArray() as ArrayLike<number>));

describe('adam_step', () => {
  for (const [label, weightDecay, decoupled] of [
    ['Adam', 0, false],
    ['Adam + L2 weight decay', 0.1, false],
    ['AdamW', 0.3, true],
  ] as const) {
    it(`${label}: float64 reference, sizes ${SIZES.join(', ')}`, () => {
      const rng = new Rng();
      for (const n of SIZES) {
        const { p, g, m, v } = randomState(rng, n);
        const cfg: AdamCfg = {
          lr: 0.01,
          beta1: 0.5 + 0.45 * rng.next(),
          beta2: 0.9 + 0.099 * rng.next(),
          eps: 1e-8,
          weightDecay,
          decoupled,
          step: 1 + rng.int(40),
        };
        const P = Tensor.from(p, [n]);
        const M = Tensor.from(m, [n]);
        const V = Tensor.from(v, [n]);
        const G = Tensor.from(g, [n]);
        withPoison(() => runSync(adamStep(P, G, M, V, cfg)));
        const ref = adamRef(p, g, m, v, cfg);
        const info = `${label} n=${n} step=${cfg.step} ${seedInfo(rng.seed)}`;
        // Element-wise float32 rounding bounds (8 ulps of the terms): with L2 decay g' = g + wd p
        // and b1 m + (1 - b1) g' can cancel, so the error is relative to the terms, not the result.
        const u = 8 * 2 ** -24;
        const Mo = M.toFloat32(),
          Vo = V.toFloat32();
        for (let i = 0; i < n; ++i) {
          const gl = decoupled ? Math.abs(g[i]!) : Math.abs(g[i]!) + weightDecay * Math.abs(p[i]!);
          const gp = decoupled ? g[i]! : g[i]! + weightDecay * p[i]!;
          const mTerms = cfg.beta1 * Math.abs(m[i]!) + (1 - cfg.beta1) * gl;
          const vTerms = cfg.beta2 * v[i]! + (1 - cfg.beta2) * (gp * gp + 2 * Math.abs(gp) * gl);
          if (!(Math.abs(Mo[i]! - ref.m[i]!) <= u * mTerms))
            expect.fail(`exp_avg[${i}] ${Mo[i]} vs ${ref.m[i]} (bound ${u * mTerms}), ${info}`);
          if (!(Math.abs(Vo[i]! - ref.v[i]!) <= u * vTerms))
            expect.fail(`exp_avg_sq[${i}] ${Vo[i]} vs ${ref.v[i]} (bound ${u * vTerms}), ${info}`);
        }
        // The parameter step, given our (float32) moments: no cancellation is left but the decoupled
        // decay against the Adam step; bound by 16 ulps of the terms and of the stored parameter.
        const bc1 = 1 - cfg.beta1 ** cfg.step;
        const bc2 = 1 - cfg.beta2 ** cfg.step;
        const Po = P.toFloat32();
        for (let i = 0; i < n; ++i) {
          const decay = decoupled ? cfg.lr * weightDecay * p[i]! : 0;
          const stepv = (cfg.lr / bc1) * (Mo[i]! / (Math.sqrt(Vo[i]!) / Math.sqrt(bc2) + cfg.eps));
          const want = p[i]! - decay - stepv;
          const bound = 2 * u * (Math.abs(decay) + Math.abs(stepv) + Math.abs(p[i]!));
          if (!(Math.abs(Po[i]! - want) <= bound))
            expect.fail(`param[${i}] ${Po[i]} vs ${want} (bound ${bound}), ${info}`);
        }
        // and the whole step against the float64 reference, over the tensor (large n averages out)
        if (n >= 1000) {
          const dOurs = Float64Array.from(Po, (x, i) => x - p[i]!);
          const dRef = ref.p.map((x, i) => x - p[i]!);
          expect(relErr(dOurs, dRef), info).toBeLessThan(1e-4);
        }
      }
    });
  }

  it('reads a strided (permuted) gradient', () => {
    const rng = new Rng();
    const [r, c] = [37, 129];
    const { p, m, v } = randomState(rng, r * c);
    const gT = rng.randn(r * c, 0.5); // stored as [c, r]
    const G = Tensor.from(gT, [c, r]).permute(1, 0);
    const g = new Float32Array(r * c);
    for (let i = 0; i < r; ++i) for (let j = 0; j < c; ++j) g[i * c + j] = gT[j * r + i]!;
    const cfg: AdamCfg = { lr: 0.01, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.05, decoupled: true, step: 3 };
    const P = Tensor.from(p, [r, c]);
    const M = Tensor.from(m, [r, c]);
    const V = Tensor.from(v, [r, c]);
    withPoison(() => runSync(adamStep(P, G, M, V, cfg)));
    const ref = adamRef(p, g, m, v, cfg);
    expect(relErr(M.toFloat32(), ref.m), seedInfo(rng.seed)).toBeLessThan(1e-6);
    expect(
      relErr(
        Float64Array.from(P.toFloat32(), (x, i) => x - p[i]!),
        ref.p.map((x, i) => x - p[i]!),
      ),
    ).toBeLessThan(1e-4);
  });

  it('does not depend on the thread count', () => {
    const rng = new Rng();
    const n = 200_001;
    const s = randomState(rng, n);
    const cfg: AdamCfg = {
      lr: 0.02,
      beta1: 0.9,
      beta2: 0.999,
      eps: 1e-8,
      weightDecay: 0.01,
      decoupled: false,
      step: 5,
    };
    const run = (threads: number) => {
      const prev = addon.getNumThreads();
      addon.setNumThreads(threads);
      try {
        const P = Tensor.from(s.p, [n]);
        runSync(adamStep(P, Tensor.from(s.g, [n]), Tensor.from(s.m, [n]), Tensor.from(s.v, [n]), cfg));
        return P.toFloat32();
      } finally {
        addon.setNumThreads(prev);
      }
    };
    const one = run(1);
    const many = run(Math.max(2, addon.getNumThreads()));
    expect(one.every((x, i) => x === many[i])).toBe(true);
  });

  it('bad arguments throw and leave every tensor unchanged (wrapper and native checks)', () => {
    const rng = new Rng();
    const n = 6;
    const mk = () => {
      const s = randomState(rng, n);
      return [
        Tensor.from(s.p, [2, 3]),
        Tensor.from(s.g, [2, 3]),
        Tensor.from(s.m, [2, 3]),
        Tensor.from(s.v, [2, 3]),
      ] as const;
    };
    const good = { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, step: 1 };
    const cases: [string, (t: readonly [Tensor, Tensor, Tensor, Tensor]) => void, RegExp][] = [
      ['grad shape', ([p, , m, v]) => runSync(adamStep(p, Tensor.zeros([3, 2]), m, v, good)), /grad.*shape/],
      ['state shape', ([p, g, , v]) => runSync(adamStep(p, g, Tensor.zeros([6]), v, good)), /exp_avg.*shape/],
      ['NaN lr', ([p, g, m, v]) => runSync(adamStep(p, g, m, v, { ...good, lr: NaN })), /lr/],
      ['infinite lr', ([p, g, m, v]) => runSync(adamStep(p, g, m, v, { ...good, lr: Infinity })), /lr/],
      ['negative eps', ([p, g, m, v]) => runSync(adamStep(p, g, m, v, { ...good, eps: -1 })), /eps/],
      ['beta1 = 1', ([p, g, m, v]) => runSync(adamStep(p, g, m, v, { ...good, beta1: 1 })), /beta1/],
      ['step 0', ([p, g, m, v]) => runSync(adamStep(p, g, m, v, { ...good, step: 0 })), /step/],
      [
        'int32 grad',
        ([p, , m, v]) => runSync(adamStep(p, Tensor.from(new Int32Array(6), [2, 3]), m, v, good)),
        /float32/,
      ],
      ['same state twice', ([p, g, m]) => runSync(adamStep(p, g, m, m, good)), /share memory/],
      [
        'non-contiguous param',
        ([, g, m, v]) => runSync(adamStep(Tensor.zeros([3, 2]).permute(1, 0), g, m, v, good)),
        /dense/,
      ],
      // The native op's own validation, bypassing the wrapper.
      ['native NaN lr', (t) => op('adam_step', [...t], { lr: NaN, beta1: 0.9, beta2: 0.9, eps: 1e-8, step: 1 }), /lr/],
      [
        'native beta2 > 1',
        (t) => op('adam_step', [...t], { lr: 0.1, beta1: 0.9, beta2: 1.5, eps: 1e-8, step: 1 }),
        /beta2/,
      ],
      [
        'native step 0',
        (t) => op('adam_step', [...t], { lr: 0.1, beta1: 0.9, beta2: 0.9, eps: 1e-8, step: 0 }),
        /step/,
      ],
      [
        'native wrong dtype',
        ([p, g, m]) =>
          op('adam_step', [p, g, m, Tensor.from(new Int32Array(6), [2, 3])], {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.9,
            eps: 1e-8,
            step: 1,
          }),
        /float32/,
      ],
      [
        'native shape',
        ([p, g, m]) =>
          op('adam_step', [p, g, m, Tensor.zeros([7])], { lr: 0.1, beta1: 0.9, beta2: 0.9, eps: 1e-8, step: 1 }),
        /shape/,
      ],
      [
        'native aliasing',
        ([p, g, m]) => op('adam_step', [p, g, m, p], { lr: 0.1, beta1: 0.9, beta2: 0.9, eps: 1e-8, step: 1 }),
        /share memory/,
      ],
      [
        'native weight decay',
        (t) => op('adam_step', [...t], { lr: 0.1, beta1: 0.9, beta2: 0.9, eps: 1e-8, step: 1, weight_decay: -0.1 }),
        /weight_decay/,
      ],
    ];
    for (const [label, fn, msg] of cases) {
      const t = mk();
      const before = snapshot([...t]);
      expect(() => fn(t), label).toThrow(msg);
      expect(snapshot([...t]), label).toEqual(before);
    }
  });
});

// ---------------------------------------------------------------- torch comparison

function torchAvailable(): boolean {
  const r = spawnSync('/usr/bin/python3', ['-c', 'import torch'], { encoding: 'utf8' });
  return r.status === 0;
}
const HAS_TORCH = torchAvailable();

describe.skipIf(!HAS_TORCH)('adam_step against torch 1.13 (/usr/bin/python3)', () => {
  it('Adam, Adam + L2 and AdamW: one step from a preloaded state matches torch (within 1 ulp; identical share reported)', () => {
    const rng = new Rng();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mvq-optim-'));
    try {
      const report: string[] = [];
      for (const [kind, wd] of [
        ['adam', 0],
        ['adam', 0.1],
        ['adamw', 0.3],
      ] as const) {
        const n = 40_000 + rng.int(1000);
        const s = randomState(rng, n);
        const cfg: AdamCfg = {
          lr: 0.01,
          beta1: 0.9,
          beta2: 0.95,
          eps: 1e-8,
          weightDecay: wd,
          decoupled: kind === 'adamw',
          step: 2 + rng.int(20),
        };
        for (const [k, a] of Object.entries(s)) fs.writeFileSync(path.join(dir, `${k}.bin`), Buffer.from(a.buffer));
        const script = `
import torch, numpy as np, os
d = ${JSON.stringify(dir)}
r = lambda k: torch.from_numpy(np.fromfile(os.path.join(d, k + '.bin'), dtype=np.float32).copy())
p = torch.nn.Parameter(r('p')); g = r('g')
cls = torch.optim.AdamW if ${JSON.stringify(kind)} == 'adamw' else torch.optim.Adam
opt = cls([p], lr=${cfg.lr}, betas=(${cfg.beta1}, ${cfg.beta2}), eps=${cfg.eps}, weight_decay=${cfg.weightDecay}, foreach=False)
opt.state[p] = {'step': torch.tensor(float(${cfg.step - 1})), 'exp_avg': r('m'), 'exp_avg_sq': r('v')}
p.grad = g
opt.step()
st = opt.state[p]
for k, t in [('p', p.detach()), ('m', st['exp_avg']), ('v', st['exp_avg_sq'])]:
    t.numpy().astype(np.float32).tofile(os.path.join(d, k + '.out'))
`;
        const res = spawnSync('/usr/bin/python3', ['-c', script], { encoding: 'utf8' });
        expect(res.status, res.stderr).toBe(0);
        const read = (k: string) =>
          new Float32Array(new Uint8Array(fs.readFileSync(path.join(dir, `${k}.out`))).buffer);
        const P = Tensor.from(s.p, [n]);
        const M = Tensor.from(s.m, [n]);
        const V = Tensor.from(s.v, [n]);
        runSync(adamStep(P, Tensor.from(s.g, [n]), M, V, cfg));
        const info = `${kind} wd=${wd} ${seedInfo(rng.seed)}`;
        const parts: string[] = [];
        for (const [k, ours, ref, before] of [
          ['param', P.toFloat32(), read('p'), s.p],
          ['exp_avg', M.toFloat32(), read('m'), s.m],
          ['exp_avg_sq', V.toFloat32(), read('v'), s.v],
        ] as const) {
          let same = 0;
          let worstUlp = 0;
          for (let i = 0; i < n; ++i) {
            if (ours[i] === ref[i]) ++same;
            // ulps of the larger of the value and its change (a param near 0 moved by ~lr).
            const ulp = Math.max(Math.max(Math.abs(ref[i]!), Math.abs(ref[i]! - before[i]!)) * 2 ** -23, 2 ** -149);
            worstUlp = Math.max(worstUlp, Math.abs(ours[i]! - ref[i]!) / ulp);
          }
          parts.push(`${k} ${((100 * same) / n).toFixed(1)}% identical, <= ${worstUlp.toFixed(1)} ulp`);
          expect(worstUlp, `${info} ${k}`).toBeLessThanOrEqual(1); // bit-identical with the torch build here
        }
        report.push(`${kind}(wd ${wd}): ${parts.join(', ')}`);
      }
      console.log(`adam_step vs torch: ${report.join(' | ')}`);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
if (!HAS_TORCH) {
  describe.skip('adam_step against torch 1.13 (skipped: /usr/bin/python3 has no torch; apt-get install python3-torch)', () => {
    it('needs torch', () => undefined);
  });
}

// ---------------------------------------------------------------- EMA, norms, scaling, copies

describe('ema_update', () => {
  it('bit-exact float32 LitEma arithmetic, float64 reference close, sizes incl. multithreaded', () => {
    const rng = new Rng();
    for (const n of SIZES) {
      const s = rng.randn(n);
      const p = rng.randn(n);
      const decay = rng.next();
      const S = Tensor.from(s, [n]);
      const Pv = Tensor.from(p, [n]);
      withPoison(() => runSync(emaUpdate(S, Pv, { decay })));
      const f = Math.fround;
      const omd = f(1 - f(decay));
      const exact = Float32Array.from(s, (x, i) => f(x - f(omd * f(x - p[i]!))));
      const out = S.toFloat32();
      expect(
        out.every((x, i) => x === exact[i]),
        `n=${n} ${seedInfo(rng.seed)}`,
      ).toBe(true);
      // float64 closeness element-wise, 4 ulps of the terms (s and (1 - decay)(s - p) can cancel);
      // the decay itself is float32 by definition (LitEma keeps it as a float32 buffer): omd
      for (let i = 0; i < n; ++i) {
        const t = omd * (s[i]! - p[i]!);
        const bound = 4 * 2 ** -24 * (Math.abs(s[i]!) + Math.abs(t) + omd * (Math.abs(s[i]!) + Math.abs(p[i]!)));
        if (!(Math.abs(out[i]! - (s[i]! - t)) <= bound))
          expect.fail(`shadow[${i}] ${out[i]} vs ${s[i]! - t} (bound ${bound}) ${seedInfo(rng.seed)}`);
      }
      expect(Array.from(Pv.toFloat32())).toEqual(Array.from(p));
    }
  });
  it('bad arguments throw and leave the shadow unchanged', () => {
    const rng = new Rng();
    const S = rng.tensor([4]);
    const before = snapshot([S]);
    expect(() => runSync(emaUpdate(S, Tensor.zeros([5]), { decay: 0.9 }))).toThrow(/shape/);
    expect(() => runSync(emaUpdate(S, Tensor.zeros([4]), { decay: 1.5 }))).toThrow(/decay/);
    expect(() => runSync(emaUpdate(S, Tensor.zeros([4]), { decay: NaN }))).toThrow(/decay/);
    expect(() => op('ema_update', [S, Tensor.zeros([4])], { decay: -0.1 })).toThrow(/decay/);
    expect(() => op('ema_update', [S, S], { decay: 0.5 })).toThrow(/share memory/);
    expect(() => op('ema_update', [S, Tensor.from(new Int32Array(4), [4])], { decay: 0.5 })).toThrow(/float32/);
    expect(snapshot([S])).toEqual(before);
  });
});

describe('l2_norms / scale_inplace / copy_into', () => {
  it('l2Norms: float64-accumulated norms of several tensors, independent of the thread count', () => {
    const rng = new Rng();
    const xs = [rng.tensor([3]), Tensor.zeros([0]), rng.tensor([300_007], 3), rng.tensor([17, 5]).permute(1, 0)];
    const ref = xs.map((t) => Math.sqrt(Array.from(t.toFloat32()).reduce((a, x) => a + x * x, 0)));
    const out = withPoison(() => runSync(l2Norms(xs))).toFloat32();
    expect(out.length).toBe(xs.length);
    out.forEach((v, i) =>
      expect(Math.abs(v - ref[i]!), `${i} ${seedInfo(rng.seed)}`).toBeLessThanOrEqual(ref[i]! * 2 ** -23),
    );
    const prev = addon.getNumThreads();
    addon.setNumThreads(1);
    try {
      expect(Array.from(runSync(l2Norms(xs)).toFloat32())).toEqual(Array.from(out));
    } finally {
      addon.setNumThreads(prev);
    }
  });

  it('scaleInplace: scales each distinct view once, refuses partial overlaps', () => {
    const rng = new Rng();
    const a = rng.tensor([5, 3]);
    const b = rng.tensor([7]);
    const a0 = a.toFloat32();
    const b0 = b.toFloat32();
    const aSameView = a.view(5, 3); // another handle on the same memory, shape and strides
    runSync(scaleInplace([a, b, a, aSameView], 0.5));
    expect(Array.from(a.toFloat32())).toEqual(Array.from(a0, (x) => Math.fround(x * 0.5)));
    expect(Array.from(b.toFloat32())).toEqual(Array.from(b0, (x) => Math.fround(x * 0.5)));
    const c = rng.tensor([10]);
    const before = snapshot([c]);
    expect(() => runSync(scaleInplace([c.narrow(0, 0, 6), c.narrow(0, 4, 6)], 2))).toThrow(/share memory/);
    expect(snapshot([c])).toEqual(before);
    expect(() => runSync(scaleInplace([c, Tensor.from(new Int32Array(2), [2])], 2))).toThrow(/float32/);
    expect(snapshot([c])).toEqual(before);
  });

  it('copyInto / clone: strided source and destination, bit-exact, errors leave dst unchanged', () => {
    const rng = new Rng();
    const src = rng.tensor([4, 6]).permute(1, 0);
    const dst = Tensor.zeros([6, 4]);
    runSync(copyInto(dst, src));
    expect(Array.from(dst.toFloat32())).toEqual(Array.from(src.contiguous().toFloat32()));
    const c = runSync(clone(Tensor.from(new Float32Array([-0, NaN, 1]), [3])));
    const bits = new Uint32Array(c.toFloat32().buffer);
    expect(bits[0]).toBe(0x80000000);
    expect(Number.isNaN(c.toFloat32()[1])).toBe(true);
    const before = snapshot([dst]);
    expect(() => runSync(copyInto(dst, Tensor.zeros([4, 6])))).toThrow(/shape/);
    expect(() => runSync(copyInto(dst, Tensor.from(new Int32Array(24), [6, 4])))).toThrow(/dtype/);
    expect(snapshot([dst])).toEqual(before);
  });

  it('libmCos returns the C library cosine bit patterns', () => {
    const xs = [0, 1, -2.5, Math.PI, 1e5];
    const out = libmCos(xs);
    out.forEach((v, i) => expect(Math.abs(v - Math.cos(xs[i]!))).toBeLessThanOrEqual(2 * Number.EPSILON));
    expect(out[0]).toBe(1);
  });
});

// ---------------------------------------------------------------- lib/train

class Store {
  readonly m = new Map<string, Tensor>();
  get(n: string): Tensor {
    const t = this.m.get(n);
    if (!t) throw new Error(`no ${n}`);
    return t;
  }
}

describe('lib/train optimizers', () => {
  it('Adam steps only parameters with a gradient; group lr is live; matches the float64 reference', () => {
    const rng = new Rng();
    const store = new Store();
    store.m.set('a', rng.tensor([4, 3]));
    store.m.set('b', rng.tensor([5]));
    const a0 = store.get('a').toFloat32();
    const b0 = store.get('b').toFloat32();
    const opt = new Adam(store, [{ names: ['a'] }, { names: ['b'], lr: 0.5 }], { lr: 0.01, betas: [0.9, 0.99] });
    const ga = rng.tensor([4, 3]);
    opt.stepSync(new Map([['a', ga]]));
    expect(Array.from(store.get('b').toFloat32())).toEqual(Array.from(b0));
    expect(opt.stepCount('a')).toBe(1);
    expect(opt.stepCount('b')).toBe(0);
    const ref1 = adamRef(a0, ga.toFloat32(), new Float32Array(12), new Float32Array(12), {
      lr: 0.01,
      beta1: 0.9,
      beta2: 0.99,
      eps: 1e-8,
      weightDecay: 0,
      decoupled: false,
      step: 1,
    });
    expect(
      relErr(
        Float64Array.from(store.get('a').toFloat32(), (x, i) => x - a0[i]!),
        ref1.p.map((x, i) => x - a0[i]!),
      ),
    ).toBeLessThan(1e-4);
    opt.groups[0]!.lr = 0; // a scheduler sets lr 0: the parameter must not move (moments still update)
    const a1 = store.get('a').toFloat32();
    opt.stepSync(new Map([['a', rng.tensor([4, 3])]]));
    expect(Array.from(store.get('a').toFloat32())).toEqual(Array.from(a1));
    expect(opt.stepCount('a')).toBe(2);
  });

  it('step as an async program equals stepSync', async () => {
    const rng = new Rng();
    const mk = () => {
      const st = new Store();
      st.m.set('w', Tensor.from(init, [40, 30]));
      st.m.set('b', Tensor.from(initB, [30]));
      return st;
    };
    const init = rng.randn(1200);
    const initB = rng.randn(30);
    const grads = [0, 1, 2].map(
      () =>
        new Map([
          ['w', rng.tensor([40, 30])],
          ['b', rng.tensor([30])],
        ]),
    );
    const sa = mk();
    const sb = mk();
    const a = new AdamW(sa, arParamGroups(['w', 'b'], { w: [40, 30], b: [30] }, 0.1), { lr: 0.01 });
    const b = new AdamW(sb, arParamGroups(['w', 'b'], { w: [40, 30], b: [30] }, 0.1), { lr: 0.01 });
    for (const g of grads) {
      a.stepSync(g);
      await runAsync(b.step(g));
    }
    for (const n of ['w', 'b']) expect(Array.from(sb.get(n).toFloat32())).toEqual(Array.from(sa.get(n).toFloat32()));
  });

  it('a bad gradient anywhere throws before any parameter changes', () => {
    const rng = new Rng();
    const store = new Store();
    store.m.set('a', rng.tensor([3]));
    store.m.set('b', rng.tensor([2, 2]));
    const opt = new AdamW(store, ['a', 'b'], { lr: 0.1 });
    const before = snapshot([store.get('a'), store.get('b')]);
    expect(() =>
      opt.stepSync(
        new Map([
          ['a', rng.tensor([3])],
          ['b', rng.tensor([4])],
        ]),
      ),
    ).toThrow(/shape/);
    opt.groups[0]!.lr = NaN;
    expect(() => opt.stepSync(new Map([['a', rng.tensor([3])]]))).toThrow(/lr/);
    expect(snapshot([store.get('a'), store.get('b')])).toEqual(before);
    expect(opt.stepCount('a')).toBe(0);
    expect(() => new Adam(store, [{ names: ['a'] }, { names: ['a'] }], { lr: 1 })).toThrow(/more than one group/);
  });

  it('arParamGroups: dim >= 2 decays, the rest does not', () => {
    const g = arParamGroups(['w', 'b', 'conv', 'norm'], { w: [3, 2], b: [3], conv: [2, 1, 3, 3], norm: [2] }, 0.05);
    expect(g).toEqual([
      { names: ['w', 'conv'], weightDecay: 0.05 },
      { names: ['b', 'norm'], weightDecay: 0 },
    ]);
  });

  it('clipGradNorm: torch semantics, a tensor under two names is scaled once, no-op below maxNorm', () => {
    const rng = new Rng();
    const a = rng.tensor([50], 2);
    const b = rng.tensor([3, 3], 2);
    const a0 = a.toFloat32();
    const b0 = b.toFloat32();
    const sq = (x: Float32Array) => x.reduce((s, v) => s + v * v, 0);
    const totalRef = Math.sqrt(2 * sq(a0) + sq(b0)); // 'a' is the gradient of two parameters
    const total = runSync(
      clipGradNorm(
        new Map([
          ['x', a],
          ['y', b],
          ['z', a],
        ]),
        1.0,
      ),
    );
    expect(Math.abs(total - totalRef) / totalRef, seedInfo(rng.seed)).toBeLessThan(1e-6);
    const coef = 1 / (totalRef + 1e-6);
    expect(
      relErr(
        a.toFloat32(),
        Float64Array.from(a0, (v) => v * coef),
      ),
    ).toBeLessThan(1e-6);
    expect(
      relErr(
        b.toFloat32(),
        Float64Array.from(b0, (v) => v * coef),
      ),
    ).toBeLessThan(1e-6);
    const c = Tensor.from(new Float32Array([0.3, 0.4]), [2]);
    expect(runSync(clipGradNorm([c], 1.0))).toBeCloseTo(0.5, 6);
    expect(Array.from(c.toFloat32())).toEqual([Math.fround(0.3), Math.fround(0.4)]);
    const bad = Tensor.from(new Float32Array([Infinity, 1]), [2]);
    expect(() => runSync(clipGradNorm([bad], 1.0, { errorIfNonfinite: true }))).toThrow(/norm/);
    expect(Array.from(bad.toFloat32())).toEqual([Infinity, 1]);
  });

  it('GradAccumulator: the mean over micro-batches (float64 reference), inputs untouched', () => {
    const rng = new Rng();
    const acc = new GradAccumulator();
    const batches = [0, 1, 2].map(
      () =>
        new Map([
          ['w', rng.tensor([4, 5])],
          ['b', rng.tensor([5])],
        ]),
    );
    const keep = batches.map((m) => new Map([...m].map(([k, v]) => [k, v.toFloat32()])));
    for (const m of batches) runSync(acc.add(m));
    expect(acc.count).toBe(3);
    const mean = runSync(acc.mean());
    for (const k of ['w', 'b']) {
      const ref = Float64Array.from(
        keep[0]!.get(k)!,
        (_, i) => (keep[0]!.get(k)![i]! + keep[1]!.get(k)![i]! + keep[2]!.get(k)![i]!) / 3,
      );
      expect(relErr(mean.get(k)!.toFloat32(), ref), seedInfo(rng.seed)).toBeLessThan(1e-6);
      batches.forEach((m, i) => expect(Array.from(m.get(k)!.toFloat32())).toEqual(Array.from(keep[i]!.get(k)!)));
    }
    expect(() => runSync(acc.add(new Map([['w', rng.tensor([5, 4])]])))).toThrow(/shape/);
    acc.reset();
    expect(acc.count).toBe(0);
    expect(() => runSync(acc.mean())).toThrow(/no gradients/);
  });
});

describe('lib/train LitEma and schedules', () => {
  it('LitEma: warm-up decay, copyTo, store/restore and a state-dict round trip', () => {
    const rng = new Rng();
    const store = new Store();
    store.m.set('enc.0.weight', rng.tensor([3, 2]));
    store.m.set('enc.0.bias', rng.tensor([3]));
    const init = store.get('enc.0.weight').toFloat32();
    const ema = new LitEma(store, ['enc.0.weight', 'enc.0.bias'], { decay: 0.999, useNumUpdates: true });
    expect(ema.nextDecay()).toBe(Math.fround(2 / 11));
    store.m.set('enc.0.weight', rng.tensor([3, 2]));
    const p1 = store.get('enc.0.weight').toFloat32();
    ema.updateSync(store);
    expect(ema.numUpdates).toBe(1);
    const f = Math.fround;
    const omd = f(1 - f(2 / 11));
    expect(Array.from(ema.shadow('enc.0.weight').toFloat32())).toEqual(
      Array.from(init, (s, i) => f(s - f(omd * f(s - p1[i]!)))),
    );
    const sd = ema.stateDict();
    expect([...sd.keys()].sort()).toEqual(['decay', 'enc0bias', 'enc0weight', 'num_updates']);
    expect(emaBufferName('a.b.c')).toBe('abc');
    const other = new LitEma(store, ['enc.0.weight', 'enc.0.bias']);
    other.loadStateDict(new Map([...sd].map(([k, v]) => [k, runSync(clone(v))])));
    expect(other.numUpdates).toBe(1);
    expect(Array.from(other.shadow('enc.0.weight').toFloat32())).toEqual(
      Array.from(ema.shadow('enc.0.weight').toFloat32()),
    );
    runSync(ema.store(store));
    runSync(ema.copyTo(store));
    expect(Array.from(store.get('enc.0.weight').toFloat32())).toEqual(
      Array.from(ema.shadow('enc.0.weight').toFloat32()),
    );
    runSync(ema.restore(store));
    expect(Array.from(store.get('enc.0.weight').toFloat32())).toEqual(Array.from(p1));
    expect(() => other.loadStateDict(new Map([['decay', Tensor.zeros([])]]))).toThrow(/num_updates/);
    expect(() => new LitEma(store, ['enc.0.weight', 'enc0.weight'])).toThrow(/same buffer name/);
  });

  it('pyRound rounds halves to even; schedule basics', () => {
    expect([0.5, 1.5, 2.5, 12.5, -0.5, -1.5, 2.4999, 2.5001].map(pyRound)).toEqual([0, 2, 2, 12, 0, -2, 2, 3]);
    expect(lrDropLr(0, { learningRate: 1, stepsPerEpoch: 10, lrDropEpoch: [2, 3], lrDropRate: 0.5 })).toBe(1);
    expect(lrDropLr(19, { learningRate: 1, stepsPerEpoch: 10, lrDropEpoch: [2, 3], lrDropRate: 0.5 })).toBe(1);
    expect(lrDropLr(20, { learningRate: 1, stepsPerEpoch: 10, lrDropEpoch: [2, 3], lrDropRate: 0.5 })).toBe(0.5);
    expect(lrDropLr(35, { learningRate: 1, stepsPerEpoch: 10, lrDropEpoch: [2, 3], lrDropRate: 0.5 })).toBe(0.25);
    expect(linearWarmup(5, 10)).toBe(0.5);
    expect(linearWarmup(10, 10)).toBe(1);
    const cfg = {
      itersTrain: 10,
      maxEpochs: 2,
      wp: 0.25,
      wp0: 0.1,
      wpe: 0.01,
      twde: 0,
      weightDecay: 0.05,
      learningRate: 1,
    };
    expect(arLrWd(0, cfg)).toEqual({ lr: 0.1, weightDecay: 0.05 }); // warm-up of round(2.5) = 2 steps
    expect(arLrWd(2, cfg).lr).toBe(1);
    expect(() => lrDropLr(-1, { learningRate: 1, stepsPerEpoch: 1 })).toThrow(/step/);
  });
});
