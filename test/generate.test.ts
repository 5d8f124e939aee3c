// Class-conditional generation end to end (generateImages) on a tiny random tokenizer and generator:
// shapes and index ranges, async = sync bit for bit, seeded, progress and abort between tokens, the
// decoded images equal a decode of the returned indices, MergeAR's KV-cache accounting against a
// replay of the same tokens, the plain GPT path, and argument errors. Plus the image helpers and
// the stored pixel classifier.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { generateImages, generateImagesSync } from '../lib/generator/images.js';
import { MergeVQGPT } from '../lib/generator/gpt.js';
import { MergeARGPT, codeGroups, maskVisibleKeys } from '../lib/generator/mergear.js';
import { MergeVQTokenizer } from '../lib/tokenizer/tokenizer.js';
import { Tensor } from '../lib/tensor.js';
import { sourceMapTensor, upscaleNearest } from '../lib/io/image.js';
import { linearProbeFromArrays, trainLinearProbe } from '../lib/eval/probe.js';
import { loadPixelClassifier, savePixelClassifier } from '../lib/eval/generation.js';
import { Rng, seedInfo, tinyGRArgs } from './helpers.js';

const TOK = tinyGRArgs();
const GPT = {
  vocab_size: 256,
  block_size: 16,
  spatial_n_layer: 2,
  factorized_n_layer: 1,
  n_head: 2,
  dim: 32,
  class_num: 4,
  factorized_bits: [3, 5],
  multiple_of: 8,
};

function models(seed: number) {
  const tok = MergeVQTokenizer.fromConfig(TOK);
  tok.store.initRandom(seed);
  const gen = new MergeARGPT(GPT, { numCandidates: tok.candidates.keep.length });
  gen.store.initRandom(seed + 1);
  return { tok, gen };
}

const ints = (t: Tensor) => Array.from(t.toArray<'int64'>(), Number);

