import { describe, expect, it } from 'vitest';
import { op, op1, runSync } from '../lib/graph.js';
import { Tensor } from '../lib/tensor.js';
import * as T from '../lib/ops/tensor.js';
import { Rng, allFinite, finiteDiffCheck, relErr, seedInfo, withPoison } from './helpers.js';
import { coordsOf, numel, randTensor, stridesOf } from './tensor_ref.js';

function flat(c: number[], shape: number[]): number {
  const st = stridesOf(shape);
  return c.reduce((s, v, d) => s + v * st[d]!, 0);
}
function idxTensor(v: number[], shape: number[], int32: boolean): Tensor {
  return int32 ? Tensor.from(Int32Array.from(v), shape) : Tensor.from(BigInt64Array.from(v, BigInt), shape);
}
function randIdx(rng: Rng, n: number, limit: number): number[] {
  return Array.from({ length: n }, () => rng.int(limit));
}
function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; ++i) s += a[i]! * b[i]!;
  return s;
}

/** Float64 index_select. */
function selectRef(x: ArrayLike<number>, shape: number[], dim: number, idx: number[]): Float64Array {
  const out = [...shape];
  out[dim] = idx.length;
  return Float64Array.from({ length: numel(out) }, (_, i) => {
    const c = coordsOf(i, out);
    c[dim] = idx[c[dim]!]!;
    return x[flat(c, shape)]!;
  });
}
/** Float64 torch.gather. */
function gatherRef(x: ArrayLike<number>, shape: number[], dim: number, idx: number[], ishape: number[]): Float64Array {
  return Float64Array.from({ length: numel(ishape) }, (_, i) => {
    const c = coordsOf(i, ishape);
    c[dim] = idx[i]!;
    return x[flat(c, shape)]!;
  });
}
/** Float64 torch.Tensor.scatter_reduce. */
function scatterRef(
  base: ArrayLike<number>,
  bshape: number[],
  idx: number[],
  ishape: number[],
  src: ArrayLike<number>,
  sshape: number[],
  dim: number,
  reduce: string,
  self: boolean,
): Float64Array {
  const contrib = new Map<number, number[]>();
  for (let i = 0; i < idx.length; ++i) {
    const c = coordsOf(i, ishape);
    const v = src[flat(c, sshape)]!;
    c[dim] = idx[i]!;
    const p = flat(c, bshape);
    if (!contrib.has(p)) contrib.set(p, []);
    contrib.get(p)!.push(v);
  }
  const out = Float64Array.from(base);
  for (const [p, vs] of contrib) {
    const all = self ? [base[p]!, ...vs] : vs;
    const s = all.reduce((a, b) => a + b, 0);
    out[p] = reduce === 'sum' ? s : reduce === 'mean' ? s / all.length : Math.max(...all);
  }
  return out;
}

