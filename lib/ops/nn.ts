/**
 * Neural-network ops on float32 tensors: normalizations (group/layer/RMS/batch norm),
 * activations (GELU, SiLU, LeakyReLU, SwiGLU), softmax / log-softmax and losses, each with its
 * backward op. Channel-first tensors are `[B, C, ...spatial]`.
 *
 * Every function is an op program (`yield*` it inside a program, or run it with `runSync`).
 * Backward ops take the saved forward inputs/statistics plus the upstream gradient and return the
 * input gradients; a gradient that was not requested is `null`.
 */
import { optTensor, tensorArg } from './args.js';
import { call, call1, type Program } from '../graph.js';
import type { Tensor } from '../tensor.js';
import { checkKeys, optionKeys, rangeError, typeError } from '../errors.js';

/** Activation fused after a normalization's affine step. */
export type FusedAct = 'none' | 'silu' | 'gelu' | 'gelu_tanh';
/** Loss reduction, as torch. */
export type Reduction = 'mean' | 'sum' | 'none';

function posInt(name: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isInteger(v)) typeError(name, 'an integer', v);
  if (v <= 0) rangeError(name, 'a positive integer', v);
  return v;
}
function finiteNum(name: string, v: unknown, min = -Infinity): number {
  if (typeof v !== 'number') typeError(name, 'a number', v);
  if (!Number.isFinite(v) || v < min) rangeError(name, `a finite number >= ${min}`, v);
  return v;
}
function oneOf<T extends string>(name: string, v: unknown, allowed: readonly T[]): T {
  if (typeof v !== 'string' || !allowed.includes(v as T))
    typeError(name, `one of ${allowed.map((s) => `'${s}'`).join(', ')}`, v);
  return v as T;
}
const ACTS: readonly FusedAct[] = ['none', 'silu', 'gelu', 'gelu_tanh'];
const REDUCTIONS: readonly Reduction[] = ['mean', 'sum', 'none'];

// ---- group norm --------------------------------------------------------------------------------

export interface GroupNormOptions {
  /** Number of groups; must divide C. */
  groups: number;
  /** Added to the variance (default 1e-5; the MergeVQ ResBlocks use 1e-6). */
  eps?: number;
  /** Activation applied after the affine step (default 'none'). */
  act?: FusedAct;
}
const GROUP_NORM_KEYS = optionKeys<GroupNormOptions>()(['groups', 'eps', 'act']);

/** Options of {@link groupNormBackward}. */
export interface GroupNormBackwardOptions {
  /** The forward's number of groups. */
  groups: number;
  /** The forward's fused activation (default 'none'). */
  act?: FusedAct;
  /** Compute the weight / bias gradients (default: when weight / bias is given). */
  hasWeight?: boolean;
  hasBias?: boolean;
}
const GROUP_NORM_BACKWARD_KEYS = optionKeys<GroupNormBackwardOptions>()(['groups', 'act', 'hasWeight', 'hasBias']);

/**
 * GroupNorm over `x [B, C, ...]` with optional per-channel `weight`/`bias` and a fused activation.
 * Statistics are float64. Returns `[y, mean [B, G], rstd [B, G]]`.
 */
export function* groupNorm(
  x: Tensor,
  weight: Tensor | null | undefined,
  bias: Tensor | null | undefined,
  opts: GroupNormOptions,
): Program<[Tensor, Tensor, Tensor]> {
  checkKeys('groupNorm options', opts, GROUP_NORM_KEYS);
  tensorArg('x', x);
  const groups = posInt('groups', opts?.groups);
  const eps = finiteNum('eps', opts.eps ?? 1e-5, 0);
  const act = oneOf('act', opts.act ?? 'none', ACTS);
  const out = yield* call('group_norm', [x, optTensor('weight', weight), optTensor('bias', bias)], {
    groups,
    eps,
    act,
  });
  return [out[0]!, out[1]!, out[2]!];
}

/**
 * Backward of {@link groupNorm}. `bias` is needed only with a fused activation (the
 * pre-activation is recomputed). Returns `[gx, gweight | null, gbias | null]`.
 */
