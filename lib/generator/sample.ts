/**
 * Autoregressive sampling of MergeVQGPT (docs/model.md, "AR generator"): per position, the spatial blocks advance one
 * token with their KV caches, then the two sub-tokens are drawn in turn through the factorized
 * blocks (pre from head.0, then post from head.1 given pre_emb(pre)).
 *
 * Per sub-token settings: temperature, top-k, top-p (nucleus, as the reference's
 * `top_k_top_p_filtering`), classifier-free guidance scale. With guidance the batch runs as
 * [cond; null] and logits = u + s (c - u) per sub-token; this holds for any s, 1.0 included
 * (then the result equals the conditional logits). Without `cfgScale` only the conditional batch
 * runs. Draws use a seeded generator, so a seed reproduces a sample exactly.
 */
import { runAsync, runSync, release, type Program } from '../graph.js';
import { Tensor } from '../tensor.js';
import { checkKeys, optionKeys } from '../errors.js';
import type { MergeVQGPT } from './gpt.js';

/** A value for both sub-tokens, or [pre, post]. */
export type PerSubToken<T> = T | readonly [T, T];

export interface SampleOptions {
  /** Number of tokens to generate (default block_size). */
  steps?: number;
  /** Softmax temperature (default 1). */
  temperature?: PerSubToken<number>;
  /** Keep the k most likely (0 = off, default 0). top_k 1 is greedy decoding. */
  topK?: PerSubToken<number>;
  /** Nucleus threshold in (0, 1] (1 = off, default 1). */
  topP?: PerSubToken<number>;
  /** Classifier-free guidance scale; omit (or null) to run without guidance. */
  cfgScale?: PerSubToken<number> | null;
  /** Seed of the sampler (default 0). */
  seed?: number;
  /** Checked before every token; an aborted signal stops sampling with its reason. */
  signal?: AbortSignal;
  /** Called after every generated token with (tokens done, tokens in all). */
  onStep?: (done: number, total: number) => void;
}

export interface SampleResult {
  /** int64 [B, steps] pre sub-tokens. */
  pre: Tensor;
  /** int64 [B, steps] post sub-tokens. */
  post: Tensor;
}

function pair<T>(name: string, v: PerSubToken<T> | undefined, dflt: T): [T, T] {
  if (v === undefined) return [dflt, dflt];
  if (Array.isArray(v)) {
    if (v.length !== 2) throw new RangeError(`${name}: expected one value or [pre, post], got ${v.length} values`);
    return [v[0] as T, v[1] as T];
  }
  return [v as T, v as T];
}

/** Seeded uniform generator on [0, 1) (splitmix32-style), reproducible across platforms. */
export class SeededRandom {
  private state: number;
  constructor(seed = 0) {
    if (!Number.isFinite(seed)) throw new TypeError(`seed must be a finite number, got ${seed}`);
    this.state = (Math.trunc(seed) ^ 0x9e3779b9) >>> 0;
  }
  next(): number {
    this.state = (this.state + 0x9e3779b9) >>> 0;
    let z = this.state;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    z = (z ^ (z >>> 16)) >>> 0;
    return z / 4294967296;
  }
}

/**
 * Draws one index from a row of logits (float32 values) after temperature, top-k and top-p
 * filtering, torch semantics: top-k removes logits below the k-th largest (ties kept); top-p keeps
 * the smallest prefix of the sorted distribution whose mass exceeds p (at least one token).
 */
