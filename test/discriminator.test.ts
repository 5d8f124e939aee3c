// PatchGAN discriminator, GAN losses and LeCAM: parity with the reference (train_losses fixture:
// train-mode logits of two separate calls, running stats after them, eval logits, every GAN/LeCAM
// term, d_objective and its gradients w.r.t. every parameter and both inputs, the generator
// losses' gradients w.r.t. fake), and checks against a float64 reference on fresh random inputs,
// with gradients by finite differences at steps that cross no LeakyReLU / hinge / relu kink.
import { describe, expect, it } from 'vitest';
import { Tape } from '../lib/autograd.js';
import { runSync, type Program } from '../lib/graph.js';
import { Tensor } from '../lib/tensor.js';
import { NLayerDiscriminator } from '../lib/train/discriminator.js';
import {
  LeCAM,
  discLoss,
  genLoss,
  hingeDLoss,
  hingeGenLoss,
  nonSaturateGenLoss,
  softplus,
  vanillaDLoss,
  type DiscLossKind,
  type GenLossKind,
} from '../lib/train/gan.js';
import { add, scale } from '../lib/ops/tensor.js';
import { forEachFixtureDir, relErr } from './fixtures.js';
import { Rng, allFinite, seedInfo, withPoison } from './helpers.js';

const ACT_TOL = 1e-4; // activations / logits (fixture README)
const GRAD_TOL = 1e-3; // gradients and scalar losses

// ------------------------------------------------------------------ float64 reference model

interface RefStage {
  w: Float64Array;
  wShape: number[];
  b: Float64Array | null;
  stride: number;
  bn: { name: string; w: Float64Array; b: Float64Array; rm: Float64Array; rv: Float64Array } | null;
  act: boolean;
}

/**
 * The discriminator's layers as float64 arrays, read from its state dict by the reference's names;
 * `override` replaces one tensor's values (for finite differences).
 */
function refModel(d: NLayerDiscriminator, override?: { name: string; data: ArrayLike<number> }): RefStage[] {
  const sd = d.stateDict();
  const g = (n: string) => Float64Array.from(override && override.name === n ? override.data : sd.get(n)!.toFloat32());
  const stages: RefStage[] = [];
  const convs = d
    .paramNames()
    .filter((n) => n.endsWith('.weight') && sd.get(n)!.ndim === 4)
    .map((n) => n.slice(0, -'.weight'.length));
  const bns = new Set(d.batchNormNames());
  for (const [k, c] of convs.entries()) {
    const idx = Number(c.split('.')[1]);
    const bnName = `main.${idx + 1}`;
    const hasBn = bns.has(bnName);
    stages.push({
      w: g(`${c}.weight`),
      wShape: sd.get(`${c}.weight`)!.shape,
      b: sd.has(`${c}.bias`) ? g(`${c}.bias`) : null,
      stride: k < d.nLayers ? 2 : 1,
      bn: hasBn
        ? {
            name: bnName,
            w: g(`${bnName}.weight`),
            b: g(`${bnName}.bias`),
            rm: g(`${bnName}.running_mean`),
            rv: g(`${bnName}.running_var`),
          }
        : null,
      act: k < convs.length - 1,
    });
  }
  return stages;
}

function refConv(
  x: ArrayLike<number>,
  xs: number[],
  w: ArrayLike<number>,
  ws: number[],
  b: ArrayLike<number> | null,
  stride: number,
  pad: number,
) {
  const [B, C, H, W] = xs as [number, number, number, number];
  const [O, , K] = ws as [number, number, number, number];
  const Ho = Math.floor((H + 2 * pad - K) / stride) + 1;
  const Wo = Math.floor((W + 2 * pad - K) / stride) + 1;
  const y = new Float64Array(B * O * Ho * Wo);
  for (let n = 0; n < B; ++n)
    for (let o = 0; o < O; ++o)
      for (let i = 0; i < Ho; ++i)
        for (let j = 0; j < Wo; ++j) {
          let s = b ? b[o]! : 0;
          for (let c = 0; c < C; ++c)
            for (let ki = 0; ki < K; ++ki) {
              const hi = i * stride - pad + ki;
              if (hi < 0 || hi >= H) continue;
              for (let kj = 0; kj < K; ++kj) {
                const wj = j * stride - pad + kj;
                if (wj < 0 || wj >= W) continue;
                s += x[((n * C + c) * H + hi) * W + wj]! * w[((o * C + c) * K + ki) * K + kj]!;
              }
            }
          y[((n * O + o) * Ho + i) * Wo + j] = s;
        }
  return { y, shape: [B, O, Ho, Wo] };
}