export function* groupNormBackward(
  x: Tensor,
  weight: Tensor | null | undefined,
  bias: Tensor | null | undefined,
  mean: Tensor,
  rstd: Tensor,
  gy: Tensor,
  opts: GroupNormBackwardOptions,
): Program<[Tensor, Tensor | null, Tensor | null]> {
  checkKeys('groupNormBackward options', opts, GROUP_NORM_BACKWARD_KEYS);
  const groups = posInt('groups', opts?.groups);
  const act = oneOf('act', opts.act ?? 'none', ACTS);
  const w = optTensor('weight', weight);
  const b = optTensor('bias', bias);
  const out = yield* call(
    'group_norm_backward',
    [tensorArg('x', x), w, tensorArg('mean', mean), tensorArg('rstd', rstd), tensorArg('gy', gy), b],
    {
      groups,
      act,
      has_weight: opts.hasWeight ?? w !== null,
      has_bias: opts.hasBias ?? b !== null,
    },
  );
  return [out[0]!, out[1] ?? null, out[2] ?? null];
}

// ---- layer norm / RMS norm -----------------------------------------------------------------------

/** Options of {@link layerNorm} and {@link rmsNorm}. */
export interface NormEpsOptions {
  /** Added to the variance / mean square (default 1e-5). */
  eps?: number;
}
const NORM_EPS_KEYS = optionKeys<NormEpsOptions>()(['eps']);

/** Options of {@link layerNormBackward}. */
export interface LayerNormBackwardOptions {
  /** Compute the weight gradient (default: when weight is given). */
  hasWeight?: boolean;
  /** Compute the bias gradient (default true). */
  hasBias?: boolean;
}
const LAYER_NORM_BACKWARD_KEYS = optionKeys<LayerNormBackwardOptions>()(['hasWeight', 'hasBias']);

/** LayerNorm over the last dim of `x [..., C]`. Returns `[y, mean [...], rstd [...]]`. */
export function* layerNorm(
  x: Tensor,
  weight?: Tensor | null,
  bias?: Tensor | null,
  opts: NormEpsOptions = {},
): Program<[Tensor, Tensor, Tensor]> {
  checkKeys('layerNorm options', opts, NORM_EPS_KEYS);
  const eps = finiteNum('eps', opts.eps ?? 1e-5, 0);
  const out = yield* call('layer_norm', [tensorArg('x', x), optTensor('weight', weight), optTensor('bias', bias)], {
    eps,
  });
  return [out[0]!, out[1]!, out[2]!];
}

/** Backward of {@link layerNorm}: `[gx, gweight | null, gbias | null]`. */
export function* layerNormBackward(
  x: Tensor,
  weight: Tensor | null | undefined,
  mean: Tensor,
  rstd: Tensor,
  gy: Tensor,
  opts: LayerNormBackwardOptions = {},
): Program<[Tensor, Tensor | null, Tensor | null]> {
  checkKeys('layerNormBackward options', opts, LAYER_NORM_BACKWARD_KEYS);
  const w = optTensor('weight', weight);
  const out = yield* call(
    'layer_norm_backward',
    [tensorArg('x', x), w, tensorArg('mean', mean), tensorArg('rstd', rstd), tensorArg('gy', gy)],
    {
      has_weight: opts.hasWeight ?? w !== null,
      has_bias: opts.hasBias ?? true,
    },
  );
  return [out[0]!, out[1] ?? null, out[2] ?? null];
}

/**
 * RMSNorm as LlamaGen (float32): `x * rsqrt(mean(x^2) + eps) * weight` over the last dim.
 * Returns `[y, rstd [...]]`.
 */
export function* rmsNorm(x: Tensor, weight: Tensor, opts: NormEpsOptions = {}): Program<[Tensor, Tensor]> {
  checkKeys('rmsNorm options', opts, NORM_EPS_KEYS);
  const eps = finiteNum('eps', opts.eps ?? 1e-5, 0);
  const out = yield* call('rms_norm', [tensorArg('x', x), tensorArg('weight', weight)], { eps });
  return [out[0]!, out[1]!];
}

