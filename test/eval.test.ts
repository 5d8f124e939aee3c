// Evaluation: PSNR / SSIM / codebook usage against float64 references (SSIM against skimage when
// available), the linear probe, evaluateTokenizer and the `mergevq eval` command.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { codebookUsage, psnr, ssim } from '../lib/eval/metrics.js';
import { trainLinearProbe, trainLinearProbeAsync } from '../lib/eval/probe.js';
import { Tensor } from '../lib/tensor.js';
import { Rng, seedInfo } from './helpers.js';

const PY = '/usr/bin/python3';
const hasSkimage = existsSync(PY) && spawnSync(PY, ['-c', 'import skimage.metrics'], { encoding: 'utf8' }).status === 0;

/** Random images in [-1, 1]: b = a + noise (clamped), so SSIM lands away from 0 and 1. */
function imagePair(rng: Rng, shape: [number, number, number, number], noise: number): [Float32Array, Float32Array] {
  const n = shape.reduce((x, y) => x * y, 1);
  const a = new Float32Array(n);
  const b = new Float32Array(n);
  for (let i = 0; i < n; ++i) {
    a[i] = rng.uniform(-1, 1);
    b[i] = Math.max(-1, Math.min(1, a[i]! + noise * rng.normal()));
  }
  return [a, b];
}

describe('psnr', () => {
  it('matches the float64 formula per image and in the mean', () => {
    const rng = new Rng();
    const shape: [number, number, number, number] = [3, 2, 9, 7];
    const [a, b] = imagePair(rng, shape, 0.2);
    const got = psnr(Tensor.from(a, shape), Tensor.from(b, shape));
    const n = 2 * 9 * 7;
    const want: number[] = [];
    for (let i = 0; i < 3; ++i) {
      let se = 0;
      for (let j = 0; j < n; ++j) se += (a[i * n + j]! - b[i * n + j]!) ** 2;
      want.push(10 * Math.log10(4 / (se / n)));
    }
    want.forEach((w, i) => expect(Math.abs(got.values[i]! - w), seedInfo(rng.seed)).toBeLessThan(1e-9 * Math.abs(w)));
    expect(got.mean).toBeCloseTo((want[0]! + want[1]! + want[2]!) / 3, 9);
    const r1 = psnr(Tensor.from(a, shape), Tensor.from(b, shape), { dataRange: 1 });
    expect(r1.values[0]).toBeCloseTo(want[0]! - 20 * Math.log10(2), 9);
  });
  it('is Infinity for identical images; rejects bad arguments', () => {
    const t = new Rng().tensor([2, 1, 4, 4]);
    expect(psnr(t, t).values).toEqual([Infinity, Infinity]);
    expect(psnr(t, t).mean).toBe(Infinity);
    expect(() => psnr(t, new Rng().tensor([2, 1, 4, 5]))).toThrow(RangeError);
    expect(() => psnr(t, new Rng().tensor([2, 16]))).toThrow(TypeError);
    expect(() => psnr(t, {} as Tensor)).toThrow(TypeError);
    expect(() => psnr(t, t, { dataRange: 0 })).toThrow(/dataRange/);
  });
});

