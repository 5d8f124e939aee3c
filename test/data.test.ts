// Training data: IDX reading (lib/data/idx.ts), the image-folder dataset (lib/data/folder.ts),
// the DataLoader and the 8-bit image adapter (lib/data/loader.ts).
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import sharp from 'sharp';
import { afterAll, describe, expect, it } from 'vitest';
import { MergeVQError } from '../lib/errors.js';
import {
  FASHION_MNIST_DIR,
  decodeIdx,
  encodeIdx,
  loadFashionMnist,
  readIdx,
  type IdxArray,
  type IdxArrayFor,
  type IdxDType,
} from '../lib/data/idx.js';
import { ImageFolderDataset } from '../lib/data/folder.js';
import {
  DataLoader,
  Uint8ImageDataset,
  fashionMnistDataset,
  type Batch,
  type Dataset,
  type Sample,
} from '../lib/data/loader.js';
import { TrainRng } from '../lib/train/rng.js';
import { Rng, freshSeed, seedInfo } from './helpers.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mergevq-data-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
let fileCount = 0;
const tmpFile = (name: string) => path.join(tmp, `${++fileCount}-${name}`);

function randomIdx(rng: Rng, dtype: IdxDType, shape: number[]): IdxArray {
  const n = shape.reduce((a, b) => a * b, 1);
  const make: { [D in IdxDType]: () => IdxArrayFor[D] } = {
    u8: () => Uint8Array.from({ length: n }, () => rng.int(256)),
    i8: () => Int8Array.from({ length: n }, () => rng.int(256) - 128),
    i16: () => Int16Array.from({ length: n }, () => rng.int(65536) - 32768),
    i32: () => Int32Array.from({ length: n }, () => rng.int(2 ** 32) - 2 ** 31),
    f32: () => Float32Array.from({ length: n }, () => rng.normal() * 1e3),
    f64: () => Float64Array.from({ length: n }, () => rng.normal() * 1e-7),
  };
  return { dtype, shape, data: make[dtype]() };
}

async function expectBadFile(p: Promise<unknown>, label: string, re: RegExp): Promise<void> {
  const err = await p.then(
    () => null,
    (e: unknown) => e,
  );
  expect(err, `${label} should fail`).toBeInstanceOf(MergeVQError);
  expect((err as MergeVQError).code).toBe('ERR_BAD_FILE');
  expect((err as Error).message).toContain(label);
  expect((err as Error).message).toMatch(re);
}