/** Backward of {@link rmsNorm}: `[gx, gweight]`. */
export function* rmsNormBackward(x: Tensor, weight: Tensor, rstd: Tensor, gy: Tensor): Program<[Tensor, Tensor]> {
  const out = yield* call('rms_norm_backward', [
    tensorArg('x', x),
    tensorArg('weight', weight),
    tensorArg('rstd', rstd),
    tensorArg('gy', gy),
  ]);
  return [out[0]!, out[1]!];
}

// ---- batch norm ----------------------------------------------------------------------------------

export interface BatchNormOptions {
  /** Batch statistics (true) or running statistics (false, default). */
  training?: boolean;
  /** Running-stat update rate (default 0.1). */
  momentum?: number;
  eps?: number;
}
const BATCH_NORM_KEYS = optionKeys<BatchNormOptions>()(['training', 'momentum', 'eps']);

/** Options of {@link batchNormBackward}. */
export interface BatchNormBackwardOptions {
  /** The forward's mode (default false). */
  training?: boolean;
}
const BATCH_NORM_BACKWARD_KEYS = optionKeys<BatchNormBackwardOptions>()(['training']);

/**
 * BatchNorm over `x [B, C, ...]`. Returns `[y, mean [C], invstd [C], newRunningMean, newRunningVar]`;
 * in training the running stats are updated (unbiased variance) into NEW tensors (null when none
 * were given); in eval they are copied.
 */
export function* batchNorm(
  x: Tensor,
  weight: Tensor | null | undefined,
  bias: Tensor | null | undefined,
  runningMean: Tensor | null | undefined,
  runningVar: Tensor | null | undefined,
  opts: BatchNormOptions = {},
): Program<[Tensor, Tensor, Tensor, Tensor | null, Tensor | null]> {
  checkKeys('batchNorm options', opts, BATCH_NORM_KEYS);
  const training = opts.training ?? false;
  if (typeof training !== 'boolean') typeError('training', 'a boolean', training);
  const momentum = finiteNum('momentum', opts.momentum ?? 0.1);
  const eps = finiteNum('eps', opts.eps ?? 1e-5, 0);
  const out = yield* call(
    'batch_norm',
    [
      tensorArg('x', x),
      optTensor('weight', weight),
      optTensor('bias', bias),
      optTensor('runningMean', runningMean),
      optTensor('runningVar', runningVar),
    ],
    { training, momentum, eps },
  );
  return [out[0]!, out[1]!, out[2]!, out[3] ?? null, out[4] ?? null];
}

/** Backward of {@link batchNorm}: `[gx, gweight, gbias]`. */
export function* batchNormBackward(
  x: Tensor,
  weight: Tensor | null | undefined,
  mean: Tensor,
  invstd: Tensor,
  gy: Tensor,
  opts: BatchNormBackwardOptions = {},
): Program<[Tensor, Tensor, Tensor]> {
  checkKeys('batchNormBackward options', opts, BATCH_NORM_BACKWARD_KEYS);
  const out = yield* call(
    'batch_norm_backward',
    [
      tensorArg('x', x),
      optTensor('weight', weight),
      tensorArg('mean', mean),
      tensorArg('invstd', invstd),
      tensorArg('gy', gy),
    ],
    {
      training: opts.training ?? false,
    },
  );
  return [out[0]!, out[1]!, out[2]!];
}

// ---- activations ---------------------------------------------------------------------------------

/** Options of {@link gelu} / {@link geluBackward}. */
export interface GeluOptions {
  approximate?: 'none' | 'tanh';
}
const GELU_KEYS = optionKeys<GeluOptions>()(['approximate']);
/** Options of {@link leakyRelu} / {@link leakyReluBackward}. */
export interface LeakyReluOptions {
  slope?: number;
}
const LEAKY_RELU_KEYS = optionKeys<LeakyReluOptions>()(['slope']);

