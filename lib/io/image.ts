/**
 * Images in and out (sharp): PNG/JPEG/WebP files or buffers -> resized (shorter side to R) and
 * center-cropped RGB tensors in [-1, 1], NCHW; tensors -> PNG/JPEG/WebP; grids of results.
 */
import sharp from 'sharp';
import { MergeVQError, checkInt, checkKeys, optionKeys, typeError } from '../errors.js';
import { Tensor } from '../tensor.js';

export type ImageInput = string | Buffer | Uint8Array;
export type ImageFormat = 'png' | 'jpeg' | 'webp';

/** Options of {@link encodeImage}. */
export interface EncodeImageOptions {
  /** Which image of the batch (default 0). */
  index?: number;
  /** 'png' (default), 'jpeg' or 'webp'. */
  format?: ImageFormat;
}
const ENCODE_IMAGE_KEYS = optionKeys<EncodeImageOptions>()(['index', 'format']);
/** Options of {@link imageGrid}. */
export interface ImageGridOptions {
  /** 'png' (default), 'jpeg' or 'webp'. */
  format?: ImageFormat;
  /** White pixels between and around the tiles (default 2). */
  pad?: number;
}
const IMAGE_GRID_KEYS = optionKeys<ImageGridOptions>()(['format', 'pad']);
/** Options of {@link sourceMapTensor}. */
export interface SourceMapOptions {
  /** Weight of the group colors over the image (default 0.55). */
  alpha?: number;
}
const SOURCE_MAP_KEYS = optionKeys<SourceMapOptions>()(['alpha']);
/** Options of {@link sourceMapImage}. */
export interface SourceMapImageOptions extends SourceMapOptions {
  /** Which image of the batch (default 0). */
  index?: number;
}
const SOURCE_MAP_IMAGE_KEYS = optionKeys<SourceMapImageOptions>()([...SOURCE_MAP_KEYS, 'index']);

async function decodeRgb(input: ImageInput, size: number): Promise<Uint8Array> {
  if (typeof input !== 'string' && !(input instanceof Uint8Array))
    typeError('image', 'a file path or an encoded image Buffer', input);
  try {
    const { data } = await sharp(input)
      .rotate()
      .removeAlpha()
      .toColourspace('srgb')
      .resize(size, size, { fit: 'cover', position: 'centre', kernel: 'lanczos3' })
      .raw()
      .toBuffer({ resolveWithObject: true });
    return data;
  } catch (err) {
    const where = typeof input === 'string' ? input : 'image buffer';
    throw new MergeVQError(`${where}: cannot decode image (${(err as Error).message})`, 'ERR_BAD_IMAGE');
  }
}

/**
 * Loads images into one float32 tensor [B, 3, size, size] scaled to [-1, 1]: each image's shorter
 * side is resized to `size` (Lanczos) and the center is cropped.
 */
export async function loadImages(inputs: readonly ImageInput[], size: number): Promise<Tensor> {
  if (!Array.isArray(inputs) || inputs.length === 0)
    typeError('inputs', 'a non-empty array of image paths or buffers', inputs);
  checkInt('size', size, 1, 16384);
  const B = inputs.length;
  const hw = size * size;
  const out = new Float32Array(B * 3 * hw);
  const decoded = await Promise.all(inputs.map((i) => decodeRgb(i, size)));
  decoded.forEach((rgb, b) => {
    for (let p = 0; p < hw; ++p) for (let c = 0; c < 3; ++c) out[(b * 3 + c) * hw + p] = rgb[p * 3 + c]! / 127.5 - 1;
  });
  return Tensor.from(out, [B, 3, size, size]);
}

/** One image as [1, 3, size, size]. */
export async function loadImage(input: ImageInput, size: number): Promise<Tensor> {
  return loadImages([input], size);
}

