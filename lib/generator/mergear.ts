/**
 * MergeAR (docs/model.md, "MergeAR"): KV-cache compression of the AR generator for token sequences with repeated
 * codes (an unmerged grid carries only about K distinct codes).
 *
 * Groups: g(i) = the first position j <= i whose (pre, post) code equals token i's code; token i is
 * a first occurrence when g(i) = i. Visibility of a content key j for a content query i (j <= i):
 * j = i, or i - w <= j (recent window, default w = {@link MERGEAR_WINDOW} = 2), or g(j) = j.
 * Prefix tokens are always visible.
 *
 * Sequence layout: [C, M, e_0 .. e_{N-2}], C = class embedding, M = merge instruction (the learned
 * embedding `merge_emb.weight[keepIndex]` of the keep count's index in the candidate list). Sequence
 * position 1 (M) predicts token 0; position s >= 2 holds e_{s-2} and predicts token s-1.
 *
 * RoPE rows: both prefix rows get cos = sin = 0 (as the reference's single cls row: their q and k
 * are zero), content token n (at sequence position n + 2) uses grid cell n, its own raster
 * position. The table is `precompute2dFreqs(grid, hd, base, 2)` and sequence position s uses row s.
 * Keys are rotated before they are cached, so compaction moves rotated keys and no position is
 * ever recomputed.
 *
 * Inference ({@link MergeARDecoder}): after each step the code of the new token is looked up in a
 * per-sample Map of earlier first occurrences; a duplicate's key/value rows leave the cache as soon
 * as they fall out of the recent window of the next query, by `kv_cache_compact` with an index map
 * (in place, no reallocation). Attention over the compacted cache uses q_offset = the raw sequence
 * position, causal, window 0 and a `keep` flag per cache slot (1 = a live row of that sample):
 * every live row is visible, nothing else. Rows of a batch can hold different numbers of live rows;
 * the cache length is the largest, and the shorter rows are padded with dead slots (keep 0).
 */
import { checkKeys, optionKeys } from '../errors.js';
import { release, runAsync, runSync, type Program } from '../graph.js';
import { W } from '../nn/params.js';
import { kvCacheCompact, type AttentionOptions } from '../ops/attention.js';
import { crossEntropy } from '../ops/nn.js';
import { add, concat, embedding, precompute2dFreqs, reshape, slice } from '../ops/tensor.js';
import { Tensor } from '../tensor.js';
import { gridSize, type GPTConfig } from './config.js';
import { MergeVQGPT, type GPTLogits, type LayerCache } from './gpt.js';
import {
  SAMPLE_OPTION_KEYS,
  guideLogits,
  sampleRow,
  samplingSettings,
  type SampleOptions,
  type SampleResult,
} from './sample.js';

/** Default MergeAR recent window w. */
export const MERGEAR_WINDOW = 2;

function ints(t: Tensor | ArrayLike<number | bigint>): number[] {
  if (t instanceof Tensor) {
    if (t.dtype === 'int64') return Array.from(t.toArray<'int64'>(), Number);
    if (t.dtype === 'int32') return Array.from(t.toArray<'int32'>());
    throw new TypeError(`expected an int64 or int32 tensor, got ${t.toString()}`);
  }
  return Array.from(t as ArrayLike<number | bigint>, Number);
}

/**
 * Code groups of B token sequences of length N (pre/post row-major [B, N]): `group[b*N+i]` = g(i),
 * `first[b*N+i]` = 1 when g(i) = i. Codes are compared as (pre, post) pairs.
 */
export function codeGroups(
  pre: Tensor | ArrayLike<number | bigint>,
  post: Tensor | ArrayLike<number | bigint>,
  B: number,
  N: number,
): { group: Int32Array; first: Uint8Array } {
  const p = ints(pre);
  const q = ints(post);
  if (p.length !== B * N || q.length !== B * N)
    throw new RangeError(`codeGroups: pre and post must hold B*N = ${B * N} values, got ${p.length} and ${q.length}`);
  const group = new Int32Array(B * N);
  const first = new Uint8Array(B * N);
  for (let b = 0; b < B; ++b) {
    const seen = new Map<string, number>();
    for (let i = 0; i < N; ++i) {
      const key = `${p[b * N + i]},${q[b * N + i]}`;
      const g = seen.get(key);
      if (g === undefined) {
        seen.set(key, i);
        group[b * N + i] = i;
        first[b * N + i] = 1;
      } else group[b * N + i] = g;
    }
  }
  return { group, first };
}

