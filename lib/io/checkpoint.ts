/**
 * Loading PyTorch / Lightning checkpoints (`.ckpt`, `.pt`) without running Python code.
 *
 * `torch.save` writes a zip archive: `<top>/data.pkl` (a pickle of the saved object, where each
 * tensor is a call to `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` and
 * each storage a persistent id `('storage', torch.FloatStorage, key, location, numel)`), plus one
 * entry `<top>/data/<key>` of raw little-endian bytes per storage. The folder name `<top>` varies
 * (`archive`, or the file's stem). The pickle is read with a restricted unpickler (lib/io/pickle.ts)
 * that only knows the data-only globals listed in `ALLOWED_GLOBALS`; any other global refuses the
 * file with `ERR_UNSAFE_PICKLE`.
 */
import yauzl from 'yauzl';
import * as fs from 'node:fs';
import { MergeVQError, typeError } from '../errors.js';
import type { DType } from '../native.js';
import { Tensor } from '../tensor.js';
import { PickleCallable, PickleObject, unpickle } from './pickle.js';

/** Element types of torch storages that this loader knows. */
export type TorchDType = 'float32' | 'float16' | 'bfloat16' | 'float64' | 'int64' | 'int32' | 'int16' | 'int8' | 'uint8' | 'bool';

const ELEMENT_SIZE: Readonly<Record<TorchDType, number>> = {
  float32: 4,
  float16: 2,
  bfloat16: 2,
  float64: 8,
  int64: 8,
  int32: 4,
  int16: 2,
  int8: 1,
  uint8: 1,
  bool: 1,
};

/** The mergevq dtype each torch dtype loads as (float64 only with `convertF64`). */
const LOADS_AS: Partial<Record<TorchDType, DType>> = {
  float32: 'float32',
  float16: 'float16',
  bfloat16: 'bfloat16',
  int64: 'int64',
  int32: 'int32',
  uint8: 'uint8',
  bool: 'uint8',
};

/** A storage class named by the pickle (`torch.FloatStorage`, ...): data, never called. */
export class TorchStorageType {
  constructor(readonly qualname: string, readonly dtype: TorchDType | 'untyped') {}
}

/** A dtype object named by the pickle (`torch.float32`, ...). */
export class TorchDTypeRef {
  constructor(readonly qualname: string, readonly dtype: TorchDType) {}
}

/** A storage of the archive, as referenced by the pickle; its bytes are read only when needed. */
export interface TorchStorageRef {
  readonly key: string;
  readonly dtype: TorchDType | 'untyped';
  /** Elements (bytes for untyped storages). */
  readonly numel: number;
  readonly location: string;
}

/** A tensor as the pickle describes it: a strided view of a storage. Not materialized. */
export class TorchTensorRef {
  constructor(
    readonly storage: TorchStorageRef,
    readonly dtype: TorchDType,
    /** Offset into the storage, in elements. */
    readonly offset: number,
    readonly shape: readonly number[],
    /** Strides in elements. */
    readonly stride: readonly number[],
    /** True when the pickle rebuilt it as an nn.Parameter. */
    readonly isParameter = false,
  ) {}
  get numel(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }
}

const STORAGE_DTYPES: Readonly<Record<string, TorchDType | 'untyped'>> = {
  FloatStorage: 'float32',
  HalfStorage: 'float16',
  BFloat16Storage: 'bfloat16',
  DoubleStorage: 'float64',
  LongStorage: 'int64',
  IntStorage: 'int32',
  ShortStorage: 'int16',
  CharStorage: 'int8',
  ByteStorage: 'uint8',
  BoolStorage: 'bool',
  UntypedStorage: 'untyped',
};

const DTYPE_OBJECTS: Readonly<Record<string, TorchDType>> = {
  float32: 'float32',
  float: 'float32',
  float16: 'float16',
  half: 'float16',
  bfloat16: 'bfloat16',
  float64: 'float64',
  double: 'float64',
  int64: 'int64',
  long: 'int64',
  int32: 'int32',
  int: 'int32',
  int16: 'int16',
  short: 'int16',
  int8: 'int8',
  uint8: 'uint8',
  bool: 'bool',
};

