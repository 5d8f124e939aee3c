/**
 * Pre-extracted codes for AR training (as LlamaGen pre-extracts them): every image is tokenized
 * once by a trained tokenizer, and the full-grid code sequence the AR model learns is cached in a
 * safetensors file:
 *
 *   indices    [N, L] int64  LFQ index of every full-grid position (raster order), i.e. the kept
 *                            token's index copied to every position of its merge group
 *   source     [N, L] int64  full position -> kept token (the compact source map)
 *   keep_index [N]    int64  index of the keep count K in the tokenizer's candidate list
 *   labels     [N]    int64  class labels (absent for unlabeled data)
 *
 * plus `__metadata__.codes` (JSON): full count L, LFQ bits, candidate keep list, tokenizer
 * config name, and how K was chosen. The keep count of each image is drawn from the candidate
 * distribution with a seeded generator (`keep: 'sample'`), or fixed.
 */
import { MergeVQError, checkKeys, optionKeys, typeError } from '../errors.js';
import { runAsync } from '../graph.js';
import { readSafetensors, writeSafetensors } from '../io/safetensors.js';
import { Tensor } from '../tensor.js';
import type { MergeVQTokenizer } from '../tokenizer/tokenizer.js';
import type { DataLoader } from '../data/loader.js';
import { TrainRng } from './rng.js';

/** Metadata stored with the codes. */
export interface CodesMeta {
  fullNum: number;
  bits: number;
  keepCandidates: number[];
  keepMode: 'sample' | number;
  seed: number;
  count: number;
}

/** A codes file in memory. */
export interface Codes {
  indices: BigInt64Array;
  source: BigInt64Array;
  keepIndex: BigInt64Array;
  labels: BigInt64Array | null;
  meta: CodesMeta;
}

export interface ExtractOptions {
  /** 'sample' (default): K drawn per image from the candidate distribution; or a fixed candidate K. */
  keep?: 'sample' | number;
  seed?: number;
  /** Stop after this many images (default: one epoch of the loader). */
  limit?: number;
  signal?: AbortSignal;
  onProgress?: (done: number, total: number) => void;
}
const EXTRACT_KEYS = optionKeys<ExtractOptions>()(['keep', 'seed', 'limit', 'signal', 'onProgress']);

/** The candidate index for a cumulative-probability level u (first cumulative >= u). */
export function candidateFor(cumulative: readonly number[], u: number): number {
  for (let i = 0; i < cumulative.length; ++i) if (cumulative[i]! >= u) return i;
  return cumulative.length - 1;
}

/**
 * Tokenizes one epoch of `loader` with `tok` (true source, no learned recovery) and returns the
 * codes. Batches are encoded once per keep count present in them.
 */
export async function extractCodes(
  tok: MergeVQTokenizer,
  loader: DataLoader,
  opts: ExtractOptions = {},
): Promise<Codes> {
  checkKeys('extractCodes options', opts, EXTRACT_KEYS);
  const keepMode = opts.keep ?? 'sample';
  const cands = tok.candidates;
  if (keepMode !== 'sample' && !cands.keep.includes(keepMode))
    throw new RangeError(
      `keep must be 'sample' or one of the candidates ${cands.keep.join(', ')}, got ${String(keepMode)}`,
    );
  const seed = opts.seed ?? 0;
  const rng = TrainRng.derive(seed, 'codes-keep');
  const L = tok.fullNum;
  const total = Math.min(opts.limit ?? Infinity, loader.batchesPerEpoch * loader.batchSize);
  const indices: bigint[] = [];
  const source: bigint[] = [];
  const keepIndex: bigint[] = [];
  const labels: bigint[] = [];
  let hasLabels = true;
  let done = 0;
  const startEpoch = loader.position().epoch;
  while (done < total) {
    opts.signal?.throwIfAborted();
    const batch = await loader.next();
    if (batch.epoch !== startEpoch) break;
    const B = batch.images.shape[0]!;
    const n = Math.min(B, total - done);
    const ks = Array.from({ length: n }, () =>
      keepMode === 'sample' ? candidateFor(cands.cumulative, rng.next()) : cands.keep.indexOf(keepMode),
    );
    const rows = new Array<{ idx: BigInt64Array; src: BigInt64Array }>(n);
    for (const ki of new Set(ks)) {
      const sel = ks.flatMap((k, i) => (k === ki ? [i] : []));
      const imgs = sel.length === B ? batch.images : selectRows(batch.images, sel);
      const enc = await runAsync(tok.encodeProgram(imgs, { keep: cands.keep[ki]! }));
      const K = enc.keep;
      const ind = enc.indices.toArray<'int64'>();
      const src = enc.source.toArray<'int64'>();
      sel.forEach((row, j) => {
        const full = new BigInt64Array(L);
        for (let l = 0; l < L; ++l) full[l] = ind[j * K + Number(src[j * L + l]!)]!;
        rows[row] = { idx: full, src: src.slice(j * L, (j + 1) * L) };
      });
    }
    const lab = batch.labels ? batch.labels.toArray<'int64'>() : null;
    if (!lab) hasLabels = false;
    for (let i = 0; i < n; ++i) {
      indices.push(...rows[i]!.idx);
      source.push(...rows[i]!.src);
      keepIndex.push(BigInt(ks[i]!));
      if (lab) labels.push(lab[i]!);
    }
    done += n;
    opts.onProgress?.(done, total);
  }
  return {
    indices: BigInt64Array.from(indices),
    source: BigInt64Array.from(source),
    keepIndex: BigInt64Array.from(keepIndex),
    labels: hasLabels ? BigInt64Array.from(labels) : null,
    meta: { fullNum: L, bits: tok.config.embed_dim, keepCandidates: [...cands.keep], keepMode, seed, count: done },
  };
}

