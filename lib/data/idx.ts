/**
 * The IDX format (MNIST / Fashion-MNIST): a 4-byte magic `0x00 0x00 <dtype> <ndims>`, then
 * `ndims` big-endian u32 dimensions, then the elements big-endian, row-major. Files may be gzip'd.
 *
 * Reading is strict: the dtype code, the number and size of the dimensions and the declared data
 * size are checked against limits and against the real (decompressed) size before anything large
 * is allocated; a gzip'd file is decompressed as a stream that stops as soon as it produces more
 * bytes than the header declares, so a decompression bomb costs at most the declared size.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { endianness } from 'node:os';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { MergeVQError, checkInt, checkKeys, optionKeys, typeError } from '../errors.js';

/** The element types of IDX files. */
export type IdxDType = 'u8' | 'i8' | 'i16' | 'i32' | 'f32' | 'f64';

/** The typed array that holds each IDX dtype (in host byte order). */
export interface IdxArrayFor {
  u8: Uint8Array;
  i8: Int8Array;
  i16: Int16Array;
  i32: Int32Array;
  f32: Float32Array;
  f64: Float64Array;
}

/** A decoded IDX array. */
export interface IdxArray<D extends IdxDType = IdxDType> {
  readonly dtype: D;
  readonly shape: readonly number[];
  /** The elements, row-major, in host byte order. */
  readonly data: IdxArrayFor[D];
}

/** Limits and labels of the readers. */
export interface ReadIdxOptions {
  /** Largest accepted data size in bytes (default 2 GiB). */
  maxBytes?: number;
  /** Largest accepted number of dimensions (default 16). */
  maxDims?: number;
  /** A name for the source in error messages (defaults to the path, or `<buffer>`). */
  label?: string;
}
const READ_IDX_KEYS = optionKeys<ReadIdxOptions>()(['maxBytes', 'maxDims', 'label']);

/** Options of {@link encodeIdx}. */
export interface EncodeIdxOptions {
  /** gzip the bytes (default false). */
  gzip?: boolean;
}
const ENCODE_IDX_KEYS = optionKeys<EncodeIdxOptions>()(['gzip']);

/** Options of {@link loadFashionMnist}. */
export interface LoadFashionMnistOptions {
  /** Folder of the IDX files (default {@link FASHION_MNIST_DIR}). */
  dir?: string;
}
const LOAD_FASHION_MNIST_KEYS = optionKeys<LoadFashionMnistOptions>()(['dir']);

const CODE_TO_DTYPE: Readonly<Record<number, IdxDType>> = {
  8: 'u8',
  9: 'i8',
  11: 'i16',
  12: 'i32',
  13: 'f32',
  14: 'f64',
};
const DTYPE_TO_CODE: Readonly<Record<IdxDType, number>> = {
  u8: 0x08,
  i8: 0x09,
  i16: 0x0b,
  i32: 0x0c,
  f32: 0x0d,
  f64: 0x0e,
};
/** Bytes per element of each IDX dtype. */
export const IDX_DTYPE_SIZE: Readonly<Record<IdxDType, number>> = Object.freeze({
  u8: 1,
  i8: 1,
  i16: 2,
  i32: 4,
  f32: 4,
  f64: 8,
});

const DEFAULT_MAX_BYTES = 2 ** 31;
const HARD_MAX_DIMS = 255;
/** Each dimension must fit a signed 32-bit integer (some writers read them as int32). */
const MAX_DIM = 0x7fffffff;

function badFile(label: string, problem: string): never {
  throw new MergeVQError(`${label}: invalid IDX file: ${problem}`, 'ERR_BAD_FILE');
}

function limits(opts: ReadIdxOptions, name: string): { maxBytes: number; maxDims: number } {
  if (opts === null || typeof opts !== 'object') typeError('opts', 'an options object', opts);
  checkKeys(name, opts, READ_IDX_KEYS);
  const maxBytes =
    opts.maxBytes === undefined ? DEFAULT_MAX_BYTES : checkInt('opts.maxBytes', opts.maxBytes, 0, 2 ** 32);
  const maxDims = opts.maxDims === undefined ? 16 : checkInt('opts.maxDims', opts.maxDims, 1, HARD_MAX_DIMS);
  return { maxBytes, maxDims };
}

