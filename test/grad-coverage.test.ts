// Autograd coverage: every registered native op is in exactly one autograd category (a gradient
// rule, non-differentiable, or first-order only), every gradient rule is checked against central
// finite differences of the op itself (a table of wrapper calls: record on a Tape, backward of a
// random weighted sum of the outputs), kinks follow torch's conventions, and differentiating
// through a recorded `*_backward` op fails with ERR_NO_GRAD instead of returning zeros.
import { describe, expect, it } from 'vitest';
import '../lib/index.js'; // every module loaded: a rule registered anywhere counts
import { Tape, defineGrad, defineNonDifferentiable, gradCategories, gradKind, hasGrad } from '../lib/autograd.js';
import { MergeVQError } from '../lib/errors.js';
import { call1, runSync, type Program } from '../lib/graph.js';
import { addon } from '../lib/native.js';
import { attention } from '../lib/ops/attention.js';
import { lfqCommitment, lfqEntropy, lfqQuantize } from '../lib/ops/lfq.js';
import { conv2d, linear, linearBackward, matmul } from '../lib/ops/linalg.js';
import { bipartiteMatch, mergeWavg, unmerge } from '../lib/ops/merge.js';
import {
  batchNorm,
  crossEntropy,
  gelu,
  groupNorm,
  klDivSoftmax,
  l1Loss,
  layerNorm,
  leakyRelu,
  logSoftmax,
  mseLoss,
  rmsNorm,
  silu,
  softCrossEntropy,
  softmax,
  swiglu,
} from '../lib/ops/nn.js';
import { l2Norms } from '../lib/ops/optim.js';
import { maxPool2d } from '../lib/ops/pool.js';
import {
  add,
  addcmul,
  amax,
  amin,
  clamp,
  concat,
  depthToSpace,
  div,
  embedding,
  expand,
  flip,
  gather,
  indexSelect,
  maximum,
  mean,
  minimum,
  mul,
  narrow,
  pad2d,
  permute,
  permuteView,
  powScalar,
  reshape,
  rope,
  scale,
  scatterReduce,
  select,
  slice,
  spaceToDepth,
  split,
  sub,
  sum,
  sumTo,
  unary,
  variance,
  where,
  type ScatterReduceOpts,
  type UnaryOp,
} from '../lib/ops/tensor.js';
import { Tensor } from '../lib/tensor.js';
import { Rng, finiteDiffCheck, seedInfo } from './helpers.js';

// ------------------------------------------------------------------ input draws

const numel = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);
const f32 = (shape: number[], f: (i: number) => number) =>
  Tensor.from(
    Float32Array.from({ length: numel(shape) }, (_, i) => f(i)),
    shape,
  );
/** Normal draws. */
const randn = (rng: Rng, shape: number[], s = 1) => rng.tensor(shape, s);
/** |x| in [lo, hi] with a random sign: away from a kink at 0. */
const away = (rng: Rng, shape: number[], lo = 0.2, hi = 1.5) =>
  f32(shape, () => (rng.next() < 0.5 ? -1 : 1) * rng.uniform(lo, hi));
/** Uniform in [lo, hi]. */
const unif = (rng: Rng, shape: number[], lo: number, hi: number) => f32(shape, () => rng.uniform(lo, hi));
/**
 * Odd (`odd`) or even multiples of 0.05 in [-1, 1]: an odd and an even draw differ by at least 0.05,
 * far more than the finite-difference step, so maximum / minimum / |a - b| never cross a kink.
 */
const lattice = (rng: Rng, shape: number[], odd: boolean) =>
  f32(shape, () => (2 * (rng.int(21) - 10) + (odd ? 1 : 0)) * 0.05);
/** Distinct values (a shuffled grid with gaps of 0.05): no ties for amax / amin / pooling. */
function distinct(rng: Rng, n: number): Float32Array {
  const v = Float32Array.from({ length: n }, (_, i) => (i - n / 2) * 0.05);
  for (let i = n - 1; i > 0; --i) {
    const j = rng.int(i + 1);
    [v[i], v[j]] = [v[j]!, v[i]!];
  }
  return v;
}
const distinctT = (rng: Rng, shape: number[]) => Tensor.from(distinct(rng, numel(shape)), shape);
/** int64 indices in [0, n). */
const ints = (rng: Rng, shape: number[], n: number) =>
  Tensor.from(
    BigInt64Array.from({ length: numel(shape) }, () => BigInt(rng.int(n))),
    shape,
  );
