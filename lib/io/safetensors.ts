/**
 * safetensors reading and writing, in pure TypeScript.
 *
 * Layout of a file: an 8-byte little-endian u64 `N`, then `N` bytes of UTF-8 JSON (the header),
 * then the data section. The header maps each tensor name to `{dtype, shape, data_offsets}` where
 * `data_offsets = [begin, end]` are byte offsets into the data section; the optional key
 * `__metadata__` maps strings to strings. The tensors must cover the data section exactly, without
 * holes or overlaps, and the file must end where the data section ends.
 *
 * Files opened from a path are read lazily: only the header is read when the file is opened, and
 * each tensor's bytes when it is asked for, so memory is proportional to what is read. Every size
 * taken from the file is validated against the file's real size before anything is allocated.
 */
import * as fs from 'node:fs';
import { endianness } from 'node:os';
import { MergeVQError, checkKeys, describe as describeValue, optionKeys, typeError } from '../errors.js';
import { Tensor, numelOf } from '../tensor.js';
import type { DType } from '../native.js';

/** The dtype names of the safetensors format that this module understands. */
export type SafetensorsDType =
  | 'BOOL'
  | 'U8'
  | 'I8'
  | 'I16'
  | 'U16'
  | 'F16'
  | 'BF16'
  | 'I32'
  | 'U32'
  | 'F32'
  | 'F64'
  | 'I64'
  | 'U64'
  | 'F8_E4M3'
  | 'F8_E5M2';

/** Bytes per element of each safetensors dtype. */
export const SAFETENSORS_DTYPE_SIZE: Readonly<Record<SafetensorsDType, number>> = Object.freeze({
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  F64: 8,
  I64: 8,
  U64: 8,
});

/**
 * Order in which the writer lays tensors out (largest alignment first, then by name), the same
 * order as the reference Rust/Python library, so that every tensor stays naturally aligned.
 */
const LAYOUT_RANK: Readonly<Record<SafetensorsDType, number>> = {
  U64: 0,
  I64: 1,
  F64: 2,
  F32: 3,
  U32: 4,
  I32: 5,
  BF16: 6,
  F16: 7,
  U16: 8,
  I16: 9,
  F8_E4M3: 10,
  F8_E5M2: 11,
  I8: 12,
  U8: 13,
  BOOL: 14,
};

/** The largest header the reader accepts (the reference library's limit). */
export const MAX_HEADER_BYTES = 100_000_000;

const MERGEVQ_TO_ST: Readonly<Record<DType, SafetensorsDType>> = {
  float32: 'F32',
  float16: 'F16',
  bfloat16: 'BF16',
  int32: 'I32',
  int64: 'I64',
  uint8: 'U8',
};

const ST_TO_MERGEVQ: Partial<Record<SafetensorsDType, DType>> = {
  F32: 'float32',
  F16: 'float16',
  BF16: 'bfloat16',
  I32: 'int32',
  I64: 'int64',
  U8: 'uint8',
  BOOL: 'uint8',
};

/** Where a tensor lives in a file and what it holds. */
export interface SafetensorsTensorInfo {
  readonly dtype: SafetensorsDType;
  readonly shape: readonly number[];
  /** Bytes of data: product(shape) * element size. */
  readonly byteLength: number;
  /** `[begin, end]` relative to the start of the data section. */
  readonly dataOffsets: readonly [number, number];
}

/** A parsed and validated header. */
export interface SafetensorsHeader {
  /** Tensor names in the order of the header. */
  readonly names: readonly string[];
  readonly tensors: ReadonlyMap<string, SafetensorsTensorInfo>;
  /** The `__metadata__` map (empty when absent). */
  readonly metadata: Readonly<Record<string, string>>;
  /** The header's length in bytes (the `N` of the format). */
  readonly headerLength: number;
  /** Absolute file offset of the data section (8 + N). */
  readonly dataStart: number;
  /** Total file size in bytes. */
  readonly fileSize: number;
}

