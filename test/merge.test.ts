import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { addon } from '../lib/native.js';
import { Tensor } from '../lib/tensor.js';
import { op, op1, runSync } from '../lib/graph.js';
import {
  bipartiteMatch,
  identitySource,
  mergeSource,
  mergeSourceDense,
  mergeWavg,
  mergeWavgBackward,
  unmerge,
  unmergeBackward,
  type MergeDecisions,
} from '../lib/ops/merge.js';
import { Rng, allFinite, finiteDiffCheck, maxAbsErr, relErr, seedInfo, withPoison } from './helpers.js';
import { fixtureDirs, readSafetensors } from './st-mini.js';

const f = Math.fround;
const ints = (t: Tensor) => Array.from(t.toArray<'int64'>(), Number);
const rows2 = (a: number[], B: number) =>
  Array.from({ length: B }, (_, b) => a.slice((b * a.length) / B, ((b + 1) * a.length) / B));

interface RefDec {
  unm: number[][];
  src: number[][];
  dst: number[][];
}

/**
 * JS reference of the matching rule, reproducing the native fp32 arithmetic exactly: norm in
 * double rounded to fp32, fp32 division, dot products in double over 8 lanes (k % 8) combined as
 * ((0+1)+(2+3))+((4+5)+(6+7)) and rounded to fp32; argmax = first maximum; stable descending sort.
 */
function refMatch(m: Float32Array, B: number, N: number, C: number, r: number, cls: boolean): RefDec {
  const rr = Math.min(r, Math.floor((N - (cls ? 1 : 0)) / 2));
  const out: RefDec = { unm: [], src: [], dst: [] };
  if (rr <= 0)
    return {
      unm: Array.from({ length: B }, () => []),
      src: Array.from({ length: B }, () => []),
      dst: Array.from({ length: B }, () => []),
    };
  const Na = Math.ceil(N / 2);
  const Nb = Math.floor(N / 2);
  for (let b = 0; b < B; ++b) {
    const xn: number[][] = [];
    for (let i = 0; i < N; ++i) {
      let s = 0;
      for (let k = 0; k < C; ++k) s += m[(b * N + i) * C + k]! * m[(b * N + i) * C + k]!;
      const nrm = f(Math.sqrt(s));
      xn.push(Array.from({ length: C }, (_, k) => f(m[(b * N + i) * C + k]! / nrm)));
    }
    const best: number[] = [];
    const arg: number[] = [];
    for (let i = 0; i < Na; ++i) {
      if (cls && i === 0) {
        best.push(-Infinity);
        arg.push(0);
        continue;
      }
      let bv = -Infinity;
      let bj = -1;
      for (let j = 0; j < Nb; ++j) {
        const acc = new Array<number>(8).fill(0);
        for (let k = 0; k < C; ++k) acc[k % 8]! += xn[2 * i]![k]! * xn[2 * j + 1]![k]!;
        const sc = f(acc[0]! + acc[1]! + (acc[2]! + acc[3]!) + (acc[4]! + acc[5]! + (acc[6]! + acc[7]!)));
        if (bj < 0 || sc > bv) {
          bv = sc;
          bj = j;
        }
      }
      best.push(bv);
      arg.push(bj);
    }
    const order = Array.from({ length: Na }, (_, i) => i).sort((x, y) =>
      best[y]! !== best[x]! ? best[y]! - best[x]! : x - y,
    );
    const src = order.slice(0, rr);
    let unm = order.slice(rr);
    if (cls) unm = [...unm].sort((x, y) => x - y);
    out.unm.push(unm);
    out.src.push(src);
    out.dst.push(src.map((i) => arg[i]!));
  }
  return out;
}

