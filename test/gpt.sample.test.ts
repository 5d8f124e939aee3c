// Sampler pieces of the AR generator: KV-cached decoding equals the teacher-forced forward,
// top-k / top-p filtering against a float64 reference of torch's top_k_top_p_filtering,
// classifier-free guidance arithmetic, seeded reproducibility, argument errors.
import { describe, expect, it } from 'vitest';
import { runSync } from '../lib/graph.js';
import { MergeVQGPT, SeededRandom, generateSync, guideLogits, sampleRow } from '../lib/generator/index.js';
import { Tensor } from '../lib/tensor.js';
import { Rng, relErr, seedInfo } from './helpers.js';

const tiny = {
  vocab_size: 512,
  block_size: 9,
  spatial_n_layer: 2,
  factorized_n_layer: 2,
  n_head: 2,
  dim: 16,
  class_num: 5,
  factorized_bits: [3, 6],
  multiple_of: 8,
};

function randomModel(seed: number): MergeVQGPT {
  const m = new MergeVQGPT(tiny);
  m.store.initRandom(seed);
  // Non-zero heads (the reference zero-initializes them) so logits carry signal.
  for (const name of ['head.0.weight', 'head.1.weight']) {
    const t = m.store.get(name);
    const a = new Float32Array(t.numel);
    const r = new Rng();
    for (let i = 0; i < a.length; ++i) a[i] = r.normal() * 0.5;
    m.store.set(name, Tensor.from(a, t.shape));
  }
  return m;
}

/** torch top_k_top_p_filtering + softmax, in float64: the kept-token distribution. */
function refDistribution(logits: Float32Array, T: number, k: number, p: number): Float64Array {
  const V = logits.length;
  const x = Array.from(logits, (v) => Math.fround(v / T));
  const keep = new Array<boolean>(V).fill(true);
  if (k > 0) {
    const kth = [...x].sort((a, b) => b - a)[Math.min(k, V) - 1]!;
    for (let i = 0; i < V; ++i) if (x[i]! < kth) keep[i] = false;
  }
  if (p < 1) {
    const xs = x.map((v, i) => (keep[i] ? v : -Infinity));
    const order = xs.map((_, i) => i).sort((a, b) => xs[b]! - xs[a]! || a - b);
    const m = xs[order[0]!]!;
    const z = xs.reduce((s, v) => s + Math.exp(v - m), 0);
    let cum = 0;
    const remove = order.map((i) => {
      cum += Math.exp(xs[i]! - m) / z;
      return cum > p;
    });
    for (let r = order.length - 1; r >= 1; --r) remove[r] = remove[r - 1]!;
    remove[0] = false;
    order.forEach((i, r) => {
      if (remove[r]) keep[i] = false;
    });
  }
  const m = Math.max(...x.filter((_, i) => keep[i]));
  const out = new Float64Array(V);
  let z = 0;
  for (let i = 0; i < V; ++i) if (keep[i]) z += out[i] = Math.exp(x[i]! - m);
  for (let i = 0; i < V; ++i) out[i]! /= z;
  return out;
}

describe('KV-cached decoding', () => {
  it('spatial + factorized caches reproduce the teacher-forced logits at every position', () => {
    const rng = new Rng();
    const m = randomModel(rng.int(1000));
    const B = 3;
    const L = tiny.block_size;
    const [V0, V1] = m.subVocab;
    const pre = Tensor.from(
      BigInt64Array.from({ length: B * L }, () => BigInt(rng.int(V0))),
      [B, L],
    );
    const post = Tensor.from(
      BigInt64Array.from({ length: B * L }, () => BigInt(rng.int(V1))),
      [B, L],
    );
    const labels = Tensor.from(
      BigInt64Array.from({ length: B }, () => BigInt(rng.int(tiny.class_num + 1))),
      [B],
    );
    const ref = runSync(m.forward(pre, post, labels));
    const refPre = ref.pre.toFloat32();
    const refPost = ref.post.toFloat32();
    const pa = pre.toArray<'int64'>();
    const qa = post.toArray<'int64'>();
    const caches = m.newSpatialCaches(B, L);
    const fc = m.newFactorizedCaches(B);
    const gotPre = new Float32Array(B * L * V0);
    const gotPost = new Float32Array(B * L * V1);
    for (let n = 0; n < L; ++n) {
      const col = (a: BigInt64Array) =>
        Tensor.from(
          BigInt64Array.from({ length: B }, (_, b) => a[b * L + n - (n > 0 ? 1 : 0)]!),
          [B, 1],
        );
      const x = runSync(n === 0 ? m.classEmbedding(labels) : m.tokenEmbedding(col(pa), col(qa)));
      const h = runSync(m.spatialStep(x, caches, n));
      const l0 = runSync(m.subTokenStep(h, fc, 0)).toFloat32();
      const cur = Tensor.from(
        BigInt64Array.from({ length: B }, (_, b) => pa[b * L + n]!),
        [B, 1],
      );
      const l1 = runSync(m.subTokenStep(runSync(m.preEmbedding(cur)), fc, 1)).toFloat32();
      for (let b = 0; b < B; ++b) {
        gotPre.set(l0.subarray(b * V0, (b + 1) * V0), (b * L + n) * V0);
        gotPost.set(l1.subarray(b * V1, (b + 1) * V1), (b * L + n) * V1);
      }
    }
    expect(relErr(gotPre, refPre), seedInfo(rng.seed)).toBeLessThan(1e-5);
    expect(relErr(gotPost, refPost), seedInfo(rng.seed)).toBeLessThan(1e-5);
  });

  it('a seed reproduces a stochastic sample; cfg 1.0 equals no guidance; other seeds differ', () => {
    const m = randomModel(7);
    const labels = Tensor.from(BigInt64Array.from([0n, 3n]), [2]);
    const opts = { temperature: 1.3, topK: [0, 40] as [number, number], topP: 0.95, seed: 11 };
    const a = generateSync(m, labels, opts);
    const b = generateSync(m, labels, opts);
    expect(Array.from(a.pre.toArray<'int64'>())).toEqual(Array.from(b.pre.toArray<'int64'>()));
    expect(Array.from(a.post.toArray<'int64'>())).toEqual(Array.from(b.post.toArray<'int64'>()));
    const c = generateSync(m, labels, { ...opts, cfgScale: 1.0 });
    expect(Array.from(c.post.toArray<'int64'>())).toEqual(Array.from(a.post.toArray<'int64'>()));
    const d = generateSync(m, labels, { ...opts, seed: 12 });
    expect(Array.from(d.post.toArray<'int64'>())).not.toEqual(Array.from(a.post.toArray<'int64'>()));
    expect(a.pre.shape).toEqual([2, tiny.block_size]);
  });

  it('rejects bad arguments, naming them', () => {
    const m = randomModel(1);
    const labels = Tensor.from(BigInt64Array.from([0n]), [1]);
    expect(() => generateSync(m, labels, { steps: tiny.block_size + 1 })).toThrow(/steps/);
    expect(() => generateSync(m, Tensor.from(BigInt64Array.from([9n]), [1]))).toThrow(/labels/);
    expect(() => generateSync(m, labels, { temperature: 0 })).toThrow(/temperature/);
    expect(() => generateSync(m, labels, { topP: 0 })).toThrow(/topP/);
    expect(() => generateSync(m, labels, { topK: [1, 2, 3] as unknown as [number, number] })).toThrow(/topK/);
    expect(() => generateSync(m, labels, { cfgScale: NaN })).toThrow(/cfgScale/);
  });
});

