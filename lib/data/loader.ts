/**
 * Batches for training: a `DataLoader` over any `Dataset` (random access to samples, each decoded
 * and augmented with its own seeded generator), producing float32 image tensors [B, C, H, W] in
 * [-1, 1] and int64 label tensors [B].
 *
 * Everything random is a function of (seed, epoch): the epoch's order is a permutation drawn from
 * `deriveSeed(seed, 'shuffle', epoch)` and sample i's augmentation from
 * `deriveSeed(seed, 'sample', epoch, i)`, so batches do not depend on prefetch depth, decode
 * concurrency or timing, and a run resumed at a saved `position()` sees exactly the batches the
 * uninterrupted run would have seen.
 */
import { MergeVQError, checkInt, checkKeys, optionKeys, typeError } from '../errors.js';
import type { DeviceName } from '../native.js';
import { Tensor } from '../tensor.js';
import { TrainRng, deriveSeed } from '../train/rng.js';
import { loadFashionMnist, type FashionMnist } from './idx.js';

/** One decoded sample. */
export interface Sample {
  /** The image, C*H*W float32 values in [-1, 1], channel-major (CHW). */
  image: Float32Array;
  /** The class label, a non-negative integer (absent for unlabeled data). */
  label?: number;
}

/** A random-access dataset. */
export interface Dataset {
  /** Number of samples. */
  readonly length: number;
  /** [C, H, W] of every sample's image; DataLoaderOptions.sampleShape is used when absent. */
  readonly sampleShape?: readonly [number, number, number];
  /**
   * Decodes sample `index` (0 <= index < length). All randomness (augmentation) must come from
   * `rng`, which the loader seeds per (seed, epoch, index).
   */
  get(index: number, rng: TrainRng): Promise<Sample>;
}

/** Where a loader is: the next batch it will hand out. JSON-serializable. */
export interface LoaderPosition {
  /** Epoch number, from 0. */
  epoch: number;
  /** Batch index within the epoch, from 0. */
  batch: number;
}

/** One batch. */
export interface Batch {
  /** float32 [B, C, H, W] in [-1, 1]. */
  images: Tensor;
  /** int64 [B] labels, or null when the dataset has no labels. */
  labels: Tensor | null;
  /** The dataset indices of the batch's samples, in batch order. */
  indices: Uint32Array;
  /** Where this batch is (epoch, batch index). */
  epoch: number;
  batch: number;
}

/** Options of `DataLoader`. */
export interface DataLoaderOptions {
  /** Samples per batch. */
  batchSize: number;
  /** Seed of every random choice (a non-negative safe integer). */
  seed: number;
  /** Shuffle each epoch (default true); without it the order is 0..N-1 every epoch. */
  shuffle?: boolean;
  /** Drop the last, smaller batch of each epoch (default false). */
  dropLast?: boolean;
  /** Batches decoded ahead of the one being consumed (default 2; 0 decodes on demand). */
  prefetch?: number;
  /** Samples decoded at the same time, across batches (default 8). */
  concurrency?: number;
  /** [C, H, W] when the dataset does not declare `sampleShape`. */
  sampleShape?: readonly [number, number, number];
  /** Device of the batch tensors (default 'cpu'). */
  device?: DeviceName;
  /** Where to start (default epoch 0, batch 0); see `position()`. */
  start?: LoaderPosition;
}
const DATA_LOADER_KEYS = optionKeys<DataLoaderOptions>()([
  'batchSize',
  'seed',
  'shuffle',
  'dropLast',
  'prefetch',
  'concurrency',
  'sampleShape',
  'device',
  'start',
]);

/** A FIFO counting semaphore: earlier requests (earlier batches) are served first. */
class Limiter {
  private active = 0;
  private readonly waiting: (() => void)[] = [];
  constructor(private readonly limit: number) {}
  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.active >= this.limit) await new Promise<void>((resolve) => this.waiting.push(resolve));
    ++this.active;
    try {
      return await fn();
    } finally {
      --this.active;
      this.waiting.shift()?.();
    }
  }
}

function checkShape3(name: string, s: unknown): [number, number, number] {
  if (!Array.isArray(s) || s.length !== 3) typeError(name, 'an array [C, H, W] of positive integers', s);
  s.forEach((v, i) => checkInt(`${name}[${i}]`, v, 1, 1 << 20));
  return [s[0], s[1], s[2]] as [number, number, number];
}