/** Output row of each input row under decisions (identity when r' = 0). */
function destOf(d: RefDec, b: number, N: number): number[] {
  const src = d.src[b]!;
  if (src.length === 0) return Array.from({ length: N }, (_, i) => i);
  const unm = d.unm[b]!;
  const Nu = unm.length;
  const dest = new Array<number>(N);
  unm.forEach((u, p) => (dest[2 * u] = p));
  src.forEach((u, j) => (dest[2 * u] = Nu + d.dst[b]![j]!));
  for (let v = 0; 2 * v + 1 < N; ++v) dest[2 * v + 1] = Nu + v;
  return dest;
}
function outRows(d: RefDec, N: number): number {
  return d.src[0]!.length === 0 ? N : d.unm[0]!.length + Math.floor(N / 2);
}

/** float64 reference merge: x_new = sum(x s) / sum(s), size_new = sum(s). */
function refMerge(x: ArrayLike<number>, s: ArrayLike<number> | null, B: number, N: number, C: number, d: RefDec) {
  const O = outRows(d, N);
  const xs = new Float64Array(B * O * C);
  const ss = new Float64Array(B * O);
  for (let b = 0; b < B; ++b) {
    const dest = destOf(d, b, N);
    for (let i = 0; i < N; ++i) {
      const si = s ? s[b * N + i]! : 1;
      const o = b * O + dest[i]!;
      ss[o]! += si;
      for (let k = 0; k < C; ++k) xs[o * C + k]! += x[(b * N + i) * C + k]! * si;
    }
  }
  for (let o = 0; o < B * O; ++o) for (let k = 0; k < C; ++k) xs[o * C + k]! /= ss[o]!;
  return { x: xs, size: ss, O };
}

/** The reference's dense source update: merge(source, mode='amax'), [B, n, L] -> [B, O, L]. */
function refDenseSource(
  S: ArrayLike<number>,
  B: number,
  n: number,
  L: number,
  d: RefDec,
): Float64Array<ArrayBufferLike> {
  const O = outRows(d, n);
  const out = new Float64Array(B * O * L).fill(-Infinity);
  for (let b = 0; b < B; ++b) {
    const dest = destOf(d, b, n);
    for (let i = 0; i < n; ++i)
      for (let l = 0; l < L; ++l) {
        const o = (b * O + dest[i]!) * L + l;
        out[o] = Math.max(out[o]!, S[(b * n + i) * L + l]!);
      }
  }
  return out;
}

function decOf(t: MergeDecisions, B: number): RefDec {
  return { unm: rows2(ints(t.unmIdx), B), src: rows2(ints(t.srcIdx), B), dst: rows2(ints(t.dstIdx), B) };
}
function tensorDec(d: RefDec, B: number): MergeDecisions {
  const mk = (rows: number[][]) => Tensor.from(BigInt64Array.from(rows.flat(), BigInt), [B, rows[0]!.length]);
  return { unmIdx: mk(d.unm), srcIdx: mk(d.src), dstIdx: mk(d.dst) };
}

