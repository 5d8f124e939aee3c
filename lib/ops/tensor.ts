/**
 * Tensor ops as op-program generators: element-wise arithmetic (NumPy broadcasting), reductions,
 * indexing, layout and 2D RoPE, with the backward helpers autograd composes. All compute in
 * float32 unless noted; index tensors may be int64 or int32.
 *
 * ```ts
 * const y = runSync(add(x, bias));       // bias [1, C, 1, 1] broadcast over [B, C, H, W]
 * ```
 */
import { tensorArg } from './args.js';
import { call, call1, type Program } from '../graph.js';
import { Tensor } from '../tensor.js';
import { checkInt, checkKeys, optionKeys, rangeError, typeError } from '../errors.js';

function intArray(name: string, v: unknown): number[] {
  if (!Array.isArray(v)) typeError(name, 'an array of integers', v);
  for (const [i, d] of (v as unknown[]).entries()) checkInt(`${name}[${i}]`, d);
  return v as number[];
}
function finite(name: string, v: unknown): number {
  if (typeof v !== 'number' || Number.isNaN(v)) typeError(name, 'a number', v);
  return v as number;
}

// ---------------------------------------------------------------- binary (broadcasting)

/** a + alpha * b with NumPy broadcasting. */
export function* add(a: Tensor, b: Tensor, alpha = 1): Program<Tensor> {
  return yield* call1(
    'add',
    [tensorArg('a', a), tensorArg('b', b)],
    alpha === 1 ? undefined : { alpha: finite('alpha', alpha) },
  );
}
/** a - alpha * b with NumPy broadcasting. */
export function* sub(a: Tensor, b: Tensor, alpha = 1): Program<Tensor> {
  return yield* call1(
    'sub',
    [tensorArg('a', a), tensorArg('b', b)],
    alpha === 1 ? undefined : { alpha: finite('alpha', alpha) },
  );
}
/** a * b with NumPy broadcasting. */
export function* mul(a: Tensor, b: Tensor): Program<Tensor> {
  return yield* call1('mul', [tensorArg('a', a), tensorArg('b', b)]);
}
/** a / b with NumPy broadcasting. */
export function* div(a: Tensor, b: Tensor): Program<Tensor> {
  return yield* call1('div', [tensorArg('a', a), tensorArg('b', b)]);
}
/** Element-wise maximum (NaN propagates), broadcasting. */
export function* maximum(a: Tensor, b: Tensor): Program<Tensor> {
  return yield* call1('maximum', [tensorArg('a', a), tensorArg('b', b)]);
}
/** Element-wise minimum (NaN propagates), broadcasting. */
export function* minimum(a: Tensor, b: Tensor): Program<Tensor> {
  return yield* call1('minimum', [tensorArg('a', a), tensorArg('b', b)]);
}
/** a + value * b * c, broadcasting all three (optimizer / EMA updates). */
export function* addcmul(a: Tensor, b: Tensor, c: Tensor, value = 1): Program<Tensor> {
  return yield* call1('addcmul', [tensorArg('a', a), tensorArg('b', b), tensorArg('c', c)], {
    value: finite('value', value),
  });
}
/** cond (uint8) != 0 ? a : b, broadcasting all three; a and b share a dtype. */
export function* where(cond: Tensor, a: Tensor, b: Tensor): Program<Tensor> {
  if (tensorArg('cond', cond).dtype !== 'uint8') typeError('cond', 'a uint8 Tensor', cond.dtype);
  return yield* call1('where', [cond, tensorArg('a', a), tensorArg('b', b)]);
}

// ---------------------------------------------------------------- scalar and unary

/** x * mul + add. */
export function* scale(x: Tensor, mul = 1, addend = 0): Program<Tensor> {
  return yield* call1('scale', [tensorArg('x', x)], { mul: finite('mul', mul), add: finite('add', addend) });
}
/** x ** p. */
export function* powScalar(x: Tensor, p: number): Program<Tensor> {
  return yield* call1('pow_scalar', [tensorArg('x', x)], { p: finite('p', p) });
}
/** The unary ops, by name. */
export type UnaryOp = 'neg' | 'exp' | 'log' | 'sqrt' | 'rsqrt' | 'abs' | 'sign' | 'tanh' | 'sigmoid';
const UNARY: readonly UnaryOp[] = ['neg', 'exp', 'log', 'sqrt', 'rsqrt', 'abs', 'sign', 'tanh', 'sigmoid'];
/** Applies one element-wise unary op. */
export function* unary(op: UnaryOp, x: Tensor): Program<Tensor> {
  if (!UNARY.includes(op)) typeError('op', `one of ${UNARY.join(', ')}`, op);
  return yield* call1(op, [tensorArg('x', x)]);
}
export const neg = (x: Tensor) => unary('neg', x);
export const exp = (x: Tensor) => unary('exp', x);
export const log = (x: Tensor) => unary('log', x);
export const sqrt = (x: Tensor) => unary('sqrt', x);
export const rsqrt = (x: Tensor) => unary('rsqrt', x);
export const abs = (x: Tensor) => unary('abs', x);
export const sign = (x: Tensor) => unary('sign', x);
export const tanh = (x: Tensor) => unary('tanh', x);
export const sigmoid = (x: Tensor) => unary('sigmoid', x);