/** Rows of probabilities (a softmax of normal draws). */
function probs(rng: Rng, rows: number, cols: number): Tensor {
  const p = new Float32Array(rows * cols);
  for (let r = 0; r < rows; ++r) {
    let s = 0;
    for (let c = 0; c < cols; ++c) s += p[r * cols + c] = Math.exp(rng.normal());
    for (let c = 0; c < cols; ++c) p[r * cols + c]! /= s;
  }
  return Tensor.from(p, [rows, cols]);
}

// ------------------------------------------------------------------ the table

/** The step for inputs on a lattice / grid with gaps of 0.05: it never crosses a kink or a tie. */
const KINK_EPS = 1e-2;

interface Case {
  name: string;
  /** Draws the inputs (index tensors and other constants included). */
  inputs: (rng: Rng) => Tensor[];
  /** The wrapper call under test; returns the outputs whose random weighted sum is the loss. */
  run: (xs: Tensor[]) => Program<Tensor[]>;
  /** The inputs checked (default: every float32 input). */
  wrt?: number[];
  /**
   * Relative tolerance (default 1e-2) and finite-difference step (default 5e-2; KINK_EPS for
   * inputs drawn on a lattice or grid with gaps of 0.05). The op runs in float32, so the
   * differences carry its rounding (about |y| ulp / eps): over 40 seeds per case the worst error
   * seen was 3e-3 at these steps, while a wrong rule is off by far more.
   */
  tol?: number;
  eps?: number;
}

function* one(p: Program<Tensor>): Program<Tensor[]> {
  return [yield* p];
}
const u = (op: UnaryOp, inputs: (rng: Rng) => Tensor[]): Case => ({
  name: op,
  inputs,
  run: ([x]) => one(unary(op, x!)),
});
const sr = (name: string, opts: ScatterReduceOpts, srcRows = 5): Case => ({
  name,
  inputs: (rng) => {
    // base [4, 3], idx [5, 3] into 4 rows, src [srcRows, 3]; one shuffled grid for base and src
    // so amax never ties
    const v = distinct(rng, 12 + srcRows * 3);
    return [Tensor.from(v.slice(0, 12), [4, 3]), ints(rng, [5, 3], 4), Tensor.from(v.slice(12), [srcRows, 3])];
  },
  run: ([b, i, s]) => one(scatterReduce(b!, i!, s!, opts)),
  eps: KINK_EPS,
});

