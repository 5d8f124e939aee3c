/**
 * Reverse-mode autodiff over op programs. A `Tape` observes every op a program runs (pass
 * `tape.observe` to `runSync`/`runAsync`); `tape.backward(loss)` is itself a program that walks
 * the recorded ops in reverse and runs each op's gradient rule (native `*_backward` ops, or
 * compositions of forward ops), accumulating gradients per tensor.
 *
 * Tensors are identified by their `Tensor` handle: parameters from a `ParamStore` keep one handle,
 * so `grads.get(store.get(name))` is that parameter's gradient.
 *
 * Every native op is in one of three categories ({@link gradKind}): it has a gradient rule; it is
 * non-differentiable (discrete outputs such as ToMe matching, argmax and LFQ indices, random draws,
 * in-place updates, `detach`), so gradients stop there; or it is first-order only (the `*_backward`
 * ops), and a gradient that reaches one fails with `ERR_NO_GRAD` (no second derivatives). LFQ codes
 * pass gradients straight through to z (the straight-through estimator).
 */
import type { OpRequest, Program } from './graph.js';
import { MergeVQError, checkKeys, optionKeys } from './errors.js';
import { Tensor } from './tensor.js';
import { attentionBackward, type AttentionOptions } from './ops/attention.js';
import { lfqCommitmentBackward, lfqEntropyBackward } from './ops/lfq.js';
import { conv2dBackward, linearBackward, matmulBackward } from './ops/linalg.js';
import { mergeWavgBackward, unmergeBackward } from './ops/merge.js';
import {
  batchNormBackward,
  crossEntropyBackward,
  geluBackward,
  groupNormBackward,
  klDivSoftmaxBackward,
  l1LossBackward,
  layerNormBackward,
  leakyReluBackward,
  logSoftmax,
  logSoftmaxBackward,
  mseLossBackward,
  rmsNormBackward,
  siluBackward,
  softCrossEntropyBackward,
  softmax,
  softmaxBackward,
  swigluBackward,
  type CrossEntropyOptions,
  type FusedAct,
  type Reduction,
} from './ops/nn.js';
import { maxPool2dBackward } from './ops/pool.js';
import {
  absBackward,
  add,
  amaxBackward,
  clampBackward,
  concat,
  depthToSpace,
  div,
  embeddingBackward,
  expand,
  flip,
  gather,
  gatherBackward,
  indexSelectBackward,
  maximum,
  mean,
  mul,
  narrow,
  permute,
  permuteView,
  powScalar,
  reshape,
  ropeBackward,
  scale,
  scatterReduce,
  scatterReduceBackward,
  select,
  sigmoidBackward,
  spaceToDepth,
  sub,
  sum,
  sumTo as sumToOp,
  tanhBackward,
  unary,
  where,
  type ReduceOpts,
  type ScatterReduceOpts,
} from './ops/tensor.js';

/** Input gradients for one recorded op, given the gradients of its outputs (null = none). */
export type GradRule = (req: OpRequest, outs: Tensor[], gouts: (Tensor | null)[]) => Program<(Tensor | null)[]>;

const rules = new Map<string, GradRule>();
/**
 * Ops whose outputs never carry gradient: discrete outputs, random draws, in-place or stateful
 * updates (optimizer steps, EMA, cache writes, copies into buffers), explicit detaching, and the
 * bench-only kernels. Each entry gives its reason.
 */
const nonDifferentiable = new Set<string>([
  'tome_match', // merge decisions: integer indices
  'tome_source_update', // integer source map
  'tome_source_dense', // 0/1 matrix of an integer source map
  'argmax', // integer index
  'detach', // stops gradients by definition
  'cast', // dtype conversion: gradients are float32 and never cross it
  'lfq_indices_to_codes', // codes of integer indices
  'lfq_factorize', // integer sub-tokens
  'lfq_unfactorize', // integer indices
  'sign', // piecewise constant: zero gradient almost everywhere (torch's is zero)
  'random_normal', // a random draw with no tensor inputs
  'adam_step', // in-place optimizer step
  'ema_update', // in-place EMA of the parameters
  'scale_inplace', // in-place gradient clipping
  'copy_into', // in-place copy into a buffer
  'kv_cache_write', // in-place write into a KV cache (inference)
  'kv_cache_compact', // in-place compaction of a KV cache (inference)
  'libm_cos', // host helper for lr schedules: float64 bit patterns, no tensor inputs
  'gemm_kernel', // reports the GEMM micro-kernel (bench / diagnostics)
  'fma_peak', // bench-only kernel
]);
/**
 * The native `*_backward` ops: recording one on a tape is fine (backward passes run them), but a
 * gradient THROUGH one (a second derivative) is not supported, and `Tape.backward` says so.
 */