describe('index_select and embedding', () => {
  it('index_select matches a reference on any dim, strided x, int32/int64 idx, and its backward matches finite differences', () => {
    const rng = new Rng();
    for (const [shape, dim] of [
      [[7, 5], 0],
      [[3, 33, 4], 1],
      [[2, 3, 257], 2],
      [[1], 0],
    ] as [number[], number][]) {
      for (const int32 of [false, true]) {
        const x = randTensor(rng, shape, int32);
        const iv = randIdx(rng, 9, shape[dim]!);
        const idx = idxTensor(iv, [9], int32);
        const y = withPoison(() => runSync(T.indexSelect(x.t, idx, dim)));
        expect(relErr(y.toFloat32(), selectRef(x.data, shape, dim, iv)), seedInfo(rng.seed)).toBe(0);
        const g = rng.randn(y.numel);
        const gx = withPoison(() =>
          runSync(T.indexSelectBackward(Tensor.from(g, y.shape), idx, dim, shape[dim]!)),
        ).toFloat32();
        expect(allFinite(gx)).toBe(true);
        const fd = finiteDiffCheck(x.data, (v) => dot(g, selectRef(v, shape, dim, iv)), gx, {
          eps: 1e-2,
          count: 30,
          rng,
        });
        expect(fd.maxRel, `${shape} ${dim} ${JSON.stringify(fd.worst)} ${seedInfo(rng.seed)}`).toBeLessThan(1e-3);
      }
    }
  });

  it('embedding gathers rows and embedding_backward scatter-adds duplicates', () => {
    const rng = new Rng();
    const V = 37;
    const D = 33;
    const w = randTensor(rng, [V, D]);
    const iv = randIdx(rng, 2 * 7, V);
    iv[3] = iv[5] = iv[11] = 4; // duplicates
    const idx = idxTensor(iv, [2, 7], false);
    const y = withPoison(() => runSync(T.embedding(w.t, idx)));
    expect(y.shape).toEqual([2, 7, D]);
    expect(relErr(y.toFloat32(), selectRef(w.data, [V, D], 0, iv))).toBe(0);
    const g = rng.randn(2 * 7 * D);
    const gw = withPoison(() => runSync(T.embeddingBackward(Tensor.from(g, [2, 7, D]), idx, V)));
    expect(gw.shape).toEqual([V, D]);
    const ref = new Float64Array(V * D);
    iv.forEach((r, k) => {
      for (let j = 0; j < D; ++j) ref[r * D + j]! += g[k * D + j]!;
    });
    expect(relErr(gw.toFloat32(), ref), seedInfo(rng.seed)).toBeLessThan(1e-7);
    const fd = finiteDiffCheck(w.data, (v) => dot(g, selectRef(v, [V, D], 0, iv)), gw.toFloat32(), {
      eps: 1e-2,
      count: 40,
      rng,
    });
    expect(fd.maxRel, seedInfo(rng.seed)).toBeLessThan(1e-3);
  });

  it('rejects out-of-range indices with a RangeError naming the op and value, inputs untouched', () => {
    const x = Tensor.from(
      Float32Array.from({ length: 12 }, (_, i) => i),
      [4, 3],
    );
    const before = Array.from(x.toFloat32());
    const bad = idxTensor([0, 2, 9, 1], [4], false);
    expect(() => op1('index_select', [x, bad], { dim: 0 })).toThrow(RangeError);
    expect(() => op1('index_select', [x, bad], { dim: 0 })).toThrow(/index_select: index 9/);
    expect(() => op1('embedding', [x, idxTensor([-1], [1], true)])).toThrow(/embedding: index -1/);
    expect(() =>
      op1('embedding_backward', [Tensor.zeros([2, 3]), idxTensor([0, 4], [2], false)], { num_embeddings: 4 }),
    ).toThrow(/embedding_backward: index 4/);
    expect(() => op1('gather', [x, idxTensor([0, 0, 3, 0, 0, 0], [2, 3], false)], { dim: 1 })).toThrow(
      /gather: index 3/,
    );
    const base = Tensor.zeros([4]);
    expect(() =>
      op1('scatter_reduce', [base, idxTensor([5], [1], false), Tensor.zeros([1])], { dim: 0, reduce: 'sum' }),
    ).toThrow(/scatter_reduce: index 5/);
    expect(Array.from(base.toFloat32())).toEqual([0, 0, 0, 0]);
    expect(Array.from(x.toFloat32())).toEqual(before);
    expect(() => op1('index_select', [x, Tensor.from(new Float32Array([0]), [1])], { dim: 0 })).toThrow(TypeError);
  });
});