/** Options of {@link clamp} / {@link clampBackward}: the bounds. */
export interface ClampOptions {
  min?: number;
  max?: number;
}
const CLAMP_KEYS = optionKeys<ClampOptions>()(['min', 'max']);

/** Clamps to [min, max] (either bound may be omitted, not both). */
export function* clamp(x: Tensor, opts: ClampOptions): Program<Tensor> {
  checkKeys('clamp options', opts, CLAMP_KEYS);
  if (opts.min === undefined && opts.max === undefined) typeError('opts', 'an object with min and/or max', opts);
  return yield* call1('clamp', [tensorArg('x', x)], { min: opts.min, max: opts.max });
}

/** gy * y * (1 - y), with y = sigmoid(x). */
export function* sigmoidBackward(y: Tensor, gy: Tensor): Program<Tensor> {
  return yield* call1('sigmoid_backward', [tensorArg('y', y), tensorArg('gy', gy)]);
}
/** gy * (1 - y^2), with y = tanh(x). */
export function* tanhBackward(y: Tensor, gy: Tensor): Program<Tensor> {
  return yield* call1('tanh_backward', [tensorArg('y', y), tensorArg('gy', gy)]);
}
/** gy where min <= x <= max, else 0. */
export function* clampBackward(x: Tensor, gy: Tensor, opts: ClampOptions): Program<Tensor> {
  checkKeys('clampBackward options', opts, CLAMP_KEYS);
  return yield* call1('clamp_backward', [tensorArg('x', x), tensorArg('gy', gy)], { min: opts.min, max: opts.max });
}
/** gy * sign(x) (0 at x = 0). */
export function* absBackward(x: Tensor, gy: Tensor): Program<Tensor> {
  return yield* call1('abs_backward', [tensorArg('x', x), tensorArg('gy', gy)]);
}

// ---------------------------------------------------------------- reductions

/** Options of the multi-dim reductions: dims omitted = all dims. */
export interface ReduceOpts {
  dims?: readonly number[];
  keepdim?: boolean;
}
const REDUCE_KEYS = optionKeys<ReduceOpts>()(['dims', 'keepdim']);
/** Options of {@link variance}. */
export interface VarianceOpts extends ReduceOpts {
  /** Bessel's correction (default true). */
  unbiased?: boolean;
}
const VARIANCE_KEYS = optionKeys<VarianceOpts>()([...REDUCE_KEYS, 'unbiased']);
function reduceAttrs(opts: ReduceOpts) {
  return { dims: opts.dims === undefined ? undefined : intArray('dims', opts.dims), keepdim: opts.keepdim ?? false };
}
/** Sum over dims (float64 accumulation). */
export function* sum(x: Tensor, opts: ReduceOpts = {}): Program<Tensor> {
  checkKeys('sum options', opts, REDUCE_KEYS);
  return yield* call1('sum', [tensorArg('x', x)], reduceAttrs(opts));
}
/** Mean over dims. */
export function* mean(x: Tensor, opts: ReduceOpts = {}): Program<Tensor> {
  checkKeys('mean options', opts, REDUCE_KEYS);
  return yield* call1('mean', [tensorArg('x', x)], reduceAttrs(opts));
}
/** Variance over dims (unbiased by default, as torch). */
export function* variance(x: Tensor, opts: VarianceOpts = {}): Program<Tensor> {
  checkKeys('variance options', opts, VARIANCE_KEYS);
  return yield* call1('var', [tensorArg('x', x)], { ...reduceAttrs(opts), unbiased: opts.unbiased ?? true });
}
/** Maximum over dims. */
export function* amax(x: Tensor, opts: ReduceOpts = {}): Program<Tensor> {
  checkKeys('amax options', opts, REDUCE_KEYS);
  return yield* call1('amax', [tensorArg('x', x)], reduceAttrs(opts));
}
/** Minimum over dims. */
export function* amin(x: Tensor, opts: ReduceOpts = {}): Program<Tensor> {
  checkKeys('amin options', opts, REDUCE_KEYS);
  return yield* call1('amin', [tensorArg('x', x)], reduceAttrs(opts));
}
/** Index (int64) of the maximum along one dim; the lowest index wins ties. */
export function* argmax(x: Tensor, dim: number, keepdim = false): Program<Tensor> {
  return yield* call1('argmax', [tensorArg('x', x)], { dim: checkInt('dim', dim), keepdim });
}
/** Gradient of amax: gy split evenly among the tied maxima. */
export function* amaxBackward(x: Tensor, y: Tensor, gy: Tensor, opts: ReduceOpts = {}): Program<Tensor> {
  checkKeys('amaxBackward options', opts, REDUCE_KEYS);
  return yield* call1('amax_backward', [tensorArg('x', x), tensorArg('y', y), tensorArg('gy', gy)], reduceAttrs(opts));
}
/** Sums a broadcast gradient back to `shape`. */
export function* sumTo(g: Tensor, shape: readonly number[]): Program<Tensor> {
  return yield* call1('sum_to', [tensorArg('g', g)], { shape: intArray('shape', shape) });
}
/** Materialized broadcast of x to `shape`. */
export function* expand(x: Tensor, shape: readonly number[]): Program<Tensor> {
  return yield* call1('expand', [tensorArg('x', x)], { shape: intArray('shape', shape) });
}

