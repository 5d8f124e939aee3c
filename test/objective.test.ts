// The tokenizer's training objective (VQLPIPSWithDiscriminator): parity with the reference for
// every case of the train_losses fixture (every logged term of the generator and discriminator
// passes, the generator's gradients w.r.t. the reconstructions and the last layer, the
// discriminator's parameter gradients, BatchNorm stats after both passes, LeCAM EMAs); the pruned
// Tape.backward({ wrt }); and float64 finite differences of the objective on fresh random inputs.
import { describe, expect, it } from 'vitest';
import { Tape } from '../lib/autograd.js';
import { runSync, type OpRequest, type Program } from '../lib/graph.js';
import { conv2d, conv2dBackward } from '../lib/ops/linalg.js';
import { leakyRelu } from '../lib/ops/nn.js';
import { mean, mul, sub } from '../lib/ops/tensor.js';
import { Tensor } from '../lib/tensor.js';
import { LPIPS } from '../lib/train/lpips.js';
import type { NLayerDiscriminator } from '../lib/train/discriminator.js';
import { VQLPIPSWithDiscriminator, resolveLossConfig, type PerceptualLoss } from '../lib/train/objective.js';
import { forEachFixtureDir, relErr } from './fixtures.js';
import { Rng, seedInfo } from './helpers.js';

const ACT_TOL = 1e-4;
const GRAD_TOL = 1e-3;

interface CaseMeta {
  loss_kwargs: Record<string, unknown>;
  global_step: number;
  cls_loss: number | null;
  last_layer: string | null;
}