const firstOrderOnly = new Set<string>([
  'abs_backward',
  'amax_backward',
  'attention_backward',
  'batch_norm_backward',
  'clamp_backward',
  'conv2d_backward',
  'cross_entropy_backward',
  'embedding_backward',
  'gather_backward',
  'gelu_backward',
  'group_norm_backward',
  'index_select_backward',
  'kl_div_softmax_backward',
  'l1_loss_backward',
  'layer_norm_backward',
  'leaky_relu_backward',
  'lfq_commitment_backward',
  'lfq_entropy_backward',
  'linear_backward',
  'log_softmax_backward',
  'matmul_backward',
  'max_pool2d_backward',
  'mse_loss_backward',
  'rms_norm_backward',
  'rope_backward',
  'scatter_reduce_backward',
  'sigmoid_backward',
  'silu_backward',
  'soft_cross_entropy_backward',
  'softmax_backward',
  'swiglu_backward',
  'tanh_backward',
  'tome_merge_backward',
  'unmerge_backward',
]);

/**
 * The autograd category of an op: `'rule'` (a gradient rule is registered), `'non-differentiable'`
 * (its outputs never carry gradient) or `'first-order-only'` (a `*_backward` op: differentiating
 * through it is an error). Every registered native op is in exactly one (test/grad-coverage.test.ts).
 */
export type GradKind = 'rule' | 'non-differentiable' | 'first-order-only';

/**
 * Registers (or replaces) the gradient rule of `op`. A first-order-only op that gets a rule
 * becomes differentiable; a non-differentiable op cannot get one (TypeError).
 */
export function defineGrad(op: string, rule: GradRule): void {
  if (nonDifferentiable.has(op)) throw new TypeError(`defineGrad: op '${op}' is marked non-differentiable`);
  if (typeof rule !== 'function') throw new TypeError(`defineGrad: the rule of '${op}' must be a generator function`);
  firstOrderOnly.delete(op);
  rules.set(op, rule);
}
/** Marks `op` as not differentiable (its outputs never receive gradients); TypeError if it has a rule. */
export function defineNonDifferentiable(op: string): void {
  if (rules.has(op)) throw new TypeError(`defineNonDifferentiable: op '${op}' has a gradient rule`);
  firstOrderOnly.delete(op);
  nonDifferentiable.add(op);
}
/** The autograd category of `op`, or undefined when it has none (backward then fails on it). */
export function gradKind(op: string): GradKind | undefined {
  if (rules.has(op)) return 'rule';
  if (nonDifferentiable.has(op)) return 'non-differentiable';
  if (firstOrderOnly.has(op)) return 'first-order-only';
  return undefined;
}
/**
 * Whether `Tape.backward` can pass gradients through `op`: it has a rule or is non-differentiable
 * (false for first-order-only ops and for ops without a category).
 */
export function hasGrad(op: string): boolean {
  return rules.has(op) || nonDifferentiable.has(op);
}
/** Every op named in each category, sorted (for coverage checks). */
export function gradCategories(): Record<GradKind, string[]> {
  return {
    rule: [...rules.keys()].sort(),
    'non-differentiable': [...nonDifferentiable].sort(),
    'first-order-only': [...firstOrderOnly].sort(),
  };
}

interface Entry {
  req: OpRequest;
  outs: Tensor[];
}

export class Tape {
  private readonly entries: Entry[] = [];
  /** Pass to runSync/runAsync to record. */
  readonly observe = (req: OpRequest, outs: Tensor[]): void => {
    this.entries.push({ req, outs });
  };
  get length(): number {
    return this.entries.length;
  }

  /**
   * Frees the recorded ops' outputs (the forward pass's intermediates) and forgets them, so their
   * memory returns to the allocator's cache at once instead of when the GC finds the handles.
   * Tensors in `keep` (parameters, updated running statistics, results still needed) are left
   * alone, and so is anything already disposed. The tape is empty afterwards. Views share their
   * storage by reference count, so freeing a view of a kept tensor leaves that tensor intact.
   */
  dispose(keep: Iterable<Tensor> = []): void {
    const kept = new Set(keep);
    for (const { outs } of this.entries) for (const o of outs) if (o && !kept.has(o) && !o.disposed) o.dispose();
    this.entries.length = 0;
  }