/**
 * The MergeAR mask rule, stated directly: the sequence positions a query at sequence position `q`
 * sees, given the prefix length P, the first-occurrence flags of the content tokens (content token
 * n sits at sequence position P + n) and the window w.
 */
export function maskVisibleKeys(q: number, P: number, first: ArrayLike<number>, w: number): number[] {
  const out: number[] = [];
  for (let s = 0; s <= q; ++s) {
    if (s < P || q - s <= w || first[s - P]) out.push(s);
  }
  return out;
}

/** Decoding mode: MergeAR with compaction, MergeAR mask over the full cache, or plain causal decoding. */
export type DecodeMode = 'compact' | 'masked' | 'full';

export interface MergeAROptions {
  /** Number of keep-count candidates (rows of `merge_emb.weight`). */
  numCandidates: number;
  /** Recent window w (default {@link MERGEAR_WINDOW}). */
  window?: number;
}
const MERGEAR_KEYS = optionKeys<MergeAROptions>()(['numCandidates', 'window']);

/** Options of {@link MergeARGPT.forwardAR}. */
export interface ForwardAROptions {
  /** The MergeAR visibility (default true); false: plain causal attention. */
  mask?: boolean;
}
const FORWARD_AR_KEYS = optionKeys<ForwardAROptions>()(['mask']);

/** Options of the MergeAR samplers: the plain sampler's, plus the decoding mode. */
export interface MergeARSampleOptions extends SampleOptions {
  /** 'compact' (default): MergeAR with its compacted cache; 'masked' or 'full' (see {@link DecodeMode}). */
  mode?: DecodeMode;
}
const MERGEAR_SAMPLE_KEYS = optionKeys<MergeARSampleOptions>()([...SAMPLE_OPTION_KEYS, 'mode']);

/**
 * MergeVQGPT with MergeAR: adds `merge_emb.weight` [numCandidates, dim] (the plain
 * {@link MergeVQGPT} keeps exactly the reference's parameter names).
 */
export class MergeARGPT extends MergeVQGPT {
  readonly mergeEmb: string;
  readonly window: number;
  readonly numCandidates: number;
  private readonly tables = new Map<number, Tensor>();
  private readonly rows = new Map<string, Tensor>();

  constructor(config: Partial<GPTConfig> | Record<string, unknown>, opts: MergeAROptions) {
    super(config);
    checkKeys('MergeARGPT options', opts, MERGEAR_KEYS);
    if (!Number.isInteger(opts.numCandidates) || opts.numCandidates < 1)
      throw new RangeError(`numCandidates must be a positive integer, got ${opts.numCandidates}`);
    const w = opts.window ?? MERGEAR_WINDOW;
    if (!Number.isInteger(w) || w < 0) throw new RangeError(`window must be a non-negative integer, got ${w}`);
    this.window = w;
    this.numCandidates = opts.numCandidates;
    this.mergeEmb = this.store.declare('merge_emb.weight', [opts.numCandidates, this.config.dim], W.normal(0.02));
  }

  /** Frees the weights and the cached RoPE tables and rows (see {@link MergeVQGPT.dispose}). */
  override dispose(): void {
    super.dispose();
    for (const m of [this.tables, this.rows]) {
      for (const t of m.values()) if (!t.disposed) t.dispose();
      m.clear();
    }
  }

  /** RoPE rows [start, start + n) for a prefix of P tokens (P zero rows, then the grid cells). */
  prefixFreqRows(P: number, start: number, n: number): Tensor {
    let table = this.tables.get(P); // [P + L, hd/2, 2]
    if (!table) {
      table = precompute2dFreqs(gridSize(this.config), this.headDim, this.config.rope_base, P);
      this.tables.set(P, table);
    }
    return this.cachedRopeRows(this.rows, `${P}:${start}:${n}`, table, start, n, '');
  }