describe('sampleRow', () => {
  for (const [k, p, T] of [
    [0, 1, 1],
    [1, 1, 1],
    [5, 1, 0.7],
    [0, 0.6, 1],
    [7, 0.8, 1.5],
    [0, 0.05, 1],
  ] as const) {
    it(`top_k ${k}, top_p ${p}, temperature ${T}: empirical frequencies follow the filtered distribution`, () => {
      const rng = new Rng();
      const V = 33;
      const logits = Float32Array.from({ length: V }, () => rng.normal() * 2);
      const want = refDistribution(logits, T, k, p);
      const sr = new SeededRandom(rng.int(1 << 30));
      const n = 20000;
      const counts = new Float64Array(V);
      for (let i = 0; i < n; ++i) counts[sampleRow(logits, T, k, p, sr)]! += 1;
      for (let i = 0; i < V; ++i) {
        if (want[i] === 0) expect(counts[i], `token ${i} must be filtered; ${seedInfo(rng.seed)}`).toBe(0);
        else
          expect(Math.abs(counts[i]! / n - want[i]!), `token ${i}; ${seedInfo(rng.seed)}`).toBeLessThan(
            5 * Math.sqrt(want[i]! / n) + 1e-3,
          );
      }
    });
  }
  it('top_k 1 is the argmax', () => {
    const rng = new Rng();
    const logits = Float32Array.from({ length: 257 }, () => rng.normal());
    let arg = 0;
    for (let i = 1; i < logits.length; ++i) if (logits[i]! > logits[arg]!) arg = i;
    const sr = new SeededRandom(3);
    for (let t = 0; t < 20; ++t) expect(sampleRow(logits, 1, 1, 1, sr)).toBe(arg);
  });
});

describe('guideLogits', () => {
  it('u + s (c - u) in float32 per element; s = 1 returns c exactly when c - u is exact', () => {
    const rng = new Rng();
    const B = 2;
    const V = 7;
    const l = Float32Array.from({ length: 2 * B * V }, () => (rng.int(129) - 64) / 8);
    const one = guideLogits(l, B, V, 1);
    expect(Array.from(one)).toEqual(Array.from(l.subarray(0, B * V)));
    const two = guideLogits(l, B, V, 2.5);
    for (let i = 0; i < B * V; ++i) expect(two[i]).toBeCloseTo(l[B * V + i]! + 2.5 * (l[i]! - l[B * V + i]!), 5);
  });
});

describe('dropLabels', () => {
  it('replaces labels by the null class at the requested rate, reproducibly', () => {
    const m = new MergeVQGPT(tiny);
    const n = 20000;
    const labels = Tensor.from(
      BigInt64Array.from({ length: n }, (_, i) => BigInt(i % tiny.class_num)),
      [n],
    );
    const a = Array.from(
      m
        .dropLabels(
          labels,
          (() => {
            const r = new SeededRandom(5);
            return () => r.next();
          })(),
        )
        .toArray<'int64'>(),
      Number,
    );
    const b = Array.from(
      m
        .dropLabels(
          labels,
          (() => {
            const r = new SeededRandom(5);
            return () => r.next();
          })(),
        )
        .toArray<'int64'>(),
      Number,
    );
    expect(a).toEqual(b);
    const dropped = a.filter((l) => l === tiny.class_num).length;
    expect(Math.abs(dropped / n - 0.1)).toBeLessThan(0.01);
    a.forEach((l, i) => expect(l === tiny.class_num || l === i % tiny.class_num).toBe(true));
    expect(Array.from(m.dropLabels(labels, () => 0.5, 0).toArray<'int64'>(), Number)).toEqual(
      Array.from({ length: n }, (_, i) => i % tiny.class_num),
    );
    expect(() => m.dropLabels(labels, () => 0.5, 2)).toThrow(/p must/);
  });
});
