/**
 * Optimizers for training: Adam and AdamW with torch 1.13's single-tensor arithmetic (one fused
 * native op per parameter), parameter groups with mutable lr / weight decay (schedulers set them),
 * exact-resume state dicts, the AR model's two weight-decay groups, torch's `clip_grad_norm_`, and
 * gradient accumulation over micro-batches.
 *
 * ```ts
 * const opt = new AdamW(store, arParamGroups(names, store.shapeMap(), 0.05), { lr: 3e-4, betas: [0.9, 0.95] });
 * const total = yield* clipGradNorm(grads, 1.0);   // inside a program (or runSync(clipGradNorm(...)))
 * yield* opt.step(grads);                           // grads: name -> gradient
 * ```
 *
 * Parameters are read from the source by name at every step (`source.get(name)`) and updated in
 * place, so a `ParamStore` works as it is. Parameters without a gradient in the map are skipped
 * (no state is created and their step count does not advance), as in torch.
 */
import { MergeVQError, rangeError, typeError, checkKeys, optionKeys } from '../errors.js';
import { release, runSync, type Program } from '../graph.js';
import { adamStep, clone, l2Norms, scaleInplace } from '../ops/optim.js';
import { add, scale } from '../ops/tensor.js';
import { Tensor } from '../tensor.js';

/** Where an optimizer finds the parameters it updates (a `ParamStore` fits). */
export interface ParamSource {
  get(name: string): Tensor;
}

/** A parameter group as given to the constructor; unset fields take the optimizer's options. */
export interface ParamGroupSpec {
  names: readonly string[];
  lr?: number;
  weightDecay?: number;
}
const PARAM_GROUP_KEYS = optionKeys<ParamGroupSpec>()(['names', 'lr', 'weightDecay']);

/** A live parameter group: `lr` and `weightDecay` may be changed between steps. */
export interface ParamGroup {
  readonly names: readonly string[];
  lr: number;
  weightDecay: number;
}

/** Options of {@link Adam} / {@link AdamW}. */
export interface AdamOptions {
  /** Default learning rate of the groups. */
  lr: number;
  /** (beta1, beta2); default [0.9, 0.999] as torch. */
  betas?: readonly [number, number];
  /** Default 1e-8. */
  eps?: number;
  /** Default weight decay of the groups: 0 for Adam, 0.01 for AdamW (torch's defaults). */
  weightDecay?: number;
}
const ADAM_KEYS = optionKeys<AdamOptions>()(['lr', 'betas', 'eps', 'weightDecay']);

/** The JSON-safe part of an optimizer state dict. */
export interface AdamStateMeta {
  kind: 'adam' | 'adamw';
  betas: [number, number];
  eps: number;
  groups: { names: string[]; lr: number; weightDecay: number }[];
  /** Completed steps per parameter (parameters never stepped are absent). */
  steps: Record<string, number>;
}

/** An optimizer's state: moment tensors by `exp_avg.<name>` / `exp_avg_sq.<name>`, plus meta. */
export interface AdamStateDict {
  tensors: Map<string, Tensor>;
  meta: AdamStateMeta;
}

interface ParamState {
  expAvg: Tensor;
  expAvgSq: Tensor;
  step: number;
}

function finiteNonNeg(name: string, v: unknown): number {
  if (typeof v !== 'number' || Number.isNaN(v)) typeError(name, 'a number', v);
  if (!Number.isFinite(v) || v < 0) rangeError(name, 'a finite number >= 0', v);
  return v;
}
function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((s, i) => s === b[i]);
}
const shapeStr = (s: readonly number[]) => `[${s.join(', ')}]`;

/**
 * Adam (`decoupled` false: weight decay added to the gradient, L2, torch.optim.Adam) or AdamW
 * (`decoupled` true: param *= 1 - lr * weightDecay before the update, torch.optim.AdamW), torch
 * 1.13 single-tensor semantics, amsgrad off. Use the {@link AdamW} subclass for the latter.
 */
export class Adam {
  /** The parameter groups; set `lr` / `weightDecay` on them between steps (schedulers). */
  readonly groups: ParamGroup[];
  readonly betas: [number, number];
  readonly eps: number;
  /** True for AdamW. */
  readonly decoupled: boolean;
  private readonly source: ParamSource;
  private readonly state = new Map<string, ParamState>();
  private readonly groupOf = new Map<string, ParamGroup>();