describe('IDX', () => {
  const dtypes: IdxDType[] = ['u8', 'i8', 'i16', 'i32', 'f32', 'f64'];
  it.each(dtypes)('round-trips %s, plain and gzip, from files and bytes', async (dtype) => {
    const rng = new Rng();
    for (const shape of [[7], [3, 5], [2, 3, 4], [1, 2, 1, 3], [0, 4]]) {
      const a = randomIdx(rng, dtype, shape);
      for (const gzip of [false, true]) {
        const bytes = encodeIdx(a, { gzip });
        expect(bytes[0] === 0x1f && bytes[1] === 0x8b).toBe(gzip);
        const f = tmpFile(`a.idx${gzip ? '.gz' : ''}`);
        fs.writeFileSync(f, bytes);
        for (const b of [await readIdx(f), await decodeIdx(bytes)]) {
          expect(b.dtype).toBe(dtype);
          expect(b.shape).toEqual(shape);
          expect(b.data.constructor).toBe(a.data.constructor);
          expect(Array.from(b.data as ArrayLike<number>), seedInfo(rng.seed)).toEqual(
            Array.from(a.data as ArrayLike<number>),
          );
        }
      }
    }
  });

  it('reads hand-built big-endian files', async () => {
    // u8 [2, 3]
    const u8 = Uint8Array.from([0, 0, 0x08, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 250, 251, 252]);
    const a = await decodeIdx(u8);
    expect([a.dtype, a.shape, Array.from(a.data as Uint8Array)]).toEqual(['u8', [2, 3], [1, 2, 3, 250, 251, 252]]);
    // i16 [2]: 0x0102 = 258, 0xfffe = -2
    const b = await decodeIdx(Uint8Array.from([0, 0, 0x0b, 1, 0, 0, 0, 2, 0x01, 0x02, 0xff, 0xfe]));
    expect(Array.from(b.data as Int16Array)).toEqual([258, -2]);
    // f32 [1]: 0x3fc00000 = 1.5; f64 [1]: 0xc004000000000000 = -2.5
    expect(
      Array.from(
        (await decodeIdx(Uint8Array.from([0, 0, 0x0d, 1, 0, 0, 0, 1, 0x3f, 0xc0, 0, 0]))).data as Float32Array,
      ),
    ).toEqual([1.5]);
    expect(
      Array.from(
        (await decodeIdx(Uint8Array.from([0, 0, 0x0e, 1, 0, 0, 0, 1, 0xc0, 0x04, 0, 0, 0, 0, 0, 0])))
          .data as Float64Array,
      ),
    ).toEqual([-2.5]);
    // i32 [1] 0x80000001 = -2147483647, gzip'd
    const g = zlib.gzipSync(Uint8Array.from([0, 0, 0x0c, 1, 0, 0, 0, 1, 0x80, 0, 0, 1]));
    expect(Array.from((await decodeIdx(g)).data as Int32Array)).toEqual([-2147483647]);
  });

  it('rejects malformed files with ERR_BAD_FILE naming the file', async () => {
    const rng = new Rng();
    const good = encodeIdx(randomIdx(rng, 'i16', [4, 5]));
    const cases: [string, Uint8Array, RegExp][] = [
      ['truncated', good.subarray(0, good.length - 1), /truncated/],
      ['oversized', Buffer.concat([good, Buffer.from([0])]), /trailing/],
      ['short-header', good.subarray(0, 7), /truncated header/],
      ['tiny', good.subarray(0, 2), /shorter than the 4-byte magic/],
      ['empty', new Uint8Array(0), /shorter than the 4-byte magic/],
      ['bad-magic', Uint8Array.from([1, 0, 8, 1, 0, 0, 0, 0]), /bad magic/],
      ['bad-dtype', Uint8Array.from([0, 0, 0x0a, 1, 0, 0, 0, 0]), /unknown dtype code 0x0a/],
      ['zero-dims', Uint8Array.from([0, 0, 8, 0]), /0 dimensions/],
      ['many-dims', Uint8Array.from([0, 0, 8, 17, ...new Array(68).fill(0)]), /17 dimensions/],
      ['huge-dim', Uint8Array.from([0, 0, 8, 1, 0x80, 0, 0, 0]), /above the limit/],
      // 60000 x 28 x 28 x 100 bytes: over the 2 GiB default limit, rejected from the header.
      ['over-limit', Uint8Array.from([0, 0, 8, 4, 0, 0, 0xea, 0x60, 0, 0, 0, 28, 0, 0, 0, 28, 0, 0, 0, 100]), /limit/],
      ['gz-truncated', zlib.gzipSync(good).subarray(0, 30), /damaged|truncated/],
      ['gz-data-short', zlib.gzipSync(good.subarray(0, good.length - 2)), /truncated data/],
      ['gz-data-long', zlib.gzipSync(Buffer.concat([good, Buffer.alloc(3)])), /more data than its header declares/],
      ['gz-garbage', Buffer.concat([Buffer.from([0x1f, 0x8b]), Buffer.alloc(40, 7)]), /damaged/],
    ];
    for (const [name, bytes, re] of cases) {
      const f = tmpFile(`${name}.idx`);
      fs.writeFileSync(f, bytes);
      await expectBadFile(readIdx(f), f, re);
      await expectBadFile(decodeIdx(bytes, { label: `<${name}>` }), `<${name}>`, re);
    }
    await expect(readIdx(path.join(tmp, 'absent.idx'))).rejects.toMatchObject({ code: 'ERR_NOT_FOUND' });
    // A header that declares far more than the file holds allocates nothing of that size.
    const liar = Uint8Array.from([0, 0, 8, 1, 0x40, 0, 0, 0, 1, 2, 3]); // declares 1 GiB
    const f = tmpFile('liar.idx.gz');
    fs.writeFileSync(f, zlib.gzipSync(liar));
    const before = process.memoryUsage().arrayBuffers;
    await expectBadFile(readIdx(f), f, /truncated data: 3 bytes/);
    expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(64 << 20);
    // Limits can be tightened.
    await expectBadFile(decodeIdx(good, { maxBytes: 39, label: 'L' }), 'L', /39-byte limit/);
    expect((await decodeIdx(good, { maxBytes: 40 })).shape).toEqual([4, 5]);
  });

  it('stops decompressing a gzip bomb as soon as it passes the declared size', async () => {
    // 1 GiB of zeros after a header declaring 16 bytes, as 1024 concatenated gzip members of
    // 1 MiB each (a valid multi-member gzip stream of about 1 MB).
    const header = zlib.gzipSync(encodeIdx({ dtype: 'u8', shape: [16], data: new Uint8Array(16) }));
    const member = zlib.gzipSync(Buffer.alloc(1 << 20), { level: 9 });
    const bomb = Buffer.concat([header, ...new Array<Buffer>(1024).fill(member)]);
    expect(bomb.length).toBeLessThan(2 << 20);
    const f = tmpFile('bomb.idx.gz');
    fs.writeFileSync(f, bomb);
    const t0 = performance.now();
    await expectBadFile(readIdx(f), f, /more data than its header declares/);
    await expectBadFile(decodeIdx(bomb), '<buffer>', /decompression bomb/);
    const ms = performance.now() - t0;
    // Inflating the whole GiB twice takes seconds; stopping early takes milliseconds.
    expect(ms).toBeLessThan(1500);
    console.log(`idx: gzip bomb (1 GiB inflated, ${bomb.length} bytes) rejected twice in ${ms.toFixed(1)} ms`);
  });
});

