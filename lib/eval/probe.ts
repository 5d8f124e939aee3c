/**
 * A linear probe: multinomial logistic regression on frozen features, the usual measure of how
 * linearly separable a representation's classes are. Features are standardized with the training
 * split's per-dimension mean and std; the weights are trained with the native `linear` and
 * `cross_entropy` ops recorded on a Tape and updated with Adam, over seeded shuffled mini-batches.
 */
import { Tape } from '../autograd.js';
import { checkInt, checkKeys, optionKeys, typeError } from '../errors.js';
import { RELEASE, runAsync, runSync, type Program } from '../graph.js';
import { crossEntropy } from '../ops/nn.js';
import { linear } from '../ops/linalg.js';
import { Tensor } from '../tensor.js';
import { Adam } from '../train/optim.js';
import { TrainRng } from '../train/rng.js';

/** Options of {@link trainLinearProbe}. */
export interface LinearProbeOptions {
  /** Number of classes (labels lie in [0, classes)). */
  classes: number;
  /** Passes over the training set (default 30). */
  epochs?: number;
  /** Adam learning rate (default 1e-2). */
  lr?: number;
  /** L2 weight decay added to the gradients (Adam, not decoupled; default 1e-4). */
  weightDecay?: number;
  /** Mini-batch size (default 256, capped at N). */
  batchSize?: number;
  /** Seed of the shuffling (default 0); the weights start at zero, so training is deterministic. */
  seed?: number;
}
/** The keys of {@link LinearProbeOptions}. */
export const LINEAR_PROBE_KEYS = optionKeys<LinearProbeOptions>()([
  'classes',
  'epochs',
  'lr',
  'weightDecay',
  'batchSize',
  'seed',
]);

/** A trained probe. */
export interface LinearProbe {
  /** Feature dimension D. */
  readonly dim: number;
  readonly classes: number;
  /** Train-split per-dimension mean and std used to standardize inputs. */
  readonly mean: Float32Array;
  readonly std: Float32Array;
  /** Weights [classes, D] and bias [classes] (on standardized features). */
  readonly weight: Float32Array;
  readonly bias: Float32Array;
  /** Mean training cross entropy of each epoch. */
  readonly losses: number[];
  /** Predicted class per row of `features` [M, D]. */
  predict(features: Float32Array): Int32Array;
  /** Fraction of rows whose prediction equals the label. */
  accuracy(features: Float32Array, labels: ArrayLike<number>): number;
}

function checkFeatures(name: string, features: unknown, dim?: number): { n: number; d: number } {
  if (!(features instanceof Float32Array)) typeError(name, 'a Float32Array [N, D] (row-major)', features);
  if (dim === undefined) return { n: -1, d: -1 };
  if (features.length === 0 || features.length % dim !== 0)
    throw new RangeError(`${name} must hold M * ${dim} values with M >= 1, got ${features.length}`);
  return { n: features.length / dim, d: dim };
}

function checkLabels(labels: unknown, n: number, classes: number): Int32Array {
  if (labels === null || typeof labels !== 'object' || typeof (labels as ArrayLike<number>).length !== 'number')
    typeError('labels', 'an array of class indices', labels);
  const l = labels as ArrayLike<number>;
  if (l.length !== n) throw new RangeError(`labels must hold ${n} values (one per feature row), got ${l.length}`);
  const out = new Int32Array(n);
  for (let i = 0; i < n; ++i) {
    const v = Number(l[i]);
    if (!Number.isInteger(v) || v < 0 || v >= classes)
      throw new RangeError(`labels[${i}] must be an integer in [0, ${classes}), got ${String(l[i])}`);
    out[i] = v;
  }
  return out;
}

function positive(name: string, v: number, allowZero = false): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || (allowZero ? v < 0 : v <= 0))
    throw new RangeError(`${name} must be a finite number ${allowZero ? '>= 0' : '> 0'}, got ${String(v)}`);
  return v;
}

/** Runs `p` as part of an enclosing program, recording its ops on `tape` (releases are dropped). */
function* recorded<T>(p: Program<T>, tape: Tape): Program<T> {
  let step = p.next();
  while (!step.done) {
    const req = step.value;
    if (req.op === RELEASE) {
      step = p.next([]);
      continue;
    }
    let out: Tensor[];
    try {
      out = yield req;
    } catch (err) {
      step = p.throw(err);
      continue;
    }
    tape.observe(req, out);
    step = p.next(out);
  }
  return step.value;
}

