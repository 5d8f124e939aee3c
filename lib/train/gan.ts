/**
 * GAN losses of the tokenizer's objective, as op programs over patch logits `[B, 1, h, w]` (any
 * `[B, ...]` works), differentiable when recorded by a `Tape`; and LeCAM regularization with its
 * float64 EMA of the mean logits.
 *
 * Discriminator losses:
 * - hinge: `0.5 * (mean(relu(1 - real)) + mean(relu(1 + fake)))`
 * - vanilla: `0.5 * (mean(softplus(-real)) + mean(softplus(fake)))`
 * - non-saturating: each sample's patch logits are averaged first (m_b), then the sigmoid
 *   cross-entropy with label 1 for real and 0 for fake, averaged over the batch and summed:
 *   `mean_b(softplus(-mreal_b)) + mean_b(softplus(mfake_b))`. (The reference's version of this
 *   loss returns undefined names and cannot run; this is the loss its code spells out.)
 *
 * Generator losses:
 * - non-saturating: `mean_b(softplus(-mean_patches(fake_b)))` (per-sample mean BEFORE the
 *   sigmoid cross-entropy, as the reference)
 * - hinge: `-mean(fake)`
 *
 * softplus is computed as `log(1 + exp(min(x, 20))) + relu(x - 20)` (torch's threshold 20), whose
 * recorded ops differentiate to sigmoid(x) everywhere but x = 20 exactly.
 */
import { rangeError, typeError, checkKeys, optionKeys } from '../errors.js';
import type { Program } from '../graph.js';
import { reshape } from '../nn/layers.js';
import { add, clamp, exp, log, mean, mul, scale } from '../ops/tensor.js';
import { Tensor } from '../tensor.js';

/** Discriminator loss names, as the reference's `disc_loss` option. */
export type DiscLossKind = 'hinge' | 'vanilla' | 'non_saturate';
/** Generator adversarial loss names, as the reference's `gen_adv_loss` option. */
export type GenLossKind = 'hinge' | 'non_saturate';

const SOFTPLUS_THRESHOLD = 20;

function logitsArg(name: string, t: unknown): Tensor {
  if (!(t instanceof Tensor)) typeError(name, 'a Tensor', t);
  if (t.dtype !== 'float32' || t.ndim < 1 || t.numel === 0)
    rangeError(name, 'a non-empty float32 [B, ...] tensor', `${t.dtype} [${t.shape.join(', ')}]`);
  return t;
}

/** relu(x) = max(x, 0). */
export function* relu(x: Tensor): Program<Tensor> {
  return yield* clamp(x, { min: 0 });
}

/** softplus(x) = log(1 + exp(x)), overflow-safe (see the module comment). */
export function* softplus(x: Tensor): Program<Tensor> {
  const low = yield* clamp(x, { max: SOFTPLUS_THRESHOLD });
  const body = yield* log(yield* scale(yield* exp(low), 1, 1));
  const tail = yield* relu(yield* scale(x, 1, -SOFTPLUS_THRESHOLD));
  return yield* add(body, tail);
}

/** Per-sample mean of `[B, ...]` logits: `[B]`. */
export function* perSampleMean(logits: Tensor): Program<Tensor> {
  const B = logits.shape[0]!;
  return yield* mean(yield* reshape(logits, [B, logits.numel / B]), { dims: [1] });
}

/** Hinge discriminator loss (scalar [] tensor). */
export function* hingeDLoss(logitsReal: Tensor, logitsFake: Tensor): Program<Tensor> {
  logitsArg('logitsReal', logitsReal);
  logitsArg('logitsFake', logitsFake);
  const lossReal = yield* mean(yield* relu(yield* scale(logitsReal, -1, 1)));
  const lossFake = yield* mean(yield* relu(yield* scale(logitsFake, 1, 1)));
  return yield* scale(yield* add(lossReal, lossFake), 0.5);
}

/** Vanilla (softplus) discriminator loss (scalar). */
export function* vanillaDLoss(logitsReal: Tensor, logitsFake: Tensor): Program<Tensor> {
  logitsArg('logitsReal', logitsReal);
  logitsArg('logitsFake', logitsFake);
  const lossReal = yield* mean(yield* softplus(yield* scale(logitsReal, -1)));
  const lossFake = yield* mean(yield* softplus(logitsFake));
  return yield* scale(yield* add(lossReal, lossFake), 0.5);
}

/** Non-saturating discriminator loss on per-sample mean logits (scalar; see the module comment). */
export function* nonSaturatingDLoss(logitsReal: Tensor, logitsFake: Tensor): Program<Tensor> {
  logitsArg('logitsReal', logitsReal);
  logitsArg('logitsFake', logitsFake);
  if (logitsReal.shape[0] !== logitsFake.shape[0])
    rangeError('logitsFake', `a batch of ${logitsReal.shape[0]} like logitsReal`, logitsFake.shape[0]);
  const mReal = yield* perSampleMean(logitsReal);
  const mFake = yield* perSampleMean(logitsFake);
  const lossReal = yield* mean(yield* softplus(yield* scale(mReal, -1)));
  const lossFake = yield* mean(yield* softplus(mFake));
  return yield* add(lossReal, lossFake);
}

/** The discriminator loss named `kind`. */
export function* discLoss(kind: DiscLossKind, logitsReal: Tensor, logitsFake: Tensor): Program<Tensor> {
  switch (kind) {
    case 'hinge':
      return yield* hingeDLoss(logitsReal, logitsFake);
    case 'vanilla':
      return yield* vanillaDLoss(logitsReal, logitsFake);
    case 'non_saturate':
      return yield* nonSaturatingDLoss(logitsReal, logitsFake);
    default:
      return typeError('kind', "'hinge', 'vanilla' or 'non_saturate'", kind);
  }
}