const CASES: Case[] = [
  // element-wise
  u('neg', (r) => [randn(r, [3, 4])]),
  u('exp', (r) => [randn(r, [3, 4], 0.5)]),
  u('log', (r) => [unif(r, [3, 4], 0.5, 2)]),
  u('sqrt', (r) => [unif(r, [3, 4], 0.5, 2)]),
  u('rsqrt', (r) => [unif(r, [3, 4], 0.5, 2)]),
  u('abs', (r) => [away(r, [3, 4])]),
  u('tanh', (r) => [randn(r, [3, 4])]),
  u('sigmoid', (r) => [randn(r, [3, 4], 2)]),
  { name: 'scale', inputs: (r) => [randn(r, [3, 4])], run: ([x]) => one(scale(x!, 1.7, 0.3)) },
  { name: 'pow_scalar p=3', inputs: (r) => [randn(r, [3, 4])], run: ([x]) => one(powScalar(x!, 3)) },
  { name: 'pow_scalar p=0.5', inputs: (r) => [unif(r, [3, 4], 0.5, 2)], run: ([x]) => one(powScalar(x!, 0.5)) },
  { name: 'pow_scalar p=-1.5', inputs: (r) => [unif(r, [3, 4], 0.5, 2)], run: ([x]) => one(powScalar(x!, -1.5)) },
  { name: 'pow_scalar p=0', inputs: (r) => [randn(r, [3, 4])], run: ([x]) => one(powScalar(x!, 0)) },
  {
    name: 'clamp',
    inputs: (r) => [
      f32([4, 5], () => (r.next() < 0.5 ? -1 : 1) * (r.next() < 0.5 ? r.uniform(0, 0.4) : r.uniform(0.6, 1.5))),
    ],
    run: ([x]) => one(clamp(x!, { min: -0.5, max: 0.5 })),
  },
  { name: 'leaky_relu', inputs: (r) => [away(r, [3, 4])], run: ([x]) => one(leakyRelu(x!, { slope: 0.1 })) },
  { name: 'gelu', inputs: (r) => [randn(r, [3, 4])], run: ([x]) => one(gelu(x!)) },
  { name: 'gelu tanh', inputs: (r) => [randn(r, [3, 4])], run: ([x]) => one(gelu(x!, { approximate: 'tanh' })) },
  { name: 'silu', inputs: (r) => [randn(r, [3, 4])], run: ([x]) => one(silu(x!)) },
  { name: 'swiglu', inputs: (r) => [randn(r, [3, 4]), randn(r, [3, 4])], run: ([a, b]) => one(swiglu(a!, b!)) },
  // broadcasting binary / ternary
  { name: 'add alpha', inputs: (r) => [randn(r, [3, 4]), randn(r, [4])], run: ([a, b]) => one(add(a!, b!, 2)) },
  { name: 'sub alpha', inputs: (r) => [randn(r, [3, 1]), randn(r, [3, 4])], run: ([a, b]) => one(sub(a!, b!, 0.5)) },
  { name: 'mul', inputs: (r) => [randn(r, [2, 3, 4]), randn(r, [3, 1])], run: ([a, b]) => one(mul(a!, b!)) },
  { name: 'div', inputs: (r) => [randn(r, [3, 4]), unif(r, [4], 0.5, 2)], run: ([a, b]) => one(div(a!, b!)) },
  {
    name: 'maximum',
    inputs: (r) => [lattice(r, [3, 4], true), lattice(r, [4], false)],
    run: ([a, b]) => one(maximum(a!, b!)),
    eps: KINK_EPS,
  },
  {
    name: 'minimum',
    inputs: (r) => [lattice(r, [3, 1], false), lattice(r, [3, 4], true)],
    run: ([a, b]) => one(minimum(a!, b!)),
    eps: KINK_EPS,
  },
  {
    name: 'addcmul',
    inputs: (r) => [randn(r, [3, 4]), randn(r, [4]), randn(r, [3, 1])],
    run: ([a, b, c]) => one(addcmul(a!, b!, c!, 0.7)),
  },
  {
    name: 'where',
    inputs: (r) => [Tensor.from(Uint8Array.from([1, 0, 1]), [3, 1]), randn(r, [3, 4]), randn(r, [4])],
    run: ([c, a, b]) => one(where(c!, a!, b!)),
  },
  // reductions and broadcasting
  { name: 'sum dims', inputs: (r) => [randn(r, [3, 4, 5])], run: ([x]) => one(sum(x!, { dims: [1] })) },
  { name: 'sum all', inputs: (r) => [randn(r, [3, 4])], run: ([x]) => one(sum(x!)) },
  {
    name: 'sum keepdim',
    inputs: (r) => [randn(r, [3, 4, 2])],
    run: ([x]) => one(sum(x!, { dims: [-1, 0], keepdim: true })),
  },
  { name: 'mean', inputs: (r) => [randn(r, [3, 4, 5])], run: ([x]) => one(mean(x!, { dims: [0, 2], keepdim: true })) },
  { name: 'var', inputs: (r) => [randn(r, [3, 4, 5])], run: ([x]) => one(variance(x!, { dims: [1] })) },
  { name: 'var biased all', inputs: (r) => [randn(r, [3, 4])], run: ([x]) => one(variance(x!, { unbiased: false })) },
  { name: 'amax', inputs: (r) => [distinctT(r, [3, 4, 5])], run: ([x]) => one(amax(x!, { dims: [1] })), eps: KINK_EPS },
  {
    name: 'amax keepdim',
    inputs: (r) => [distinctT(r, [3, 4, 5])],
    run: ([x]) => one(amax(x!, { dims: [0, 2], keepdim: true })),
    eps: KINK_EPS,
  },
  {
    name: 'amin',
    inputs: (r) => [distinctT(r, [3, 4, 5])],
    run: ([x]) => one(amin(x!, { dims: [-1] })),
    eps: KINK_EPS,
  },
  { name: 'amin all', inputs: (r) => [distinctT(r, [3, 4])], run: ([x]) => one(amin(x!)), eps: KINK_EPS },
  { name: 'expand', inputs: (r) => [randn(r, [4, 1])], run: ([x]) => one(expand(x!, [3, 4, 5])) },
  { name: 'sum_to', inputs: (r) => [randn(r, [3, 4, 5])], run: ([x]) => one(sumTo(x!, [4, 1])) },
  {
    name: 'l2_norms',
    inputs: (r) => [randn(r, [3, 4]), randn(r, [5]), randn(r, [2, 2, 2])],
    run: (xs) => one(l2Norms(xs)),
  },
  // layout and views
  { name: 'permute', inputs: (r) => [randn(r, [3, 4, 5])], run: ([x]) => one(permute(x!, [2, 0, 1])) },
  { name: 'permute_view', inputs: (r) => [randn(r, [3, 4, 5])], run: ([x]) => one(permuteView(x!, [1, 2, 0])) },
  {
    name: 'contiguous',
    inputs: (r) => [randn(r, [3, 4])],
    run: function* ([x]) {
      return [yield* call1('contiguous', [yield* permuteView(x!, [1, 0])])];
    },
  },
  { name: 'reshape', inputs: (r) => [randn(r, [3, 4, 5])], run: ([x]) => one(reshape(x!, [12, 5])) },
  { name: 'select', inputs: (r) => [randn(r, [3, 4, 5])], run: ([x]) => one(select(x!, 1, -2)) },
  { name: 'narrow', inputs: (r) => [randn(r, [3, 4, 5])], run: ([x]) => one(narrow(x!, 2, 1, 3)) },
  { name: 'slice', inputs: (r) => [randn(r, [3, 4, 5])], run: ([x]) => one(slice(x!, 1, 1, 3)) },
  {
    name: 'concat',
    inputs: (r) => [randn(r, [3, 2]), randn(r, [3, 3])],
    run: ([a, b]) => one(concat([a!, b!], -1)),
  },
  { name: 'split', inputs: (r) => [randn(r, [3, 4, 5])], run: ([x]) => split(x!, 1, [1, 3]) },
  {
    name: 'split, one piece used',
    inputs: (r) => [randn(r, [3, 6])],
    run: function* ([x]) {
      return [(yield* split(x!, -1, [2, 1, 3]))[1]!];
    },
  },
  { name: 'flip', inputs: (r) => [randn(r, [3, 4, 5])], run: ([x]) => one(flip(x!, [0, -1])) },
  { name: 'pad2d', inputs: (r) => [randn(r, [2, 3, 4, 5])], run: ([x]) => one(pad2d(x!, [1, 2, 0, 1], 0.5)) },
  { name: 'depth_to_space', inputs: (r) => [randn(r, [1, 8, 2, 3])], run: ([x]) => one(depthToSpace(x!, 2)) },
  { name: 'space_to_depth', inputs: (r) => [randn(r, [1, 2, 4, 6])], run: ([x]) => one(spaceToDepth(x!, 2)) },
  // indexing
  { name: 'gather', inputs: (r) => [randn(r, [3, 5]), ints(r, [3, 4], 5)], run: ([x, i]) => one(gather(x!, i!, 1)) },
  {
    name: 'index_select',
    inputs: (r) => [randn(r, [5, 3]), Tensor.from(Int32Array.from([4, 0, 4, 2]), [4])],
    run: ([x, i]) => one(indexSelect(x!, i!, 0)),
  },
  {
    name: 'index_select last dim',
    inputs: (r) => [randn(r, [2, 5]), ints(r, [6], 5)],
    run: ([x, i]) => one(indexSelect(x!, i!, -1)),
  },
  { name: 'embedding', inputs: (r) => [randn(r, [6, 3]), ints(r, [2, 3], 6)], run: ([w, i]) => one(embedding(w!, i!)) },
  sr('scatter_reduce sum', { dim: 0, reduce: 'sum' }),
  sr('scatter_reduce mean exclude self', { dim: 0, reduce: 'mean', includeSelf: false }),
  sr('scatter_reduce amax', { dim: 0, reduce: 'amax' }),
  sr('scatter_reduce amax exclude self, src larger than idx', { dim: -2, reduce: 'amax', includeSelf: false }, 6),
  {
    name: 'unmerge',
    inputs: (r) => [randn(r, [2, 4, 3]), ints(r, [2, 6], 4)],
    run: ([k, m]) => one(unmerge(k!, m!)),
  },
  {
    name: 'tome_merge',
    inputs: (r) => {
      const d = runSync(bipartiteMatch(randn(r, [2, 6, 3]), { r: 2 }));
      return [randn(r, [2, 6, 3]), unif(r, [2, 6], 1, 3), d.unmIdx, d.srcIdx, d.dstIdx];
    },
    run: function* ([x, s, unmIdx, srcIdx, dstIdx]) {
      return [(yield* mergeWavg(x!, s!, { unmIdx: unmIdx!, srcIdx: srcIdx!, dstIdx: dstIdx! })).x];
    },
    wrt: [0], // sizes are token counts: no gradient by design
  },
  // linear algebra
  {
    name: 'linear',
    inputs: (r) => [randn(r, [3, 4]), randn(r, [5, 4]), randn(r, [5])],
    run: ([x, w, b]) => one(linear(x!, w!, b!)),
  },
  {
    name: 'linear no bias',
    inputs: (r) => [randn(r, [2, 3, 4]), randn(r, [5, 4])],
    run: ([x, w]) => one(linear(x!, w!)),
  },
  {
    name: 'matmul',
    inputs: (r) => [randn(r, [4, 3]), randn(r, [5, 4])],
    run: ([a, b]) => one(matmul(a!, b!, { transA: true, transB: true, alpha: 0.5 })),
  },
  {
    name: 'conv2d',
    inputs: (r) => [randn(r, [1, 4, 5, 5]), randn(r, [6, 2, 3, 3], 0.5), randn(r, [6])],
    run: ([x, w, b]) => one(conv2d(x!, w!, b!, { stride: 2, padding: 1, groups: 2 })),
  },
  {
    name: 'max_pool2d',
    inputs: (r) => [distinctT(r, [1, 2, 5, 5])],
    run: function* ([x]) {
      return [(yield* maxPool2d(x!, { kernel: 3, stride: 2, padding: 1 }))[0]];
    },
    eps: KINK_EPS,
  },
  // normalizations
  {
    name: 'group_norm silu',
    inputs: (r) => [randn(r, [2, 4, 3, 3]), randn(r, [4]), randn(r, [4])],
    run: function* ([x, w, b]) {
      return [(yield* groupNorm(x!, w!, b!, { groups: 2, act: 'silu' }))[0]];
    },
  },
  {
    name: 'group_norm plain',
    inputs: (r) => [randn(r, [2, 4, 5])],
    run: function* ([x]) {
      return [(yield* groupNorm(x!, null, null, { groups: 4 }))[0]];
    },
  },
  {
    name: 'layer_norm',
    inputs: (r) => [randn(r, [3, 6]), randn(r, [6]), randn(r, [6])],
    run: function* ([x, w, b]) {
      return [(yield* layerNorm(x!, w!, b!))[0]];
    },
  },
  {
    name: 'rms_norm',
    inputs: (r) => [randn(r, [3, 6]), randn(r, [6])],
    run: function* ([x, w]) {
      return [(yield* rmsNorm(x!, w!))[0]];
    },
  },
  {
    name: 'batch_norm training',
    inputs: (r) => [randn(r, [4, 3, 2, 2]), randn(r, [3]), randn(r, [3]), randn(r, [3]), unif(r, [3], 0.5, 2)],
    run: function* ([x, w, b, rm, rv]) {
      return [(yield* batchNorm(x!, w!, b!, rm!, rv!, { training: true }))[0]];
    },
    wrt: [0, 1, 2], // running statistics are buffers
  },
  {
    name: 'batch_norm eval',
    inputs: (r) => [randn(r, [4, 3, 2]), randn(r, [3]), randn(r, [3]), randn(r, [3]), unif(r, [3], 0.5, 2)],
    run: function* ([x, w, b, rm, rv]) {
      return [(yield* batchNorm(x!, w!, b!, rm!, rv!))[0]];
    },
    wrt: [0, 1, 2],
  },
  // softmax family and losses
  { name: 'softmax', inputs: (r) => [randn(r, [3, 5])], run: ([x]) => one(softmax(x!)) },
  { name: 'softmax dim 0', inputs: (r) => [randn(r, [3, 5])], run: ([x]) => one(softmax(x!, { dim: 0 })) },
  { name: 'log_softmax', inputs: (r) => [randn(r, [3, 5])], run: ([x]) => one(logSoftmax(x!)) },
  { name: 'log_softmax dim 0', inputs: (r) => [randn(r, [3, 2, 4])], run: ([x]) => one(logSoftmax(x!, { dim: 0 })) },
  {
    name: 'cross_entropy',
    inputs: (r) => [randn(r, [4, 5]), Tensor.from(BigInt64Array.from([3n, -100n, 0n, 4n]), [4])],
    run: ([x, t]) => one(crossEntropy(x!, t!, { labelSmoothing: 0.1 })),
  },
  {
    name: 'cross_entropy none',
    inputs: (r) => [randn(r, [3, 5]), ints(r, [3], 5)],
    run: ([x, t]) => one(crossEntropy(x!, t!, { reduction: 'none' })),
  },
  {
    name: 'soft_cross_entropy',
    inputs: (r) => [randn(r, [3, 5]), probs(r, 3, 5)],
    run: ([x, p]) => one(softCrossEntropy(x!, p!)),
  },
  {
    name: 'soft_cross_entropy none',
    inputs: (r) => [randn(r, [3, 5]), probs(r, 3, 5)],
    run: ([x, p]) => one(softCrossEntropy(x!, p!, { reduction: 'none' })),
  },
  {
    name: 'kl_div_softmax',
    inputs: (r) => [randn(r, [3, 5]), randn(r, [3, 5])],
    run: ([s, t]) => one(klDivSoftmax(s!, t!, { temperature: 2 })),
  },
  {
    name: 'l1_loss',
    inputs: (r) => [lattice(r, [3, 4], true), lattice(r, [3, 4], false)],
    run: ([a, b]) => one(l1Loss(a!, b!)),
    eps: KINK_EPS,
  },
  {
    name: 'mse_loss none',
    inputs: (r) => [randn(r, [3, 4]), randn(r, [3, 4])],
    run: ([a, b]) => one(mseLoss(a!, b!, { reduction: 'none' })),
  },
  { name: 'lfq_commitment', inputs: (r) => [away(r, [2, 3, 2, 2])], run: ([z]) => one(lfqCommitment(z!)) },
  {
    name: 'lfq_entropy',
    inputs: (r) => [randn(r, [5, 4], 0.5)],
    run: function* ([z]) {
      const e = yield* lfqEntropy(z!, { temperature: 1 });
      return [e.perSample, e.codebook];
    },
  },
  {
    name: 'lfq_entropy channel dim',
    inputs: (r) => [randn(r, [1, 4, 2, 2], 0.5)],
    run: function* ([z]) {
      const e = yield* lfqEntropy(z!, { temperature: 2, dim: 1 });
      return [e.perSample, e.codebook];
    },
  },
  // attention and positional ops
  {
    name: 'attention key bias',
    inputs: (r) => [randn(r, [1, 2, 3, 4]), randn(r, [1, 2, 5, 4]), randn(r, [1, 2, 5, 4]), randn(r, [1, 5])],
    run: function* ([q, k, v, bias]) {
      return [(yield* attention(q!, k!, v!, bias!))[0]];
    },
  },
  {
    name: 'attention causal',
    inputs: (r) => [randn(r, [2, 1, 3, 4]), randn(r, [2, 1, 5, 4]), randn(r, [2, 1, 5, 4])],
    run: function* ([q, k, v]) {
      return [(yield* attention(q!, k!, v!, null, null, { causal: true, qOffset: 2, scale: 0.7 }))[0]];
    },
  },
  {
    name: 'rope',
    inputs: (r) => {
      const ang = Array.from({ length: 3 * 2 }, () => r.uniform(-3, 3));
      return [randn(r, [1, 3, 2, 4]), f32([3, 2, 2], (i) => (i % 2 ? Math.sin : Math.cos)(ang[i >> 1]!))];
    },
    run: ([x, f]) => one(rope(x!, f!)),
    wrt: [0], // the frequencies are constants
  },
];