const haveFashion =
  fs.existsSync(path.join(FASHION_MNIST_DIR, 'train-images-idx3-ubyte.gz')) ||
  fs.existsSync(path.join(FASHION_MNIST_DIR, 'train-images-idx3-ubyte'));
if (!haveFashion)
  console.warn(`SKIPPED Fashion-MNIST tests: no files in ${FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)`);

describe.skipIf(!haveFashion)('Fashion-MNIST (Debian dataset-fashion-mnist)', () => {
  it('loads 60000 train and 10000 test images with balanced labels', async () => {
    const t0 = performance.now();
    for (const [split, count] of [
      ['train', 60000],
      ['test', 10000],
    ] as const) {
      const fm = await loadFashionMnist(split);
      expect(fm.count).toBe(count);
      expect(fm.images.length).toBe(count * 28 * 28);
      expect(fm.labels.length).toBe(count);
      const perClass = new Array<number>(10).fill(0);
      for (const l of fm.labels) perClass[l]!++;
      expect(perClass).toEqual(new Array(10).fill(count / 10));
      // Real pictures: not constant, background zero in the corners of most images.
      let zeroCorners = 0;
      for (let i = 0; i < 100; ++i) if (fm.images[i * 784] === 0) ++zeroCorners;
      expect(zeroCorners).toBeGreaterThan(80);
      expect(Math.max(...fm.images.subarray(0, 784))).toBeGreaterThan(100);
    }
    console.log(`fashion-mnist: both splits loaded in ${(performance.now() - t0).toFixed(0)} ms`);
  });

  it('batches through the DataLoader as [B, 3, 32, 32] with labels', async () => {
    const ds = await fashionMnistDataset('test', { channels: 3, size: 32 });
    const loader = new DataLoader(ds, { batchSize: 64, seed: freshSeed(), prefetch: 2 });
    expect(loader.batchesPerEpoch).toBe(157);
    const b = await loader.next();
    expect(b.images.shape).toEqual([64, 3, 32, 32]);
    expect(b.labels!.dtype).toBe('int64');
    const lbl = b.labels!.toArray<'int64'>();
    for (let i = 0; i < 64; ++i) expect(Number(lbl[i])).toBe(ds.source.labels[b.indices[i]!]);
    await loader.close();
  });

  it('reports absent files as ERR_NOT_FOUND with the install hint', async () => {
    await expect(loadFashionMnist('train', { dir: tmp })).rejects.toThrow(/dataset-fashion-mnist/);
  });
});