/** Lightning's `AttributeDict` (a dict with attribute access, for `hyper_parameters`), by module. */
const ATTRIBUTE_DICTS = [
  'pytorch_lightning.utilities.parsing.AttributeDict',
  'lightning_fabric.utilities.data.AttributeDict',
  'lightning.fabric.utilities.data.AttributeDict',
];

/**
 * The globals a checkpoint pickle may name (everything else is refused): containers, tensor and
 * parameter rebuilders, storage classes, dtype objects, `torch.Size`, paths (as strings), Lightning's
 * AttributeDict (as a dict) and the `_codecs.encode` that protocol-2 pickles use for bytes.
 * Protocol-2 pickles spell `builtins` as `__builtin__`; both spellings are accepted.
 */
export const ALLOWED_GLOBALS: readonly string[] = Object.freeze([
  'collections.OrderedDict',
  'builtins.dict',
  'builtins.set',
  'builtins.frozenset',
  'builtins.list',
  'builtins.tuple',
  '_codecs.encode',
  'torch._utils._rebuild_tensor_v2',
  'torch._utils._rebuild_tensor_v3',
  'torch._utils._rebuild_parameter',
  'torch._utils._rebuild_parameter_with_state',
  'torch.Size',
  'torch.device',
  'pathlib.PosixPath',
  'pathlib.PurePosixPath',
  'pathlib.WindowsPath',
  'pathlib.PureWindowsPath',
  ...ATTRIBUTE_DICTS,
  ...Object.keys(STORAGE_DTYPES).map((s) => `torch.${s}`),
  ...Object.keys(DTYPE_OBJECTS).map((d) => `torch.${d}`),
]);

function badFile(label: string, problem: string): never {
  throw new MergeVQError(`${label}: invalid checkpoint: ${problem}`, 'ERR_BAD_FILE');
}

const isNonNegInt = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;

function intList(label: string, what: string, v: unknown): number[] {
  if (!Array.isArray(v) || !v.every(isNonNegInt)) badFile(label, `${what} must be a tuple of non-negative integers`);
  return v as number[];
}