/** The rules not checked by finite differences here, and why (each has its own test below). */
const NOT_FD: Record<string, string> = {
  lfq_quantize: 'the straight-through estimator is by design not the derivative of sign',
};

// ------------------------------------------------------------------ the check

/** The ops a case's program runs. */
function opsOf(c: Case, rng: Rng): Set<string> {
  const seen = new Set<string>();
  runSync(c.run(c.inputs(rng)), (req) => void seen.add(req.op));
  return seen;
}

function* weightedSum(ys: Tensor[], ws: Tensor[]): Program<Tensor> {
  let loss: Tensor | null = null;
  for (let k = 0; k < ys.length; ++k) {
    const s = yield* sum(yield* mul(ys[k]!, ws[k]!));
    loss = loss ? yield* add(loss, s) : s;
  }
  return loss!;
}

function checkCase(c: Case): void {
  const rng = new Rng();
  const xs = c.inputs(rng);
  const tape = new Tape();
  const ys = runSync(c.run(xs), tape.observe);
  const ws = ys.map((y) => rng.tensor(y.shape));
  const wv = ws.map((w) => w.toFloat32());
  const loss = runSync(weightedSum(ys, ws), tape.observe);
  const grads = runSync(tape.backward(loss));
  const wrt = c.wrt ?? xs.flatMap((x, i) => (x.dtype === 'float32' ? [i] : []));
  expect(wrt.length, c.name).toBeGreaterThan(0);
  for (const j of wrt) {
    const x = xs[j]!;
    const g = grads.get(x);
    if (g) expect(g.shape, `${c.name}: gradient of input ${j} ${seedInfo(rng.seed)}`).toEqual(x.shape);
    const analytic = g ? g.toFloat32() : new Float32Array(x.numel);
    const f = (xp: Float32Array) => {
      const inputs = xs.slice();
      inputs[j] = Tensor.from(xp, x.shape);
      const out = runSync(c.run(inputs));
      let s = 0;
      out.forEach((y, k) => {
        const yv = y.toFloat32();
        for (let i = 0; i < yv.length; ++i) s += wv[k]![i]! * yv[i]!;
      });
      return s;
    };
    const x0 = x.toFloat32();
    const { maxRel, worst } = finiteDiffCheck(x0, f, analytic, {
      eps: c.eps ?? 5e-2,
      count: x0.length <= 64 ? x0.length : 24,
      rng,
      richardson: true,
    });
    expect(maxRel, `${c.name}: input ${j} ${JSON.stringify(worst)} ${seedInfo(rng.seed)}`).toBeLessThan(c.tol ?? 1e-2);
  }
}

