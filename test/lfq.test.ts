import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { addon } from '../lib/native.js';
import { Tensor } from '../lib/tensor.js';
import { runSync, op, op1 } from '../lib/graph.js';
import {
  lfqCommitment,
  lfqCommitmentBackward,
  lfqEntropy,
  lfqEntropyBackward,
  lfqFactorize,
  lfqIndicesToCodes,
  lfqQuantize,
  lfqUnfactorize,
} from '../lib/ops/lfq.js';
import { Rng, allFinite, finiteDiffCheck, maxAbsErr, relErr, seedInfo, withPoison } from './helpers.js';
import { fixtureDirs, readSafetensors } from './st-mini.js';

const scalar = (v: number) => Tensor.from(new Float32Array([v]), []);
const ints = (t: Tensor) => Array.from(t.toArray<'int64'>(), Number);

/** Rows [N, d] of z [B, d, ...] (channel axis 1), in the reference's (b, spatial) order, float64. */
function rowsOf(z: Float32Array, shape: number[]): number[][] {
  const [B, d] = [shape[0]!, shape[1]!];
  const S = shape.slice(2).reduce((a, b) => a * b, 1);
  const rows: number[][] = [];
  for (let b = 0; b < B; ++b)
    for (let s = 0; s < S; ++s) rows.push(Array.from({ length: d }, (_, j) => z[(b * d + j) * S + s]!));
  return rows;
}

/** float64 reference: full softmax over all 2^d codes (the reference's formulation). */
function entropyRef(rows: number[][], T: number, gps = 1, gcb = 1) {
  const N = rows.length;
  const d = rows[0]!.length;
  const K = 1 << d;
  const P: Float64Array[] = [];
  let ps = 0;
  const pbar = new Float64Array(K);
  for (const z of rows) {
    const l = new Float64Array(K);
    let m = -Infinity;
    for (let c = 0; c < K; ++c) {
      let s = 0;
      for (let j = 0; j < d; ++j) s += z[j]! * ((c >> j) & 1 ? 1 : -1);
      l[c] = (2 * s) / T;
      m = Math.max(m, l[c]!);
    }
    let den = 0;
    for (let c = 0; c < K; ++c) den += Math.exp(l[c]! - m);
    const p = new Float64Array(K);
    let h = 0;
    for (let c = 0; c < K; ++c) {
      const lp = l[c]! - m - Math.log(den);
      p[c] = Math.exp(lp);
      h -= p[c]! * lp;
      pbar[c]! += p[c]! / N;
    }
    ps += h / N;
    P.push(p);
  }
  let cb = 0;
  for (let c = 0; c < K; ++c) cb -= pbar[c]! * Math.log(pbar[c]! + 1e-5);
  // Analytic gradient of gps * ps + gcb * cb.
  const G = new Float64Array(K);
  for (let c = 0; c < K; ++c) G[c] = -(Math.log(pbar[c]! + 1e-5) + pbar[c]! / (pbar[c]! + 1e-5));
  const grad = rows.map((z, n) => {
    const p = P[n]!;
    let h = 0;
    for (let c = 0; c < K; ++c) if (p[c]! > 0) h -= p[c]! * Math.log(p[c]!);
    const g = new Float64Array(K); // dLoss/dp_c
    for (let c = 0; c < K; ++c) g[c] = (gps / N) * -(p[c]! > 0 ? Math.log(p[c]!) + 1 : 1) + (gcb / N) * G[c]!;
    let pg = 0;
    for (let c = 0; c < K; ++c) pg += p[c]! * g[c]!;
    const gz = new Array<number>(d).fill(0);
    for (let c = 0; c < K; ++c) {
      const dl = p[c]! * (g[c]! - pg);
      for (let j = 0; j < d; ++j) gz[j]! += (dl * 2 * ((c >> j) & 1 ? 1 : -1)) / T;
    }
    void z;
    void h;
    return gz;
  });
  return { ps, cb, pbar, grad };
}