interface RefOut {
  logits: Float64Array;
  shape: number[];
  /** Every LeakyReLU input (for kink checks). */
  pre: Float64Array[];
  /** Updated running stats per BatchNorm (training). */
  stats: Map<string, { rm: Float64Array; rv: Float64Array }>;
}

function refForward(stages: RefStage[], x: ArrayLike<number>, xs: number[], training: boolean): RefOut {
  let h: ArrayLike<number> = x;
  let shape = xs;
  const pre: Float64Array[] = [];
  const stats = new Map<string, { rm: Float64Array; rv: Float64Array }>();
  for (const s of stages) {
    const c = refConv(h, shape, s.w, s.wShape, s.b, s.stride, 1);
    let y = c.y;
    shape = c.shape;
    if (s.bn) {
      const [B, C, H, W] = shape as [number, number, number, number];
      const S = H * W;
      const n = B * S;
      const out = new Float64Array(y.length);
      const rm = new Float64Array(C);
      const rv = new Float64Array(C);
      for (let ch = 0; ch < C; ++ch) {
        let m = 0;
        for (let b = 0; b < B; ++b) for (let i = 0; i < S; ++i) m += y[(b * C + ch) * S + i]!;
        m /= n;
        let q = 0;
        for (let b = 0; b < B; ++b) for (let i = 0; i < S; ++i) q += (y[(b * C + ch) * S + i]! - m) ** 2;
        const mean = training ? m : s.bn.rm[ch]!;
        const v = training ? q / n : s.bn.rv[ch]!;
        rm[ch] = 0.9 * s.bn.rm[ch]! + 0.1 * m;
        rv[ch] = 0.9 * s.bn.rv[ch]! + 0.1 * (q / (n - 1));
        const is = 1 / Math.sqrt(v + 1e-5);
        for (let b = 0; b < B; ++b)
          for (let i = 0; i < S; ++i) {
            const k = (b * C + ch) * S + i;
            out[k] = (y[k]! - mean) * is * s.bn.w[ch]! + s.bn.b[ch]!;
          }
      }
      if (training) stats.set(s.bn.name, { rm, rv });
      y = out;
    }
    if (s.act) {
      pre.push(Float64Array.from(y));
      y = y.map((v) => (v > 0 ? v : 0.2 * v));
    }
    h = y;
  }
  return { logits: Float64Array.from(h), shape, pre, stats };
}

// ------------------------------------------------------------------ float64 reference losses

const mean64 = (a: ArrayLike<number>) => Array.from(a).reduce((s, v) => s + v, 0) / a.length;
const sp64 = (x: number) => (x > 0 ? x + Math.log1p(Math.exp(-x)) : Math.log1p(Math.exp(x)));
const relu64 = (x: number) => Math.max(x, 0);
function perSample64(a: ArrayLike<number>, B: number): number[] {
  const n = a.length / B;
  return Array.from({ length: B }, (_, b) => mean64(Array.from(a).slice(b * n, (b + 1) * n)));
}
function dLoss64(kind: DiscLossKind, r: ArrayLike<number>, f: ArrayLike<number>, B: number): number {
  if (kind === 'hinge')
    return 0.5 * (mean64(Array.from(r, (v) => relu64(1 - v))) + mean64(Array.from(f, (v) => relu64(1 + v))));
  if (kind === 'vanilla') return 0.5 * (mean64(Array.from(r, (v) => sp64(-v))) + mean64(Array.from(f, (v) => sp64(v))));
  return mean64(perSample64(r, B).map((v) => sp64(-v))) + mean64(perSample64(f, B).map((v) => sp64(v)));
}
function gLoss64(kind: GenLossKind, f: ArrayLike<number>, B: number): number {
  return kind === 'hinge' ? -mean64(f) : mean64(perSample64(f, B).map((v) => sp64(-v)));
}
function lecam64(r: ArrayLike<number>, f: ArrayLike<number>, emaReal: number, emaFake: number): number {
  return (
    mean64(Array.from(r, (v) => relu64(v - emaFake) ** 2)) + mean64(Array.from(f, (v) => relu64(emaReal - v) ** 2))
  );
}
/** The argument of every kink the losses have (hinge and LeCAM relu arguments). */
function lossKinkArgs(r: ArrayLike<number>, f: ArrayLike<number>, emaReal: number, emaFake: number): number[] {
  return [
    ...Array.from(r, (v) => 1 - v),
    ...Array.from(f, (v) => 1 + v),
    ...Array.from(r, (v) => v - emaFake),
    ...Array.from(f, (v) => emaReal - v),
  ];
}
/** The signs at every kink the losses have. */
function lossKinks(r: ArrayLike<number>, f: ArrayLike<number>, emaReal: number, emaFake: number): number[] {
  return lossKinkArgs(r, f, emaReal, emaFake).map(Math.sign);
}