  /**
   * Gradients of `root` (a scalar unless `seed` is given) with respect to every recorded tensor
   * that influences it. Returns a map from Tensor handle to its gradient.
   *
   * With `opts.wrt`, only the recorded ops that depend on one of those tensors are differentiated
   * (the others cannot carry gradient to them), so asking for the gradient of a loss with respect
   * to one late tensor (a last layer's weight) does not backpropagate through the whole model.
   * The map then holds the gradients of `wrt` (absent when `root` does not depend on one) and of
   * the intermediates on the paths between them and `root`. Ops recorded while this program runs
   * (its own gradient ops, when the tape observes it) are not visited.
   */
  *backward(root: Tensor, seed?: Tensor | null, opts: BackwardOptions = {}): Program<Map<Tensor, Tensor>> {
    checkKeys('Tape.backward options', opts, BACKWARD_KEYS);
    const grads = new Map<Tensor, Tensor>();
    const userSeed = seed ?? null;
    if (!seed) {
      if (root.numel !== 1)
        throw new RangeError(`backward: root must be a scalar, got shape [${root.shape.join(', ')}] (give a seed)`);
      seed = Tensor.from(new Float32Array([1]), root.shape);
    }
    const end = this.entries.length;
    const relevant = opts.wrt === undefined ? null : this.dependents(opts.wrt, end);
    // With `free`: how many map keys hold each gradient handle (rules may pass one handle through
    // to several inputs), and which handles the pass itself made (never the caller's seed, nor a
    // forward value a rule might hand back).
    const free = opts.free === true;
    const refs = new Map<Tensor, number>();
    let forward: Set<Tensor> | null = null;
    const produced = new Set<Tensor>();
    if (free) {
      forward = new Set<Tensor>();
      for (let i = 0; i < end; ++i) {
        const { req, outs } = this.entries[i]!;
        for (const t of req.inputs) if (t) forward.add(t);
        for (const t of outs) if (t) forward.add(t), produced.add(t);
      }
    }
    const hold = (g: Tensor) => free && refs.set(g, (refs.get(g) ?? 0) + 1);
    const drop = (g: Tensor) => {
      if (!free) return;
      const n = (refs.get(g) ?? 0) - 1;
      if (n > 0) return void refs.set(g, n);
      refs.delete(g);
      if (g !== userSeed && !forward!.has(g) && !g.disposed) g.dispose();
    };
    grads.set(root, seed);
    hold(seed);
    for (let i = end - 1; i >= 0; --i) {
      if (relevant && !relevant[i]) continue;
      const { req, outs } = this.entries[i]!;
      const gouts = outs.map((o) => (o ? (grads.get(o) ?? null) : null));
      if (gouts.every((g) => g === null)) continue;
      if (!nonDifferentiable.has(req.op)) {
        const rule = rules.get(req.op);
        if (!rule) {
          if (firstOrderOnly.has(req.op))
            throw new MergeVQError(
              `backward: op '${req.op}' is first-order only: a gradient reached its output, but second derivatives are not supported`,
              'ERR_NO_GRAD',
            );
          throw new MergeVQError(`backward: op '${req.op}' has no gradient rule`, 'ERR_NO_GRAD');
        }
        const gins = yield* rule(req, outs, gouts);
        for (let j = 0; j < req.inputs.length; ++j) {
          const x = req.inputs[j];
          const g = gins[j];
          if (!x || !g) continue;
          const prev = grads.get(x);
          if (!prev) {
            grads.set(x, g);
            hold(g);
            continue;
          }
          const sum = yield* add(prev, g);
          grads.set(x, sum);
          hold(sum);
          drop(prev);
          // g itself is now unreferenced unless another key holds it
          if (free && !refs.has(g) && g !== userSeed && !forward!.has(g) && !g.disposed) g.dispose();
        }
      }
      // every output's gradient is complete once its producer is reached: free it
      if (free)
        for (const o of outs) {
          const g = o ? grads.get(o) : undefined;
          if (!o || !g) continue;
          grads.delete(o);
          drop(g);
        }
    }
    // outputs of ops the wrt pruning skipped may still hold a gradient: free those too
    if (free)
      for (const [t, g] of [...grads]) {
        if (!produced.has(t)) continue;
        grads.delete(t);
        drop(g);
      }
    return grads;
  }

  /** Marks the first `end` entries that (transitively) take one of `wrt` as an input. */
  private dependents(wrt: readonly Tensor[], end: number): boolean[] {
    if (!Array.isArray(wrt)) throw new TypeError("backward: option 'wrt' must be an array of Tensors");
    const reached = new Set<Tensor>();
    for (const [i, t] of wrt.entries()) {
      if (!(t instanceof Tensor)) throw new TypeError(`backward: option 'wrt[${i}]' must be a Tensor`);
      reached.add(t);
    }
    const marks = new Array<boolean>(end).fill(false);
    for (let i = 0; i < end; ++i) {
      const { req, outs } = this.entries[i]!;
      if (nonDifferentiable.has(req.op)) continue;
      if (!req.inputs.some((x) => x && reached.has(x))) continue;
      marks[i] = true;
      for (const o of outs) if (o) reached.add(o);
    }
    return marks;
  }
}

/** Options of {@link Tape.backward}. */
export interface BackwardOptions {
  /**
   * Prune the backward pass to the ops that depend on these tensors: only their gradients (and
   * those of the intermediates between them and the root) are computed.
   */
  wrt?: readonly Tensor[];
  /**
   * Free each recorded output's gradient as soon as its op's rule has used it (and every gradient
   * handle no map key holds any more): the returned map then holds only the gradients of tensors
   * no recorded op produced (parameters and other inputs). Peak memory drops from every
   * intermediate's gradient at once to the live frontier of the backward pass.
   */
  free?: boolean;
}
const BACKWARD_KEYS = optionKeys<BackwardOptions>()(['wrt', 'free']);

// ------------------------------------------------------------------ rules

