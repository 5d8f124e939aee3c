/**
 * Batches of pre-extracted code sequences for AR training (stage 2): the full-grid LFQ indices of a
 * codes file (see codes.ts) split into the generator's two sub-tokens, with their class labels and
 * keep indices, in a seeded order per epoch.
 *
 * Sub-tokens: LFQ index bit j is channel j (least significant first), and the generator's first
 * sub-token holds the first b0 channels: pre = index & (2^b0 - 1), post = index >> b0, with
 * [b0, b1] the GPT config's factorized_bits (b0 + b1 must be the codes' bit count).
 *
 * Order: epoch e visits the samples in the permutation drawn by `TrainRng.derive(seed, 'shuffle', e)`
 * (identity without shuffling), `batchSize` at a time; the position (epoch, batch) is all a resumed
 * loader needs, so resuming reproduces the batches exactly.
 */
import { checkInt, checkKeys, optionKeys, rangeError, typeError } from '../errors.js';
import { Tensor } from '../tensor.js';
import type { Codes } from './codes.js';
import { TrainRng } from './rng.js';

/** Options of {@link CodeLoader}. */
export interface CodeLoaderOptions {
  /** Sequences per batch. */
  batchSize: number;
  /** Seed of the per-epoch order (default 0). */
  seed?: number;
  /** Shuffle each epoch (default true). */
  shuffle?: boolean;
  /** Drop the last, incomplete batch of an epoch (default true; false: the last batch is smaller). */
  dropLast?: boolean;
  /** The generator's factorized_bits [b0, b1]; b0 + b1 must equal the codes' `meta.bits`. */
  factorizedBits: readonly number[];
  /**
   * The label of every sample when the codes have no labels (e.g. the null class for unconditional
   * training). Required for unlabeled codes, ignored otherwise.
   */
  unlabeledClass?: number;
}
const CODE_LOADER_KEYS = optionKeys<CodeLoaderOptions>()([
  'batchSize',
  'seed',
  'shuffle',
  'dropLast',
  'factorizedBits',
  'unlabeledClass',
]);

/** Where a {@link CodeLoader} stands: the next batch is batch `batch` of epoch `epoch`. */
export interface CodePosition {
  epoch: number;
  batch: number;
}

/** One batch of code sequences. */
export interface CodeBatch {
  /** Epoch and index of the batch within it. */
  epoch: number;
  batch: number;
  /** True for the epoch's last batch. */
  lastInEpoch: boolean;
  /** Sample rows of the codes file, in batch order. */
  rows: Uint32Array;
  /** First sub-tokens int64 [B, L]. */
  pre: Tensor;
  /** Second sub-tokens int64 [B, L]. */
  post: Tensor;
  /** Class labels int64 [B] (before label dropout). */
  labels: Tensor;
  /** Keep-count candidate index of every sample, int64 [B]. */
  keepIndex: Tensor;
}

/**
 * Splits full LFQ indices into the two sub-tokens: pre = index & (2^b0 - 1), post = index >> b0.
 * Every index must lie in [0, 2^(b0 + b1)).
 */
export function splitSubTokens(
  indices: ArrayLike<bigint>,
  bits: readonly number[],
): { pre: BigInt64Array; post: BigInt64Array } {
  if (!Array.isArray(bits) || bits.length !== 2) typeError('bits', 'a pair [b0, b1]', bits);
  const b0 = checkInt('bits[0]', bits[0], 1, 30);
  const b1 = checkInt('bits[1]', bits[1], 1, 30);
  const lowMask = (1n << BigInt(b0)) - 1n;
  const limit = 1n << BigInt(b0 + b1);
  const n = indices.length;
  const pre = new BigInt64Array(n);
  const post = new BigInt64Array(n);
  for (let i = 0; i < n; ++i) {
    const v = indices[i]!;
    if (typeof v !== 'bigint' || v < 0n || v >= limit) rangeError(`indices[${i}]`, `an index in [0, 2^${b0 + b1})`, v);
    pre[i] = v & lowMask;
    post[i] = v >> BigInt(b0);
  }
  return { pre, post };
}

/** Seeded, resumable batches of a {@link Codes} set (see the module comment). */
export class CodeLoader {
  readonly codes: Codes;
  readonly batchSize: number;
  readonly seed: number;
  readonly shuffle: boolean;
  readonly dropLast: boolean;
  /** Number of sequences N and their length L. */
  readonly count: number;
  readonly length: number;
  private readonly pre: BigInt64Array;
  private readonly post: BigInt64Array;
  private readonly labels: BigInt64Array;
  private epoch = 0;
  private batch = 0;
  private orderEpoch = -1;
  private orderCache: Uint32Array = new Uint32Array(0);