  /** Merge-instruction embeddings: keepIndex int64 [B] (candidate indices) -> [B, 1, D]. */
  *mergeEmbedding(keepIndex: Tensor): Program<Tensor> {
    for (const k of ints(keepIndex)) {
      if (!Number.isInteger(k) || k < 0 || k >= this.numCandidates)
        throw new RangeError(`keepIndex: ${k} outside [0, ${this.numCandidates})`);
    }
    const e = yield* embedding(this.store.get(this.mergeEmb), keepIndex); // [B, D]
    return yield* reshape(e, [keepIndex.shape[0]!, 1, this.config.dim]);
  }

  /**
   * The keep mask of a teacher-forced sequence: uint8 [B, P + N - 1], 1 for the P prefix tokens and
   * for the inputs e_0 .. e_{N-2} that are first occurrences of their code.
   */
  keepMask(idxPre: Tensor, idxPost: Tensor, P: number): Tensor {
    const [B, N] = idxPre.shape as [number, number];
    const { first } = codeGroups(idxPre, idxPost, B, N);
    const S = P + N - 1;
    const keep = new Uint8Array(B * S);
    for (let b = 0; b < B; ++b) {
      for (let s = 0; s < P; ++s) keep[b * S + s] = 1;
      for (let n = 0; n < N - 1; ++n) keep[b * S + P + n] = first[b * N + n]!;
    }
    return Tensor.from(keep, [B, S]);
  }

  /**
   * Teacher-forced MergeAR forward: idxPre, idxPost int64 [B, N], labels int64 [B], keepIndex
   * int64 [B] (or null: no [M] token, prefix = [C] only, the plain GPT's sequence). With `mask`
   * (default true) the spatial blocks use the MergeAR visibility; without, plain causal attention.
   * Returns logits for tokens 0..N-1. Differentiable with `Tape`.
   */
  *forwardAR(
    idxPre: Tensor,
    idxPost: Tensor,
    labels: Tensor,
    keepIndex: Tensor | null,
    opts: ForwardAROptions = {},
  ): Program<GPTLogits> {
    checkKeys('MergeARGPT.forwardAR options', opts, FORWARD_AR_KEYS);
    const c = this.config;
    const [B, N] = idxPre.shape as [number, number];
    if (idxPre.ndim !== 2 || idxPost.ndim !== 2 || idxPost.shape[0] !== B || idxPost.shape[1] !== N)
      throw new RangeError(
        `forwardAR: idxPre and idxPost must both be [B, N], got [${idxPre.shape}] and [${idxPost.shape}]`,
      );
    if (labels.ndim !== 1 || labels.shape[0] !== B)
      throw new RangeError(`forwardAR: labels must be [${B}], got [${labels.shape}]`);
    if (keepIndex && (keepIndex.ndim !== 1 || keepIndex.shape[0] !== B))
      throw new RangeError(`forwardAR: keepIndex must be [${B}], got [${keepIndex.shape}]`);
    if (N > c.block_size) throw new RangeError(`forwardAR: N = ${N} exceeds block_size ${c.block_size}`);
    const P = keepIndex ? 2 : 1;
    const parts = [yield* this.classEmbedding(labels)]; // [B, 1, D]
    if (keepIndex) parts.push(yield* this.mergeEmbedding(keepIndex)); // [B, 1, D]
    if (N > 1) parts.push(yield* slice(yield* this.tokenEmbedding(idxPre, idxPost), 1, 0, N - 1)); // e_0 .. e_{N-2}: [B, N-1, D]
    let h = parts.length === 1 ? parts[0]! : yield* concat(parts, 1); // [B, S, D]
    const S = P + N - 1;
    const freqs = this.prefixFreqRows(P, 0, S);
    const masked = opts.mask ?? true;
    const keep = masked ? this.keepMask(idxPre, idxPost, P) : null; // uint8 [B, S]
    const attn: AttentionOptions = masked ? { causal: true, window: this.window } : { causal: true };
    for (const blk of this.spatial) h = yield* blk.forwardWith(h, freqs, keep, attn, null, 0);
    if (P > 1) h = yield* slice(h, 1, P - 1, S); // positions M, e_0 .. e_{N-2}: [B, N, D]
    return yield* this.factorizedLogits(h, idxPre);
  }

