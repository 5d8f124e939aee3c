/**
 * Exponential moving average of weights with the reference's LitEma semantics: one float32 shadow
 * per trainable parameter, named like the reference's buffers (the parameter name with its dots
 * removed: `encoder.conv_in.weight` -> `encoderconv_inweight`), plus the `decay` (float32) and
 * `num_updates` (int32) buffers, so `stateDict()` matches the `model_ema.*` entries of a
 * reference checkpoint.
 *
 * Each update: if num_updates >= 0 (useNumUpdates), num_updates += 1 and
 * decay = min(decay, (1 + num_updates) / (10 + num_updates)) (in float32); then
 * shadow -= (1 - decay) * (shadow - param). With useNumUpdates false num_updates stays -1.
 */
import { MergeVQError, rangeError, typeError, checkKeys, optionKeys } from '../errors.js';
import { runSync, type Program } from '../graph.js';
import { clone, copyInto, emaUpdate } from '../ops/optim.js';
import { Tensor } from '../tensor.js';
import type { ParamSource } from './optim.js';

/** Options of {@link LitEma}. */
export interface LitEmaOptions {
  /** Decay in [0, 1]; default 0.999. */
  decay?: number;
  /** Warm the decay up with the update count (the reference's `use_num_upates`); default false. */
  useNumUpdates?: boolean;
}
const LIT_EMA_KEYS = optionKeys<LitEmaOptions>()(['decay', 'useNumUpdates']);

/** The shadow buffer name of a parameter: its name with the dots removed. */
export function emaBufferName(paramName: string): string {
  return paramName.replace(/\./g, '');
}

const sameShape = (a: readonly number[], b: readonly number[]) =>
  a.length === b.length && a.every((s, i) => s === b[i]);

/** LitEma: shadows of the trainable parameters (see the module comment). */
export class LitEma {
  /** The float32-rounded decay (the reference keeps it as a float32 buffer). */
  decay: number;
  /** -1 when the count is not used, else the number of updates so far. */
  numUpdates: number;
  /** Trainable parameter names, in the order given. */
  readonly names: readonly string[];
  private readonly shadows = new Map<string, Tensor>();
  private collected: Tensor[] | null = null;

  /**
   * @param params where the initial values are read (copied) by name.
   * @param names the trainable parameters to track (frozen ones must be left out).
   */
  constructor(params: ParamSource, names: readonly string[], opts: LitEmaOptions = {}) {
    if (!params || typeof params.get !== 'function') typeError('params', 'an object with get(name): Tensor', params);
    if (!Array.isArray(names)) typeError('names', 'an array of parameter names', names);
    checkKeys('LitEma options', opts, LIT_EMA_KEYS);
    const decay = opts.decay ?? 0.999;
    if (typeof decay !== 'number' || !(decay >= 0 && decay <= 1)) rangeError('decay', 'a number in [0, 1]', decay);
    this.decay = Math.fround(decay);
    this.numUpdates = opts.useNumUpdates ? 0 : -1;
    this.names = [...names];
    const buffers = new Map<string, string>();
    for (const n of this.names) {
      if (typeof n !== 'string') typeError('names', 'an array of strings', n);
      const b = emaBufferName(n);
      if (b === 'decay' || b === 'num_updates')
        throw new RangeError(`LitEma: parameter '${n}' would shadow the '${b}' buffer`);
      const other = buffers.get(b);
      if (other !== undefined)
        throw new RangeError(`LitEma: parameters '${other}' and '${n}' have the same buffer name '${b}'`);
      buffers.set(b, n);
    }
    for (const n of this.names) {
      const p = params.get(n);
      if (!(p instanceof Tensor) || p.dtype !== 'float32') typeError(`params.get('${n}')`, 'a float32 Tensor', p);
      this.shadows.set(n, runSync(clone(p)));
    }
  }

  /** The shadow of one parameter (the live tensor). */
  shadow(name: string): Tensor {
    const t = this.shadows.get(name);
    if (!t) throw new RangeError(`LitEma: no shadow for '${name}'`);
    return t;
  }

  /** The decay the next update will use (advancing nothing). */
  nextDecay(): number {
    if (this.numUpdates < 0) return this.decay;
    const n = this.numUpdates + 1;
    return Math.min(this.decay, Math.fround((1 + n) / (10 + n)));
  }