  /**
   * @param source where parameters are read by name at every step (updated in place).
   * @param groups parameter groups, or a plain list of names (one group with the options' lr and
   *   weight decay). A name may appear in one group only.
   */
  constructor(
    source: ParamSource,
    groups: readonly ParamGroupSpec[] | readonly string[],
    opts: AdamOptions,
    decoupled = false,
  ) {
    if (!source || typeof (source as ParamSource).get !== 'function')
      typeError('source', 'an object with get(name): Tensor', source);
    if (!Array.isArray(groups)) typeError('groups', 'an array of parameter groups or of names', groups);
    if (opts === null || typeof opts !== 'object') typeError('opts', 'an options object', opts);
    const cls = decoupled ? 'AdamW' : 'Adam';
    checkKeys(`${cls} options`, opts, ADAM_KEYS);
    this.source = source;
    this.decoupled = decoupled;
    const lr = finiteNonNeg('opts.lr', opts.lr);
    const betas = opts.betas ?? [0.9, 0.999];
    if (!Array.isArray(betas) || betas.length !== 2) typeError('opts.betas', 'a pair [beta1, beta2]', betas);
    betas.forEach((b, i) => {
      if (typeof b !== 'number' || !(b >= 0 && b < 1)) rangeError(`opts.betas[${i}]`, 'a number in [0, 1)', b);
    });
    this.betas = [betas[0], betas[1]];
    this.eps = finiteNonNeg('opts.eps', opts.eps ?? 1e-8);
    const wd = finiteNonNeg('opts.weightDecay', opts.weightDecay ?? (decoupled ? 1e-2 : 0));
    const specs: readonly ParamGroupSpec[] = (groups as readonly unknown[]).every((g) => typeof g === 'string')
      ? [{ names: groups as readonly string[] }]
      : (groups as readonly ParamGroupSpec[]);
    this.groups = specs.map((g, gi) => {
      if (g === null || typeof g !== 'object' || !Array.isArray(g.names))
        typeError(`groups[${gi}]`, 'a group { names: string[] }', g);
      checkKeys(`${cls} groups[${gi}]`, g, PARAM_GROUP_KEYS);
      const group: ParamGroup = {
        names: [...g.names],
        lr: g.lr === undefined ? lr : finiteNonNeg(`groups[${gi}].lr`, g.lr),
        weightDecay: g.weightDecay === undefined ? wd : finiteNonNeg(`groups[${gi}].weightDecay`, g.weightDecay),
      };
      for (const n of group.names) {
        if (typeof n !== 'string') typeError(`groups[${gi}].names`, 'an array of strings', n);
        if (this.groupOf.has(n)) throw new RangeError(`groups: parameter '${n}' appears in more than one group`);
        this.groupOf.set(n, group);
      }
      return group;
    });
  }

  /** Every parameter name the optimizer manages, group by group. */
  names(): string[] {
    return this.groups.flatMap((g) => g.names);
  }

  /** Completed steps of one parameter (0 before its first update). */
  stepCount(name: string): number {
    return this.state.get(name)?.step ?? 0;
  }