  /** MergeAR training loss CE(pre) + CE(post), teacher-forced with the MergeAR mask. */
  *lossAR(
    idxPre: Tensor,
    idxPost: Tensor,
    labels: Tensor,
    keepIndex: Tensor | null,
  ): Program<{ loss: Tensor; logits: GPTLogits }> {
    const logits = yield* this.forwardAR(idxPre, idxPost, labels, keepIndex);
    const [B, N] = idxPre.shape as [number, number];
    const [V0, V1] = this.subVocab;
    const l0 = yield* crossEntropy(yield* reshape(logits.pre, [B * N, V0]), yield* reshape(idxPre, [B * N])); // scalar
    const l1 = yield* crossEntropy(yield* reshape(logits.post, [B * N, V1]), yield* reshape(idxPost, [B * N]));
    return { loss: yield* add(l0, l1), logits };
  }
}

/** Statistics of one decode step of the spatial stack. */
export interface DecodeStepStats {
  /** Sequence position of the query. */
  pos: number;
  /** Cache rows attended (kv_len of the step). */
  kvLen: number;
  /** Bytes of the attended K and V rows over all spatial layers and batch rows. */
  kvBytes: number;
  /** Visible (query, key) pairs summed over batch rows (per head and layer). */
  visiblePairs: number;
  /** Largest number of live rows of a batch row after the step's eviction. */
  liveAfter: number;
}

/**
 * Spatial-stack decoder with MergeAR cache compaction. Holds the spatial KV caches (capacity
 * P + steps slots), the slot -> sequence position map per batch row, the live flags and the hash of
 * first occurrences per batch row.
 */
export class MergeARDecoder {
  readonly P = 2;
  readonly caches: LayerCache[];
  readonly cap: number;
  /** Current cache length (slots in use, common to all batch rows). */
  len = 0;
  /** Sequence position of the next input. */
  nextPos = 0;
  readonly stats: DecodeStepStats[] = [];
  private readonly slotPos: Int32Array;
  private readonly live: Uint8Array;
  private readonly firstSeen: Map<number, number>[];
  private readonly firstFlag: Uint8Array[];
  private lastVisible: number[][] = [];

  constructor(
    readonly model: MergeARGPT,
    readonly B: number,
    steps: number,
    readonly mode: DecodeMode = 'compact',
  ) {
    this.cap = this.P + steps;
    this.caches = model.newSpatialCaches(B, this.cap);
    this.slotPos = new Int32Array(B * this.cap);
    this.live = new Uint8Array(B * this.cap);
    this.firstSeen = Array.from({ length: B }, () => new Map());
    this.firstFlag = Array.from({ length: B }, () => new Uint8Array(steps));
  }

  /** Sequence positions each batch row's last query saw (for checks). */
  visibleAtLastStep(): number[][] {
    return this.lastVisible.map((v) => [...v]);
  }

  private *run(x: Tensor): Program<Tensor> {
    const B = this.B;
    const n = x.shape[1]!;
    const q0 = this.nextPos;
    const slot = this.len;
    if (slot + n > this.cap) throw new RangeError(`MergeARDecoder: cache capacity ${this.cap} exceeded`);
    for (let b = 0; b < B; ++b) {
      for (let t = 0; t < n; ++t) {
        this.slotPos[b * this.cap + slot + t] = q0 + t;
        this.live[b * this.cap + slot + t] = 1;
      }
    }
    // Raw q_offset: a multi-token input (the prefix) is only accepted before any compaction, where
    // slots equal positions; single-token steps have slot <= position, so causal hides nothing.
    if (n > 1 && slot !== q0) throw new RangeError('MergeARDecoder: multi-token inputs only before compaction');
    const kvLen = slot + n;
    const freqs = this.model.prefixFreqRows(this.P, q0, n);
    let keep: Tensor | null = null;
    let attn: AttentionOptions;
    if (this.mode === 'full') attn = { causal: true, qOffset: q0, kvLen };
    else {
      keep = Tensor.from(Uint8Array.from(this.live), [B, this.cap]); // uint8 [B, cap]
      // Window 0 (not the model's window: eviction already applied it): a key is visible iff its
      // slot is live for this batch row (dead padding slots sit below the new slot <= q0, so the
      // qpos == j clause never reaches them).
      attn = { causal: true, qOffset: q0, kvLen, window: 0 };
    }
    let h = x;
    for (let i = 0; i < this.model.spatial.length; ++i) {
      const next = yield* this.model.spatial[i]!.forwardWith(h, freqs, keep, attn, this.caches[i]!, slot);
      if (h !== x) yield* release(h);
      h = next;
    }
    // Bookkeeping of what the last query saw.
    let pairs = 0;
    this.lastVisible = [];
    for (let b = 0; b < B; ++b) {
      const vis: number[] = [];
      for (let j = 0; j < kvLen; ++j) if (this.live[b * this.cap + j]) vis.push(this.slotPos[b * this.cap + j]!);
      this.lastVisible.push(vis);
      pairs += vis.length;
    }
    const hdBytes = this.model.headDim * 4;
    this.len = kvLen;
    this.nextPos = q0 + n;
    if (this.mode !== 'full') yield* this.evict();
    let liveAfter = 0;
    for (let b = 0; b < B; ++b) {
      let c = 0;
      for (let j = 0; j < this.len; ++j) c += this.live[b * this.cap + j]!;
      liveAfter = Math.max(liveAfter, c);
    }
    this.stats.push({
      pos: this.nextPos - 1,
      kvLen,
      kvBytes: 2 * this.model.spatial.length * B * this.model.config.n_head * kvLen * hdBytes,
      visiblePairs: pairs,
      liveAfter,
    });
    return h;
  }