/** A synthetic dataset: sample i holds i, a draw from its rng and its label; calls are counted. */
class CountingDataset implements Dataset {
  readonly sampleShape = [1, 1, 3] as const;
  readonly calls = new Map<string, number>();
  started = 0;
  constructor(
    readonly length: number,
    private readonly delayRng: Rng | null = null,
    private readonly labeled = true,
  ) {}
  async get(index: number, rng: TrainRng): Promise<Sample> {
    ++this.started;
    const key = `${index}`;
    this.calls.set(key, (this.calls.get(key) ?? 0) + 1);
    if (this.delayRng) await new Promise((r) => setTimeout(r, this.delayRng!.int(4)));
    const image = Float32Array.from([index / this.length, rng.uniform(-1, 1), rng.uniform(-1, 1)]);
    return this.labeled ? { image, label: index % 5 } : { image };
  }
}

interface Seen {
  epoch: number;
  batch: number;
  indices: number[];
  images: number[];
  labels: number[] | null;
}
function seen(b: Batch): Seen {
  return {
    epoch: b.epoch,
    batch: b.batch,
    indices: [...b.indices],
    images: [...b.images.toArray<'float32'>()],
    labels: b.labels ? [...b.labels.toArray<'int64'>()].map(Number) : null,
  };
}

