/**
 * Loading PyTorch / Lightning checkpoints (`.ckpt`, `.pt`, `.pth`) without running Python code.
 *
 * Two torch.save formats are read:
 * - the zip archive (torch >= 1.6): `<top>/data.pkl` (a pickle of the saved object, where each
 *   tensor is a call to `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` and
 *   each storage a persistent id `('storage', torch.FloatStorage, key, location, numel)`), plus one
 *   entry `<top>/data/<key>` of raw little-endian bytes per storage (lib/io/zip.ts);
 * - the legacy stream (torch < 1.6, `_use_new_zipfile_serialization=False`; lib/io/legacy.ts).
 *
 * Both pickles are read by the restricted unpickler (lib/io/pickle.ts) with one policy: the
 * data-only globals of `ALLOWED_GLOBALS` are rebuilt, a global that can execute code refuses the
 * file with `ERR_UNSAFE_PICKLE`, any other global becomes an inert placeholder and is reported in a
 * warning. Every size the file declares is checked against the file before memory is allocated.
 */
import * as fs from 'node:fs';
import { MergeVQError, checkKeys, optionKeys, typeError } from '../errors.js';
import { Tensor } from '../tensor.js';
import { isLegacyHeader, openLegacy } from './legacy.js';
import { PickleObject, describePickled, unknownGlobalsPolicy, unpickle } from './pickle.js';
import {
  ELEMENT_SIZE,
  LOADS_AS,
  TorchTensorRef,
  badFile,
  makeResolver,
  storageRef,
  type TorchPickleOptions,
  type TorchSource,
  type TorchStorageRef,
} from './torch.js';
import { openZip } from './zip.js';

export {
  ALLOWED_GLOBALS,
  TorchDTypeRef,
  TorchStorageType,
  TorchTensorRef,
  type TorchDType,
  type TorchStorageRef,
} from './torch.js';

/** Largest data.pkl accepted: it holds only structure (tensor bytes live in separate entries). */
const MAX_PICKLE_BYTES = 1 << 30;
/** Default cap on an entry's uncompressed / compressed size (torch itself never compresses). */
const DEFAULT_MAX_COMPRESSION_RATIO = 64;
/** Materialized tensor bytes allowed beyond twice the storages' bytes (zero-stride views). */
const EXPANSION_SLACK = 16 << 20;

async function openZipSource(
  fd: number,
  size: number,
  label: string,
  po: TorchPickleOptions,
  maxRatio: number,
): Promise<TorchSource> {
  const zip = await openZip(fd, size, label, { maxCompressionRatio: maxRatio });
  try {
    const pkls = [...zip.entries.keys()].filter((n) => /^[^/]+\/data\.pkl$/.test(n));
    if (pkls.length === 0) badFile(label, 'no <folder>/data.pkl entry (not a torch.save archive)');
    if (pkls.length > 1) badFile(label, `several data.pkl entries (${pkls.slice(0, 5).join(', ')})`);
    const prefix = pkls[0]!.slice(0, -'data.pkl'.length);
    let object: Promise<unknown> | undefined;
    const read = async (): Promise<unknown> => {
      const byteorder = zip.entries.get(`${prefix}byteorder`);
      if (byteorder) {
        const bo = new TextDecoder().decode(await zip.read(byteorder.fileName, { maxBytes: 64 })).trim();
        if (bo !== 'little')
          badFile(label, `byte order ${describePickled(bo, 20)} is not supported (only little-endian)`);
      }
      const pkl = await zip.read(`${prefix}data.pkl`, { maxBytes: MAX_PICKLE_BYTES });
      const storages = new Map<string, TorchStorageRef>();
      return unpickle(pkl, {
        label: `${label} (${prefix}data.pkl)`,
        unknownGlobals: po.unknownGlobals,
        onUnknownGlobal: po.onUnknownGlobal,
        resolveGlobal: makeResolver(label),
        persistentLoad: (pid) =>
          storageRef(label, pid, storages, (key) => {
            const entry = zip.entries.get(`${prefix}data/${key}`);
            if (!entry) badFile(label, `storage ${key} has no zip entry ${prefix}data/${key}`);
            return entry.uncompressedSize;
          }),
      });
    };
    return {
      label,
      fileSize: size,
      format: 'zip',
      readObject: () => (object ??= read()),
      readStorage: (ref) => zip.read(`${prefix}data/${ref.key}`, { expectBytes: ref.nbytes }),
      close: () => zip.close(),
    };
  } catch (e) {
    zip.close();
    throw e;
  }
}