// ---------------------------------------------------------------- indexing

function indexArg(name: string, t: unknown): Tensor {
  const x = tensorArg(name, t);
  if (x.dtype !== 'int64' && x.dtype !== 'int32') typeError(name, 'an int64 or int32 Tensor', x.dtype);
  return x;
}
/** Rows of x along `dim` at the 1-D indices idx. */
export function* indexSelect(x: Tensor, idx: Tensor, dim: number): Program<Tensor> {
  return yield* call1('index_select', [tensorArg('x', x), indexArg('idx', idx)], { dim: checkInt('dim', dim) });
}
/** Scatter-add of g back to a tensor with `size` entries along `dim`. */
export function* indexSelectBackward(g: Tensor, idx: Tensor, dim: number, size: number): Program<Tensor> {
  return yield* call1('index_select_backward', [tensorArg('g', g), indexArg('idx', idx)], {
    dim: checkInt('dim', dim),
    size: checkInt('size', size, 0),
  });
}
/** weight [V, D] rows at idx [...] -> [..., D]. */
export function* embedding(weight: Tensor, idx: Tensor): Program<Tensor> {
  return yield* call1('embedding', [tensorArg('weight', weight), indexArg('idx', idx)]);
}
/** Gradient of embedding w.r.t. weight: [V, D]. */
export function* embeddingBackward(g: Tensor, idx: Tensor, numEmbeddings: number): Program<Tensor> {
  return yield* call1('embedding_backward', [tensorArg('g', g), indexArg('idx', idx)], {
    num_embeddings: checkInt('numEmbeddings', numEmbeddings, 0),
  });
}
/** torch.gather(x, dim, idx). */
export function* gather(x: Tensor, idx: Tensor, dim: number): Program<Tensor> {
  return yield* call1('gather', [tensorArg('x', x), indexArg('idx', idx)], { dim: checkInt('dim', dim) });
}
/** Gradient of gather w.r.t. x (of `shape`). */
export function* gatherBackward(g: Tensor, idx: Tensor, dim: number, shape: readonly number[]): Program<Tensor> {
  return yield* call1('gather_backward', [tensorArg('g', g), indexArg('idx', idx)], {
    dim: checkInt('dim', dim),
    shape: intArray('shape', shape),
  });
}
/** Options of scatterReduce, as torch.Tensor.scatter_reduce. */
export interface ScatterReduceOpts {
  dim: number;
  reduce: 'sum' | 'mean' | 'amax';
  includeSelf?: boolean;
}
const SCATTER_REDUCE_KEYS = optionKeys<ScatterReduceOpts>()(['dim', 'reduce', 'includeSelf']);
function scatterAttrs(o: ScatterReduceOpts) {
  if (!['sum', 'mean', 'amax'].includes(o.reduce)) rangeError('reduce', "'sum', 'mean' or 'amax'", o.reduce);
  return { dim: checkInt('dim', o.dim), reduce: o.reduce, include_self: o.includeSelf ?? true };
}
/** base.scatter_reduce(dim, idx, src, reduce, include_self) (torch semantics). */
export function* scatterReduce(base: Tensor, idx: Tensor, src: Tensor, opts: ScatterReduceOpts): Program<Tensor> {
  checkKeys('scatterReduce options', opts, SCATTER_REDUCE_KEYS);
  return yield* call1(
    'scatter_reduce',
    [tensorArg('base', base), indexArg('idx', idx), tensorArg('src', src)],
    scatterAttrs(opts),
  );
}
/** Gradients [gBase, gSrc] of scatterReduce for reduce 'sum' / 'mean'. */
export function* scatterReduceBackward(
  base: Tensor,
  idx: Tensor,
  src: Tensor,
  gy: Tensor,
  opts: ScatterReduceOpts,
): Program<[Tensor, Tensor]> {
  checkKeys('scatterReduceBackward options', opts, SCATTER_REDUCE_KEYS);
  const out = yield* call(
    'scatter_reduce_backward',
    [tensorArg('base', base), indexArg('idx', idx), tensorArg('src', src), tensorArg('gy', gy)],
    scatterAttrs(opts),
  );
  return [out[0]!, out[1]!];
}

