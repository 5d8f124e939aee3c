// MergeAR (docs/model.md, "MergeAR"): code groups, the teacher-forced mask against the compacted-cache decode
// (logits and the explicit visible-key sets per query), no-repeat equivalence with the plain GPT,
// gradients of the MergeAR loss against finite differences, and the sampler.
import { describe, expect, it } from 'vitest';
import { Tape } from '../lib/autograd.js';
import { runSync } from '../lib/graph.js';
import {
  MergeARGPT,
  MergeVQGPT,
  codeGroups,
  decodeReplay,
  generateMergeARSync,
  maskVisibleKeys,
  mergeARDecodeStats,
} from '../lib/generator/index.js';
import { Tensor } from '../lib/tensor.js';
import { Rng, allFinite, finiteDiffCheck, relErr, seedInfo } from './helpers.js';

const tiny = {
  vocab_size: 512,
  block_size: 16,
  spatial_n_layer: 2,
  factorized_n_layer: 1,
  n_head: 2,
  dim: 16,
  class_num: 5,
  factorized_bits: [3, 6],
  multiple_of: 8,
};
const NC = 6;

function randomModel(seed: number): MergeARGPT {
  const m = new MergeARGPT(tiny, { numCandidates: NC });
  m.store.initRandom(seed);
  const r = new Rng();
  // Non-zero heads and larger merge embeddings so every part carries signal.
  for (const [name, s] of [
    ['head.0.weight', 0.5],
    ['head.1.weight', 0.5],
    ['merge_emb.weight', 0.5],
  ] as const) {
    const t = m.store.get(name);
    m.store.set(
      name,
      Tensor.from(
        Float32Array.from({ length: t.numel }, () => r.normal() * s),
        t.shape,
      ),
    );
  }
  return m;
}

const i64 = (v: number[], shape: number[]) =>
  Tensor.from(
    BigInt64Array.from(v, (x) => BigInt(x)),
    shape,
  );

/** B sequences of length N, row b drawn from `distinct[b]` random codes (repeats on purpose). */
function repeatedTokens(rng: Rng, B: number, N: number, distinct: number[], V0: number, V1: number) {
  const pre: number[] = [];
  const post: number[] = [];
  for (let b = 0; b < B; ++b) {
    const codes = Array.from({ length: distinct[b]! }, () => [rng.int(V0), rng.int(V1)] as const);
    for (let n = 0; n < N; ++n) {
      const c = codes[rng.int(codes.length)]!;
      pre.push(c[0]);
      post.push(c[1]);
    }
  }
  return { pre: i64(pre, [B, N]), post: i64(post, [B, N]) };
}

describe('codeGroups', () => {
  it('g(i) is the first position with the same (pre, post) code', () => {
    const pre = [1, 2, 1, 1, 3, 2, 1];
    const post = [5, 5, 5, 6, 0, 5, 5];
    const { group, first } = codeGroups(pre, post, 1, 7);
    expect(Array.from(group)).toEqual([0, 1, 0, 3, 4, 1, 0]);
    expect(Array.from(first)).toEqual([1, 1, 0, 1, 1, 0, 0]);
    expect(maskVisibleKeys(8, 2, first, 2)).toEqual([0, 1, 2, 3, 5, 6, 7, 8]);
  });
});