function makeResolver(label: string): (module: string, name: string) => unknown {
  const toMap = (args: readonly unknown[]): Map<unknown, unknown> => {
    const m = new Map<unknown, unknown>();
    const src = args[0];
    if (src instanceof Map) for (const [k, v] of src) m.set(k, v);
    else if (Array.isArray(src)) {
      for (const pair of src) {
        if (!Array.isArray(pair) || pair.length !== 2) badFile(label, 'dict() from items that are not pairs');
        m.set(pair[0], pair[1]);
      }
    }
    return m;
  };
  const rebuild = (args: readonly unknown[], v3: boolean): TorchTensorRef => {
    const [storage, offset, size, stride] = args;
    if (!isStorageRef(storage)) badFile(label, '_rebuild_tensor without a storage');
    if (!isNonNegInt(offset)) badFile(label, '_rebuild_tensor storage offset must be a non-negative integer');
    const shape = intList(label, 'tensor size', size);
    const strides = intList(label, 'tensor stride', stride);
    if (shape.length !== strides.length) badFile(label, `tensor size has ${shape.length} dims but stride has ${strides.length}`);
    let dtype: TorchDType;
    if (v3) {
      const d = args[6];
      if (!(d instanceof TorchDTypeRef)) badFile(label, '_rebuild_tensor_v3 without a dtype');
      dtype = d.dtype;
    } else {
      if (storage.dtype === 'untyped') badFile(label, '_rebuild_tensor_v2 on an untyped storage');
      dtype = storage.dtype;
    }
    return new TorchTensorRef(storage, dtype, offset, Object.freeze([...shape]), Object.freeze([...strides]));
  };
  const asParameter = (args: readonly unknown[]): TorchTensorRef => {
    const t = args[0];
    if (!(t instanceof TorchTensorRef)) badFile(label, '_rebuild_parameter of something that is not a tensor');
    return new TorchTensorRef(t.storage, t.dtype, t.offset, t.shape, t.stride, true);
  };
  const path = (args: readonly unknown[]): string => args.map(String).join('/').replace(/\/+/g, '/');
  const table: Record<string, unknown> = {
    'collections.OrderedDict': new PickleCallable('collections.OrderedDict', toMap),
    'builtins.dict': new PickleCallable('builtins.dict', toMap),
    'builtins.set': new PickleCallable('builtins.set', (a) => new Set(Array.isArray(a[0]) ? a[0] : a[0] instanceof Set ? a[0] : [])),
    'builtins.frozenset': new PickleCallable('builtins.frozenset', (a) => new Set(Array.isArray(a[0]) ? a[0] : a[0] instanceof Set ? a[0] : [])),
    'builtins.list': new PickleCallable('builtins.list', (a) => (Array.isArray(a[0]) ? [...a[0]] : [])),
    'builtins.tuple': new PickleCallable('builtins.tuple', (a) => Object.freeze(Array.isArray(a[0]) ? [...a[0]] : [])),
    '_codecs.encode': new PickleCallable('_codecs.encode', (a) => {
      const [s, enc] = a;
      if (typeof s !== 'string' || (enc !== 'latin1' && enc !== 'latin-1')) badFile(label, '_codecs.encode other than latin1 of a string');
      const out = new Uint8Array(s.length);
      for (let i = 0; i < s.length; i++) {
        const c = s.charCodeAt(i);
        if (c > 255) badFile(label, '_codecs.encode: character outside latin1');
        out[i] = c;
      }
      return out;
    }),
    'torch._utils._rebuild_tensor_v2': new PickleCallable('torch._utils._rebuild_tensor_v2', (a) => rebuild(a, false)),
    'torch._utils._rebuild_tensor_v3': new PickleCallable('torch._utils._rebuild_tensor_v3', (a) => rebuild(a, true)),
    'torch._utils._rebuild_parameter': new PickleCallable('torch._utils._rebuild_parameter', asParameter),
    'torch._utils._rebuild_parameter_with_state': new PickleCallable('torch._utils._rebuild_parameter_with_state', asParameter),
    'torch.Size': new PickleCallable('torch.Size', (a) => Object.freeze(intList(label, 'torch.Size', a[0] ?? []).slice())),
    'torch.device': new PickleCallable('torch.device', (a) => (a.length > 1 && a[1] !== null ? `${String(a[0])}:${String(a[1])}` : String(a[0]))),
  };
  for (const q of ATTRIBUTE_DICTS) table[q] = new PickleCallable(q, toMap);
  for (const p of ['PosixPath', 'PurePosixPath', 'WindowsPath', 'PureWindowsPath']) table[`pathlib.${p}`] = new PickleCallable(`pathlib.${p}`, path);
  for (const [s, d] of Object.entries(STORAGE_DTYPES)) table[`torch.${s}`] = new TorchStorageType(`torch.${s}`, d);
  for (const [s, d] of Object.entries(DTYPE_OBJECTS)) table[`torch.${s}`] = new TorchDTypeRef(`torch.${s}`, d);
  return (module, name) => {
    const q = `${module === '__builtin__' ? 'builtins' : module}.${name}`;
    return Object.prototype.hasOwnProperty.call(table, q) ? table[q] : undefined;
  };
}

function isStorageRef(v: unknown): v is TorchStorageRef {
  return typeof v === 'object' && v !== null && (v as { __storage?: boolean }).__storage === true;
}

// ---------------------------------------------------------------------------------------------
// Zip access

interface Archive {
  zip: yauzl.ZipFile;
  entries: Map<string, yauzl.Entry>;
  /** The folder holding data.pkl, with a trailing slash. */
  prefix: string;
  label: string;
}

/** Largest data.pkl accepted: it holds only structure (tensor bytes live in separate entries). */
const MAX_PICKLE_BYTES = 1 << 30;

