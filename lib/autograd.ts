/**
 * Reverse-mode autodiff over op programs. A `Tape` observes every op a program runs (pass
 * `tape.observe` to `runSync`/`runAsync`); `tape.backward(loss)` is itself a program that walks
 * the recorded ops in reverse and runs each op's gradient rule (native `*_backward` ops, or
 * compositions of forward ops), accumulating gradients per tensor.
 *
 * Tensors are identified by their `Tensor` handle: parameters from a `ParamStore` keep one handle,
 * so `grads.get(store.get(name))` is that parameter's gradient. Ops whose decisions are discrete
 * (ToMe matching, argmax, LFQ indices) are not differentiated; LFQ codes pass gradients straight
 * through to z (the straight-through estimator); `detach` stops gradients.
 */
import type { OpRequest, Program } from './graph.js';
import { MergeVQError, checkKeys, optionKeys } from './errors.js';
import { Tensor } from './tensor.js';
import { attentionBackward, type AttentionOptions } from './ops/attention.js';
import { lfqEntropyBackward } from './ops/lfq.js';
import { conv2dBackward, linearBackward, matmulBackward } from './ops/linalg.js';
import { mergeWavgBackward, unmergeBackward } from './ops/merge.js';
import {
  batchNormBackward,
  crossEntropyBackward,
  geluBackward,
  groupNormBackward,
  l1LossBackward,
  layerNormBackward,
  leakyReluBackward,
  mseLossBackward,
  rmsNormBackward,
  siluBackward,
  softmaxBackward,
  swigluBackward,
  type CrossEntropyOptions,
  type FusedAct,
  type Reduction,
} from './ops/nn.js';
import { maxPool2dBackward } from './ops/pool.js';
import {
  add,
  clampBackward,
  concat,
  div,
  embeddingBackward,
  expand,
  gatherBackward,
  mean,
  mul,
  narrow,
  permute,
  permuteView,
  reshape,
  ropeBackward,
  scale,
  spaceToDepth,
  sub,
  sumTo as sumToOp,
  unary,
} from './ops/tensor.js';

/** Input gradients for one recorded op, given the gradients of its outputs (null = none). */
export type GradRule = (req: OpRequest, outs: Tensor[], gouts: (Tensor | null)[]) => Program<(Tensor | null)[]>;

const rules = new Map<string, GradRule>();
/** Ops that never carry gradient (discrete outputs, or explicitly detached). */
const nonDifferentiable = new Set<string>([
  'tome_match',
  'tome_source_update',
  'tome_source_dense',
  'argmax',
  'detach',
  'cast',
  'lfq_indices_to_codes',
  'lfq_factorize',
  'lfq_unfactorize',
  'fma_peak',
]);

/** Registers the gradient rule of `op`. */
export function defineGrad(op: string, rule: GradRule): void {
  rules.set(op, rule);
}
/** Marks `op` as not differentiable (its outputs never receive gradients). */
export function defineNonDifferentiable(op: string): void {
  nonDifferentiable.add(op);
}
export function hasGrad(op: string): boolean {
  return rules.has(op) || nonDifferentiable.has(op);
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
        if (!rule) throw new MergeVQError(`backward: op '${req.op}' has no gradient rule`, 'ERR_NO_GRAD');
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