describe('MergeAR: training mask = compacted-cache inference', () => {
  it('teacher-forced logits equal the step-by-step compacted decode; visible keys match per query', () => {
    const rng = new Rng();
    const m = randomModel(rng.int(1000));
    const [V0, V1] = m.subVocab;
    const B = 3;
    const N = tiny.block_size;
    const { pre, post } = repeatedTokens(rng, B, N, [2, 3, 5], V0, V1);
    const labels = i64([0, 3, tiny.class_num], [B]);
    const keepIndex = i64([1, 4, 0], [B]);
    const ref = runSync(m.forwardAR(pre, post, labels, keepIndex));
    const { first } = codeGroups(pre, post, B, N);
    const seen: number[][][] = [];
    const dec = decodeReplay(m, pre, post, labels, keepIndex, 'compact', (n, d) => {
      const vis = d.visibleAtLastStep();
      seen.push(vis);
      for (let b = 0; b < B; ++b) {
        const want = maskVisibleKeys(n + 1, 2, first.subarray(b * N, (b + 1) * N), 2);
        expect(
          [...vis[b]!].sort((a, c) => a - c),
          `row ${b}, query ${n + 1}; ${seedInfo(rng.seed)}`,
        ).toEqual(want);
      }
    });
    expect(seen.length).toBe(N);
    expect(relErr(dec.pre, ref.pre.toFloat32()), seedInfo(rng.seed)).toBeLessThan(1e-5);
    expect(relErr(dec.post, ref.post.toFloat32()), seedInfo(rng.seed)).toBeLessThan(1e-5);
    // Compaction happened: the cache holds far fewer rows than positions at the end, and rows
    // with fewer live entries than the cache length (padding) occurred.
    const last = dec.stats[dec.stats.length - 1]!;
    expect(last.kvLen).toBeLessThan(N + 1);
    expect(dec.stats.some((s, i) => i > 0 && s.visiblePairs < B * s.kvLen)).toBe(true);
    // The MergeAR mask changes the result (the test would fail with a plain causal forward).
    const plain = runSync(m.forwardAR(pre, post, labels, keepIndex, { mask: false }));
    expect(relErr(plain.pre.toFloat32(), ref.pre.toFloat32())).toBeGreaterThan(1e-3);
    // The mask over the full cache (no compaction) gives the same logits too.
    const masked = decodeReplay(m, pre, post, labels, keepIndex, 'masked');
    expect(relErr(masked.pre, ref.pre.toFloat32()), seedInfo(rng.seed)).toBeLessThan(1e-5);
    expect(masked.stats[masked.stats.length - 1]!.kvLen).toBe(N + 1);
    // And full-cache causal decoding equals the unmasked forward.
    const full = decodeReplay(m, pre, post, labels, keepIndex, 'full');
    expect(relErr(full.post, plain.post.toFloat32()), seedInfo(rng.seed)).toBeLessThan(1e-5);
  });

  it('window w = 0 and w = 4 also match between mask and compacted decode', () => {
    for (const window of [0, 4]) {
      const rng = new Rng();
      const m = new MergeARGPT(tiny, { numCandidates: NC, window });
      m.store.initRandom(rng.int(1000));
      const [V0, V1] = m.subVocab;
      const { pre, post } = repeatedTokens(rng, 2, tiny.block_size, [3, 4], V0, V1);
      const labels = i64([1, 2], [2]);
      const keepIndex = i64([2, 5], [2]);
      const ref = runSync(m.forwardAR(pre, post, labels, keepIndex));
      const { first } = codeGroups(pre, post, 2, tiny.block_size);
      const dec = decodeReplay(m, pre, post, labels, keepIndex, 'compact', (n, d) => {
        d.visibleAtLastStep().forEach((vis, b) =>
          expect([...vis].sort((a, c) => a - c)).toEqual(
            maskVisibleKeys(n + 1, 2, first.subarray(b * tiny.block_size, (b + 1) * tiny.block_size), window),
          ),
        );
      });
      expect(relErr(dec.post, ref.post.toFloat32()), `w ${window}; ${seedInfo(rng.seed)}`).toBeLessThan(1e-5);
      expect(relErr(dec.pre, ref.pre.toFloat32()), `w ${window}; ${seedInfo(rng.seed)}`).toBeLessThan(1e-5);
    }
  });
});

describe('MergeAR without repeats', () => {
  it('equals the plain GPT (prefix [C] only) and decodes with the full cache length', () => {
    const rng = new Rng();
    const m = randomModel(rng.int(1000));
    const [V0, V1] = m.subVocab;
    const B = 2;
    const N = tiny.block_size;
    // Distinct codes: distinct post sub-tokens per row.
    const pre = i64(
      Array.from({ length: B * N }, () => rng.int(V0)),
      [B, N],
    );
    const post = i64(
      Array.from({ length: B * N }, (_, i) => (i * 3 + 1) % V1),
      [B, N],
    );
    expect(Array.from(codeGroups(pre, post, B, N).first).every((f) => f === 1)).toBe(true);
    const labels = i64([4, 1], [B]);
    const ar = runSync(m.forwardAR(pre, post, labels, null));
    const plain = new MergeVQGPT(tiny);
    for (const name of plain.store.names()) plain.store.set(name, m.store.get(name));
    const ref = runSync(plain.forward(pre, post, labels));
    expect(relErr(ar.pre.toFloat32(), ref.pre.toFloat32()), seedInfo(rng.seed)).toBeLessThan(1e-6);
    expect(relErr(ar.post.toFloat32(), ref.post.toFloat32()), seedInfo(rng.seed)).toBeLessThan(1e-6);
    // With repeats the two differ (the comparison can fail).
    const rep = repeatedTokens(rng, B, N, [2, 2], V0, V1);
    const a2 = runSync(m.forwardAR(rep.pre, rep.post, labels, null));
    const r2 = runSync(plain.forward(rep.pre, rep.post, labels));
    expect(relErr(a2.pre.toFloat32(), r2.pre.toFloat32())).toBeGreaterThan(1e-3);
    // Compacted decode without repeats = full-cache decode, same cache length every step.
    const keepIndex = i64([0, 3], [B]);
    const s = mergeARDecodeStats(m, pre, post, labels, keepIndex);
    expect(s.compact.steps.map((x) => x.kvLen)).toEqual(s.full.steps.map((x) => x.kvLen));
    expect(s.compact.totalVisiblePairs).toBe(s.full.totalVisiblePairs);
  });
});