async function openArchive(path: string, label: string): Promise<Archive> {
  const zip = await new Promise<yauzl.ZipFile>((resolve, reject) => {
    yauzl.open(path, { lazyEntries: true, autoClose: false, validateEntrySizes: true, strictFileNames: false }, (err, z) => (err ? reject(err) : resolve(z)));
  }).catch(async (err: Error) => {
    const head = Buffer.alloc(2);
    const fd = fs.openSync(path, 'r');
    try {
      fs.readSync(fd, head, 0, 2, 0);
    } finally {
      fs.closeSync(fd);
    }
    if (head[0] === 0x80) badFile(label, 'legacy (pre-zip, torch < 1.6) torch.save format is not supported; re-save it with a current torch');
    return badFile(label, `not a zip archive written by torch.save (${err.message})`);
  });
  try {
    const entries = new Map<string, yauzl.Entry>();
    await new Promise<void>((resolve, reject) => {
      zip.on('entry', (e: yauzl.Entry) => {
        entries.set(e.fileName, e);
        zip.readEntry();
      });
      zip.on('end', () => resolve());
      zip.on('error', reject);
      zip.readEntry();
    }).catch((err: Error) => badFile(label, `corrupt zip archive (${err.message})`));
    const pkls = [...entries.keys()].filter((n) => /^[^/]+\/data\.pkl$/.test(n));
    if (pkls.length === 0) badFile(label, 'no <folder>/data.pkl entry (not a torch.save archive)');
    if (pkls.length > 1) badFile(label, `several data.pkl entries (${pkls.join(', ')})`);
    const prefix = pkls[0]!.slice(0, -'data.pkl'.length);
    return { zip, entries, prefix, label };
  } catch (e) {
    zip.close();
    throw e;
  }
}

async function readEntry(a: Archive, name: string, expectBytes?: number): Promise<Uint8Array> {
  const e = a.entries.get(name);
  if (!e) badFile(a.label, `missing zip entry ${name}`);
  if (expectBytes !== undefined && e.uncompressedSize !== expectBytes) {
    badFile(a.label, `zip entry ${name} holds ${e.uncompressedSize} bytes, the pickle says ${expectBytes}`);
  }
  if (e.uncompressedSize > Math.max(expectBytes ?? 0, MAX_PICKLE_BYTES)) badFile(a.label, `zip entry ${name} is too large (${e.uncompressedSize} bytes)`);
  const out = new Uint8Array(e.uncompressedSize);
  await new Promise<void>((resolve, reject) => {
    a.zip.openReadStream(e, (err, stream) => {
      if (err) return reject(err);
      let pos = 0;
      stream.on('data', (chunk: Buffer) => {
        if (pos + chunk.byteLength > out.byteLength) {
          stream.destroy(new Error('entry longer than its declared size'));
          return;
        }
        out.set(chunk, pos);
        pos += chunk.byteLength;
      });
      stream.on('error', reject);
      stream.on('end', () => (pos === out.byteLength ? resolve() : reject(new Error(`entry shorter than its declared size (${pos} of ${out.byteLength})`))));
    });
  }).catch((err: unknown) => {
    if (err instanceof MergeVQError) throw err;
    return badFile(a.label, `cannot read zip entry ${name} (${(err as Error).message})`);
  });
  return out;
}

// ---------------------------------------------------------------------------------------------
// Public API