// ------------------------------------------------------------------ fixture parity

interface DiscMeta {
  input_nc: number;
  ndf: number;
  n_layers: number;
  use_actnorm: boolean;
  lecam: { decay: number; weight: number };
}

function withPrefix(names: readonly string[], prefix: string): string[] {
  return names.filter((n) => n.startsWith(prefix)).map((n) => n.slice(prefix.length));
}

forEachFixtureDir('train_losses.safetensors', (fixture) => {
  const setup = () => {
    const f = fixture();
    const meta = f.meta<DiscMeta>('discriminator');
    if (meta.use_actnorm) throw new Error('fixture uses ActNorm, which is not implemented');
    const d = new NLayerDiscriminator({
      inputNc: meta.input_nc,
      ndf: meta.ndf,
      nLayers: meta.n_layers,
      useActnorm: false,
    });
    const m = new Map<string, Tensor>();
    for (const n of withPrefix(f.names, 'disc.')) m.set(n, f.tensor(`disc.${n}`));
    d.load(m, { strict: true });
    return { f, meta, d };
  };

  it('declares exactly the reference state_dict keys (parameters and buffers) with their shapes', () => {
    const { f, d } = setup();
    const ours = new Map([...d.stateDict()].map(([n, t]) => [n, t.shape]));
    const ref = new Map(withPrefix(f.names, 'disc.').map((n) => [n, f.info(`disc.${n}`).shape]));
    expect([...ours.keys()].sort()).toEqual([...ref.keys()].sort());
    for (const [n, s] of ref) expect(ours.get(n), n).toEqual(s);
    expect(d.paramNames().length + d.bufferNames().length).toBe(ref.size);
  });

  it('train-mode logits of the two separate calls, running stats after them, eval logits; GAN terms, LeCAM, d_objective and every gradient', () => {
    const { f, meta, d } = setup();
    const real = f.tensor('disc_in.real');
    const fake = f.tensor('disc_in.fake');
    const tape = new Tape();
    const lr = withPoison(() => runSync(d.forward(real, { training: true }), tape.observe));
    const lf = withPoison(() => runSync(d.forward(fake, { training: true }), tape.observe));
    expect(relErr(lr, f.array('disc_out.logits_real') as Float32Array)).toBeLessThan(ACT_TOL);
    expect(relErr(lf, f.array('disc_out.logits_fake') as Float32Array)).toBeLessThan(ACT_TOL);
    expect(lr.shape).toEqual(f.info('disc_out.logits_real').shape);

    const runningKeys = withPrefix(f.names, 'disc_out.running.');
    expect(runningKeys.length).toBe(d.bufferNames().length);
    const sd = d.stateDict();
    for (const n of runningKeys) {
      const ref = f.array(`disc_out.running.${n}`);
      if (n.endsWith('num_batches_tracked')) expect(sd.get(n)!.toArray()[0], n).toBe((ref as BigInt64Array)[0]);
      else expect(relErr(sd.get(n)!, ref as Float32Array), n).toBeLessThan(ACT_TOL);
    }

    // GAN terms (before autograd so the tape holds the losses' ops too)
    const term = (name: string, t: Tensor, tol = GRAD_TOL) => {
      const err = relErr(t, f.array(`disc_out.${name}`) as Float32Array);
      expect(err, `${name}: ${err}`).toBeLessThan(tol);
    };
    const hinge = runSync(hingeDLoss(lr, lf), tape.observe);
    term('hinge_d_loss', hinge);
    term('vanilla_d_loss', runSync(vanillaDLoss(lr, lf), tape.observe));
    const nsg = runSync(nonSaturateGenLoss(lf), tape.observe);
    term('non_saturate_gen_loss', nsg);
    const hg = runSync(hingeGenLoss(lf), tape.observe);
    term('hinge_gen_loss', hg);

    const lecam = new LeCAM({ decay: meta.lecam.decay });
    lecam.loadState({
      emaReal: (f.array('disc_in.ema_real') as Float64Array)[0]!,
      emaFake: (f.array('disc_in.ema_fake') as Float64Array)[0]!,
    });
    runSync(lecam.updateFrom(lr, lf));
    const emaRealRef = (f.array('disc_out.ema_real_after') as Float64Array)[0]!;
    const emaFakeRef = (f.array('disc_out.ema_fake_after') as Float64Array)[0]!;
    expect(Math.abs(lecam.emaReal - emaRealRef) / Math.abs(emaRealRef)).toBeLessThan(ACT_TOL);
    expect(Math.abs(lecam.emaFake - emaFakeRef) / Math.abs(emaFakeRef)).toBeLessThan(ACT_TOL);
    const reg = runSync(lecam.reg(lr, lf), tape.observe);
    term('lecam_reg', reg);
    const obj = runSync(weightedSum(hinge, reg, meta.lecam.weight), tape.observe);
    term('d_objective', obj);

    const grads = runSync(tape.backward(obj));
    const bad: string[] = [];
    for (const n of withPrefix(f.names, 'disc_grad.')) {
      if (n.startsWith('main.')) {
        const g = grads.get(d.store.get(n));
        const err = g ? relErr(g, f.array(`disc_grad.${n}`) as Float32Array) : Infinity;
        if (!(err < GRAD_TOL)) bad.push(`${n}: ${err}`);
      }
    }
    expect(bad).toEqual([]);
    expect(withPrefix(f.names, 'disc_grad.main.').length).toBe(d.paramNames().length);
    for (const [key, t] of [
      ['disc_grad_input.real', real],
      ['disc_grad_input.fake', fake],
    ] as const) {
      const err = relErr(grads.get(t)!, f.array(key) as Float32Array);
      expect(err, `${key}: ${err}`).toBeLessThan(GRAD_TOL);
    }
    // The generator losses' gradients w.r.t. fake, through the same recorded train-mode graph.
    for (const [key, root] of [
      ['disc_grad_input.fake_non_saturate_gen', nsg],
      ['disc_grad_input.fake_hinge_gen', hg],
    ] as const) {
      const g = runSync(tape.backward(root)).get(fake)!;
      const err = relErr(g, f.array(key) as Float32Array);
      expect(err, `${key}: ${err}`).toBeLessThan(GRAD_TOL);
    }

    const er = runSync(d.forward(real, { training: false }));
    const ef = runSync(d.forward(fake, { training: false }));
    expect(relErr(er, f.array('disc_out.eval_logits_real') as Float32Array)).toBeLessThan(ACT_TOL);
    expect(relErr(ef, f.array('disc_out.eval_logits_fake') as Float32Array)).toBeLessThan(ACT_TOL);
    // eval mode leaves the running stats alone
    for (const n of d.bufferNames()) {
      const a = d.stateDict().get(n)!.toArray();
      const b = sd.get(n)!.toArray();
      expect(Array.from(a, Number), n).toEqual(Array.from(b, Number));
    }
  });
});