  /** Marks duplicates that left the next query's window dead; compacts the caches when possible. */
  private *evict(): Program<void> {
    const B = this.B;
    const cap = this.cap;
    const nextQ = this.nextPos;
    const w = this.model.window;
    const liveIdx: number[][] = [];
    let maxLive = 0;
    for (let b = 0; b < B; ++b) {
      const idx: number[] = [];
      for (let j = 0; j < this.len; ++j) {
        const o = b * cap + j;
        if (!this.live[o]) continue;
        const s = this.slotPos[o]!;
        const isFirst = s < this.P || this.firstFlag[b]![s - this.P] === 1;
        if (!isFirst && nextQ - s > w) this.live[o] = 0;
        else idx.push(j);
      }
      liveIdx.push(idx);
      maxLive = Math.max(maxLive, idx.length);
    }
    if (this.mode !== 'compact' || maxLive === this.len) return;
    // Index map [B, maxLive]: the live slots, padded with the lowest dead slots, in increasing order.
    const map = new Int32Array(B * maxLive);
    for (let b = 0; b < B; ++b) {
      const sel = new Set(liveIdx[b]);
      for (let j = 0; sel.size < maxLive; ++j) sel.add(j);
      const sorted = [...sel].sort((a, c) => a - c);
      const pos = sorted.map((j) => this.slotPos[b * cap + j]!);
      const lv = sorted.map((j) => this.live[b * cap + j]!);
      for (let t = 0; t < maxLive; ++t) {
        map[b * maxLive + t] = sorted[t]!;
        this.slotPos[b * cap + t] = pos[t]!;
        this.live[b * cap + t] = lv[t]!;
      }
      for (let t = maxLive; t < cap; ++t) this.live[b * cap + t] = 0;
    }
    const keepIdx = Tensor.from(map, [B, maxLive]);
    const len = this.len;
    for (const c of this.caches) {
      yield* kvCacheCompact(c.k, keepIdx, len);
      yield* kvCacheCompact(c.v, keepIdx, len);
    }
    this.len = maxLive;
  }

  /** Runs the prefix [C, M]: labels, keepIndex int64 [B]. Returns h [B, 1, D] of position 1 (predicts token 0). */
  *prefix(labels: Tensor, keepIndex: Tensor): Program<Tensor> {
    if (this.nextPos !== 0) throw new RangeError('MergeARDecoder.prefix: the prefix was already run');
    const x = yield* concat([yield* this.model.classEmbedding(labels), yield* this.model.mergeEmbedding(keepIndex)], 1); // [C, M]: [B, 2, D]
    const h = yield* this.run(x); // [B, 2, D]
    return yield* slice(h, 1, 1, 2); // position 1 (M): [B, 1, D]
  }

