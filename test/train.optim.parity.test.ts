// Parity of the optimizers, gradient clipping, EMA and lr schedules with the reference fixtures
// (train_losses.safetensors: metadata 'optim', 'ema', 'schedules'). Every case present in the
// file is run from its metadata; nothing is specific to one fixture file.
import { expect, it } from 'vitest';
import { runSync } from '../lib/graph.js';
import { clone } from '../lib/ops/optim.js';
import type { Tensor } from '../lib/tensor.js';
import { Adam, AdamW, clipGradNorm, type ParamGroupSpec } from '../lib/train/optim.js';
import { LitEma, emaBufferName } from '../lib/train/ema.js';
import {
  applyArAnnealing,
  arLrWd,
  lambdaWarmUpCosine,
  linearWarmup,
  linearWarmupCosineDecay,
  lrDropLr,
  type ArAnnealConfig,
} from '../lib/train/schedule.js';
import { forEachFixtureDir, relErr, type FixtureFile } from './fixtures.js';

// biome-ignore lint/suspicious/noExplicitAny: fixture JSON of any shape
type Json = Record<string, any>;

/** Tolerances from the fixtures README: optimizer states and parameters are activations-like. */
const TOL_STATE = 1e-4;

/** Names under `prefix` (the part after it), in file order. */
function namesUnder(f: FixtureFile, prefix: string): string[] {
  return f.names.filter((n) => n.startsWith(prefix)).map((n) => n.slice(prefix.length));
}
function f32(f: FixtureFile, name: string): Float32Array {
  return Float32Array.from(f.array(name) as Float32Array);
}
/** A plain parameter source over fresh copies of fixture tensors. */
class Params {
  readonly m = new Map<string, Tensor>();
  get(name: string): Tensor {
    const t = this.m.get(name);
    if (!t) throw new Error(`no param ${name}`);
    return t;
  }
}
function maxNormFrom(text: string, re: RegExp): number {
  const m = re.exec(text);
  if (!m) throw new Error(`cannot read max_norm from ${JSON.stringify(text)}`);
  return Number(m[1]);
}