const KINDS = ['rule', 'non-differentiable', 'first-order-only'] as const;

describe('autograd categories', () => {
  it('every registered op is in exactly one category, and every categorized name is a registered op', () => {
    const cats = gradCategories();
    const ops = addon.listOps();
    const problems: string[] = [];
    for (const op of ops) {
      const kinds = KINDS.filter((k) => cats[k].includes(op));
      if (kinds.length !== 1) problems.push(`${op}: ${kinds.length === 0 ? 'no category' : kinds.join(' + ')}`);
      else expect(gradKind(op)).toBe(kinds[0]);
    }
    const registered = new Set(ops);
    for (const k of KINDS)
      for (const op of cats[k]) if (!registered.has(op)) problems.push(`${op}: ${k}, but not a registered op`);
    expect(
      problems,
      'give each op a rule (defineGrad), a non-differentiable mark or a first-order-only mark in lib/autograd.ts',
    ).toEqual([]);
    expect(gradKind('no_such_op')).toBeUndefined();
  });

  it('the first-order-only ops are exactly the *_backward ops, and hasGrad is true for the other two kinds', () => {
    for (const op of addon.listOps()) {
      expect(gradKind(op) === 'first-order-only', op).toBe(op.endsWith('_backward'));
      expect(hasGrad(op), op).toBe(gradKind(op) !== 'first-order-only');
    }
  });

  it('a category cannot be given to an op that has another', () => {
    expect(() =>
      defineGrad('argmax', function* () {
        return [null];
      }),
    ).toThrow(/non-differentiable/);
    expect(() => defineNonDifferentiable('linear')).toThrow(/gradient rule/);
    expect(gradKind('argmax')).toBe('non-differentiable');
    expect(gradKind('linear')).toBe('rule');
  });

  it('every op with a rule is exercised by a finite-difference case below (or has a reason not to be)', () => {
    const rng = new Rng();
    const covered = new Set<string>();
    for (const c of CASES) for (const op of opsOf(c, rng)) covered.add(op);
    const missing = gradCategories().rule.filter((op) => !covered.has(op) && !(op in NOT_FD));
    expect(missing, `add a case to CASES for each (${seedInfo(rng.seed)})`).toEqual([]);
  });
});