/** Opens a torch.save file of either format; the source owns the file descriptor. */
async function openSource(
  path: string,
  label: string,
  o: LoadCheckpointOptions,
  unknown: Set<string>,
): Promise<TorchSource> {
  const fd = fs.openSync(path, 'r');
  try {
    const size = fs.fstatSync(fd).size;
    const head = new Uint8Array(Math.min(size, 16));
    if (head.length > 0) fs.readSync(fd, head, 0, head.length, 0);
    const po: TorchPickleOptions = { unknownGlobals: unknownGlobalsPolicy(o), onUnknownGlobal: (q) => unknown.add(q) };
    const ratio = o.maxCompressionRatio ?? DEFAULT_MAX_COMPRESSION_RATIO;
    let src: TorchSource;
    if (head[0] === 0x50 && head[1] === 0x4b) src = await openZipSource(fd, size, label, po, ratio);
    else if (isLegacyHeader(head)) src = openLegacy(fd, size, label, po);
    else
      badFile(
        label,
        `not a torch.save file (neither a zip archive nor the legacy format; starts with ${Buffer.from(head.subarray(0, 4)).toString('hex')})`,
      );
    const close = src.close;
    return {
      ...src,
      close: () => {
        try {
          close();
        } finally {
          fs.closeSync(fd);
        }
      },
    };
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
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
   * Globals that are neither on the allowlist nor code-execution globals (Lightning
   * hyper-parameter classes, pathlib, ...): `'placeholder'` (default) reads them as inert
   * `PickleObject`s and reports them through `onWarning`; `'refuse'` refuses the file with
   * `ERR_UNSAFE_PICKLE`. Code-execution globals (`os.system`, `builtins.eval`, ...) are always
   * refused.
   */
  unknownGlobals?: 'placeholder' | 'refuse';
  /** @deprecated Use `unknownGlobals`; `false` means `'refuse'`, `true` the default. */
  skipUnknownGlobals?: boolean;
  /**
   * Receives the warning listing the unknown globals read as placeholders. Default:
   * `process.emitWarning` with type `MergeVQWarning` and code `MERGEVQ_UNKNOWN_GLOBALS`.
   */
  onWarning?: (message: string) => void;
  /** Largest uncompressed / compressed size ratio of a zip entry over 1 MiB (default 64). */
  maxCompressionRatio?: number;
  /**
   * Most bytes the returned tensors may take in all (default: twice the bytes of the storages
   * they view plus 16 MiB, so that zero-stride views cannot expand a small file without bound).
   */
  maxTensorBytes?: number;
  /** Convert float64 tensors to float32 (otherwise they are an `ERR_UNSUPPORTED_DTYPE` error). */
  convertF64?: boolean;
  /** Keep `loss.*` entries (discriminator, LPIPS, ...). Default false: they are dropped. */
  keepLoss?: boolean;
  /** Take the state dict from this top-level key instead of searching `state_dict`, `model`. */
  key?: string;
  /** A name for the file in messages (default: the path). */
  label?: string;
}
const LOAD_CHECKPOINT_KEYS = optionKeys<LoadCheckpointOptions>()([
  'prefer',
  'expected',
  'unknownGlobals',
  'skipUnknownGlobals',
  'onWarning',
  'maxCompressionRatio',
  'maxTensorBytes',
  'convertF64',
  'keepLoss',
  'key',
  'label',
]);
/** Options of {@link readCheckpointObject}: the pickle policy of {@link loadCheckpoint}. */
export type ReadCheckpointObjectOptions = Pick<
  LoadCheckpointOptions,
  'unknownGlobals' | 'skipUnknownGlobals' | 'onWarning' | 'maxCompressionRatio' | 'label'
>;
const READ_CHECKPOINT_OBJECT_KEYS = optionKeys<ReadCheckpointObjectOptions>()([
  'unknownGlobals',
  'skipUnknownGlobals',
  'onWarning',
  'maxCompressionRatio',
  'label',
]);

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
  /** Globals outside the allowlist that were read as inert placeholders (also in the warning). */
  unknownGlobals: string[];
  /** The file's torch.save format. */
  format: 'zip' | 'legacy';
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

function checkOptions(opts: unknown, name: string, known: readonly string[]): LoadCheckpointOptions {
  if (opts === undefined) return {};
  if (opts === null || typeof opts !== 'object') typeError('opts', 'an options object', opts);
  checkKeys(name, opts, known);
  const o = opts as LoadCheckpointOptions;
  if (o.prefer !== undefined && o.prefer !== 'ema' && o.prefer !== 'raw')
    typeError('opts.prefer', "'ema' or 'raw'", o.prefer);
  if (o.key !== undefined && typeof o.key !== 'string') typeError('opts.key', 'a string', o.key);
  if (o.unknownGlobals !== undefined && o.unknownGlobals !== 'placeholder' && o.unknownGlobals !== 'refuse')
    typeError('opts.unknownGlobals', "'placeholder' or 'refuse'", o.unknownGlobals);
  if (o.onWarning !== undefined && typeof o.onWarning !== 'function')
    typeError('opts.onWarning', 'a function', o.onWarning);
  for (const k of ['maxCompressionRatio', 'maxTensorBytes'] as const) {
    const v = o[k];
    if (v !== undefined && (typeof v !== 'number' || !(v > 0))) typeError(`opts.${k}`, 'a positive number', v);
  }
  return o;
}

function warnUnknown(label: string, unknown: Set<string>, o: LoadCheckpointOptions): void {
  if (unknown.size === 0) return;
  const list = [...unknown];
  const msg = `${label}: the pickle names ${list.length} global${list.length > 1 ? 's' : ''} outside the allowlist, read as inert placeholders (nothing was run): ${list.slice(0, 20).join(', ')}${list.length > 20 ? ', ...' : ''}`;
  if (o.onWarning) o.onWarning(msg);
  else process.emitWarning(msg, { type: 'MergeVQWarning', code: 'MERGEVQ_UNKNOWN_GLOBALS' });
}

/** A state-dict key as a name: strings as they are, anything else by a bounded description. */
function keyName(k: unknown): string {
  if (typeof k === 'string') return k;
  if (typeof k === 'number' || typeof k === 'bigint' || typeof k === 'boolean') return String(k);
  return describePickled(k, 80);
}

/**
 * Reads the object a checkpoint pickled (dicts as Maps, tensors as unread `TorchTensorRef`s)
 * without loading tensor data, with the pickle policy of `loadCheckpoint`.
 */
export async function readCheckpointObject(path: string, opts: ReadCheckpointObjectOptions = {}): Promise<unknown> {
  checkPath(path);
  const o = checkOptions(opts, 'readCheckpointObject options', READ_CHECKPOINT_OBJECT_KEYS);
  const label = o.label ?? path;
  const unknown = new Set<string>();
  const src = await openSource(path, label, o, unknown);
  try {
    const v = await src.readObject();
    warnUnknown(label, unknown, o);
    return v;
  } finally {
    src.close();
  }
}

const isTensorMap = (v: unknown): v is Map<unknown, unknown> =>
  v instanceof Map && v.size > 0 && [...v.values()].some((x) => x instanceof TorchTensorRef);

/**
 * Checks the view `t` against its storage (before any byte is read) and returns its dense size in
 * bytes.
 */
function checkView(label: string, name: string, t: TorchTensorRef): number {
  const es = ELEMENT_SIZE[t.dtype];
  const n = t.numel;
  if (!Number.isSafeInteger(n * es)) badFile(label, `tensor ${name} of size [${t.shape.join(', ')}] is too large`);
  if (n === 0) return 0;
  const storageElems = Math.floor(t.storage.nbytes / es);
  let last = t.offset;
  for (let d = 0; d < t.shape.length; d++) last += (t.shape[d]! - 1) * t.stride[d]!;
  if (!Number.isSafeInteger(last) || last >= storageElems)
    badFile(
      label,
      `tensor ${name} (offset ${t.offset}, size [${t.shape}], stride [${t.stride}]) reaches element ${last} of a storage of ${storageElems}`,
    );
  return n * es;
}

/** Copies the strided view `t` (checked by `checkView`) out of its storage bytes, densely. */
function gather(t: TorchTensorRef, storage: Uint8Array): Uint8Array {
  const es = ELEMENT_SIZE[t.dtype];
  const n = t.numel;
  if (n === 0) return new Uint8Array(0);
  // Contiguous: one slice.
  let expect = 1;
  let contiguous = true;
  for (let d = t.shape.length - 1; d >= 0; d--) {
    if (t.shape[d]! !== 1 && t.stride[d]! !== expect) contiguous = false;
    expect *= t.shape[d]!;
  }
  // A view, not a copy: Tensor.from copies it once into the tensor.
  if (contiguous) return storage.subarray(t.offset * es, (t.offset + n) * es);
  // Strided: copy element by element through a word view (4-byte words for 8-byte elements, so
  // that no value passes through a float and every bit pattern survives).
  const out = new Uint8Array(n * es);
  const word = es === 8 ? 4 : es;
  const per = es / word;
  const mk = (b: Uint8Array) =>
    word === 4
      ? new Uint32Array(b.buffer, b.byteOffset, b.byteLength / 4)
      : word === 2
        ? new Uint16Array(b.buffer, b.byteOffset, b.byteLength / 2)
        : b;
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
    if (!convertF64)
      throw new MergeVQError(
        `${label}: tensor ${name} is float64; pass { convertF64: true } to load it as float32`,
        'ERR_UNSUPPORTED_DTYPE',
      );
    return Tensor.from(
      Float32Array.from(new Float64Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 8)),
      t.shape,
    );
  }
  const dtype = LOADS_AS[t.dtype];
  if (!dtype)
    throw new MergeVQError(
      `${label}: tensor ${name} has dtype ${t.dtype}, which mergevq tensors do not support`,
      'ERR_UNSUPPORTED_DTYPE',
    );
  return Tensor.from(bytes, t.shape, { dtype });
}