/** Options of the readers. */
export interface ReadSafetensorsOptions {
  /**
   * Convert F64 tensors to float32 in `tensor()` (the native core has no float64). Without it,
   * `tensor()` on an F64 entry throws `ERR_UNSUPPORTED_DTYPE`; `array()` always returns a Float64Array.
   */
  convertF64?: boolean;
  /** A name for the source in error messages (defaults to the path, or `<buffer>`). */
  label?: string;
}
const READ_SAFETENSORS_KEYS = optionKeys<ReadSafetensorsOptions>()(['convertF64', 'label']);
/** Options of `SafetensorsFile.tensor` / `tensorAsync`. */
export type TensorReadOptions = Pick<ReadSafetensorsOptions, 'convertF64'>;
const TENSOR_READ_KEYS = optionKeys<TensorReadOptions>()(['convertF64']);

/** The typed array `array()` returns for each dtype (16-bit floats and float8 as their bit patterns). */
export interface SafetensorsArrayFor {
  BOOL: Uint8Array;
  U8: Uint8Array;
  I8: Int8Array;
  I16: Int16Array;
  U16: Uint16Array;
  F16: Uint16Array;
  BF16: Uint16Array;
  I32: Int32Array;
  U32: Uint32Array;
  F32: Float32Array;
  F64: Float64Array;
  I64: BigInt64Array;
  U64: BigUint64Array;
  /** float8 bit patterns, one byte per element. */
  F8_E4M3: Uint8Array;
  F8_E5M2: Uint8Array;
}
export type SafetensorsArray = SafetensorsArrayFor[keyof SafetensorsArrayFor];

function badFile(label: string, problem: string): never {
  throw new MergeVQError(`${label}: invalid safetensors file: ${problem}`, 'ERR_BAD_FILE');
}

function isDType(s: unknown): s is SafetensorsDType {
  return typeof s === 'string' && Object.hasOwn(SAFETENSORS_DTYPE_SIZE, s);
}

/** Decodes the 8-byte length prefix and checks it against the limit and the file size. */
function checkHeaderLength(prefix: Uint8Array, fileSize: number, label: string): number {
  if (fileSize < 8) badFile(label, `file is ${fileSize} bytes, shorter than the 8-byte header length`);
  const n = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER_BYTES)) badFile(label, `header length ${n} exceeds the ${MAX_HEADER_BYTES}-byte limit`);
  const len = Number(n);
  if (8 + len > fileSize)
    badFile(label, `header length ${len} extends beyond the end of the file (${fileSize} bytes): truncated file?`);
  if (len < 2) badFile(label, `header length ${len} is too short to hold a JSON object`);
  return len;
}

function checkIntArray(label: string, where: string, v: unknown, what: string): number[] {
  if (!Array.isArray(v)) badFile(label, `${where} must be an array of ${what}, got ${describeValue(v)}`);
  for (const [i, x] of v.entries()) {
    if (typeof x !== 'number' || !Number.isSafeInteger(x) || x < 0) {
      badFile(label, `${where}[${i}] must be a non-negative safe integer, got ${describeValue(x)}`);
    }
  }
  return v as number[];
}

