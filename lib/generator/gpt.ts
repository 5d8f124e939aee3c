/**
 * MergeVQGPT: LlamaGen-style class-conditional AR generator with token factorization (docs/model.md, "AR generator"),
 * parameter names as the reference's `taming.modules.transformer.gpt.GPT` state_dict.
 *
 * Sequence [cls_emb(label), e_0 .. e_{L-2}] (e_n = pre_emb(pre_n) + post_emb(post_n)); position n
 * predicts token n. Spatial blocks are pre-norm Llama blocks (RMSNorm, 2D RoPE attention, SwiGLU).
 * For every position n, the 2-token sequence [h_n, pre_emb(pre_n)] runs through the factorized
 * blocks (RoPE rows 0 and 1); after the final RMSNorm head.0 reads slot 0 (the pre sub-token) and
 * head.1 slot 1 (the post sub-token).
 */
import { release, type Program } from '../graph.js';
import { Linear } from '../nn/layers.js';
import { checkKeys } from '../errors.js';
import { LOAD_KEYS, ParamStore, W, type LoadOptions, type LoadReport } from '../nn/params.js';
import { attention, kvCacheWrite, mergeHeads, splitHeads, type AttentionOptions } from '../ops/attention.js';
import { crossEntropy, rmsNorm, swiglu } from '../ops/nn.js';
import { add, concat, embedding, precompute2dFreqs, reshape, rope, select, slice } from '../ops/tensor.js';
import { Tensor } from '../tensor.js';
import { ffnHidden, gridSize, normalizeGPTConfig, type GPTConfig } from './config.js';

/** RMSNorm with a learned weight (reference `RMSNorm`). */
export class RMSNorm {
  readonly weight: string;
  constructor(
    readonly store: ParamStore,
    name: string,
    dim: number,
    readonly eps: number,
  ) {
    this.weight = store.declare(`${name}.weight`, [dim], W.ones);
  }
  *forward(x: Tensor): Program<Tensor> {
    const [y] = yield* rmsNorm(x, this.store.get(this.weight), { eps: this.eps }); // y [..., D] (rstd unused)
    return y;
  }
}

/** A KV cache of one attention layer: k, v [B, H, capacity, hd] (written in place). */
export interface LayerCache {
  k: Tensor;
  v: Tensor;
}

/** Llama block: x += Attn(RMSNorm(x)); x += SwiGLU-FFN(RMSNorm(x)). No biases. */
export class LlamaBlock {
  readonly attentionNorm: RMSNorm;
  readonly ffnNorm: RMSNorm;
  readonly wqkv: Linear;
  readonly wo: Linear;
  readonly w1: Linear;
  readonly w2: Linear;
  readonly w3: Linear;
  readonly headDim: number;
  constructor(
    store: ParamStore,
    name: string,
    readonly cfg: GPTConfig,
  ) {
    const D = cfg.dim;
    const hidden = ffnHidden(cfg);
    this.headDim = D / cfg.n_head;
    this.wqkv = new Linear(store, `${name}.attention.wqkv`, D, 3 * D, false);
    this.wo = new Linear(store, `${name}.attention.wo`, D, D, false);
    this.w1 = new Linear(store, `${name}.feed_forward.w1`, D, hidden, false);
    this.w3 = new Linear(store, `${name}.feed_forward.w3`, D, hidden, false);
    this.w2 = new Linear(store, `${name}.feed_forward.w2`, hidden, D, false);
    this.attentionNorm = new RMSNorm(store, `${name}.attention_norm`, D, cfg.norm_eps);
    this.ffnNorm = new RMSNorm(store, `${name}.ffn_norm`, D, cfg.norm_eps);
  }

  /**
   * x [B, N, D] at absolute positions pos..pos+N-1 with RoPE rows `freqs` [N, hd/2, 2].
   * Without a cache: causal self-attention over the N tokens (pos must be 0). With a cache: the
   * new keys/values are written at slots pos.. and every query attends causally to slots
   * [0, pos+N).
   */
  *forward(x: Tensor, freqs: Tensor, cache: LayerCache | null = null, pos = 0): Program<Tensor> {
    const opts: AttentionOptions = cache ? { causal: true, qOffset: pos, kvLen: pos + x.shape[1]! } : { causal: true };
    return yield* this.forwardWith(x, freqs, null, opts, cache, pos);
  }