  /**
   * Feeds content token n (codes pre/post per batch row) at sequence position P + n; returns h
   * [B, 1, D] (predicts token n + 1).
   */
  *step(pre: readonly number[], post: readonly number[]): Program<Tensor> {
    const B = this.B;
    const n = this.nextPos - this.P;
    if (n < 0) throw new RangeError('MergeARDecoder.step: run the prefix first');
    const V1 = this.model.subVocab[1];
    for (let b = 0; b < B; ++b) {
      const code = pre[b]! * V1 + post[b]!;
      if (!this.firstSeen[b]!.has(code)) {
        this.firstSeen[b]!.set(code, this.nextPos);
        this.firstFlag[b]![n] = 1;
      }
    }
    const idx = (v: readonly number[]) =>
      Tensor.from(
        BigInt64Array.from(v, (x) => BigInt(x)),
        [B, 1],
      );
    const x = yield* this.model.tokenEmbedding(idx(pre), idx(post));
    return yield* this.run(x);
  }
}

/**
 * Replays a known token sequence through the decoder (teacher forcing, step by step): returns the
 * logits of every position, the per-step stats and timings. pre/post int64 [B, N], labels and
 * keepIndex int64 [B]. `onStep(n, decoder)` runs after the spatial stack of the query predicting
 * token n.
 */
export function decodeReplay(
  model: MergeARGPT,
  pre: Tensor,
  post: Tensor,
  labels: Tensor,
  keepIndex: Tensor,
  mode: DecodeMode = 'compact',
  onStep?: (n: number, dec: MergeARDecoder) => void,
): { pre: Float32Array; post: Float32Array; stats: DecodeStepStats[]; stepMs: number[] } {
  const [B, N] = pre.shape as [number, number];
  const [V0, V1] = model.subVocab;
  const pa = ints(pre);
  const qa = ints(post);
  const dec = new MergeARDecoder(model, B, N - 1, mode);
  const outPre = new Float32Array(B * N * V0);
  const outPost = new Float32Array(B * N * V1);
  const stepMs: number[] = [];
  const col = (a: number[], n: number) => Array.from({ length: B }, (_, b) => a[b * N + n]!);
  for (let n = 0; n < N; ++n) {
    const t0 = performance.now();
    const h = runSync(n === 0 ? dec.prefix(labels, keepIndex) : dec.step(col(pa, n - 1), col(qa, n - 1)));
    onStep?.(n, dec);
    const fc = model.newFactorizedCaches(B);
    const l0 = runSync(model.subTokenStep(h, fc, 0)).toFloat32();
    const cur = Tensor.from(
      BigInt64Array.from(col(pa, n), (v) => BigInt(v)),
      [B, 1],
    );
    const l1 = runSync(model.subTokenStep(runSync(model.preEmbedding(cur)), fc, 1)).toFloat32();
    stepMs.push(performance.now() - t0);
    for (let b = 0; b < B; ++b) {
      outPre.set(l0.subarray(b * V0, (b + 1) * V0), (b * N + n) * V0);
      outPost.set(l1.subarray(b * V1, (b + 1) * V1), (b * N + n) * V1);
    }
  }
  return { pre: outPre, post: outPost, stats: dec.stats, stepMs };
}

/** Summary of a decode run for reporting: per-step stats plus totals and tokens/s. */
export interface DecodeReport {
  mode: DecodeMode;
  steps: DecodeStepStats[];
  stepMs: number[];
  totalMs: number;
  tokensPerSec: number;
  totalVisiblePairs: number;
  finalKvLen: number;
  finalKvBytes: number;
}

/**
 * Decodes the same sequence with MergeAR compaction and with a full causal cache (same weights) and
 * returns both reports: KV length and bytes per step, attention work (visible pairs), tokens/s.
 */
export function mergeARDecodeStats(
  model: MergeARGPT,
  pre: Tensor,
  post: Tensor,
  labels: Tensor,
  keepIndex: Tensor,
): { compact: DecodeReport; full: DecodeReport } {
  const one = (mode: DecodeMode): DecodeReport => {
    const r = decodeReplay(model, pre, post, labels, keepIndex, mode);
    const totalMs = r.stepMs.reduce((a, b) => a + b, 0);
    const last = r.stats[r.stats.length - 1]!;
    return {
      mode,
      steps: r.stats,
      stepMs: r.stepMs,
      totalMs,
      tokensPerSec: (r.stepMs.length * pre.shape[0]!) / (totalMs / 1000),
      totalVisiblePairs: r.stats.reduce((a, s) => a + s.visiblePairs, 0),
      finalKvLen: last.kvLen,
      finalKvBytes: last.kvBytes,
    };
  };
  return { compact: one('compact'), full: one('full') };
}