// ---------------------------------------------------------------- layout (any dtype)

/** Dense copy of x with dims permuted. */
export function* permute(x: Tensor, dims: readonly number[]): Program<Tensor> {
  return yield* call1('permute', [tensorArg('x', x)], { dims: intArray('dims', dims) });
}
/** Concatenation along `dim`. */
export function* concat(xs: readonly Tensor[], dim: number): Program<Tensor> {
  if (!Array.isArray(xs) || xs.length === 0) typeError('xs', 'a non-empty array of Tensors', xs);
  return yield* call1(
    'concat',
    xs.map((t, i) => tensorArg(`xs[${i}]`, t)),
    { dim: checkInt('dim', dim) },
  );
}
/** Splits along `dim` into pieces of `sizes` (dense copies). */
export function* split(x: Tensor, dim: number, sizes: readonly number[]): Program<Tensor[]> {
  return yield* call('split', [tensorArg('x', x)], { dim: checkInt('dim', dim), sizes: intArray('sizes', sizes) });
}
/** x[start:end:step] along `dim` (Python semantics, step >= 1), as a dense copy. */
export function* slice(x: Tensor, dim: number, start = 0, end?: number, step = 1): Program<Tensor> {
  return yield* call1('slice', [tensorArg('x', x)], {
    dim: checkInt('dim', dim),
    start: checkInt('start', start),
    end: end === undefined ? undefined : checkInt('end', end),
    step: checkInt('step', step, 1),
  });
}
/** Pads the last two dims: pad = [left, right, top, bottom] (>= 0), filled with value. */
export function* pad2d(x: Tensor, pad: readonly [number, number, number, number], value = 0): Program<Tensor> {
  const p = intArray('pad', pad);
  if (p.length !== 4) rangeError('pad', '[left, right, top, bottom]', pad);
  return yield* call1('pad2d', [tensorArg('x', x)], { pad: p, value: finite('value', value) });
}
/** [B, C*r*r, H, W] -> [B, C, H*r, W*r] in DCR order (docs/model.md, "Decoder"). */
export function* depthToSpace(x: Tensor, block: number): Program<Tensor> {
  return yield* call1('depth_to_space', [tensorArg('x', x)], { block: checkInt('block', block, 1) });
}
/** [B, C, H*r, W*r] -> [B, C*r*r, H, W]: the inverse of depthToSpace (and its backward). */
export function* spaceToDepth(x: Tensor, block: number): Program<Tensor> {
  return yield* call1('space_to_depth', [tensorArg('x', x)], { block: checkInt('block', block, 1) });
}
/** Reverses the given dims. */
export function* flip(x: Tensor, dims: readonly number[]): Program<Tensor> {
  return yield* call1('flip', [tensorArg('x', x)], { dims: intArray('dims', dims) });
}

// ---------------------------------------------------------------- views (recorded ops)

/** x with a new shape of the same element count: a view when x is contiguous, else a copy. */
export function* reshape(x: Tensor, shape: readonly number[]): Program<Tensor> {
  return yield* call1('reshape', [tensorArg('x', x)], { shape: intArray('shape', shape) });
}
/** Strided view of x with dims permuted (no copy; see {@link permute} for a dense copy). */
export function* permuteView(x: Tensor, dims: readonly number[]): Program<Tensor> {
  return yield* call1('permute_view', [tensorArg('x', x)], { dims: intArray('dims', dims) });
}
/** Strided view of x[start : start + length] along `dim` (no copy). */
export function* narrow(x: Tensor, dim: number, start: number, length: number): Program<Tensor> {
  return yield* call1('narrow', [tensorArg('x', x)], {
    dim: checkInt('dim', dim),
    start: checkInt('start', start, 0),
    length: checkInt('length', length, 0),
  });
}
/** Strided view of x at `index` along `dim`, that dim removed (no copy). */
export function* select(x: Tensor, dim: number, index: number): Program<Tensor> {
  return yield* call1('select', [tensorArg('x', x)], { dim: checkInt('dim', dim), index: checkInt('index', index) });
}