forEachFixtureDir('train_losses.safetensors', (fixture) => {
  const cases = () => fixture().meta<{ cases: Record<string, CaseMeta> }>('vqlpips').cases;
  const strip = (prefix: string) => {
    const f = fixture();
    const m = new Map<string, Tensor>();
    for (const n of f.names) if (n.startsWith(prefix)) m.set(n.slice(prefix.length), f.tensor(n));
    return m;
  };

  // Cases come from the file's metadata (this directory's: gpu_s1, adaptive, before_disc_start).
  const names = Object.keys(cases());
  it('lists at least one case', () => {
    expect(names.length).toBeGreaterThan(0);
  });

  for (const name of names) {
    it(`case ${name}: every gen.* / disc.* term, the gradients, running stats and LeCAM EMAs`, () => {
      const f = fixture();
      const c = cases()[name]!;
      const p = `vqlpips.${name}.`;
      const lpips = new LPIPS();
      lpips.loadWeights(strip('lpips.'), { strict: true });
      const obj = new VQLPIPSWithDiscriminator(c.loss_kwargs, { perceptual: lpips });
      expect(obj.ignoredKeys).toEqual([]);
      obj.discriminator.load(strip('disc.'), { strict: true });
      expect(obj.lecam).not.toBeNull();
      obj.lecam!.loadState({
        emaReal: (f.array(`${p}in.ema_real`) as Float64Array)[0]!,
        emaFake: (f.array(`${p}in.ema_fake`) as Float64Array)[0]!,
      });
      const t = (k: string) => f.tensor(`${p}in.${k}`);

      // ---- generator pass
      const tape = new Tape();
      let reconstructions = t('reconstructions');
      let lastLayer: Tensor | null = null;
      if (c.last_layer !== null) {
        // reconstructions = conv2d(last_layer_input, last_layer_weight, last_layer_bias), 'same' padding
        lastLayer = t('last_layer_weight');
        const inp = t('last_layer_input');
        const k = lastLayer.shape[2]!;
        const pad = (reconstructions.shape[2]! - inp.shape[2]! + k - 1) / 2;
        reconstructions = runSync(conv2d(inp, lastLayer, t('last_layer_bias'), { padding: pad }), tape.observe);
        expect(relErr(reconstructions, f.array(`${p}in.reconstructions`) as Float32Array)).toBeLessThan(ACT_TOL);
      }
      const inputs = t('inputs');
      const clsLoss = f.has(`${p}in.cls_loss`) ? t('cls_loss') : null;
      expect(clsLoss === null).toBe(c.cls_loss === null);
      const gen = runSync(
        obj.generatorPass({
          inputs,
          reconstructions,
          codebookLoss: t('codebook_loss'),
          perSampleEntropy: t('per_sample_entropy'),
          codebookEntropy: t('codebook_entropy'),
          commitment: t('commitment'),
          clsLoss,
          globalStep: c.global_step,
          lastLayer,
          tape,
        }),
        tape.observe,
      );
      const grads = runSync(tape.backward(gen.loss));
      // With the adaptive weight, the reference's stored gradient of the (non-leaf) reconstructions is
      // what its retain_grad() accumulated: torch 1.13 runs that hook in the two autograd.grad calls
      // of calculate_adaptive_weight too, so it holds d total + d nll + d g_raw (w.r.t. xrec). The
      // true d total / d xrec is checked through the last layer: the fixture's own
      // grad_last_layer_weight is the conv backward of d total / d xrec, not of the stored value.
      const retainedGrad = (): Float32Array => {
        const a = grads.get(reconstructions)!.toFloat32();
        const b = runSync(tape.backward(gen.nllLoss)).get(reconstructions)!.toFloat32();
        const g = runSync(tape.backward(gen.genAdvLoss)).get(reconstructions)!.toFloat32();
        return a.map((v, i) => v + b[i]! + g[i]!);
      };
      if (lastLayer) {
        const inp = t('last_layer_input');
        const pad = (reconstructions.shape[2]! - inp.shape[2]! + lastLayer.shape[2]! - 1) / 2;
        const viaStored = runSync(
          conv2dBackward(inp, lastLayer, f.tensor(`${p}gen.grad_reconstructions`), { padding: pad }),
        )[1];
        expect(relErr(viaStored, f.array(`${p}gen.grad_last_layer_weight`) as Float32Array)).toBeGreaterThan(0.1);
      }
      const bad: string[] = [];
      const cmp = (key: string, ours: ArrayLike<number> | Tensor | number | undefined | null, tol: number) => {
        const ref = f.array(`${p}${key}`) as Float32Array | Float64Array;
        if (ours === undefined || ours === null) {
          bad.push(`${key}: missing`);
          return;
        }
        const a = typeof ours === 'number' ? [ours] : ours;
        const refMax = Array.from(ref).reduce((m, v) => Math.max(m, Math.abs(v)), 0);
        const err = relErr(a, ref); // the absolute error when the reference is 0
        if (!(err < (refMax === 0 ? 1e-7 : tol))) bad.push(`${key}: ${err}`);
      };
      const genKeys = f.names.filter((n) => n.startsWith(`${p}gen.`)).map((n) => n.slice(p.length + 4));
      const extras = new Set(['total', 'grad_reconstructions', 'grad_last_layer_weight', 'p_loss_per_sample']);
      for (const k of genKeys) {
        if (k === 'total') cmp(`gen.${k}`, gen.loss, GRAD_TOL);
        else if (k === 'grad_reconstructions')
          cmp(`gen.${k}`, lastLayer ? retainedGrad() : grads.get(reconstructions), GRAD_TOL);
        else if (k === 'grad_last_layer_weight') cmp(`gen.${k}`, lastLayer ? grads.get(lastLayer) : null, GRAD_TOL);
        else if (k === 'p_loss_per_sample') cmp(`gen.${k}`, gen.pLoss, ACT_TOL);
        else cmp(`gen.${k}`, gen.log[k], GRAD_TOL);
      }
      // the log holds exactly the reference's terms
      expect(Object.keys(gen.log).sort()).toEqual(genKeys.filter((k) => !extras.has(k)).sort());

      // ---- discriminator pass
      const dtape = new Tape();
      const disc = runSync(
        obj.discriminatorPass({ inputs, reconstructions, globalStep: c.global_step }),
        dtape.observe,
      );
      const discKeys = f.names.filter((n) => n.startsWith(`${p}disc.`)).map((n) => n.slice(p.length + 5));
      for (const k of discKeys) {
        if (k === 'd_loss') cmp(`disc.${k}`, disc.loss, GRAD_TOL);
        else if (k === 'ema_real_after') cmp(`disc.${k}`, obj.lecam!.emaReal, ACT_TOL);
        else if (k === 'ema_fake_after') cmp(`disc.${k}`, obj.lecam!.emaFake, ACT_TOL);
        else cmp(`disc.${k}`, disc.log[k], GRAD_TOL);
      }
      expect(Object.keys(disc.log).sort()).toEqual(
        discKeys.filter((k) => !['d_loss', 'ema_real_after', 'ema_fake_after'].includes(k)).sort(),
      );
      const gradKeys = f.names.filter((n) => n.startsWith(`${p}disc_grad.`)).map((n) => n.slice(p.length + 10));
      if (gradKeys.length) {
        expect(gradKeys.sort()).toEqual([...obj.discriminator.paramNames()].sort());
        const dg = runSync(dtape.backward(disc.loss));
        for (const k of gradKeys) cmp(`disc_grad.${k}`, dg.get(obj.discriminator.store.get(k)), GRAD_TOL);
        // the images are detached in the discriminator pass
        expect(dg.get(inputs)).toBeUndefined();
        expect(dg.get(reconstructions)).toBeUndefined();
      }

      // ---- BatchNorm stats after the three training-mode calls
      const sd = obj.discriminator.stateDict();
      const runKeys = f.names.filter((n) => n.startsWith(`${p}running.`)).map((n) => n.slice(p.length + 8));
      expect(runKeys.length).toBe(obj.discriminator.bufferNames().length);
      for (const k of runKeys) {
        if (k.endsWith('num_batches_tracked'))
          expect(sd.get(k)!.toArray()[0], k).toBe((f.array(`${p}running.${k}`) as BigInt64Array)[0]);
        else cmp(`running.${k}`, sd.get(k), ACT_TOL);
      }
      expect(bad).toEqual([]);
    });
  }
});