interface Pending {
  epoch: number;
  batch: number;
  promise: Promise<Batch>;
}

/**
 * Iterates a dataset in seeded, shuffled batches with prefetch.
 *
 * ```ts
 * const loader = new DataLoader(ds, { batchSize: 32, seed: 1 });
 * loader.seek(saved.position);             // resume exactly
 * for await (const b of loader) { ... }    // the rest of the current epoch
 * const b = await loader.next();           // or one batch at a time, across epochs
 * ```
 */
export class DataLoader implements AsyncIterable<Batch> {
  readonly dataset: Dataset;
  readonly batchSize: number;
  readonly seed: number;
  readonly shuffle: boolean;
  readonly dropLast: boolean;
  readonly prefetch: number;
  readonly sampleShape: readonly [number, number, number];
  readonly device: DeviceName;
  private readonly limiter: Limiter;
  private cursor: LoaderPosition;
  private queue: Pending[] = [];
  private readonly inFlight = new Set<Promise<unknown>>();
  private readonly orders = new Map<number, Uint32Array>();
  private closed = false;

  constructor(dataset: Dataset, opts: DataLoaderOptions) {
    if (dataset === null || typeof dataset !== 'object' || typeof dataset.get !== 'function')
      typeError('dataset', 'a Dataset { length, get(i, rng) }', dataset);
    checkInt('dataset.length', dataset.length, 1, 0xffffffff);
    if (opts === null || typeof opts !== 'object') typeError('opts', 'DataLoaderOptions', opts);
    checkKeys('DataLoader options', opts, DATA_LOADER_KEYS);
    this.dataset = dataset;
    this.batchSize = checkInt('opts.batchSize', opts.batchSize, 1, 1 << 20);
    this.seed = checkInt('opts.seed', opts.seed, 0, Number.MAX_SAFE_INTEGER);
    this.shuffle = opts.shuffle ?? true;
    this.dropLast = opts.dropLast ?? false;
    if (typeof this.shuffle !== 'boolean') typeError('opts.shuffle', 'a boolean', opts.shuffle);
    if (typeof this.dropLast !== 'boolean') typeError('opts.dropLast', 'a boolean', opts.dropLast);
    this.prefetch = opts.prefetch === undefined ? 2 : checkInt('opts.prefetch', opts.prefetch, 0, 1024);
    this.limiter = new Limiter(
      opts.concurrency === undefined ? 8 : checkInt('opts.concurrency', opts.concurrency, 1, 1024),
    );
    const shape = dataset.sampleShape ?? opts.sampleShape;
    if (shape === undefined)
      typeError('opts.sampleShape', 'an array [C, H, W] (the dataset declares no sampleShape)', shape);
    this.sampleShape = checkShape3(dataset.sampleShape ? 'dataset.sampleShape' : 'opts.sampleShape', shape);
    if (dataset.sampleShape && opts.sampleShape) {
      const o = checkShape3('opts.sampleShape', opts.sampleShape);
      if (o.some((v, i) => v !== this.sampleShape[i]))
        throw new RangeError(
          `opts.sampleShape [${o.join(', ')}] differs from dataset.sampleShape [${this.sampleShape.join(', ')}]`,
        );
    }
    this.device = opts.device ?? 'cpu';
    if (this.device !== 'cpu' && this.device !== 'cuda') typeError('opts.device', "'cpu' or 'cuda'", opts.device);
    if (this.batchesPerEpoch === 0)
      throw new RangeError(
        `opts.batchSize ${this.batchSize} with dropLast leaves no batch in a dataset of ${dataset.length} samples`,
      );
    this.cursor = { epoch: 0, batch: 0 };
    if (opts.start !== undefined) this.cursor = this.normalize(opts.start, 'opts.start');
  }

  /** Samples in the dataset. */
  get length(): number {
    return this.dataset.length;
  }

  /** Batches per epoch (the last one smaller unless dropLast). */
  get batchesPerEpoch(): number {
    const n = this.dataset.length;
    return this.dropLast ? Math.floor(n / this.batchSize) : Math.ceil(n / this.batchSize);
  }

  /** The epoch's sample order (a permutation of 0..N-1; identity without shuffle). A copy. */
  order(epoch: number): Uint32Array {
    checkInt('epoch', epoch, 0, Number.MAX_SAFE_INTEGER);
    return this.orderOf(epoch).slice();
  }