describe('ToMe parity with the reference fixtures', () => {
  const files = fixtureDirs()
    .map((d) => join(d, 'tome.safetensors'))
    .filter((p) => existsSync(p));
  it('finds at least one tome fixture', () => expect(files.length).toBeGreaterThan(0));
  for (const file of files) {
    const st = readSafetensors(file);
    const cases = st.metadata.cases as Record<
      string,
      { B: number; N: number; C: number; r1: number; r2: number; class_token: boolean }
    >;
    for (const [name, cfg] of Object.entries(cases)) {
      it(`${file} ${name}: two chained merges (x, size, source)`, () => {
        const get = (k: string) => st.tensors.get(`${name}.${k}`)!;
        const { B, N } = cfg;
        const L = N;
        let x = Tensor.from(get('x0').data as Float32Array, get('x0').shape);
        let size: Tensor | null = null;
        let map = identitySource(B, L);
        let S: Float64Array<ArrayBufferLike> = Float64Array.from({ length: B * N * N }, (_, i) =>
          Math.floor(i / N) % N === i % N ? 1 : 0,
        );
        let n = N;
        for (const step of [1, 2]) {
          const metric = get(`metric${step}`);
          const r = step === 1 ? cfg.r1 : cfg.r2;
          const dec = withPoison(() =>
            runSync(
              bipartiteMatch(Tensor.from(metric.data as Float32Array, metric.shape), {
                r,
                classToken: cfg.class_token,
              }),
            ),
          );
          const rd = decOf(dec, B);
          expect(rd, `decisions step ${step}`).toEqual(
            refMatch(metric.data as Float32Array, B, n, metric.shape[2]!, r, cfg.class_token),
          );
          const merged = withPoison(() => runSync(mergeWavg(x, size, dec)));
          const xr = get(`x${step}`);
          expect(merged.x.shape).toEqual(xr.shape);
          expect(relErr(merged.x.toFloat32(), xr.data as Float32Array), `x${step}`).toBeLessThan(1e-4);
          expect(Array.from(merged.size.toFloat32())).toEqual(Array.from(get(`size${step}`).data as Float32Array));
          const newMap = withPoison(() => runSync(mergeSource(map, dec, n)));
          const O = merged.x.shape[1]!;
          const dense = runSync(mergeSourceDense(newMap, O)).toFloat32();
          expect(Array.from(dense)).toEqual(Array.from(get(`source${step}`).data as Float32Array));
          // Dense-in / dense-out: the reference's amax update on the previous dense source.
          S = refDenseSource(S, B, n, L, rd);
          expect(Array.from(dense)).toEqual(Array.from(S));
          x = merged.x;
          size = merged.size;
          map = newMap;
          n = O;
        }
      });
    }
  }
});

/** Random metric with many exact ties: rows drawn from a few prototypes (some scaled copies). */
function tiedMetric(rng: Rng, B: number, N: number, C: number, protos: number): Float32Array {
  const P = Array.from({ length: protos }, () => rng.randn(C));
  const m = new Float32Array(B * N * C);
  for (let t = 0; t < B * N; ++t) {
    const p = P[rng.int(protos)]!;
    for (let k = 0; k < C; ++k) m[t * C + k] = p[k]!;
  }
  return m;
}

