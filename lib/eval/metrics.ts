/**
 * Image reconstruction metrics (PSNR, SSIM) and codebook statistics, computed in float64 on the
 * host. Images are float32 [B, C, H, W] tensors, by default in [-1, 1].
 */
import { checkKeys, optionKeys, typeError } from '../errors.js';
import { Tensor } from '../tensor.js';

/** A batch of images: a float32 Tensor [B, C, H, W]. */
export type ImageBatch = Tensor;

/** Per-image values and their mean. */
export interface PerImage {
  /** One value per image, in batch order. */
  values: number[];
  /** The mean of `values` (Infinity if any PSNR is infinite). */
  mean: number;
}

/** Options of {@link psnr} / {@link ssim}. */
export interface MetricOptions {
  /** max - min of the value range; default 2 (images in [-1, 1]). */
  dataRange?: number;
}
const METRIC_KEYS = optionKeys<MetricOptions>()(['dataRange']);

function imagePair(
  a: unknown,
  b: unknown,
): { x: Float64Array; y: Float64Array; shape: [number, number, number, number] } {
  if (!(a instanceof Tensor)) typeError('a', 'a float32 Tensor [B, C, H, W]', a);
  if (!(b instanceof Tensor)) typeError('b', 'a float32 Tensor [B, C, H, W]', b);
  for (const [n, t] of [
    ['a', a],
    ['b', b],
  ] as const)
    if (t.dtype !== 'float32' || t.shape.length !== 4)
      throw new TypeError(`${n} must be a float32 Tensor [B, C, H, W], got ${t.dtype} [${t.shape.join(', ')}]`);
  if (a.shape.some((s, i) => s !== b.shape[i]))
    throw new RangeError(`a and b must have the same shape, got [${a.shape.join(', ')}] and [${b.shape.join(', ')}]`);
  if (a.numel === 0) throw new RangeError(`a must not be empty, got [${a.shape.join(', ')}]`);
  const toF64 = (t: Tensor) => Float64Array.from(t.toArray<'float32'>());
  return { x: toF64(a), y: toF64(b), shape: a.shape as [number, number, number, number] };
}

function rangeOpt(opts: MetricOptions): number {
  if (opts === null || typeof opts !== 'object') typeError('opts', 'an options object', opts);
  const r = opts.dataRange ?? 2;
  if (typeof r !== 'number' || !Number.isFinite(r) || r <= 0)
    throw new RangeError(`opts.dataRange must be a finite number > 0, got ${String(r)}`);
  return r;
}

function summarize(values: number[]): PerImage {
  return { values, mean: values.reduce((s, v) => s + v, 0) / values.length };
}

/**
 * Peak signal-to-noise ratio per image, 10 log10(dataRange^2 / MSE) with the MSE over all of an
 * image's channels and pixels (Infinity for identical images).
 */
export function psnr(a: ImageBatch, b: ImageBatch, opts: MetricOptions = {}): PerImage {
  checkKeys('psnr options', opts, METRIC_KEYS);
  const range = rangeOpt(opts);
  const { x, y, shape } = imagePair(a, b);
  const B = shape[0];
  const n = x.length / B;
  const values: number[] = [];
  for (let i = 0; i < B; ++i) {
    let se = 0;
    for (let j = i * n; j < (i + 1) * n; ++j) se += (x[j]! - y[j]!) ** 2;
    const mse = se / n;
    values.push(mse === 0 ? Infinity : 10 * Math.log10((range * range) / mse));
  }
  return summarize(values);
}

/** The normalized 1-D Gaussian kernel of radius round-down(truncate * sigma + 0.5). */
function gaussianKernel(sigma: number, truncate: number): Float64Array {
  const r = Math.floor(truncate * sigma + 0.5);
  const k = new Float64Array(2 * r + 1);
  let s = 0;
  for (let i = -r; i <= r; ++i) s += k[i + r] = Math.exp((-0.5 * i * i) / (sigma * sigma));
  for (let i = 0; i < k.length; ++i) k[i]! /= s;
  return k;
}

/**
 * Separable filtering of an H x W plane, computed only at the "valid" positions (the kernel fully
 * inside the image): [H - 2r, W - 2r]. SSIM only averages those, so no border mode is needed.
 */
function filterValid(p: Float64Array, H: number, W: number, k: Float64Array): Float64Array {
  const r = (k.length - 1) / 2;
  const h = H - 2 * r;
  const w = W - 2 * r;
  const tmp = new Float64Array(H * w);
  for (let i = 0; i < H; ++i)
    for (let j = 0; j < w; ++j) {
      let s = 0;
      for (let t = 0; t < k.length; ++t) s += k[t]! * p[i * W + j + t]!;
      tmp[i * w + j] = s;
    }
  const out = new Float64Array(h * w);
  for (let i = 0; i < h; ++i)
    for (let j = 0; j < w; ++j) {
      let s = 0;
      for (let t = 0; t < k.length; ++t) s += k[t]! * tmp[(i + t) * w + j]!;
      out[i * w + j] = s;
    }
  return out;
}