interface IdxHeader {
  dtype: IdxDType;
  shape: number[];
  headerBytes: number;
  dataBytes: number;
}

/** Checks the 4-byte magic; returns the dtype and the number of dimensions. */
function parseMagic(b: Uint8Array, label: string, maxDims: number): { dtype: IdxDType; ndims: number } {
  if (b[0] !== 0 || b[1] !== 0)
    badFile(
      label,
      `bad magic: first two bytes are 0x${b[0]!.toString(16).padStart(2, '0')} 0x${b[1]!.toString(16).padStart(2, '0')}, expected 0x00 0x00`,
    );
  const dtype = CODE_TO_DTYPE[b[2]!];
  if (!dtype)
    badFile(label, `unknown dtype code 0x${b[2]!.toString(16).padStart(2, '0')} (expected one of 08 09 0b 0c 0d 0e)`);
  const ndims = b[3]!;
  if (ndims < 1 || ndims > maxDims) badFile(label, `${ndims} dimensions, expected 1 to ${maxDims}`);
  return { dtype, ndims };
}

/** Parses the dims (after the magic) and checks the implied data size. */
function parseDims(b: Uint8Array, dtype: IdxDType, ndims: number, label: string, maxBytes: number): IdxHeader {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const shape: number[] = [];
  let bytes = IDX_DTYPE_SIZE[dtype];
  for (let i = 0; i < ndims; ++i) {
    const d = dv.getUint32(4 + 4 * i, false);
    if (d > MAX_DIM) badFile(label, `dimension ${i} is ${d}, above the limit ${MAX_DIM}`);
    shape.push(d);
    bytes *= d;
    // Stop multiplying once over the limit, so the product stays exact.
    if (bytes > maxBytes)
      badFile(
        label,
        `shape [${shape.join(', ')}${i + 1 < ndims ? ', ...' : ''}] of ${dtype} needs more than the ${maxBytes}-byte limit`,
      );
  }
  return { dtype, shape, headerBytes: 4 + 4 * ndims, dataBytes: bytes };
}

/** Converts big-endian element bytes to a host-order typed array over the same memory. */
function toTypedArray(dtype: IdxDType, bytes: Uint8Array): IdxArrayFor[IdxDType] {
  const size = IDX_DTYPE_SIZE[dtype];
  if (size > 1 && endianness() === 'LE') {
    if (size === 2) Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).swap16();
    else if (size === 4) Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).swap32();
    else Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).swap64();
  }
  const buf = bytes.buffer as ArrayBuffer;
  const off = bytes.byteOffset;
  const n = bytes.byteLength / size;
  switch (dtype) {
    case 'u8':
      return new Uint8Array(buf, off, n);
    case 'i8':
      return new Int8Array(buf, off, n);
    case 'i16':
      return new Int16Array(buf, off, n);
    case 'i32':
      return new Int32Array(buf, off, n);
    case 'f32':
      return new Float32Array(buf, off, n);
    case 'f64':
      return new Float64Array(buf, off, n);
  }
}

/**
 * Receives the (decompressed) bytes of an IDX file chunk by chunk: parses the header, then copies
 * the data into a buffer that grows geometrically up to the declared size (so a header that lies
 * about a huge size costs no more memory than the bytes really present), and fails as soon as the
 * bytes run past the declared size.
 */
class IdxAccumulator {
  private head = new Uint8Array(4 + 4 * HARD_MAX_DIMS);
  private headLen = 0;
  private header: IdxHeader | null = null;
  private data = new Uint8Array(0);
  private dataLen = 0;
  private ndims = 0;
  private dtype: IdxDType = 'u8';

  constructor(
    private readonly label: string,
    private readonly maxBytes: number,
    private readonly maxDims: number,
  ) {}

  /** The header once parsed. */
  get parsed(): IdxHeader | null {
    return this.header;
  }