// ------------------------------------------------------------------ Tape.backward({ wrt })

describe('Tape.backward pruned to wrt tensors', () => {
  it('gives the same gradient as the full backward while running only the ops that reach wrt', () => {
    const rng = new Rng();
    const x = rng.tensor([2, 3, 8, 8]);
    const w1 = rng.tensor([4, 3, 3, 3], 0.3);
    const w2 = rng.tensor([2, 4, 3, 3], 0.3);
    const tape = new Tape();
    function* model(): Program<Tensor> {
      const h = yield* leakyRelu(yield* conv2d(x, w1, null, { padding: 1 }), { slope: 0.2 });
      const y = yield* conv2d(h, w2, null, { padding: 1 });
      return yield* mean(yield* mul(y, y));
    }
    const loss = runSync(model(), tape.observe);
    const full = runSync(tape.backward(loss));
    const count = (p: Program<Map<Tensor, Tensor>>) => {
      const ops: string[] = [];
      const g = runSync(p, (req: OpRequest) => void ops.push(req.op));
      return { g, ops };
    };
    const late = count(tape.backward(loss, null, { wrt: [w2] }));
    expect(relErr(late.g.get(w2)!, full.get(w2)!)).toBe(0);
    expect(late.g.get(w1)).toBeUndefined();
    expect(late.g.get(x)).toBeUndefined();
    const all = count(tape.backward(loss));
    expect(late.ops.length).toBeLessThan(all.ops.length);
    expect(late.ops).not.toContain('leaky_relu_backward');
    const early = count(tape.backward(loss, null, { wrt: [w1] }));
    expect(relErr(early.g.get(w1)!, full.get(w1)!)).toBe(0);
    expect(() => runSync(tape.backward(loss, null, { wrt: [3 as unknown as Tensor] }))).toThrow(TypeError);
  });
});

// ------------------------------------------------------------------ configuration