/** a + w * b as one program (so a recording tape sees both ops). */
function* weightedSum(a: Tensor, b: Tensor, w: number): Program<Tensor> {
  return yield* add(a, yield* scale(b, w));
}

// ------------------------------------------------------------------ float64 reference, random inputs

describe('NLayerDiscriminator on fresh random weights and inputs vs a float64 reference', () => {
  const build = (rng: Rng, nLayers: number, ndf: number) => {
    const d = new NLayerDiscriminator({ inputNc: 3, ndf, nLayers });
    d.initRandom(rng.int(1 << 30));
    // Weights away from the init scale so every layer contributes, and non-default running stats.
    const m = new Map<string, Tensor>();
    for (const n of d.paramNames()) {
      const t = d.store.get(n);
      const a = t.toFloat32();
      const isBn = t.ndim === 1 && d.batchNormNames().some((b) => n.startsWith(`${b}.`));
      for (let i = 0; i < a.length; ++i)
        a[i] = isBn
          ? n.endsWith('weight')
            ? 1 + 0.3 * rng.normal()
            : 0.2 * rng.normal()
          : t.ndim === 4
            ? (0.3 * rng.normal()) / Math.sqrt(t.shape[1]! * 4)
            : 0.1 * rng.normal();
      m.set(n, Tensor.from(a, t.shape));
    }
    for (const b of d.batchNormNames()) {
      const c = d.runningStats(b).runningMean.shape[0]!;
      m.set(`${b}.running_mean`, rng.tensor([c], 0.1));
      m.set(
        `${b}.running_var`,
        Tensor.from(
          Float32Array.from({ length: c }, () => 0.5 + rng.next()),
          [c],
        ),
      );
      m.set(`${b}.num_batches_tracked`, Tensor.from(new BigInt64Array([BigInt(rng.int(100))]), []));
    }
    d.load(m, { strict: true });
    return d;
  };

  for (const [nLayers, ndf, res] of [
    [2, 4, 16],
    [3, 2, 32],
  ] as const) {
    it(`forward (train and eval) and running-stat updates, n_layers ${nLayers}, ndf ${ndf}, ${res}x${res}`, () => {
      const rng = new Rng();
      const info = seedInfo(rng.seed);
      const d = build(rng, nLayers, ndf);
      const shape = [2, 3, res, res];
      const x = rng.tensor(shape);
      const ref = refModel(d);
      const tracked0 = d.batchNormNames().map((b) => d.runningStats(b).numBatchesTracked);
      const y = withPoison(() => runSync(d.forward(x, { training: true })));
      const r = refForward(ref, x.toFloat32(), shape, true);
      expect(y.shape, info).toEqual(r.shape);
      expect(allFinite(y.toFloat32()), info).toBe(true);
      expect(relErr(y, r.logits), info).toBeLessThan(ACT_TOL);
      for (const [k, b] of d.batchNormNames().entries()) {
        const s = d.runningStats(b);
        expect(relErr(s.runningMean, r.stats.get(b)!.rm), `${b} mean ${info}`).toBeLessThan(ACT_TOL);
        expect(relErr(s.runningVar, r.stats.get(b)!.rv), `${b} var ${info}`).toBeLessThan(ACT_TOL);
        expect(s.numBatchesTracked).toBe(tracked0[k]! + 1);
      }
      // eval mode with the updated running stats
      const ref2 = refModel(d);
      const ye = withPoison(() => runSync(d.forward(x, { training: false })));
      expect(relErr(ye, refForward(ref2, x.toFloat32(), shape, false).logits), info).toBeLessThan(ACT_TOL);
    });
  }

  for (const kind of ['hinge', 'vanilla', 'non_saturate'] as const) {
    it(`gradients of ${kind} d-loss + LeCAM w.r.t. both inputs and every parameter kind match float64 finite differences`, () => {
      const rng = new Rng();
      const info = seedInfo(rng.seed);
      const d = build(rng, 2, 4);
      const shape = [2, 3, 16, 16];
      const lecam = new LeCAM();
      lecam.loadState({ emaReal: 0.3 * rng.normal(), emaFake: 0.3 * rng.normal() });
      const weight = 0.5;
      const stages0 = refModel(d);

      // f64 objective as a function of (real, fake, one overridden parameter)
      const objective = (rx: ArrayLike<number>, fx: ArrayLike<number>, stages: RefStage[]) => {
        const a = refForward(stages, rx, shape, true);
        const b = refForward(stages, fx, shape, true);
        const args = [
          ...a.pre.flatMap((p) => Array.from(p)),
          ...b.pre.flatMap((p) => Array.from(p)),
          ...lossKinkArgs(a.logits, b.logits, lecam.emaReal, lecam.emaFake),
        ];
        return {
          value:
            dLoss64(kind, a.logits, b.logits, 2) + weight * lecam64(a.logits, b.logits, lecam.emaReal, lecam.emaFake),
          margin: args.reduce((m, v) => Math.min(m, Math.abs(v)), Number.POSITIVE_INFINITY),
          kinks: [
            ...a.pre.flatMap((p) => Array.from(p, Math.sign)),
            ...b.pre.flatMap((p) => Array.from(p, Math.sign)),
            ...lossKinks(a.logits, b.logits, lecam.emaReal, lecam.emaFake),
          ],
        };
      };
      // Inputs are drawn until every kink argument sits at least KINK_MARGIN from its kink: closer than
      // that, float32 and float64 may take different branches at the base point itself, which no step
      // size can fix (about one draw in a hundred is redrawn).
      const KINK_MARGIN = 1e-4;
      let real = rng.tensor(shape);
      let fake = rng.tensor(shape);
      let base = objective(real.toFloat32(), fake.toFloat32(), stages0);
      for (let draw = 1; base.margin < KINK_MARGIN; ++draw) {
        expect(draw, `${info}: no input draw keeps every kink argument ${KINK_MARGIN} away`).toBeLessThan(20);
        real = rng.tensor(shape);
        fake = rng.tensor(shape);
        base = objective(real.toFloat32(), fake.toFloat32(), stages0);
      }
      const tape = new Tape();
      const lr = runSync(d.forward(real, { training: true }), tape.observe);
      const lf = runSync(d.forward(fake, { training: true }), tape.observe);
      const dl = runSync(discLoss(kind, lr, lf), tape.observe);
      const reg = runSync(lecam.reg(lr, lf), tape.observe);
      const obj = runSync(weightedSum(dl, reg, weight), tape.observe);
      const grads = runSync(tape.backward(obj));
      expect(Math.abs(obj.item() - base.value) / Math.abs(base.value), info).toBeLessThan(GRAD_TOL);

      // Each target: a float32 array, how to evaluate the objective with it replaced, and our gradient.
      type Target = {
        name: string;
        data: Float32Array;
        eval: (v: Float32Array) => { value: number; kinks: number[] };
        grad: Float32Array;
      };
      const targets: Target[] = [
        {
          name: 'real',
          data: real.toFloat32(),
          eval: (v) => objective(v, fake.toFloat32(), stages0),
          grad: grads.get(real)!.toFloat32(),
        },
        {
          name: 'fake',
          data: fake.toFloat32(),
          eval: (v) => objective(real.toFloat32(), v, stages0),
          grad: grads.get(fake)!.toFloat32(),
        },
      ];
      // (train-mode outputs do not depend on the running stats, so reading them after the calls is fine)
      for (const n of d.paramNames()) {
        targets.push({
          name: n,
          data: d.store.get(n).toFloat32(),
          eval: (v) => objective(real.toFloat32(), fake.toFloat32(), refModel(d, { name: n, data: v })),
          grad: grads.get(d.store.get(n))!.toFloat32(),
        });
      }
      // A small step in float64 rarely crosses a kink; coordinates whose step does are redrawn.
      const eps = 1e-6; // the float64 reference makes a small step exact; it crosses 100x fewer kinks than 1e-4
      let checked = 0;
      let skipped = 0;
      const bad: string[] = [];
      for (const t of targets) {
        const scaleG = t.grad.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
        let done = 0;
        for (let tries = 0; tries < 40 && done < 6; ++tries) {
          const i = rng.int(t.data.length);
          const xp = Float32Array.from(t.data);
          const xm = Float32Array.from(t.data);
          xp[i] = t.data[i]! + eps;
          xm[i] = t.data[i]! - eps;
          const p = t.eval(xp);
          const m = t.eval(xm);
          if (p.kinks.some((s, k) => s !== m.kinks[k] || s === 0)) {
            skipped++;
            continue;
          }
          const numeric = (p.value - m.value) / (xp[i]! - xm[i]!);
          const a = t.grad[i]!;
          const rel = Math.abs(numeric - a) / Math.max(Math.abs(numeric), Math.abs(a), 1e-2 * scaleG, 1e-12);
          checked++;
          done++;
          if (!(rel < 2e-3)) bad.push(`${t.name}[${i}]: numeric ${numeric}, ours ${a} (rel ${rel.toExponential(2)})`);
        }
      }
      expect(bad, info).toEqual([]);
      expect(checked, `${info}, ${skipped} skipped at kinks`).toBe(6 * targets.length);
    });
  }
});