  private orderOf(epoch: number): Uint32Array {
    let o = this.orders.get(epoch);
    if (!o) {
      const n = this.dataset.length;
      if (this.shuffle) o = TrainRng.derive(this.seed, 'shuffle', epoch).permutation(n);
      else {
        o = new Uint32Array(n);
        for (let i = 0; i < n; ++i) o[i] = i;
      }
      this.orders.set(epoch, o);
      // Keep the few epochs a prefetch window can span.
      for (const k of this.orders.keys()) if (k < epoch - 1 || k > epoch + 1) this.orders.delete(k);
    }
    return o;
  }

  /** The dataset indices of batch `batch` of `epoch`. */
  batchIndices(epoch: number, batch: number): Uint32Array {
    checkInt('epoch', epoch, 0, Number.MAX_SAFE_INTEGER);
    checkInt('batch', batch, 0, this.batchesPerEpoch - 1);
    const o = this.orderOf(epoch);
    return o.slice(batch * this.batchSize, Math.min(o.length, (batch + 1) * this.batchSize));
  }

  /** The next batch `next()` hands out (save it with the training state to resume exactly). */
  position(): LoaderPosition {
    return { epoch: this.cursor.epoch, batch: this.cursor.batch };
  }

  /**
   * Moves to `pos` (a value of `position()`; batch == batchesPerEpoch means the next epoch's
   * start). Prefetched batches for other positions are dropped; a no-op when already there.
   */
  seek(pos: LoaderPosition): void {
    this.live();
    const p = this.normalize(pos, 'pos');
    if (p.epoch === this.cursor.epoch && p.batch === this.cursor.batch) return;
    this.dropQueue();
    this.cursor = p;
  }

  private normalize(pos: LoaderPosition, name: string): LoaderPosition {
    if (pos === null || typeof pos !== 'object') typeError(name, 'a LoaderPosition { epoch, batch }', pos);
    const epoch = checkInt(`${name}.epoch`, pos.epoch, 0, Number.MAX_SAFE_INTEGER - 1);
    const batch = checkInt(`${name}.batch`, pos.batch, 0, this.batchesPerEpoch);
    return batch === this.batchesPerEpoch ? { epoch: epoch + 1, batch: 0 } : { epoch, batch };
  }

  private advance(p: LoaderPosition): LoaderPosition {
    return p.batch + 1 >= this.batchesPerEpoch
      ? { epoch: p.epoch + 1, batch: 0 }
      : { epoch: p.epoch, batch: p.batch + 1 };
  }

  private live(): void {
    if (this.closed) throw new MergeVQError('DataLoader is closed', 'ERR_CLOSED');
  }

  /** Returns the batch at the cursor and advances it (into the next epoch after the last batch). */
  async next(): Promise<Batch> {
    this.live();
    if (this.queue.length === 0) this.queue.push(this.schedule(this.cursor));
    const head = this.queue.shift()!;
    this.cursor = this.advance(this.cursor);
    this.topUp();
    return head.promise;
  }

  /** Yields the remaining batches of the current epoch (`for await (const b of loader)`). */
  async *epochBatches(): AsyncGenerator<Batch, void, undefined> {
    const epoch = this.cursor.epoch;
    while (!this.closed && this.cursor.epoch === epoch) yield await this.next();
  }

  [Symbol.asyncIterator](): AsyncGenerator<Batch, void, undefined> {
    return this.epochBatches();
  }

  /** Stops prefetching and waits for decodes in flight; later calls throw `ERR_CLOSED`. */
  async close(): Promise<void> {
    this.closed = true;
    this.dropQueue();
    await Promise.allSettled([...this.inFlight]);
  }

  private topUp(): void {
    let p = this.queue.length ? this.advance(this.queue[this.queue.length - 1]!) : this.cursor;
    while (this.queue.length < this.prefetch) {
      this.queue.push(this.schedule(p));
      p = this.advance(p);
    }
  }

  private dropQueue(): void {
    for (const q of this.queue) {
      q.promise.then(
        (b) => {
          b.images.dispose();
          b.labels?.dispose();
        },
        () => undefined,
      );
    }
    this.queue = [];
  }

  private schedule(pos: LoaderPosition): Pending {
    const promise = this.build(pos.epoch, pos.batch);
    // A prefetched batch that fails is reported when it is consumed, not as an unhandled rejection.
    promise.catch(() => undefined);
    this.inFlight.add(promise);
    promise.finally(() => this.inFlight.delete(promise)).catch(() => undefined);
    return { epoch: pos.epoch, batch: pos.batch, promise };
  }