describe('lfq parity with the reference fixtures', () => {
  const files = fixtureDirs()
    .map((d) => join(d, 'lfq.safetensors'))
    .filter((f) => existsSync(f));
  it('finds at least one lfq fixture', () => expect(files.length).toBeGreaterThan(0));
  for (const file of files) {
    const st = readSafetensors(file);
    const cases = [...new Set([...st.tensors.keys()].map((k) => k.split('.')[0]!))];
    const loss = String(st.metadata.loss);
    const m = /^([\d.]+)\*entropy_aux_loss \+ ([\d.]+)\*commitment \+ sum\(quantized\*upstream_grad\)$/.exec(loss);
    const wMin = Number(st.metadata.sample_minimization_weight ?? 1);
    const wMax = Number(st.metadata.batch_maximization_weight ?? 1);
    // The entropy temperature: the file's when it names one, else the quantizer's default.
    const temperature = Number(st.metadata.temperature ?? 0.01);
    for (const c of cases) {
      const get = (n: string) => st.tensors.get(`${c}.${n}`)!;
      it(`${file} ${c}: quantized, indices and factorized indices`, () => {
        const x = get('x');
        const z = Tensor.from(x.data as Float32Array, x.shape);
        const { codes, indices } = withPoison(() => runSync(lfqQuantize(z, { dim: 1 })));
        expect(maxAbsErr(codes.toFloat32(), get('quantized').data as Float32Array)).toBeLessThan(1e-6);
        expect(ints(indices)).toEqual(Array.from(get('indices').data as BigInt64Array, Number));
        for (const key of st.tensors.keys()) {
          const f = new RegExp(`^${c}\\.indices_pre_(\\d+)_(\\d+)$`).exec(key);
          if (!f) continue;
          const bits: [number, number] = [Number(f[1]), Number(f[2])];
          const { pre, post } = runSync(lfqFactorize(indices, bits));
          expect(ints(pre)).toEqual(Array.from(st.tensors.get(key)!.data as BigInt64Array, Number));
          expect(ints(post)).toEqual(
            Array.from(get(`indices_post_${bits[0]}_${bits[1]}`).data as BigInt64Array, Number),
          );
          expect(ints(runSync(lfqUnfactorize(pre, post, bits)))).toEqual(ints(indices));
        }
      });
      it(`${file} ${c}: entropies, commitment, loss and x_grad`, () => {
        expect(m, `unrecognized loss formula ${loss}`).not.toBeNull();
        const [wAux, wCommit] = [Number(m![1]), Number(m![2])];
        const x = get('x');
        const z = Tensor.from(x.data as Float32Array, x.shape);
        const ent = withPoison(() => runSync(lfqEntropy(z, { dim: 1, temperature })));
        const ps = ent.perSample.item();
        const cb = ent.codebook.item();
        const ref = (n: string) => (get(n).data as Float32Array)[0]!;
        expect(Math.abs(ps - ref('per_sample_entropy')) / Math.abs(ref('per_sample_entropy'))).toBeLessThan(1e-3);
        expect(Math.abs(cb - ref('codebook_entropy')) / Math.abs(ref('codebook_entropy'))).toBeLessThan(1e-3);
        const aux = wMin * ps - wMax * cb;
        expect(Math.abs(aux - ref('entropy_aux_loss')) / Math.abs(ref('entropy_aux_loss'))).toBeLessThan(1e-3);
        const commit = runSync(lfqCommitment(z)).item();
        expect(Math.abs(commit - ref('commitment')) / ref('commitment')).toBeLessThan(1e-4);
        const q = get('quantized').data as Float32Array;
        const ug = get('upstream_grad').data as Float32Array;
        let dot = 0;
        for (let i = 0; i < q.length; ++i) dot += q[i]! * ug[i]!;
        const total = wAux * aux + wCommit * commit + dot;
        expect(Math.abs(total - ref('loss')) / Math.abs(ref('loss'))).toBeLessThan(1e-3);
        const gEnt = withPoison(() =>
          runSync(
            lfqEntropyBackward(z, scalar(wAux * wMin), scalar(-wAux * wMax), {
              dim: 1,
              temperature,
              avgProbs: ent.avgProbs,
            }),
          ),
        ).toFloat32();
        const gEnt2 = runSync(
          lfqEntropyBackward(z, scalar(wAux * wMin), scalar(-wAux * wMax), { dim: 1, temperature }),
        ).toFloat32();
        // Same gradient with pbar recomputed instead of passed (the fp32 pbar rounding is amplified by
        // the cancellation in sum_c P(c) (bit_j - p1_j) G(c)).
        expect(relErr(gEnt2, gEnt)).toBeLessThan(1e-4);
        const gCom = runSync(lfqCommitmentBackward(z, scalar(wCommit))).toFloat32();
        const g = gEnt.map((v, i) => v + gCom[i]! + ug[i]!);
        expect(relErr(g, get('x_grad').data as Float32Array)).toBeLessThan(1e-3);
        // The entropy part alone, against the float64 full-softmax computation on the fixture's own
        // input (the fixture's x_grad is dominated by the upstream term, so its fp32 entropy part is
        // only good to a few percent; the float64 one is exact).
        const d = x.shape[1]!;
        const S = x.shape.slice(2).reduce((a, b) => a * b, 1);
        const rows = rowsOf(x.data as Float32Array, x.shape);
        const ent64 = entropyRef(rows, temperature, wAux * wMin, -wAux * wMax);
        const xd = x.data as Float32Array;
        const entGrad64 = new Float64Array(xd.length);
        rows.forEach((_, n) => {
          const [b, s] = [Math.floor(n / S), n % S];
          for (let j = 0; j < d; ++j) entGrad64[(b * d + j) * S + s] = ent64.grad[n]![j]!;
        });
        expect(Math.abs(ps - ent64.ps) / ent64.ps).toBeLessThan(1e-5);
        expect(Math.abs(cb - ent64.cb) / ent64.cb).toBeLessThan(1e-5);
        // The kernel sums 2^d float32 terms that largely cancel, so 1e-4 is about its precision here
        // (it is the same whether avg_probs is passed or recomputed).
        expect(relErr(gEnt, entGrad64)).toBeLessThan(5e-4);
      });
    }
  }
});

