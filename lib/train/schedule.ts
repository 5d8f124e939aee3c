/**
 * Learning-rate (and weight-decay) schedules as pure functions of the 0-based step, in float64
 * with the reference's operation order, so they reproduce its values exactly:
 *
 * - tokenizer, scheduler "None" + `lr_drop_epoch` / `lr_drop_rate` ({@link lrDropLr}): lr is
 *   multiplied by the rate at the END of each epoch e with e + 1 in the list (the official configs);
 * - tokenizer LambdaLR multipliers {@link linearWarmup} and {@link linearWarmupCosineDecay} (the
 *   lr is base_lr * multiplier(step); the reference defines these but never steps them under
 *   manual optimization, see the fixtures README);
 * - the AR model's lr + weight-decay annealing ({@link arLrWd}, VAR style) set on EVERY parameter
 *   group at every step, the no-decay group included ({@link applyArAnnealing});
 * - LambdaWarmUpCosineScheduler ({@link lambdaWarmUpCosine}), a multiplier for a base lr of 1.
 */
import { checkInt, rangeError, typeError, checkKeys, optionKeys } from '../errors.js';
import { libmCos } from '../ops/optim.js';

function num(name: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isFinite(v)) typeError(name, 'a finite number', v);
  return v;
}
function stepArg(step: unknown): number {
  return checkInt('step', step, 0);
}

/**
 * cos(x) from the C library (through the addon), not V8's Math.cos: the reference computes its
 * cosines with Python's math.cos / numpy, i.e. the C library, and the two differ by 1 ulp on some
 * arguments (the C library's cos is not always correctly rounded either), so using the same
 * function is what makes the schedules equal the reference's values exactly.
 */
export function cosine(x: number): number {
  return libmCos([x])[0]!;
}

/** Python's round() of a float to an integer: halves go to the even neighbour. */
export function pyRound(x: number): number {
  num('x', x);
  const fl = Math.floor(x);
  const diff = x - fl;
  if (diff > 0.5) return fl + 1;
  if (diff < 0.5) return fl;
  return fl % 2 === 0 ? fl : fl + 1;
}

/** Configuration of {@link lrDropLr} (the tokenizer's "None" scheduler with lr drops). */
export interface LrDropConfig {
  learningRate: number;
  stepsPerEpoch: number;
  /** 1-based epoch numbers after which lr *= lrDropRate (none: constant lr). */
  lrDropEpoch?: readonly number[] | null;
  lrDropRate?: number;
}
const LR_DROP_KEYS = optionKeys<LrDropConfig>()(['learningRate', 'stepsPerEpoch', 'lrDropEpoch', 'lrDropRate']);

/**
 * The tokenizer's lr at `step` with scheduler "None": the lr used by the optimizer step `step`
 * (epoch = floor(step / stepsPerEpoch)); every finished epoch e with e + 1 in `lrDropEpoch` has
 * multiplied it by `lrDropRate` (default 0.1), one multiplication per drop, in order.
 */
export function lrDropLr(step: number, cfg: LrDropConfig): number {
  checkKeys('lrDropLr config', cfg, LR_DROP_KEYS);
  stepArg(step);
  const lr0 = num('learningRate', cfg.learningRate);
  const spe = checkInt('stepsPerEpoch', cfg.stepsPerEpoch, 1);
  const rate = num('lrDropRate', cfg.lrDropRate ?? 0.1);
  const drops = cfg.lrDropEpoch ?? [];
  if (!Array.isArray(drops)) typeError('lrDropEpoch', 'an array of epoch numbers or null', drops);
  const epoch = Math.floor(step / spe);
  let lr = lr0;
  for (let e = 0; e < epoch; ++e) if (drops.includes(e + 1)) lr = lr * rate;
  return lr;
}

/** LambdaLR multiplier "linear-warmup": step / max(1, warmupSteps) during warm-up, then 1. */
export function linearWarmup(step: number, warmupSteps: number): number {
  stepArg(step);
  num('warmupSteps', warmupSteps);
  if (step < warmupSteps) return step / Math.max(1, warmupSteps);
  return 1.0;
}

/**
 * LambdaLR multiplier "linear-warmup_cosine-decay": linear warm-up, then
 * max(0.5 * (cos((step - warmup) / (maxSteps - warmup) * pi) + 1), multiplerMin).
 */
export function linearWarmupCosineDecay(
  step: number,
  warmupSteps: number,
  maxSteps: number,
  multiplerMin: number,
): number {
  stepArg(step);
  num('warmupSteps', warmupSteps);
  num('maxSteps', maxSteps);
  num('multiplerMin', multiplerMin);
  if (step < warmupSteps) return step / Math.max(1, warmupSteps);
  const m = 0.5 * (cosine(((step - warmupSteps) / (maxSteps - warmupSteps)) * Math.PI) + 1);
  return Math.max(m, multiplerMin);
}