/** GELU; `approximate: 'none'` is the exact erf form (default), `'tanh'` the tanh approximation. */
export function* gelu(x: Tensor, opts: GeluOptions = {}): Program<Tensor> {
  checkKeys('gelu options', opts, GELU_KEYS);
  const approximate = oneOf('approximate', opts.approximate ?? 'none', ['none', 'tanh'] as const);
  return yield* call1('gelu', [tensorArg('x', x)], { approximate });
}
/** Backward of {@link gelu}. */
export function* geluBackward(x: Tensor, gy: Tensor, opts: GeluOptions = {}): Program<Tensor> {
  checkKeys('geluBackward options', opts, GELU_KEYS);
  const approximate = oneOf('approximate', opts.approximate ?? 'none', ['none', 'tanh'] as const);
  return yield* call1('gelu_backward', [tensorArg('x', x), tensorArg('gy', gy)], { approximate });
}
/** SiLU: `x * sigmoid(x)`. */
export function* silu(x: Tensor): Program<Tensor> {
  return yield* call1('silu', [tensorArg('x', x)]);
}
/** Backward of {@link silu}. */
export function* siluBackward(x: Tensor, gy: Tensor): Program<Tensor> {
  return yield* call1('silu_backward', [tensorArg('x', x), tensorArg('gy', gy)]);
}
/** LeakyReLU: `x > 0 ? x : slope * x` (default slope 0.2). */
export function* leakyRelu(x: Tensor, opts: LeakyReluOptions = {}): Program<Tensor> {
  checkKeys('leakyRelu options', opts, LEAKY_RELU_KEYS);
  return yield* call1('leaky_relu', [tensorArg('x', x)], { slope: finiteNum('slope', opts.slope ?? 0.2) });
}
/** Backward of {@link leakyRelu}. */
export function* leakyReluBackward(x: Tensor, gy: Tensor, opts: LeakyReluOptions = {}): Program<Tensor> {
  checkKeys('leakyReluBackward options', opts, LEAKY_RELU_KEYS);
  return yield* call1('leaky_relu_backward', [tensorArg('x', x), tensorArg('gy', gy)], {
    slope: finiteNum('slope', opts.slope ?? 0.2),
  });
}
/** SwiGLU gate (LlamaGen FFN): `silu(a) * b`. */
export function* swiglu(a: Tensor, b: Tensor): Program<Tensor> {
  return yield* call1('swiglu', [tensorArg('a', a), tensorArg('b', b)]);
}
/** Backward of {@link swiglu}: `[ga, gb]`. */
export function* swigluBackward(a: Tensor, b: Tensor, gy: Tensor): Program<[Tensor, Tensor]> {
  const out = yield* call('swiglu_backward', [tensorArg('a', a), tensorArg('b', b), tensorArg('gy', gy)]);
  return [out[0]!, out[1]!];
}

// ---- softmax -------------------------------------------------------------------------------------

/** Options of the softmax family. */
export interface SoftmaxOptions {
  /** The axis (default -1). */
  dim?: number;
}
const SOFTMAX_KEYS = optionKeys<SoftmaxOptions>()(['dim']);

function dimArg(v: unknown): number {
  if (typeof v !== 'number' || !Number.isInteger(v)) typeError('dim', 'an integer', v);
  return v;
}
/** Softmax along `dim` (default -1). */
export function* softmax(x: Tensor, opts: SoftmaxOptions = {}): Program<Tensor> {
  checkKeys('softmax options', opts, SOFTMAX_KEYS);
  return yield* call1('softmax', [tensorArg('x', x)], { dim: dimArg(opts.dim ?? -1) });
}
/** Log-softmax along `dim` (default -1). */
export function* logSoftmax(x: Tensor, opts: SoftmaxOptions = {}): Program<Tensor> {
  checkKeys('logSoftmax options', opts, SOFTMAX_KEYS);
  return yield* call1('log_softmax', [tensorArg('x', x)], { dim: dimArg(opts.dim ?? -1) });
}
/** Backward of {@link softmax} from its output `y`: `y * (gy - sum(gy * y))`. */
export function* softmaxBackward(y: Tensor, gy: Tensor, opts: SoftmaxOptions = {}): Program<Tensor> {
  checkKeys('softmaxBackward options', opts, SOFTMAX_KEYS);
  return yield* call1('softmax_backward', [tensorArg('y', y), tensorArg('gy', gy)], { dim: dimArg(opts.dim ?? -1) });
}
/** Backward of {@link logSoftmax} from its output `y`: `gy - exp(y) * sum(gy)`. */
export function* logSoftmaxBackward(y: Tensor, gy: Tensor, opts: SoftmaxOptions = {}): Program<Tensor> {
  checkKeys('logSoftmaxBackward options', opts, SOFTMAX_KEYS);
  return yield* call1('log_softmax_backward', [tensorArg('y', y), tensorArg('gy', gy)], {
    dim: dimArg(opts.dim ?? -1),
  });
}