/**
 * A probe from stored parameters (e.g. one saved with its `mean`, `std`, `weight` [classes, dim]
 * and `bias`); the arrays are copied and checked against `dim` and `classes`.
 */
export function linearProbeFromArrays(p: {
  dim: number;
  classes: number;
  mean: Float32Array;
  std: Float32Array;
  weight: Float32Array;
  bias: Float32Array;
}): LinearProbe {
  if (!p || typeof p !== 'object') typeError('p', '{ dim, classes, mean, std, weight, bias }', p);
  const dim = checkInt('p.dim', p.dim, 1);
  const classes = checkInt('p.classes', p.classes, 2);
  const arr = (name: string, v: unknown, n: number): Float32Array => {
    if (!(v instanceof Float32Array)) typeError(`p.${name}`, `a Float32Array of ${n} values`, v);
    if (v.length !== n) throw new RangeError(`p.${name} must hold ${n} values, got ${v.length}`);
    return Float32Array.from(v);
  };
  const std = arr('std', p.std, dim);
  if (std.some((v) => !(v > 0))) throw new RangeError('p.std must be positive everywhere');
  return new TrainedProbe(
    dim,
    classes,
    arr('mean', p.mean, dim),
    std,
    arr('weight', p.weight, classes * dim),
    arr('bias', p.bias, classes),
    [],
  );
}

class TrainedProbe implements LinearProbe {
  constructor(
    readonly dim: number,
    readonly classes: number,
    readonly mean: Float32Array,
    readonly std: Float32Array,
    readonly weight: Float32Array,
    readonly bias: Float32Array,
    readonly losses: number[],
  ) {}

  predict(features: Float32Array): Int32Array {
    const { n, d } = checkFeatures('features', features, this.dim);
    const out = new Int32Array(n);
    const z = new Float64Array(d);
    for (let i = 0; i < n; ++i) {
      for (let j = 0; j < d; ++j) z[j] = (features[i * d + j]! - this.mean[j]!) / this.std[j]!;
      let best = 0;
      let bestV = -Infinity;
      for (let c = 0; c < this.classes; ++c) {
        let s = this.bias[c]!;
        for (let j = 0; j < d; ++j) s += this.weight[c * d + j]! * z[j]!;
        if (s > bestV) (bestV = s), (best = c);
      }
      out[i] = best;
    }
    return out;
  }

  accuracy(features: Float32Array, labels: ArrayLike<number>): number {
    const pred = this.predict(features);
    const l = checkLabels(labels, pred.length, this.classes);
    let ok = 0;
    for (let i = 0; i < pred.length; ++i) if (pred[i] === l[i]) ++ok;
    return ok / pred.length;
  }
}

/**
 * Program form of {@link trainLinearProbe}: every native op is yielded, so it runs with runSync
 * or runAsync.
 */
export function* trainLinearProbeProgram(
  features: Float32Array,
  labels: ArrayLike<number>,
  opts: LinearProbeOptions,
): Program<LinearProbe> {
  return yield* probeProgram(features, labels, opts, 'trainLinearProbeProgram options');
}

