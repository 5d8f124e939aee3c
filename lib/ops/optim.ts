/**
 * Optimizer, EMA and gradient-clipping ops. Except `l2Norms`, these are IN PLACE: they update
 * the tensors they are given (parameters, optimizer state, EMA shadows, gradients). Every
 * argument is validated before the first write, so a call that throws leaves every tensor as it
 * was. float32 CPU tensors.
 *
 * ```ts
 * runSync(adamStep(p, g, m, v, { lr: 1e-4, beta1: 0.5, beta2: 0.9, eps: 1e-8, step: 1 }));
 * ```
 */
import { tensorArg } from './args.js';
import { call, op1, type Program } from '../graph.js';
import { Tensor } from '../tensor.js';
import { checkInt, checkKeys, optionKeys, rangeError, typeError } from '../errors.js';

function f32(name: string, t: unknown): Tensor {
  const x = tensorArg(name, t);
  if (x.dtype !== 'float32') typeError(name, 'a float32 Tensor', x.toString());
  return x;
}
function num(name: string, v: unknown, lo: number, hi = Infinity, hiOpen = false): number {
  if (typeof v !== 'number' || Number.isNaN(v)) typeError(name, 'a number', v);
  if (!Number.isFinite(v) || v < lo || (hiOpen ? v >= hi : v > hi))
    rangeError(name, `a finite number in [${lo}, ${hi === Infinity ? 'Infinity' : hi}${hiOpen ? ')' : ']'}`, v);
  return v;
}
function tensorList(name: string, xs: unknown): Tensor[] {
  if (!Array.isArray(xs)) typeError(name, 'an array of float32 Tensors', xs);
  return (xs as unknown[]).map((t, i) => f32(`${name}[${i}]`, t));
}

/** Options of {@link adamStep} (torch's names in camelCase). */
export interface AdamStepOptions {
  /** Learning rate, finite, >= 0. */
  lr: number;
  /** Decay of the first moment, in [0, 1). */
  beta1: number;
  /** Decay of the second moment, in [0, 1). */
  beta2: number;
  /** Added to the denominator, finite, >= 0. */
  eps: number;
  /** Weight decay, finite, >= 0 (default 0). */
  weightDecay?: number;
  /** false (default): Adam, weight decay added to the gradient (L2); true: AdamW, param *= 1 - lr * weightDecay first. */
  decoupled?: boolean;
  /** The 1-based number of this step (bias corrections 1 - beta^step). */
  step: number;
}
const ADAM_STEP_KEYS = optionKeys<AdamStepOptions>()([
  'lr',
  'beta1',
  'beta2',
  'eps',
  'weightDecay',
  'decoupled',
  'step',
]);

/**
 * IN PLACE: one Adam / AdamW step on `param`, `expAvg`, `expAvgSq` (dense float32, one shape) from
 * `grad` (float32, that shape, any strides), with torch 1.13's single-tensor arithmetic:
 * m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g*g; p -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
 * No tensor may share memory with another. Multithreaded for large tensors.
 */
export function* adamStep(
  param: Tensor,
  grad: Tensor,
  expAvg: Tensor,
  expAvgSq: Tensor,
  opts: AdamStepOptions,
): Program<void> {
  if (opts === null || typeof opts !== 'object') typeError('opts', 'an options object', opts);
  checkKeys('adamStep options', opts, ADAM_STEP_KEYS);
  const attrs = {
    lr: num('lr', opts.lr, 0),
    beta1: num('beta1', opts.beta1, 0, 1, true),
    beta2: num('beta2', opts.beta2, 0, 1, true),
    eps: num('eps', opts.eps, 0),
    weight_decay: num('weightDecay', opts.weightDecay ?? 0, 0),
    decoupled: Boolean(opts.decoupled),
    step: checkInt('step', opts.step, 1, Number.MAX_SAFE_INTEGER),
  };
  yield* call(
    'adam_step',
    [f32('param', param), f32('grad', grad), f32('expAvg', expAvg), f32('expAvgSq', expAvgSq)],
    attrs,
  );
}

/** Options of {@link emaUpdate}. */
export interface EmaUpdateOptions {
  /** The EMA decay, in [0, 1]. */
  decay: number;
}
const EMA_UPDATE_KEYS = optionKeys<EmaUpdateOptions>()(['decay']);

/**
 * IN PLACE: shadow -= (1 - decay) * (shadow - param), in float32 (LitEma's update; 1 - decay is
 * rounded to float32). `shadow` dense float32; `param` float32 of its shape, any strides.
 */
export function* emaUpdate(shadow: Tensor, param: Tensor, opts: EmaUpdateOptions): Program<void> {
  if (opts === null || typeof opts !== 'object') typeError('opts', 'an options object', opts);
  checkKeys('emaUpdate options', opts, EMA_UPDATE_KEYS);
  yield* call('ema_update', [f32('shadow', shadow), f32('param', param)], { decay: num('decay', opts.decay, 0, 1) });
}

/**
 * The L2 norm of each tensor (sqrt of the sum of squares, accumulated in float64 over fixed
 * blocks, so the result does not depend on the thread count), as a new float32 [n] tensor.
 */
export function* l2Norms(xs: readonly Tensor[]): Program<Tensor> {
  const out = yield* call('l2_norms', tensorList('xs', xs));
  return out[0]!;
}

/**
 * IN PLACE: x *= value for every tensor in `xs` (any strides). Entries that are the same view
 * (the same object, or the same memory, shape and strides) are scaled once; other overlapping
 * entries are refused (RangeError) before anything is written.
 */
export function* scaleInplace(xs: readonly Tensor[], value: number): Program<void> {
  const list = tensorList('xs', xs);
  if (typeof value !== 'number') typeError('value', 'a number', value);
  const unique = [...new Set(list)];
  if (unique.length === 0) return;
  yield* call('scale_inplace', unique, { value });
}

/** IN PLACE: copies `src` into `dst` (same shape and dtype, any strides; dst not a broadcast view). */
export function* copyInto(dst: Tensor, src: Tensor): Program<void> {
  yield* call('copy_into', [tensorArg('dst', dst), tensorArg('src', src)]);
}

/** A new dense tensor with the elements of `x` (bit-exact copy, any dtype). */
export function* clone(x: Tensor): Program<Tensor> {
  const out = Tensor.empty(tensorArg('x', x).shape, x.dtype, x.device);
  yield* copyInto(out, x);
  return out;
}

/**
 * The C library's cos of each float64 value (eager and synchronous, not an op program): used by
 * the lr schedules to reproduce the reference's Python cosines bit for bit.
 */
export function libmCos(xs: readonly number[]): Float64Array {
  if (!Array.isArray(xs)) typeError('xs', 'an array of numbers', xs);
  xs.forEach((x, i) => {
    if (typeof x !== 'number') typeError(`xs[${i}]`, 'a number', x);
  });
  const bits = op1('libm_cos', [], { x: xs });
  const out = new Float64Array(bits.toArray<'int64'>().buffer);
  bits.dispose();
  return out;
}
