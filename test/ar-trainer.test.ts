// AR generator training (stage 2): the code loader (sub-token split, seeded per-epoch order,
// resumable position), the trainer's loss and update path (the models' loss programs, the
// annealing, clipping, accumulation), learning a synthetic pattern, exact resume, label dropout,
// weight export and option checks.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { runSync } from '../lib/graph.js';
import { MergeARGPT, MergeVQGPT } from '../lib/generator/index.js';
import { readSafetensors } from '../lib/io/safetensors.js';
import { ARTrainer, CodeLoader, splitSubTokens, type ARTrainOptions, type ARStepLog } from '../lib/train/ar-trainer.js';
import { arLrWd } from '../lib/train/schedule.js';
import { writeCodes, type Codes } from '../lib/train/codes.js';
import { Tensor } from '../lib/tensor.js';
import { Rng, freshSeed, relErr, seedInfo } from './helpers.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mergevq-ar-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const GRID = 4;
const L = GRID * GRID;
const BITS = [3, 3];
const CLASSES = 4;
const KEEP = [4, 8, 16];
const cfg = {
  vocab_size: 64,
  block_size: L,
  spatial_n_layer: 2,
  factorized_n_layer: 1,
  n_head: 2,
  dim: 32,
  class_num: CLASSES,
  factorized_bits: BITS,
  multiple_of: 8,
};

/**
 * N sequences over a 4x4 grid: sample n has class c, offset o and keep index k; its grid is split
 * into merge groups (2x2 blocks for k = 0, 1x2 for k = 1, single cells for k = 2) and group b
 * carries code (17c + 5o + 11b) mod 64. Given the class, the [M] instruction and the first token,
 * the rest is determined, so the loss can fall far below its start.
 */
function syntheticCodes(N: number, rng: Rng, opts: { labels?: boolean } = {}): Codes {
  const indices = new BigInt64Array(N * L);
  const keepIndex = new BigInt64Array(N);
  const labels = new BigInt64Array(N);
  for (let n = 0; n < N; ++n) {
    const c = rng.int(CLASSES);
    const o = rng.int(4);
    const k = rng.int(KEEP.length);
    labels[n] = BigInt(c);
    keepIndex[n] = BigInt(k);
    for (let p = 0; p < L; ++p) {
      const r = Math.floor(p / GRID);
      const col = p % GRID;
      const b = k === 0 ? (r >> 1) * 2 + (col >> 1) : k === 1 ? r * 2 + (col >> 1) : p;
      indices[n * L + p] = BigInt((17 * c + 5 * o + 11 * b) % 64);
    }
  }
  return {
    indices,
    source: new BigInt64Array(N * L),
    keepIndex,
    labels: opts.labels === false ? null : labels,
    meta: { fullNum: L, bits: BITS[0]! + BITS[1]!, keepCandidates: [...KEEP], keepMode: 'sample', seed: 0, count: N },
  };
}

function arModel(seed: number): MergeARGPT {
  const m = new MergeARGPT(cfg, { numCandidates: KEEP.length });
  m.store.initRandom(seed);
  return m;
}

const mean = (v: number[]) => v.reduce((a, b) => a + b, 0) / v.length;
const f32 = (t: Tensor) => Array.from(t.toFloat32());
const sameBits = (a: Tensor, b: Tensor) => Buffer.from(a.toFloat32().buffer).equals(Buffer.from(b.toFloat32().buffer));

function base(model: MergeVQGPT, codes: Codes, extra: Partial<ARTrainOptions> = {}): ARTrainOptions {
  return { model, codes, batchSize: 16, learningRate: 3e-3, maxEpochs: 60, wp: 0.5, sync: true, ...extra };
}

