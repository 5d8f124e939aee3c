/**
 * Fused attention (flash-style: online softmax over key blocks, no N x M score matrix) and the
 * in-place KV-cache ops, on CPU and CUDA.
 *
 * Layouts: `q` [B, H, N, hd], `k` and `v` [B, H, M, hd], float32, any strides (pass permuted views
 * such as `qkv.permute(2, 0, 3, 1, 4)` slices directly; they are read in place). Outputs are dense.
 *
 * Scores: `scale * q.k + keyBias[b, j]` (scale defaults to 1/sqrt(hd); ToMe's proportional
 * attention passes keyBias = log(size_j)). Softmax runs over the keys visible to each query.
 *
 * Visibility of key j for query row i, whose absolute position is `qOffset + i`:
 * - always `j < kvLen` (default M, the valid prefix of a KV cache);
 * - with `causal`: `j <= qOffset + i`;
 * - with a `keep` mask (MergeAR; docs/model.md, "MergeAR"): `keep[b, j] != 0` or `(qOffset + i) - j <= window`
 *   (window default 2), so a duplicate key stays visible only inside the recent window; the query's
 *   own position is always visible.
 * A query that sees no key gets o = 0 and lse = -Infinity (never NaN).
 */
import { checkInt, checkKeys, optionKeys, rangeError, typeError } from '../errors.js';
import { call, type Program } from '../graph.js';
import { Tensor } from '../tensor.js';
import { tensorArg } from './args.js';
import { permute, permuteView, reshape, select } from './tensor.js';

/** Options shared by {@link attention} and {@link attentionBackward}. */
export interface AttentionOptions {
  /** Score scale; default 1/sqrt(hd). */
  scale?: number;
  /** Key j is visible only when j <= qOffset + i. */
  causal?: boolean;
  /** Absolute position of query row 0 (the number of tokens already in a KV cache). Default 0. */
  qOffset?: number;
  /** MergeAR recent window (used with `keep`). Default 2. */
  window?: number;
  /** Number of valid keys (a KV cache's filled length). Default M. */
  kvLen?: number;
}
const ATTENTION_KEYS = optionKeys<AttentionOptions>()(['scale', 'causal', 'qOffset', 'window', 'kvLen']);

function checkTensor(name: string, t: unknown, rank: number, dtype: string): Tensor {
  if (!(t instanceof Tensor)) typeError(name, 'a Tensor', t);
  if (t.ndim !== rank || t.dtype !== dtype) typeError(name, `a ${dtype} tensor of rank ${rank}`, t.toString());
  return t;
}

function attrsOf(opts: AttentionOptions): Record<string, number | boolean | undefined> {
  if (opts.scale !== undefined && (typeof opts.scale !== 'number' || !Number.isFinite(opts.scale))) {
    typeError('opts.scale', 'a finite number', opts.scale);
  }
  if (opts.causal !== undefined && typeof opts.causal !== 'boolean') typeError('opts.causal', 'a boolean', opts.causal);
  return {
    scale: opts.scale,
    causal: opts.causal,
    q_offset: opts.qOffset === undefined ? undefined : checkInt('opts.qOffset', opts.qOffset, 0),
    window: opts.window === undefined ? undefined : checkInt('opts.window', opts.window, 0),
    kv_len: opts.kvLen === undefined ? undefined : checkInt('opts.kvLen', opts.kvLen, 0),
  };
}

/**
 * Fused scaled-dot-product attention.
 * @param q [B, H, N, hd] float32 queries.
 * @param k [B, H, M, hd] float32 keys.
 * @param v [B, H, M, hd] float32 values.
 * @param keyBias optional [B, M] float32 added to every score of key j (log of ToMe token sizes).
 * @param keep optional [B, M] uint8 MergeAR mask (1 = first occurrence, always visible).
 * @returns `[o, lse]`: o [B, H, N, hd] dense, lse [B, H, N] the log-sum-exp of each row's scores
 *   (saved for {@link attentionBackward}).
 */