function* probeProgram(
  features: Float32Array,
  labels: ArrayLike<number>,
  opts: LinearProbeOptions,
  name: string,
): Program<LinearProbe> {
  if (opts === null || typeof opts !== 'object') typeError('opts', 'an options object { classes, ... }', opts);
  checkKeys(name, opts, LINEAR_PROBE_KEYS);
  const classes = checkInt('opts.classes', opts.classes, 2, 1 << 20);
  checkFeatures('features', features);
  const N = (labels as ArrayLike<number>)?.length;
  if (typeof N !== 'number' || N < 1) typeError('labels', 'a non-empty array of class indices', labels);
  if (features.length === 0 || features.length % N !== 0)
    throw new RangeError(`features must hold N * D values for the N = ${N} labels, got ${features.length}`);
  const D = features.length / N;
  const y = checkLabels(labels, N, classes);
  const epochs = checkInt('opts.epochs', opts.epochs ?? 30, 1, 1 << 20);
  const lr = positive('opts.lr', opts.lr ?? 1e-2);
  const wd = positive('opts.weightDecay', opts.weightDecay ?? 1e-4, true);
  const bs = Math.min(N, checkInt('opts.batchSize', opts.batchSize ?? 256, 1, 1 << 24));
  const seed = checkInt('opts.seed', opts.seed ?? 0, 0, 2 ** 32 - 1);

  // Standardize with the training split's statistics (float64 accumulation).
  const mean = new Float32Array(D);
  const std = new Float32Array(D);
  for (let j = 0; j < D; ++j) {
    let s = 0;
    for (let i = 0; i < N; ++i) s += features[i * D + j]!;
    const m = s / N;
    let v = 0;
    for (let i = 0; i < N; ++i) v += (features[i * D + j]! - m) ** 2;
    mean[j] = m;
    const sd = Math.sqrt(v / N);
    std[j] = sd > 1e-6 ? sd : 1;
  }
  const xs = new Float32Array(N * D);
  for (let i = 0; i < N; ++i) for (let j = 0; j < D; ++j) xs[i * D + j] = (features[i * D + j]! - mean[j]!) / std[j]!;

  const params = new Map<string, Tensor>([
    ['weight', Tensor.zeros([classes, D])],
    ['bias', Tensor.zeros([classes])],
  ]);
  const source = { get: (name: string) => params.get(name)! };
  const adam = new Adam(source, ['weight', 'bias'], { lr, weightDecay: wd });
  const rng = new TrainRng(seed);
  const order = new Int32Array(N);
  const losses: number[] = [];
  for (let e = 0; e < epochs; ++e) {
    for (let i = 0; i < N; ++i) order[i] = i;
    for (let i = N - 1; i > 0; --i) {
      const j = rng.int(i + 1);
      const t = order[i]!;
      order[i] = order[j]!;
      order[j] = t;
    }
    let lossSum = 0;
    for (let s = 0; s < N; s += bs) {
      const b = Math.min(bs, N - s);
      const xb = new Float32Array(b * D);
      const tb = new BigInt64Array(b);
      for (let r = 0; r < b; ++r) {
        const idx = order[s + r]!;
        xb.set(xs.subarray(idx * D, (idx + 1) * D), r * D);
        tb[r] = BigInt(y[idx]!);
      }
      const x = Tensor.from(xb, [b, D]);
      const target = Tensor.from(tb, [b]);
      const w = params.get('weight')!;
      const bias = params.get('bias')!;
      const tape = new Tape();
      const logits = yield* recorded(linear(x, w, bias), tape);
      const loss = yield* recorded(crossEntropy(logits, target), tape);
      lossSum += loss.item() * b;
      const g = yield* tape.backward(loss, null, { wrt: [w, bias] });
      const grads = new Map<string, Tensor>();
      const gw = g.get(w);
      const gb = g.get(bias);
      if (gw) grads.set('weight', gw);
      if (gb) grads.set('bias', gb);
      yield* adam.step(grads);
      for (const t of g.values()) if (t !== loss && !t.disposed) t.dispose();
      for (const t of [x, target, logits, loss]) if (!t.disposed) t.dispose();
    }
    losses.push(lossSum / N);
  }
  const weight = Float32Array.from(params.get('weight')!.toArray<'float32'>());
  const bias = Float32Array.from(params.get('bias')!.toArray<'float32'>());
  return new TrainedProbe(D, classes, mean, std, weight, bias, losses);
}

/**
 * Trains a linear probe on `features` [N, D] (row-major) with class `labels` [N]; synchronous.
 * Deterministic for a given seed.
 */
export function trainLinearProbe(
  features: Float32Array,
  labels: ArrayLike<number>,
  opts: LinearProbeOptions,
): LinearProbe {
  return runSync(probeProgram(features, labels, opts, 'trainLinearProbe options'));
}

/** {@link trainLinearProbe} with each native op as its own job off the main thread. */
export function trainLinearProbeAsync(
  features: Float32Array,
  labels: ArrayLike<number>,
  opts: LinearProbeOptions,
): Promise<LinearProbe> {
  return runAsync(probeProgram(features, labels, opts, 'trainLinearProbeAsync options'));
}