/** Options of `loadCheckpoint` and `readCheckpointObject`. */
export interface LoadCheckpointOptions {
  /**
   * Which weights to return when the checkpoint has an EMA copy: `'ema'` maps LitEma buffers
   * (`model_ema.<name without dots>`), or a top-level `ema` state dict, back onto the parameter
   * names; `'raw'` (default) returns the trained weights and drops the EMA entries.
   */
  prefer?: 'ema' | 'raw';
  /** Parameter names the caller expects; `missing` / `unexpected` are computed against them. */
  expected?: Iterable<string>;
  /**
   * Replace globals outside the allowlist by inert placeholders (`PickleObject`) instead of refusing
   * the file. Useful for Lightning `hyper_parameters` holding arbitrary objects. Default false.
   */
  skipUnknownGlobals?: boolean;
  /** Convert float64 tensors to float32 (otherwise they are an `ERR_UNSUPPORTED_DTYPE` error). */
  convertF64?: boolean;
  /** Keep `loss.*` entries (discriminator, LPIPS, ...). Default false: they are dropped. */
  keepLoss?: boolean;
  /** Take the state dict from this top-level key instead of searching `state_dict`, `model`. */
  key?: string;
  /** A name for the file in messages (default: the path). */
  label?: string;
}

/** What `loadCheckpoint` returns. */
export interface LoadedCheckpoint {
  /** Parameter name -> contiguous CPU tensor, in the state dict's order. */
  tensors: Map<string, Tensor>;
  /** Where the state dict was found: a top-level key, or `''` for a bare state dict. */
  stateDictKey: string;
  ema: {
    /** Whether the checkpoint holds EMA weights. */
    available: boolean;
    /** Whether the returned tensors are the EMA weights. */
    used: boolean;
    /** LitEma's `num_updates` and `decay` when present. */
    numUpdates?: number;
    decay?: number;
    /** Parameters whose dot-less EMA name is shared by several parameters (raw weights kept). */
    ambiguous: string[];
  };
  /** Entries left out: `loss.*`, unused EMA entries, non-tensor values. */
  dropped: string[];
  /** `expected` names absent from `tensors` (empty without `expected`). */
  missing: string[];
  /** Names in `tensors` that are not in `expected` (empty without `expected`). */
  unexpected: string[];
  /**
   * The other top-level entries (epoch, global_step, hyper_parameters, ...) as unpickled values;
   * tensors among them stay unread `TorchTensorRef` descriptions.
   */
  extra: Map<string, unknown>;
}

function checkPath(path: unknown): asserts path is string {
  if (typeof path !== 'string' || path === '') typeError('path', 'a non-empty file path', path);
}

function checkOptions(opts: unknown): LoadCheckpointOptions {
  if (opts === undefined) return {};
  if (opts === null || typeof opts !== 'object') typeError('opts', 'an options object', opts);
  const o = opts as LoadCheckpointOptions;
  if (o.prefer !== undefined && o.prefer !== 'ema' && o.prefer !== 'raw') typeError('opts.prefer', "'ema' or 'raw'", o.prefer);
  if (o.key !== undefined && typeof o.key !== 'string') typeError('opts.key', 'a string', o.key);
  return o;
}

async function readObject(a: Archive, opts: LoadCheckpointOptions): Promise<unknown> {
  const byteorder = a.entries.get(`${a.prefix}byteorder`);
  if (byteorder) {
    const bo = new TextDecoder().decode(await readEntry(a, byteorder.fileName)).trim();
    if (bo !== 'little') badFile(a.label, `byte order ${JSON.stringify(bo)} is not supported (only little-endian)`);
  }
  const pkl = await readEntry(a, `${a.prefix}data.pkl`);
  const storages = new Map<string, TorchStorageRef>();
  return unpickle(pkl, {
    label: `${a.label} (${a.prefix}data.pkl)`,
    skipUnknownGlobals: opts.skipUnknownGlobals === true,
    resolveGlobal: makeResolver(a.label),
    persistentLoad: (pid) => {
      if (!Array.isArray(pid) || pid.length < 5 || pid[0] !== 'storage') badFile(a.label, 'persistent id is not a (storage, type, key, location, numel) tuple');
      const [, type, key, location, numel] = pid as unknown[];
      if (!(type instanceof TorchStorageType)) badFile(a.label, `storage ${JSON.stringify(key)} has no storage class`);
      if (typeof key !== 'string' || !/^[A-Za-z0-9_.-]+$/.test(key) || key.includes('..')) badFile(a.label, `storage key ${JSON.stringify(key)} is not a plain name`);
      if (!isNonNegInt(numel)) badFile(a.label, `storage ${key} size must be a non-negative integer`);
      const seen = storages.get(key);
      if (seen) {
        if (seen.dtype !== type.dtype || seen.numel !== numel) badFile(a.label, `storage ${key} is described twice with different types or sizes`);
        return seen;
      }
      const entry = a.entries.get(`${a.prefix}data/${key}`);
      if (!entry) badFile(a.label, `storage ${key} has no zip entry ${a.prefix}data/${key}`);
      const bytes = numel * (type.dtype === 'untyped' ? 1 : ELEMENT_SIZE[type.dtype]);
      if (entry.uncompressedSize !== bytes) badFile(a.label, `storage ${key} entry holds ${entry.uncompressedSize} bytes but ${numel} elements of ${type.dtype} need ${bytes}`);
      const ref = Object.freeze({ __storage: true, key, dtype: type.dtype, numel, location: typeof location === 'string' ? location : String(location) });
      storages.set(key, ref);
      return ref;
    },
  });
}

