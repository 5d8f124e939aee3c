// Seeded training RNG (lib/train/rng.ts) and crash-safe training checkpoints (lib/train/state.ts).
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { MergeVQError } from '../lib/errors.js';
import { Tensor } from '../lib/tensor.js';
import type { DType } from '../lib/native.js';
import { TrainRng, deriveSeed } from '../lib/train/rng.js';
import { isValidTrainingState, loadTrainingState, previousPath, saveTrainingState } from '../lib/train/state.js';
import { Rng, freshSeed, seedInfo } from './helpers.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mergevq-state-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
let dirCount = 0;
const freshDir = () => fs.mkdtempSync(path.join(tmp, `d${++dirCount}-`));

describe('TrainRng', () => {
  it('is xoshiro128**: known outputs from the state [1, 2, 3, 4]', () => {
    // Worked by hand from the algorithm's definition (rotl(s1 * 5, 7) * 9, then the state update).
    const r = TrainRng.fromState({ algorithm: 'xoshiro128**', s: [1, 2, 3, 4], spare: null });
    expect([r.nextU32(), r.nextU32(), r.nextU32()]).toEqual([11520, 0, 5927040]);
  });

  it('state() / restore() round-trip through JSON, including the cached normal', () => {
    const seed = freshSeed();
    const a = new TrainRng(seed);
    for (let i = 0; i < 17; ++i) a.next();
    a.normal(); // leaves the pair's second value cached
    const saved = JSON.parse(JSON.stringify(a.state()));
    const b = TrainRng.fromState(saved);
    const drawA = [a.normal(), a.uniform(-3, 5), a.int(1000), a.int(2 ** 40), a.normal(2, 0.5), a.nextU32()];
    const drawB = [b.normal(), b.uniform(-3, 5), b.int(1000), b.int(2 ** 40), b.normal(2, 0.5), b.nextU32()];
    expect(drawB, seedInfo(seed)).toEqual(drawA);
    expect(() => b.restore({ algorithm: 'xoshiro128**', s: [0, 0, 0, 0], spare: null })).toThrow(RangeError);
    expect(() => b.restore({ algorithm: 'pcg' as 'xoshiro128**', s: [1, 2, 3, 4], spare: null })).toThrow(TypeError);
    expect(() =>
      b.restore({ algorithm: 'xoshiro128**', s: [1, 2, 3, -4] as [number, number, number, number], spare: null }),
    ).toThrow(RangeError);
  });

  it('equal seeds give equal streams, derived seeds differ', () => {
    const seed = freshSeed();
    const a = new TrainRng(seed);
    const b = new TrainRng(seed);
    for (let i = 0; i < 100; ++i) expect(a.nextU32()).toBe(b.nextU32());
    const seeds = new Set<number>();
    for (let e = 0; e < 50; ++e) for (const tag of ['shuffle', 'sample']) seeds.add(deriveSeed(seed, tag, e));
    for (let i = 0; i < 100; ++i) seeds.add(deriveSeed(seed, 'sample', 3, i));
    expect(seeds.size, seedInfo(seed)).toBe(200);
    expect(deriveSeed(seed, 'a', 1)).toBe(deriveSeed(seed, 'a', 1));
    expect(deriveSeed(seed, 1, 2)).not.toBe(deriveSeed(seed, 2, 1));
    expect(deriveSeed(seed, 'ab')).not.toBe(deriveSeed(seed, 'a', 'b'));
    // Seeds above 2^32 are not truncated.
    expect(new TrainRng(2 ** 40 + 1).nextU32()).not.toBe(new TrainRng(1).nextU32());
  });

  it('draws have the right ranges and moments', () => {
    const seed = freshSeed();
    const r = new TrainRng(seed);
    const N = 200_000;
    let sum = 0;
    let sum2 = 0;
    let umin = 1;
    let umax = 0;
    const counts = new Array<number>(7).fill(0);
    for (let i = 0; i < N; ++i) {
      const z = r.normal();
      sum += z;
      sum2 += z * z;
      const u = r.next();
      umin = Math.min(umin, u);
      umax = Math.max(umax, u);
      counts[r.int(7)]!++;
    }
    const info = seedInfo(seed);
    // Mean and variance of N(0, 1) within ~6 standard errors.
    expect(Math.abs(sum / N), info).toBeLessThan(6 / Math.sqrt(N));
    expect(Math.abs(sum2 / N - 1), info).toBeLessThan(6 * Math.sqrt(2 / N));
    expect(umin).toBeGreaterThanOrEqual(0);
    expect(umax).toBeLessThan(1);
    // Chi-square with 6 degrees of freedom: 40 is far beyond the 0.9999 quantile (~27.9).
    const chi = counts.reduce((a, c) => a + (c - N / 7) ** 2 / (N / 7), 0);
    expect(chi, info).toBeLessThan(40);
    for (let i = 0; i < 1000; ++i) {
      const v = r.intRange(-3, 3);
      expect(v >= -3 && v <= 3 && Number.isInteger(v)).toBe(true);
      const u = r.uniform(2, 2.5);
      expect(u >= 2 && u < 2.5).toBe(true);
    }
    const p = r.permutation(1000);
    expect([...p].sort((a, b) => a - b)).toEqual(Array.from({ length: 1000 }, (_, i) => i));
    expect(() => r.int(0)).toThrow(RangeError);
    expect(() => r.int(1.5)).toThrow(TypeError);
    expect(() => new TrainRng(-1)).toThrow(RangeError);
  });
});