describe('tome_match against the JS rule', () => {
  const shapes: [number, number, number, number][] = [
    [1, 1, 4, 3],
    [1, 2, 1, 1],
    [2, 7, 5, 2],
    [3, 33, 9, 20],
    [2, 257, 16, 101],
    [1, 64, 64, 32],
  ];
  for (const [B, N, C, r] of shapes)
    for (const cls of [false, true])
      for (const ties of [false, true]) {
        it(`B=${B} N=${N} C=${C} r=${r} cls=${cls} ties=${ties}`, () => {
          const rng = new Rng();
          const m = ties ? tiedMetric(rng, B, N, C, 3) : rng.randn(B * N * C);
          // Non-contiguous metric: a permuted view of [N, B, C] storage.
          const nbc = new Float32Array(B * N * C);
          for (let b = 0; b < B; ++b)
            for (let i = 0; i < N; ++i) for (let k = 0; k < C; ++k) nbc[(i * B + b) * C + k] = m[(b * N + i) * C + k]!;
          const mt = Tensor.from(nbc, [N, B, C]).permute(1, 0, 2);
          const dec = withPoison(() => runSync(bipartiteMatch(mt, { r, classToken: cls })));
          expect(decOf(dec, B), seedInfo(rng.seed)).toEqual(refMatch(m, B, N, C, r, cls));
          const rr = Math.min(r, Math.floor((N - (cls ? 1 : 0)) / 2));
          expect(dec.srcIdx.shape).toEqual([B, Math.max(rr, 0)]);
        });
      }
  it('ties: equal scores keep ascending A order and the lowest B index', () => {
    // All rows identical: every score is 1, so src = first r A rows, dst = 0.
    const m = Tensor.from(new Float32Array(9 * 4).fill(0.5), [1, 9, 4]);
    const d = runSync(bipartiteMatch(m, { r: 3 }));
    expect(ints(d.srcIdx)).toEqual([0, 1, 2]);
    expect(ints(d.dstIdx)).toEqual([0, 0, 0]);
    expect(ints(d.unmIdx)).toEqual([3, 4]);
    const dc = runSync(bipartiteMatch(m, { r: 3, classToken: true }));
    expect(ints(dc.srcIdx)).toEqual([1, 2, 3]);
    expect(ints(dc.unmIdx)).toEqual([0, 4]);
  });
  it('r = 0 is the identity (do_nothing) and rejects bad decisions', () => {
    const rng = new Rng();
    const x = rng.tensor([2, 5, 3]);
    const d = runSync(bipartiteMatch(rng.tensor([2, 5, 4]), { r: 0 }));
    expect(d.srcIdx.shape).toEqual([2, 0]);
    expect(d.unmIdx.shape).toEqual([2, 0]);
    const s = Tensor.from(
      Float32Array.from({ length: 10 }, () => 1 + rng.int(4)),
      [2, 5, 1],
    );
    const out = runSync(mergeWavg(x, s, d));
    expect(relErr(out.x.toFloat32(), x.toFloat32())).toBeLessThan(1e-7);
    expect(out.size.shape).toEqual([2, 5, 1]);
    expect(ints(runSync(mergeSource(identitySource(2, 5), d, 5)))).toEqual([0, 1, 2, 3, 4, 0, 1, 2, 3, 4]);
    // Class token with N = 2: nothing can merge.
    expect(runSync(bipartiteMatch(rng.tensor([1, 2, 4]), { r: 5, classToken: true })).srcIdx.shape).toEqual([1, 0]);
    const bad: MergeDecisions = {
      unmIdx: Tensor.from(new BigInt64Array([0n, 0n]), [1, 2]),
      srcIdx: Tensor.from(new BigInt64Array([1n]), [1, 1]),
      dstIdx: Tensor.from(new BigInt64Array([0n]), [1, 1]),
    };
    expect(() => runSync(mergeWavg(rng.tensor([1, 6, 2]), null, bad))).toThrow(/permutation/);
    const badDst = {
      ...bad,
      unmIdx: Tensor.from(new BigInt64Array([0n, 2n]), [1, 2]),
      dstIdx: Tensor.from(new BigInt64Array([7n]), [1, 1]),
    };
    expect(() => runSync(mergeWavg(rng.tensor([1, 6, 2]), null, badDst))).toThrow(RangeError);
    expect(() => runSync(bipartiteMatch(rng.tensor([1, 6, 2]), { r: -1 }))).toThrow(RangeError);
    expect(() => op('tome_match', [rng.tensor([6, 2])], { r: 1 })).toThrow(/tome_match: 'metric'/);
    expect(() => op('tome_match', [Tensor.from(new Int32Array(6), [1, 3, 2])], { r: 1 })).toThrow(TypeError);
  });
});