  /**
   * One optimizer step over every parameter that has a gradient in `grads` (names the optimizer
   * does not manage are ignored). Everything is checked before the first update: gradient shapes
   * and dtypes, dense float32 parameters, finite non-negative lr and weight decay per group.
   */
  *step(grads: ReadonlyMap<string, Tensor>): Program<void> {
    if (!(grads instanceof Map)) typeError('grads', 'a Map from parameter name to gradient', grads);
    const work: { name: string; p: Tensor; g: Tensor; group: ParamGroup }[] = [];
    this.groups.forEach((group, gi) => {
      finiteNonNeg(`groups[${gi}].lr`, group.lr);
      finiteNonNeg(`groups[${gi}].weightDecay`, group.weightDecay);
      for (const name of group.names) {
        const g = grads.get(name);
        if (g === undefined || g === null) continue;
        if (!(g instanceof Tensor)) typeError(`grads.get('${name}')`, 'a Tensor', g);
        const p = this.source.get(name);
        if (!(p instanceof Tensor)) typeError(`source.get('${name}')`, 'a Tensor', p);
        if (p.dtype !== 'float32' || !p.native.isContiguous)
          typeError(`parameter '${name}'`, 'a dense float32 Tensor', p.toString());
        if (g.dtype !== 'float32') typeError(`gradient of '${name}'`, 'a float32 Tensor', g.toString());
        if (!sameShape(g.shape, p.shape))
          throw new MergeVQError(
            `gradient of '${name}' has shape ${shapeStr(g.shape)}, the parameter ${shapeStr(p.shape)}`,
            'ERR_SHAPE_MISMATCH',
          );
        const st = this.state.get(name);
        if (st && !sameShape(st.expAvg.shape, p.shape))
          throw new MergeVQError(
            `optimizer state of '${name}' has shape ${shapeStr(st.expAvg.shape)}, the parameter ${shapeStr(p.shape)}`,
            'ERR_SHAPE_MISMATCH',
          );
        work.push({ name, p, g, group });
      }
    });
    for (const { name, p, g, group } of work) {
      let st = this.state.get(name);
      if (!st) {
        st = { expAvg: Tensor.zeros(p.shape), expAvgSq: Tensor.zeros(p.shape), step: 0 };
        this.state.set(name, st);
      }
      yield* adamStep(p, g, st.expAvg, st.expAvgSq, {
        lr: group.lr,
        beta1: this.betas[0],
        beta2: this.betas[1],
        eps: this.eps,
        weightDecay: group.weightDecay,
        decoupled: this.decoupled,
        step: st.step + 1,
      });
      st.step += 1;
    }
  }

  /** {@link step}, run synchronously. */
  stepSync(grads: ReadonlyMap<string, Tensor>): void {
    runSync(this.step(grads));
  }

  /**
   * The optimizer state: `exp_avg.<name>` and `exp_avg_sq.<name>` for every parameter stepped so
   * far (the live tensors, updated in place by later steps: save or clone them before stepping
   * again), and the hyper-parameters, groups and step counts as JSON-safe `meta`.
   */
  stateDict(): AdamStateDict {
    const tensors = new Map<string, Tensor>();
    const steps: Record<string, number> = {};
    for (const [name, st] of this.state) {
      tensors.set(`exp_avg.${name}`, st.expAvg);
      tensors.set(`exp_avg_sq.${name}`, st.expAvgSq);
      steps[name] = st.step;
    }
    return {
      tensors,
      meta: {
        kind: this.decoupled ? 'adamw' : 'adam',
        betas: [...this.betas],
        eps: this.eps,
        groups: this.groups.map((g) => ({ names: [...g.names], lr: g.lr, weightDecay: g.weightDecay })),
        steps,
      },
    };
  }