export function sampleRow(
  logits: Float32Array,
  temperature: number,
  topK: number,
  topP: number,
  rng: SeededRandom,
): number {
  const V = logits.length;
  if (!(temperature > 0)) throw new RangeError(`temperature must be > 0, got ${temperature}`);
  if (!Number.isInteger(topK) || topK < 0) throw new RangeError(`topK must be a non-negative integer, got ${topK}`);
  if (!(topP > 0 && topP <= 1)) throw new RangeError(`topP must be in (0, 1], got ${topP}`);
  const x = new Float32Array(V);
  for (let i = 0; i < V; ++i) x[i] = logits[i]! / temperature;
  const keep = new Uint8Array(V).fill(1);
  if (topK > 0 && topK < V) {
    const sorted = Float32Array.from(x).sort().reverse();
    const kth = sorted[topK - 1]!;
    for (let i = 0; i < V; ++i) if (x[i]! < kth) keep[i] = 0;
  }
  if (topP < 1) {
    const order = Array.from({ length: V }, (_, i) => i)
      .filter((i) => keep[i])
      .sort((a, b) => x[b]! - x[a]! || a - b);
    let m = -Infinity;
    for (const i of order) m = Math.max(m, x[i]!);
    let z = 0;
    for (const i of order) z += Math.exp(x[i]! - m);
    let cum = 0;
    for (let r = 0; r < order.length; ++r) {
      const i = order[r]!;
      // Removed when the mass before it already exceeds p (the shift keeps the first above p).
      if (r > 0 && cum > topP) keep[i] = 0;
      cum += Math.exp(x[i]! - m) / z;
    }
  }
  let m = -Infinity;
  let arg = -1;
  for (let i = 0; i < V; ++i)
    if (keep[i] && x[i]! > m) {
      m = x[i]!;
      arg = i;
    }
  if (arg < 0) throw new RangeError('sampleRow: no finite logit to sample from');
  let z = 0;
  const p = new Float64Array(V);
  for (let i = 0; i < V; ++i) if (keep[i]) z += p[i] = Math.exp(x[i]! - m);
  let u = rng.next() * z;
  for (let i = 0; i < V; ++i) {
    if (!keep[i]) continue;
    u -= p[i]!;
    if (u < 0) return i;
  }
  return arg;
}

/** CFG combination u + (c - u) * s in float32 rounding, as torch: rows [0, B) cond, [B, 2B) null. */
export function guideLogits(logits: Float32Array, B: number, V: number, s: number): Float32Array {
  const f = Math.fround;
  const out = new Float32Array(B * V);
  for (let i = 0; i < B * V; ++i) {
    const c = logits[i]!;
    const u = logits[B * V + i]!;
    out[i] = f(u + f(f(c - u) * s));
  }
  return out;
}

/**
 * The sampling program: labels int64 [B] (class ids in [0, class_num)). Yields native ops; run it
 * with runSync/runAsync, or use {@link generate} / {@link generateSync}.
 */
/** Sampling options resolved per sub-token and checked (shared by the plain and MergeAR samplers). */
export interface SamplingSettings {
  steps: number;
  temperature: [number, number];
  topK: [number, number];
  topP: [number, number];
  cfg: [number, number] | null;
  rng: SeededRandom;
}

/** The keys of SampleOptions. */
export const SAMPLE_OPTION_KEYS = optionKeys<SampleOptions>()([
  'steps',
  'temperature',
  'topK',
  'topP',
  'cfgScale',
  'seed',
  'signal',
  'onStep',
]);

/** The sampling settings of `opts` (whose keys the caller has checked). */
export function samplingSettings(opts: SampleOptions, blockSize: number): SamplingSettings {
  const steps = opts.steps ?? blockSize;
  if (!Number.isInteger(steps) || steps < 1 || steps > blockSize)
    throw new RangeError(`steps must be an integer in [1, ${blockSize}], got ${steps}`);
  const cfg = opts.cfgScale === undefined || opts.cfgScale === null ? null : pair('cfgScale', opts.cfgScale, 1);
  if (cfg) for (const s of cfg) if (!Number.isFinite(s)) throw new RangeError(`cfgScale must be finite, got ${s}`);
  return {
    steps,
    temperature: pair('temperature', opts.temperature, 1),
    topK: pair('topK', opts.topK, 0),
    topP: pair('topP', opts.topP, 1),
    cfg,
    rng: new SeededRandom(opts.seed ?? 0),
  };
}