/**
 * Reads the object a checkpoint pickled (dicts as Maps, tensors as unread `TorchTensorRef`s)
 * without loading tensor data. Refuses disallowed globals like `loadCheckpoint`.
 */
export async function readCheckpointObject(path: string, opts: Pick<LoadCheckpointOptions, 'skipUnknownGlobals' | 'label'> = {}): Promise<unknown> {
  checkPath(path);
  const o = checkOptions(opts);
  const a = await openArchive(path, o.label ?? path);
  try {
    return await readObject(a, o);
  } finally {
    a.zip.close();
  }
}

const isTensorMap = (v: unknown): v is Map<unknown, unknown> => v instanceof Map && v.size > 0 && [...v.values()].some((x) => x instanceof TorchTensorRef);

/** Copies the strided view `t` out of its storage bytes into a dense row-major buffer. */
function gather(label: string, name: string, t: TorchTensorRef, storage: Uint8Array): Uint8Array {
  const es = ELEMENT_SIZE[t.dtype];
  const n = t.numel;
  const storageElems = Math.floor(storage.byteLength / es);
  if (n === 0) return new Uint8Array(0);
  let last = t.offset;
  for (let d = 0; d < t.shape.length; d++) last += (t.shape[d]! - 1) * t.stride[d]!;
  if (!Number.isSafeInteger(last) || last >= storageElems) badFile(label, `tensor ${name} (offset ${t.offset}, size [${t.shape}], stride [${t.stride}]) reaches element ${last} of a storage of ${storageElems}`);
  // Contiguous: one slice.
  let expect = 1;
  let contiguous = true;
  for (let d = t.shape.length - 1; d >= 0; d--) {
    if (t.shape[d]! !== 1 && t.stride[d]! !== expect) contiguous = false;
    expect *= t.shape[d]!;
  }
  if (contiguous) return storage.slice(t.offset * es, (t.offset + n) * es);
  // Strided: copy element by element through a word view (4-byte words for 8-byte elements, so
  // that no value passes through a float and every bit pattern survives).
  const out = new Uint8Array(n * es);
  const word = es === 8 ? 4 : es;
  const per = es / word;
  const mk = (b: Uint8Array) => (word === 4 ? new Uint32Array(b.buffer, b.byteOffset, b.byteLength / 4) : word === 2 ? new Uint16Array(b.buffer, b.byteOffset, b.byteLength / 2) : b);
  const src = mk(storage.byteOffset % word === 0 ? storage : storage.slice());
  const dst = mk(out);
  const nd = t.shape.length;
  const idx = new Array<number>(nd).fill(0);
  let srcPos = t.offset;
  for (let i = 0; i < n; i++) {
    for (let w = 0; w < per; w++) dst[i * per + w] = src[srcPos * per + w]!;
    for (let d = nd - 1; d >= 0; d--) {
      idx[d]!++;
      srcPos += t.stride[d]!;
      if (idx[d]! < t.shape[d]!) break;
      srcPos -= t.stride[d]! * t.shape[d]!;
      idx[d] = 0;
    }
  }
  return out;
}