describe('GAN losses and LeCAM on fresh random logits vs float64', () => {
  /** Logits [B, 1, h, w] with every hinge / relu argument at least `margin` from its kink. */
  const logitsAway = (rng: Rng, shape: number[], kinks: number[], margin: number, s = 1.5): Float32Array => {
    const n = shape.reduce((a, b) => a * b, 1);
    const out = new Float32Array(n);
    for (let i = 0; i < n; ++i) {
      let v: number;
      do v = Math.fround(s * rng.normal());
      while (kinks.some((k) => Math.abs(v - k) < margin));
      out[i] = v;
    }
    return out;
  };

  it('values and gradients (finite differences) of every d and g loss and the LeCAM regularizer', () => {
    const rng = new Rng();
    const info = seedInfo(rng.seed);
    const shape = [3, 1, 3, 4];
    const B = shape[0]!;
    const emaReal = 0.4 * rng.normal();
    const emaFake = 0.4 * rng.normal();
    const eps = 1e-3;
    const margin = 4 * eps;
    const r = logitsAway(rng, shape, [1, emaFake], margin);
    const f = logitsAway(rng, shape, [-1, emaReal], margin);
    const lecam = new LeCAM();
    lecam.loadState({ emaReal, emaFake });
    type Case = {
      name: string;
      prog: (a: Tensor, b: Tensor) => Program<Tensor>;
      ref: (a: ArrayLike<number>, b: ArrayLike<number>) => number;
    };
    const cases: Case[] = [
      ...(['hinge', 'vanilla', 'non_saturate'] as const).map((k) => ({
        name: `d ${k}`,
        prog: (a: Tensor, b: Tensor) => discLoss(k, a, b),
        ref: (a: ArrayLike<number>, b: ArrayLike<number>) => dLoss64(k, a, b, B),
      })),
      ...(['hinge', 'non_saturate'] as const).map((k) => ({
        name: `g ${k}`,
        prog: (_a: Tensor, b: Tensor) => genLoss(k, b),
        ref: (_a: ArrayLike<number>, b: ArrayLike<number>) => gLoss64(k, b, B),
      })),
      { name: 'lecam', prog: (a, b) => lecam.reg(a, b), ref: (a, b) => lecam64(a, b, emaReal, emaFake) },
    ];
    for (const c of cases) {
      const a = Tensor.from(r, shape);
      const b = Tensor.from(f, shape);
      const tape = new Tape();
      const v = withPoison(() => runSync(c.prog(a, b), tape.observe));
      expect(v.numel).toBe(1);
      const exact = c.ref(r, f);
      expect(Math.abs(v.item() - exact) / Math.max(Math.abs(exact), 1e-6), `${c.name} value ${info}`).toBeLessThan(
        1e-5,
      );
      const grads = runSync(tape.backward(v));
      for (const [which, arr, t] of [
        ['real', r, a],
        ['fake', f, b],
      ] as const) {
        const g = grads.get(t)?.toFloat32() ?? new Float32Array(arr.length);
        const scaleG = g.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
        for (let i = 0; i < arr.length; ++i) {
          const xp = Float32Array.from(arr);
          const xm = Float32Array.from(arr);
          xp[i] = arr[i]! + eps;
          xm[i] = arr[i]! - eps;
          const num =
            which === 'real'
              ? (c.ref(xp, f) - c.ref(xm, f)) / (xp[i]! - xm[i]!)
              : (c.ref(r, xp) - c.ref(r, xm)) / (xp[i]! - xm[i]!);
          const err = Math.abs(num - g[i]!) / Math.max(Math.abs(num), 1e-2 * scaleG, 1e-9);
          expect(err, `${c.name} d/d${which}[${i}]: numeric ${num}, ours ${g[i]} ${info}`).toBeLessThan(1e-3);
        }
      }
    }
  });

  it('softplus is accurate and overflow-safe over a wide range, with gradient sigmoid(x)', () => {
    const xs = [-120, -30, -12, -3, -0.5, 0.25, 2, 15, 19.5, 20.5, 40, 100];
    const x = Tensor.from(Float32Array.from(xs), [xs.length]);
    const tape = new Tape();
    const y = runSync(softplus(x), tape.observe);
    const ya = y.toFloat32();
    for (const [i, v] of xs.entries())
      expect(Math.abs(ya[i]! - sp64(Math.fround(v))), `softplus(${v})`).toBeLessThanOrEqual(
        1e-6 * Math.max(1, Math.abs(v)),
      );
    const g = runSync(tape.backward(y, Tensor.from(new Float32Array(xs.length).fill(1), [xs.length])))
      .get(x)!
      .toFloat32();
    for (const [i, v] of xs.entries())
      expect(Math.abs(g[i]! - 1 / (1 + Math.exp(-v))), `softplus'(${v})`).toBeLessThan(1e-6);
  });

  it('LeCAM: float64 EMA update, state round trip, argument checks', () => {
    const rng = new Rng();
    const l = new LeCAM({ decay: 0.999 });
    expect(l.state()).toEqual({ emaReal: 0, emaFake: 0, decay: 0.999 });
    let er = 0;
    let ef = 0;
    for (let t = 0; t < 5; ++t) {
      const a = rng.normal();
      const b = rng.normal();
      l.update(a, b);
      er = er * 0.999 + a * (1 - 0.999);
      ef = ef * 0.999 + b * (1 - 0.999);
    }
    expect(l.emaReal).toBe(er);
    expect(l.emaFake).toBe(ef);
    const l2 = new LeCAM();
    l2.loadState(l.state());
    expect(l2.state()).toEqual(l.state());
    expect(() => l.update(Number.NaN, 0)).toThrow(TypeError);
    expect(() => l2.loadState({ emaReal: 0, emaFake: 0, decay: 0.5 })).toThrow(RangeError);
    expect(() => new LeCAM({ decay: 2 })).toThrow(RangeError);
  });
});