describe('CodeLoader', () => {
  it('splits indices into pre = idx & (2^b0 - 1) and post = idx >> b0', () => {
    const rng = new Rng();
    const bits = [2 + rng.int(5), 1 + rng.int(8)];
    const vals = Array.from({ length: 200 }, () => rng.int(2 ** (bits[0]! + bits[1]!)));
    const { pre, post } = splitSubTokens(BigInt64Array.from(vals, BigInt), bits);
    vals.forEach((v, i) => {
      expect(Number(pre[i])).toBe(v % 2 ** bits[0]!);
      expect(Number(post[i])).toBe(Math.floor(v / 2 ** bits[0]!));
      expect(Number(pre[i]) + 2 ** bits[0]! * Number(post[i])).toBe(v);
    });
    expect(() => splitSubTokens(BigInt64Array.from([BigInt(2 ** (bits[0]! + bits[1]!))]), bits)).toThrow(RangeError);
  });

  it('visits every sequence once per epoch in a seeded order, and seeks to a position exactly', () => {
    const seed = freshSeed();
    const codes = syntheticCodes(40, new Rng(seed));
    const mk = (s: number) => new CodeLoader(codes, { batchSize: 8, seed: s, factorizedBits: BITS });
    const a = mk(seed % 1000);
    expect(a.batchesPerEpoch).toBe(5);
    const seen: number[][] = [[], []];
    const batches = Array.from({ length: 10 }, () => a.next());
    batches.forEach((b) => seen[b.epoch]!.push(...b.rows));
    for (const s of seen) expect([...s].sort((x, y) => x - y)).toEqual(Array.from({ length: 40 }, (_, i) => i));
    expect(seen[0]).not.toEqual(seen[1]);
    expect(batches.map((b) => b.lastInEpoch)).toEqual([
      false,
      false,
      false,
      false,
      true,
      false,
      false,
      false,
      false,
      true,
    ]);
    // contents: the rows' split codes, labels and keep indices
    const b = batches[3]!;
    const pre = b.pre.toArray<'int64'>();
    const post = b.post.toArray<'int64'>();
    b.rows.forEach((r, i) => {
      for (let p = 0; p < L; ++p) expect(pre[i * L + p]! + 8n * post[i * L + p]!).toBe(codes.indices[r * L + p]);
      expect(b.labels.toArray<'int64'>()[i]).toBe(codes.labels![r]);
      expect(b.keepIndex.toArray<'int64'>()[i]).toBe(codes.keepIndex[r]);
    });
    // a second loader seeked to a saved position gives the same batches
    const c = mk(seed % 1000);
    c.seek({ epoch: 1, batch: 2 });
    expect(Array.from(c.next().rows)).toEqual(Array.from(batches[7]!.rows));
    // another seed, another order
    expect(Array.from(mk((seed % 1000) + 1).next().rows)).not.toEqual(Array.from(batches[0]!.rows));
    expect(() => new CodeLoader(codes, { batchSize: 8, factorizedBits: [3, 4] })).toThrow(/factorizedBits/);
  });
});