/** Validates the decoded header bytes; the core of every reader. */
function validateHeader(bytes: Uint8Array, headerLength: number, fileSize: number, label: string): SafetensorsHeader {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    badFile(label, 'header is not valid UTF-8');
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    badFile(label, `header is not valid JSON (${(e as Error).message})`);
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) {
    badFile(label, `header must be a JSON object, got ${describeValue(json)}`);
  }
  const dataStart = 8 + headerLength;
  const dataSize = fileSize - dataStart;
  const tensors = new Map<string, SafetensorsTensorInfo>();
  const names: string[] = [];
  let metadata: Record<string, string> = {};
  for (const [name, entry] of Object.entries(json as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (entry === null) continue;
      if (typeof entry !== 'object' || Array.isArray(entry))
        badFile(label, `__metadata__ must be an object of strings, got ${describeValue(entry)}`);
      const pairs: [string, string][] = [];
      for (const [k, v] of Object.entries(entry as Record<string, unknown>)) {
        if (typeof v !== 'string')
          badFile(label, `__metadata__[${JSON.stringify(k)}] must be a string, got ${describeValue(v)}`);
        pairs.push([k, v]);
      }
      metadata = Object.fromEntries(pairs);
      continue;
    }
    const where = `tensor ${JSON.stringify(name)}`;
    if (entry === null || typeof entry !== 'object' || Array.isArray(entry))
      badFile(label, `${where} must be an object, got ${describeValue(entry)}`);
    const e = entry as Record<string, unknown>;
    if (!isDType(e.dtype)) badFile(label, `${where} has unknown dtype ${describeValue(e.dtype)}`);
    const shape = checkIntArray(label, `${where} shape`, e.shape, 'non-negative integers');
    const offsets = checkIntArray(label, `${where} data_offsets`, e.data_offsets, 'two non-negative integers');
    if (offsets.length !== 2)
      badFile(label, `${where} data_offsets must be [begin, end], got ${offsets.length} values`);
    const [begin, end] = offsets as [number, number];
    if (begin > end) badFile(label, `${where} data_offsets [${begin}, ${end}] has begin > end`);
    if (end > dataSize)
      badFile(label, `${where} data_offsets [${begin}, ${end}] extend beyond the data section (${dataSize} bytes)`);
    let numel = 1;
    for (const s of shape) {
      numel *= s;
      if (!Number.isSafeInteger(numel)) badFile(label, `${where} shape [${shape.join(', ')}] has too many elements`);
    }
    const byteLength = numel * SAFETENSORS_DTYPE_SIZE[e.dtype];
    if (!Number.isSafeInteger(byteLength)) badFile(label, `${where} shape [${shape.join(', ')}] is too large`);
    if (byteLength !== end - begin) {
      badFile(
        label,
        `${where} holds ${end - begin} bytes but shape [${shape.join(', ')}] of ${e.dtype} needs ${byteLength}`,
      );
    }
    tensors.set(
      name,
      Object.freeze({
        dtype: e.dtype,
        shape: Object.freeze([...shape]),
        byteLength,
        dataOffsets: Object.freeze([begin, end] as [number, number]),
      }),
    );
    names.push(name);
  }
  // The tensors must tile the data section: sorted by offset, each begins where the previous ends.
  const sorted = names
    .map((n) => [n, tensors.get(n)!] as const)
    .sort((a, b) => a[1].dataOffsets[0] - b[1].dataOffsets[0] || a[1].dataOffsets[1] - b[1].dataOffsets[1]);
  let pos = 0;
  let prev = '';
  for (const [n, info] of sorted) {
    const [b, e] = info.dataOffsets;
    if (b < pos)
      badFile(
        label,
        `tensor ${JSON.stringify(n)} [${b}, ${e}] overlaps tensor ${JSON.stringify(prev)} (which ends at ${pos})`,
      );
    if (b > pos) badFile(label, `data section has a hole: bytes [${pos}, ${b}) belong to no tensor`);
    pos = e;
    prev = n;
  }
  if (pos !== dataSize)
    badFile(
      label,
      `data section is ${dataSize} bytes but the tensors cover ${pos}: ${pos < dataSize ? 'trailing bytes' : 'truncated file'}`,
    );
  return Object.freeze({
    names: Object.freeze(names),
    tensors,
    metadata: Object.freeze(metadata),
    headerLength,
    dataStart,
    fileSize,
  });
}

/** Reads exactly `len` bytes at `pos` from `fd` into `dst`, failing clearly on a short read. */
function readFullySync(fd: number, dst: Uint8Array, pos: number, label: string): void {
  let done = 0;
  while (done < dst.byteLength) {
    const chunk = Math.min(dst.byteLength - done, 1 << 30);
    const n = fs.readSync(fd, dst, done, chunk, pos + done);
    if (n === 0) badFile(label, `unexpected end of file at byte ${pos + done} (file changed while reading?)`);
    done += n;
  }
}