// ---- losses --------------------------------------------------------------------------------------

export interface CrossEntropyOptions {
  /** torch label smoothing in [0, 1] (default 0). */
  labelSmoothing?: number;
  /** Target value whose rows are skipped (default -100). */
  ignoreIndex?: number;
  /** 'mean' (over non-ignored rows, default), 'sum' or 'none' ([N]). */
  reduction?: Reduction;
}
const CROSS_ENTROPY_KEYS = optionKeys<CrossEntropyOptions>()(['labelSmoothing', 'ignoreIndex', 'reduction']);
/** Options of the losses that take only a reduction. */
export interface ReductionOptions {
  /** 'mean' (default), 'sum' or 'none'. */
  reduction?: Reduction;
}
const REDUCTION_KEYS = optionKeys<ReductionOptions>()(['reduction']);
/** Options of {@link klDivSoftmax} / {@link klDivSoftmaxBackward}. */
export interface KlDivOptions {
  /** Softmax temperature T > 0 (default 1). */
  temperature?: number;
}
const KL_DIV_KEYS = optionKeys<KlDivOptions>()(['temperature']);
function ceAttrs(opts: CrossEntropyOptions) {
  const ls = finiteNum('labelSmoothing', opts.labelSmoothing ?? 0, 0);
  if (ls > 1) rangeError('labelSmoothing', 'a number in [0, 1]', ls);
  const ii = opts.ignoreIndex ?? -100;
  if (!Number.isInteger(ii)) typeError('ignoreIndex', 'an integer', ii);
  return { label_smoothing: ls, ignore_index: ii, reduction: oneOf('reduction', opts.reduction ?? 'mean', REDUCTIONS) };
}

/** Cross entropy of `logits [N, C]` against class `target` (int64 [N]), torch semantics. */
export function* crossEntropy(logits: Tensor, target: Tensor, opts: CrossEntropyOptions = {}): Program<Tensor> {
  checkKeys('crossEntropy options', opts, CROSS_ENTROPY_KEYS);
  return yield* call1('cross_entropy', [tensorArg('logits', logits), tensorArg('target', target)], ceAttrs(opts));
}
/** Backward of {@link crossEntropy}: the gradient wrt the logits. */
export function* crossEntropyBackward(
  logits: Tensor,
  target: Tensor,
  gloss: Tensor,
  opts: CrossEntropyOptions = {},
): Program<Tensor> {
  checkKeys('crossEntropyBackward options', opts, CROSS_ENTROPY_KEYS);
  return yield* call1(
    'cross_entropy_backward',
    [tensorArg('logits', logits), tensorArg('target', target), tensorArg('gloss', gloss)],
    ceAttrs(opts),
  );
}
/** Cross entropy against probability targets `probs [N, C]` (mean divides by N). */
export function* softCrossEntropy(logits: Tensor, probs: Tensor, opts: ReductionOptions = {}): Program<Tensor> {
  checkKeys('softCrossEntropy options', opts, REDUCTION_KEYS);
  return yield* call1('soft_cross_entropy', [tensorArg('logits', logits), tensorArg('probs', probs)], {
    reduction: oneOf('reduction', opts.reduction ?? 'mean', REDUCTIONS),
  });
}
/** Backward of {@link softCrossEntropy}: `[glogits, gprobs]`. */
export function* softCrossEntropyBackward(
  logits: Tensor,
  probs: Tensor,
  gloss: Tensor,
  opts: ReductionOptions = {},
): Program<[Tensor, Tensor]> {
  checkKeys('softCrossEntropyBackward options', opts, REDUCTION_KEYS);
  const out = yield* call(
    'soft_cross_entropy_backward',
    [tensorArg('logits', logits), tensorArg('probs', probs), tensorArg('gloss', gloss)],
    {
      reduction: oneOf('reduction', opts.reduction ?? 'mean', REDUCTIONS),
    },
  );
  return [out[0]!, out[1]!];
}
/**
 * Distillation KL: `KL(softmax(teacher/T) || softmax(student/T))`, summed over classes and
 * averaged over rows (batchmean). Multiply by T^2 yourself (MergeVQ: T = 4, x16).
 */