describe('generateImages', () => {
  it('samples full grids, decodes them, async = sync, seeded, reports progress', async () => {
    const rng = new Rng();
    const { tok, gen } = models(rng.int(1000));
    const classes = [0, 3, 1, 2, 4];
    const steps: number[] = [];
    const opts = { classes, seed: rng.int(1 << 30), cfgScale: 1.5, topK: 20, temperature: 1.2 };
    const a = await generateImages(tok, gen, { ...opts, onStep: (d, t) => steps.push(d * 100 + t) });
    expect(steps, seedInfo(rng.seed)).toEqual(Array.from({ length: 16 }, (_, i) => (i + 1) * 100 + 16));
    expect(a.images.shape).toEqual([5, 1, 16, 16]);
    expect(a.indices.shape).toEqual([5, 16]);
    for (const v of ints(a.indices)) expect(v >= 0 && v < 256).toBe(true);
    expect(a.keep).toBe(tok.defaultKeep);
    const b = generateImagesSync(tok, gen, opts);
    expect(ints(b.indices)).toEqual(ints(a.indices));
    expect(Array.from(b.images.toFloat32())).toEqual(Array.from(a.images.toFloat32()));
    // the images are the decoder's output for the returned indices on the identity source
    const ident = Tensor.from(
      BigInt64Array.from({ length: 5 * 16 }, (_, i) => BigInt(i % 16)),
      [5, 16],
    );
    const dec = await tok.decode({ indices: a.indices, source: ident });
    expect(Array.from(dec.images.toFloat32())).toEqual(Array.from(a.images.toFloat32()));
    const c = await generateImages(tok, gen, { ...opts, seed: opts.seed + 1 });
    expect(ints(c.indices)).not.toEqual(ints(a.indices));
  });

  it("measures MergeAR's live KV rows; mergear false decodes with the full cache", async () => {
    const rng = new Rng();
    const { tok, gen } = models(rng.int(1000));
    // one row per call: the live-row count is that row's own
    for (const keep of tok.candidates.keep) {
      const g = await generateImages(tok, gen, { classes: [rng.int(4)], keep, seed: rng.int(1 << 30), topK: 3 });
      const idx = ints(g.indices);
      const pre = Tensor.from(
        BigInt64Array.from(idx, (v) => BigInt(v & 7)),
        [1, 16],
      );
      const post = Tensor.from(
        BigInt64Array.from(idx, (v) => BigInt(v >> 3)),
        [1, 16],
      );
      const { first } = codeGroups(pre, post, 1, 16);
      // after the last input (token 14 at position 16) the live rows are those a next query (position
      // 17) could still see: the prefix, first occurrences and the recent window
      const live = maskVisibleKeys(17, 2, first, gen.window).filter((s) => s <= 16).length;
      expect(g.kv, seedInfo(rng.seed)).not.toBeNull();
      expect(g.kv!.fullRows).toBe(17);
      expect(g.kv!.rows, seedInfo(rng.seed)).toBe(live);
      expect(g.kv!.ratio).toBeCloseTo(g.kv!.rows / 17, 12);
    }
    const full = await generateImages(tok, gen, { classes: [1, 2], mergear: false, seed: 3 });
    expect(full.kv).toBeNull();
    expect(full.keep).toBe(tok.defaultKeep);
  });

  it('stops between tokens on an aborted signal', async () => {
    const { tok, gen } = models(5);
    const pre = new AbortController();
    pre.abort(new Error('stop now'));
    await expect(generateImages(tok, gen, { classes: [0], signal: pre.signal })).rejects.toThrow('stop now');
    const ac = new AbortController();
    let seen = 0;
    const p = generateImages(tok, gen, {
      classes: [0, 1],
      signal: ac.signal,
      onStep: (d) => ((seen = d), d === 3 && ac.abort(new Error('at 3'))),
    });
    await expect(p).rejects.toThrow('at 3');
    expect(seen).toBe(3);
  });

  it('runs the plain GPT (no keep instruction, no KV accounting)', async () => {
    const tok = MergeVQTokenizer.fromConfig(TOK);
    tok.store.initRandom(2);
    const gen = new MergeVQGPT(GPT);
    gen.store.initRandom(3);
    const g = await generateImages(tok, gen, { classes: [0, 1, 4], seed: 1 });
    expect(g.keep).toBeNull();
    expect(g.kv).toBeNull();
    expect(g.indices.shape).toEqual([3, 16]);
    await expect(generateImages(tok, gen, { classes: [0], keep: tok.defaultKeep })).rejects.toThrow(/MergeAR/);
  });

  it('rejects bad arguments by name before sampling', async () => {
    const { tok, gen } = models(1);
    await expect(generateImages(tok, gen, { classes: [] })).rejects.toThrow(TypeError);
    await expect(generateImages(tok, gen, { classes: [5] })).rejects.toThrow(/opts\.classes\[0\]/);
    await expect(generateImages(tok, gen, { classes: [1.5] })).rejects.toThrow(/opts\.classes\[0\]/);
    await expect(generateImages(tok, gen, { classes: [0], keep: 7 })).rejects.toThrow(/keep candidates/);
    await expect(generateImages({} as MergeVQTokenizer, gen, { classes: [0] })).rejects.toThrow(/tokenizer/);
    const other = new MergeARGPT({ ...GPT, block_size: 64 }, { numCandidates: 3 });
    other.store.initRandom(0);
    await expect(generateImages(tok, other, { classes: [0] })).rejects.toThrow(/block_size 64/);
    // a misspelt option is an error naming it, not silently ignored
    await expect(generateImages(tok, gen, { classes: [0], sead: 3 } as never)).rejects.toThrow(
      /unknown option 'sead'.*known: classes, keep, mergear/,
    );
    await expect(generateImages(tok, gen, { classes: [0], topk: 3 } as never)).rejects.toThrow(/unknown option 'topk'/);
    const x = Tensor.from(new Float32Array(16 * 16), [1, 1, 16, 16]);
    expect(() => tok.encodeSync(x, { kepp: 9 } as never)).toThrow(
      /encode options: unknown option 'kepp' \(known: keep\)/,
    );
    expect(() => tok.reconstructSync(x, { keep: 9, sorce: 'learned' } as never)).toThrow(/unknown option 'sorce'/);
    const enc = tok.encodeSync(x);
    expect(() => tok.decodeSync({ indices: enc.indices, source: enc.source, keep: 9 } as never)).toThrow(
      /decode input: unknown option 'keep'/,
    );
    const bits = new MergeARGPT({ ...GPT, factorized_bits: [4, 5], vocab_size: 512 }, { numCandidates: 3 });
    bits.store.initRandom(0);
    await expect(generateImages(tok, bits, { classes: [0] })).rejects.toThrow(/factorized_bits/);
  });
});