  private async build(epoch: number, batch: number): Promise<Batch> {
    const indices = this.batchIndices(epoch, batch);
    const [C, H, W] = this.sampleShape;
    const per = C * H * W;
    const B = indices.length;
    const images = new Float32Array(B * per);
    const samples = await Promise.all(
      Array.from(indices, (index) =>
        this.limiter.run(() => this.dataset.get(index, new TrainRng(deriveSeed(this.seed, 'sample', epoch, index)))),
      ),
    );
    let labels: BigInt64Array | null = null;
    samples.forEach((s, b) => {
      const index = indices[b]!;
      const where = `dataset.get(${index})`;
      if (s === null || typeof s !== 'object' || !(s.image instanceof Float32Array))
        typeError(where, 'a Sample { image: Float32Array, label? }', s);
      if (s.image.length !== per)
        throw new RangeError(
          `${where}.image must hold C*H*W = ${per} values ([${C}, ${H}, ${W}]), got ${s.image.length}`,
        );
      const img = s.image;
      for (let k = 0; k < per; ++k) {
        const v = img[k]!;
        if (!(v >= -1 && v <= 1)) throw new RangeError(`${where}.image[${k}] must be in [-1, 1], got ${v}`);
      }
      images.set(img, b * per);
      const hasLabel = s.label !== undefined;
      if (b === 0 && hasLabel) labels = new BigInt64Array(B);
      if (hasLabel !== (labels !== null))
        throw new RangeError(`${where}: some samples of batch ${batch} have labels and some do not`);
      if (hasLabel) labels![b] = BigInt(checkInt(`${where}.label`, s.label, 0, 0x7fffffff));
    });
    const lbl = labels as BigInt64Array | null;
    return {
      images: Tensor.from(images, [B, C, H, W], { device: this.device }),
      labels: lbl ? Tensor.from(lbl, [B], { device: this.device }) : null,
      indices,
      epoch,
      batch,
    };
  }
}

/** Options of the in-memory 8-bit image dataset (Fashion-MNIST and alike). */
export interface Uint8ImageDatasetOptions {
  /** Output height and width (default 32). */
  size?: number;
  /** 'pad' centers the image on a background (value -1) canvas; 'resize' resamples bilinearly. Default 'pad'. */
  mode?: 'pad' | 'resize';
  /** 1 (gray) or 3 (gray replicated to RGB); default 1. */
  channels?: 1 | 3;
  /** Horizontal flip with probability 1/2 (default false). */
  flip?: boolean;
}
const UINT8_IMAGE_KEYS = optionKeys<Uint8ImageDatasetOptions>()(['size', 'mode', 'channels', 'flip']);

/**
 * Grayscale 8-bit images held in memory ([N, h, w] bytes, 0 = background), adapted to [C, size,
 * size] float32 in [-1, 1] by padding or bilinear resizing (half-pixel centers), optionally
 * flipped at random.
 */
export class Uint8ImageDataset implements Dataset {
  readonly length: number;
  readonly sampleShape: readonly [number, number, number];
  readonly mode: 'pad' | 'resize';
  readonly flip: boolean;

  constructor(
    readonly images: Uint8Array,
    readonly labels: Uint8Array | null,
    readonly height: number,
    readonly width: number,
    opts: Uint8ImageDatasetOptions = {},
  ) {
    if (!(images instanceof Uint8Array)) typeError('images', 'a Uint8Array [N, height, width]', images);
    checkKeys('Uint8ImageDataset options', opts, UINT8_IMAGE_KEYS);
    checkInt('height', height, 1, 1 << 16);
    checkInt('width', width, 1, 1 << 16);
    if (images.length === 0 || images.length % (height * width) !== 0)
      throw new RangeError(`images must hold N * ${height} * ${width} bytes with N >= 1, got ${images.length}`);
    this.length = images.length / (height * width);
    if (labels !== null) {
      if (!(labels instanceof Uint8Array)) typeError('labels', 'a Uint8Array [N] or null', labels);
      if (labels.length !== this.length)
        throw new RangeError(`labels must hold ${this.length} values (one per image), got ${labels.length}`);
    }
    const size = opts.size === undefined ? 32 : checkInt('opts.size', opts.size, 1, 1 << 14);
    this.mode = opts.mode ?? 'pad';
    if (this.mode !== 'pad' && this.mode !== 'resize') typeError('opts.mode', "'pad' or 'resize'", opts.mode);
    if (this.mode === 'pad' && (size < height || size < width))
      throw new RangeError(`opts.size must be >= ${Math.max(height, width)} to pad, got ${size} (use mode 'resize')`);
    const channels = opts.channels ?? 1;
    if (channels !== 1 && channels !== 3) typeError('opts.channels', '1 or 3', channels);
    this.flip = opts.flip ?? false;
    if (typeof this.flip !== 'boolean') typeError('opts.flip', 'a boolean', opts.flip);
    this.sampleShape = Object.freeze([channels, size, size] as [number, number, number]);
  }