  /**
   * The block with explicit attention settings: `keep` [B, M] uint8 and `opts` (causal, qOffset,
   * kvLen, window; an option left out is not passed, the attention op's default) go to
   * {@link attention} as they are; with a cache the new keys/values are written at `slot` (MergeAR
   * addresses a compacted cache by slot, not by position).
   */
  *forwardWith(
    x: Tensor,
    freqs: Tensor,
    keep: Tensor | null,
    opts: AttentionOptions,
    cache: LayerCache | null,
    slot: number,
  ): Program<Tensor> {
    const [B, N] = x.shape as [number, number, number]; // x [B, N, D]
    const H = this.cfg.n_head;
    const hd = this.headDim;
    const xn = yield* this.attentionNorm.forward(x);
    const qkv = yield* this.wqkv.forward(xn);
    // RoPE rotates in the token-major layout, so q and k are split off the fused qkv first and
    // only then viewed head-major.
    const parts = yield* reshape(qkv, [B, N, 3, H, hd]); // [B, N, 3, H, hd]
    const q = yield* rope(yield* select(parts, 2, 0), freqs); // [B, N, H, hd]
    const k = yield* rope(yield* select(parts, 2, 1), freqs); // [B, N, H, hd]
    const v = yield* select(parts, 2, 2); // [B, N, H, hd] view
    const qh = yield* splitHeads(q); // [B, H, N, hd] views
    let kh = yield* splitHeads(k);
    let vh = yield* splitHeads(v);
    if (cache) {
      // IN PLACE; kh, vh become the caches [B, H, capacity, hd]
      kh = yield* kvCacheWrite(cache.k, kh, slot);
      vh = yield* kvCacheWrite(cache.v, vh, slot);
    }
    const [o] = yield* attention(qh, kh, vh, null, keep, opts); // [B, H, N, hd]
    const merged = yield* mergeHeads(o); // [B, N, D]
    const a = yield* this.wo.forward(merged);
    const h = yield* add(x, a);
    const hn = yield* this.ffnNorm.forward(h);
    const g = yield* swiglu(yield* this.w1.forward(hn), yield* this.w3.forward(hn)); // [B, N, hidden]
    const f = yield* this.w2.forward(g);
    return yield* add(h, f);
  }
}

/** Teacher-forced logits: pre [B, N, 2^b0], post [B, N, 2^b1]. */
export interface GPTLogits {
  pre: Tensor;
  post: Tensor;
}

export class MergeVQGPT {
  readonly config: GPTConfig;
  readonly store = new ParamStore();
  readonly preEmb: string;
  readonly postEmb: string;
  readonly classTable: string;
  readonly spatial: LlamaBlock[] = [];
  readonly factorized: LlamaBlock[] = [];
  readonly norm: RMSNorm;
  readonly heads: Linear[];
  /** RoPE table [cls_token_num + L, hd/2, 2] (rows of the cls prefix are zero). */
  readonly freqs: Tensor;
  readonly headDim: number;
  private readonly rowCache = new Map<string, Tensor>();

  constructor(config: Partial<GPTConfig> | Record<string, unknown>) {
    const c = (this.config = normalizeGPTConfig(config));
    const s = this.store;
    this.headDim = c.dim / c.n_head;
    this.preEmb = s.declare('pre_emb.weight', [2 ** c.factorized_bits[0]!, c.dim], W.normal(0.02));
    this.postEmb = s.declare('post_emb.weight', [2 ** c.factorized_bits[1]!, c.dim], W.normal(0.02));
    // LabelEmbedder is built with its default dropout_prob 0.1: class_num + 1 rows (the last = null class).
    this.classTable = s.declare('class_emb.embedding_table.weight', [c.class_num + 1, c.dim], W.normal(0.02));
    for (let i = 0; i < c.spatial_n_layer; ++i) this.spatial.push(new LlamaBlock(s, `spatial_blocks.${i}`, c));
    for (let i = 0; i < c.factorized_n_layer; ++i) this.factorized.push(new LlamaBlock(s, `factorized_blocks.${i}`, c));
    this.norm = new RMSNorm(s, 'norm', c.dim, c.norm_eps);
    this.heads = c.factorized_bits.map((b, i) => new Linear(s, `head.${i}`, c.dim, 2 ** b, false));
    this.freqs = precompute2dFreqs(gridSize(c), this.headDim, c.rope_base, c.cls_token_num);
  }

  /** Frees the weights and cached RoPE rows now; later use is a MergeVQError ERR_DISPOSED until weights are loaded again. */
  dispose(): void {
    this.store.dispose();
    for (const t of this.rowCache.values()) if (!t.disposed) t.dispose();
    this.rowCache.clear();
  }

  /** Null-class label used for classifier-free guidance (= class_num). */
  get nullClass(): number {
    return this.config.class_num;
  }
  /** Sub-token vocabulary sizes [2^b0, 2^b1]. */
  get subVocab(): [number, number] {
    return [2 ** this.config.factorized_bits[0]!, 2 ** this.config.factorized_bits[1]!];
  }