describe('lfq_quantize / indices / factorization', () => {
  it('matches a JS reference on random inputs with zeros, odd sizes and non-contiguous views', () => {
    const rng = new Rng();
    for (const [B, d, H, W] of [
      [1, 1, 1, 1],
      [2, 7, 3, 5],
      [3, 18, 1, 7],
      [1, 33, 2, 2],
    ] as const) {
      const n = B * d * H * W;
      const data = rng.randn(n);
      for (let i = 0; i < n; i += 3) data[i] = 0; // exact zeros quantize to -1
      // Build z as a permuted view of a [B, H, W, d] buffer.
      const bhwd = new Float32Array(n);
      for (let b = 0; b < B; ++b)
        for (let j = 0; j < d; ++j)
          for (let s = 0; s < H * W; ++s) bhwd[(b * H * W + s) * d + j] = data[(b * d + j) * H * W + s]!;
      const z = Tensor.from(bhwd, [B, H, W, d]).permute(0, 3, 1, 2);
      expect(z.native.isContiguous).toBe(d === 1 || H * W === 1);
      const { codes, indices } = withPoison(() => runSync(lfqQuantize(z, { dim: 1 })));
      const c = codes.toFloat32();
      const idx = ints(indices);
      expect(indices.shape).toEqual([B, H, W]);
      for (let b = 0; b < B; ++b)
        for (let s = 0; s < H * W; ++s) {
          let v = 0n;
          for (let j = 0; j < d; ++j) {
            const pos = data[(b * d + j) * H * W + s]! > 0;
            expect(c[(b * d + j) * H * W + s], seedInfo(rng.seed)).toBe(pos ? 1 : -1);
            if (pos) v |= 1n << BigInt(j);
          }
          expect(idx[b * H * W + s], seedInfo(rng.seed)).toBe(Number(v));
        }
      expect(Array.from(runSync(lfqIndicesToCodes(indices, { bits: d, dim: 1 })).toFloat32())).toEqual(Array.from(c));
      // Rows layout (dim -1).
      const rowsIdx = ints(runSync(lfqQuantize(Tensor.from(bhwd, [B * H * W, d]), { dim: -1 })).indices);
      expect(rowsIdx).toEqual(idx);
      if (d >= 2) {
        const b0 = Math.floor(d / 3) || 1;
        const { pre, post } = runSync(lfqFactorize(indices, [b0, d - b0]));
        const p = ints(pre),
          q = ints(post);
        idx.forEach((v, i) => {
          expect(p[i]).toBe(Number(BigInt(v) & ((1n << BigInt(b0)) - 1n)));
          expect(q[i]).toBe(Number(BigInt(v) >> BigInt(b0)));
        });
        expect(ints(runSync(lfqUnfactorize(pre, post, [b0, d - b0])))).toEqual(idx);
      }
    }
  });
  it('rejects bad arguments', () => {
    const idx = Tensor.from(new BigInt64Array([5n, 1024n]), [2]);
    expect(() => runSync(lfqFactorize(idx, [5, 5]))).toThrow(RangeError);
    expect(() => runSync(lfqIndicesToCodes(idx, { bits: 10, dim: -1 }))).toThrow(/lfq_indices_to_codes/);
    expect(() => runSync(lfqQuantize(Tensor.from(new Float32Array(4), [2, 2]), { dim: 2 }))).toThrow(RangeError);
    expect(() => op('lfq_quantize', [Tensor.from(new Int32Array(4), [2, 2])])).toThrow(TypeError);
    expect(() => runSync(lfqEntropy(Tensor.from(new Float32Array(50), [2, 25])))).toThrow(/lfq_entropy/);
  });
});