  /** One EMA update from the current parameter values. Shapes are checked before any write. */
  *update(params: ParamSource): Program<void> {
    const cur = this.names.map((n) => {
      const p = params.get(n);
      if (!(p instanceof Tensor) || p.dtype !== 'float32') typeError(`params.get('${n}')`, 'a float32 Tensor', p);
      const s = this.shadows.get(n)!;
      if (!sameShape(p.shape, s.shape))
        throw new MergeVQError(
          `LitEma: '${n}' has shape [${p.shape.join(', ')}], its shadow [${s.shape.join(', ')}]`,
          'ERR_SHAPE_MISMATCH',
        );
      return p;
    });
    const decay = this.nextDecay();
    if (this.numUpdates >= 0) this.numUpdates += 1;
    for (let i = 0; i < this.names.length; ++i) yield* emaUpdate(this.shadows.get(this.names[i]!)!, cur[i]!, { decay });
  }

  /** {@link update}, run synchronously. */
  updateSync(params: ParamSource): void {
    runSync(this.update(params));
  }

  /** Copies every shadow INTO the parameter tensors (in place, as the reference's copy_to). */
  *copyTo(params: ParamSource): Program<void> {
    const targets = this.names.map((n) => {
      const p = params.get(n);
      if (!(p instanceof Tensor) || !sameShape(p.shape, this.shadows.get(n)!.shape))
        typeError(`params.get('${n}')`, "a Tensor of the shadow's shape", p);
      return p;
    });
    for (let i = 0; i < targets.length; ++i) yield* copyInto(targets[i]!, this.shadows.get(this.names[i]!)!);
  }

  /** {@link copyTo}, run synchronously. */
  copyToSync(params: ParamSource): void {
    runSync(this.copyTo(params));
  }

  /** Saves copies of the current parameter values (e.g. before `copyTo` for an EMA evaluation). */
  *store(params: ParamSource): Program<void> {
    const saved: Tensor[] = [];
    for (const n of this.names) saved.push(yield* clone(params.get(n)));
    this.collected = saved;
  }

  /** Copies the values saved by {@link store} back into the parameters. */
  *restore(params: ParamSource): Program<void> {
    if (!this.collected) throw new MergeVQError('LitEma.restore: nothing was stored', 'ERR_EMPTY');
    for (let i = 0; i < this.names.length; ++i) yield* copyInto(params.get(this.names[i]!), this.collected[i]!);
  }

  /**
   * The reference's buffers: `decay` (float32 []), `num_updates` (int32 []) and one shadow per
   * parameter under its buffer name (live tensors).
   */
  stateDict(): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    out.set('decay', Tensor.from(new Float32Array([this.decay]), []));
    out.set('num_updates', Tensor.from(new Int32Array([this.numUpdates]), []));
    for (const n of this.names) out.set(emaBufferName(n), this.shadows.get(n)!);
    return out;
  }

  /**
   * Loads buffers saved by {@link stateDict} or by the reference (copies them). Every shadow must
   * be present with its shape; validated before anything changes.
   */
  loadStateDict(sd: ReadonlyMap<string, Tensor>): void {
    if (!(sd instanceof Map)) typeError('sd', 'a Map of buffers', sd);
    const decayT = sd.get('decay');
    const numT = sd.get('num_updates');
    if (!(decayT instanceof Tensor) || decayT.numel !== 1)
      throw new MergeVQError("LitEma.loadStateDict: missing the 'decay' buffer", 'ERR_MISSING_WEIGHT');
    if (!(numT instanceof Tensor) || numT.numel !== 1 || (numT.dtype !== 'int32' && numT.dtype !== 'int64'))
      throw new MergeVQError("LitEma.loadStateDict: missing the integer 'num_updates' buffer", 'ERR_MISSING_WEIGHT');
    const decay = decayT.toFloat32()[0]!;
    if (!(decay >= 0 && decay <= 1)) rangeError('decay buffer', 'a number in [0, 1]', decay);
    const staged = this.names.map((n) => {
      const b = emaBufferName(n);
      const t = sd.get(b);
      if (!(t instanceof Tensor))
        throw new MergeVQError(`LitEma.loadStateDict: missing buffer '${b}'`, 'ERR_MISSING_WEIGHT');
      const s = this.shadows.get(n)!;
      if (!sameShape(t.shape, s.shape))
        throw new MergeVQError(
          `LitEma.loadStateDict: '${b}' has shape [${t.shape.join(', ')}], expected [${s.shape.join(', ')}]`,
          'ERR_SHAPE_MISMATCH',
        );
      return t.dtype === 'float32' ? t : t.cast('float32');
    });
    const copies = staged.map((t) => runSync(clone(t)));
    this.names.forEach((n, i) => this.shadows.set(n, copies[i]!));
    this.decay = decay;
    this.numUpdates = Number(numT.toArray()[0]);
  }
}