export function* attention(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  keyBias?: Tensor | null,
  keep?: Tensor | null,
  opts: AttentionOptions = {},
): Program<[Tensor, Tensor]> {
  checkKeys('attention options', opts, ATTENTION_KEYS);
  checkTensor('q', q, 4, 'float32');
  checkTensor('k', k, 4, 'float32');
  checkTensor('v', v, 4, 'float32');
  if (keyBias != null) checkTensor('keyBias', keyBias, 2, 'float32');
  if (keep != null) checkTensor('keep', keep, 2, 'uint8');
  const out = yield* call('attention', [q, k, v, keyBias, keep], attrsOf(opts));
  return [out[0]!, out[1]!];
}

/**
 * Gradients of {@link attention} (flash-style: probabilities are recomputed from `lse`).
 * Pass the same inputs and options as the forward call, its outputs `o` and `lse`, and `go`
 * (the gradient of o, [B, H, N, hd]).
 * @returns `[gq, gk, gv, gKeyBias]`; gKeyBias [B, M] (summed over heads and queries) is null when
 *   no keyBias was given.
 */
export function* attentionBackward(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  keyBias: Tensor | null | undefined,
  keep: Tensor | null | undefined,
  o: Tensor,
  lse: Tensor,
  go: Tensor,
  opts: AttentionOptions = {},
): Program<[Tensor, Tensor, Tensor, Tensor | null]> {
  checkKeys('attentionBackward options', opts, ATTENTION_KEYS);
  checkTensor('q', q, 4, 'float32');
  checkTensor('k', k, 4, 'float32');
  checkTensor('v', v, 4, 'float32');
  if (keyBias != null) checkTensor('keyBias', keyBias, 2, 'float32');
  if (keep != null) checkTensor('keep', keep, 2, 'uint8');
  checkTensor('o', o, 4, 'float32');
  checkTensor('lse', lse, 3, 'float32');
  checkTensor('go', go, 4, 'float32');
  const out = yield* call('attention_backward', [q, k, v, keyBias, keep, o, lse, go], attrsOf(opts));
  return [out[0]!, out[1]!, out[2]!, out[3] ?? null];
}

/**
 * IN PLACE: writes `x` [B, H, n, hd] into `cache` [B, H, Mcap, hd] at slots pos..pos+n-1 and
 * returns `cache` itself (same storage). Arguments are validated before any write: a call that
 * throws leaves the cache unchanged.
 */
export function* kvCacheWrite(cache: Tensor, x: Tensor, pos: number): Program<Tensor> {
  if (!(cache instanceof Tensor)) typeError('cache', 'a Tensor', cache);
  if (!(x instanceof Tensor)) typeError('x', 'a Tensor', x);
  const out = yield* call('kv_cache_write', [cache, x], { pos: checkInt('pos', pos, 0) });
  return out[0]!;
}

/**
 * IN PLACE: MergeAR compaction of `cache` [B, H, Mcap, hd]: slot t of every head of sample b takes
 * the row at slot keepIdx[b, t] (t < m), an index map applied without reallocation. `keepIdx`
 * [B, m] int32 rows must be strictly increasing and < `len` (the number of valid slots); slots
 * from m on keep stale data and count as free. Returns `cache` itself. Validated before any write.
 */
export function* kvCacheCompact(cache: Tensor, keepIdx: Tensor, len: number): Program<Tensor> {
  if (!(cache instanceof Tensor)) typeError('cache', 'a Tensor', cache);
  checkTensor('keepIdx', keepIdx, 2, 'int32');
  const out = yield* call('kv_cache_compact', [cache, keepIdx], { len: checkInt('len', len, 0) });
  return out[0]!;
}

// ---------------------------------------------------------------- head layout (splitHeads / mergeHeads)
// Layout helpers around attention: token-major [B, N, H*hd] <-> head-major [B, H, N, hd]. They
// only compose the layout ops of ./tensor.js, in a fixed order (the autograd tape records each).

function checkRank(name: string, t: unknown, ranks: readonly number[], what: string): Tensor {
  const x = tensorArg(name, t);
  if (!ranks.includes(x.ndim)) typeError(name, what, x.toString());
  return x;
}

/** Options of {@link splitHeads}. */
export interface SplitHeadsOptions {
  /**
   * Number of heads H. Required for a [B, N, H*hd] input (must divide its last dim); for a
   * [B, N, H, hd] input it may be omitted and must equal shape[2] when given.
   */
  heads?: number;
}
const SPLIT_HEADS_KEYS = optionKeys<SplitHeadsOptions>()(['heads']);