describe('loss_kwargs', () => {
  it('fills the reference defaults, accepts camelCase, lists unknown keys, rejects bad values', () => {
    const { config, ignored } = resolveLossConfig({ disc_start: 5, lecamLossWeight: 0.1, foo: 1, use_diff_aug: false });
    expect(config).toMatchObject({
      discStart: 5,
      discLoss: 'hinge',
      discDim: 64,
      discNumLayers: 3,
      discInChannels: 3,
      discFactor: 1,
      discWeight: 1,
      genAdvLoss: 'non_saturate',
      perceptualWeight: 1,
      clsLossWeight: 0,
      commitWeight: 0.25,
      codebookWeight: 1,
      codebookEnlargeRatio: 3,
      codebookEnlargeSteps: 2000,
      genLossWeight: null,
      lecamLossWeight: 0.1,
    });
    expect(ignored).toEqual(['foo']);
    expect(() => resolveLossConfig({})).toThrow(/disc_start/);
    expect(() => resolveLossConfig({ disc_start: 0, disc_loss: 'wgan' })).toThrow(/disc_loss/);
    expect(() => resolveLossConfig({ disc_start: 0, disc_conditional: true })).toThrow(/disc_conditional/);
    expect(() => resolveLossConfig({ disc_start: 0, discStart: 1 })).toThrow(/once/);
    const obj = new VQLPIPSWithDiscriminator({
      disc_start: 10,
      disc_dim: 4,
      disc_num_layers: 2,
      codebook_enlarge_ratio: 3,
      codebook_enlarge_steps: 100,
    });
    expect(obj.discFactor(9)).toBe(0);
    expect(obj.discFactor(10)).toBe(1);
    expect(obj.codebookScale(25)).toBeCloseTo(2.25, 12);
    expect(obj.codebookScale(500)).toBe(0);
    expect(obj.lecam).toBeNull();
    expect(obj.discriminator.store.shapeMap()['main.5.weight']).toEqual([16, 8, 4, 4]);
  });
});

// ------------------------------------------------------------------ float64 finite differences

/** Per-sample mean squared difference [B, 1, 1, 1]: a smooth stand-in for LPIPS. */
const msePerceptual: PerceptualLoss = {
  *forward(a: Tensor, b: Tensor): Program<Tensor> {
    const d = yield* sub(a, b);
    return yield* mean(yield* mul(d, d), { dims: [1, 2, 3], keepdim: true });
  },
};

interface Stage64 {
  w: Float64Array;
  ws: number[];
  b: Float64Array | null;
  stride: number;
  bn: { w: Float64Array; b: Float64Array } | null;
  act: boolean;
}

function stages64(d: NLayerDiscriminator): Stage64[] {
  const sd = d.stateDict();
  const g = (n: string) => Float64Array.from(sd.get(n)!.toFloat32());
  const convs = d
    .paramNames()
    .filter((n) => n.endsWith('.weight') && sd.get(n)!.ndim === 4)
    .map((n) => n.slice(0, -7));
  return convs.map((c, k) => {
    const bn = `main.${Number(c.split('.')[1]) + 1}`;
    const hasBn = d.batchNormNames().includes(bn);
    return {
      w: g(`${c}.weight`),
      ws: sd.get(`${c}.weight`)!.shape,
      b: sd.has(`${c}.bias`) ? g(`${c}.bias`) : null,
      stride: k < d.nLayers ? 2 : 1,
      bn: hasBn ? { w: g(`${bn}.weight`), b: g(`${bn}.bias`) } : null,
      act: k < convs.length - 1,
    };
  });
}

function conv64(
  x: ArrayLike<number>,
  xs: number[],
  w: ArrayLike<number>,
  ws: number[],
  b: ArrayLike<number> | null,
  stride: number,
  pad: number,
) {
  const [B, C, H, W] = xs as [number, number, number, number];
  const [O, , K] = ws as [number, number, number];
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
                if (wj >= 0 && wj < W) s += x[((n * C + c) * H + hi) * W + wj]! * w[((o * C + c) * K + ki) * K + kj]!;
              }
            }
          y[((n * O + o) * Ho + i) * Wo + j] = s;
        }
  return { y, shape: [B, O, Ho, Wo] };
}