const A = (req: OpRequest) => req.attrs ?? {};
const inv = (dims: readonly number[]) => {
  const r = new Array<number>(dims.length);
  dims.forEach((d, i) => (r[d < 0 ? d + dims.length : d] = i));
  return r;
};
function* sumTo(g: Tensor, shape: readonly number[]): Program<Tensor> {
  if (g.shape.length === shape.length && g.shape.every((s, i) => s === shape[i])) return g;
  return yield* sumToOp(g, shape);
}
/** Places g into zeros of `shape` at [start, start + g.shape[dim]) along dim. */
function* embedAlong(g: Tensor, shape: readonly number[], dim: number, start: number): Program<Tensor> {
  const d = dim < 0 ? dim + shape.length : dim;
  const len = g.shape[d]!;
  const parts: Tensor[] = [];
  if (start > 0) parts.push(Tensor.zeros(shape.map((s, i) => (i === d ? start : s))));
  parts.push(g);
  const after = shape[d]! - start - len;
  if (after > 0) parts.push(Tensor.zeros(shape.map((s, i) => (i === d ? after : s))));
  return parts.length === 1 ? g : yield* concat(parts, d);
}
const shapeOf = (t: Tensor | null | undefined) => (t ? t.shape : []);
/** The attention wrappers' options from a recorded request's native attributes. */
function attentionOptions(a: Record<string, unknown>): AttentionOptions {
  return {
    scale: a.scale as number | undefined,
    causal: a.causal as boolean | undefined,
    qOffset: a.q_offset as number | undefined,
    window: a.window as number | undefined,
    kvLen: a.kv_len as number | undefined,
  };
}
/** The cross-entropy wrappers' options from a recorded request's native attributes. */
function crossEntropyOptions(a: Record<string, unknown>): CrossEntropyOptions {
  return {
    labelSmoothing: a.label_smoothing as number | undefined,
    ignoreIndex: a.ignore_index as number | undefined,
    reduction: a.reduction as Reduction | undefined,
  };
}