forEachFixtureDir('train_losses.safetensors', (fixture) => {
  // ---------------------------------------------------------------- optimizers
  it('opt.*: every Adam / AdamW case, states after each step', () => {
    const f = fixture();
    const meta = f.meta<Json>('optim');
    const names = namesUnder(f, 'opt.in.init.');
    expect(names.length).toBeGreaterThan(0);
    const tags = [
      ...new Set(f.names.filter((n) => n.startsWith('opt.') && !n.startsWith('opt.in.')).map((n) => n.split('.')[1]!)),
    ];
    expect(tags.length).toBeGreaterThan(0);
    const report: string[] = [];
    for (const tag of tags) {
      const own: Json = meta[tag];
      expect(own, `metadata for opt.${tag}`).toBeTruthy();
      const loop = own.config !== undefined;
      const baseTag: string = own.same_as ?? (loop ? 'adamw' : tag);
      const cfg: Json = { ...meta[baseTag], ...own };
      const decoupled = /adamw/i.test(baseTag);
      const params = new Params();
      for (const n of names) params.m.set(n, f.tensor(`opt.in.init.${n}`));
      let groups: ParamGroupSpec[] | string[] = names;
      if (Array.isArray(cfg.groups)) {
        groups = cfg.groups.map((g: Json) => ({
          names: g.params as string[],
          weightDecay:
            g.weight_decay > 0 && cfg.weight_decay_decay_group !== undefined
              ? cfg.weight_decay_decay_group
              : loop && g.weight_decay > 0
                ? own.config.weight_decay
                : g.weight_decay,
        }));
      }
      const lr = loop ? own.config.learning_rate : cfg.lr;
      const opts = { lr, betas: cfg.betas as [number, number], eps: cfg.eps, weightDecay: cfg.weight_decay ?? 0 };
      const opt = decoupled ? new AdamW(params, groups, opts) : new Adam(params, groups, opts);
      const annealCfg: ArAnnealConfig | undefined = loop
        ? {
            itersTrain: own.config.iters_train,
            maxEpochs: own.config.max_epochs,
            wp: own.config.wp,
            wp0: own.config.wp0,
            wpe: own.config.wpe,
            twde: own.config.twde,
            weightDecay: own.config.weight_decay,
            learningRate: own.config.learning_rate,
          }
        : undefined;
      const maxNorm = loop ? maxNormFrom(own.produced_by, /clip_grad_norm_\([^,]*,\s*([0-9.eE+-]+)\)/) : 0;
      let worst = 0;
      let worstDelta = 0;
      let t = 0;
      for (; f.has(`opt.${tag}.${t}.param.${names[0]}`); ++t) {
        const grads = new Map<string, Tensor>();
        for (const n of names) grads.set(n, f.tensor(`opt.in.grad.${t}.${n}`));
        if (annealCfg) {
          const v = applyArAnnealing(opt, t, annealCfg);
          const lrRef = f.array(`opt.${tag}.${t}.lr`) as Float64Array;
          const wdRef = f.array(`opt.${tag}.${t}.weight_decay`) as Float64Array;
          expect(opt.groups.map((g) => g.lr)).toEqual(Array.from(lrRef));
          expect(opt.groups.map((g) => g.weightDecay)).toEqual(Array.from(wdRef));
          expect(v.lr).toBe(lrRef[0]);
          const total = runSync(clipGradNorm(grads, maxNorm));
          const totalRef = (f.array(`opt.${tag}.${t}.total_norm`) as Float32Array)[0]!;
          expect(Math.abs(total - totalRef) / totalRef, `${tag} step ${t} total_norm`).toBeLessThan(1e-6);
          for (const n of names) {
            const e = relErr(grads.get(n)!.toFloat32(), f32(f, `opt.${tag}.${t}.clipped_grad.${n}`));
            expect(e, `${tag} step ${t} clipped_grad.${n}`).toBeLessThan(1e-6);
          }
        }
        const before = new Map(names.map((n) => [n, params.get(n).toFloat32()]));
        opt.stepSync(grads);
        for (const n of names) {
          const p = params.get(n).toFloat32();
          const sd = opt.stateDict().tensors;
          const pRef = f32(f, `opt.${tag}.${t}.param.${n}`);
          const checks: [string, Float32Array, Float32Array][] = [
            ['param', p, pRef],
            ['exp_avg', sd.get(`exp_avg.${n}`)!.toFloat32(), f32(f, `opt.${tag}.${t}.exp_avg.${n}`)],
            ['exp_avg_sq', sd.get(`exp_avg_sq.${n}`)!.toFloat32(), f32(f, `opt.${tag}.${t}.exp_avg_sq.${n}`)],
          ];
          for (const [what, ours, ref] of checks) {
            const e = relErr(ours, ref);
            worst = Math.max(worst, e);
            expect(e, `${tag} step ${t} ${what}.${n}`).toBeLessThan(TOL_STATE);
          }
          // The update itself (the param moves by ~lr, far below its own magnitude at small lr).
          const b = before.get(n)!;
          const d = p.map((v, i) => v - b[i]!);
          const dRef = pRef.map((v, i) => v - b[i]!);
          const ed = relErr(d, dRef);
          worstDelta = Math.max(worstDelta, ed);
          expect(ed, `${tag} step ${t} update of ${n}`).toBeLessThan(1e-3);
        }
        for (const n of names) expect(opt.stepCount(n)).toBe(t + 1);
      }
      expect(t, `steps of opt.${tag}`).toBeGreaterThan(0);
      report.push(`${tag}: ${t} steps, states ${worst.toExponential(2)}, updates ${worstDelta.toExponential(2)}`);
    }
    console.log(`optimizer parity (max rel err): ${report.join('; ')}`);
  });

  it('opt.*: a state dict taken mid-way resumes exactly', () => {
    const f = fixture();
    const meta = f.meta<Json>('optim');
    const names = namesUnder(f, 'opt.in.init.');
    const tag = 'adamw_big' in meta ? 'adamw_big' : Object.keys(meta).find((k) => Array.isArray(meta[k]?.groups))!;
    const cfg: Json = { ...meta[meta[tag].same_as ?? tag], ...meta[tag] };
    const groups = (cfg.groups as Json[]).map((g) => ({ names: g.params as string[], weightDecay: g.weight_decay }));
    const steps: number[] = [];
    for (let t = 0; f.has(`opt.in.grad.${t}.${names[0]}`); ++t) steps.push(t);
    expect(steps.length).toBeGreaterThan(1);
    const half = Math.floor(steps.length / 2);
    const make = () => {
      const p = new Params();
      for (const n of names) p.m.set(n, f.tensor(`opt.in.init.${n}`));
      return p;
    };
    const grads = (t: number) => new Map(names.map((n) => [n, f.tensor(`opt.in.grad.${t}.${n}`)]));
    const opts = { lr: cfg.lr, betas: cfg.betas as [number, number], eps: cfg.eps };
    const pa = make();
    const a = new AdamW(pa, groups, opts);
    for (const t of steps.slice(0, half)) a.stepSync(grads(t));
    a.groups[0]!.lr *= 0.5; // a scheduler's change must travel with the state dict
    const sd = a.stateDict();
    const saved = {
      tensors: new Map([...sd.tensors].map(([k, v]) => [k, runSync(clone(v))])),
      meta: JSON.parse(JSON.stringify(sd.meta)),
    };
    const pb = new Params();
    for (const n of names) pb.m.set(n, runSync(clone(pa.get(n))));
    const b = new AdamW(pb, groups, opts);
    b.loadStateDict(saved);
    for (const t of steps.slice(half)) {
      a.stepSync(grads(t));
      b.stepSync(grads(t));
    }
    for (const n of names) {
      expect(Array.from(pb.get(n).toFloat32())).toEqual(Array.from(pa.get(n).toFloat32()));
      expect(b.stepCount(n)).toBe(a.stepCount(n));
    }
  });

  // ---------------------------------------------------------------- clipping
  it('clip.*: clip_grad_norm_ total and clipped gradients', () => {
    const f = fixture();
    const meta = f.meta<Json>('optim').clip as Json;
    const maxNorm = maxNormFrom(meta.produced_by, /max_norm=([0-9.eE+-]+)/);
    expect((meta.cases as string[]).length).toBeGreaterThan(0);
    for (const c of meta.cases as string[]) {
      const names = namesUnder(f, `clip.${c}.in.`);
      const grads = new Map(names.map((n) => [n, f.tensor(`clip.${c}.in.${n}`)]));
      const total = runSync(clipGradNorm(grads, maxNorm));
      const ref = (f.array(`clip.${c}.total_norm`) as Float32Array)[0]!;
      expect(Math.abs(total - ref) / ref, `clip.${c} total`).toBeLessThan(1e-6);
      for (const n of names)
        expect(relErr(grads.get(n)!.toFloat32(), f32(f, `clip.${c}.out.${n}`)), `clip.${c}.${n}`).toBeLessThan(1e-6);
    }
  });

  // ---------------------------------------------------------------- EMA
  it('ema.*: LitEma shadows, decay and num_updates after every update (bit-exact)', () => {
    const f = fixture();
    const meta = f.meta<Json>('ema');
    const cases = Object.entries(meta.cases as Record<string, Json>);
    expect(cases.length).toBeGreaterThan(0);
    for (const [c, cfg] of cases) {
      const all = namesUnder(f, `ema.${c}.in.model.0.`);
      const buffers = new Set(namesUnder(f, `ema.${c}.shadow.0.`));
      const trainable = all.filter((n) => buffers.has(emaBufferName(n)));
      expect(trainable.length).toBeLessThan(all.length); // the frozen params are left out
      const model = (t: number) => {
        const p = new Params();
        for (const n of all) p.m.set(n, f.tensor(`ema.${c}.in.model.${t}.${n}`));
        return p;
      };
      const ema = new LitEma(model(0), trainable, { decay: cfg.decay, useNumUpdates: cfg.use_num_upates });
      const check = (t: number) => {
        const sd = ema.stateDict();
        expect([...sd.keys()].sort()).toEqual([...buffers].sort());
        for (const b of buffers) {
          const ours = sd.get(b)!;
          const ref = f.tensor(`ema.${c}.shadow.${t}.${b}`);
          expect(ours.dtype).toBe(ref.dtype);
          expect(Array.from(ours.toArray() as ArrayLike<number>), `ema.${c} update ${t} ${b}`).toEqual(
            Array.from(ref.toArray() as ArrayLike<number>),
          );
        }
      };
      check(0);
      for (let t = 1; t <= cfg.steps; ++t) {
        expect(ema.nextDecay()).toBe(cfg.effective_decay[t - 1]);
        ema.updateSync(model(t));
        check(t);
      }
    }
  });

  // ---------------------------------------------------------------- schedules
  it('sched.*: every schedule equals the reference at every step (float64; exact where the reference used the C library cos)', () => {
    const f = fixture();
    const meta = f.meta<Json>('schedules');
    const cases = Object.entries(meta);
    expect(cases.length).toBeGreaterThan(0);
    for (const [name, cfg] of cases) {
      const ref = f.array(`sched.${name}`) as Float64Array;
      const by: string = cfg.produced_by ?? '';
      let fn: (s: number) => number;
      let wdFn: ((s: number) => number) | undefined;
      if (cfg.lr_drop_epoch !== undefined) {
        fn = (s) =>
          lrDropLr(s, {
            learningRate: cfg.learning_rate,
            stepsPerEpoch: cfg.steps_per_epoch,
            lrDropEpoch: cfg.lr_drop_epoch,
            lrDropRate: cfg.lr_drop_rate,
          });
      } else if (cfg.iters_train !== undefined) {
        const ac: ArAnnealConfig = {
          itersTrain: cfg.iters_train,
          maxEpochs: cfg.max_epochs,
          wp: cfg.wp,
          wp0: cfg.wp0,
          wpe: cfg.wpe,
          twde: cfg.twde,
          weightDecay: cfg.weight_decay,
          learningRate: cfg.learning_rate,
        };
        fn = (s) => arLrWd(s, ac).lr;
        wdFn = (s) => arLrWd(s, ac).weightDecay;
      } else if (cfg.warm_up_steps !== undefined) {
        fn = (s) =>
          lambdaWarmUpCosine(s, {
            warmUpSteps: cfg.warm_up_steps,
            lrMin: cfg.lr_min,
            lrMax: cfg.lr_max,
            lrStart: cfg.lr_start,
            maxDecaySteps: cfg.max_decay_steps,
          });
      } else if (/CosineDecay/.test(by)) {
        fn = (s) => cfg.learning_rate * linearWarmupCosineDecay(s, cfg.warmup_steps, cfg.max_steps, cfg.multipler_min);
      } else if (/LinearWarmup\(/.test(by)) {
        fn = (s) => cfg.learning_rate * linearWarmup(s, cfg.warmup_steps);
      } else {
        throw new Error(`schedule ${name}: unknown kind (${by})`);
      }
      const ours = Array.from(ref, (_, s) => fn(s));
      if (/LambdaWarmUpCosineScheduler/.test(by)) {
        // This one calls numpy's cos, whose float64 implementation depends on the numpy build and
        // the CPU (SIMD versions are not the C library's): allow 2 ulp of the cosine there (its
        // error is scaled by (lr_max - lr_min) / 2), exact elsewhere.
        const tol =
          2 * Number.EPSILON * 0.5 * Math.abs(cfg.lr_max - cfg.lr_min) +
          Number.EPSILON * Math.max(...Array.from(ref, Math.abs));
        const diffs = ours.map((v, i) => Math.abs(v - ref[i]!));
        const exact = diffs.filter((d) => d === 0).length;
        console.log(
          `sched.${name}: ${exact}/${ref.length} exact, max |diff| ${Math.max(...diffs).toExponential(2)} (tolerance ${tol.toExponential(2)}, numpy cos)`,
        );
        expect(Math.max(...diffs), `sched.${name}`).toBeLessThanOrEqual(tol);
      } else {
        expect(ours, `sched.${name}`).toEqual(Array.from(ref));
      }
      if (wdFn) {
        const wdRef = f.array(`sched.${name}_wd`) as Float64Array;
        expect(
          Array.from(wdRef, (_, s) => wdFn!(s)),
          `sched.${name}_wd`,
        ).toEqual(Array.from(wdRef));
      }
    }
  });
});