/** Train-mode discriminator in float64: logits and the signs of every LeakyReLU input. */
function disc64(st: Stage64[], x: ArrayLike<number>, xs: number[]): { logits: Float64Array; kinks: number[] } {
  let h: ArrayLike<number> = x;
  let shape = xs;
  const kinks: number[] = [];
  for (const s of st) {
    const c = conv64(h, shape, s.w, s.ws, s.b, s.stride, 1);
    let y = c.y;
    shape = c.shape;
    if (s.bn) {
      const [B, C, H, W] = shape as [number, number, number, number];
      const S = H * W;
      for (let ch = 0; ch < C; ++ch) {
        let m = 0;
        for (let b = 0; b < B; ++b) for (let i = 0; i < S; ++i) m += y[(b * C + ch) * S + i]!;
        m /= B * S;
        let q = 0;
        for (let b = 0; b < B; ++b) for (let i = 0; i < S; ++i) q += (y[(b * C + ch) * S + i]! - m) ** 2;
        const is = 1 / Math.sqrt(q / (B * S) + 1e-5);
        for (let b = 0; b < B; ++b)
          for (let i = 0; i < S; ++i) {
            const k = (b * C + ch) * S + i;
            y[k] = (y[k]! - m) * is * s.bn.w[ch]! + s.bn.b[ch]!;
          }
      }
    }
    if (s.act) {
      for (const v of y) kinks.push(Math.sign(v));
      y = y.map((v) => (v > 0 ? v : 0.2 * v));
    }
    h = y;
  }
  return { logits: Float64Array.from(h), kinks };
}