describe('ARTrainer', () => {
  it('learns a synthetic pattern: the loss falls well below its start', async () => {
    const seed = freshSeed();
    const rng = new Rng(seed);
    const codes = syntheticCodes(64, rng);
    const t = new ARTrainer(base(arModel(seed % 100000), codes, { seed: seed % 1000, maxEpochs: 40 }));
    const logs = await t.fit({ steps: 160 });
    expect(logs.length, seedInfo(seed)).toBe(160);
    const losses = logs.map((l) => l.loss);
    expect(losses.every(Number.isFinite)).toBe(true);
    const first = mean(losses.slice(0, 5));
    const last = mean(losses.slice(-10));
    // the start is about ln 8 + ln 8 (uniform sub-tokens)
    expect(first, seedInfo(seed)).toBeGreaterThan(3.5);
    expect(last, `${seedInfo(seed)}: first ${first}, last ${last}`).toBeLessThan(0.5 * first);
    for (const l of logs) expect(l.lossPre + l.lossPost).toBeCloseTo(l.loss, 5);
  }, 60000);

  it('uses the MergeAR loss with the keep index as [M], and the plain loss for a MergeVQGPT', async () => {
    const seed = freshSeed();
    const codes = syntheticCodes(32, new Rng(seed));
    const m = arModel(seed % 100000);
    const t = new ARTrainer(base(m, codes, { labelDropout: 0, seed: 3 }));
    const probe = new CodeLoader(codes, { batchSize: 16, seed: 3, factorizedBits: BITS });
    const b = probe.next();
    const expected = runSync(m.lossAR(b.pre, b.post, b.labels, b.keepIndex)).loss.item();
    const other = runSync(
      m.lossAR(
        b.pre,
        b.post,
        b.labels,
        Tensor.from(
          b.keepIndex.toArray<'int64'>().map((k) => (k + 1n) % 3n),
          [16],
        ),
      ),
    ).loss.item();
    expect(other).not.toBe(expected);
    const [log] = await t.fit({ steps: 1 });
    expect(log!.loss, seedInfo(seed)).toBe(expected);

    const g = new MergeVQGPT(cfg);
    g.store.initRandom(seed % 100000);
    const tg = new ARTrainer(base(g, codes, { labelDropout: 0, seed: 3 }));
    expect(tg.mergeAR).toBe(false);
    const plain = runSync(g.loss(b.pre, b.post, b.labels)).loss.item();
    const [lg] = await tg.fit({ steps: 1 });
    expect(lg!.loss).toBe(plain);
  });

  it('sets the annealed lr and weight decay on every group, clips to norm 1 by default', async () => {
    const seed = freshSeed();
    const codes = syntheticCodes(32, new Rng(seed));
    const t = new ARTrainer(
      base(arModel(seed % 100000), codes, { maxEpochs: 3, wp: 1, learningRate: 1e-3, weightDecay: 0.05, wpe: 0.1 }),
    );
    expect(t.annealConfig.itersTrain).toBe(2);
    const logs = await t.fit({ steps: 100 });
    expect(logs.length).toBe(6); // stops after maxEpochs
    expect(t.finished).toBe(true);
    logs.forEach((l, i) => {
      const want = arLrWd(i, t.annealConfig);
      expect(l.step).toBe(i);
      expect(l.lr).toBe(want.lr);
      expect(l.weightDecay).toBe(want.weightDecay);
      expect(l.stepped).toBe(true);
      expect(l.gradNorm).toBeGreaterThan(0);
    });
    for (const g of t.optimizer.groups) {
      expect(g.lr).toBe(arLrWd(5, t.annealConfig).lr);
      expect(g.weightDecay).toBe(arLrWd(5, t.annealConfig).weightDecay);
    }
    // two groups: matrices decay, the norm weights do not (until the annealing sets both)
    expect(t.optimizer.groups[0]!.names).toContain('pre_emb.weight');
    expect(t.optimizer.groups[1]!.names).toContain('norm.weight');
    const noClip = new ARTrainer(base(arModel(1), codes, { gradientClip: null }));
    expect((await noClip.fit({ steps: 1 }))[0]!.gradNorm).toBeNull();
  });

  it('accumulation: two micro-batches of 8 make one step like one batch of 16', async () => {
    const seed = freshSeed();
    const codes = syntheticCodes(32, new Rng(seed));
    // copies: the optimizer updates the parameter tensors in place
    const init = new Map(
      [...arModel(seed % 100000).store.stateDict()].map(([n, t]) => [n, Tensor.from(t.toFloat32().slice(), t.shape)]),
    );
    const mk = (bs: number, acc: number) => {
      const m = arModel(0);
      m.store.load(new Map([...init].map(([n, t]) => [n, Tensor.from(t.toFloat32().slice(), t.shape)])), {
        strict: true,
      });
      return new ARTrainer(
        base(m, codes, { batchSize: bs, accumulate: acc, labelDropout: 0, seed: 5, learningRate: 1e-3 }),
      );
    };
    const a = mk(8, 2);
    const b = mk(16, 1);
    const la = await a.fit({ steps: 2 });
    const lb = await b.fit({ steps: 1 });
    expect(la.map((l) => l.stepped)).toEqual([false, true]);
    expect(a.globalStep).toBe(1);
    expect(mean(la.map((l) => l.loss))).toBeCloseTo(lb[0]!.loss, 5);
    expect(relErr([la[1]!.gradNorm!], [lb[0]!.gradNorm!])).toBeLessThan(1e-5);
    for (const n of a.model.store.names()) {
      const d0 = f32(init.get(n)!);
      const da = f32(a.model.store.get(n)).map((v, i) => v - d0[i]!);
      const db = f32(b.model.store.get(n)).map((v, i) => v - d0[i]!);
      expect(
        da.some((v) => v !== 0),
        n,
      ).toBe(true);
      // Adam's first update is lr * g / (|g| + eps): gradients equal up to rounding give equal updates
      // except where |g| is near eps
      expect(relErr(da, db), `${n} ${seedInfo(seed)}`).toBeLessThan(1e-4);
    }
    await expect(a.fit({ steps: 1 }).then(() => a.save(path.join(tmp, 'busy.state')))).rejects.toMatchObject({
      code: 'ERR_BUSY',
    });
    // an epoch's last batch ends an accumulation: 3 batches per epoch, accumulate 2
    const odd = new ARTrainer(base(arModel(2), syntheticCodes(24, new Rng(seed)), { batchSize: 8, accumulate: 2 }));
    const lo = await odd.fit({ steps: 6 });
    expect(lo.map((l) => l.stepped)).toEqual([false, true, true, false, true, true]);
    expect(lo.map((l) => l.step)).toEqual([0, 0, 1, 2, 2, 3]);
  });

  it('resumes exactly: k steps, save, a fresh trainer resumes -> the same losses and weights bit for bit', async () => {
    const seed = freshSeed();
    const codes = syntheticCodes(48, new Rng(seed));
    const file = path.join(tmp, 'codes.safetensors');
    await writeCodes(file, codes);
    const opts = (m: MergeVQGPT) => ({
      ...base(m, codes),
      batchSize: 8,
      seed: seed % 1000,
      accumulate: 2,
      labelDropout: 0.3,
      useEma: true,
      emaDecay: 0.9,
      sync: false,
    });
    const N = 14;
    const k = 8; // an optimizer-step boundary (accumulate 2), inside the second epoch (6 batches per epoch)
    const full = await ARTrainer.create({ ...opts(arModel(seed % 100000)), codes: file });
    const ref = await full.fit({ steps: N });

    const first = new ARTrainer(opts(arModel(seed % 100000)));
    const head = await first.fit({ steps: k });
    const state = path.join(tmp, 'ar.state');
    await first.save(state);
    const resumed = new ARTrainer(opts(arModel((seed + 1) % 100000)));
    const info = await resumed.resume(state);
    expect(info.which).toBe('latest');
    expect(resumed.globalStep).toBe(k / 2);
    const tail = await resumed.fit({ steps: N - k });
    const strip = (l: ARStepLog) => ({ ...l, ms: 0 });
    expect([...head, ...tail].map(strip), seedInfo(seed)).toEqual(ref.map(strip));
    expect(ref.some((l) => l.dropped > 0)).toBe(true);
    for (const n of full.model.store.names()) {
      expect(sameBits(resumed.model.store.get(n), full.model.store.get(n)), n).toBe(true);
      expect(sameBits(resumed.ema!.shadow(n), full.ema!.shadow(n)), `ema ${n}`).toBe(true);
    }
    const so = full.optimizer.stateDict();
    const sr = resumed.optimizer.stateDict();
    expect(sr.meta).toEqual(so.meta);
    for (const [n, t] of so.tensors) expect(sameBits(sr.tensors.get(n)!, t), n).toBe(true);

    // a trainer with other loader settings refuses the state
    const other = new ARTrainer({ ...opts(arModel(1)), batchSize: 16 });
    await expect(other.resume(state)).rejects.toMatchObject({ code: 'ERR_STATE_MISMATCH' });
  }, 60000);

  it('label dropout: the rate, determinism from the seed, and the null class', async () => {
    const seed = freshSeed();
    const codes = syntheticCodes(32, new Rng(seed));
    const p = 0.3;
    const run = async (s: number, steps: number, extra: Partial<ARTrainOptions> = {}) => {
      const t = new ARTrainer(base(arModel(7), codes, { seed: s, labelDropout: p, learningRate: 1e-4, ...extra }));
      return t.fit({ steps });
    };
    const a = await run(seed % 1000, 40);
    const drops = a.reduce((s, l) => s + l.dropped, 0);
    const n = 40 * 16;
    const sd = Math.sqrt(n * p * (1 - p));
    expect(Math.abs(drops - n * p), `${drops} of ${n} dropped, ${seedInfo(seed)}`).toBeLessThan(4.5 * sd);
    const again = await run(seed % 1000, 10);
    expect(again.map((l) => [l.dropped, l.loss])).toEqual(a.slice(0, 10).map((l) => [l.dropped, l.loss]));
    const other = await run((seed % 1000) + 1, 10);
    expect(other.map((l) => l.dropped)).not.toEqual(a.slice(0, 10).map((l) => l.dropped));
    expect((await run(seed % 1000, 3, { labelDropout: 0 })).every((l) => l.dropped === 0)).toBe(true);
    // every label dropped = training on the null class (as unlabeled codes are)
    const all = await run(seed % 1000, 3, { labelDropout: 1 });
    expect(all.every((l) => l.dropped === 16)).toBe(true);
    const unlabeled = await run(seed % 1000, 3, { labelDropout: 0, codes: { ...codes, labels: null } });
    expect(unlabeled.map((l) => l.loss)).toEqual(all.map((l) => l.loss));
  }, 30000);

  it('exports the weights with the reference names (EMA by default), loadable by the model', async () => {
    const codes = syntheticCodes(32, new Rng());
    const t = new ARTrainer(base(arModel(3), codes, { useEma: true, emaDecay: 0.5 }));
    await t.fit({ steps: 4 });
    const file = path.join(tmp, 'gpt.safetensors');
    await t.exportWeights(file);
    const f = await readSafetensors(file);
    const names = t.model.store.names();
    expect([...f.names].sort()).toEqual([...names].sort());
    expect(names.some((n) => n.startsWith('transformer.'))).toBe(false);
    expect(names).toContain('merge_emb.weight');
    const meta = JSON.parse(f.metadata.mergevq!);
    expect(meta).toMatchObject({ kind: 'mergear-gpt', numCandidates: 3, step: 4, ema: true, keepCandidates: KEEP });
    const m = new MergeARGPT(meta.config, { numCandidates: meta.numCandidates });
    const w = new Map(names.map((n) => [n, f.tensor(n)]));
    m.loadWeights(w, { strict: true });
    for (const n of names) expect(sameBits(m.store.get(n), t.ema!.shadow(n)), n).toBe(true);
    f.close();
    expect(names.some((n) => !sameBits(t.ema!.shadow(n), t.model.store.get(n)))).toBe(true);
    await t.exportWeights(file, { ema: false });
    const live = await readSafetensors(file);
    for (const n of names) expect(sameBits(live.tensor(n), t.model.store.get(n)), n).toBe(true);
    live.close();
  });

  it('rejects unknown options and bad values with errors naming them', () => {
    const codes = syntheticCodes(32, new Rng());
    const m = arModel(1);
    expect(() => new ARTrainer({ ...base(m, codes), lerningRate: 1 } as unknown as ARTrainOptions)).toThrow(RangeError);
    expect(() => new ARTrainer({ ...base(m, codes), lerningRate: 1 } as unknown as ARTrainOptions)).toThrow(
      /lerningRate/,
    );
    expect(() => new ARTrainer(base(m, codes, { labelDropout: 1.5 }))).toThrow(/labelDropout/);
    expect(() => new ARTrainer(base(m, codes, { accumulate: 0 }))).toThrow(/accumulate/);
    expect(() => new ARTrainer(base(m, codes, { maxEpochs: 1, wp: 1 }))).toThrow(/maxEpochs/);
    expect(() => new ARTrainer(base(m, codes, { batchSize: 64 }))).toThrow(/batchSize/);
    const wrongLen = new MergeARGPT({ ...cfg, block_size: 64 }, { numCandidates: 3 });
    wrongLen.store.initRandom(1);
    expect(() => new ARTrainer(base(wrongLen, codes))).toThrow(/fullNum/);
    const wrongBits = new MergeARGPT({ ...cfg, factorized_bits: [2, 3] }, { numCandidates: 3 });
    wrongBits.store.initRandom(1);
    expect(() => new ARTrainer(base(wrongBits, codes))).toThrow(/factorizedBits/);
    const wrongCands = new MergeARGPT(cfg, { numCandidates: 4 });
    wrongCands.store.initRandom(1);
    expect(() => new ARTrainer(base(wrongCands, codes))).toThrow(/keepCandidates/);
    const badLabels = { ...codes, labels: codes.labels!.map((l, i) => (i === 5 ? 4n : l)) };
    expect(() => new ARTrainer(base(m, badLabels))).toThrow(/labels\[5\]/);
    expect(() => new ARTrainer(base(new MergeARGPT(cfg, { numCandidates: 3 }), codes))).toThrow(/not loaded/);
  });
});