export function* klDivSoftmax(student: Tensor, teacher: Tensor, opts: KlDivOptions = {}): Program<Tensor> {
  checkKeys('klDivSoftmax options', opts, KL_DIV_KEYS);
  const temperature = finiteNum('temperature', opts.temperature ?? 1, 0);
  if (temperature === 0) rangeError('temperature', 'a number > 0', temperature);
  return yield* call1('kl_div_softmax', [tensorArg('student', student), tensorArg('teacher', teacher)], {
    temperature,
  });
}
/** Backward of {@link klDivSoftmax} wrt the student logits. */
export function* klDivSoftmaxBackward(
  student: Tensor,
  teacher: Tensor,
  gloss: Tensor,
  opts: KlDivOptions = {},
): Program<Tensor> {
  checkKeys('klDivSoftmaxBackward options', opts, KL_DIV_KEYS);
  const temperature = finiteNum('temperature', opts.temperature ?? 1, 0);
  if (temperature === 0) rangeError('temperature', 'a number > 0', temperature);
  return yield* call1(
    'kl_div_softmax_backward',
    [tensorArg('student', student), tensorArg('teacher', teacher), tensorArg('gloss', gloss)],
    { temperature },
  );
}
/** Mean/sum/none of `|a - b|`. */
export function* l1Loss(a: Tensor, b: Tensor, opts: ReductionOptions = {}): Program<Tensor> {
  checkKeys('l1Loss options', opts, REDUCTION_KEYS);
  return yield* call1('l1_loss', [tensorArg('a', a), tensorArg('b', b)], {
    reduction: oneOf('reduction', opts.reduction ?? 'mean', REDUCTIONS),
  });
}
/** Backward of {@link l1Loss}: `[ga, gb]` (sign(0) = 0). */
export function* l1LossBackward(
  a: Tensor,
  b: Tensor,
  gloss: Tensor,
  opts: ReductionOptions = {},
): Program<[Tensor, Tensor]> {
  checkKeys('l1LossBackward options', opts, REDUCTION_KEYS);
  const out = yield* call('l1_loss_backward', [tensorArg('a', a), tensorArg('b', b), tensorArg('gloss', gloss)], {
    reduction: oneOf('reduction', opts.reduction ?? 'mean', REDUCTIONS),
  });
  return [out[0]!, out[1]!];
}
/** Mean/sum/none of `(a - b)^2`. */
export function* mseLoss(a: Tensor, b: Tensor, opts: ReductionOptions = {}): Program<Tensor> {
  checkKeys('mseLoss options', opts, REDUCTION_KEYS);
  return yield* call1('mse_loss', [tensorArg('a', a), tensorArg('b', b)], {
    reduction: oneOf('reduction', opts.reduction ?? 'mean', REDUCTIONS),
  });
}
/** Backward of {@link mseLoss}: `[ga, gb]`. */
export function* mseLossBackward(
  a: Tensor,
  b: Tensor,
  gloss: Tensor,
  opts: ReductionOptions = {},
): Program<[Tensor, Tensor]> {
  checkKeys('mseLossBackward options', opts, REDUCTION_KEYS);
  const out = yield* call('mse_loss_backward', [tensorArg('a', a), tensorArg('b', b), tensorArg('gloss', gloss)], {
    reduction: oneOf('reduction', opts.reduction ?? 'mean', REDUCTIONS),
  });
  return [out[0]!, out[1]!];
}