async function readFully(fh: fs.promises.FileHandle, dst: Uint8Array, pos: number, label: string): Promise<void> {
  let done = 0;
  while (done < dst.byteLength) {
    const chunk = Math.min(dst.byteLength - done, 1 << 30);
    const { bytesRead } = await fh.read(dst, done, chunk, pos + done);
    if (bytesRead === 0) badFile(label, `unexpected end of file at byte ${pos + done} (file changed while reading?)`);
    done += bytesRead;
  }
}

function isFileHandle(v: unknown): v is fs.promises.FileHandle {
  return (
    typeof v === 'object' &&
    v !== null &&
    typeof (v as { fd?: unknown }).fd === 'number' &&
    typeof (v as { read?: unknown }).read === 'function' &&
    typeof (v as { stat?: unknown }).stat === 'function'
  );
}

/**
 * Parses and validates a safetensors header.
 *
 * - From bytes (`Uint8Array`/`Buffer`): the bytes are the whole file; returns the header.
 * - From a file descriptor (number): reads only the header; returns the header.
 * - From an `fs.promises.FileHandle`: reads only the header; returns a promise of it.
 *
 * @throws MergeVQError `ERR_BAD_FILE` naming the source and the problem.
 */
export function parseSafetensorsHeader(source: Uint8Array | number, label?: string): SafetensorsHeader;
export function parseSafetensorsHeader(source: fs.promises.FileHandle, label?: string): Promise<SafetensorsHeader>;
export function parseSafetensorsHeader(
  source: Uint8Array | number | fs.promises.FileHandle,
  label?: string,
): SafetensorsHeader | Promise<SafetensorsHeader> {
  if (source instanceof Uint8Array) {
    const lbl = label ?? '<buffer>';
    const n = checkHeaderLength(source, source.byteLength, lbl);
    return validateHeader(source.subarray(8, 8 + n), n, source.byteLength, lbl);
  }
  if (typeof source === 'number') {
    if (!Number.isInteger(source) || source < 0)
      typeError('source', 'a Uint8Array, a file descriptor or a FileHandle', source);
    const lbl = label ?? `<fd ${source}>`;
    const size = fs.fstatSync(source).size;
    const prefix = new Uint8Array(8);
    if (size >= 8) readFullySync(source, prefix, 0, lbl);
    const n = checkHeaderLength(prefix, size, lbl);
    const bytes = new Uint8Array(n);
    readFullySync(source, bytes, 8, lbl);
    return validateHeader(bytes, n, size, lbl);
  }
  if (isFileHandle(source)) {
    const lbl = label ?? `<fd ${source.fd}>`;
    return (async () => {
      const size = (await source.stat()).size;
      const prefix = new Uint8Array(8);
      if (size >= 8) await readFully(source, prefix, 0, lbl);
      const n = checkHeaderLength(prefix, size, lbl);
      const bytes = new Uint8Array(n);
      await readFully(source, bytes, 8, lbl);
      return validateHeader(bytes, n, size, lbl);
    })();
  }
  return typeError('source', 'a Uint8Array, a file descriptor or a FileHandle', source);
}

/** Where a SafetensorsFile gets its bytes. */
type Backing =
  | { kind: 'buffer'; bytes: Uint8Array }
  | { kind: 'fd'; fd: number }
  | { kind: 'handle'; handle: fs.promises.FileHandle };