  push(chunk: Uint8Array): void {
    let pos = 0;
    while (!this.header && pos < chunk.byteLength) {
      const want = this.ndims === 0 ? 4 : 4 + 4 * this.ndims;
      const take = Math.min(want - this.headLen, chunk.byteLength - pos);
      this.head.set(chunk.subarray(pos, pos + take), this.headLen);
      this.headLen += take;
      pos += take;
      if (this.headLen === want) {
        if (this.ndims === 0) {
          const m = parseMagic(this.head, this.label, this.maxDims);
          this.ndims = m.ndims;
          this.dtype = m.dtype;
        } else {
          this.header = parseDims(this.head, this.dtype, this.ndims, this.label, this.maxBytes);
          this.data = new Uint8Array(Math.min(this.header.dataBytes, 1 << 20));
        }
      }
    }
    if (!this.header || pos === chunk.byteLength) return;
    const n = chunk.byteLength - pos;
    const declared = this.header.dataBytes;
    if (this.dataLen + n > declared) {
      badFile(
        this.label,
        `holds more data than its header declares (${declared} bytes for shape [${this.header.shape.join(', ')}] of ${this.header.dtype}): trailing bytes or a decompression bomb`,
      );
    }
    if (this.dataLen + n > this.data.byteLength) {
      const grown = new Uint8Array(Math.min(declared, Math.max(this.dataLen + n, this.data.byteLength * 2)));
      grown.set(this.data.subarray(0, this.dataLen));
      this.data = grown;
    }
    this.data.set(chunk.subarray(pos), this.dataLen);
    this.dataLen += n;
  }

  finish(): IdxArray {
    if (!this.header) {
      const need = this.ndims === 0 ? 4 : 4 + 4 * this.ndims;
      badFile(this.label, `truncated header: ${this.headLen} bytes, expected ${need}`);
    }
    const h = this.header;
    if (this.dataLen !== h.dataBytes) {
      badFile(
        this.label,
        `truncated data: ${this.dataLen} bytes, but shape [${h.shape.join(', ')}] of ${h.dtype} declares ${h.dataBytes}`,
      );
    }
    const bytes = this.data.byteLength === h.dataBytes ? this.data : this.data.slice(0, h.dataBytes);
    return Object.freeze({ dtype: h.dtype, shape: Object.freeze([...h.shape]), data: toTypedArray(h.dtype, bytes) });
  }
}

function isGzip(b: Uint8Array): boolean {
  return b.byteLength >= 2 && b[0] === 0x1f && b[1] === 0x8b;
}

/** Runs a gzip stream through the accumulator; zlib errors become ERR_BAD_FILE. */
async function gunzipInto(source: Readable, acc: IdxAccumulator, label: string): Promise<IdxArray> {
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      try {
        acc.push(chunk);
        cb();
      } catch (e) {
        cb(e as Error);
      }
    },
  });
  try {
    await pipeline(source, zlib.createGunzip(), sink);
  } catch (e) {
    if (e instanceof MergeVQError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'EACCES' || code === 'EISDIR') throw e;
    badFile(label, `gzip stream is damaged (${(e as Error).message})`);
  }
  return acc.finish();
}

/**
 * Decodes the bytes of an IDX file (gzip'd or plain).
 * @throws MergeVQError `ERR_BAD_FILE` naming the source and the problem.
 */
export async function decodeIdx(bytes: Uint8Array, opts: ReadIdxOptions = {}): Promise<IdxArray> {
  if (!(bytes instanceof Uint8Array)) typeError('bytes', 'a Uint8Array or Buffer', bytes);
  const { maxBytes, maxDims } = limits(opts, 'decodeIdx options');
  const label = opts.label ?? '<buffer>';
  const acc = new IdxAccumulator(label, maxBytes, maxDims);
  if (isGzip(bytes))
    return gunzipInto(Readable.from([Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)]), acc, label);
  if (bytes.byteLength < 4) badFile(label, `${bytes.byteLength} bytes, shorter than the 4-byte magic`);
  const m = parseMagic(bytes, label, maxDims);
  if (bytes.byteLength >= 4 + 4 * m.ndims) {
    const h = parseDims(bytes, m.dtype, m.ndims, label, maxBytes);
    if (bytes.byteLength !== h.headerBytes + h.dataBytes) sizeMismatch(label, h, bytes.byteLength);
  }
  // Copy so that the result owns aligned memory and the input is left untouched.
  acc.push(bytes);
  return acc.finish();
}

function sizeMismatch(label: string, h: IdxHeader, fileSize: number): never {
  const expected = h.headerBytes + h.dataBytes;
  badFile(
    label,
    `file is ${fileSize} bytes but the header (shape [${h.shape.join(', ')}] of ${h.dtype}) declares ${expected}: ${fileSize < expected ? 'truncated file' : 'trailing bytes'}`,
  );
}