describe('tome_merge / source / unmerge against float64 references', () => {
  for (const [B, N, C, r, cls] of [
    [1, 7, 1, 2, false],
    [2, 33, 5, 16, true],
    [3, 257, 7, 90, false],
    [2, 65, 32, 20, true],
  ] as const) {
    it(`B=${B} N=${N} C=${C} r=${r} cls=${cls}: merge, backward, source, unmerge`, () => {
      const rng = new Rng();
      const info = seedInfo(rng.seed);
      const m = tiedMetric(rng, B, N, 4, 5);
      const dec = runSync(bipartiteMatch(Tensor.from(m, [B, N, 4]), { r, classToken: cls }));
      const rd = decOf(dec, B);
      const xd = rng.randn(B * N * C);
      const sd = Float32Array.from({ length: B * N }, () => 1 + rng.int(5));
      // Non-contiguous x: permuted view of [C, B, N].
      const cbn = new Float32Array(B * N * C);
      for (let b = 0; b < B; ++b)
        for (let i = 0; i < N; ++i) for (let k = 0; k < C; ++k) cbn[(k * B + b) * N + i] = xd[(b * N + i) * C + k]!;
      const x = Tensor.from(cbn, [C, B, N]).permute(1, 2, 0);
      const size = Tensor.from(sd, [B, N]);
      const out = withPoison(() => runSync(mergeWavg(x, size, dec)));
      const ref = refMerge(xd, sd, B, N, C, rd);
      expect(relErr(out.x.toFloat32(), ref.x), info).toBeLessThan(1e-6);
      expect(Array.from(out.size.toFloat32())).toEqual(Array.from(ref.size));
      // Backward vs analytic float64 and finite differences of the float64 merge.
      const w = rng.randn(B * ref.O * C);
      const gx = withPoison(() => runSync(mergeWavgBackward(x, size, dec, Tensor.from(w, [B, ref.O, C])))).toFloat32();
      expect(allFinite(gx)).toBe(true);
      const ga = new Float64Array(B * N * C);
      for (let b = 0; b < B; ++b) {
        const dest = destOf(rd, b, N);
        for (let i = 0; i < N; ++i) {
          const o = b * ref.O + dest[i]!;
          for (let k = 0; k < C; ++k) ga[(b * N + i) * C + k] = (w[o * C + k]! * sd[b * N + i]!) / ref.size[o]!;
        }
      }
      expect(relErr(gx, ga), info).toBeLessThan(1e-6);
      const loss = (xx: Float32Array) => refMerge(xx, sd, B, N, C, rd).x.reduce((s, v, i) => s + v * w[i]!, 0);
      const fd = finiteDiffCheck(xd, loss, gx, { eps: 1e-2, rng });
      expect(fd.maxRel, `${info} ${JSON.stringify(fd.worst)}`).toBeLessThan(1e-3);
      // Source map, dense source and the unmerge property.
      const map = withPoison(() => runSync(mergeSource(identitySource(B, N), dec, N)));
      const mp = ints(map);
      for (let b = 0; b < B; ++b) expect(mp.slice(b * N, (b + 1) * N)).toEqual(destOf(rd, b, N));
      const dense = runSync(mergeSourceDense(map, ref.O)).toFloat32();
      const S0 = Float64Array.from({ length: B * N * N }, (_, i) => (Math.floor(i / N) % N === i % N ? 1 : 0));
      expect(Array.from(dense)).toEqual(Array.from(refDenseSource(S0, B, N, N, rd)));
      for (let b = 0; b < B; ++b)
        for (let l = 0; l < N; ++l) {
          let col = 0;
          for (let k = 0; k < ref.O; ++k) col += dense[(b * ref.O + k) * N + l]!;
          expect(col).toBe(1); // every full position belongs to exactly one kept token
        }
      const full = withPoison(() => runSync(unmerge(out.x, map))).toFloat32();
      const kept = out.x.toFloat32();
      for (let b = 0; b < B; ++b)
        for (let l = 0; l < N; ++l)
          for (let k = 0; k < C; ++k)
            expect(full[(b * N + l) * C + k]).toBe(kept[(b * ref.O + mp[b * N + l]!) * C + k]);
      // Every kept token appears at every position it holds (and only there).
      for (let b = 0; b < B; ++b)
        for (let k = 0; k < ref.O; ++k) {
          const pos = mp.slice(b * N, (b + 1) * N).flatMap((v, l) => (v === k ? [l] : []));
          expect(pos.length).toBeGreaterThan(0);
        }
      // unmerge_backward vs float64 scatter-add and finite differences.
      const wf = rng.randn(B * N * C);
      const gk = withPoison(() => runSync(unmergeBackward(Tensor.from(wf, [B, N, C]), map, ref.O))).toFloat32();
      const gkr = new Float64Array(B * ref.O * C);
      for (let b = 0; b < B; ++b)
        for (let l = 0; l < N; ++l)
          for (let k = 0; k < C; ++k) gkr[(b * ref.O + mp[b * N + l]!) * C + k]! += wf[(b * N + l) * C + k]!;
      expect(maxAbsErr(gk, gkr)).toBeLessThan(1e-5);
      const keptD = Float32Array.from(kept);
      const uloss = (kk: Float32Array) => {
        let s = 0;
        for (let b = 0; b < B; ++b)
          for (let l = 0; l < N; ++l)
            for (let k = 0; k < C; ++k) s += kk[(b * ref.O + mp[b * N + l]!) * C + k]! * wf[(b * N + l) * C + k]!;
        return s;
      };
      const fdu = finiteDiffCheck(keptD, uloss, gk, { eps: 1e-2, rng });
      expect(fdu.maxRel, info).toBeLessThan(1e-3);
    });
  }
  it('chained source updates equal the chained dense reference', () => {
    const rng = new Rng();
    const B = 2;
    const N = 50;
    let n = N;
    let map = identitySource(B, N);
    let S: Float64Array<ArrayBufferLike> = Float64Array.from({ length: B * N * N }, (_, i) =>
      Math.floor(i / N) % N === i % N ? 1 : 0,
    );
    for (const r of [10, 7, 30, 0, 3]) {
      const m = rng.randn(B * n * 6);
      const dec = runSync(bipartiteMatch(Tensor.from(m, [B, n, 6]), { r, classToken: true }));
      const rd = decOf(dec, B);
      map = runSync(mergeSource(map, dec, n));
      S = refDenseSource(S, B, n, N, rd);
      n = outRows(rd, n);
      expect(Array.from(runSync(mergeSourceDense(map, n)).toFloat32()), seedInfo(rng.seed)).toEqual(Array.from(S));
      void tensorDec;
    }
    expect(n).toBeLessThan(N);
  });
});