/**
 * Loads the weights of a PyTorch / Lightning checkpoint into contiguous CPU tensors.
 *
 * The state dict is the top-level `state_dict` entry (Lightning), else `model`, else the top-level
 * dict itself when it holds tensors (or `opts.key`). `loss.*` entries are dropped unless
 * `keepLoss`. With `prefer: 'ema'`, EMA weights replace the raw ones (see `LoadCheckpointOptions`).
 *
 * Both torch.save formats are read (zip archives and the legacy pre-1.6 stream). Globals outside
 * the allowlist follow `opts.unknownGlobals` (placeholders and a warning by default).
 *
 * @throws MergeVQError `ERR_UNSAFE_PICKLE` when the pickle names a code-execution global (or any
 *   unknown global with `unknownGlobals: 'refuse'`), `ERR_BAD_FILE` for a malformed file, a
 *   budget exceeded or a checkpoint without tensors, `ERR_UNSUPPORTED_DTYPE` for tensors mergevq
 *   cannot hold.
 */
export async function loadCheckpoint(path: string, opts: LoadCheckpointOptions = {}): Promise<LoadedCheckpoint> {
  checkPath(path);
  const o = checkOptions(opts, 'loadCheckpoint options', LOAD_CHECKPOINT_KEYS);
  const label = o.label ?? path;
  const expected = o.expected === undefined ? undefined : [...o.expected];
  if (expected && !expected.every((e) => typeof e === 'string'))
    typeError('opts.expected', 'an iterable of strings', o.expected);
  const unknown = new Set<string>();
  const a = await openSource(path, label, o, unknown);
  try {
    const top = await a.readObject();
    if (!(top instanceof Map))
      badFile(
        label,
        `the pickled object is not a dict (got ${top === null ? 'None' : top instanceof PickleObject ? top.global : typeof top})`,
      );
    let sdKey: string;
    if (o.key !== undefined) {
      if (!(top.get(o.key) instanceof Map)) badFile(label, `top-level entry ${JSON.stringify(o.key)} is not a dict`);
      sdKey = o.key;
    } else if (top.get('state_dict') instanceof Map) sdKey = 'state_dict';
    else if (isTensorMap(top.get('model'))) sdKey = 'model';
    else if (top.size === 0 || [...top.values()].some((v) => v instanceof TorchTensorRef)) sdKey = '';
    else
      badFile(
        label,
        `no state dict found (top-level keys: ${[...top.keys()]
          .slice(0, 20)
          .map((k) => describePickled(k, 60))
          .join(', ')}${top.size > 20 ? ', ...' : ''})`,
      );
    const sd = (sdKey === '' ? top : top.get(sdKey)) as Map<unknown, unknown>;

    const dropped: string[] = [];
    const raw = new Map<string, TorchTensorRef>();
    const emaEntries = new Map<string, unknown>();
    for (const [k, v] of sd) {
      // Python state dicts have string keys; anything else is refused (and only described, boundedly).
      if (typeof k !== 'string') badFile(label, `state dict key ${describePickled(k, 60)} is not a string`);
      const name = k;
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
    const ema: LoadedCheckpoint['ema'] = {
      available: emaEntries.size > 0 || topEma !== undefined,
      used: false,
      ambiguous: [],
    };
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
        if (v instanceof TorchTensorRef && chosen.has(keyName(k))) chosen.set(keyName(k), v);
      }
      ema.used = true;
    } else if (o.prefer === 'ema' && emaEntries.size > 0) {
      const byDotless = new Map<string, string[]>();
      for (const name of raw.keys()) {
        const s = name.replace(/\./g, '');
        const list = byDotless.get(s);
        if (list) list.push(name);
        else byDotless.set(s, [name]);
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
        if (target.shape.join() !== v.shape.join())
          badFile(label, `EMA weight model_ema.${s} has shape [${v.shape}] but ${names[0]} has [${target.shape}]`);
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

    if (chosen.size === 0) {
      badFile(
        label,
        `no tensors to load (the state dict${sdKey ? ` ${JSON.stringify(sdKey)}` : ''} has ${sd.size} entries${
          dropped.length
            ? `; left out: ${dropped
                .slice(0, 5)
                .map((d) => describePickled(d, 60))
                .join(', ')}${dropped.length > 5 ? ', ...' : ''}`
            : ''
        })`,
      );
    }
    // Check every view against its storage and the memory budget before reading any storage.
    const all = [...chosen.values(), ...emaScalars.values()];
    const names = [...chosen.keys(), ...[...emaScalars.keys()].map((m) => `model_ema.${m}`)];
    let dense = 0;
    const storageBytes = new Map<string, number>();
    all.forEach((t, i) => {
      dense += checkView(label, names[i]!, t);
      storageBytes.set(t.storage.key, t.storage.nbytes);
    });
    let stored = 0;
    for (const b of storageBytes.values()) stored += b;
    const maxBytes = o.maxTensorBytes ?? 2 * stored + EXPANSION_SLACK;
    if (dense > maxBytes)
      badFile(
        label,
        `the tensors would take ${dense} bytes, more than the limit of ${maxBytes} (twice the ${stored} bytes of their storages plus ${EXPANSION_SLACK}: zero-stride or repeated views?)`,
      );

    // Materialize, reading each storage once and releasing it after its last use.
    const uses = new Map<string, number>();
    for (const t of all) uses.set(t.storage.key, (uses.get(t.storage.key) ?? 0) + 1);
    const cache = new Map<string, Uint8Array>();
    const load = async (_name: string, t: TorchTensorRef): Promise<Uint8Array> => {
      let bytes = cache.get(t.storage.key);
      if (!bytes) {
        bytes = await a.readStorage(t.storage);
        cache.set(t.storage.key, bytes);
      }
      const left = uses.get(t.storage.key)! - 1;
      uses.set(t.storage.key, left);
      if (left === 0) cache.delete(t.storage.key);
      return gather(t, bytes);
    };
    const tensors = new Map<string, Tensor>();
    for (const [name, t] of chosen)
      tensors.set(name, toTensor(label, name, t, await load(name, t), o.convertF64 === true));
    for (const [meta, t] of emaScalars) {
      const v = toTensor(label, `model_ema.${meta}`, t, await load(`model_ema.${meta}`, t), true).item();
      if (meta === 'decay') ema.decay = v;
      else ema.numUpdates = v;
    }

    const missing = expected ? expected.filter((e) => !tensors.has(e)) : [];
    const expSet = new Set(expected ?? []);
    const unexpected = expected ? [...tensors.keys()].filter((k) => !expSet.has(k)) : [];
    const extra = new Map<string, unknown>();
    if (sdKey !== '') for (const [k, v] of top) if (k !== sdKey) extra.set(keyName(k), v);
    warnUnknown(label, unknown, o);
    return {
      tensors,
      stateDictKey: sdKey,
      ema,
      dropped,
      missing,
      unexpected,
      unknownGlobals: [...unknown],
      format: a.format,
      extra,
    };
  } finally {
    a.close();
  }
}