describe('gather and scatter_reduce', () => {
  it('gather follows torch semantics (idx smaller than x), and gather_backward matches finite differences', () => {
    const rng = new Rng();
    for (const [shape, ishape, dim] of [
      [[5, 7], [5, 3], 1],
      [[6, 4, 3], [9, 4, 2], 0],
      [[2, 33, 5], [2, 17, 5], 1],
      [[3, 4], [2, 4], -1],
    ] as [number[], number[], number][]) {
      const d = dim < 0 ? dim + shape.length : dim;
      const x = randTensor(rng, shape, true);
      const iv = randIdx(rng, numel(ishape), shape[d]!);
      const idx = idxTensor(iv, ishape, rng.next() < 0.5);
      const y = withPoison(() => runSync(T.gather(x.t, idx, dim)));
      expect(y.shape).toEqual(ishape);
      expect(relErr(y.toFloat32(), gatherRef(x.data, shape, d, iv, ishape)), seedInfo(rng.seed)).toBe(0);
      const g = rng.randn(numel(ishape));
      const gx = withPoison(() => runSync(T.gatherBackward(Tensor.from(g, ishape), idx, dim, shape))).toFloat32();
      expect(allFinite(gx)).toBe(true);
      const fd = finiteDiffCheck(x.data, (v) => dot(g, gatherRef(v, shape, d, iv, ishape)), gx, {
        eps: 1e-2,
        count: 30,
        rng,
      });
      expect(fd.maxRel, `${shape} ${JSON.stringify(fd.worst)} ${seedInfo(rng.seed)}`).toBeLessThan(1e-3);
    }
  });

  it('scatter_reduce reproduces the torch documentation examples (include_self true/false)', () => {
    const src = Tensor.from([1, 2, 3, 4, 5, 6]);
    const index = idxTensor([0, 1, 0, 1, 2, 1], [6], false);
    const input = Tensor.from([1, 2, 3, 4]);
    const run = (b: Tensor, reduce: 'sum' | 'mean' | 'amax', includeSelf: boolean) =>
      Array.from(runSync(T.scatterReduce(b, index, src, { dim: 0, reduce, includeSelf })).toFloat32());
    expect(run(input, 'sum', true)).toEqual([5, 14, 8, 4]);
    expect(run(input, 'sum', false)).toEqual([4, 12, 5, 4]);
    const input2 = Tensor.from([5, 4, 3, 2]);
    expect(run(input2, 'amax', true)).toEqual([5, 6, 5, 2]);
    expect(run(input2, 'amax', false)).toEqual([3, 6, 5, 2]);
    expect(run(input, 'mean', true)).toEqual([Math.fround(5 / 3), 3.5, 4, 4]);
    expect(run(input, 'mean', false)).toEqual([2, 4, 5, 4]);
    expect(Array.from(input.toFloat32())).toEqual([1, 2, 3, 4]);
  });

  it('scatter_reduce matches a float64 reference on random ToMe-like shapes', () => {
    const rng = new Rng();
    // base [B, Nd, C], idx/src [B, Ns, C] (expanded destination index per token), dim 1.
    for (const [B, Nd, Ns, C] of [
      [2, 5, 9, 3],
      [1, 17, 33, 8],
      [3, 1, 4, 1],
    ]) {
      const bshape = [B!, Nd!, C!];
      const sshape = [B!, Ns!, C!];
      const base = randTensor(rng, bshape);
      const src = randTensor(rng, sshape, true);
      const tok = randIdx(rng, B! * Ns!, Nd!);
      const iv = Array.from({ length: numel(sshape) }, (_, i) => tok[Math.floor(i / C!)]!);
      const idx = idxTensor(iv, sshape, false);
      for (const reduce of ['sum', 'mean', 'amax'] as const) {
        for (const includeSelf of [true, false]) {
          const y = withPoison(() =>
            runSync(T.scatterReduce(base.t, idx, src.t, { dim: 1, reduce, includeSelf })),
          ).toFloat32();
          const ref = scatterRef(base.data, bshape, iv, sshape, src.data, sshape, 1, reduce, includeSelf);
          expect(relErr(y, ref), `${reduce} ${includeSelf} ${seedInfo(rng.seed)}`).toBeLessThan(1e-6);
        }
      }
    }
  });

  it('scatter_reduce_backward (sum, mean) matches finite differences for base and src', () => {
    const rng = new Rng();
    const bshape = [2, 6, 3];
    const ishape = [2, 5, 3];
    const sshape = [2, 7, 3];
    const base = randTensor(rng, bshape);
    const src = randTensor(rng, sshape);
    // Some destinations receive nothing (row 5 is never chosen).
    const iv = randIdx(rng, numel(ishape), 5);
    const idx = idxTensor(iv, ishape, true);
    for (const reduce of ['sum', 'mean'] as const) {
      for (const includeSelf of [true, false]) {
        const g = rng.randn(numel(bshape));
        const y = runSync(T.scatterReduce(base.t, idx, src.t, { dim: 1, reduce, includeSelf }));
        const [gb, gs] = withPoison(() =>
          runSync(
            T.scatterReduceBackward(base.t, idx, src.t, Tensor.from(g, y.shape), { dim: 1, reduce, includeSelf }),
          ),
        );
        expect(gb.shape).toEqual(bshape);
        expect(gs.shape).toEqual(sshape);
        const f = (b: ArrayLike<number>, s: ArrayLike<number>) =>
          dot(g, scatterRef(b, bshape, iv, ishape, s, sshape, 1, reduce, includeSelf));
        const fdb = finiteDiffCheck(base.data, (v) => f(v, src.data), gb.toFloat32(), { eps: 1e-2, count: 36, rng });
        const fds = finiteDiffCheck(src.data, (v) => f(base.data, v), gs.toFloat32(), { eps: 1e-2, count: 42, rng });
        expect(
          fdb.maxRel,
          `base ${reduce} ${includeSelf} ${JSON.stringify(fdb.worst)} ${seedInfo(rng.seed)}`,
        ).toBeLessThan(1e-3);
        expect(
          fds.maxRel,
          `src ${reduce} ${includeSelf} ${JSON.stringify(fds.worst)} ${seedInfo(rng.seed)}`,
        ).toBeLessThan(1e-3);
        // src positions outside idx get exactly zero.
        const gsa = gs.toFloat32();
        for (let b = 0; b < 2; ++b)
          for (let n = 5; n < 7; ++n) for (let c = 0; c < 3; ++c) expect(gsa[(b * 7 + n) * 3 + c]).toBe(0);
      }
    }
    expect(() => op('scatter_reduce_backward', [base.t, idx, src.t, base.t], { dim: 1, reduce: 'amax' })).toThrow(
      RangeError,
    );
  });
});