  /** Loads reference state_dict tensors (names without the `transformer.` prefix; a prefix is stripped). */
  loadWeights(tensors: ReadonlyMap<string, Tensor> | Record<string, Tensor>, opts: LoadOptions = {}): LoadReport {
    checkKeys('MergeVQGPT.loadWeights options', opts, LOAD_KEYS);
    const entries = tensors instanceof Map ? [...tensors.entries()] : Object.entries(tensors);
    const m = new Map<string, Tensor>();
    for (const [n, t] of entries) m.set(n.startsWith('transformer.') ? n.slice('transformer.'.length) : n, t);
    return this.store.load(m, opts);
  }

  /** RoPE rows [start, start + n) of the table (cached constant tensors). */
  freqRows(start: number, n: number): Tensor {
    return this.cachedRopeRows(this.rowCache, `${start}:${n}`, this.freqs, start, n, ': cls_token_num + block_size');
  }

  /**
   * Rows [start, start + n) of a RoPE `table` [R, hd/2, 2] as a constant float32 tensor
   * [n, hd/2, 2] (a copy), made once and kept in `cache` under `key` (the caller disposes the
   * cache's tensors). `note` follows the row count in the out-of-range error. Shared by
   * {@link freqRows} and MergeAR's prefix tables.
   */
  protected cachedRopeRows(
    cache: Map<string, Tensor>,
    key: string,
    table: Tensor,
    start: number,
    n: number,
    note: string,
  ): Tensor {
    let t = cache.get(key);
    if (!t) {
      const rows = table.shape[0]!;
      if (start < 0 || start + n > rows)
        throw new RangeError(`position ${start + n - 1} is beyond the RoPE table (${rows} rows${note})`);
      const w = table.shape[1]! * 2; // floats per row: hd/2 (cos, sin) pairs
      t = Tensor.from(table.toFloat32().slice(start * w, (start + n) * w), [n, table.shape[1]!, 2]);
      cache.set(key, t);
    }
    return t;
  }

  /** pre_emb(pre) + post_emb(post): [..., D]. */
  *tokenEmbedding(pre: Tensor, post: Tensor): Program<Tensor> {
    const a = yield* embedding(this.store.get(this.preEmb), pre);
    const b = yield* embedding(this.store.get(this.postEmb), post);
    return yield* add(a, b);
  }
  /** pre_emb(pre): [..., D]. */
  *preEmbedding(pre: Tensor): Program<Tensor> {
    return yield* embedding(this.store.get(this.preEmb), pre);
  }
  /** Label embeddings: labels [B] -> [B, 1, D]. */
  *classEmbedding(labels: Tensor): Program<Tensor> {
    const e = yield* embedding(this.store.get(this.classTable), labels); // [B, D]
    return yield* reshape(e, [labels.shape[0]!, 1, this.config.dim]);
  }

  /** Final RMSNorm + head i. x [..., D]. */
  *head(x: Tensor, i: number): Program<Tensor> {
    return yield* this.heads[i]!.forward(yield* this.norm.forward(x));
  }

  /**
   * Teacher-forced forward (eval: no dropout). idxPre, idxPost int64 [B, N] (N <= block_size),
   * labels int64 [B]. Returns logits for every position: pre [B, N, 2^b0], post [B, N, 2^b1].
   */
  *forward(idxPre: Tensor, idxPost: Tensor, labels: Tensor): Program<GPTLogits> {
    const c = this.config;
    const [B, N] = idxPre.shape as [number, number];
    if (idxPre.ndim !== 2 || idxPost.ndim !== 2 || idxPost.shape[0] !== B || idxPost.shape[1] !== N)
      throw new RangeError(
        `forward: idxPre and idxPost must both be [B, N], got [${idxPre.shape}] and [${idxPost.shape}]`,
      );
    if (labels.ndim !== 1 || labels.shape[0] !== B)
      throw new RangeError(`forward: labels must be [${B}], got [${labels.shape}]`);
    if (N > c.block_size) throw new RangeError(`forward: N = ${N} exceeds block_size ${c.block_size}`);
    const tok = yield* this.tokenEmbedding(idxPre, idxPost); // [B, N, D]
    const cls = yield* this.classEmbedding(labels); // [B, 1, D]
    const parts = [cls];
    if (N > 1) parts.push(yield* slice(tok, 1, 0, N - 1)); // e_0 .. e_{N-2}: [B, N-1, D]
    let h = parts.length === 1 ? cls : yield* concat(parts, 1); // [B, N, D]
    const freqs = this.freqRows(0, N);
    for (const blk of this.spatial) h = yield* blk.forward(h, freqs);
    return yield* this.factorizedLogits(h, idxPre);
  }