  /**
   * Restores a state dict from {@link stateDict} (copies its tensors), so that later steps equal
   * those of the optimizer that saved it. The groups must name the same parameters in the same
   * order; their lr and weight decay are restored. Validated completely before anything changes.
   */
  loadStateDict(sd: AdamStateDict): void {
    if (sd === null || typeof sd !== 'object' || !(sd.tensors instanceof Map) || typeof sd.meta !== 'object')
      typeError('sd', 'a state dict { tensors: Map, meta }', sd);
    const meta = sd.meta;
    const kind = this.decoupled ? 'adamw' : 'adam';
    if (meta.kind !== kind)
      throw new RangeError(`loadStateDict: the state dict is for ${String(meta.kind)}, this optimizer is ${kind}`);
    if (!Array.isArray(meta.groups) || meta.groups.length !== this.groups.length)
      throw new RangeError(
        `loadStateDict: the state dict has ${meta.groups?.length} groups, this optimizer ${this.groups.length}`,
      );
    meta.groups.forEach((g, gi) => {
      const mine = this.groups[gi]!;
      if (
        !Array.isArray(g.names) ||
        g.names.length !== mine.names.length ||
        g.names.some((n, i) => n !== mine.names[i])
      )
        throw new RangeError(`loadStateDict: group ${gi} names other parameters than this optimizer's group ${gi}`);
      finiteNonNeg(`meta.groups[${gi}].lr`, g.lr);
      finiteNonNeg(`meta.groups[${gi}].weightDecay`, g.weightDecay);
    });
    if (
      !Array.isArray(meta.betas) ||
      meta.betas[0] !== this.betas[0] ||
      meta.betas[1] !== this.betas[1] ||
      meta.eps !== this.eps
    )
      throw new RangeError(
        `loadStateDict: betas/eps ${JSON.stringify(meta.betas)}/${meta.eps} differ from this optimizer's ${JSON.stringify(this.betas)}/${this.eps}`,
      );
    const staged = new Map<string, { m: Tensor; v: Tensor; step: number }>();
    for (const [name, step] of Object.entries(meta.steps ?? {})) {
      if (!this.groupOf.has(name))
        throw new RangeError(`loadStateDict: state for '${name}', which this optimizer does not manage`);
      if (!Number.isInteger(step) || step < 1) rangeError(`meta.steps['${name}']`, 'an integer >= 1', step);
      const m = sd.tensors.get(`exp_avg.${name}`);
      const v = sd.tensors.get(`exp_avg_sq.${name}`);
      if (!(m instanceof Tensor) || !(v instanceof Tensor))
        throw new MergeVQError(`loadStateDict: missing exp_avg / exp_avg_sq of '${name}'`, 'ERR_MISSING_WEIGHT');
      const p = this.source.get(name);
      for (const [what, t] of [
        ['exp_avg', m],
        ['exp_avg_sq', v],
      ] as const) {
        if (t.dtype !== 'float32') typeError(`${what}.${name}`, 'a float32 Tensor', t.toString());
        if (!sameShape(t.shape, p.shape))
          throw new MergeVQError(
            `loadStateDict: ${what}.${name} has shape ${shapeStr(t.shape)}, the parameter ${shapeStr(p.shape)}`,
            'ERR_SHAPE_MISMATCH',
          );
      }
      staged.set(name, { m, v, step });
    }
    const copies = new Map<string, ParamState>();
    for (const [name, s] of staged)
      copies.set(name, { expAvg: runSync(clone(s.m)), expAvgSq: runSync(clone(s.v)), step: s.step });
    this.state.clear();
    for (const [n, s] of copies) this.state.set(n, s);
    meta.groups.forEach((g, gi) => {
      this.groups[gi]!.lr = g.lr;
      this.groups[gi]!.weightDecay = g.weightDecay;
    });
  }
}

/** AdamW (torch.optim.AdamW semantics): {@link Adam} with decoupled weight decay (default 0.01). */
export class AdamW extends Adam {
  constructor(source: ParamSource, groups: readonly ParamGroupSpec[] | readonly string[], opts: AdamOptions) {
    super(source, groups, opts, true);
  }
}

/**
 * The AR model's parameter groups (the reference's configure_optimizers): parameters with
 * dim >= 2 decay with `weightDecay`, the others (biases, norms) get 0. Order of `names` is kept
 * inside each group; returns [decay group, no-decay group].
 */
export function arParamGroups(
  names: readonly string[],
  shapes: ReadonlyMap<string, readonly number[]> | Readonly<Record<string, readonly number[]>>,
  weightDecay: number,
): [ParamGroupSpec, ParamGroupSpec] {
  if (!Array.isArray(names)) typeError('names', 'an array of parameter names', names);
  finiteNonNeg('weightDecay', weightDecay);
  const shapeOf = (n: string): readonly number[] => {
    const s = shapes instanceof Map ? shapes.get(n) : (shapes as Record<string, readonly number[]>)[n];
    if (!Array.isArray(s)) throw new RangeError(`arParamGroups: no shape for parameter '${n}'`);
    return s;
  };
  const decay: string[] = [];
  const noDecay: string[] = [];
  for (const n of names) (shapeOf(n).length >= 2 ? decay : noDecay).push(n);
  return [
    { names: decay, weightDecay },
    { names: noDecay, weightDecay: 0 },
  ];
}

/** Options of {@link clipGradNorm}. */
export interface ClipOptions {
  /** Throw (MergeVQError ERR_NONFINITE, nothing scaled) when the total norm is NaN or infinite. Default false, as torch. */
  errorIfNonfinite?: boolean;
}
const CLIP_KEYS = optionKeys<ClipOptions>()(['errorIfNonfinite']);