describe('generator objective vs float64 finite differences (fresh random inputs)', () => {
  for (const variant of ['constant', 'adaptive'] as const) {
    it(`total and d_weight (${variant} d_weight): gradients w.r.t. the last layer, the reconstructions and every loss input`, () => {
      const rng = new Rng();
      const info = seedInfo(rng.seed);
      const B = 2,
        C = 3,
        R = 16,
        Cin = 4;
      const kwargs = {
        disc_start: 0,
        disc_dim: 4,
        disc_num_layers: 2,
        disc_weight: 0.7,
        perceptual_weight: 0.6,
        cls_loss_weight: 0.5,
        codebook_weight: 0.1,
        commit_weight: 0.25,
        codebook_enlarge_ratio: 2,
        codebook_enlarge_steps: 1000,
        lecam_loss_weight: 0.01,
        gen_loss_weight: variant === 'constant' ? 0.3 : null,
        gen_adv_loss: variant === 'constant' ? 'non_saturate' : 'hinge',
      };
      const step = 250;
      const obj = new VQLPIPSWithDiscriminator(kwargs, {
        perceptual: msePerceptual,
        discriminatorSeed: rng.int(1 << 20),
      });
      // weights with a visible adversarial term
      const d = obj.discriminator;
      const m = new Map<string, Tensor>();
      for (const n of d.paramNames()) {
        const t = d.store.get(n);
        m.set(
          n,
          t.ndim === 4
            ? rng.tensor(t.shape, 0.4 / Math.sqrt(t.shape[1]! * 16))
            : Tensor.from(
                Float32Array.from(t.toFloat32(), (v) => v + 0.2 * rng.normal()),
                t.shape,
              ),
        );
      }
      d.load(m);
      const st = stages64(d);
      const inputs = rng.tensor([B, C, R, R]);
      const lin = rng.tensor([B, Cin, R, R]);
      const lw = rng.tensor([C, Cin, 3, 3], 0.2);
      const lb = rng.tensor([C], 0.1);
      const inArr = inputs.toFloat32();
      const linArr = lin.toFloat32();
      const scal = (v: number) => Tensor.from(new Float32Array([v]), []);
      const [cbl, pse, cbe, com, cls] = [
        scal(-0.4 + 0.1 * rng.normal()),
        scal(0.3),
        scal(8.9),
        scal(0.15 + 0.05 * rng.next()),
        scal(1.2 + rng.next()),
      ];

      const tape = new Tape();
      const recon = runSync(conv2d(lin, lw, lb, { padding: 1 }), tape.observe);
      const gen = runSync(
        obj.generatorPass({
          inputs,
          reconstructions: recon,
          codebookLoss: cbl,
          perSampleEntropy: pse,
          codebookEntropy: cbe,
          commitment: com,
          clsLoss: cls,
          globalStep: step,
          lastLayer: lw,
          tape,
        }),
        tape.observe,
      );
      const grads = runSync(tape.backward(gen.loss));

      // float64 pieces as functions of the last layer weight (reconstructions = conv(lin, w) + b)
      const recon64 = (w: ArrayLike<number>) =>
        conv64(linArr, [B, Cin, R, R], w, [C, Cin, 3, 3], lb.toFloat32(), 1, 1).y;
      const nll64 = (r: ArrayLike<number>) => {
        let l1 = 0;
        let p = 0;
        for (let i = 0; i < r.length; ++i) {
          l1 += Math.abs(inArr[i]! - r[i]!);
          p += (inArr[i]! - r[i]!) ** 2;
        }
        return l1 / r.length + kwargs.perceptual_weight * (p / r.length);
      };
      const g64 = (r: ArrayLike<number>) => {
        const o = disc64(st, r, [B, C, R, R]);
        const n = o.logits.length / B;
        const v =
          kwargs.gen_adv_loss === 'hinge'
            ? -o.logits.reduce((s, x) => s + x, 0) / o.logits.length
            : Array.from({ length: B }, (_, b) => {
                const mb = o.logits.slice(b * n, (b + 1) * n).reduce((s, x) => s + x, 0) / n;
                return Math.log1p(Math.exp(-mb));
              }).reduce((s, x) => s + x, 0) / B;
        return { v, kinks: [...o.kinks, ...Array.from(r, (x, i) => Math.sign(x - inArr[i]!))] };
      };
      const enlarge = 1 + kwargs.codebook_enlarge_ratio * Math.max(0, 1 - step / kwargs.codebook_enlarge_steps);
      const rest =
        kwargs.codebook_weight * enlarge * cbl.item() +
        kwargs.commit_weight * com.item() +
        kwargs.cls_loss_weight * cls.item();
      const total64 = (r: ArrayLike<number>, dw: number) => {
        const g = g64(r);
        return { v: nll64(r) + dw * g.v + rest, kinks: g.kinks };
      };

      // d_weight: float64 gradients of nll and g w.r.t. the last layer weight, by central differences
      const lwArr = lw.toFloat32();
      if (variant === 'adaptive') {
        // every entry enters the norms, so no entry may be skipped: a float64 step of 1e-7 (rounding
        // ~1e-9 relative) crosses an |x - xrec| or hinge kink 100x less often than 1e-5
        const h = 1e-7;
        let sn = 0,
          sg = 0;
        for (let i = 0; i < lwArr.length; ++i) {
          const wp = Float64Array.from(lwArr);
          wp[i]! += h;
          const wm = Float64Array.from(lwArr);
          wm[i]! -= h;
          const rp = recon64(wp),
            rm = recon64(wm);
          const gp = g64(rp),
            gm = g64(rm);
          expect(
            gp.kinks.every((s, k) => s === gm.kinks[k] && s !== 0),
            `kink crossed at last-layer entry ${i}, ${info}`,
          ).toBe(true);
          sn += ((nll64(rp) - nll64(rm)) / (2 * h)) ** 2;
          sg += ((gp.v - gm.v) / (2 * h)) ** 2;
        }
        const dw64 = Math.min(Math.max(Math.sqrt(sn) / (Math.sqrt(sg) + 1e-4), 0), 1e4) * kwargs.disc_weight;
        expect(Math.abs(gen.dWeight - dw64) / dw64, `d_weight ${gen.dWeight} vs ${dw64}, ${info}`).toBeLessThan(
          GRAD_TOL,
        );
      } else expect(gen.dWeight).toBe(Math.fround(0.3));
      const dw = gen.dWeight;
      const r0 = recon64(lwArr);
      expect(Math.abs(gen.loss.item() - total64(r0, dw).v) / Math.abs(total64(r0, dw).v), info).toBeLessThan(GRAD_TOL);
      expect(Math.abs(gen.log.g_loss! - dw * g64(r0).v) / Math.abs(dw * g64(r0).v), info).toBeLessThan(GRAD_TOL);

      // gradient w.r.t. reconstructions and the last layer weight (d_weight held constant, as detached)
      const bad: string[] = [];
      const check = (
        label: string,
        data: Float32Array,
        evalAt: (v: Float64Array) => { v: number; kinks: number[] },
        ours: Float32Array,
      ) => {
        const scaleG = ours.reduce((mx, v) => Math.max(mx, Math.abs(v)), 0);
        const h = 1e-5;
        let done = 0;
        for (let tries = 0; tries < 60 && done < 10; ++tries) {
          const i = rng.int(data.length);
          const xp = Float64Array.from(data);
          xp[i]! += h;
          const xm = Float64Array.from(data);
          xm[i]! -= h;
          const p = evalAt(xp),
            q = evalAt(xm);
          if (p.kinks.some((s, k) => s !== q.kinks[k] || s === 0)) continue;
          done++;
          const num = (p.v - q.v) / (2 * h);
          const rel = Math.abs(num - ours[i]!) / Math.max(Math.abs(num), Math.abs(ours[i]!), 1e-2 * scaleG);
          if (!(rel < 2e-3)) bad.push(`${label}[${i}]: numeric ${num}, ours ${ours[i]} (rel ${rel.toExponential(2)})`);
        }
        if (done < 10) bad.push(`${label}: only ${done} coordinates away from kinks`);
      };
      check('reconstructions', Float32Array.from(r0), (v) => total64(v, dw), grads.get(recon)!.toFloat32());
      check('last_layer_weight', lwArr, (v) => total64(recon64(v), dw), grads.get(lw)!.toFloat32());
      expect(bad, info).toEqual([]);
      // the scalar loss inputs enter linearly
      expect(grads.get(cbl)!.item()).toBeCloseTo(kwargs.codebook_weight * enlarge, 6);
      expect(grads.get(com)!.item()).toBeCloseTo(kwargs.commit_weight, 6);
      expect(grads.get(cls)!.item()).toBeCloseTo(kwargs.cls_loss_weight, 6);
      expect(grads.get(inputs)).toBeDefined();
    });
  }

  it('before disc_start: no adversarial gradient, d_weight 0, but the discriminator still updates its stats; discriminator pass scaled by 0', () => {
    const rng = new Rng();
    const obj = new VQLPIPSWithDiscriminator({
      disc_start: 100,
      disc_dim: 4,
      disc_num_layers: 2,
      gen_loss_weight: null,
      lecam_loss_weight: 0.01,
      perceptual_weight: 0,
    });
    const x = rng.tensor([2, 3, 16, 16]);
    const r = rng.tensor([2, 3, 16, 16]);
    const s = Tensor.from(new Float32Array([0.5]), []);
    const tape = new Tape();
    const gen = runSync(
      obj.generatorPass({
        inputs: x,
        reconstructions: r,
        codebookLoss: s,
        perSampleEntropy: s,
        codebookEntropy: s,
        commitment: s,
        globalStep: 10,
      }),
      tape.observe,
    );
    expect(gen.log).toMatchObject({ d_weight: 0, g_loss: 0, disc_factor: 0, perceptual_loss: 0 });
    expect(gen.log.entropy_loss).toBeUndefined();
    expect(obj.discriminator.runningStats('main.3').numBatchesTracked).toBe(1);
    const g = runSync(tape.backward(gen.loss)).get(r)!.toFloat32();
    // only the L1 term: +-1/N everywhere
    expect(g.every((v) => Math.abs(Math.abs(v) - 1 / g.length) < 1e-9)).toBe(true);
    const dtape = new Tape();
    const e0 = obj.lecam!.emaReal;
    const disc = runSync(obj.discriminatorPass({ inputs: x, reconstructions: r, globalStep: 10 }), dtape.observe);
    expect(disc.loss.item()).toBe(0);
    expect(disc.log.disc_loss).toBe(0);
    expect(obj.lecam!.emaReal).not.toBe(e0);
    expect(obj.discriminator.runningStats('main.3').numBatchesTracked).toBe(3);
    const dg = runSync(dtape.backward(disc.loss));
    expect(
      dg
        .get(obj.discriminator.store.get('main.0.weight'))!
        .toFloat32()
        .every((v) => v === 0),
    ).toBe(true);
  });

  it("validation mode: eval-mode discriminator (running stats unchanged) and the reference's short log", () => {
    const rng = new Rng();
    const obj = new VQLPIPSWithDiscriminator(
      {
        disc_start: 0,
        disc_dim: 4,
        disc_num_layers: 2,
        gen_loss_weight: 0.1,
        perceptual_weight: 0.5,
        cls_loss_weight: 1,
      },
      { perceptual: msePerceptual },
    );
    const x = rng.tensor([2, 3, 16, 16]);
    const r = rng.tensor([2, 3, 16, 16]);
    const s = Tensor.from(new Float32Array([0.5]), []);
    const before = obj.discriminator.stateDict();
    const gen = runSync(
      obj.generatorPass({
        inputs: x,
        reconstructions: r,
        codebookLoss: s,
        perSampleEntropy: s,
        codebookEntropy: s,
        commitment: s,
        clsLoss: s,
        globalStep: 3,
        training: false,
      }),
    );
    expect(Object.keys(gen.log).sort()).toEqual(['cls_loss', 'g_loss', 'perceptual_loss', 'reconstruct_loss']);
    const logits = runSync(obj.discriminator.forward(r, { training: false })).toFloat32();
    const n = logits.length / 2;
    const nsg =
      [0, 1]
        .map((b) => Math.log1p(Math.exp(-logits.slice(b * n, (b + 1) * n).reduce((a, v) => a + v, 0) / n)))
        .reduce((a, v) => a + v, 0) / 2;
    expect(Math.abs(gen.log.g_loss! - nsg) / nsg).toBeLessThan(1e-5);
    for (const [k, t] of obj.discriminator.stateDict())
      expect(Array.from(t.toArray(), Number), k).toEqual(Array.from(before.get(k)!.toArray(), Number));
  });

  it('argument checks', () => {
    const obj = new VQLPIPSWithDiscriminator({ disc_start: 0, disc_dim: 4, disc_num_layers: 2, gen_loss_weight: null });
    const x = Tensor.zeros([2, 3, 16, 16]);
    const s = Tensor.from(new Float32Array([0.5]), []);
    const base = {
      inputs: x,
      reconstructions: x,
      codebookLoss: s,
      perSampleEntropy: s,
      codebookEntropy: s,
      commitment: s,
      globalStep: 1,
    };
    expect(() => runSync(obj.generatorPass(base))).toThrow(/lastLayer/);
    expect(() => runSync(obj.generatorPass({ ...base, lastLayer: x }))).toThrow(/tape/);
    const noAdv = new VQLPIPSWithDiscriminator({
      disc_start: 0,
      disc_dim: 4,
      disc_num_layers: 2,
      gen_loss_weight: 0.1,
    });
    expect(() => runSync(noAdv.generatorPass(base))).toThrow(/perceptual/);
    expect(() => runSync(noAdv.generatorPass({ ...base, reconstructions: Tensor.zeros([2, 3, 8, 8]) }))).toThrow(
      /reconstructions/,
    );
    expect(() => runSync(noAdv.generatorPass({ ...base, commitment: x }))).toThrow(/commitment/);
    expect(() => runSync(noAdv.discriminatorPass({ inputs: x, reconstructions: x, globalStep: Number.NaN }))).toThrow(
      /globalStep/,
    );
  });
});