describe('DataLoader', () => {
  it('same seed gives the same batches; epochs and seeds change the order; every index once per epoch', async () => {
    const seed = freshSeed();
    const info = seedInfo(seed);
    const N = 53;
    const runs: Seen[][] = [];
    for (const [prefetch, concurrency] of [
      [0, 1],
      [3, 5],
    ]) {
      const ds = new CountingDataset(N, new Rng(seed + 1));
      const loader = new DataLoader(ds, { batchSize: 8, seed, prefetch, concurrency });
      expect(loader.batchesPerEpoch).toBe(7);
      const out: Seen[] = [];
      for (let e = 0; e < 3; ++e) {
        ds.calls.clear();
        const before = out.length;
        for await (const b of loader) out.push(seen(b));
        expect(out.length - before).toBe(7);
        const idx = out.slice(before).flatMap((s) => s.indices);
        expect(
          [...idx].sort((a, b) => a - b),
          info,
        ).toEqual(Array.from({ length: N }, (_, i) => i));
        expect(out[out.length - 1]!.indices.length).toBe(N - 6 * 8);
        expect(loader.position()).toEqual({ epoch: e + 1, batch: 0 });
        // Nothing decoded twice in an epoch (prefetch into the next epoch counts for that one).
        if (prefetch === 0)
          expect(
            [...ds.calls.values()].every((c) => c === 1),
            info,
          ).toBe(true);
      }
      await loader.close();
      runs.push(out);
    }
    // Batches do not depend on prefetch depth, concurrency or decode timing.
    expect(runs[1], info).toEqual(runs[0]);
    const run = runs[0]!;
    for (const s of run) {
      expect(s.images.length).toBe(s.indices.length * 3);
      s.indices.forEach((i, k) => {
        expect(s.images[k * 3]).toBeCloseTo(i / N, 6);
        expect(s.labels![k]).toBe(i % 5);
      });
    }
    const orderOf = (e: number) => run.filter((s) => s.epoch === e).flatMap((s) => s.indices);
    expect(orderOf(1), info).not.toEqual(orderOf(0));
    expect(orderOf(2), info).not.toEqual(orderOf(1));
    // Augmentation draws differ between epochs for the same sample.
    const drawOf = (e: number, i: number) => {
      const s = run.find((x) => x.epoch === e && x.indices.includes(i))!;
      return s.images[s.indices.indexOf(i) * 3 + 1];
    };
    expect(drawOf(0, 5)).not.toBe(drawOf(1, 5));
    const other = new DataLoader(new CountingDataset(N), { batchSize: 8, seed: seed + 1 });
    expect([...other.order(0)]).not.toEqual(orderOf(0));
    const plain = new DataLoader(new CountingDataset(N), { batchSize: 8, seed, shuffle: false });
    expect([...plain.order(4)]).toEqual(Array.from({ length: N }, (_, i) => i));
  });

  it('with prefetch, decodes ahead of consumption and each sample once per epoch', async () => {
    const seed = freshSeed();
    const ds = new CountingDataset(40, new Rng(seed));
    const loader = new DataLoader(ds, { batchSize: 4, seed, prefetch: 3, concurrency: 16 });
    expect(ds.started).toBe(0); // nothing starts before the first request
    await loader.next();
    await new Promise((r) => setTimeout(r, 30));
    // Batch 0 consumed, batches 1..3 decoding or decoded already.
    expect(ds.started).toBe(16);
    for (let i = 0; i < 9; ++i) await loader.next();
    expect(loader.position()).toEqual({ epoch: 1, batch: 0 });
    await new Promise((r) => setTimeout(r, 30));
    // All of epoch 0 once, plus the first three batches of epoch 1 prefetched.
    expect(ds.started).toBe(40 + 12);
    expect([...ds.calls.values()].filter((c) => c === 2).length).toBe(12);
    expect([...ds.calls.values()].every((c) => c <= 2)).toBe(true);
    await loader.close();
    await expect(loader.next()).rejects.toMatchObject({ code: 'ERR_CLOSED' });
  });

  it('overlaps decoding with the consumer: prefetch hides the decode time', async () => {
    const slow: Dataset = {
      length: 24,
      sampleShape: [1, 1, 1],
      get: async () => {
        await new Promise((r) => setTimeout(r, 15));
        return { image: new Float32Array(1) };
      },
    };
    const time = async (prefetch: number) => {
      const loader = new DataLoader(slow, { batchSize: 4, seed: 1, prefetch, concurrency: 4 });
      const t0 = performance.now();
      for await (const b of loader) {
        void b;
        await new Promise((r) => setTimeout(r, 15)); // "compute"
      }
      await loader.close();
      return performance.now() - t0;
    };
    const without = await time(0);
    const withPrefetch = await time(2);
    // 6 batches: ~6 * (15 + 15) ms serial vs ~15 + 6 * 15 ms overlapped.
    expect(withPrefetch).toBeLessThan(without * 0.85);
  });

  it('resumes from a saved position with exactly the remaining batches', async () => {
    const seed = freshSeed();
    const info = seedInfo(seed);
    const N = 37;
    const opts = { batchSize: 5, seed, dropLast: true, prefetch: 2 };
    const ref = new DataLoader(new CountingDataset(N), opts);
    expect(ref.batchesPerEpoch).toBe(7);
    const all: Seen[] = [];
    for (let i = 0; i < 20; ++i) all.push(seen(await ref.next()));
    expect(all.every((s) => s.indices.length === 5)).toBe(true);
    await ref.close();
    for (const k of [0, 3, 7, 11, 13]) {
      // Run k batches, save the position through JSON, continue in a fresh loader.
      const a = new DataLoader(new CountingDataset(N), opts);
      for (let i = 0; i < k; ++i) await a.next();
      const pos = JSON.parse(JSON.stringify(a.position()));
      await a.close();
      const ds = new CountingDataset(N);
      const b = new DataLoader(ds, { ...opts, start: pos });
      const rest: Seen[] = [];
      for (let i = k; i < 20; ++i) rest.push(seen(await b.next()));
      expect(rest, `${info}, resumed after ${k}`).toEqual(all.slice(k));
      await b.close();
      // seek() on a running loader does the same.
      const c = new DataLoader(new CountingDataset(N), opts);
      await c.next();
      c.seek(pos);
      expect(seen(await c.next()), info).toEqual(all[k]);
      await c.close();
    }
    // The end of an epoch is the start of the next.
    const d = new DataLoader(new CountingDataset(N), { ...opts, start: { epoch: 1, batch: 7 } });
    expect(d.position()).toEqual({ epoch: 2, batch: 0 });
    expect(() => d.seek({ epoch: 0, batch: 8 })).toThrow(RangeError);
    expect(() => d.seek({ epoch: -1, batch: 0 })).toThrow(RangeError);
    await d.close();
  });

  it('validates samples and options', async () => {
    const bad = (image: Float32Array, label?: number): Dataset => ({
      length: 3,
      sampleShape: [1, 1, 2],
      get: async () => (label === undefined ? { image } : { image, label }),
    });
    await expect(new DataLoader(bad(new Float32Array(3)), { batchSize: 2, seed: 0 }).next()).rejects.toThrow(
      /must hold C\*H\*W = 2/,
    );
    await expect(new DataLoader(bad(Float32Array.from([0, 1.5])), { batchSize: 2, seed: 0 }).next()).rejects.toThrow(
      /\[-1, 1\], got 1.5/,
    );
    await expect(new DataLoader(bad(Float32Array.from([0, NaN])), { batchSize: 2, seed: 0 }).next()).rejects.toThrow(
      /got NaN/,
    );
    await expect(new DataLoader(bad(new Float32Array(2), 1.5), { batchSize: 2, seed: 0 }).next()).rejects.toThrow(
      /label/,
    );
    const failing: Dataset = {
      length: 4,
      sampleShape: [1, 1, 1],
      get: async (i) => {
        if (i === 2) throw new Error('decode failed');
        return { image: new Float32Array(1) };
      },
    };
    const fl = new DataLoader(failing, { batchSize: 1, seed: 0, shuffle: false, prefetch: 3 });
    await fl.next();
    await fl.next();
    await expect(fl.next()).rejects.toThrow('decode failed');
    await fl.next(); // the loader goes on after a failed batch
    await fl.close();
    const unlabeled = new DataLoader(new CountingDataset(5, null, false), { batchSize: 2, seed: 0 });
    expect((await unlabeled.next()).labels).toBeNull();
    await unlabeled.close();
    expect(() => new DataLoader(new CountingDataset(5), { batchSize: 6, seed: 0, dropLast: true })).toThrow(/no batch/);
    expect(() => new DataLoader(new CountingDataset(5), { batchSize: 0, seed: 0 })).toThrow(RangeError);
    expect(
      () => new DataLoader({ length: 5, get: async () => ({ image: new Float32Array(1) }) }, { batchSize: 1, seed: 0 }),
    ).toThrow(/sampleShape/);
    expect(() => new DataLoader(new CountingDataset(5), { batchSize: 1, seed: 0, sampleShape: [1, 1, 4] })).toThrow(
      /differs/,
    );
  });
});