  /** Sample `index`, adapted (see the class comment); the flip draws one number from `rng`. */
  async get(index: number, rng: TrainRng): Promise<Sample> {
    return this.getSync(index, rng);
  }

  /** Synchronous `get`. */
  getSync(index: number, rng: TrainRng): Sample {
    checkInt('index', index, 0, this.length - 1);
    const [C, S] = this.sampleShape;
    const h = this.height;
    const w = this.width;
    const src = this.images.subarray(index * h * w, (index + 1) * h * w);
    const flip = this.flip && rng.next() < 0.5;
    const plane = new Float32Array(S * S);
    if (this.mode === 'pad') {
      plane.fill(-1);
      const oy = Math.floor((S - h) / 2);
      const ox = Math.floor((S - w) / 2);
      for (let y = 0; y < h; ++y)
        for (let x = 0; x < w; ++x) plane[(oy + y) * S + ox + (flip ? w - 1 - x : x)] = src[y * w + x]! / 127.5 - 1;
    } else {
      // Bilinear with half-pixel centers; coordinates clamped at the borders.
      const sy = h / S;
      const sx = w / S;
      for (let y = 0; y < S; ++y) {
        const fy = Math.min(Math.max((y + 0.5) * sy - 0.5, 0), h - 1);
        const y0 = Math.floor(fy);
        const y1 = Math.min(y0 + 1, h - 1);
        const wy = fy - y0;
        for (let x = 0; x < S; ++x) {
          const fx = Math.min(Math.max((x + 0.5) * sx - 0.5, 0), w - 1);
          const x0 = Math.floor(fx);
          const x1 = Math.min(x0 + 1, w - 1);
          const wx = fx - x0;
          const top = src[y0 * w + x0]! * (1 - wx) + src[y0 * w + x1]! * wx;
          const bot = src[y1 * w + x0]! * (1 - wx) + src[y1 * w + x1]! * wx;
          const v = (top * (1 - wy) + bot * wy) / 127.5 - 1;
          plane[y * S + (flip ? S - 1 - x : x)] = Math.min(1, Math.max(-1, v));
        }
      }
    }
    const image = C === 1 ? plane : new Float32Array(C * S * S);
    if (C !== 1) for (let c = 0; c < C; ++c) image.set(plane, c * S * S);
    return this.labels ? { image, label: this.labels[index]! } : { image };
  }
}

/** Options of `fashionMnistDataset`. */
export interface FashionMnistDatasetOptions extends Uint8ImageDatasetOptions {
  /** Folder of the IDX files (default: where Debian's dataset-fashion-mnist puts them). */
  dir?: string;
}
const FASHION_MNIST_DATASET_KEYS = optionKeys<FashionMnistDatasetOptions>()([...UINT8_IMAGE_KEYS, 'dir']);

/**
 * Fashion-MNIST as a Dataset: 28x28 gray images padded (default, to 32x32) or resized, with 1 or
 * 3 channels, labels 0..9.
 */
export async function fashionMnistDataset(
  split: 'train' | 'test',
  opts: FashionMnistDatasetOptions = {},
): Promise<Uint8ImageDataset & { readonly source: FashionMnist }> {
  checkKeys('fashionMnistDataset options', opts, FASHION_MNIST_DATASET_KEYS);
  const { dir, ...adapt } = opts; // the dataset gets only its own options
  const fm = await loadFashionMnist(split, dir === undefined ? {} : { dir });
  const ds = new Uint8ImageDataset(fm.images, fm.labels, fm.height, fm.width, adapt);
  return Object.assign(ds, { source: fm });
}