describe.skipIf(!addon.deviceAvailable('cuda').available)('merge CUDA vs CPU', () => {
  it('tome_match, tome_merge, tome_source_update and unmerge agree', () => {
    const rng = new Rng();
    for (const [B, N, C, r, cls] of [
      [2, 65, 16, 20, true],
      [1, 1025, 64, 101, true],
      [3, 40, 8, 40, false],
    ] as const) {
      const m = rng.tensor([B, N, C]);
      const d = op('tome_match', [m], { r, class_token: cls });
      const dc = op('tome_match', [m.to('cuda')], { r, class_token: cls });
      for (let i = 0; i < 3; ++i) expect(ints(dc[i]!.to('cpu'))).toEqual(ints(d[i]!));
      const x = rng.tensor([B, N, 32]);
      const s = Tensor.from(
        Float32Array.from({ length: B * N }, () => 1 + rng.int(3)),
        [B, N],
      );
      const y = op('tome_merge', [x, s, ...d]);
      const yc = op('tome_merge', [x.to('cuda'), s.to('cuda'), ...dc]);
      expect(relErr(yc[0]!.to('cpu').toFloat32(), y[0]!.toFloat32())).toBeLessThan(1e-6);
      expect(Array.from(yc[1]!.to('cpu').toFloat32())).toEqual(Array.from(y[1]!.toFloat32()));
      const map = identitySource(B, N);
      const mp = op1('tome_source_update', [map, ...d], { n: N });
      const mpc = op1('tome_source_update', [map.to('cuda'), ...dc], { n: N });
      expect(ints(mpc.to('cpu'))).toEqual(ints(mp));
      const full = op1('unmerge', [y[0]!, mp]);
      const fullc = op1('unmerge', [yc[0]!, mpc]);
      expect(relErr(fullc.to('cpu').toFloat32(), full.toFloat32())).toBeLessThan(1e-6);
    }
  });
});