export function* sampleProgram(model: MergeVQGPT, labels: Tensor, opts: SampleOptions = {}): Program<SampleResult> {
  const c = model.config;
  if (!(labels instanceof Tensor) || labels.ndim !== 1 || (labels.dtype !== 'int64' && labels.dtype !== 'int32'))
    throw new TypeError(
      `labels must be an int64 [B] Tensor, got ${labels instanceof Tensor ? labels.toString() : String(labels)}`,
    );
  const B = labels.shape[0]!;
  const lab =
    labels.dtype === 'int64' ? Array.from(labels.toArray<'int64'>(), Number) : Array.from(labels.toArray<'int32'>());
  for (const l of lab)
    if (!Number.isInteger(l) || l < 0 || l > c.class_num)
      throw new RangeError(`labels: class id ${l} outside [0, ${c.class_num}]`);
  checkKeys('generate options', opts, SAMPLE_OPTION_KEYS);
  const { steps, temperature, topK, topP, cfg, rng } = samplingSettings(opts, c.block_size);
  const Bt = cfg ? 2 * B : B;
  const allLabels = cfg ? [...lab, ...lab.map(() => model.nullClass)] : lab;
  const V = model.subVocab;

  const spatialCaches = model.newSpatialCaches(Bt, steps);
  const factCaches = model.newFactorizedCaches(Bt);
  const outPre = new BigInt64Array(B * steps);
  const outPost = new BigInt64Array(B * steps);
  let prevPre: number[] = [];
  let prevPost: number[] = [];

  const draw = (logits: Tensor, k: 0 | 1): number[] => {
    let rows = logits.toFloat32();
    if (cfg) rows = guideLogits(rows, B, V[k], cfg[k]);
    const picks: number[] = [];
    for (let b = 0; b < B; ++b)
      picks.push(sampleRow(rows.subarray(b * V[k], (b + 1) * V[k]), temperature[k], topK[k], topP[k], rng));
    return picks;
  };
  const idx = (vals: number[]) => {
    const all = cfg ? [...vals, ...vals] : vals;
    return Tensor.from(
      BigInt64Array.from(all, (v) => BigInt(v)),
      [Bt, 1],
    );
  };

  for (let n = 0; n < steps; ++n) {
    opts.signal?.throwIfAborted();
    const x =
      n === 0
        ? yield* model.classEmbedding(
            Tensor.from(
              BigInt64Array.from(allLabels, (v) => BigInt(v)),
              [Bt],
            ),
          )
        : yield* model.tokenEmbedding(idx(prevPre), idx(prevPost));
    const h = yield* model.spatialStep(x, spatialCaches, n);
    yield* release(x);
    const l0 = yield* model.subTokenStep(h, factCaches, 0);
    prevPre = draw(l0, 0);
    yield* release(h, l0);
    const ePre = yield* model.preEmbedding(idx(prevPre));
    const l1 = yield* model.subTokenStep(ePre, factCaches, 1);
    prevPost = draw(l1, 1);
    yield* release(ePre, l1);
    for (let b = 0; b < B; ++b) {
      outPre[b * steps + n] = BigInt(prevPre[b]!);
      outPost[b * steps + n] = BigInt(prevPost[b]!);
    }
    opts.onStep?.(n + 1, steps);
  }
  return { pre: Tensor.from(outPre, [B, steps]), post: Tensor.from(outPost, [B, steps]) };
}

/** Samples asynchronously (one native job per op, the event loop stays free). */
export function generate(model: MergeVQGPT, labels: Tensor, opts: SampleOptions = {}): Promise<SampleResult> {
  return runAsync(sampleProgram(model, labels, opts));
}
/** Samples on the calling thread. */
export function generateSync(model: MergeVQGPT, labels: Tensor, opts: SampleOptions = {}): SampleResult {
  return runSync(sampleProgram(model, labels, opts));
}