describe('Uint8ImageDataset (Fashion-MNIST adapter)', () => {
  const rng = new Rng();
  const N = 3;
  const images = Uint8Array.from({ length: N * 28 * 28 }, () => rng.int(256));
  const labels = Uint8Array.from([4, 0, 9]);

  it('pads 28 -> 32 on a -1 background, 1 or 3 channels, with optional flips', () => {
    const r = new TrainRng(1);
    const ds1 = new Uint8ImageDataset(images, labels, 28, 28, { size: 32 });
    expect(ds1.sampleShape).toEqual([1, 32, 32]);
    const s = ds1.getSync(1, r);
    expect(s.label).toBe(0);
    for (let y = 0; y < 32; ++y)
      for (let x = 0; x < 32; ++x) {
        const inside = y >= 2 && y < 30 && x >= 2 && x < 30;
        const want = inside ? images[784 + (y - 2) * 28 + (x - 2)]! / 127.5 - 1 : -1;
        expect(s.image[y * 32 + x]).toBeCloseTo(want, 6);
      }
    const ds3 = new Uint8ImageDataset(images, labels, 28, 28, { size: 32, channels: 3 });
    const s3 = ds3.getSync(1, r);
    for (let c = 0; c < 3; ++c) expect([...s3.image.subarray(c * 1024, (c + 1) * 1024)]).toEqual([...s.image]);
    // Flips: the flip draw is the first number of the sample's generator.
    const dsf = new Uint8ImageDataset(images, labels, 28, 28, { size: 32, flip: true });
    let flipped = 0;
    for (let seed = 0; seed < 40; ++seed) {
      const willFlip = new TrainRng(seed).next() < 0.5;
      const f = dsf.getSync(2, new TrainRng(seed));
      const plain = ds1.getSync(2, new TrainRng(seed));
      for (let y = 0; y < 32; ++y)
        for (let x = 0; x < 32; ++x) expect(f.image[y * 32 + x]).toBe(plain.image[y * 32 + (willFlip ? 31 - x : x)]);
      if (willFlip) ++flipped;
    }
    expect(flipped > 5 && flipped < 35).toBe(true);
  });

  it('resizes bilinearly (half-pixel centers)', () => {
    // 2x2 -> 4x4: output pixel centers map to -0.25, 0.25, 0.75, 1.25 (clamped to [0, 1]).
    const src = Uint8Array.from([0, 255, 255, 0]);
    const ds = new Uint8ImageDataset(src, null, 2, 2, { size: 4, mode: 'resize' });
    const img = ds.getSync(0, new TrainRng(0)).image;
    const w = [0, 0.25, 0.75, 1];
    for (let y = 0; y < 4; ++y)
      for (let x = 0; x < 4; ++x) {
        const v = 255 * (w[x]! * (1 - w[y]!) + (1 - w[x]!) * w[y]!);
        expect(img[y * 4 + x]).toBeCloseTo(v / 127.5 - 1, 5);
      }
    // Downsizing a constant image keeps it constant.
    const c = new Uint8ImageDataset(new Uint8Array(28 * 28).fill(51), null, 28, 28, { size: 16, mode: 'resize' });
    expect(c.getSync(0, new TrainRng(0)).image.every((v) => Math.abs(v - (51 / 127.5 - 1)) < 1e-6)).toBe(true);
    expect(() => new Uint8ImageDataset(src, null, 2, 2, { size: 1 })).toThrow(/mode 'resize'/);
    expect(() => new Uint8ImageDataset(src, Uint8Array.from([1, 2]), 2, 2)).toThrow(/labels must hold 1/);
  });
});