function toTensor(label: string, name: string, t: TorchTensorRef, bytes: Uint8Array, convertF64: boolean): Tensor {
  if (t.dtype === 'float64') {
    if (!convertF64) throw new MergeVQError(`${label}: tensor ${name} is float64; pass { convertF64: true } to load it as float32`, 'ERR_UNSUPPORTED_DTYPE');
    return Tensor.from(Float32Array.from(new Float64Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 8)), t.shape);
  }
  const dtype = LOADS_AS[t.dtype];
  if (!dtype) throw new MergeVQError(`${label}: tensor ${name} has dtype ${t.dtype}, which mergevq tensors do not support`, 'ERR_UNSUPPORTED_DTYPE');
  return Tensor.from(bytes, t.shape, { dtype });
}

/**
 * Loads the weights of a PyTorch / Lightning checkpoint into contiguous CPU tensors.
 *
 * The state dict is the top-level `state_dict` entry (Lightning), else `model`, else the top-level
 * dict itself when it holds tensors (or `opts.key`). `loss.*` entries are dropped unless
 * `keepLoss`. With `prefer: 'ema'`, EMA weights replace the raw ones (see `LoadCheckpointOptions`).
 *
 * @throws MergeVQError `ERR_UNSAFE_PICKLE` when the pickle names a global outside
 *   `ALLOWED_GLOBALS` (without `skipUnknownGlobals`), `ERR_BAD_FILE` for a malformed archive or
 *   pickle, `ERR_UNSUPPORTED_DTYPE` for tensors mergevq cannot hold.
 */