/** Converts image b of a [B, 3, H, W] tensor in [-1, 1] to interleaved RGB bytes (clamped). */
export function toRgbBytes(images: Tensor, b = 0): { data: Uint8Array; width: number; height: number } {
  if (!(images instanceof Tensor) || images.ndim !== 4 || (images.shape[1] !== 3 && images.shape[1] !== 1))
    typeError('images', 'a float32 Tensor [B, 3, H, W] (or [B, 1, H, W], drawn as gray)', images);
  const [, C, H, W] = images.shape as [number, number, number, number];
  checkInt('b', b, 0, images.shape[0]! - 1);
  const all = images.toFloat32();
  const hw = H * W;
  const data = new Uint8Array(hw * 3);
  for (let p = 0; p < hw; ++p)
    for (let c = 0; c < 3; ++c) {
      const v = all[(b * C + (C === 1 ? 0 : c)) * hw + p]!;
      data[p * 3 + c] = Math.max(0, Math.min(255, Math.round((Math.max(-1, Math.min(1, v)) + 1) * 127.5)));
    }
  return { data, width: W, height: H };
}

async function encode(data: Uint8Array, width: number, height: number, format: ImageFormat): Promise<Buffer> {
  const img = sharp(Buffer.from(data.buffer, data.byteOffset, data.byteLength), {
    raw: { width, height, channels: 3 },
  });
  if (format === 'png') return img.png().toBuffer();
  if (format === 'jpeg') return img.jpeg({ quality: 95 }).toBuffer();
  if (format === 'webp') return img.webp({ quality: 95 }).toBuffer();
  return typeError('format', "'png', 'jpeg' or 'webp'", format);
}

/** Encodes image b of a [B, 3, H, W] tensor in [-1, 1] as PNG/JPEG/WebP. */
export async function encodeImage(images: Tensor, opts: EncodeImageOptions = {}): Promise<Buffer> {
  checkKeys('encodeImage options', opts, ENCODE_IMAGE_KEYS);
  const { data, width, height } = toRgbBytes(images, opts.index ?? 0);
  return encode(data, width, height, opts.format ?? 'png');
}

/** Tiles rows of [B, 3, H, W] tensors (e.g. originals and reconstructions) into one image. */
export async function imageGrid(rows: readonly Tensor[], opts: ImageGridOptions = {}): Promise<Buffer> {
  checkKeys('imageGrid options', opts, IMAGE_GRID_KEYS);
  if (!Array.isArray(rows) || rows.length === 0) typeError('rows', 'a non-empty array of [B, 3, H, W] tensors', rows);
  const pad = opts.pad ?? 2;
  const [B, , H, W] = rows[0]!.shape as [number, number, number, number];
  for (const r of rows)
    if (
      r.ndim !== 4 ||
      r.shape[0] !== B ||
      r.shape[2] !== H ||
      r.shape[3] !== W ||
      (r.shape[1] !== 1 && r.shape[1] !== 3)
    )
      throw new RangeError(`imageGrid: every row must be [${B}, 3 or 1, ${H}, ${W}], got [${r.shape.join(', ')}]`);
  const width = B * W + (B + 1) * pad;
  const height = rows.length * H + (rows.length + 1) * pad;
  const data = new Uint8Array(width * height * 3).fill(255);
  rows.forEach((r, ri) => {
    for (let b = 0; b < B; ++b) {
      const { data: px } = toRgbBytes(r, b);
      const x0 = pad + b * (W + pad);
      const y0 = pad + ri * (H + pad);
      for (let y = 0; y < H; ++y) data.set(px.subarray(y * W * 3, (y + 1) * W * 3), ((y0 + y) * width + x0) * 3);
    }
  });
  return encode(data, width, height, opts.format ?? 'png');
}