describe('ssim', () => {
  it.skipIf(!hasSkimage)('matches skimage structural_similarity (gaussian, sigma 1.5, population covariance, data_range 2)', () => {
    const rng = new Rng();
    const shape: [number, number, number, number] = [3, 2, 16, 13];
    const noises = [0.05, 0.3, 1.0];
    const a = new Float32Array(3 * 2 * 16 * 13);
    const b = new Float32Array(a.length);
    const per = a.length / 3;
    noises.forEach((nz, i) => {
      const [x, y] = imagePair(rng, [1, 2, 16, 13], nz);
      a.set(x, i * per);
      b.set(y, i * per);
    });
    const got = ssim(Tensor.from(a, shape), Tensor.from(b, shape));
    const script = `
import json, sys, numpy as np
from skimage.metrics import structural_similarity
d = json.load(sys.stdin)
a = np.array(d['a'], dtype=np.float32).astype(np.float64).reshape(d['shape'])
b = np.array(d['b'], dtype=np.float32).astype(np.float64).reshape(d['shape'])
out = [float(structural_similarity(a[i], b[i], gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=2, channel_axis=0)) for i in range(a.shape[0])]
print(json.dumps(out))`;
    const r = spawnSync(PY, ['-c', script], { input: JSON.stringify({ a: Array.from(a), b: Array.from(b), shape }), encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const want = JSON.parse(r.stdout) as number[];
    expect(want[0]!).toBeGreaterThan(want[2]!);
    want.forEach((w, i) => expect(Math.abs(got.values[i]! - w), `image ${i}: ${got.values[i]} vs ${w}; ${seedInfo(rng.seed)}`).toBeLessThan(1e-4));
  });
  it.runIf(!hasSkimage)('SKIPPED the skimage comparison: /usr/bin/python3 has no skimage (apt-get install -y python3-skimage)', () => {
    console.warn('eval.test: skimage missing, SSIM reference comparison skipped');
  });
  it('is 1 for identical images, decreases with noise, is symmetric; rejects bad arguments', () => {
    const rng = new Rng();
    const [a, b] = imagePair(rng, [2, 3, 12, 12], 0.3);
    const ta = Tensor.from(a, [2, 3, 12, 12]);
    const tb = Tensor.from(b, [2, 3, 12, 12]);
    for (const v of ssim(ta, ta).values) expect(v).toBeCloseTo(1, 12);
    const s = ssim(ta, tb);
    for (const v of s.values) expect(v).toBeLessThan(0.99);
    ssim(tb, ta).values.forEach((v, i) => expect(v).toBeCloseTo(s.values[i]!, 12));
    expect(() => ssim(Tensor.from(new Float32Array(100), [1, 1, 10, 10]), Tensor.from(new Float32Array(100), [1, 1, 10, 10]))).toThrow(/at least 11x11/);
    expect(() => ssim(ta, ta, { sigma: -1 })).toThrow(/sigma/);
    expect(() => ssim(ta, Tensor.from(new Int32Array(2 * 3 * 144), [2, 3, 12, 12]))).toThrow(TypeError);
  });
});

describe('codebookUsage', () => {
  it('counts used codes and the histogram perplexity', () => {
    const rng = new Rng();
    const idx = new BigInt64Array(200);
    for (let i = 0; i < idx.length; ++i) idx[i] = BigInt(rng.int(5) * 3);
    const counts = new Map<bigint, number>();
    for (const v of idx) counts.set(v, (counts.get(v) ?? 0) + 1);
    let h = 0;
    for (const c of counts.values()) h -= (c / 200) * Math.log(c / 200);
    const u = codebookUsage(Tensor.from(idx, [10, 20]), 4);
    expect(u.used).toBe(counts.size);
    expect(u.fraction).toBe(counts.size / 16);
    expect(u.perplexity).toBeCloseTo(Math.exp(h), 12);
    expect(u.count).toBe(200);
    expect(codebookUsage(new BigInt64Array([7n, 7n, 7n]), 3)).toMatchObject({ used: 1, perplexity: 1 });
    expect(codebookUsage(new Int32Array([0, 1, 2, 3]), 2).perplexity).toBeCloseTo(4, 12);
  });
  it('rejects out-of-range indices and bad arguments', () => {
    expect(() => codebookUsage(new BigInt64Array([0n, 8n]), 3)).toThrow(/indices\[1\]/);
    expect(() => codebookUsage(new BigInt64Array([-1n]), 3)).toThrow(RangeError);
    expect(() => codebookUsage(new BigInt64Array([0n]), 0)).toThrow(/bits/);
    expect(() => codebookUsage(new BigInt64Array(0), 3)).toThrow(/empty/);
    expect(() => codebookUsage(Tensor.from(new Float32Array(2), [2]), 3)).toThrow(TypeError);
    expect(() => codebookUsage([1, 2] as unknown as Int32Array, 3)).toThrow(TypeError);
  });
});

/** Gaussian clusters around random class means (separated by ~`gap` within-class stds), with an offset and scale per dimension the probe must standardize away. */
function clusters(rng: Rng, n: number, d: number, k: number, gap: number, means?: Float64Array[]) {
  const mu = means ?? Array.from({ length: k }, () => Float64Array.from({ length: d }, () => rng.normal() * gap));
  const x = new Float32Array(n * d);
  const y = new Int32Array(n);
  for (let i = 0; i < n; ++i) {
    y[i] = i % k;
    for (let j = 0; j < d; ++j) x[i * d + j] = (mu[y[i]!]![j]! + rng.normal()) * (1 + j) + 10 * j;
  }
  return { x, y, mu };
}

describe('linear probe', () => {
  it('separates Gaussian clusters (> 95% test accuracy), deterministically from the seed', async () => {
    const rng = new Rng();
    const D = 8;
    const K = 4;
    const train = clusters(rng, 400, D, K, 2.5);
    const test = clusters(rng, 400, D, K, 2.5, train.mu);
    const opts = { classes: K, epochs: 15, lr: 0.05, weightDecay: 1e-4, batchSize: 64, seed: 7 };
    const probe = trainLinearProbe(train.x, train.y, opts);
    const acc = probe.accuracy(test.x, test.y);
    expect(acc, seedInfo(rng.seed)).toBeGreaterThan(0.95);
    expect(probe.losses.length).toBe(15);
    expect(probe.losses[14]!).toBeLessThan(probe.losses[0]!);
    expect(probe.predict(test.x).length).toBe(400);
    const again = await trainLinearProbeAsync(train.x, train.y, opts);
    expect(Array.from(again.weight)).toEqual(Array.from(probe.weight));
    expect(Array.from(again.bias)).toEqual(Array.from(probe.bias));
    const other = trainLinearProbe(train.x, train.y, { ...opts, seed: 8 });
    expect(Array.from(other.weight)).not.toEqual(Array.from(probe.weight));
    // Labels carry the signal: shuffled labels give chance-level test accuracy.
    const shuffled = Int32Array.from(train.y, (_, i) => train.y[(i * 7 + 3) % 400]! === train.y[i]! ? (train.y[i]! + 1) % K : train.y[(i * 7 + 3) % 400]!);
    expect(trainLinearProbe(train.x, shuffled, opts).accuracy(test.x, test.y)).toBeLessThan(0.6);
  });
  it('rejects bad arguments', () => {
    const x = new Float32Array(12);
    expect(() => trainLinearProbe(x, [0, 1, 2], { classes: 2 })).toThrow(/labels\[2\]/);
    expect(() => trainLinearProbe(x, [0, 1, 1, 0, 1], { classes: 2 })).toThrow(/features must hold/);
    expect(() => trainLinearProbe([1, 2] as unknown as Float32Array, [0, 1], { classes: 2 })).toThrow(TypeError);
    expect(() => trainLinearProbe(x, [0, 1, 0], { classes: 1 })).toThrow(/classes/);
    expect(() => trainLinearProbe(x, [0, 1, 0], { classes: 2, lr: -1 })).toThrow(/lr/);
    const p = trainLinearProbe(x, [0, 1, 0], { classes: 2, epochs: 1 });
    expect(() => p.predict(new Float32Array(5))).toThrow(/M \* 4/);
    expect(() => p.accuracy(new Float32Array(8), [0])).toThrow(/labels must hold 2/);
  });
});