/**
 * Head split as a strided view (no copy): `x` [B, N, H*hd] (any dtype) is reshaped to
 * [B, N, H, hd], then `permute_view(0, 2, 1, 3)` gives [B, H, N, hd]. An `x` that is already
 * [B, N, H, hd] (e.g. a RoPE output) gets only the `permute_view`.
 */
export function* splitHeads(x: Tensor, opts: SplitHeadsOptions = {}): Program<Tensor> {
  checkKeys('splitHeads options', opts, SPLIT_HEADS_KEYS);
  checkRank('x', x, [3, 4], 'a [B, N, H*hd] or [B, N, H, hd] Tensor');
  const heads = opts.heads === undefined ? undefined : checkInt('opts.heads', opts.heads, 1);
  let t = x;
  if (x.ndim === 3) {
    const [B, N, D] = x.shape as [number, number, number];
    if (heads === undefined) typeError('opts.heads', 'an integer (x is [B, N, H*hd])', heads);
    if (D % heads !== 0) rangeError('opts.heads', `a divisor of x's last dim ${D}`, heads);
    t = yield* reshape(x, [B, N, heads, D / heads]); // [B, N, H, hd] (view when x is contiguous)
  } else if (heads !== undefined && x.shape[2] !== heads) {
    rangeError('opts.heads', `x.shape[2] = ${x.shape[2]} for a [B, N, H, hd] x`, heads);
  }
  return yield* permuteView(t, [0, 2, 1, 3]); // [B, H, N, hd]
}

/** Options of {@link splitFusedHeads}. */
export interface SplitFusedHeadsOptions {
  /** Number of fused projections P (3 for qkv, 2 for kv). */
  parts: number;
  /** Number of heads H. */
  heads: number;
}
const SPLIT_FUSED_HEADS_KEYS = optionKeys<SplitFusedHeadsOptions>()(['parts', 'heads']);

/**
 * Head split of a fused projection as strided views (no copy): `x` [B, N, P*H*hd] (any dtype) is
 * reshaped to [B, N, P, H, hd], `permute_view(2, 0, 3, 1, 4)` gives [P, B, H, N, hd], and
 * `select(0, p)` for p = 0..P-1 returns P views [B, H, N, hd] (timm's
 * `qkv.reshape(B, N, 3, H, hd).permute(2, 0, 3, 1, 4)` then `unbind(0)`).
 */
export function* splitFusedHeads(x: Tensor, opts: SplitFusedHeadsOptions): Program<Tensor[]> {
  checkKeys('splitFusedHeads options', opts, SPLIT_FUSED_HEADS_KEYS);
  checkRank('x', x, [3], 'a [B, N, P*H*hd] Tensor');
  const parts = checkInt('opts.parts', opts?.parts, 1);
  const heads = checkInt('opts.heads', opts.heads, 1);
  const [B, N, D] = x.shape as [number, number, number];
  if (D % (parts * heads) !== 0) rangeError('opts', `parts * heads dividing x's last dim ${D}`, parts * heads);
  const r = yield* reshape(x, [B, N, parts, heads, D / (parts * heads)]); // [B, N, P, H, hd]
  const p = yield* permuteView(r, [2, 0, 3, 1, 4]); // [P, B, H, N, hd]
  const out: Tensor[] = [];
  for (let i = 0; i < parts; ++i) out.push(yield* select(p, 0, i)); // [B, H, N, hd]
  return out;
}

/**
 * Head merge (the inverse of {@link splitHeads}): `o` [B, H, N, hd] (any dtype, e.g. an
 * {@link attention} output) is permuted to [B, N, H, hd] as a dense copy (`permute`, not a view),
 * then reshaped (a view of that copy) to [B, N, H*hd].
 */
export function* mergeHeads(o: Tensor): Program<Tensor> {
  checkRank('o', o, [4], 'a [B, H, N, hd] Tensor');
  const [B, H, N, hd] = o.shape as [number, number, number, number];
  const t = yield* permute(o, [0, 2, 1, 3]); // [B, N, H, hd] dense
  return yield* reshape(t, [B, N, H * hd]); // [B, N, H*hd]
}