defineGrad('linear', function* (req, _o, [g]) {
  const [x, w, b] = req.inputs;
  return yield* linearBackward(x!, w!, g!, { hasBias: Boolean(b) });
});
defineGrad('matmul', function* (req, _o, [g]) {
  const [a, b] = req.inputs;
  const at = A(req);
  return yield* matmulBackward(a!, b!, g!, {
    transA: at.trans_a as boolean | undefined,
    transB: at.trans_b as boolean | undefined,
    alpha: at.alpha as number | undefined,
  });
});
defineGrad('conv2d', function* (req, _o, [g]) {
  const [x, w, b] = req.inputs;
  const a = A(req);
  type Pair = number | [number, number];
  return yield* conv2dBackward(x!, w!, g!, {
    stride: a.stride as Pair | undefined,
    padding: a.padding as Pair | undefined,
    groups: a.groups as number | undefined,
    hasBias: Boolean(b),
  });
});
// The gradient goes to the element the forward chose (its first maximum on ties); indices get none.
defineGrad('max_pool2d', function* (req, outs, [g]) {
  if (!g) return [null];
  return [yield* maxPool2dBackward(g, outs[1]!, { inputShape: req.inputs[0]!.shape })];
});
defineGrad('group_norm', function* (req, outs, [g]) {
  const [x, w, b] = req.inputs;
  const a = A(req);
  return yield* groupNormBackward(x!, w, b, outs[1]!, outs[2]!, g!, {
    groups: a.groups as number,
    act: (a.act as FusedAct | undefined) ?? 'none',
    hasWeight: Boolean(w),
    hasBias: Boolean(b),
  });
});
defineGrad('layer_norm', function* (req, outs, [g]) {
  const [x, w, b] = req.inputs;
  return yield* layerNormBackward(x!, w, outs[1]!, outs[2]!, g!, { hasWeight: Boolean(w), hasBias: Boolean(b) });
});
defineGrad('gelu', function* (req, _o, [g]) {
  return [
    yield* geluBackward(req.inputs[0]!, g!, {
      approximate: (A(req).approximate as 'none' | 'tanh' | undefined) ?? 'none',
    }),
  ];
});
defineGrad('silu', function* (req, _o, [g]) {
  return [yield* siluBackward(req.inputs[0]!, g!)];
});
defineGrad('softmax', function* (req, outs, [g]) {
  return [yield* softmaxBackward(outs[0]!, g!, { dim: (A(req).dim as number | undefined) ?? -1 })];
});
defineGrad('add', function* (req, _o, [g]) {
  const [a, b] = req.inputs;
  const alpha = (A(req).alpha as number | undefined) ?? 1;
  const gb = alpha === 1 ? g! : yield* scale(g!, alpha, 0);
  return [yield* sumTo(g!, shapeOf(a)), yield* sumTo(gb, shapeOf(b))];
});
defineGrad('sub', function* (req, _o, [g]) {
  const [a, b] = req.inputs;
  const alpha = (A(req).alpha as number | undefined) ?? 1;
  return [yield* sumTo(g!, shapeOf(a)), yield* sumTo(yield* scale(g!, -alpha, 0), shapeOf(b))];
});
defineGrad('mul', function* (req, _o, [g]) {
  const [a, b] = req.inputs;
  return [yield* sumTo(yield* mul(g!, b!), shapeOf(a)), yield* sumTo(yield* mul(g!, a!), shapeOf(b))];
});
defineGrad('div', function* (req, outs, [g]) {
  const [a, b] = req.inputs;
  const ga = yield* div(g!, b!);
  const gb = yield* unary('neg', yield* mul(ga, outs[0]!));
  return [yield* sumTo(ga, shapeOf(a)), yield* sumTo(gb, shapeOf(b))];
});
defineGrad('scale', function* (req, _o, [g]) {
  return [yield* scale(g!, (A(req).mul as number | undefined) ?? 1, 0)];
});
defineGrad('sqrt', function* (_req, outs, [g]) {
  return [yield* scale(yield* div(g!, outs[0]!), 0.5, 0)];
});
defineGrad('log', function* (req, _o, [g]) {
  return [yield* div(g!, req.inputs[0]!)];
});
defineGrad('mean', function* (req, outs, [g]) {
  const x = req.inputs[0]!;
  const dims = ((A(req).dims as number[] | undefined) ?? x.shape.map((_, i) => i)).map((d) => (d < 0 ? d + x.ndim : d));
  const n = dims.reduce((p, d) => p * x.shape[d]!, 1);
  const keepShape = x.shape.map((s, i) => (dims.includes(i) ? 1 : s));
  const gk = yield* reshape(g!, keepShape); // the reduced dims as size 1
  const e = yield* expand(gk, x.shape);
  void outs;
  return [yield* scale(e, 1 / n, 0)];
});
defineGrad('var', function* (req, _o, [g]) {
  const x = req.inputs[0]!;
  const dims = ((A(req).dims as number[] | undefined) ?? x.shape.map((_, i) => i)).map((d) => (d < 0 ? d + x.ndim : d));
  const n = dims.reduce((p, d) => p * x.shape[d]!, 1);
  const unbiased = A(req).unbiased !== false;
  const keepShape = x.shape.map((s, i) => (dims.includes(i) ? 1 : s));
  const m = yield* mean(x, { dims, keepdim: true });
  const xc = yield* sub(x, m);
  const gk = yield* reshape(g!, keepShape);
  const gx = yield* mul(xc, gk);
  return [yield* scale(gx, 2 / (unbiased ? n - 1 : n), 0)];
});
defineGrad('permute', function* (req, _o, [g]) {
  return [yield* permute(g!, inv(A(req).dims as number[]))];
});
defineGrad('permute_view', function* (req, _o, [g]) {
  return [yield* permuteView(g!, inv(A(req).dims as number[]))];
});
defineGrad('reshape', function* (req, _o, [g]) {
  return [yield* reshape(g!, req.inputs[0]!.shape)];
});
defineGrad('contiguous', function* (_req, _o, [g]) {
  return [g ?? null];
});
defineGrad('select', function* (req, _o, [g]) {
  const x = req.inputs[0]!;
  const dim = (A(req).dim as number) < 0 ? (A(req).dim as number) + x.ndim : (A(req).dim as number);
  const index = (A(req).index as number) < 0 ? (A(req).index as number) + x.shape[dim]! : (A(req).index as number);
  const g1 = yield* reshape(
    g!,
    x.shape.map((s, i) => (i === dim ? 1 : s)),
  );
  return [yield* embedAlong(g1, x.shape, dim, index)];
});
defineGrad('narrow', function* (req, _o, [g]) {
  const x = req.inputs[0]!;
  return [yield* embedAlong(g!, x.shape, A(req).dim as number, A(req).start as number)];
});
defineGrad('slice', function* (req, _o, [g]) {
  const x = req.inputs[0]!;
  const a = A(req);
  if (a.step !== undefined && a.step !== 1)
    throw new MergeVQError('backward: slice with step != 1 is not differentiable here', 'ERR_NO_GRAD');
  const dim = (a.dim as number) < 0 ? (a.dim as number) + x.ndim : (a.dim as number);
  const start = (a.start as number | undefined) ?? 0;
  return [yield* embedAlong(g!, x.shape, dim, start < 0 ? start + x.shape[dim]! : start)];
});
defineGrad('concat', function* (req, _o, [g]) {
  const dim0 = A(req).dim as number;
  const dim = dim0 < 0 ? dim0 + g!.ndim : dim0;
  const out: Tensor[] = [];
  let start = 0;
  for (const x of req.inputs) {
    const len = x!.shape[dim]!;
    out.push(yield* narrow(g!, dim, start, len));
    start += len;
  }
  return out;
});
defineGrad('gather', function* (req, _o, [g]) {
  const [x, idx] = req.inputs;
  return [yield* gatherBackward(g!, idx!, A(req).dim as number, x!.shape), null];
});
defineGrad('depth_to_space', function* (req, _o, [g]) {
  return [yield* spaceToDepth(g!, A(req).block as number)];
});
defineGrad('attention', function* (req, outs, gouts) {
  const [q, k, v, bias, keep] = req.inputs;
  const [gq, gk, gv, gb] = yield* attentionBackward(
    q!,
    k!,
    v!,
    bias,
    keep,
    outs[0]!,
    outs[1]!,
    gouts[0]!,
    attentionOptions(A(req)),
  );
  return [gq, gk, gv, bias ? gb : null, null];
});
defineGrad('tome_merge', function* (req, _o, gouts) {
  const [x, size, unm, src, dst] = req.inputs;
  if (!gouts[0]) return [null, null, null, null, null];
  const gx = yield* mergeWavgBackward(x!, size ?? null, { unmIdx: unm!, srcIdx: src!, dstIdx: dst! }, gouts[0]);
  return [gx, null, null, null, null];
});
defineGrad('unmerge', function* (req, _o, [g]) {
  const [kept, map] = req.inputs;
  return [yield* unmergeBackward(g!, map!, kept!.shape[1]!), null];
});
// Straight-through estimator: codes = z + stopgrad(sign(z) - z).
defineGrad('lfq_quantize', function* (_req, _o, gouts) {
  return [gouts[0] ?? null];
});
defineGrad('l1_loss', function* (req, _o, [g]) {
  const [a, b] = req.inputs;
  return yield* l1LossBackward(a!, b!, g!, { reduction: A(req).reduction as Reduction | undefined });
});
defineGrad('mse_loss', function* (req, _o, [g]) {
  const [a, b] = req.inputs;
  return yield* mseLossBackward(a!, b!, g!, { reduction: A(req).reduction as Reduction | undefined });
});
defineGrad('cross_entropy', function* (req, _o, [g]) {
  const [logits, target] = req.inputs;
  return [yield* crossEntropyBackward(logits!, target!, g!, crossEntropyOptions(A(req))), null];
});
defineGrad('lfq_entropy', function* (req, _o, gouts) {
  const z = req.inputs[0]!;
  const zero = Tensor.zeros([]);
  const a = A(req);
  return [
    yield* lfqEntropyBackward(z, gouts[0] ?? zero, gouts[1] ?? zero, {
      temperature: a.temperature as number | undefined,
      dim: a.dim as number | undefined,
    }),
  ];
});
defineGrad('embedding', function* (req, _o, [g]) {
  const [w, idx] = req.inputs;
  return [yield* embeddingBackward(g!, idx!, w!.shape[0]!), null];
});
defineGrad('rms_norm', function* (req, outs, [g]) {
  const [x, w] = req.inputs;
  const [gx, gw] = yield* rmsNormBackward(x!, w!, outs[1]!, g!);
  return [gx, gw];
});
defineGrad('rope', function* (req, _o, [g]) {
  return [yield* ropeBackward(g!, req.inputs[1]!), null];
});
defineGrad('swiglu', function* (req, _o, [g]) {
  const [a, b] = req.inputs;
  const [ga, gb] = yield* swigluBackward(a!, b!, g!);
  return [ga, gb];
});

