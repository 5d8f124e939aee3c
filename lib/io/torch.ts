/**
 * What the two torch.save formats (zip archive and legacy pre-1.6 stream) share: the storage and
 * tensor descriptions their pickles produce, the allowlist of data-only globals and the resolver
 * that maps them to inert JS values, and the checks of storage persistent ids.
 */
import { MergeVQError } from '../errors.js';
import type { DType } from '../native.js';
import { PickleCallable, describePickled, type PickleCallContext } from './pickle.js';

/** Element types of torch storages that this loader knows. */
export type TorchDType =
  | 'float32'
  | 'float16'
  | 'bfloat16'
  | 'float64'
  | 'int64'
  | 'int32'
  | 'int16'
  | 'int8'
  | 'uint8'
  | 'bool';

/** Bytes per element of each torch dtype. */
export const ELEMENT_SIZE: Readonly<Record<TorchDType, number>> = {
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
export const LOADS_AS: Partial<Record<TorchDType, DType>> = {
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
  constructor(
    readonly qualname: string,
    readonly dtype: TorchDType | 'untyped',
  ) {}
}

/** A dtype object named by the pickle (`torch.float32`, ...). */
export class TorchDTypeRef {
  constructor(
    readonly qualname: string,
    readonly dtype: TorchDType,
  ) {}
}

/** A storage of the file, as referenced by the pickle; its bytes are read only when needed. */
export interface TorchStorageRef {
  readonly key: string;
  readonly dtype: TorchDType | 'untyped';
  /** Elements (bytes for untyped storages). */
  readonly numel: number;
  /** Bytes: `numel` times the element size. */
  readonly nbytes: number;
  readonly location: string;
  /**
   * Legacy files only: a storage that is a view of another one (`view_metadata` of old torch),
   * `offset` elements into the storage `key`.
   */
  readonly base?: { readonly key: string; readonly offset: number };
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
  /** Elements of the view (may exceed 2^53 for a hostile file: check with Number.isSafeInteger). */
  get numel(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }
}

/** The element type of each legacy storage class (`torch.FloatStorage`, ...). */
export const STORAGE_DTYPES: Readonly<Record<string, TorchDType | 'untyped'>> = {
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
 * The globals a checkpoint pickle may name and that are rebuilt as data (code-execution globals are
 * refused, any other becomes an inert placeholder; see lib/io/pickle.ts): containers, tensor and
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

/** Throws the `ERR_BAD_FILE` error of a checkpoint. */
export function badFile(label: string, problem: string): never {
  throw new MergeVQError(`${label}: invalid checkpoint: ${problem}`, 'ERR_BAD_FILE');
}

/** Whether `v` is a safe non-negative integer. */
export const isNonNegInt = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;

/** Most dimensions a tensor of a checkpoint may have. */
const MAX_DIMS = 64;

function intList(label: string, what: string, v: unknown): number[] {
  if (!Array.isArray(v) || v.length > MAX_DIMS || !v.every(isNonNegInt))
    badFile(label, `${what} must be a tuple of at most ${MAX_DIMS} non-negative integers`);
  return v as number[];
}

/** Builds the resolver of the allowed globals for the pickle of file `label`. */
export function makeResolver(label: string): (module: string, name: string) => unknown {
  const sizeOf = (v: unknown): number =>
    v instanceof Map || v instanceof Set ? v.size : Array.isArray(v) ? v.length : 0;
  const toMap = (args: readonly unknown[], ctx: PickleCallContext): Map<unknown, unknown> => {
    const m = new Map<unknown, unknown>();
    const src = args[0];
    ctx.charge(sizeOf(src));
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
    if (shape.length !== strides.length)
      badFile(label, `tensor size has ${shape.length} dims but stride has ${strides.length}`);
    let numel = 1;
    for (const s of shape) numel *= s;
    if (!Number.isSafeInteger(numel)) badFile(label, `tensor size [${shape.join(', ')}] has more than 2^53 elements`);
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
  const path = (args: readonly unknown[]): string => {
    if (!args.every((a) => typeof a === 'string'))
      badFile(label, `pathlib path from parts that are not strings: ${describePickled(args)}`);
    return args.join('/').replace(/\/+/g, '/');
  };
  const copy = (a: readonly unknown[], ctx: PickleCallContext): unknown[] => {
    const src = a[0];
    ctx.charge(sizeOf(src));
    return Array.isArray(src) ? [...src] : src instanceof Set ? [...src] : [];
  };
  const plain = (v: unknown): string => {
    if (typeof v === 'string' || typeof v === 'number') return String(v);
    return badFile(label, `torch.device of ${describePickled(v)}`);
  };
  const table: Record<string, unknown> = {
    'collections.OrderedDict': new PickleCallable('collections.OrderedDict', toMap),
    'builtins.dict': new PickleCallable('builtins.dict', toMap),
    'builtins.set': new PickleCallable('builtins.set', (a, ctx) => new Set(copy(a, ctx))),
    'builtins.frozenset': new PickleCallable('builtins.frozenset', (a, ctx) => new Set(copy(a, ctx))),
    'builtins.list': new PickleCallable('builtins.list', (a, ctx) => copy(a, ctx)),
    'builtins.tuple': new PickleCallable('builtins.tuple', (a, ctx) => Object.freeze(copy(a, ctx))),
    '_codecs.encode': new PickleCallable('_codecs.encode', (a, ctx) => {
      const [s, enc] = a;
      if (typeof s !== 'string' || (enc !== 'latin1' && enc !== 'latin-1'))
        badFile(label, '_codecs.encode other than latin1 of a string');
      ctx.charge(s.length);
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
    'torch._utils._rebuild_parameter_with_state': new PickleCallable(
      'torch._utils._rebuild_parameter_with_state',
      asParameter,
    ),
    'torch.Size': new PickleCallable('torch.Size', (a) =>
      Object.freeze(intList(label, 'torch.Size', a[0] ?? []).slice()),
    ),
    'torch.device': new PickleCallable('torch.device', (a) =>
      a.length > 1 && a[1] !== null ? `${plain(a[0])}:${plain(a[1])}` : plain(a[0]),
    ),
  };
  for (const q of ATTRIBUTE_DICTS) table[q] = new PickleCallable(q, toMap);
  for (const p of ['PosixPath', 'PurePosixPath', 'WindowsPath', 'PureWindowsPath'])
    table[`pathlib.${p}`] = new PickleCallable(`pathlib.${p}`, path);
  for (const [s, d] of Object.entries(STORAGE_DTYPES)) table[`torch.${s}`] = new TorchStorageType(`torch.${s}`, d);
  for (const [s, d] of Object.entries(DTYPE_OBJECTS)) table[`torch.${s}`] = new TorchDTypeRef(`torch.${s}`, d);
  return (module, name) => {
    const q = `${module === '__builtin__' ? 'builtins' : module}.${name}`;
    return Object.hasOwn(table, q) ? table[q] : undefined;
  };
}

/** Whether `v` is a storage description made by `storageRef`. */
export function isStorageRef(v: unknown): v is TorchStorageRef {
  return typeof v === 'object' && v !== null && (v as { __storage?: boolean }).__storage === true;
}

/**
 * Validates a storage persistent id `('storage', type, key, location, numel[, view_metadata])`
 * and returns its description, the same object for every mention of one key. `byteLength` says
 * how many bytes the file holds for a key (undefined: no such storage); legacy view storages are
 * checked against their base.
 */
export function storageRef(
  label: string,
  pid: unknown,
  seen: Map<string, TorchStorageRef>,
  byteLength: (key: string, nbytes: number) => number | undefined,
): TorchStorageRef {
  if (!Array.isArray(pid) || pid.length < 5 || pid.length > 6 || pid[0] !== 'storage')
    badFile(label, `persistent id ${describePickled(pid, 60)} is not a (storage, type, key, location, numel) tuple`);
  const [, type, key, location, numel, view] = pid as unknown[];
  if (!(type instanceof TorchStorageType)) badFile(label, `storage ${describePickled(key, 40)} has no storage class`);
  const plainKey = (k: unknown): k is string =>
    typeof k === 'string' && k.length <= 64 && /^[A-Za-z0-9_.-]+$/.test(k) && !k.includes('..');
  if (!plainKey(key)) badFile(label, `storage key ${describePickled(key, 40)} is not a plain name`);
  if (!isNonNegInt(numel)) badFile(label, `storage ${key} size must be a non-negative integer`);
  if (typeof location !== 'string') badFile(label, `storage ${key} location must be a string`);
  const es = type.dtype === 'untyped' ? 1 : ELEMENT_SIZE[type.dtype];
  const nbytes = numel * es;
  if (!Number.isSafeInteger(nbytes)) badFile(label, `storage ${key} of ${numel} elements is too large`);
  let base: { key: string; offset: number } | undefined;
  let viewKey = key;
  if (view !== undefined && view !== null) {
    // Old torch: (view_key, offset, view_size) names a view of the root storage `key`.
    if (
      !Array.isArray(view) ||
      view.length !== 3 ||
      !plainKey(view[0]) ||
      !isNonNegInt(view[1]) ||
      !isNonNegInt(view[2])
    )
      badFile(label, `storage ${key} has malformed view metadata ${describePickled(view, 60)}`);
    const [vk, off, vsize] = view as [string, number, number];
    if (off + vsize > numel)
      badFile(label, `storage view ${vk} [${off}, ${off + vsize}) exceeds its base ${key} of ${numel} elements`);
    base = { key, offset: off };
    viewKey = vk;
  }
  const prior = seen.get(viewKey);
  if (prior) {
    if (
      prior.dtype !== type.dtype ||
      (base ? prior.base?.key !== base.key || prior.base.offset !== base.offset : prior.numel !== numel)
    ) {
      badFile(label, `storage ${viewKey} is described twice with different types or sizes`);
    }
    return prior;
  }
  const have = byteLength(key, nbytes);
  if (have === undefined) badFile(label, `storage ${key} is not in the file`);
  if (have !== nbytes)
    badFile(label, `storage ${key} entry holds ${have} bytes but ${numel} elements of ${type.dtype} need ${nbytes}`);
  const vnumel = base ? (view as number[])[2]! : numel;
  const ref: TorchStorageRef = Object.freeze({
    __storage: true,
    key: viewKey,
    dtype: type.dtype,
    numel: vnumel,
    nbytes: vnumel * es,
    location,
    ...(base ? { base: Object.freeze(base) } : {}),
  });
  seen.set(viewKey, ref);
  return ref;
}

/** Options shared by the pickle readers of both formats. */
export interface TorchPickleOptions {
  unknownGlobals: 'placeholder' | 'refuse';
  /** Called with each distinct unknown global that became a placeholder. */
  onUnknownGlobal: (qualname: string) => void;
}

/** A torch.save file opened for reading: its pickled object, then its storages on demand. */
export interface TorchSource {
  readonly label: string;
  readonly fileSize: number;
  /** The format: `'zip'` (torch >= 1.6) or `'legacy'`. */
  readonly format: 'zip' | 'legacy';
  /** The unpickled object, storages as `TorchStorageRef`s (read once, then cached). */
  readObject(): Promise<unknown>;
  /** The bytes of a storage the object references (exactly `ref.nbytes`). */
  readStorage(ref: TorchStorageRef): Promise<Uint8Array>;
  close(): void;
}