describe('lfq_entropy against a float64 full-softmax reference', () => {
  for (const [N, d, T] of [
    [1, 1, 0.01],
    [7, 3, 1.0],
    [33, 7, 0.5],
    [257, 10, 0.01],
    [5, 9, 2.0],
    [19, 11, 0.05],
  ] as const) {
    it(`N=${N} d=${d} T=${T}: values, avg_probs and gradients`, () => {
      const rng = new Rng();
      const scale = T >= 0.5 ? 0.7 : 0.02;
      const zd = rng.randn(N * d, scale);
      // Non-contiguous: z is the transpose view of a [d, N] buffer.
      const dn = new Float32Array(N * d);
      for (let n = 0; n < N; ++n) for (let j = 0; j < d; ++j) dn[j * N + n] = zd[n * d + j]!;
      const z = Tensor.from(dn, [d, N]).permute(1, 0);
      const rows = Array.from({ length: N }, (_, n) => Array.from(zd.subarray(n * d, n * d + d)));
      const gps = 0.7;
      const gcb = -1.3;
      const ref = entropyRef(rows, T, gps, gcb);
      const ent = withPoison(() => runSync(lfqEntropy(z, { temperature: T })));
      const info = seedInfo(rng.seed);
      expect(Math.abs(ent.perSample.item() - ref.ps), info).toBeLessThan(1e-5 * Math.max(1, ref.ps));
      expect(Math.abs(ent.codebook.item() - ref.cb), info).toBeLessThan(1e-5 * Math.max(1, ref.cb));
      expect(maxAbsErr(ent.avgProbs.toFloat32(), ref.pbar), info).toBeLessThan(1e-6);
      const g = withPoison(() =>
        runSync(lfqEntropyBackward(z, scalar(gps), scalar(gcb), { temperature: T })),
      ).toFloat32();
      expect(allFinite(g)).toBe(true);
      expect(relErr(g, ref.grad.flat()), info).toBeLessThan(1e-4);
      // Finite differences of the float64 reference loss.
      const f = (x: Float32Array) => {
        const r = entropyRef(
          Array.from({ length: N }, (_, n) => Array.from(x.subarray(n * d, n * d + d))),
          T,
          0,
          0,
        );
        return gps * r.ps + gcb * r.cb;
      };
      if (N * (1 << d) <= 40000) {
        const fd = finiteDiffCheck(zd, f, g, { eps: T * 1e-3, count: 12, rng });
        expect(fd.maxRel, `${info} worst ${JSON.stringify(fd.worst)}`).toBeLessThan(1e-2);
      }
    });
  }
  it('d = 18 against a float64 factorized reference (2^18 codes, small N)', () => {
    const rng = new Rng();
    const N = 6;
    const d = 18;
    const zd = rng.randn(N * d, 0.01);
    const T = 0.01;
    // pbar by brute force over the 2^18 codes, float64.
    const p1 = Array.from({ length: N }, (_, n) =>
      Array.from({ length: d }, (_, j) => 1 / (1 + Math.exp((-4 * zd[n * d + j]!) / T))),
    );
    const pbar = new Float64Array(1 << d);
    for (let n = 0; n < N; ++n)
      for (let c = 0; c < 1 << d; ++c) {
        let p = 1;
        for (let j = 0; j < d; ++j) p *= (c >> j) & 1 ? p1[n]![j]! : 1 - p1[n]![j]!;
        pbar[c]! += p / N;
      }
    let cb = 0;
    for (const v of pbar) cb -= v * Math.log(v + 1e-5);
    let ps = 0;
    for (let n = 0; n < N; ++n)
      for (let j = 0; j < d; ++j) {
        const p = p1[n]![j]!;
        if (p > 0 && p < 1) ps -= (p * Math.log(p) + (1 - p) * Math.log(1 - p)) / N;
      }
    const ent = runSync(lfqEntropy(Tensor.from(zd, [N, d])));
    expect(Math.abs(ent.codebook.item() - cb) / cb, seedInfo(rng.seed)).toBeLessThan(1e-5);
    expect(Math.abs(ent.perSample.item() - ps) / Math.max(ps, 1e-3), seedInfo(rng.seed)).toBeLessThan(1e-5);
  });
});