describe('ImageFolderDataset', () => {
  const root = path.join(tmp, 'folder');
  const W = 40;
  const H = 30;
  /** Image k's RGB pixel (x, y). */
  const px = (k: number, x: number, y: number, c: number) => (x * 5 + y * 3 + c * 70 + k * 17) % 256;
  const writePng = async (file: string, k: number) => {
    const raw = Buffer.alloc(W * H * 3);
    for (let y = 0; y < H; ++y)
      for (let x = 0; x < W; ++x) for (let c = 0; c < 3; ++c) raw[(y * W + x) * 3 + c] = px(k, x, y, c);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    await sharp(raw, { raw: { width: W, height: H, channels: 3 } })
      .png()
      .toFile(file);
  };

  it('labels by subfolder (recursive), crops and flips from the sample generator', async () => {
    await writePng(path.join(root, 'cls_b', 'x.png'), 0);
    await writePng(path.join(root, 'cls_a', 'deep', 'er', 'y.png'), 1);
    await writePng(path.join(root, 'cls_a', 'z.PNG'), 2);
    fs.writeFileSync(path.join(root, 'cls_a', 'notes.txt'), 'not an image');
    const ds = await ImageFolderDataset.open(root, { size: 24, resize: 30 });
    expect(ds.classes).toEqual(['cls_a', 'cls_b']);
    expect(ds.files.map((f) => path.relative(root, f))).toEqual([
      path.join('cls_a', 'deep', 'er', 'y.png'),
      path.join('cls_a', 'z.PNG'),
      path.join('cls_b', 'x.png'),
    ]);
    expect([...ds.labels!]).toEqual([0, 0, 1]);
    expect(ds.sampleShape).toEqual([3, 24, 24]);
    const kOf = [1, 2, 0];
    let flips = 0;
    const offsets = new Set<string>();
    for (let seed = 0; seed < 12; ++seed) {
      const i = seed % 3;
      // Replay the documented draws: crop x, crop y, then the flip.
      const replay = new TrainRng(seed);
      const x0 = replay.int(W - 24 + 1);
      const y0 = replay.int(H - 24 + 1);
      const flip = replay.next() < 0.5;
      flips += flip ? 1 : 0;
      offsets.add(`${x0},${y0}`);
      const s = await ds.get(i, new TrainRng(seed));
      expect(s.label).toBe(ds.labels![i]);
      for (let c = 0; c < 3; ++c)
        for (let y = 0; y < 24; ++y)
          for (let x = 0; x < 24; ++x) {
            const want = px(kOf[i]!, x0 + (flip ? 23 - x : x), y0 + y, c) / 127.5 - 1;
            expect(s.image[c * 576 + y * 24 + x]).toBeCloseTo(want, 6);
          }
    }
    expect(flips > 0 && flips < 12).toBe(true);
    expect(offsets.size).toBeGreaterThan(3);
    // Center crop without flip, gray.
    const center = await ImageFolderDataset.open(root, {
      size: 24,
      resize: 30,
      crop: 'center',
      flip: false,
      channels: 1,
    });
    const g = await center.get(2, new TrainRng(0));
    expect(g.image.length).toBe(576);
    const luma = (x: number, y: number) => 0.2126 * px(0, x, y, 0) + 0.7152 * px(0, x, y, 1) + 0.0722 * px(0, x, y, 2);
    // sharp's b-w conversion is a luminance mix; allow its rounding and gamma handling.
    expect(Math.abs((g.image[0]! + 1) * 127.5 - luma(8, 3))).toBeLessThan(20);
    // Resizing: the shorter side goes to `resize`.
    const small = await ImageFolderDataset.open(root, { size: 12, resize: 15, crop: 'center', flip: false });
    expect((await small.get(0, new TrainRng(0))).image.length).toBe(3 * 144);
  });

  it('reads a flat folder without labels; rejects mixed layouts, missing folders and bad images', async () => {
    const flat = path.join(tmp, 'flat');
    await writePng(path.join(flat, 'a.png'), 3);
    await writePng(path.join(flat, 'b.png'), 4);
    const ds = await ImageFolderDataset.open(flat, { size: 16 });
    expect(ds.labels).toBeNull();
    expect(ds.length).toBe(2);
    const loader = new DataLoader(ds, { batchSize: 2, seed: 3 });
    const b = await loader.next();
    expect(b.images.shape).toEqual([2, 3, 16, 16]);
    expect(b.labels).toBeNull();
    await loader.close();
    await writePng(path.join(flat, 'sub', 'c.png'), 5);
    await expect(ImageFolderDataset.open(flat, { size: 16 })).rejects.toMatchObject({ code: 'ERR_BAD_FILE' });
    expect((await ImageFolderDataset.open(flat, { size: 16, labels: 'none' })).length).toBe(3);
    expect((await ImageFolderDataset.open(flat, { size: 16, labels: 'folders' })).length).toBe(1);
    await expect(ImageFolderDataset.open(path.join(tmp, 'nope'), { size: 16 })).rejects.toMatchObject({
      code: 'ERR_NOT_FOUND',
    });
    fs.writeFileSync(path.join(flat, 'broken.png'), 'not a png');
    const withBroken = await ImageFolderDataset.open(flat, { size: 16, labels: 'none' });
    const bi = withBroken.files.findIndex((f) => f.endsWith('broken.png'));
    await expect(withBroken.get(bi, new TrainRng(0))).rejects.toMatchObject({
      code: 'ERR_BAD_IMAGE',
      message: expect.stringContaining('broken.png'),
    });
    await expect(ImageFolderDataset.open(flat, { size: 16, resize: 8 })).rejects.toThrow(RangeError);
  });
});