/** Non-saturating generator loss: `mean_b(softplus(-mean_patches(fake_b)))` (scalar). */
export function* nonSaturateGenLoss(logitsFake: Tensor): Program<Tensor> {
  logitsArg('logitsFake', logitsFake);
  return yield* mean(yield* softplus(yield* scale(yield* perSampleMean(logitsFake), -1)));
}

/** Hinge generator loss: `-mean(fake)` (scalar). */
export function* hingeGenLoss(logitsFake: Tensor): Program<Tensor> {
  logitsArg('logitsFake', logitsFake);
  return yield* scale(yield* mean(logitsFake), -1);
}

/** The generator adversarial loss named `kind`. */
export function* genLoss(kind: GenLossKind, logitsFake: Tensor): Program<Tensor> {
  switch (kind) {
    case 'hinge':
      return yield* hingeGenLoss(logitsFake);
    case 'non_saturate':
      return yield* nonSaturateGenLoss(logitsFake);
    default:
      return typeError('kind', "'hinge' or 'non_saturate'", kind);
  }
}

/** The mean of a tensor, read back as a JS number (the reference's `torch.mean(t).item()`). */
export function* meanValue(t: Tensor): Program<number> {
  logitsArg('t', t);
  return (yield* mean(t)).item();
}

/** Checkpointable state of {@link LeCAM}. */
export interface LeCAMState {
  emaReal: number;
  emaFake: number;
  decay: number;
}

/** Options of {@link LeCAM}. */
export interface LeCAMOptions {
  /** Initial value of both EMAs (default 0). */
  init?: number;
  /** EMA decay in [0, 1] (default 0.999). */
  decay?: number;
}
const LECAM_KEYS = optionKeys<LeCAMOptions>()(['init', 'decay']);

/**
 * LeCAM regularization (Tseng et al. 2021) as the reference: exponential moving averages of the
 * discriminator's mean real and fake logits, kept as float64 JS numbers (initially 0, decay
 * 0.999), and `reg = mean(relu(real - emaFake)^2) + mean(relu(emaReal - fake)^2)`.
 * Per discriminator step, call `update` with this batch's mean logits first, then `reg` (the
 * reference's order; the EMA moves even while the adversarial weight is still 0).
 */
export class LeCAM {
  emaReal: number;
  emaFake: number;
  readonly decay: number;

  constructor(opts: LeCAMOptions = {}) {
    checkKeys('LeCAM options', opts, LECAM_KEYS);
    const init = opts.init ?? 0;
    const decay = opts.decay ?? 0.999;
    if (typeof init !== 'number' || !Number.isFinite(init)) typeError('init', 'a finite number', init);
    if (typeof decay !== 'number' || !(decay >= 0 && decay <= 1)) rangeError('decay', 'a number in [0, 1]', decay);
    this.emaReal = init;
    this.emaFake = init;
    this.decay = decay;
  }

  /** Moves the EMAs toward this batch's mean real / fake logits (float64 arithmetic). */
  update(meanReal: number, meanFake: number): void {
    if (typeof meanReal !== 'number' || !Number.isFinite(meanReal)) typeError('meanReal', 'a finite number', meanReal);
    if (typeof meanFake !== 'number' || !Number.isFinite(meanFake)) typeError('meanFake', 'a finite number', meanFake);
    this.emaReal = this.emaReal * this.decay + meanReal * (1 - this.decay);
    this.emaFake = this.emaFake * this.decay + meanFake * (1 - this.decay);
  }

  /** `update` from the logits tensors themselves (their means are read back). */
  *updateFrom(logitsReal: Tensor, logitsFake: Tensor): Program<void> {
    const mr = yield* meanValue(logitsReal);
    const mf = yield* meanValue(logitsFake);
    this.update(mr, mf);
  }

  /** The regularizer with the current EMAs (scalar; differentiable in both logits). */
  *reg(logitsReal: Tensor, logitsFake: Tensor): Program<Tensor> {
    logitsArg('logitsReal', logitsReal);
    logitsArg('logitsFake', logitsFake);
    const r = yield* relu(yield* scale(logitsReal, 1, -this.emaFake));
    const f = yield* relu(yield* scale(logitsFake, -1, this.emaReal));
    return yield* add(yield* mean(yield* mul(r, r)), yield* mean(yield* mul(f, f)));
  }

  /** The EMAs and decay, for checkpoints. */
  state(): LeCAMState {
    return { emaReal: this.emaReal, emaFake: this.emaFake, decay: this.decay };
  }

  /** Restores the EMAs from {@link state} (the decay is fixed at construction and must match). */
  loadState(s: Partial<LeCAMState>): void {
    if (s === null || typeof s !== 'object') typeError('state', 'an object with emaReal and emaFake', s);
    if (typeof s.emaReal !== 'number' || !Number.isFinite(s.emaReal))
      typeError('state.emaReal', 'a finite number', s.emaReal);
    if (typeof s.emaFake !== 'number' || !Number.isFinite(s.emaFake))
      typeError('state.emaFake', 'a finite number', s.emaFake);
    if (s.decay !== undefined && s.decay !== this.decay)
      rangeError('state.decay', `${this.decay} (this LeCAM's decay)`, s.decay);
    this.emaReal = s.emaReal;
    this.emaFake = s.emaFake;
  }
}