describe('gradient rules match central finite differences', () => {
  for (const c of CASES) it(c.name, () => checkCase(c));
});

describe('kinks and special cases follow torch', () => {
  const grad = (run: (x: Tensor) => Program<Tensor>, x: Tensor, seed?: Tensor): Float32Array => {
    const tape = new Tape();
    const y = runSync(run(x), tape.observe);
    const g = runSync(tape.backward(y, seed ?? Tensor.from(new Float32Array(y.numel).fill(1), y.shape))).get(x);
    return g ? g.toFloat32() : new Float32Array(x.numel);
  };
  const v = (t: Float32Array) => Array.from(t);

  it('amax / amin split the gradient evenly among ties', () => {
    const x = Tensor.from([1, 3, 3, 2, -1, 0, -1, -1], [2, 4]);
    expect(v(grad((t) => amax(t, { dims: [1] }), x, Tensor.from([2, 3], [2])))).toEqual([0, 1, 1, 0, 0, 3, 0, 0]);
    expect(v(grad((t) => amin(t, { dims: [1] }), x, Tensor.from([2, 3], [2])))).toEqual([2, 0, 0, 0, 1, 0, 1, 1]);
    expect(v(grad((t) => amax(t), x))).toEqual([0, 0.5, 0.5, 0, 0, 0, 0, 0]);
  });

  it('maximum / minimum split ties 0.5 / 0.5; abs has gradient 0 at 0', () => {
    const a = Tensor.from([1, 2, 3]);
    const b = Tensor.from([2, 2, 2]);
    for (const [fn, wa, wb] of [
      [maximum, [0, 0.5, 1], [1, 0.5, 0]],
      [minimum, [1, 0.5, 0], [0, 0.5, 1]],
    ] as const) {
      const tape = new Tape();
      const y = runSync(fn(a, b), tape.observe);
      const g = runSync(tape.backward(y, Tensor.from([1, 1, 1])));
      expect(v(g.get(a)!.toFloat32())).toEqual(wa);
      expect(v(g.get(b)!.toFloat32())).toEqual(wb);
    }
    expect(v(grad((t) => unary('abs', t), Tensor.from([-2, 0, 3])))).toEqual([-1, 0, 1]);
  });

  it('scatter_reduce amax splits among tied contributions, base included', () => {
    const base = Tensor.from([5, 0], [2]);
    const src = Tensor.from([5, 1, 5, -1], [4]);
    const idx = Tensor.from(BigInt64Array.from([0n, 1n, 0n, 1n]), [4]);
    const tape = new Tape();
    const y = runSync(scatterReduce(base, idx, src, { dim: 0, reduce: 'amax' }), tape.observe);
    const g = runSync(tape.backward(y, Tensor.from([3, 2], [2])));
    expect(v(g.get(base)!.toFloat32())).toEqual([1, 0]);
    expect(v(g.get(src)!.toFloat32())).toEqual([1, 2, 1, 0]);
  });

  it('l2_norms of a zero tensor and pow_scalar(x, 0) have gradient 0 (not NaN)', () => {
    const z = Tensor.zeros([3]);
    const x = Tensor.from([1, 2]);
    const tape = new Tape();
    const n = runSync(l2Norms([z, x]), tape.observe);
    const g = runSync(tape.backward(n, Tensor.from([1, 1])));
    expect(v(g.get(z)!.toFloat32())).toEqual([0, 0, 0]);
    expect(v(grad((t) => powScalar(t, 0), Tensor.from([0, 1, -2])))).toEqual([0, 0, 0]);
  });

  it('lfq_quantize passes the codes gradient straight through to z; indices get none', () => {
    const rng = new Rng();
    const z = rng.tensor([2, 3, 2]);
    const gy = rng.tensor([2, 3, 2]);
    const tape = new Tape();
    const { codes } = runSync(lfqQuantize(z, { dim: 1 }), tape.observe);
    const g = runSync(tape.backward(codes, gy)).get(z)!;
    expect(v(g.toFloat32()), seedInfo(rng.seed)).toEqual(v(gy.toFloat32()));
  });
});