describe('image helpers', () => {
  it('upscaleNearest repeats every pixel factor x factor times', () => {
    const rng = new Rng();
    const x = rng.tensor([2, 3, 4, 5]);
    const y = upscaleNearest(x, 3);
    expect(y.shape).toEqual([2, 3, 12, 15]);
    const a = x.toFloat32();
    const b = y.toFloat32();
    for (let bc = 0; bc < 6; ++bc)
      for (let i = 0; i < 12; ++i)
        for (let j = 0; j < 15; ++j)
          expect(b[(bc * 12 + i) * 15 + j]).toBe(a[(bc * 4 + Math.floor(i / 3)) * 5 + Math.floor(j / 3)]);
    expect(() => upscaleNearest(x, 0)).toThrow(RangeError);
    expect(() => upscaleNearest(Tensor.from(new Float32Array(4), [4]), 2)).toThrow(TypeError);
  });
  it('sourceMapTensor paints cells of one group alike and draws group borders', () => {
    const img = Tensor.from(new Float32Array(2 * 1 * 8 * 8).fill(0), [2, 1, 8, 8]);
    // 2x2 grid: image 0 has all four cells in one group, image 1 four groups
    const src = Tensor.from(BigInt64Array.from([0, 0, 0, 0, 0, 1, 2, 3].map(BigInt)), [2, 4]);
    const t = sourceMapTensor(img, src).toFloat32();
    const px = (b: number, c: number, y: number, x: number) => t[((b * 3 + c) * 8 + y) * 8 + x]!;
    for (let c = 0; c < 3; ++c) expect(px(0, c, 1, 1)).toBe(px(0, c, 6, 6));
    const white = [0, 1, 2].every((c) => px(1, c, 4, 1) === 1);
    expect(white).toBe(true);
    expect([0, 1, 2].every((c) => px(0, c, 4, 1) === 1)).toBe(false);
    expect(() => sourceMapTensor(img, Tensor.from(BigInt64Array.from([0n, 0n, 0n]), [1, 3]))).toThrow(TypeError);
  });
});

describe('stored pixel classifier', () => {
  it('round-trips through safetensors and predicts like the trained probe', async () => {
    const rng = new Rng();
    const N = 200;
    const D = 6;
    const x = new Float32Array(N * D);
    const y = Array.from({ length: N }, (_, i) => i % 3);
    for (let i = 0; i < N; ++i) for (let j = 0; j < D; ++j) x[i * D + j] = rng.normal() + (j === y[i]! ? 4 : 0);
    const probe = trainLinearProbe(x, y, { classes: 3, epochs: 5 });
    const path = join(mkdtempSync(join(tmpdir(), 'mvq-judge-')), 'judge.safetensors');
    await savePixelClassifier(path, { probe, trainSamples: N, testSamples: 0, testAccuracy: 0.5 });
    const back = await loadPixelClassifier(path);
    expect(Array.from(back.probe.predict(x))).toEqual(Array.from(probe.predict(x)));
    expect(back).toMatchObject({ trainSamples: N, testAccuracy: 0.5 });
    expect(() =>
      linearProbeFromArrays({
        dim: 2,
        classes: 2,
        mean: new Float32Array(2),
        std: new Float32Array([1, 0]),
        weight: new Float32Array(4),
        bias: new Float32Array(2),
      }),
    ).toThrow(/std/);
    expect(() =>
      linearProbeFromArrays({
        dim: 2,
        classes: 2,
        mean: new Float32Array(3),
        std: new Float32Array([1, 1]),
        weight: new Float32Array(4),
        bias: new Float32Array(2),
      }),
    ).toThrow(/p\.mean/);
  });
});