  /**
   * The factorized blocks over [h_n, pre_emb(pre_n)] for every position n, the final norm and the
   * two heads, from spatial outputs h [B, N, D] (position n predicts token n).
   */
  *factorizedLogits(h: Tensor, idxPre: Tensor): Program<GPTLogits> {
    const [B, N, D] = h.shape as [number, number, number];
    const ePre = yield* embedding(this.store.get(this.preEmb), idxPre); // [B, N, D]
    let ctx = yield* concat([yield* reshape(h, [B, N, 1, D]), yield* reshape(ePre, [B, N, 1, D])], 2); // [B, N, 2, D]
    ctx = yield* reshape(ctx, [B * N, 2, D]); // one 2-token sequence per position
    const f2 = this.freqRows(0, 2);
    for (const blk of this.factorized) ctx = yield* blk.forward(ctx, f2);
    const out = yield* reshape(yield* this.norm.forward(ctx), [B, N, 2, D]);
    const pre = yield* this.heads[0]!.forward(yield* select(out, 2, 0));
    const post = yield* this.heads[1]!.forward(yield* select(out, 2, 1));
    return { pre, post };
  }

  /**
   * Training loss CE(pre) + CE(post) (mean over positions each), teacher-forced.
   * Returns the scalar loss and the logits.
   */
  *loss(idxPre: Tensor, idxPost: Tensor, labels: Tensor): Program<{ loss: Tensor; logits: GPTLogits }> {
    const logits = yield* this.forward(idxPre, idxPost, labels);
    const [B, N] = idxPre.shape as [number, number];
    const [V0, V1] = this.subVocab;
    const l0 = yield* crossEntropy(yield* reshape(logits.pre, [B * N, V0]), yield* reshape(idxPre, [B * N])); // scalar
    const l1 = yield* crossEntropy(yield* reshape(logits.post, [B * N, V1]), yield* reshape(idxPost, [B * N]));
    return { loss: yield* add(l0, l1), logits };
  }

  /**
   * Training-time label dropout for classifier-free guidance (the reference's LabelEmbedder
   * `token_drop`): each label becomes the null class with probability `p` (default the config's
   * token_drop), drawn from `uniform` (a [0, 1) generator, e.g. `SeededRandom.next`). Returns a new
   * int64 [B] tensor.
   */
  dropLabels(labels: Tensor, uniform: () => number, p = this.config.token_drop): Tensor {
    if (labels.ndim !== 1 || (labels.dtype !== 'int64' && labels.dtype !== 'int32'))
      throw new TypeError(`dropLabels: labels must be an int64 [B] tensor, got ${labels.toString()}`);
    if (!(p >= 0 && p <= 1)) throw new RangeError(`dropLabels: p must be in [0, 1], got ${p}`);
    const src =
      labels.dtype === 'int64' ? Array.from(labels.toArray<'int64'>(), Number) : Array.from(labels.toArray<'int32'>());
    return Tensor.from(
      BigInt64Array.from(src, (l) => BigInt(uniform() < p ? this.nullClass : l)),
      [src.length],
    );
  }

  /** Fresh KV caches for the spatial blocks: batch B, `capacity` positions. */
  newSpatialCaches(B: number, capacity: number): LayerCache[] {
    const shape = [B, this.config.n_head, capacity, this.headDim];
    return this.spatial.map(() => ({ k: Tensor.zeros(shape), v: Tensor.zeros(shape) }));
  }
  /** KV caches for the factorized blocks (2 slots). */
  newFactorizedCaches(B: number): LayerCache[] {
    const shape = [B, this.config.n_head, 2, this.headDim];
    return this.factorized.map(() => ({ k: Tensor.zeros(shape), v: Tensor.zeros(shape) }));
  }

  /**
   * One decoding step of the spatial blocks with KV caches: x [B, n, D] at positions pos..pos+n-1
   * -> h [B, n, D].
   */
  *spatialStep(x: Tensor, caches: LayerCache[], pos: number): Program<Tensor> {
    const n = x.shape[1]!;
    const freqs = this.freqRows(pos, n);
    let h = x;
    for (let i = 0; i < this.spatial.length; ++i) {
      const next = yield* this.spatial[i]!.forward(h, freqs, caches[i]!, pos);
      if (h !== x) yield* release(h);
      h = next;
    }
    return h;
  }

  /**
   * One factorized sub-token step: x [B, 1, D] at slot `slot` (0: the context h, 1: pre_emb(pre))
   * through the factorized blocks with their caches, final norm and head `slot`: logits [B, V].
   */
  *subTokenStep(x: Tensor, caches: LayerCache[], slot: number): Program<Tensor> {
    const freqs = this.freqRows(slot, 1);
    let h = x;
    for (let i = 0; i < this.factorized.length; ++i) h = yield* this.factorized[i]!.forward(h, freqs, caches[i]!, slot);
    const logits = yield* this.head(h, slot);
    return yield* reshape(logits, [x.shape[0]!, logits.shape[2]!]);
  }
}