// ---- batch norm, activations and element-wise pieces of the GAN losses (discriminator training)

defineGrad('batch_norm', function* (req, outs, [g]) {
  const [x, w, b] = req.inputs;
  if (!g) return [null, null, null, null, null];
  const [gx, gw, gb] = yield* batchNormBackward(x!, w, outs[1]!, outs[2]!, g, {
    training: Boolean(A(req).training ?? false),
  });
  // The running statistics are buffers: no gradient flows into them.
  return [gx!, w ? gw! : null, b ? gb! : null, null, null];
});
defineGrad('leaky_relu', function* (req, _o, [g]) {
  return [yield* leakyReluBackward(req.inputs[0]!, g!, { slope: (A(req).slope as number | undefined) ?? 0.2 })];
});
defineGrad('clamp', function* (req, _o, [g]) {
  return [
    yield* clampBackward(req.inputs[0]!, g!, {
      min: A(req).min as number | undefined,
      max: A(req).max as number | undefined,
    }),
  ];
});
defineGrad('exp', function* (_req, outs, [g]) {
  return [yield* mul(g!, outs[0]!)];
});
defineGrad('neg', function* (_req, _o, [g]) {
  return [yield* unary('neg', g!)];
});

// ---- element-wise ops without a rule of their own before (see test/grad-coverage.test.ts)