/** Options of {@link ssim}. */
export interface SsimOptions extends MetricOptions {
  /** Gaussian window sigma (default 1.5); the window is truncated at 3.5 sigma (11 taps at 1.5). */
  sigma?: number;
}
const SSIM_KEYS = optionKeys<SsimOptions>()([...METRIC_KEYS, 'sigma']);

/**
 * Structural similarity per image (mean over channels) with a Gaussian window (sigma 1.5,
 * truncated at 3.5 sigma), population (not sample) covariances, K1 = 0.01, K2 = 0.03 and the
 * SSIM map averaged over the positions where the window lies inside the image: the standard
 * setting of Wang et al. (2004). Images must be at least as large as the window.
 */
export function ssim(a: ImageBatch, b: ImageBatch, opts: SsimOptions = {}): PerImage {
  checkKeys('ssim options', opts, SSIM_KEYS);
  const range = rangeOpt(opts);
  const sigma = opts.sigma ?? 1.5;
  if (typeof sigma !== 'number' || !Number.isFinite(sigma) || sigma <= 0)
    throw new RangeError(`opts.sigma must be a finite number > 0, got ${String(sigma)}`);
  const k = gaussianKernel(sigma, 3.5);
  const { x, y, shape } = imagePair(a, b);
  const [B, C, H, W] = shape;
  if (H < k.length || W < k.length)
    throw new RangeError(
      `images must be at least ${k.length}x${k.length} for the SSIM window (sigma ${sigma}), got ${H}x${W}`,
    );
  const c1 = (0.01 * range) ** 2;
  const c2 = (0.03 * range) ** 2;
  const P = H * W;
  const xx = new Float64Array(P);
  const yy = new Float64Array(P);
  const xy = new Float64Array(P);
  const values: number[] = [];
  for (let bi = 0; bi < B; ++bi) {
    let total = 0;
    for (let ci = 0; ci < C; ++ci) {
      const off = (bi * C + ci) * P;
      const px = x.subarray(off, off + P);
      const py = y.subarray(off, off + P);
      for (let i = 0; i < P; ++i) {
        xx[i] = px[i]! * px[i]!;
        yy[i] = py[i]! * py[i]!;
        xy[i] = px[i]! * py[i]!;
      }
      const ux = filterValid(px, H, W, k);
      const uy = filterValid(py, H, W, k);
      const uxx = filterValid(xx, H, W, k);
      const uyy = filterValid(yy, H, W, k);
      const uxy = filterValid(xy, H, W, k);
      let s = 0;
      for (let i = 0; i < ux.length; ++i) {
        const mx = ux[i]!;
        const my = uy[i]!;
        const vx = uxx[i]! - mx * mx;
        const vy = uyy[i]! - my * my;
        const vxy = uxy[i]! - mx * my;
        s += ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2));
      }
      total += s / ux.length;
    }
    values.push(total / C);
  }
  return summarize(values);
}

/** Codebook statistics of a set of LFQ indices. */
export interface CodebookUsage {
  /** Number of distinct codes that occur. */
  used: number;
  /** used / 2^bits. */
  fraction: number;
  /** exp of the entropy (nats) of the code histogram: the effective number of codes. */
  perplexity: number;
  /** Number of indices counted. */
  count: number;
}

/**
 * Codebook usage of LFQ indices (an int64/int32 Tensor of any shape, or a BigInt64Array /
 * Int32Array) for a codebook of 2^bits codes. Every index must lie in [0, 2^bits).
 */
export function codebookUsage(indices: BigInt64Array | Int32Array | Tensor, bits: number): CodebookUsage {
  if (typeof bits !== 'number' || !Number.isInteger(bits) || bits < 1 || bits > 30)
    throw new RangeError(`bits must be an integer in [1, 30], got ${String(bits)}`);
  let arr: BigInt64Array | Int32Array;
  if (indices instanceof Tensor) {
    if (indices.dtype !== 'int64' && indices.dtype !== 'int32')
      throw new TypeError(`indices must be an int64 or int32 Tensor, got ${indices.dtype}`);
    arr = indices.toArray() as BigInt64Array | Int32Array;
  } else if (indices instanceof BigInt64Array || indices instanceof Int32Array) {
    arr = indices;
  } else {
    typeError('indices', 'a BigInt64Array, Int32Array or an integer Tensor', indices);
  }
  if (arr.length === 0) throw new RangeError('indices must not be empty');
  const size = 2 ** bits;
  const counts = new Map<number, number>();
  for (let i = 0; i < arr.length; ++i) {
    const v = Number(arr[i]!);
    if (!(v >= 0 && v < size)) throw new RangeError(`indices[${i}] must be in [0, ${size}) for ${bits} bits, got ${v}`);
    counts.set(v, (counts.get(v) ?? 0) + 1);
  }
  let h = 0;
  for (const c of counts.values()) {
    const p = c / arr.length;
    h -= p * Math.log(p);
  }
  return { used: counts.size, fraction: counts.size / size, perplexity: Math.exp(h), count: arr.length };
}