describe('lfq_commitment', () => {
  it('matches float64 JS and finite differences', () => {
    const rng = new Rng();
    // |z| >= 0.01: the code sign(z) jumps at 0, and the step (1e-3) must not cross it.
    const zd = Float32Array.from(rng.randn(3 * 5 * 7), (v) => (Math.abs(v) < 0.01 ? Math.sign(v || 1) * 0.5 : v));
    const z = Tensor.from(zd, [3, 5, 7]);
    const f = (x: Float32Array) => x.reduce((s, v) => s + (v - (v > 0 ? 1 : -1)) ** 2, 0) / x.length;
    expect(Math.abs(op1('lfq_commitment', [z]).item() - f(zd))).toBeLessThan(1e-6);
    const g = withPoison(() => op1('lfq_commitment_backward', [z, scalar(1)])).toFloat32();
    // Away from 0 the loss is quadratic in each z, so central differences are exact up to float64
    // rounding; what remains is the float32 rounding of the analytic gradient (~6e-8 relative).
    const fd = finiteDiffCheck(zd, f, g, { eps: 1e-3, rng });
    expect(fd.maxRel, seedInfo(rng.seed)).toBeLessThan(1e-5);
  });
});

describe.skipIf(!addon.deviceAvailable('cuda').available)('lfq CUDA vs CPU', () => {
  it('lfq_quantize, lfq_entropy and lfq_entropy_backward agree', () => {
    const rng = new Rng();
    for (const [N, d] of [
      [37, 18],
      [1024, 18],
      [5, 10],
    ] as const) {
      const z = rng.tensor([N, d], 0.02);
      const zc = z.to('cuda');
      const q = op('lfq_quantize', [z], { dim: -1 });
      const qc = op('lfq_quantize', [zc], { dim: -1 });
      expect(Array.from(qc[0]!.to('cpu').toFloat32())).toEqual(Array.from(q[0]!.toFloat32()));
      expect(ints(qc[1]!.to('cpu'))).toEqual(ints(q[1]!));
      const e = op('lfq_entropy', [z]);
      const ec = op('lfq_entropy', [zc]);
      for (let i = 0; i < 2; ++i)
        expect(Math.abs(ec[i]!.to('cpu').item() - e[i]!.item())).toBeLessThan(
          1e-4 * Math.max(1, Math.abs(e[i]!.item())),
        );
      expect(relErr(ec[2]!.to('cpu').toFloat32(), e[2]!.toFloat32())).toBeLessThan(1e-4);
      const g = op1('lfq_entropy_backward', [z, scalar(1), scalar(-1)]);
      const gc = op1('lfq_entropy_backward', [zc, scalar(1).to('cuda'), scalar(-1).to('cuda')]);
      expect(relErr(gc.to('cpu').toFloat32(), g.toFloat32()), seedInfo(rng.seed)).toBeLessThan(1e-4);
    }
  });
});