describe('first-order-only ops', () => {
  it('differentiating through a recorded *_backward op throws ERR_NO_GRAD (no second derivatives)', () => {
    const rng = new Rng();
    const x = rng.tensor([3, 4]);
    const w = rng.tensor([5, 4]);
    const gy = rng.tensor([3, 5]);
    const tape = new Tape();
    const [gx] = runSync(linearBackward(x, w, gy), tape.observe);
    const loss = runSync(sumOfProduct(gx!, gx!), tape.observe);
    let err: unknown;
    try {
      runSync(tape.backward(loss));
    } catch (e) {
      err = e;
    }
    expect(err, seedInfo(rng.seed)).toBeInstanceOf(MergeVQError);
    expect((err as MergeVQError).code).toBe('ERR_NO_GRAD');
    expect((err as MergeVQError).message).toMatch(
      /'linear_backward' is first-order only.*second derivatives are not supported/,
    );
  });

  it('recording one is fine when no gradient needs to pass through it', () => {
    const rng = new Rng();
    const x = rng.tensor([3, 4]);
    const w = rng.tensor([5, 4]);
    const tape = new Tape();
    const y = runSync(linear(x, w), tape.observe);
    // a gradient op recorded on the tape whose output the loss does not use
    runSync(linearBackward(x, w, y), tape.observe);
    const loss = runSync(sum(y), tape.observe);
    const g = runSync(tape.backward(loss)).get(x)!;
    expect(g.shape, seedInfo(rng.seed)).toEqual([3, 4]);
    // and wrt pruning skips one that does not lead to the requested tensors
    const tape2 = new Tape();
    const a = rng.tensor([3, 4]);
    const [ga] = runSync(linearBackward(a, w, rng.tensor([3, 5])), tape2.observe);
    const l2 = runSync(sumOfProduct(x, ga!), tape2.observe);
    expect(runSync(tape2.backward(l2, null, { wrt: [x] })).get(x)!.shape).toEqual([3, 4]);
  });
});

/** sum(x * y). */
function* sumOfProduct(x: Tensor, y: Tensor): Program<Tensor> {
  return yield* sum(yield* mul(x, y));
}