async function readAt(fh: fs.promises.FileHandle, n: number, pos: number): Promise<Uint8Array> {
  const out = new Uint8Array(n);
  let done = 0;
  while (done < n) {
    const { bytesRead } = await fh.read(out, done, n - done, pos + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return out.subarray(0, done);
}

/**
 * Reads an IDX file (gzip'd or plain, recognised by its first bytes, whatever its name). A plain
 * file's size must equal the size its header declares; a gzip'd file must decompress to exactly
 * that size (decompression stops as soon as it produces more).
 * @throws MergeVQError `ERR_BAD_FILE` naming the file and the problem; `ERR_NOT_FOUND` when absent.
 */
export async function readIdx(file: string, opts: ReadIdxOptions = {}): Promise<IdxArray> {
  if (typeof file !== 'string' || file === '') typeError('file', 'a non-empty file path', file);
  const { maxBytes, maxDims } = limits(opts, 'readIdx options');
  const label = opts.label ?? file;
  let fh: fs.promises.FileHandle;
  try {
    fh = await fs.promises.open(file, 'r');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT')
      throw new MergeVQError(`${label}: no such file`, 'ERR_NOT_FOUND');
    throw e;
  }
  try {
    const size = (await fh.stat()).size;
    const first = await readAt(fh, Math.min(size, 4 + 4 * maxDims), 0);
    const acc = new IdxAccumulator(label, maxBytes, maxDims);
    if (isGzip(first)) {
      return await gunzipInto(fh.createReadStream({ start: 0, autoClose: false }), acc, label);
    }
    if (first.byteLength < 4) badFile(label, `file is ${size} bytes, shorter than the 4-byte magic`);
    const m = parseMagic(first, label, maxDims);
    if (first.byteLength < 4 + 4 * m.ndims)
      badFile(label, `truncated header: file is ${size} bytes, the ${m.ndims} dimensions need ${4 + 4 * m.ndims}`);
    const h = parseDims(first, m.dtype, m.ndims, label, maxBytes);
    if (size !== h.headerBytes + h.dataBytes) sizeMismatch(label, h, size);
    const data = await readAt(fh, h.dataBytes, h.headerBytes);
    if (data.byteLength !== h.dataBytes)
      badFile(label, `file shrank while reading (read ${data.byteLength} of ${h.dataBytes} data bytes)`);
    return Object.freeze({ dtype: h.dtype, shape: Object.freeze([...h.shape]), data: toTypedArray(h.dtype, data) });
  } finally {
    await fh.close();
  }
}

const ARRAY_CTOR: Readonly<Record<IdxDType, new (n: number) => IdxArrayFor[IdxDType]>> = {
  u8: Uint8Array,
  i8: Int8Array,
  i16: Int16Array,
  i32: Int32Array,
  f32: Float32Array,
  f64: Float64Array,
};

/**
 * Encodes an array as the bytes of an IDX file, optionally gzip'd.
 * @param array `data` must be the dtype's typed array (see IdxArrayFor) of product(shape) elements.
 */
export function encodeIdx(array: IdxArray, opts: EncodeIdxOptions = {}): Buffer {
  if (array === null || typeof array !== 'object') typeError('array', 'an IdxArray {dtype, shape, data}', array);
  checkKeys('encodeIdx options', opts, ENCODE_IDX_KEYS);
  const { dtype, shape, data } = array;
  if (!Object.hasOwn(DTYPE_TO_CODE, dtype))
    typeError('array.dtype', "one of 'u8', 'i8', 'i16', 'i32', 'f32', 'f64'", dtype);
  if (!Array.isArray(shape) || shape.length < 1 || shape.length > HARD_MAX_DIMS)
    typeError('array.shape', `an array of 1 to ${HARD_MAX_DIMS} dimensions`, shape);
  shape.forEach((d, i) => checkInt(`array.shape[${i}]`, d, 0, MAX_DIM));
  if (!(data instanceof ARRAY_CTOR[dtype]))
    typeError('array.data', `a ${ARRAY_CTOR[dtype].name} for dtype ${dtype}`, data);
  const n = shape.reduce((a, b) => a * b, 1);
  if (data.length !== n)
    throw new RangeError(`array.data must hold ${n} elements (shape [${shape.join(', ')}]), got ${data.length}`);
  const headerBytes = 4 + 4 * shape.length;
  const out = Buffer.alloc(headerBytes + data.byteLength);
  out[2] = DTYPE_TO_CODE[dtype];
  out[3] = shape.length;
  shape.forEach((d, i) => out.writeUInt32BE(d, 4 + 4 * i));
  out.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), headerBytes);
  const body = out.subarray(headerBytes);
  const size = IDX_DTYPE_SIZE[dtype];
  if (size > 1 && endianness() === 'LE') {
    if (size === 2) body.swap16();
    else if (size === 4) body.swap32();
    else body.swap64();
  }
  return opts.gzip ? zlib.gzipSync(out) : out;
}

