/**
 * Linear algebra ops: matmul, linear, conv2d and their backward forms, as op-program generators
 * (`yield*` them inside a program, or run one with `runSync`).
 *
 * ```ts
 * const y = runSync(linear(x, w, b));
 * const [gx, gw, gb] = runSync(linearBackward(x, w, gy, { hasBias: true }));
 * ```
 */
import { optTensor, tensorArg } from './args.js';
import { call, call1, runSync, type Program } from '../graph.js';
import type { Tensor } from '../tensor.js';
import { checkKeys, optionKeys, typeError, rangeError } from '../errors.js';

function boolArg(name: string, v: unknown, dflt: boolean): boolean {
  if (v === undefined) return dflt;
  if (typeof v !== 'boolean') typeError(name, 'a boolean', v);
  return v;
}
function numArg(name: string, v: unknown, dflt: number): number {
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || !Number.isFinite(v)) typeError(name, 'a finite number', v);
  return v;
}
/** An int or [h, w] pair, each >= min. */
function pairArg(name: string, v: unknown, dflt: number, min: number): [number, number] {
  if (v === undefined) return [dflt, dflt];
  const arr = typeof v === 'number' ? [v, v] : v;
  if (!Array.isArray(arr) || arr.length !== 2) typeError(name, 'an integer or an [h, w] pair of integers', v);
  for (const x of arr) {
    if (typeof x !== 'number' || !Number.isInteger(x)) typeError(name, 'an integer or an [h, w] pair of integers', v);
    if (x < min) rangeError(name, `integers >= ${min}`, x);
  }
  return [arr[0] as number, arr[1] as number];
}

export interface MatmulOptions {
  /** Use a^T (a stored [..., K, M]). */
  transA?: boolean;
  /** Use b^T (b stored [..., N, K]). */
  transB?: boolean;
  /** Scale of the product (default 1). */
  alpha?: number;
}
const MATMUL_KEYS = optionKeys<MatmulOptions>()(['transA', 'transB', 'alpha']);

/**
 * alpha * op(a) @ op(b): a [..., M, K], b [..., K, N] -> [..., M, N]. Batch dims broadcast (b may
 * be 2-D and shared by a whole batch). Transposed views (e.g. from `permute`) are used in place.
 */
export function* matmul(a: Tensor, b: Tensor, opts: MatmulOptions = {}): Program<Tensor> {
  checkKeys('matmul options', opts, MATMUL_KEYS);
  tensorArg('a', a);
  tensorArg('b', b);
  return yield* call1('matmul', [a, b], {
    trans_a: boolArg('opts.transA', opts.transA, false),
    trans_b: boolArg('opts.transB', opts.transB, false),
    alpha: numArg('opts.alpha', opts.alpha, 1),
  });
}

/** Gradients of `matmul(a, b, opts)` given the output gradient gy: [ga, gb] shaped like a and b. */
export function* matmulBackward(a: Tensor, b: Tensor, gy: Tensor, opts: MatmulOptions = {}): Program<[Tensor, Tensor]> {
  checkKeys('matmulBackward options', opts, MATMUL_KEYS);
  tensorArg('a', a);
  tensorArg('b', b);
  tensorArg('gy', gy);
  const [ga, gb] = yield* call('matmul_backward', [a, b, gy], {
    trans_a: boolArg('opts.transA', opts.transA, false),
    trans_b: boolArg('opts.transB', opts.transB, false),
    alpha: numArg('opts.alpha', opts.alpha, 1),
  });
  return [ga!, gb!];
}

/** x @ w^T + bias, like torch.nn.functional.linear: x [..., K], w [N, K], bias [N] -> [..., N]. */
export function* linear(x: Tensor, w: Tensor, bias?: Tensor | null): Program<Tensor> {
  tensorArg('x', x);
  tensorArg('w', w);
  return yield* call1('linear', [x, w, optTensor('bias', bias)]);
}

