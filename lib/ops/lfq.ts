/**
 * LFQ (lookup-free quantization) ops: sign codes, bit indices (least-significant bit = channel 0),
 * token factorization, and the entropy / commitment losses with their gradients.
 *
 * The entropy losses are computed exactly through the bit factorization of the reference's
 * softmax over all 2^d codes (docs/model.md, "LFQ quantizer"), so memory stays O(N 2^(d/2) + 2^d), never O(N 2^d).
 */
import { tensorArg } from './args.js';
import { call, call1, type Program } from '../graph.js';
import type { Tensor } from '../tensor.js';
import { checkInt, checkKeys, optionKeys, rangeError, typeError } from '../errors.js';

function checkTemperature(t: number): number {
  if (typeof t !== 'number' || !(t > 0) || !Number.isFinite(t))
    rangeError('temperature', 'a positive finite number', t);
  return t;
}

/** Options of {@link lfqQuantize}. */
export interface LfqQuantizeOptions {
  /** The channel axis (default 1). */
  dim?: number;
}
const LFQ_QUANTIZE_KEYS = optionKeys<LfqQuantizeOptions>()(['dim']);

/**
 * Sign-quantizes `z` along the channel axis `dim` (1 for images [B, d, H, W], -1 for rows [N, d]).
 * Returns `codes` (float32, same shape, +1 where z > 0 else -1) and `indices` (int64, the shape
 * without `dim`, index = sum_j 2^j [z_j > 0]).
 */
export function* lfqQuantize(z: Tensor, opts: LfqQuantizeOptions = {}): Program<{ codes: Tensor; indices: Tensor }> {
  checkKeys('lfqQuantize options', opts, LFQ_QUANTIZE_KEYS);
  tensorArg('z', z);
  const dim = checkInt('dim', opts.dim ?? 1, -z.ndim, z.ndim - 1);
  const [codes, indices] = yield* call('lfq_quantize', [z], { dim });
  return { codes: codes!, indices: indices! };
}

/** Options of {@link lfqIndicesToCodes}. */
export interface LfqIndicesToCodesOptions {
  /** Code width d (1 to 62). */
  bits: number;
  /** Where the bits axis is inserted (default 1). */
  dim?: number;
}
const LFQ_INDICES_TO_CODES_KEYS = optionKeys<LfqIndicesToCodesOptions>()(['bits', 'dim']);

/** Codes (+1/-1, float32) of int64 `indices`, with the `bits` axis inserted at `dim` (default 1). */
export function* lfqIndicesToCodes(indices: Tensor, opts: LfqIndicesToCodesOptions): Program<Tensor> {
  checkKeys('lfqIndicesToCodes options', opts, LFQ_INDICES_TO_CODES_KEYS);
  tensorArg('indices', indices);
  const bits = checkInt('bits', opts.bits, 1, 62);
  const dim = checkInt('dim', opts.dim ?? 1, -(indices.ndim + 1), indices.ndim);
  return yield* call1('lfq_indices_to_codes', [indices], { bits, dim });
}

function checkBits(bits: readonly number[]): [number, number] {
  if (!Array.isArray(bits) || bits.length !== 2) typeError('bits', 'a pair [b0, b1]', bits);
  return [checkInt('bits[0]', bits[0], 1, 61), checkInt('bits[1]', bits[1], 1, 61)];
}

/** Splits indices into sub-tokens: pre = bits 0..b0-1, post = bits b0..b0+b1-1. */
export function* lfqFactorize(
  indices: Tensor,
  bits: readonly [number, number],
): Program<{ pre: Tensor; post: Tensor }> {
  tensorArg('indices', indices);
  const [pre, post] = yield* call('lfq_factorize', [indices], { bits: checkBits(bits) });
  return { pre: pre!, post: post! };
}

/** Inverse of {@link lfqFactorize}: pre + 2^b0 post. */
export function* lfqUnfactorize(pre: Tensor, post: Tensor, bits: readonly [number, number]): Program<Tensor> {
  tensorArg('pre', pre);
  tensorArg('post', post);
  return yield* call1('lfq_unfactorize', [pre, post], { bits: checkBits(bits) });
}

/** Entropy terms of the reference's LFQ loss. `avgProbs` is pbar over the 2^d codes. */
export interface LfqEntropy {
  perSample: Tensor;
  codebook: Tensor;
  avgProbs: Tensor;
}

/** Options of {@link lfqEntropy}. */
export interface LfqEntropyOptions {
  /** Softmax temperature T (default 0.01). */
  temperature?: number;
  /** The code axis (default -1). */
  dim?: number;
}
const LFQ_ENTROPY_KEYS = optionKeys<LfqEntropyOptions>()(['temperature', 'dim']);

/** Options of {@link lfqEntropyBackward}: the forward's, plus its `avgProbs`. */
export interface LfqEntropyBackwardOptions extends LfqEntropyOptions {
  avgProbs?: Tensor;
}
const LFQ_ENTROPY_BACKWARD_KEYS = optionKeys<LfqEntropyBackwardOptions>()(['temperature', 'dim', 'avgProbs']);

/**
 * Per-sample and codebook entropy of p = softmax(2 z.c / T) over all 2^d codes, rows along every
 * axis but `dim` (default -1: z is [N, d]). aux loss = perSample - codebook (weights 1, 1).
 */
export function* lfqEntropy(z: Tensor, opts: LfqEntropyOptions = {}): Program<LfqEntropy> {
  checkKeys('lfqEntropy options', opts, LFQ_ENTROPY_KEYS);
  tensorArg('z', z);
  const temperature = checkTemperature(opts.temperature ?? 0.01);
  const dim = checkInt('dim', opts.dim ?? -1, -z.ndim, z.ndim - 1);
  const [perSample, codebook, avgProbs] = yield* call('lfq_entropy', [z], { temperature, dim });
  return { perSample: perSample!, codebook: codebook!, avgProbs: avgProbs! };
}

/**
 * Gradient of g_perSample * perSample + g_codebook * codebook with respect to z. Pass the forward's
 * `avgProbs` to skip recomputing pbar.
 */
export function* lfqEntropyBackward(
  z: Tensor,
  gPerSample: Tensor,
  gCodebook: Tensor,
  opts: LfqEntropyBackwardOptions = {},
): Program<Tensor> {
  checkKeys('lfqEntropyBackward options', opts, LFQ_ENTROPY_BACKWARD_KEYS);
  tensorArg('z', z);
  const temperature = checkTemperature(opts.temperature ?? 0.01);
  const dim = checkInt('dim', opts.dim ?? -1, -z.ndim, z.ndim - 1);
  return yield* call1('lfq_entropy_backward', [z, gPerSample, gCodebook, opts.avgProbs ?? null], { temperature, dim });
}

/** Commitment loss mean (z - code)^2 (the code is a constant: straight-through). */
export function* lfqCommitment(z: Tensor): Program<Tensor> {
  tensorArg('z', z);
  return yield* call1('lfq_commitment', [z]);
}

/** Gradient of g * commitment with respect to z: g * 2 (z - code) / numel. */
export function* lfqCommitmentBackward(z: Tensor, g: Tensor): Program<Tensor> {
  tensorArg('z', z);
  return yield* call1('lfq_commitment_backward', [z, g]);
}