// ---------------------------------------------------------------- RoPE

/** Rotates adjacent channel pairs of x [B, N, H, hd] by freqs [N, hd/2, 2] (cos, sin). */
export function* rope(x: Tensor, freqs: Tensor): Program<Tensor> {
  return yield* call1('rope', [tensorArg('x', x), tensorArg('freqs', freqs)]);
}
/** Gradient of rope: rotation by the negative angle. */
export function* ropeBackward(gy: Tensor, freqs: Tensor): Program<Tensor> {
  return yield* call1('rope_backward', [tensorArg('gy', gy), tensorArg('freqs', freqs)]);
}

/**
 * LlamaGen's `precompute_freqs_cis_2d` as a float32 [clsTokenNum + gridSize^2, hd/2, 2] tensor of
 * (cos, sin). freqs = 1 / base^(arange(0, hd/2, 2)[:hd/4] / (hd/2)); grid cell p = y * gridSize + x
 * uses angle y*freq for its first hd/4 pairs and x*freq for the next hd/4 ([freqs_y, freqs_x]
 * concatenated on the last dim); the first clsTokenNum rows are all zero (cos = sin = 0).
 * Computed with float32 rounding at each step, as torch does.
 */
export function precompute2dFreqs(gridSize: number, hd: number, base = 10000, clsTokenNum = 1): Tensor {
  checkInt('gridSize', gridSize, 1);
  checkInt('hd', hd, 4);
  if (hd % 4 !== 0) rangeError('hd', 'a multiple of 4', hd);
  checkInt('clsTokenNum', clsTokenNum, 0);
  const f = Math.fround;
  const half = hd / 2;
  const quarter = hd / 4;
  const freqs = new Float32Array(quarter);
  for (let k = 0; k < quarter; ++k) freqs[k] = f(1 / f(base ** f((2 * k) / half)));
  const rows = clsTokenNum + gridSize * gridSize;
  const out = new Float32Array(rows * half * 2);
  for (let y = 0; y < gridSize; ++y) {
    for (let x = 0; x < gridSize; ++x) {
      const row = (clsTokenNum + y * gridSize + x) * half * 2;
      for (let k = 0; k < quarter; ++k) {
        const ay = f(y * freqs[k]!);
        const ax = f(x * freqs[k]!);
        out[row + 2 * k] = Math.cos(ay);
        out[row + 2 * k + 1] = Math.sin(ay);
        out[row + 2 * (quarter + k)] = Math.cos(ax);
        out[row + 2 * (quarter + k) + 1] = Math.sin(ax);
      }
    }
  }
  return Tensor.from(out, [rows, half, 2]);
}

// ---------------------------------------------------------------- creation and autograd

/** Options of {@link randomNormal}. */
export interface RandomNormalOpts {
  /** Mean of the draws (default 0). */
  mean?: number;
  /** Standard deviation (default 1, >= 0). */
  std?: number;
  /** Non-negative integer seed; the same seed gives the same tensor on any thread count. */
  seed: number;
  /** Redraw outside mean +- truncate * std (0, the default, draws a plain normal; else >= 0.5). */
  truncate?: number;
}
const RANDOM_NORMAL_KEYS = optionKeys<RandomNormalOpts>()(['mean', 'std', 'seed', 'truncate']);
/** A new float32 tensor of `shape` filled with normal draws (counter-based, deterministic). */
export function* randomNormal(shape: readonly number[], opts: RandomNormalOpts): Program<Tensor> {
  checkKeys('randomNormal options', opts, RANDOM_NORMAL_KEYS);
  const std = finite('std', opts.std ?? 1);
  if (std < 0) rangeError('std', 'a number >= 0', std);
  const truncate = finite('truncate', opts.truncate ?? 0);
  if (truncate !== 0 && !(truncate >= 0.5)) rangeError('truncate', '0 or a number >= 0.5', truncate);
  const seed = checkInt('seed', opts.seed, 0, 2 ** 53 - 1);
  return yield* call1('random_normal', [], {
    shape: intArray('shape', shape),
    mean: finite('mean', opts.mean ?? 0),
    std,
    seed,
    truncate,
  });
}
/** The same values as a new handle; autograd does not differentiate through it. */
export function* detach(x: Tensor): Program<Tensor> {
  return yield* call1('detach', [tensorArg('x', x)]);
}