  constructor(codes: Codes, opts: CodeLoaderOptions) {
    if (codes === null || typeof codes !== 'object' || !(codes.indices instanceof BigInt64Array) || !codes.meta)
      typeError('codes', 'a Codes object (readCodes / extractCodes)', codes);
    if (opts === null || typeof opts !== 'object') typeError('opts', 'an options object', opts);
    checkKeys('CodeLoader options', opts, CODE_LOADER_KEYS);
    const N = checkInt('codes.meta.count', codes.meta.count, 1);
    const L = checkInt('codes.meta.fullNum', codes.meta.fullNum, 1);
    if (codes.indices.length !== N * L) rangeError('codes.indices', `N * L = ${N * L} values`, codes.indices.length);
    if (!(codes.keepIndex instanceof BigInt64Array) || codes.keepIndex.length !== N)
      rangeError('codes.keepIndex', `${N} values`, codes.keepIndex?.length);
    if (codes.labels !== null && (!(codes.labels instanceof BigInt64Array) || codes.labels.length !== N))
      rangeError('codes.labels', `null or ${N} values`, codes.labels?.length);
    this.batchSize = checkInt('batchSize', opts.batchSize, 1);
    this.seed = checkInt('seed', opts.seed ?? 0, 0, Number.MAX_SAFE_INTEGER);
    this.shuffle = opts.shuffle ?? true;
    this.dropLast = opts.dropLast ?? true;
    if (typeof this.shuffle !== 'boolean') typeError('shuffle', 'a boolean', this.shuffle);
    if (typeof this.dropLast !== 'boolean') typeError('dropLast', 'a boolean', this.dropLast);
    const bits = opts.factorizedBits;
    if (!Array.isArray(bits) || bits.length !== 2) typeError('factorizedBits', 'a pair [b0, b1]', bits);
    if (bits[0]! + bits[1]! !== codes.meta.bits)
      rangeError('factorizedBits', `two sub-token widths summing to the codes' ${codes.meta.bits} bits`, bits);
    if (this.dropLast && N < this.batchSize)
      rangeError('batchSize', `at most the ${N} sequences (dropLast would leave no batch)`, this.batchSize);
    this.codes = codes;
    this.count = N;
    this.length = L;
    const split = splitSubTokens(codes.indices, bits);
    this.pre = split.pre;
    this.post = split.post;
    if (codes.labels) this.labels = codes.labels;
    else {
      if (opts.unlabeledClass === undefined)
        typeError('unlabeledClass', 'a class for the samples of unlabeled codes', undefined);
      const u = checkInt('unlabeledClass', opts.unlabeledClass, 0);
      this.labels = new BigInt64Array(N).fill(BigInt(u));
    }
  }

  /** Batches per epoch (the reference's len(train_dataloader)). */
  get batchesPerEpoch(): number {
    return this.dropLast ? Math.floor(this.count / this.batchSize) : Math.ceil(this.count / this.batchSize);
  }

  /** The sample order of `epoch` (a copy). */
  order(epoch: number): Uint32Array {
    checkInt('epoch', epoch, 0);
    return this.orderOf(epoch).slice();
  }

  private orderOf(epoch: number): Uint32Array {
    if (epoch !== this.orderEpoch) {
      if (this.shuffle) this.orderCache = TrainRng.derive(this.seed, 'shuffle', epoch).permutation(this.count);
      else this.orderCache = Uint32Array.from({ length: this.count }, (_, i) => i);
      this.orderEpoch = epoch;
    }
    return this.orderCache;
  }

  /** Where the next batch comes from. */
  position(): CodePosition {
    return { epoch: this.epoch, batch: this.batch };
  }

  /** Moves to a position returned by {@link position}. */
  seek(pos: CodePosition): void {
    if (pos === null || typeof pos !== 'object') typeError('pos', 'a position { epoch, batch }', pos);
    const e = checkInt('pos.epoch', pos.epoch, 0);
    const b = checkInt('pos.batch', pos.batch, 0, this.batchesPerEpoch - 1);
    this.epoch = e;
    this.batch = b;
  }

  /** The next batch (epochs follow each other without end). */
  next(): CodeBatch {
    const per = this.batchesPerEpoch;
    const order = this.orderOf(this.epoch);
    const start = this.batch * this.batchSize;
    const rows = order.slice(start, Math.min(start + this.batchSize, this.count));
    const B = rows.length;
    const L = this.length;
    const pre = new BigInt64Array(B * L);
    const post = new BigInt64Array(B * L);
    const labels = new BigInt64Array(B);
    const keep = new BigInt64Array(B);
    rows.forEach((r, i) => {
      pre.set(this.pre.subarray(r * L, (r + 1) * L), i * L);
      post.set(this.post.subarray(r * L, (r + 1) * L), i * L);
      labels[i] = this.labels[r]!;
      keep[i] = this.codes.keepIndex[r]!;
    });
    const out: CodeBatch = {
      epoch: this.epoch,
      batch: this.batch,
      lastInEpoch: this.batch === per - 1,
      rows,
      pre: Tensor.from(pre, [B, L]),
      post: Tensor.from(post, [B, L]),
      labels: Tensor.from(labels, [B]),
      keepIndex: Tensor.from(keep, [B]),
    };
    if (++this.batch === per) {
      this.batch = 0;
      ++this.epoch;
    }
    return out;
  }
}