function viewAs(dtype: SafetensorsDType, buf: ArrayBuffer): SafetensorsArray {
  switch (dtype) {
    case 'BOOL':
    case 'U8':
    case 'F8_E4M3':
    case 'F8_E5M2':
      return new Uint8Array(buf);
    case 'I8':
      return new Int8Array(buf);
    case 'I16':
      return new Int16Array(buf);
    case 'U16':
    case 'F16':
    case 'BF16':
      return new Uint16Array(buf);
    case 'I32':
      return new Int32Array(buf);
    case 'U32':
      return new Uint32Array(buf);
    case 'F32':
      return new Float32Array(buf);
    case 'F64':
      return new Float64Array(buf);
    case 'I64':
      return new BigInt64Array(buf);
    case 'U64':
      return new BigUint64Array(buf);
  }
}

function checkHostEndianness(): void {
  if (endianness() !== 'LE')
    throw new MergeVQError('safetensors data is little-endian; big-endian hosts are not supported', 'ERR_UNSUPPORTED');
}

/**
 * An open safetensors file (or buffer). Tensor data is read on demand; call `close()` when done
 * with a file opened from a path. Methods called after `close()` throw `ERR_CLOSED`.
 */
export class SafetensorsFile {
  /** The validated header. */
  readonly header: SafetensorsHeader;
  /** A name for the source in messages (the path, or `<buffer>`). */
  readonly label: string;
  private backing: Backing | null;
  private readonly convertF64: boolean;

  /** @internal Use `readSafetensors` / `readSafetensorsSync`. */
  constructor(header: SafetensorsHeader, backing: Backing, label: string, opts: ReadSafetensorsOptions = {}) {
    this.header = header;
    this.backing = backing;
    this.label = label;
    this.convertF64 = opts.convertF64 === true;
  }

  /** Tensor names, in header order. */
  get names(): readonly string[] {
    return this.header.names;
  }

  /** The `__metadata__` string map (empty when the file has none). */
  get metadata(): Readonly<Record<string, string>> {
    return this.header.metadata;
  }

  /** Whether the file holds a tensor called `name`. */
  has(name: string): boolean {
    return this.header.tensors.has(name);
  }

  /** dtype, shape and byte length of a tensor. @throws MergeVQError `ERR_NOT_FOUND` */
  info(name: string): SafetensorsTensorInfo {
    if (typeof name !== 'string') typeError('name', 'a string', name);
    const info = this.header.tensors.get(name);
    if (!info) throw new MergeVQError(`${this.label}: no tensor named ${JSON.stringify(name)}`, 'ERR_NOT_FOUND');
    return info;
  }

  private live(): Backing {
    if (!this.backing) throw new MergeVQError(`${this.label}: safetensors file is closed`, 'ERR_CLOSED');
    return this.backing;
  }

  /** The tensor's raw little-endian bytes, in a fresh ArrayBuffer (any dtype). */
  bytes(name: string): Uint8Array {
    const info = this.info(name);
    const b = this.live();
    const start = this.header.dataStart + info.dataOffsets[0];
    const out = new Uint8Array(info.byteLength);
    if (b.kind === 'buffer') out.set(b.bytes.subarray(start, start + info.byteLength));
    else readFullySync(b.kind === 'fd' ? b.fd : b.handle.fd, out, start, this.label);
    return out;
  }

  /** Like `bytes()`, reading through the async file API. */
  async bytesAsync(name: string): Promise<Uint8Array> {
    const info = this.info(name);
    const b = this.live();
    if (b.kind !== 'handle') return this.bytes(name);
    const out = new Uint8Array(info.byteLength);
    await readFully(b.handle, out, this.header.dataStart + info.dataOffsets[0], this.label);
    return out;
  }

  /** The tensor's elements as a typed array (see SafetensorsArrayFor); a fresh copy. */
  array(name: string): SafetensorsArray {
    const info = this.info(name);
    checkHostEndianness();
    return viewAs(info.dtype, this.bytes(name).buffer as ArrayBuffer);
  }

  /** Like `array()`, reading through the async file API. */
  async arrayAsync(name: string): Promise<SafetensorsArray> {
    const info = this.info(name);
    checkHostEndianness();
    return viewAs(info.dtype, (await this.bytesAsync(name)).buffer as ArrayBuffer);
  }