/**
 * torch.nn.utils.clip_grad_norm_ (norm type 2) over the gradients' values: total = the norm of
 * the per-tensor norms (each accumulated in float64, rounded to float32 as torch's are); when
 * coef = maxNorm / (total + 1e-6) is below 1 every gradient is scaled IN PLACE by it (a tensor
 * that appears under several names is scaled once). Returns the total norm (float32-rounded).
 * A NaN / infinite total scales by NaN / 0 as torch does, unless `errorIfNonfinite`.
 */
export function* clipGradNorm(
  grads: ReadonlyMap<string, Tensor> | readonly Tensor[],
  maxNorm: number,
  opts: ClipOptions = {},
): Program<number> {
  checkKeys('clipGradNorm options', opts, CLIP_KEYS);
  const list =
    grads instanceof Map
      ? [...grads.values()]
      : Array.isArray(grads)
        ? [...grads]
        : typeError('grads', 'a Map of gradients or an array of Tensors', grads);
  if (typeof maxNorm !== 'number' || Number.isNaN(maxNorm)) typeError('maxNorm', 'a number', maxNorm);
  if (!(maxNorm >= 0)) rangeError('maxNorm', 'a number >= 0', maxNorm);
  if (list.length === 0) return 0;
  const f = Math.fround;
  const norms = yield* l2Norms(list as Tensor[]);
  const each = norms.toArray<'float32'>();
  yield* release(norms);
  let ss = 0;
  for (const v of each) ss += v * v;
  const total = f(Math.sqrt(ss));
  if (!Number.isFinite(total) && opts.errorIfNonfinite)
    throw new MergeVQError(`clipGradNorm: the total gradient norm is ${total}`, 'ERR_NONFINITE');
  // torch: max_norm / (total + 1e-6) on float32 tensors is reciprocal(total + 1e-6) * max_norm.
  const coef = f(f(1 / f(total + f(1e-6))) * f(maxNorm));
  if (coef < 1 || Number.isNaN(coef)) yield* scaleInplace(list as Tensor[], coef);
  return total;
}

/**
 * Gradient accumulation over micro-batches: `add` each micro-batch's gradients (summed per name,
 * in new tensors owned by the accumulator), then `mean` gives sum / count, where count is the
 * number of `add` calls (a name missing from some micro-batches counts as zero there).
 */
export class GradAccumulator {
  private sums = new Map<string, Tensor>();
  private n = 0;

  /** Number of micro-batches added since the last reset. */
  get count(): number {
    return this.n;
  }

  /** Adds one micro-batch's gradients. */
  *add(grads: ReadonlyMap<string, Tensor>): Program<void> {
    if (!(grads instanceof Map)) typeError('grads', 'a Map from parameter name to gradient', grads);
    for (const [name, g] of grads) {
      if (!(g instanceof Tensor) || g.dtype !== 'float32') typeError(`grads.get('${name}')`, 'a float32 Tensor', g);
      const prev = this.sums.get(name);
      if (prev && !sameShape(prev.shape, g.shape))
        throw new MergeVQError(
          `GradAccumulator: gradient of '${name}' has shape ${shapeStr(g.shape)}, earlier ones ${shapeStr(prev.shape)}`,
          'ERR_SHAPE_MISMATCH',
        );
    }
    for (const [name, g] of grads) {
      const prev = this.sums.get(name);
      if (!prev) {
        this.sums.set(name, yield* clone(g));
      } else {
        this.sums.set(name, yield* add(prev, g));
        yield* release(prev);
      }
    }
    this.n += 1;
  }

  /** The averaged gradients (new tensors: sum * (1 / count)). Throws when nothing was added. */
  *mean(): Program<Map<string, Tensor>> {
    if (this.n === 0) throw new MergeVQError('GradAccumulator.mean: no gradients were added', 'ERR_EMPTY');
    const out = new Map<string, Tensor>();
    for (const [name, s] of this.sums) out.set(name, this.n === 1 ? yield* clone(s) : yield* scale(s, 1 / this.n));
    return out;
  }

  /** Frees the sums and starts over. */
  reset(): void {
    for (const t of this.sums.values()) if (!t.disposed) t.dispose();
    this.sums = new Map();
    this.n = 0;
  }
}