/**
 * MergeAR sampling: as {@link sampleProgram} of sample.ts but with the [C, M] prefix (keepIndex
 * int64 [B], the keep-count candidate index) and the compacted spatial cache. With `cfgScale` the
 * batch runs as [cond; null]; both halves carry the same tokens, hence the same compaction.
 */
export function* sampleMergeARProgram(
  model: MergeARGPT,
  labels: Tensor,
  keepIndex: Tensor,
  opts: MergeARSampleOptions = {},
): Program<SampleResult & { stats: DecodeStepStats[] }> {
  const c = model.config;
  const lab = ints(labels);
  const kidx = ints(keepIndex);
  const B = lab.length;
  if (kidx.length !== B) throw new RangeError(`keepIndex must be [${B}], got ${kidx.length} values`);
  for (const l of lab)
    if (!Number.isInteger(l) || l < 0 || l > c.class_num)
      throw new RangeError(`labels: class id ${l} outside [0, ${c.class_num}]`);
  checkKeys('generateMergeAR options', opts, MERGEAR_SAMPLE_KEYS);
  const { steps, temperature, topK, topP, cfg, rng } = samplingSettings(opts, c.block_size);
  const Bt = cfg ? 2 * B : B;
  const allLabels = cfg ? [...lab, ...lab.map(() => model.nullClass)] : lab;
  const allKeep = cfg ? [...kidx, ...kidx] : kidx;
  const V = model.subVocab;
  const dec = new MergeARDecoder(model, Bt, steps - 1, opts.mode ?? 'compact');
  const outPre = new BigInt64Array(B * steps);
  const outPost = new BigInt64Array(B * steps);
  const draw = (logits: Tensor, k: 0 | 1): number[] => {
    let rows = logits.toFloat32();
    if (cfg) rows = guideLogits(rows, B, V[k], cfg[k]);
    const picks: number[] = [];
    for (let b = 0; b < B; ++b)
      picks.push(sampleRow(rows.subarray(b * V[k], (b + 1) * V[k]), temperature[k], topK[k], topP[k], rng));
    return picks;
  };
  const both = (v: number[]) => (cfg ? [...v, ...v] : v);
  const i64 = (v: number[], shape: number[]) =>
    Tensor.from(
      BigInt64Array.from(v, (x) => BigInt(x)),
      shape,
    );
  let prevPre: number[] = [];
  let prevPost: number[] = [];
  for (let n = 0; n < steps; ++n) {
    opts.signal?.throwIfAborted();
    const h =
      n === 0
        ? yield* dec.prefix(i64(allLabels, [Bt]), i64(allKeep, [Bt]))
        : yield* dec.step(both(prevPre), both(prevPost));
    const fc = model.newFactorizedCaches(Bt);
    const l0 = yield* model.subTokenStep(h, fc, 0);
    prevPre = draw(l0, 0);
    yield* release(h, l0);
    const ePre = yield* model.preEmbedding(i64(both(prevPre), [Bt, 1]));
    const l1 = yield* model.subTokenStep(ePre, fc, 1);
    prevPost = draw(l1, 1);
    yield* release(ePre, l1);
    for (let b = 0; b < B; ++b) {
      outPre[b * steps + n] = BigInt(prevPre[b]!);
      outPost[b * steps + n] = BigInt(prevPost[b]!);
    }
    opts.onStep?.(n + 1, steps);
  }
  return { pre: Tensor.from(outPre, [B, steps]), post: Tensor.from(outPost, [B, steps]), stats: dec.stats };
}

/** {@link sampleMergeARProgram} as a Promise: every op a short native job off the main thread (`signal`, `onStep` as in SampleOptions). */
export function generateMergeAR(model: MergeARGPT, labels: Tensor, keepIndex: Tensor, opts: MergeARSampleOptions = {}) {
  return runAsync(sampleMergeARProgram(model, labels, keepIndex, opts));
}

/** {@link sampleMergeARProgram} on the calling thread. */
export function generateMergeARSync(
  model: MergeARGPT,
  labels: Tensor,
  keepIndex: Tensor,
  opts: MergeARSampleOptions = {},
) {
  return runSync(sampleMergeARProgram(model, labels, keepIndex, opts));
}