  /** Throws unless `tensor()` can load the entry; returns its info. */
  private loadable(name: string, opts: Pick<ReadSafetensorsOptions, 'convertF64'>): SafetensorsTensorInfo {
    const info = this.info(name);
    if (info.dtype === 'F64') {
      if (!(opts.convertF64 ?? this.convertF64)) {
        throw new MergeVQError(
          `${this.label}: tensor ${JSON.stringify(name)} is F64; pass { convertF64: true } to convert it to float32`,
          'ERR_UNSUPPORTED_DTYPE',
        );
      }
    } else if (!ST_TO_MERGEVQ[info.dtype]) {
      throw new MergeVQError(
        `${this.label}: tensor ${JSON.stringify(name)} has dtype ${info.dtype}, which mergevq tensors do not support; use array()`,
        'ERR_UNSUPPORTED_DTYPE',
      );
    }
    return info;
  }

  private static toTensor(info: SafetensorsTensorInfo, arr: SafetensorsArray): Tensor {
    if (info.dtype === 'F64') return Tensor.from(Float32Array.from(arr as Float64Array), info.shape);
    return Tensor.from(arr, info.shape, { dtype: ST_TO_MERGEVQ[info.dtype]! });
  }

  /**
   * The tensor as a CPU `Tensor`. F32, F16, BF16, I32, I64, U8 keep their type, BOOL becomes
   * uint8, F64 becomes float32 only with `convertF64`.
   * @throws MergeVQError `ERR_UNSUPPORTED_DTYPE` for other dtypes.
   */
  tensor(name: string, opts: TensorReadOptions = {}): Tensor {
    checkKeys('SafetensorsFile.tensor options', opts, TENSOR_READ_KEYS);
    const info = this.loadable(name, opts);
    return SafetensorsFile.toTensor(info, this.array(name));
  }

  /** Like `tensor()`, reading through the async file API. */
  async tensorAsync(name: string, opts: TensorReadOptions = {}): Promise<Tensor> {
    checkKeys('SafetensorsFile.tensorAsync options', opts, TENSOR_READ_KEYS);
    const info = this.loadable(name, opts);
    return SafetensorsFile.toTensor(info, await this.arrayAsync(name));
  }

  /** Whether `close()` has been called. */
  get closed(): boolean {
    return this.backing === null;
  }

  /** Closes the file (idempotent). A buffer-backed file just drops its reference. */
  close(): void {
    const b = this.backing;
    this.backing = null;
    if (!b) return;
    if (b.kind === 'fd') fs.closeSync(b.fd);
    // A FileHandle closes asynchronously; errors on close are of no use to the caller here.
    else if (b.kind === 'handle') b.handle.close().catch(() => undefined);
  }

  /** Closes a file opened with `readSafetensors`, awaiting the close. */
  async closeAsync(): Promise<void> {
    const b = this.backing;
    this.backing = null;
    if (!b) return;
    if (b.kind === 'fd') fs.closeSync(b.fd);
    else if (b.kind === 'handle') await b.handle.close();
  }
}

function checkSource(source: unknown): asserts source is string | Uint8Array {
  if (typeof source !== 'string' && !(source instanceof Uint8Array))
    typeError('source', 'a file path (string) or a Uint8Array', source);
}

/**
 * Opens a safetensors file (or parses a buffer) synchronously. Only the header is read now.
 * @param source a path, or the bytes of a whole file.
 * @throws MergeVQError `ERR_BAD_FILE` when the header is invalid (the file is then closed).
 */