describe('NLayerDiscriminator API', () => {
  it('layer names follow the reference Sequential indices', () => {
    const d = new NLayerDiscriminator({ inputNc: 3, ndf: 8, nLayers: 3 });
    expect(d.paramNames()).toEqual([
      'main.0.weight',
      'main.0.bias',
      'main.2.weight',
      'main.3.weight',
      'main.3.bias',
      'main.5.weight',
      'main.6.weight',
      'main.6.bias',
      'main.8.weight',
      'main.9.weight',
      'main.9.bias',
      'main.11.weight',
      'main.11.bias',
    ]);
    expect(d.store.shapeMap()['main.8.weight']).toEqual([64, 32, 4, 4]);
    expect(d.store.shapeMap()['main.11.weight']).toEqual([1, 64, 4, 4]);
    expect(new NLayerDiscriminator({ ndf: 64, nLayers: 5 }).store.shapeMap()['main.14.weight']).toEqual([
      512, 512, 4, 4,
    ]);
    expect(d.bufferNames()).toContain('main.9.num_batches_tracked');
  });

  it('initRandom follows weights_init (deterministic per seed) and resets the running stats', () => {
    const d = new NLayerDiscriminator({ ndf: 16, nLayers: 3 });
    d.initRandom(5);
    const w = d.store.get('main.8.weight').toFloat32();
    const m = mean64(w);
    const sd = Math.sqrt(mean64(Array.from(w, (v) => (v - m) ** 2)));
    expect(Math.abs(m)).toBeLessThan(1e-3);
    expect(Math.abs(sd - 0.02) / 0.02).toBeLessThan(0.02);
    expect(w.some((v) => Math.abs(v) > 0.045)).toBe(true); // not truncated at 2 std
    const bw = d.store.get('main.9.weight').toFloat32();
    expect(Math.abs(mean64(bw) - 1)).toBeLessThan(0.01);
    expect(Array.from(d.store.get('main.9.bias').toFloat32())).toEqual(new Array(bw.length).fill(0));
    const bound = 1 / Math.sqrt(3 * 16);
    const b0 = d.store.get('main.0.bias').toFloat32();
    expect(b0.every((v) => Math.abs(v) <= bound) && b0.some((v) => v !== 0)).toBe(true);
    expect(d.runningStats('main.3').numBatchesTracked).toBe(0);
    expect(Array.from(d.runningStats('main.3').runningVar.toFloat32())).toEqual(new Array(32).fill(1));
    const e = new NLayerDiscriminator({ ndf: 16, nLayers: 3 });
    e.initRandom(5);
    expect(Array.from(e.store.get('main.8.weight').toFloat32())).toEqual(Array.from(w));
    e.initRandom(6);
    expect(relErr(e.store.get('main.8.weight'), w)).toBeGreaterThan(0.5);
  });

  it('stateDict / load round-trip parameters and buffers; bad loads change nothing', () => {
    const rng = new Rng();
    const d = new NLayerDiscriminator({ ndf: 4, nLayers: 2 });
    d.initRandom(rng.int(1000));
    runSync(d.forward(rng.tensor([2, 3, 16, 16]), { training: true }));
    const sd = d.stateDict();
    expect(Number(sd.get('main.3.num_batches_tracked')!.toArray()[0])).toBe(1);
    const e = new NLayerDiscriminator({ ndf: 4, nLayers: 2 });
    const rep = e.load(sd, { strict: true });
    expect(rep).toEqual({ missing: [], unexpected: [] });
    for (const [n, t] of e.stateDict())
      expect(Array.from(t.toArray(), Number), n).toEqual(Array.from(sd.get(n)!.toArray(), Number));
    const x = rng.tensor([2, 3, 16, 16]);
    expect(Array.from(runSync(e.forward(x, { training: false })).toFloat32())).toEqual(
      Array.from(runSync(d.forward(x, { training: false })).toFloat32()),
    );

    const before = e.stateDict();
    const broken = new Map(sd);
    broken.set('main.3.running_var', Tensor.zeros([5]));
    expect(() => e.load(broken)).toThrow(/main\.3\.running_var/);
    broken.set('main.3.running_var', sd.get('main.3.running_var')!);
    broken.set('main.2.weight', Tensor.zeros([1, 1, 4, 4]));
    expect(() => e.load(broken)).toThrow(/main\.2\.weight/);
    const partial = new Map(sd);
    partial.delete('main.3.num_batches_tracked');
    expect(() => e.load(partial, { strict: true })).toThrow(/num_batches_tracked/);
    expect(e.load(partial).missing).toEqual(['main.3.num_batches_tracked']);
    for (const [n, t] of e.stateDict())
      expect(Array.from(t.toArray(), Number), n).toEqual(Array.from(before.get(n)!.toArray(), Number));
  });

  it('rejects bad options and inputs', () => {
    expect(() => new NLayerDiscriminator({ useActnorm: true as unknown as false })).toThrow(RangeError);
    expect(() => new NLayerDiscriminator({ ndf: 0 })).toThrow(RangeError);
    const d = new NLayerDiscriminator({ ndf: 4, nLayers: 2 });
    d.initRandom(1);
    expect(() => runSync(d.forward(Tensor.zeros([2, 4, 16, 16]), { training: true }))).toThrow(
      /x must be a float32 \[B, 3, H, W\]/,
    );
    expect(() => runSync(d.forward(Tensor.zeros([2, 3, 16, 16]), {} as { training: boolean }))).toThrow(TypeError);
    expect(() => runSync(hingeDLoss(Tensor.zeros([2, 1, 2, 2]), 3 as unknown as Tensor))).toThrow(TypeError);
  });
});