function selectRows(x: Tensor, rows: number[]): Tensor {
  const [B, ...rest] = x.shape;
  const per = rest.reduce((a, b) => a * b, 1);
  const src = x.toFloat32();
  const out = new Float32Array(rows.length * per);
  rows.forEach((r, i) => {
    if (r < 0 || r >= B!) throw new RangeError(`row ${r} out of range`);
    out.set(src.subarray(r * per, (r + 1) * per), i * per);
  });
  return Tensor.from(out, [rows.length, ...rest]);
}

/** Writes codes as safetensors (see the module comment for the layout). */
export async function writeCodes(path: string, c: Codes): Promise<void> {
  const N = c.meta.count;
  const L = c.meta.fullNum;
  const t: Record<string, Tensor> = {
    indices: Tensor.from(c.indices, [N, L]),
    source: Tensor.from(c.source, [N, L]),
    keep_index: Tensor.from(c.keepIndex, [N]),
  };
  if (c.labels) t.labels = Tensor.from(c.labels, [N]);
  await writeSafetensors(path, t, { codes: JSON.stringify(c.meta) });
}

/** Reads a codes file written by {@link writeCodes}, checking every shape and index range. */
export async function readCodes(path: string): Promise<Codes> {
  if (typeof path !== 'string') typeError('path', 'a file path', path);
  const f = await readSafetensors(path);
  const bad = (msg: string): never => {
    throw new MergeVQError(`${path}: not a codes file: ${msg}`, 'ERR_BAD_FILE');
  };
  let meta: CodesMeta;
  try {
    meta = JSON.parse(f.metadata.codes ?? '') as CodesMeta;
  } catch {
    return bad("no '__metadata__.codes' entry");
  }
  const N = meta.count;
  const L = meta.fullNum;
  if (
    !Number.isInteger(N) ||
    N < 0 ||
    !Number.isInteger(L) ||
    L < 1 ||
    !Number.isInteger(meta.bits) ||
    meta.bits < 1 ||
    meta.bits > 30
  )
    bad('bad count, fullNum or bits in the metadata');
  const get = async (name: string, shape: number[]): Promise<BigInt64Array> => {
    if (!f.has(name)) return bad(`missing '${name}'`);
    const info = f.info(name);
    if (info.dtype !== 'I64' || info.shape.length !== shape.length || info.shape.some((s, i) => s !== shape[i]))
      bad(`'${name}' must be int64 [${shape.join(', ')}]`);
    return BigInt64Array.from((await f.arrayAsync(name)) as BigInt64Array);
  };
  let indices: BigInt64Array, source: BigInt64Array, keepIndex: BigInt64Array, labels: BigInt64Array | null;
  try {
    indices = await get('indices', [N, L]);
    source = await get('source', [N, L]);
    keepIndex = await get('keep_index', [N]);
    labels = f.has('labels') ? await get('labels', [N]) : null;
  } finally {
    await f.closeAsync();
  }
  const V = 2n ** BigInt(meta.bits);
  for (const v of indices) if (v < 0n || v >= V) bad(`index ${v} outside [0, 2^${meta.bits})`);
  for (const v of keepIndex)
    if (v < 0n || v >= BigInt(meta.keepCandidates.length))
      bad(`keep_index ${v} outside the ${meta.keepCandidates.length} candidates`);
  return { indices, source, keepIndex, labels, meta };
}