export function readSafetensorsSync(source: string | Uint8Array, opts: ReadSafetensorsOptions = {}): SafetensorsFile {
  checkSource(source);
  checkKeys('readSafetensorsSync options', opts, READ_SAFETENSORS_KEYS);
  if (source instanceof Uint8Array) {
    const label = opts.label ?? '<buffer>';
    return new SafetensorsFile(parseSafetensorsHeader(source, label), { kind: 'buffer', bytes: source }, label, opts);
  }
  const label = opts.label ?? source;
  const fd = fs.openSync(source, 'r');
  try {
    return new SafetensorsFile(parseSafetensorsHeader(fd, label), { kind: 'fd', fd }, label, opts);
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
}

/**
 * Opens a safetensors file (or parses a buffer) with the async file API. Only the header is read
 * now; use `tensorAsync`/`arrayAsync` (or the sync methods) for data and `closeAsync()` at the end.
 * @throws MergeVQError `ERR_BAD_FILE` when the header is invalid (the file is then closed).
 */
export async function readSafetensors(
  source: string | Uint8Array,
  opts: ReadSafetensorsOptions = {},
): Promise<SafetensorsFile> {
  checkSource(source);
  checkKeys('readSafetensors options', opts, READ_SAFETENSORS_KEYS);
  if (source instanceof Uint8Array) return readSafetensorsSync(source, opts);
  const label = opts.label ?? source;
  const handle = await fs.promises.open(source, 'r');
  try {
    return new SafetensorsFile(await parseSafetensorsHeader(handle, label), { kind: 'handle', handle }, label, opts);
  } catch (e) {
    await handle.close();
    throw e;
  }
}

/** A tensor to write given as raw data. `dtype` is a safetensors name (`F32`) or a mergevq one (`float32`). */
export interface RawTensor {
  dtype: SafetensorsDType | DType;
  shape: readonly number[];
  /** Little-endian element data: byteLength must equal product(shape) * element size. */
  data: ArrayBufferView;
}

function normalizeEntry(name: string, t: unknown): { dtype: SafetensorsDType; shape: number[]; bytes: Uint8Array } {
  const argName = `tensors[${JSON.stringify(name)}]`;
  if (t instanceof Tensor) {
    const dtype = MERGEVQ_TO_ST[t.dtype];
    const data = t.device === 'cpu' ? t.toArray() : t.to('cpu').toArray();
    return { dtype, shape: [...t.shape], bytes: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) };
  }
  if (t === null || typeof t !== 'object') return typeError(argName, 'a Tensor or {dtype, shape, data}', t);
  const r = t as Partial<RawTensor>;
  let dtype: SafetensorsDType;
  if (isDType(r.dtype)) dtype = r.dtype;
  else if (typeof r.dtype === 'string' && Object.hasOwn(MERGEVQ_TO_ST, r.dtype))
    dtype = MERGEVQ_TO_ST[r.dtype as DType];
  else
    return typeError(
      `${argName}.dtype`,
      `one of ${Object.keys(SAFETENSORS_DTYPE_SIZE).join(', ')} (or a mergevq dtype)`,
      r.dtype,
    );
  if (!Array.isArray(r.shape)) typeError(`${argName}.shape`, 'an array of non-negative integers', r.shape);
  for (const [i, s] of r.shape.entries()) {
    if (typeof s !== 'number' || !Number.isSafeInteger(s) || s < 0)
      typeError(`${argName}.shape[${i}]`, 'a non-negative integer', s);
  }
  if (!ArrayBuffer.isView(r.data)) typeError(`${argName}.data`, 'a TypedArray, DataView or Buffer', r.data);
  const need = numelOf(r.shape) * SAFETENSORS_DTYPE_SIZE[dtype];
  if (r.data.byteLength !== need) {
    throw new RangeError(
      `${argName}.data must hold ${need} bytes (shape [${r.shape.join(', ')}] of ${dtype}), got ${r.data.byteLength}`,
    );
  }
  return { dtype, shape: [...r.shape], bytes: new Uint8Array(r.data.buffer, r.data.byteOffset, r.data.byteLength) };
}