/** Image b of `image` with every full-grid cell painted by its merge group, as RGB bytes. */
function sourceMapPixels(
  image: Tensor,
  source: Tensor,
  b: number,
  alpha: number,
): { data: Uint8Array; width: number; height: number } {
  const { data, width, height } = toRgbBytes(image, b);
  const L = source.shape[1]!;
  const g = Math.round(Math.sqrt(L));
  const map = source.toArray<'int64'>();
  const cellW = width / g;
  const cellH = height / g;
  const color = (k: number): [number, number, number] => {
    const h = ((k * 0.618033988749895) % 1) * 6;
    const i = Math.floor(h);
    const f = h - i;
    const v = [255, Math.round(255 * (1 - f)), 60, 60, Math.round(60 + 195 * f), 255];
    const pick = (o: number) => v[(i + o) % 6]!;
    return [pick(0), pick(4), pick(2)];
  };
  for (let y = 0; y < height; ++y)
    for (let x = 0; x < width; ++x) {
      const cell = Math.min(g - 1, Math.floor(y / cellH)) * g + Math.min(g - 1, Math.floor(x / cellW));
      const k = Number(map[b * L + cell]!);
      const c = color(k);
      const onEdge =
        (x > 0 && Math.floor(x / cellW) !== Math.floor((x - 1) / cellW) && Number(map[b * L + cell - 1]!) !== k) ||
        (y > 0 &&
          Math.floor(y / cellH) !== Math.floor((y - 1) / cellH) &&
          cell >= g &&
          Number(map[b * L + cell - g]!) !== k);
      for (let ch = 0; ch < 3; ++ch) {
        const p = (y * width + x) * 3 + ch;
        data[p] = onEdge ? 255 : Math.round((1 - alpha) * data[p]! + alpha * c[ch]!);
      }
    }
  return { data, width, height };
}

function checkSourceMap(image: Tensor, source: Tensor): void {
  if (!(image instanceof Tensor) || image.ndim !== 4) typeError('image', 'a [B, C, H, W] Tensor', image);
  if (!(source instanceof Tensor) || source.ndim !== 2 || source.shape[0] !== image.shape[0])
    typeError('source', `an int64 [${image.shape[0]}, L] Tensor`, source);
  const g = Math.round(Math.sqrt(source.shape[1]!));
  if (g * g !== source.shape[1]) throw new RangeError(`source: L must be a square, got ${source.shape[1]}`);
}

/**
 * The picture the paper uses to explain merging: the image with every full-grid cell painted by
 * its merge group (cells of one kept token share a color), blended over the image.
 */
export async function sourceMapImage(image: Tensor, source: Tensor, opts: SourceMapImageOptions = {}): Promise<Buffer> {
  checkKeys('sourceMapImage options', opts, SOURCE_MAP_IMAGE_KEYS);
  checkSourceMap(image, source);
  const { data, width, height } = sourceMapPixels(image, source, opts.index ?? 0, opts.alpha ?? 0.55);
  return encode(data, width, height, 'png');
}

/** {@link sourceMapImage} for every image of the batch, as a [B, 3, H, W] tensor in [-1, 1] (for {@link imageGrid}). */
export function sourceMapTensor(images: Tensor, source: Tensor, opts: SourceMapOptions = {}): Tensor {
  checkKeys('sourceMapTensor options', opts, SOURCE_MAP_KEYS);
  checkSourceMap(images, source);
  const [B, , H, W] = images.shape as [number, number, number, number];
  const out = new Float32Array(B * 3 * H * W);
  for (let b = 0; b < B; ++b) {
    const { data } = sourceMapPixels(images, source, b, opts.alpha ?? 0.55);
    for (let p = 0; p < H * W; ++p)
      for (let c = 0; c < 3; ++c) out[(b * 3 + c) * H * W + p] = data[p * 3 + c]! / 127.5 - 1;
  }
  return Tensor.from(out, [B, 3, H, W]);
}

/** Nearest-neighbour upscaling of [B, C, H, W] images by an integer factor (for viewing small images). */
export function upscaleNearest(images: Tensor, factor: number): Tensor {
  if (!(images instanceof Tensor) || images.ndim !== 4) typeError('images', 'a [B, C, H, W] Tensor', images);
  if (!Number.isInteger(factor) || factor < 1 || factor > 64)
    throw new RangeError(`factor must be an integer in [1, 64], got ${factor}`);
  const [B, C, H, W] = images.shape as [number, number, number, number];
  const src = images.toFloat32();
  const Ho = H * factor;
  const Wo = W * factor;
  const out = new Float32Array(B * C * Ho * Wo);
  for (let bc = 0; bc < B * C; ++bc)
    for (let y = 0; y < Ho; ++y) {
      const row = bc * H * W + Math.floor(y / factor) * W;
      const o = (bc * Ho + y) * Wo;
      for (let x = 0; x < Wo; ++x) out[o + x] = src[row + Math.floor(x / factor)]!;
    }
  return Tensor.from(out, [B, C, Ho, Wo]);
}