// abs'(0) = 0, as torch.
defineGrad('abs', function* (req, _o, [g]) {
  return [yield* absBackward(req.inputs[0]!, g!)];
});
defineGrad('sigmoid', function* (_req, outs, [g]) {
  return [yield* sigmoidBackward(outs[0]!, g!)];
});
defineGrad('tanh', function* (_req, outs, [g]) {
  return [yield* tanhBackward(outs[0]!, g!)];
});
// d/dx x^-1/2 = -y^3 / 2.
defineGrad('rsqrt', function* (_req, outs, [g]) {
  return [yield* mul(g!, yield* scale(yield* powScalar(outs[0]!, 3), -0.5, 0))];
});
// p x^(p-1); p = 0 is the constant 1, whose gradient is zero everywhere (torch: zeros, even at x = 0).
defineGrad('pow_scalar', function* (req, _o, [g]) {
  const x = req.inputs[0]!;
  const p = (A(req).p as number | undefined) ?? 1;
  if (p === 0) return [Tensor.zeros(x.shape, 'float32', x.device)];
  return [yield* mul(g!, yield* scale(yield* powScalar(x, p - 1), p, 0))];
});
defineGrad('addcmul', function* (req, _o, [g]) {
  const [a, b, c] = req.inputs;
  const value = (A(req).value as number | undefined) ?? 1;
  const gv = value === 1 ? g! : yield* scale(g!, value, 0);
  return [
    yield* sumTo(g!, shapeOf(a)),
    yield* sumTo(yield* mul(gv, c!), shapeOf(b)),
    yield* sumTo(yield* mul(gv, b!), shapeOf(c)),
  ];
});
// Ties (a = b) split the gradient 0.5 / 0.5, as torch: the weight of a is (1 + sign(a - b)) / 2.
function* extremumGrad(req: OpRequest, g: Tensor, sa: number): Program<(Tensor | null)[]> {
  const [a, b] = req.inputs;
  const s = yield* unary('sign', yield* sub(a!, b!));
  const wa = yield* scale(s, 0.5 * sa, 0.5);
  const wb = yield* scale(s, -0.5 * sa, 0.5);
  return [yield* sumTo(yield* mul(g, wa), shapeOf(a)), yield* sumTo(yield* mul(g, wb), shapeOf(b))];
}
defineGrad('maximum', function* (req, _o, [g]) {
  return yield* extremumGrad(req, g!, 1);
});
defineGrad('minimum', function* (req, _o, [g]) {
  return yield* extremumGrad(req, g!, -1);
});
// The condition gets none; a and b get g where it selects them (summed back over broadcasting).
defineGrad('where', function* (req, _o, [g]) {
  const [cond, a, b] = req.inputs;
  const zero = Tensor.zeros([], g!.dtype, g!.device);
  return [
    null,
    yield* sumTo(yield* where(cond!, g!, zero), shapeOf(a)),
    yield* sumTo(yield* where(cond!, zero, g!), shapeOf(b)),
  ];
});

// ---- reductions and broadcasting

/** The recorded reduction's {dims, keepdim} as the wrappers' options. */
function reduceOptions(req: OpRequest): ReduceOpts {
  const a = A(req);
  return { dims: a.dims as number[] | undefined, keepdim: a.keepdim as boolean | undefined };
}
defineGrad('sum', function* (req, _o, [g]) {
  const x = req.inputs[0]!;
  const dims = ((A(req).dims as number[] | undefined) ?? x.shape.map((_, i) => i)).map((d) => (d < 0 ? d + x.ndim : d));
  const keepShape = x.shape.map((s, i) => (dims.includes(i) ? 1 : s));
  return [yield* expand(yield* reshape(g!, keepShape), x.shape)];
});
// Split evenly among tied maxima (minima), as torch.amax / amin; amin(x) = -amax(-x).
defineGrad('amax', function* (req, outs, [g]) {
  return [yield* amaxBackward(req.inputs[0]!, outs[0]!, g!, reduceOptions(req))];
});
defineGrad('amin', function* (req, outs, [g]) {
  const nx = yield* unary('neg', req.inputs[0]!);
  const ny = yield* unary('neg', outs[0]!);
  return [yield* amaxBackward(nx, ny, g!, reduceOptions(req))];
});
defineGrad('expand', function* (req, _o, [g]) {
  return [yield* sumTo(g!, req.inputs[0]!.shape)];
});
defineGrad('sum_to', function* (req, _o, [g]) {
  return [yield* expand(g!, req.inputs[0]!.shape)];
});
// d ||x_i|| = x_i / ||x_i||, and 0 where the norm is 0 (torch): x_i = 0 there, so dividing by
// max(norm, FLT_MIN) gives it.
defineGrad('l2_norms', function* (req, outs, [g]) {
  const tiny = Tensor.from(new Float32Array([1.1754943508222875e-38]), [], { device: g!.device });
  const f = yield* div(g!, yield* maximum(outs[0]!, tiny));
  const out: Tensor[] = [];
  for (let i = 0; i < req.inputs.length; ++i) out.push(yield* mul(req.inputs[i]!, yield* select(f, 0, i)));
  return out;
});

// ---- layout and indexing