function checkMetadata(metadata: unknown): Record<string, string> | undefined {
  if (metadata === undefined) return undefined;
  if (metadata === null || typeof metadata !== 'object' || Array.isArray(metadata))
    typeError('metadata', 'an object of strings', metadata);
  for (const [k, v] of Object.entries(metadata)) {
    if (typeof v !== 'string') typeError(`metadata[${JSON.stringify(k)}]`, 'a string', v);
  }
  return metadata as Record<string, string>;
}

/**
 * Encodes tensors into the bytes of a safetensors file. Tensors are laid out by dtype (widest
 * first) then by name, as the reference library does, so each one is naturally aligned; the
 * header is padded with spaces to a multiple of 8 bytes.
 * @param tensors name -> Tensor (copied from any device) or raw `{dtype, shape, data}`.
 * @param metadata optional `__metadata__` string map.
 */
export function encodeSafetensors(
  tensors: Record<string, Tensor | RawTensor>,
  metadata?: Record<string, string>,
): Buffer {
  if (tensors === null || typeof tensors !== 'object' || Array.isArray(tensors))
    typeError('tensors', 'an object mapping names to tensors', tensors);
  const meta = checkMetadata(metadata);
  checkHostEndianness();
  const entries = Object.entries(tensors).map(([name, t]) => {
    if (name === '__metadata__') throw new RangeError('tensors must not contain the reserved name "__metadata__"');
    return { name, ...normalizeEntry(name, t) };
  });
  entries.sort(
    (a, b) => LAYOUT_RANK[a.dtype] - LAYOUT_RANK[b.dtype] || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0),
  );
  const header: Record<string, unknown> = {};
  if (meta) header.__metadata__ = meta;
  let offset = 0;
  for (const e of entries) {
    header[e.name] = { dtype: e.dtype, shape: e.shape, data_offsets: [offset, offset + e.bytes.byteLength] };
    offset += e.bytes.byteLength;
  }
  let json = Buffer.from(JSON.stringify(header), 'utf8');
  const pad = (8 - (json.byteLength % 8)) % 8;
  if (pad) json = Buffer.concat([json, Buffer.alloc(pad, 0x20)]);
  const out = Buffer.allocUnsafe(8 + json.byteLength + offset);
  out.writeBigUInt64LE(BigInt(json.byteLength), 0);
  json.copy(out, 8);
  let pos = 8 + json.byteLength;
  for (const e of entries) {
    out.set(e.bytes, pos);
    pos += e.bytes.byteLength;
  }
  return out;
}

/**
 * Writes tensors to a safetensors file (see `encodeSafetensors` for the layout). The file is
 * written to a temporary name next to `path` and renamed, so a reader never sees half a file.
 */
export async function writeSafetensors(
  path: string,
  tensors: Record<string, Tensor | RawTensor>,
  metadata?: Record<string, string>,
): Promise<void> {
  if (typeof path !== 'string' || path === '') typeError('path', 'a non-empty file path', path);
  const bytes = encodeSafetensors(tensors, metadata);
  const tmp = `${path}.tmp-${process.pid}-${Date.now()}`;
  try {
    await fs.promises.writeFile(tmp, bytes);
    await fs.promises.rename(tmp, path);
  } catch (e) {
    await fs.promises.rm(tmp, { force: true });
    throw e;
  }
}

/** Synchronous `writeSafetensors`. */
export function writeSafetensorsSync(
  path: string,
  tensors: Record<string, Tensor | RawTensor>,
  metadata?: Record<string, string>,
): void {
  if (typeof path !== 'string' || path === '') typeError('path', 'a non-empty file path', path);
  const bytes = encodeSafetensors(tensors, metadata);
  const tmp = `${path}.tmp-${process.pid}-${Date.now()}`;
  try {
    fs.writeFileSync(tmp, bytes);
    fs.renameSync(tmp, path);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw e;
  }
}

/** The mergevq dtype a safetensors dtype loads as, or undefined when `tensor()` cannot load it. */
export function mergevqDTypeOf(dtype: SafetensorsDType): DType | undefined {
  return ST_TO_MERGEVQ[dtype];
}
