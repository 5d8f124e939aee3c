/**
 * An image-folder dataset: every image file below a root folder (recursively), labeled by the
 * name of the root's subfolder it lies in (classes sorted by name), or unlabeled for a flat
 * folder. Samples are decoded with sharp, their shorter side resized, then cropped (at random or
 * in the center) and flipped horizontally at random, all randomness drawn from the loader's
 * per-sample generator.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import sharp from 'sharp';
import { MergeVQError, checkInt, checkKeys, optionKeys, typeError } from '../errors.js';
import type { TrainRng } from '../train/rng.js';
import type { Dataset, Sample } from './loader.js';

/** The file extensions taken as images by default (case-insensitive). */
export const IMAGE_EXTENSIONS: readonly string[] = Object.freeze([
  '.png',
  '.jpg',
  '.jpeg',
  '.webp',
  '.gif',
  '.tif',
  '.tiff',
  '.avif',
]);

/** Options of `ImageFolderDataset.open`. */
export interface ImageFolderOptions {
  /** Output height and width (the crop size). */
  size: number;
  /** The shorter side is resized to this before cropping (default `size`; must be >= size). */
  resize?: number;
  /** 'random' (default) or 'center' crop. */
  crop?: 'random' | 'center';
  /** Horizontal flip with probability 1/2 (default true). */
  flip?: boolean;
  /** 3 (RGB, default) or 1 (gray). */
  channels?: 1 | 3;
  /**
   * 'folders': class = first-level subfolder; 'none': no labels, all images below the root;
   * 'auto' (default): 'folders' when images lie only in subfolders, 'none' when only in the root.
   */
  labels?: 'auto' | 'folders' | 'none';
  /** Extensions taken as images (default IMAGE_EXTENSIONS). */
  extensions?: readonly string[];
}
const IMAGE_FOLDER_KEYS = optionKeys<ImageFolderOptions>()([
  'size',
  'resize',
  'crop',
  'flip',
  'channels',
  'labels',
  'extensions',
]);

/** Lists image files below `dir`, sorted, following links but not looping. */
async function walk(dir: string, exts: ReadonlySet<string>, seen: Set<string>, out: string[]): Promise<void> {
  const real = await fs.promises.realpath(dir);
  if (seen.has(real)) return;
  seen.add(real);
  const entries = await fs.promises.readdir(dir, { withFileTypes: true });
  entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (const e of entries) {
    if (e.name.startsWith('.')) continue;
    const p = path.join(dir, e.name);
    let isDir = e.isDirectory();
    let isFile = e.isFile();
    if (e.isSymbolicLink()) {
      try {
        const st = await fs.promises.stat(p);
        isDir = st.isDirectory();
        isFile = st.isFile();
      } catch {
        continue; // a dangling link
      }
    }
    if (isDir) await walk(p, exts, seen, out);
    else if (isFile && exts.has(path.extname(e.name).toLowerCase())) out.push(p);
  }
}

/** An image-folder dataset; create it with `ImageFolderDataset.open`. */
export class ImageFolderDataset implements Dataset {
  readonly length: number;
  readonly sampleShape: readonly [number, number, number];
  readonly resize: number;
  readonly crop: 'random' | 'center';
  readonly flip: boolean;

  private constructor(
    readonly root: string,
    /** The image files, in dataset order (sorted by class, then path). */
    readonly files: readonly string[],
    /** The class of each file (index into `classes`), or null without labels. */
    readonly labels: Int32Array | null,
    /** Class names (subfolder names, sorted), or null without labels. */
    readonly classes: readonly string[] | null,
    opts: ImageFolderOptions,
  ) {
    this.length = files.length;
    const size = opts.size;
    this.resize = opts.resize ?? size;
    this.crop = opts.crop ?? 'random';
    this.flip = opts.flip ?? true;
    this.sampleShape = Object.freeze([opts.channels ?? 3, size, size] as [number, number, number]);
  }