describe('MergeAR training gradients', () => {
  it('Tape gradients of the MergeAR loss match finite differences', () => {
    const rng = new Rng();
    const m = randomModel(rng.int(1000));
    const [V0, V1] = m.subVocab;
    const B = 2;
    const N = 9;
    const { pre, post } = repeatedTokens(rng, B, N, [2, 3], V0, V1);
    const labels = i64([0, 2], [B]);
    const keepIndex = i64([3, 1], [B]);
    const tape = new Tape();
    const { loss } = runSync(m.lossAR(pre, post, labels, keepIndex), tape.observe);
    const grads = runSync(tape.backward(loss));
    // pre_emb (std 0.02, feeding an RMSNorm) needs a step small against its own scale.
    for (const [name, eps] of [
      ['merge_emb.weight', 2e-2],
      ['spatial_blocks.0.attention.wqkv.weight', 2e-2],
      ['spatial_blocks.1.attention.wo.weight', 2e-2],
      ['pre_emb.weight', 1e-3],
    ] as const) {
      const p = m.store.get(name);
      const g = grads.get(p);
      expect(g, name).toBeDefined();
      const ga = g!.toFloat32();
      expect(allFinite(ga)).toBe(true);
      const x0 = p.toFloat32();
      const f = (x: Float32Array) => {
        m.store.set(name, Tensor.from(x, p.shape));
        const v = runSync(m.lossAR(pre, post, labels, keepIndex)).loss.toFloat32()[0]!;
        return v;
      };
      // Coordinates with a gradient: the used merge_emb rows, every coordinate elsewhere.
      // The loss is float32, so the step stays large and Richardson extrapolation removes its
      // truncation error (2e-2 alone was 5% off on wqkv for seed 1024135951).
      const r = finiteDiffCheck(x0, f, ga, { eps, count: 12, rng, richardson: true });
      m.store.set(name, p);
      expect(r.maxRel, `${name} ${JSON.stringify(r.worst)}; ${seedInfo(rng.seed)}`).toBeLessThan(3e-2);
    }
    // The merge embedding rows of unused candidates get no gradient; used ones do.
    const gm = grads.get(m.store.get('merge_emb.weight'))!.toFloat32();
    const rowNorm = (k: number) => gm.subarray(k * tiny.dim, (k + 1) * tiny.dim).reduce((a, v) => a + Math.abs(v), 0);
    expect(rowNorm(0)).toBe(0);
    expect(rowNorm(3)).toBeGreaterThan(0);
    expect(rowNorm(1)).toBeGreaterThan(0);
  });
});

describe('MergeAR sampling', () => {
  it('compacted and masked-full-cache sampling draw the same tokens; cfg works', () => {
    const m = randomModel(5);
    const labels = i64([0, 3], [2]);
    const keepIndex = i64([1, 2], [2]);
    // Low temperature on the post sub-token makes repeats likely.
    const opts = { temperature: [1, 0.05] as [number, number], topK: [2, 2] as [number, number], seed: 9 };
    const a = generateMergeARSync(m, labels, keepIndex, opts);
    const b = generateMergeARSync(m, labels, keepIndex, { ...opts, mode: 'masked' });
    expect(Array.from(a.pre.toArray<'int64'>())).toEqual(Array.from(b.pre.toArray<'int64'>()));
    expect(Array.from(a.post.toArray<'int64'>())).toEqual(Array.from(b.post.toArray<'int64'>()));
    const { first } = codeGroups(a.pre, a.post, 2, tiny.block_size);
    const repeats = first.reduce((s, f) => s + (f ? 0 : 1), 0);
    expect(repeats).toBeGreaterThan(0);
    expect(a.stats[a.stats.length - 1]!.kvLen).toBeLessThan(b.stats[b.stats.length - 1]!.kvLen);
    const c = generateMergeARSync(m, labels, keepIndex, { ...opts, cfgScale: 1.0 });
    expect(Array.from(c.post.toArray<'int64'>())).toEqual(Array.from(a.post.toArray<'int64'>()));
    expect(() => generateMergeARSync(m, labels, i64([0, NC], [2]))).toThrow(/keepIndex/);
  });
});