defineGrad('flip', function* (req, _o, [g]) {
  return [yield* flip(g!, A(req).dims as number[])];
});
defineGrad('space_to_depth', function* (req, _o, [g]) {
  return [yield* depthToSpace(g!, A(req).block as number)];
});
// The gradient is the interior of the padded gradient.
defineGrad('pad2d', function* (req, _o, [g]) {
  const x = req.inputs[0]!;
  const [left, , top] = A(req).pad as number[];
  const nd = x.ndim;
  const w = yield* narrow(g!, nd - 1, left!, x.shape[nd - 1]!);
  return [yield* narrow(w, nd - 2, top!, x.shape[nd - 2]!)];
});
// The pieces' gradients concatenated (zeros for a piece that got none).
defineGrad('split', function* (req, outs, gouts) {
  const x = req.inputs[0]!;
  const parts = outs.map((o, j) => gouts[j] ?? Tensor.zeros(o.shape, 'float32', x.device));
  return [yield* concat(parts, A(req).dim as number)];
});
defineGrad('index_select', function* (req, _o, [g]) {
  const [x, idx] = req.inputs;
  const dim0 = A(req).dim as number;
  const dim = dim0 < 0 ? dim0 + x!.ndim : dim0;
  return [yield* indexSelectBackward(g!, idx!, dim, x!.shape[dim]!), null];
});
defineGrad('scatter_reduce', function* (req, outs, [g]) {
  const [base, idx, src] = req.inputs;
  const a = A(req);
  const opts: ScatterReduceOpts = {
    dim: a.dim as number,
    reduce: a.reduce as ScatterReduceOpts['reduce'],
    includeSelf: a.include_self as boolean | undefined,
  };
  if (opts.reduce !== 'amax') {
    const [gb, gs] = yield* scatterReduceBackward(base!, idx!, src!, g!, opts);
    return [gb, null, gs];
  }
  return yield* scatterAmaxGrad(base!, idx!, src!, outs[0]!, g!, opts);
});
/**
 * scatter_reduce 'amax': each output's gradient is split evenly among the contributions equal to
 * it (the scattered src elements, and base when included; torch.scatter_reduce's rule). Positions
 * that receive nothing pass g to base. src may be larger than idx (only idx's extent is read).
 */
function* scatterAmaxGrad(
  base: Tensor,
  idx: Tensor,
  src: Tensor,
  y: Tensor,
  g: Tensor,
  opts: ScatterReduceOpts,
): Program<(Tensor | null)[]> {
  const dim = opts.dim < 0 ? opts.dim + base.ndim : opts.dim;
  const dev = base.device;
  const sumOpts: ScatterReduceOpts = { dim, reduce: 'sum', includeSelf: true };
  const eq = function* (p: Tensor, q: Tensor): Program<Tensor> {
    // 1 where p = q, else 0
    return yield* scale(yield* unary('abs', yield* unary('sign', yield* sub(p, q))), -1, 1);
  };
  let s = src; // src restricted to idx's extent
  for (let d = 0; d < idx.ndim; ++d) if (s.shape[d] !== idx.shape[d]) s = yield* narrow(s, d, 0, idx.shape[d]!);
  const srcHit = yield* eq(s, yield* gather(y, idx, dim));
  const zeros = Tensor.zeros(base.shape, 'float32', dev);
  // base's share: its tie mask when included, else 1 exactly where nothing was scattered
  const selfHit =
    opts.includeSelf === false
      ? yield* scale(yield* unary('sign', yield* scatterReduce(zeros, idx, yield* scale(srcHit, 0, 1), sumOpts)), -1, 1)
      : yield* eq(base, y);
  const count = yield* add(selfHit, yield* scatterReduce(zeros, idx, srcHit, sumOpts));
  const share = yield* div(g, count);
  let gs = yield* mul(yield* gather(share, idx, dim), srcHit);
  for (let d = 0; d < idx.ndim; ++d)
    if (gs.shape[d] !== src.shape[d])
      gs = yield* embedAlong(
        gs,
        src.shape.map((n, k) => (k === d ? n : gs.shape[k]!)),
        d,
        0,
      );
  return [yield* mul(share, selfHit), null, gs];
}

// ---- softmax family and losses

defineGrad('log_softmax', function* (req, outs, [g]) {
  return [yield* logSoftmaxBackward(outs[0]!, g!, { dim: (A(req).dim as number | undefined) ?? -1 })];
});
defineGrad('soft_cross_entropy', function* (req, _o, [g]) {
  const [logits, probs] = req.inputs;
  return yield* softCrossEntropyBackward(logits!, probs!, g!, { reduction: A(req).reduction as Reduction | undefined });
});
/**
 * KL(p_t || p_s) / N with p = softmax(x / T): the student's gradient is the native backward; the
 * teacher's is g / (N T) * p_t * (log p_t - log p_s - KL_row), composed from forward ops (the
 * teacher is usually detached, and then nothing reaches it).
 */
defineGrad('kl_div_softmax', function* (req, _o, [g]) {
  const [student, teacher] = req.inputs;
  const T = (A(req).temperature as number | undefined) ?? 1;
  const gs = yield* klDivSoftmaxBackward(student!, teacher!, g!, { temperature: T });
  const N = teacher!.shape[0]!;
  const ts = yield* scale(teacher!, 1 / T, 0);
  const pt = yield* softmax(ts, { dim: 1 });
  const d = yield* sub(
    yield* logSoftmax(ts, { dim: 1 }),
    yield* logSoftmax(yield* scale(student!, 1 / T, 0), { dim: 1 }),
  );
  const klRow = yield* sum(yield* mul(pt, d), { dims: [1], keepdim: true });
  const gt = yield* mul(yield* mul(pt, yield* sub(d, klRow)), yield* scale(g!, 1 / (N * T), 0));
  return [gs, gt];
});
// The code is a constant (straight-through), so only z's own term: 2 (z - code) / numel.
defineGrad('lfq_commitment', function* (req, _o, [g]) {
  return [yield* lfqCommitmentBackward(req.inputs[0]!, g!)];
});