  /**
   * Scans `root` and returns the dataset.
   * @throws MergeVQError `ERR_NOT_FOUND` when `root` is missing or holds no image,
   *   `ERR_BAD_FILE` when `labels: 'auto'` finds images both in the root and in subfolders.
   */
  static async open(root: string, opts: ImageFolderOptions): Promise<ImageFolderDataset> {
    if (typeof root !== 'string' || root === '') typeError('root', 'a folder path', root);
    if (opts === null || typeof opts !== 'object') typeError('opts', 'ImageFolderOptions', opts);
    checkKeys('ImageFolderDataset.open options', opts, IMAGE_FOLDER_KEYS);
    const size = checkInt('opts.size', opts.size, 1, 1 << 14);
    if (opts.resize !== undefined) checkInt('opts.resize', opts.resize, size, 1 << 15);
    if (opts.crop !== undefined && opts.crop !== 'random' && opts.crop !== 'center')
      typeError('opts.crop', "'random' or 'center'", opts.crop);
    if (opts.flip !== undefined && typeof opts.flip !== 'boolean') typeError('opts.flip', 'a boolean', opts.flip);
    if (opts.channels !== undefined && opts.channels !== 1 && opts.channels !== 3)
      typeError('opts.channels', '1 or 3', opts.channels);
    const mode = opts.labels ?? 'auto';
    if (mode !== 'auto' && mode !== 'folders' && mode !== 'none')
      typeError('opts.labels', "'auto', 'folders' or 'none'", opts.labels);
    const extList = opts.extensions ?? IMAGE_EXTENSIONS;
    if (!Array.isArray(extList) || extList.some((e) => typeof e !== 'string'))
      typeError('opts.extensions', 'an array of extensions like ".png"', extList);
    const exts = new Set(extList.map((e) => (e.startsWith('.') ? e : `.${e}`).toLowerCase()));

    let st: fs.Stats;
    try {
      st = await fs.promises.stat(root);
    } catch {
      throw new MergeVQError(`${root}: no such folder`, 'ERR_NOT_FOUND');
    }
    if (!st.isDirectory()) throw new MergeVQError(`${root}: not a folder`, 'ERR_NOT_FOUND');
    const all: string[] = [];
    await walk(root, exts, new Set(), all);
    if (all.length === 0)
      throw new MergeVQError(`${root}: no image files (${[...exts].join(' ')}) found`, 'ERR_NOT_FOUND');
    const topLevel = (f: string) => path.relative(root, f).split(path.sep);
    const inRoot = all.filter((f) => topLevel(f).length === 1);
    const inSub = all.filter((f) => topLevel(f).length > 1);
    let useFolders: boolean;
    if (mode === 'none') useFolders = false;
    else if (mode === 'folders') useFolders = true;
    else if (inSub.length && inRoot.length) {
      throw new MergeVQError(
        `${root}: images both in the folder itself (${inRoot.length}) and in subfolders (${inSub.length}); pass labels: 'folders' (root files are skipped) or 'none'`,
        'ERR_BAD_FILE',
      );
    } else useFolders = inSub.length > 0;
    if (!useFolders) return new ImageFolderDataset(root, Object.freeze(all), null, null, opts);
    if (inSub.length === 0)
      throw new MergeVQError(`${root}: labels: 'folders' but no image lies in a subfolder`, 'ERR_NOT_FOUND');
    const classOf = (f: string) => topLevel(f)[0]!;
    const classes = [...new Set(inSub.map(classOf))].sort();
    const index = new Map(classes.map((c, i) => [c, i]));
    // walk() lists in sorted order, so files come grouped by class already.
    const labels = Int32Array.from(inSub, (f) => index.get(classOf(f))!);
    return new ImageFolderDataset(root, Object.freeze(inSub), labels, Object.freeze(classes), opts);
  }

  /**
   * Decodes sample `index`: EXIF-oriented, shorter side resized to `resize` (Lanczos), cropped to
   * `size` x `size` (offsets drawn from `rng` for random crops: x then y), flipped when `flip`
   * and a draw from `rng` is below 1/2.
   * @throws MergeVQError `ERR_BAD_IMAGE` naming the file when it cannot be decoded.
   */
  async get(index: number, rng: TrainRng): Promise<Sample> {
    checkInt('index', index, 0, this.length - 1);
    const file = this.files[index]!;
    const [C, S] = this.sampleShape;
    let data: Buffer;
    let W: number;
    let H: number;
    try {
      let img = sharp(file, { failOn: 'error' }).rotate().removeAlpha();
      img = C === 1 ? img.toColourspace('b-w') : img.toColourspace('srgb');
      const r = await img
        .resize(this.resize, this.resize, { fit: 'outside', kernel: 'lanczos3' })
        .raw()
        .toBuffer({ resolveWithObject: true });
      data = r.data;
      W = r.info.width;
      H = r.info.height;
      if (r.info.channels !== C) throw new Error(`decoded to ${r.info.channels} channels, expected ${C}`);
    } catch (err) {
      throw new MergeVQError(`${file}: cannot decode image (${(err as Error).message})`, 'ERR_BAD_IMAGE');
    }
    if (W < S || H < S)
      throw new MergeVQError(`${file}: resized to ${W}x${H}, smaller than the ${S}x${S} crop`, 'ERR_BAD_IMAGE');
    let x0: number;
    let y0: number;
    if (this.crop === 'random') {
      x0 = rng.int(W - S + 1);
      y0 = rng.int(H - S + 1);
    } else {
      x0 = Math.floor((W - S) / 2);
      y0 = Math.floor((H - S) / 2);
    }
    const flip = this.flip && rng.next() < 0.5;
    const image = new Float32Array(C * S * S);
    const plane = S * S;
    for (let y = 0; y < S; ++y) {
      const row = ((y0 + y) * W + x0) * C;
      for (let x = 0; x < S; ++x) {
        const src = row + (flip ? S - 1 - x : x) * C;
        for (let c = 0; c < C; ++c) image[c * plane + y * S + x] = data[src + c]! / 127.5 - 1;
      }
    }
    return this.labels ? { image, label: this.labels[index]! } : { image };
  }
}