/** Configuration of {@link arLrWd}: the AR model's (Net2NetTransformer) annealing settings. */
export interface ArAnnealConfig {
  /** Optimizer steps per epoch (len(train_dataloader)). */
  itersTrain: number;
  maxEpochs: number;
  /** Warm-up length in epochs (warm-up steps = round(wp * itersTrain), half to even). */
  wp: number;
  /** lr ratio at the start of warm-up (reference default 0.005). */
  wp0: number;
  /** lr ratio at the end of training (reference default 0.01). */
  wpe: number;
  /** Final weight decay; 0 (or absent) means "= weightDecay" (the reference's `twde or weight_decay`). */
  twde?: number;
  /** Peak weight decay. */
  weightDecay: number;
  /** Peak learning rate. */
  learningRate: number;
}
const AR_ANNEAL_KEYS = optionKeys<ArAnnealConfig>()([
  'itersTrain',
  'maxEpochs',
  'wp',
  'wp0',
  'wpe',
  'twde',
  'weightDecay',
  'learningRate',
]);

/**
 * The lr and weight decay the AR training step `step` (the global step, 0-based) uses:
 * warm-up lr = peak * (wp0 + (1 - wp0) * it / wpIt) for it < wpIt, then 1 for the first 5% of the
 * rest and a linear decay to wpe; weight decay follows a half cosine from weightDecay to twde.
 */
export function arLrWd(step: number, cfg: ArAnnealConfig): { lr: number; weightDecay: number } {
  checkKeys('arLrWd config', cfg, AR_ANNEAL_KEYS);
  const it = stepArg(step);
  const iters = checkInt('itersTrain', cfg.itersTrain, 1);
  const maxIt = checkInt('maxEpochs', cfg.maxEpochs, 1) * iters;
  const wpIt = pyRound(num('wp', cfg.wp) * iters);
  const wp0 = num('wp0', cfg.wp0);
  const wpe = num('wpe', cfg.wpe);
  const wd = num('weightDecay', cfg.weightDecay);
  const wdEnd = num('twde', cfg.twde ?? 0) || wd;
  const peak = num('learningRate', cfg.learningRate);
  let cur: number;
  if (it < wpIt) {
    cur = wp0 + ((1 - wp0) * it) / wpIt;
  } else {
    const pasd = (it - wpIt) / (maxIt - 1 - wpIt);
    const rest = 1 - pasd;
    const T = 0.05;
    const maxRest = 1 - T;
    cur = pasd < T ? 1 : wpe + ((1 - wpe) * rest) / maxRest;
  }
  cur *= peak;
  const pasdWd = it / (maxIt - 1);
  const curWd = wdEnd + (wd - wdEnd) * (0.5 + 0.5 * cosine(Math.PI * pasdWd));
  return { lr: cur, weightDecay: curWd };
}

/** Something with parameter groups whose lr / weight decay can be set (an Adam / AdamW). */
export interface HasParamGroups {
  readonly groups: { lr: number; weightDecay: number }[];
}

/**
 * Sets every group's lr and weight decay for AR step `step` (as the reference does, the
 * no-decay group included, so after the first step it decays too). Returns the values set.
 */
export function applyArAnnealing(
  opt: HasParamGroups,
  step: number,
  cfg: ArAnnealConfig,
): { lr: number; weightDecay: number } {
  checkKeys('applyArAnnealing config', cfg, AR_ANNEAL_KEYS);
  const v = arLrWd(step, cfg);
  for (const g of opt.groups) {
    g.lr = v.lr;
    g.weightDecay = v.weightDecay;
  }
  return v;
}

/** Configuration of {@link lambdaWarmUpCosine} (LambdaWarmUpCosineScheduler). */
export interface LambdaWarmUpCosineConfig {
  warmUpSteps: number;
  lrMin: number;
  lrMax: number;
  lrStart: number;
  maxDecaySteps: number;
}
const LAMBDA_WARM_UP_COSINE_KEYS = optionKeys<LambdaWarmUpCosineConfig>()([
  'warmUpSteps',
  'lrMin',
  'lrMax',
  'lrStart',
  'maxDecaySteps',
]);

/**
 * LambdaWarmUpCosineScheduler(n): linear from lrStart to lrMax over warmUpSteps, then a cosine
 * from lrMax to lrMin reached at maxDecaySteps (constant after). A multiplier for base lr 1.
 */
export function lambdaWarmUpCosine(n: number, cfg: LambdaWarmUpCosineConfig): number {
  checkKeys('lambdaWarmUpCosine config', cfg, LAMBDA_WARM_UP_COSINE_KEYS);
  stepArg(n);
  const w = num('warmUpSteps', cfg.warmUpSteps);
  const lrMin = num('lrMin', cfg.lrMin);
  const lrMax = num('lrMax', cfg.lrMax);
  const lrStart = num('lrStart', cfg.lrStart);
  const maxDecay = num('maxDecaySteps', cfg.maxDecaySteps);
  if (maxDecay <= w) rangeError('maxDecaySteps', `a number > warmUpSteps (${w})`, maxDecay);
  if (n < w) return ((lrMax - lrStart) / w) * n + lrStart;
  const t = Math.min((n - w) / (maxDecay - w), 1.0);
  return lrMin + 0.5 * (lrMax - lrMin) * (1 + cosine(t * Math.PI));
}