/** Options of {@link linearBackward}. */
export interface LinearBackwardOptions {
  /** Compute the bias gradient (default false). */
  hasBias?: boolean;
}
const LINEAR_BACKWARD_KEYS = optionKeys<LinearBackwardOptions>()(['hasBias']);

/** Gradients of `linear`: [gx, gw, gbias] (gbias null unless hasBias). */
export function* linearBackward(
  x: Tensor,
  w: Tensor,
  gy: Tensor,
  opts: LinearBackwardOptions = {},
): Program<[Tensor, Tensor, Tensor | null]> {
  checkKeys('linearBackward options', opts, LINEAR_BACKWARD_KEYS);
  tensorArg('x', x);
  tensorArg('w', w);
  tensorArg('gy', gy);
  const out = yield* call('linear_backward', [x, w, gy], { has_bias: boolArg('opts.hasBias', opts.hasBias, false) });
  return [out[0]!, out[1]!, out[2] ?? null];
}

export interface Conv2dOptions {
  /** Stride, an int or [h, w] (default 1). */
  stride?: number | [number, number];
  /** Zero padding on each side, an int or [h, w] (default 0). */
  padding?: number | [number, number];
  /** Channel groups (default 1; groups = C is depthwise). */
  groups?: number;
}
const CONV2D_KEYS = optionKeys<Conv2dOptions>()(['stride', 'padding', 'groups']);

/** Options of {@link conv2dBackward}: the forward's, plus whether to compute the bias gradient. */
export interface Conv2dBackwardOptions extends Conv2dOptions {
  /** Compute the bias gradient (default false). */
  hasBias?: boolean;
}
const CONV2D_BACKWARD_KEYS = optionKeys<Conv2dBackwardOptions>()([...CONV2D_KEYS, 'hasBias']);

function convAttrs(opts: Conv2dOptions): { stride: number[]; padding: number[]; groups: number } {
  const groups = opts.groups ?? 1;
  if (typeof groups !== 'number' || !Number.isInteger(groups)) typeError('opts.groups', 'an integer', groups);
  if (groups < 1) rangeError('opts.groups', 'an integer >= 1', groups);
  return {
    stride: pairArg('opts.stride', opts.stride, 1, 1),
    padding: pairArg('opts.padding', opts.padding, 0, 0),
    groups,
  };
}

/** 2-D convolution (cross-correlation, NCHW): x [B, C, H, W], w [O, C/groups, kh, kw], bias [O]. */
export function* conv2d(x: Tensor, w: Tensor, bias?: Tensor | null, opts: Conv2dOptions = {}): Program<Tensor> {
  checkKeys('conv2d options', opts, CONV2D_KEYS);
  tensorArg('x', x);
  tensorArg('w', w);
  return yield* call1('conv2d', [x, w, optTensor('bias', bias)], convAttrs(opts));
}

/** Gradients of `conv2d`: [gx, gw, gbias] (gbias null unless hasBias). */
export function* conv2dBackward(
  x: Tensor,
  w: Tensor,
  gy: Tensor,
  opts: Conv2dBackwardOptions = {},
): Program<[Tensor, Tensor, Tensor | null]> {
  checkKeys('conv2dBackward options', opts, CONV2D_BACKWARD_KEYS);
  tensorArg('x', x);
  tensorArg('w', w);
  tensorArg('gy', gy);
  const out = yield* call('conv2d_backward', [x, w, gy], {
    ...convAttrs(opts),
    has_bias: boolArg('opts.hasBias', opts.hasBias, false),
  });
  return [out[0]!, out[1]!, out[2] ?? null];
}

/** The sgemm micro-kernel this process runs: 'avx512' (6x32) or 'avx2' (6x16; forced by MERGEVQ_SIMD=avx2). */
export function gemmKernel(): { name: 'avx512' | 'avx2'; nr: number } {
  const t = runSync(call1('gemm_kernel', []));
  const [nr, avx512] = t.toArray<'int32'>();
  t.dispose();
  return { name: avx512 ? 'avx512' : 'avx2', nr: nr! };
}