/** The ten Fashion-MNIST class names, by label. */
export const FASHION_MNIST_CLASSES: readonly string[] = Object.freeze([
  'T-shirt/top',
  'Trouser',
  'Pullover',
  'Dress',
  'Coat',
  'Sandal',
  'Shirt',
  'Sneaker',
  'Bag',
  'Ankle boot',
]);

/** Where the Debian package `dataset-fashion-mnist` installs the files. */
export const FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist';

/** One split of Fashion-MNIST. */
export interface FashionMnist {
  /** Pixels, row-major [count, 28, 28], 0 = background. */
  readonly images: Uint8Array;
  /** Class labels in [0, 10), one per image. */
  readonly labels: Uint8Array;
  readonly count: number;
  readonly height: 28;
  readonly width: 28;
}

async function findFile(dir: string, stem: string): Promise<string> {
  for (const name of [`${stem}.gz`, stem]) {
    const p = path.join(dir, name);
    try {
      if ((await fs.promises.stat(p)).isFile()) return p;
    } catch {
      /* try the next name */
    }
  }
  throw new MergeVQError(
    `Fashion-MNIST file ${stem}(.gz) not found in ${dir} (on Debian: apt-get install dataset-fashion-mnist)`,
    'ERR_NOT_FOUND',
  );
}

/**
 * Loads one Fashion-MNIST split from `dir` (files `train-images-idx3-ubyte[.gz]`,
 * `train-labels-idx1-ubyte[.gz]`, and `t10k-...` for the test split), checking that the images
 * are u8 [N, 28, 28], the labels u8 [N] with values below 10.
 * @throws MergeVQError `ERR_NOT_FOUND` when the files are absent, `ERR_BAD_FILE` when invalid.
 */
export async function loadFashionMnist(
  split: 'train' | 'test',
  opts: LoadFashionMnistOptions = {},
): Promise<FashionMnist> {
  if (split !== 'train' && split !== 'test') typeError('split', "'train' or 'test'", split);
  checkKeys('loadFashionMnist options', opts, LOAD_FASHION_MNIST_KEYS);
  const dir = opts.dir ?? FASHION_MNIST_DIR;
  if (typeof dir !== 'string' || dir === '') typeError('opts.dir', 'a directory path', dir);
  const prefix = split === 'train' ? 'train' : 't10k';
  const imgPath = await findFile(dir, `${prefix}-images-idx3-ubyte`);
  const lblPath = await findFile(dir, `${prefix}-labels-idx1-ubyte`);
  const [img, lbl] = await Promise.all([
    readIdx(imgPath, { maxBytes: 1 << 30 }),
    readIdx(lblPath, { maxBytes: 1 << 26 }),
  ]);
  if (img.dtype !== 'u8' || img.shape.length !== 3 || img.shape[1] !== 28 || img.shape[2] !== 28) {
    badFile(imgPath, `expected u8 images [N, 28, 28], got ${img.dtype} [${img.shape.join(', ')}]`);
  }
  if (lbl.dtype !== 'u8' || lbl.shape.length !== 1)
    badFile(lblPath, `expected u8 labels [N], got ${lbl.dtype} [${lbl.shape.join(', ')}]`);
  const count = img.shape[0]!;
  if (lbl.shape[0] !== count) badFile(lblPath, `${lbl.shape[0]} labels for ${count} images in ${imgPath}`);
  const labels = lbl.data as Uint8Array;
  for (let i = 0; i < count; ++i)
    if (labels[i]! >= 10) badFile(lblPath, `label ${labels[i]} at index ${i} is not a class in [0, 10)`);
  return Object.freeze({ images: img.data as Uint8Array, labels, count, height: 28, width: 28 });
}
