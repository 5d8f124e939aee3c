/**
 * ToMe token merging (bipartite soft matching), size-weighted merging, source tracking and
 * unmerging.
 *
 * Merge decisions for N tokens are three int64 tensors (positions within the even rows "A" and the
 * odd rows "B", as in the reference): `unmIdx` [B, Na - r'] (A rows kept), `srcIdx` [B, r'] (A rows
 * merged) and `dstIdx` [B, r'] (the B row each merges into), Na = ceil(N/2). The merged sequence is
 * [kept A rows in unmIdx order..., all B rows...]. r' = 0 (the reference's `do_nothing`) gives
 * three empty [B, 0] tensors, which every op treats as the identity merge.
 *
 * Source tracking is compact: a `map` int64 [B, L] where map[b, l] is the current token holding
 * full position l (L counts the class token position when there is one; it starts as arange(L)).
 * `mergeSourceDense` expands it to the reference's [B, n, L] 0/1 matrix.
 */
import { tensorArg } from './args.js';
import { call, call1, type Program } from '../graph.js';
import { Tensor } from '../tensor.js';
import { checkInt, checkKeys, optionKeys, typeError } from '../errors.js';

/** Merge decisions of one bipartite soft matching step. */
export interface MergeDecisions {
  unmIdx: Tensor;
  srcIdx: Tensor;
  dstIdx: Tensor;
}

/** Options of {@link bipartiteMatch}. */
export interface BipartiteMatchOptions {
  /** Tokens to merge (at most (N - p) // 2 are). */
  r: number;
  /** Token 0 is a class token, never merged (default false). */
  classToken?: boolean;
}
const BIPARTITE_MATCH_KEYS = optionKeys<BipartiteMatchOptions>()(['r', 'classToken']);

/**
 * Bipartite soft matching on `metric` [B, N, C]: merges r' = min(r, (N - p) // 2) tokens
 * (p = 1 with a class token, which is never merged). Ties: argmax takes the lowest B index, and A
 * rows with equal scores keep ascending index order.
 */
export function* bipartiteMatch(metric: Tensor, opts: BipartiteMatchOptions): Program<MergeDecisions> {
  checkKeys('bipartiteMatch options', opts, BIPARTITE_MATCH_KEYS);
  tensorArg('metric', metric);
  if (metric.ndim !== 3) typeError('metric', 'a [B, N, C] tensor', metric.shape);
  const r = checkInt('r', opts.r, 0);
  const [unmIdx, srcIdx, dstIdx] = yield* call('tome_match', [metric], { r, class_token: opts.classToken ?? false });
  return { unmIdx: unmIdx!, srcIdx: srcIdx!, dstIdx: dstIdx! };
}

/**
 * Applies merge decisions to `x` [B, N, C] as size-weighted means (`size` [B, N] or [B, N, 1],
 * ones when null). Returns the merged tokens [B, N - r', C] and their sizes (sums).
 */
export function* mergeWavg(x: Tensor, size: Tensor | null, d: MergeDecisions): Program<{ x: Tensor; size: Tensor }> {
  tensorArg('x', x);
  const [xn, sn] = yield* call('tome_merge', [x, size, d.unmIdx, d.srcIdx, d.dstIdx]);
  return { x: xn!, size: sn! };
}

/** Gradient of {@link mergeWavg} with respect to x (none flows to size or the decisions). */
export function* mergeWavgBackward(x: Tensor, size: Tensor | null, d: MergeDecisions, gOut: Tensor): Program<Tensor> {
  tensorArg('gOut', gOut);
  return yield* call1('tome_merge_backward', [x, size, d.unmIdx, d.srcIdx, d.dstIdx, gOut]);
}

/** The identity source map arange(L) for `batch` samples. */
export function identitySource(batch: number, length: number): Tensor {
  checkInt('batch', batch, 1);
  checkInt('length', length, 1);
  const a = new BigInt64Array(batch * length);
  for (let b = 0; b < batch; ++b) for (let l = 0; l < length; ++l) a[b * length + l] = BigInt(l);
  return Tensor.from(a, [batch, length]);
}

/** Updates a compact source map after a merge of `n` tokens. */
export function* mergeSource(map: Tensor, d: MergeDecisions, n: number): Program<Tensor> {
  tensorArg('map', map);
  return yield* call1('tome_source_update', [map, d.unmIdx, d.srcIdx, d.dstIdx], { n: checkInt('n', n, 1) });
}

/** The reference's dense source [B, n, L]: 1 where map[b, l] = k. */
export function* mergeSourceDense(map: Tensor, n: number): Program<Tensor> {
  tensorArg('map', map);
  return yield* call1('tome_source_dense', [map], { n: checkInt('n', n, 0) });
}

/** Restores the full grid: full[b, l] = kept[b, map[b, l]] ([B, K, C] -> [B, L, C]). */
export function* unmerge(kept: Tensor, map: Tensor): Program<Tensor> {
  tensorArg('kept', kept);
  tensorArg('map', map);
  return yield* call1('unmerge', [kept, map]);
}

/** Gradient of {@link unmerge}: g_kept[k] = sum of g_full over the positions k holds. */
export function* unmergeBackward(gFull: Tensor, map: Tensor, k: number): Program<Tensor> {
  tensorArg('gFull', gFull);
  return yield* call1('unmerge_backward', [gFull, map], { k: checkInt('k', k, 0) });
}