export async function loadCheckpoint(path: string, opts: LoadCheckpointOptions = {}): Promise<LoadedCheckpoint> {
  checkPath(path);
  const o = checkOptions(opts);
  const label = o.label ?? path;
  const expected = o.expected === undefined ? undefined : [...o.expected];
  if (expected && !expected.every((e) => typeof e === 'string')) typeError('opts.expected', 'an iterable of strings', o.expected);
  const a = await openArchive(path, label);
  try {
    const top = await readObject(a, o);
    if (!(top instanceof Map)) badFile(label, `the pickled object is not a dict (got ${top === null ? 'None' : top instanceof PickleObject ? top.global : typeof top})`);
    let sdKey: string;
    if (o.key !== undefined) {
      if (!(top.get(o.key) instanceof Map)) badFile(label, `top-level entry ${JSON.stringify(o.key)} is not a dict`);
      sdKey = o.key;
    } else if (top.get('state_dict') instanceof Map) sdKey = 'state_dict';
    else if (isTensorMap(top.get('model'))) sdKey = 'model';
    else if (top.size === 0 || [...top.values()].some((v) => v instanceof TorchTensorRef)) sdKey = '';
    else badFile(label, `no state dict found (top-level keys: ${[...top.keys()].map(String).join(', ')})`);
    const sd = (sdKey === '' ? top : top.get(sdKey)) as Map<unknown, unknown>;

    const dropped: string[] = [];
    const raw = new Map<string, TorchTensorRef>();
    const emaEntries = new Map<string, unknown>();
    for (const [k, v] of sd) {
      const name = String(k);
      if (name.startsWith('model_ema.')) emaEntries.set(name.slice('model_ema.'.length), v);
      else if (!(v instanceof TorchTensorRef)) dropped.push(name);
      else raw.set(name, v);
    }
    // EMA: LitEma buffers inside the state dict, or a separate top-level 'ema' state dict.
    const topEma = sdKey !== '' && isTensorMap(top.get('ema')) ? (top.get('ema') as Map<unknown, unknown>) : undefined;
    const scalar = (v: unknown): number | undefined => {
      if (typeof v === 'number') return v;
      return undefined;
    };
    const ema: LoadedCheckpoint['ema'] = { available: emaEntries.size > 0 || topEma !== undefined, used: false, ambiguous: [] };
    const chosen = new Map<string, TorchTensorRef>(raw);
    const emaScalars = new Map<string, TorchTensorRef>();
    for (const meta of ['num_updates', 'decay']) {
      const v = emaEntries.get(meta);
      if (v instanceof TorchTensorRef && v.numel === 1) emaScalars.set(meta, v);
      else if (scalar(v) !== undefined) ema[meta === 'decay' ? 'decay' : 'numUpdates'] = scalar(v);
      if (emaEntries.has(meta)) dropped.push(`model_ema.${meta}`);
      emaEntries.delete(meta);
    }
    if (o.prefer === 'ema' && topEma) {
      for (const [k, v] of topEma) {
        if (v instanceof TorchTensorRef && chosen.has(String(k))) chosen.set(String(k), v);
      }
      ema.used = true;
    } else if (o.prefer === 'ema' && emaEntries.size > 0) {
      const byDotless = new Map<string, string[]>();
      for (const name of raw.keys()) {
        const s = name.replace(/\./g, '');
        byDotless.set(s, [...(byDotless.get(s) ?? []), name]);
      }
      for (const [s, v] of emaEntries) {
        const names = byDotless.get(s);
        if (!names || !(v instanceof TorchTensorRef)) {
          dropped.push(`model_ema.${s}`);
          continue;
        }
        if (names.length > 1) {
          ema.ambiguous.push(...names);
          dropped.push(`model_ema.${s}`);
          continue;
        }
        const target = raw.get(names[0]!)!;
        if (target.shape.join() !== v.shape.join()) badFile(label, `EMA weight model_ema.${s} has shape [${v.shape}] but ${names[0]} has [${target.shape}]`);
        chosen.set(names[0]!, v);
      }
      ema.used = true;
    } else {
      for (const s of emaEntries.keys()) dropped.push(`model_ema.${s}`);
    }
    if (!o.keepLoss) {
      for (const name of [...chosen.keys()]) {
        if (name.startsWith('loss.')) {
          chosen.delete(name);
          dropped.push(name);
        }
      }
    }

    // Materialize, reading each storage once and releasing it after its last use.
    const uses = new Map<string, number>();
    const all = [...chosen.values(), ...emaScalars.values()];
    for (const t of all) uses.set(t.storage.key, (uses.get(t.storage.key) ?? 0) + 1);
    const cache = new Map<string, Uint8Array>();
    const load = async (name: string, t: TorchTensorRef): Promise<Uint8Array> => {
      let bytes = cache.get(t.storage.key);
      if (!bytes) {
        const es = t.storage.dtype === 'untyped' ? 1 : ELEMENT_SIZE[t.storage.dtype];
        bytes = await readEntry(a, `${a.prefix}data/${t.storage.key}`, t.storage.numel * es);
        cache.set(t.storage.key, bytes);
      }
      const left = uses.get(t.storage.key)! - 1;
      uses.set(t.storage.key, left);
      if (left === 0) cache.delete(t.storage.key);
      return gather(label, name, t, bytes);
    };
    const tensors = new Map<string, Tensor>();
    for (const [name, t] of chosen) tensors.set(name, toTensor(label, name, t, await load(name, t), o.convertF64 === true));
    for (const [meta, t] of emaScalars) {
      const v = toTensor(label, `model_ema.${meta}`, t, await load(`model_ema.${meta}`, t), true).item();
      if (meta === 'decay') ema.decay = v;
      else ema.numUpdates = v;
    }

    const missing = expected ? expected.filter((e) => !tensors.has(e)) : [];
    const expSet = new Set(expected ?? []);
    const unexpected = expected ? [...tensors.keys()].filter((k) => !expSet.has(k)) : [];
    const extra = new Map<string, unknown>();
    if (sdKey !== '') for (const [k, v] of top) if (k !== sdKey) extra.set(String(k), v);
    return { tensors, stateDictKey: sdKey, ema, dropped, missing, unexpected, extra };
  } finally {
    a.zip.close();
  }
}


