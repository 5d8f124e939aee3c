/**
 * Pooling ops as op-program generators: 2-D max pooling (torch `max_pool2d` semantics with
 * `return_indices`, floor mode, no dilation) and its backward.
 *
 * ```ts
 * const [y, indices] = runSync(maxPool2d(x, { kernel: 2 }));           // VGG's MaxPool2d(2, 2)
 * const gx = runSync(maxPool2dBackward(gy, indices, { inputShape: x.shape }));
 * ```
 *
 * Ties pick the first maximum in row-major window order (as torch does); a NaN in a window
 * propagates. Under a recording `Tape` the gradient goes to the chosen element only.
 */
import { tensorArg } from './args.js';
import { call, call1, type Program } from '../graph.js';
import type { Tensor } from '../tensor.js';
import { checkKeys, optionKeys, rangeError, typeError } from '../errors.js';

/** An int or [h, w] pair, each >= min. */
function pairArg(name: string, v: unknown, min: number): [number, number] {
  const arr = typeof v === 'number' ? [v, v] : v;
  if (!Array.isArray(arr) || arr.length !== 2) typeError(name, 'an integer or an [h, w] pair of integers', v);
  for (const x of arr) {
    if (typeof x !== 'number' || !Number.isInteger(x)) typeError(name, 'an integer or an [h, w] pair of integers', v);
    if (x < min) rangeError(name, `integers >= ${min}`, x);
  }
  return [arr[0] as number, arr[1] as number];
}

/** Options of {@link maxPool2d}. */
export interface MaxPool2dOptions {
  /** Window size, an int or [h, w] (>= 1). */
  kernel: number | readonly [number, number];
  /** Step between windows, an int or [h, w] (default: the kernel, as torch). */
  stride?: number | readonly [number, number];
  /** Implicit -inf padding on each side, an int or [h, w], at most half the kernel (default 0). */
  padding?: number | readonly [number, number];
}
const MAX_POOL2D_KEYS = optionKeys<MaxPool2dOptions>()(['kernel', 'stride', 'padding']);

/** The validated native attributes of a max pool (`kernel`, `stride`, `padding` as [h, w] pairs). */
export interface MaxPool2dAttrs {
  kernel: [number, number];
  stride: [number, number];
  padding: [number, number];
}

/** Checks `opts` and fills the defaults. @throws TypeError / RangeError naming the bad option. */
export function maxPool2dAttrs(opts: MaxPool2dOptions): MaxPool2dAttrs {
  return poolAttrs(opts, 'maxPool2dAttrs options');
}

/** {@link maxPool2dAttrs}, naming the entry point `name` in an unknown-option error. */
function poolAttrs(opts: MaxPool2dOptions, name: string): MaxPool2dAttrs {
  if (opts === null || typeof opts !== 'object')
    typeError('opts', 'an object with kernel (and optional stride, padding)', opts);
  checkKeys(name, opts, MAX_POOL2D_KEYS);
  if (opts.kernel === undefined) typeError('opts.kernel', 'an integer or an [h, w] pair of integers', opts.kernel);
  const kernel = pairArg('opts.kernel', opts.kernel, 1);
  const stride = opts.stride === undefined ? kernel : pairArg('opts.stride', opts.stride, 1);
  const padding = opts.padding === undefined ? ([0, 0] as [number, number]) : pairArg('opts.padding', opts.padding, 0);
  if (2 * padding[0] > kernel[0] || 2 * padding[1] > kernel[1])
    rangeError(
      'opts.padding',
      `at most half the kernel ([${Math.floor(kernel[0] / 2)}, ${Math.floor(kernel[1] / 2)}])`,
      `[${padding.join(', ')}]`,
    );
  return { kernel, stride, padding };
}

/**
 * Output spatial size [Ho, Wo] of a max pool over an `[H, W]` input:
 * `floor((H + 2 ph - kh) / sh) + 1` (floor mode).
 * @throws RangeError when the kernel does not fit the padded input.
 */
export function maxPool2dOutputSize(inputHW: readonly [number, number], opts: MaxPool2dOptions): [number, number] {
  const { kernel, stride, padding } = poolAttrs(opts, 'maxPool2dOutputSize options');
  const out: number[] = [];
  for (let d = 0; d < 2; ++d) {
    const extent = inputHW[d]! + 2 * padding[d]! - kernel[d]!;
    if (!(inputHW[d]! >= 1) || extent < 0)
      rangeError(
        'input size',
        `at least ${Math.max(1, kernel[d]! - 2 * padding[d]!)} along ${d === 0 ? 'H' : 'W'} for kernel ${kernel[d]} with padding ${padding[d]}`,
        inputHW[d],
      );
    out.push(Math.floor(extent / stride[d]!) + 1);
  }
  return [out[0]!, out[1]!];
}

/**
 * Max pooling of `x [B, C, H, W]` (float32). Returns `[y [B, C, Ho, Wo], indices int64 [B, C, Ho, Wo]]`,
 * where `indices` holds, per output, the flat position `ih * W + iw` of the chosen element in its
 * `[H, W]` plane (torch's `return_indices=True`).
 */
export function* maxPool2d(x: Tensor, opts: MaxPool2dOptions): Program<[Tensor, Tensor]> {
  tensorArg('x', x);
  const attrs = poolAttrs(opts, 'maxPool2d options');
  const out = yield* call('max_pool2d', [x], { ...attrs });
  return [out[0]!, out[1]!];
}

/** Options of {@link maxPool2dBackward}. */
export interface MaxPool2dBackwardOptions {
  /** The forward input's shape [B, C, H, W]. */
  inputShape: readonly number[];
}
const MAX_POOL2D_BACKWARD_KEYS = optionKeys<MaxPool2dBackwardOptions>()(['inputShape']);

/**
 * Gradient of {@link maxPool2d} with respect to its input: each `gy` element is added at its
 * recorded index (overlapping windows accumulate). `indices` is the forward's int64 (or int32)
 * output; every index is checked against `[0, H*W)` before anything is written.
 */
export function* maxPool2dBackward(gy: Tensor, indices: Tensor, opts: MaxPool2dBackwardOptions): Program<Tensor> {
  checkKeys('maxPool2dBackward options', opts, MAX_POOL2D_BACKWARD_KEYS);
  tensorArg('gy', gy);
  tensorArg('indices', indices);
  if (indices.dtype !== 'int64' && indices.dtype !== 'int32')
    typeError('indices', 'an int64 or int32 Tensor', indices.dtype);
  const shape = opts?.inputShape;
  if (!Array.isArray(shape) || shape.length !== 4 || shape.some((s) => !Number.isInteger(s) || s < 0))
    typeError('opts.inputShape', 'the input shape [B, C, H, W] (non-negative integers)', shape);
  return yield* call1('max_pool2d_backward', [gy, indices], { shape: [...shape] });
}