const DTYPE_BYTES: Record<DType, number> = { float32: 4, float16: 2, bfloat16: 2, int32: 4, int64: 8, uint8: 1 };

/** A tensor of random bits (any pattern, NaN payloads included) of `dtype`. */
function randomTensor(rng: Rng, dtype: DType, shape: number[]): { t: Tensor; bytes: Uint8Array } {
  const n = shape.reduce((a, b) => a * b, 1);
  const bytes = new Uint8Array(n * DTYPE_BYTES[dtype]);
  for (let i = 0; i < bytes.length; ++i) bytes[i] = rng.int(256);
  const buf = bytes.slice().buffer;
  const arr =
    dtype === 'float32'
      ? new Float32Array(buf)
      : dtype === 'int32'
        ? new Int32Array(buf)
        : dtype === 'int64'
          ? new BigInt64Array(buf)
          : dtype === 'uint8'
            ? new Uint8Array(buf)
            : new Uint16Array(buf);
  return { t: Tensor.from(arr, shape, { dtype }), bytes };
}

function bytesOf(t: Tensor): Uint8Array {
  const a = t.toArray();
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

function makeState(rng: Rng, step: number) {
  const tensors = new Map<string, Tensor>();
  const expected = new Map<string, { dtype: DType; shape: number[]; bytes: Uint8Array }>();
  const specs: [string, DType, number[]][] = [
    ['model.encoder.conv_in.weight', 'float32', [4, 3, 3, 3]],
    ['model.encoder.conv_in.bias', 'float32', [4]],
    ['model.half', 'float16', [5, 7]],
    ['model.bhalf', 'bfloat16', [3, 2]],
    ['opt.exp_avg.model.encoder.conv_in.weight', 'float32', [4, 3, 3, 3]],
    ['opt.step_count', 'int64', []],
    ['buffers.counts', 'int32', [11]],
    ['buffers.mask', 'uint8', [2, 9]],
    ['empty', 'float32', [0, 3]],
  ];
  for (const [name, dtype, shape] of specs) {
    const { t, bytes } = randomTensor(rng, dtype, shape);
    tensors.set(name, t);
    expected.set(name, { dtype, shape, bytes });
  }
  const meta = {
    step,
    epoch: 2,
    loader: { epoch: 2, batch: 17 },
    rng: new TrainRng(step).state(),
    lr: 1e-4,
    nested: [{ a: null, b: true, c: 'x\u00e9' }],
    neg: -0.5,
  };
  return { tensors, expected, meta };
}

describe('saveTrainingState / loadTrainingState', () => {
  it('round-trips tensors bit-exactly (every dtype, scalar and empty shapes) and the meta', async () => {
    const rng = new Rng();
    const file = path.join(freshDir(), 'ckpt.safetensors');
    const { tensors, expected, meta } = makeState(rng, 5);
    await saveTrainingState(file, { tensors, meta });
    expect(isValidTrainingState(file)).toBe(true);
    const s = await loadTrainingState(file);
    expect(s.which).toBe('latest');
    expect(s.loadedFrom).toBe(file);
    expect(s.meta).toEqual(meta);
    expect([...s.tensors.keys()].sort()).toEqual([...expected.keys()].sort());
    for (const [name, e] of expected) {
      const t = s.tensors.get(name)!;
      expect(t.dtype, name).toBe(e.dtype);
      expect(t.shape, name).toEqual(e.shape);
      expect(Buffer.from(bytesOf(t)).equals(Buffer.from(e.bytes)), `${name}, ${seedInfo(rng.seed)}`).toBe(true);
    }
    // The restored RNG state continues the same stream.
    const r = TrainRng.fromState(s.meta.rng as never);
    const ref = new TrainRng(5);
    expect(r.nextU32()).toBe(ref.nextU32());
  });

  it('keeps the previous checkpoint and falls back to it when the latest is damaged or missing', async () => {
    const rng = new Rng();
    const dir = freshDir();
    const file = path.join(dir, 'ckpt.safetensors');
    const prev = previousPath(file);
    const s1 = makeState(rng, 1);
    await saveTrainingState(file, { tensors: s1.tensors, meta: s1.meta });
    expect(fs.existsSync(prev)).toBe(false);
    const s2 = makeState(rng, 2);
    await saveTrainingState(file, { tensors: s2.tensors, meta: s2.meta });
    expect((await loadTrainingState(file)).meta.step).toBe(2);
    expect((await loadTrainingState(prev)).meta.step).toBe(1);
    const good = fs.readFileSync(file);

    // One flipped bit in the tensor data: caught by the digest.
    const flipped = Buffer.from(good);
    flipped[flipped.length - 3]! ^= 0x10;
    fs.writeFileSync(file, flipped);
    const before = fs.statSync(file);
    let s = await loadTrainingState(file);
    expect(s.which).toBe('previous');
    expect(s.loadedFrom).toBe(prev);
    expect(s.meta.step).toBe(1);
    expect(s.rejected[0]!.reason).toMatch(/SHA-256/);
    // Loading modified nothing.
    expect(fs.readFileSync(file).equals(flipped)).toBe(true);
    expect(fs.statSync(file).mtimeMs).toBe(before.mtimeMs);

    // Truncated: caught by the safetensors structure checks.
    fs.writeFileSync(file, good.subarray(0, good.length - 100));
    s = await loadTrainingState(file);
    expect(s.which).toBe('previous');
    expect(s.rejected[0]!.reason).toMatch(/truncated|beyond|covers/);

    // Not a safetensors file at all.
    fs.writeFileSync(file, Buffer.from('garbage'));
    expect((await loadTrainingState(file)).which).toBe('previous');

    // Missing latest (a crash between the two renames of a save).
    fs.rmSync(file);
    s = await loadTrainingState(file);
    expect(s.which).toBe('previous');
    expect(s.rejected[0]!.reason).toBe('missing');

    // Both bad.
    fs.writeFileSync(file, flipped);
    const prevBytes = fs.readFileSync(prev);
    fs.writeFileSync(prev, prevBytes.subarray(0, 10));
    await expect(loadTrainingState(file)).rejects.toMatchObject({ code: 'ERR_BAD_FILE' });
    fs.writeFileSync(prev, prevBytes);

    // A save over a damaged latest keeps the good .prev (the checkpoint just loaded) and moves the
    // damaged file aside instead of rotating it over .prev.
    const s3 = makeState(rng, 3);
    await saveTrainingState(file, { tensors: s3.tensors, meta: s3.meta });
    expect(fs.readFileSync(prev).equals(prevBytes)).toBe(true);
    expect(fs.readFileSync(`${file}.damaged`).equals(flipped)).toBe(true);
    expect((await loadTrainingState(file)).meta.step).toBe(3);
    // The next save rotates the (good) step-3 file into .prev.
    const s4 = makeState(rng, 4);
    await saveTrainingState(file, { tensors: s4.tensors, meta: s4.meta });
    expect((await loadTrainingState(prev)).meta.step).toBe(3);
    expect((await loadTrainingState(file)).meta.step).toBe(4);
  });

  it('re-verifies a latest file replaced by someone else before rotating it into .prev', async () => {
    const rng = new Rng();
    const file = path.join(freshDir(), 'ckpt.safetensors');
    const s1 = makeState(rng, 1);
    await saveTrainingState(file, { tensors: s1.tensors, meta: s1.meta });
    const s2 = makeState(rng, 2);
    await saveTrainingState(file, { tensors: s2.tensors, meta: s2.meta });
    const prevBytes = fs.readFileSync(previousPath(file));
    // Same size, different inode: this process's record of the file no longer applies.
    const bytes = fs.readFileSync(file);
    bytes[bytes.length - 1]! ^= 1;
    fs.rmSync(file);
    fs.writeFileSync(file, bytes);
    await saveTrainingState(file, { tensors: s2.tensors, meta: { ...s2.meta, step: 3 } });
    expect(fs.readFileSync(previousPath(file)).equals(prevBytes)).toBe(true);
    expect((await loadTrainingState(file)).meta.step).toBe(3);
  });

  it('reports a missing checkpoint, rejects bad states and writes nothing for them', async () => {
    const dir = freshDir();
    const file = path.join(dir, 'ckpt.safetensors');
    await expect(loadTrainingState(file)).rejects.toMatchObject({ code: 'ERR_NOT_FOUND' });
    await expect(loadTrainingState(file)).rejects.toBeInstanceOf(MergeVQError);
    const tensors = new Map([['w', Tensor.from([1, 2, 3])]]);
    await expect(saveTrainingState(file, { tensors, meta: { lr: NaN } })).rejects.toThrow(/state\.meta\.lr.*finite/);
    await expect(saveTrainingState(file, { tensors, meta: { f: (() => 1) as never } })).rejects.toThrow(TypeError);
    await expect(saveTrainingState(file, { tensors, meta: { d: new Date() as never } })).rejects.toThrow(TypeError);
    await expect(saveTrainingState(file, { tensors, meta: [] as never })).rejects.toThrow(TypeError);
    await expect(saveTrainingState(file, { tensors: { w: 1 } as never, meta: {} })).rejects.toThrow(TypeError);
    await expect(saveTrainingState(file, { tensors: new Map([['w', 3 as never]]), meta: {} })).rejects.toThrow(
      /state\.tensors\["w"\]/,
    );
    expect(fs.readdirSync(dir)).toEqual([]);
    // A safetensors file that is not a training state is rejected with a clear reason.
    const { writeSafetensorsSync } = await import('../lib/io/safetensors.js');
    writeSafetensorsSync(file, { w: Tensor.from([1]) });
    await expect(loadTrainingState(file)).rejects.toThrow(/not a mergevq training state/);
  });

  it('removes temporary files left by dead savers, and only those', async () => {
    const dir = freshDir();
    const file = path.join(dir, 'ckpt.safetensors');
    const dead = spawnSync(process.execPath, ['-e', '0']).pid!;
    const stale = `${file}.tmp-${dead}-abc123`;
    const live = `${file}.tmp-${process.ppid}-abc123`;
    const other = path.join(dir, 'other.safetensors.tmp-1-abc');
    for (const f of [stale, live, other]) fs.writeFileSync(f, 'partial');
    await saveTrainingState(file, { tensors: new Map([['w', Tensor.from([1])]]), meta: { step: 0 } });
    expect(fs.existsSync(stale)).toBe(false);
    expect(fs.existsSync(live)).toBe(true);
    expect(fs.existsSync(other)).toBe(true);
    expect(fs.readdirSync(dir).filter((f) => f.startsWith('ckpt.safetensors.tmp-'))).toEqual([path.basename(live)]);
  });
});
