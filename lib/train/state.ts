/**
 * Crash-safe training checkpoints: named tensors (model weights, optimizer moments, EMA copies,
 * ...) plus a JSON meta object (step, loader position, RNG states, config) in one safetensors
 * file, the meta and a SHA-256 of the tensors kept in its `__metadata__`.
 *
 * Saving never leaves the target half-written: the bytes go to a temporary file in the same
 * folder, which is fsynced and renamed over the target after the previous checkpoint has been
 * renamed to `<path>.prev` (both renames followed by an fsync of the folder). At every moment at
 * least one of `<path>` and `<path>.prev` is a complete, verified checkpoint, and loading falls
 * back from a damaged or missing `<path>` to `<path>.prev`. Loading never modifies any file.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { MergeVQError, describe, typeError, checkKeys, optionKeys } from '../errors.js';
import { encodeSafetensors, readSafetensorsSync, type RawTensor } from '../io/safetensors.js';
import type { DType } from '../native.js';
import { Tensor } from '../tensor.js';

/** A JSON value (what `meta` may hold). */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

/** What a checkpoint holds. */
export interface TrainingState {
  /** Free-form names (e.g. `model.encoder.conv_in.weight`, `opt.exp_avg.<name>`) to tensors. */
  tensors: Map<string, Tensor>;
  /**
   * A JSON object: plain objects, arrays, strings, finite numbers, booleans and null (checked at
   * save time; anything else is a TypeError naming its path, e.g. `state.meta.lr`).
   */
  meta: { readonly [key: string]: unknown };
}

/** A loaded checkpoint and where it came from. */
export interface LoadedTrainingState extends TrainingState {
  /** The saved meta, parsed. */
  meta: { [key: string]: JsonValue };
  /** The file read: `path` itself, or its `.prev`. */
  loadedFrom: string;
  /** 'latest' when `path` was good, 'previous' when it fell back to `<path>.prev`. */
  which: 'latest' | 'previous';
  /** The files tried before, and why each was rejected. */
  rejected: { path: string; reason: string }[];
}

/** Options of `saveTrainingState`. */
export interface SaveTrainingStateOptions {
  /** Keep the checkpoint being replaced as `<path>.prev` (default true). */
  keepPrevious?: boolean;
}
const SAVE_TRAINING_STATE_KEYS = optionKeys<SaveTrainingStateOptions>()(['keepPrevious']);

/** Options of the trainers' `exportWeights`. */
export interface ExportWeightsOptions {
  /** Write the EMA weights when the trainer keeps them (default true). */
  ema?: boolean;
  /** The stored dtype (default float32). */
  dtype?: 'float32' | 'float16' | 'bfloat16';
}
/** The keys of {@link ExportWeightsOptions}. */
export const EXPORT_WEIGHTS_KEYS = optionKeys<ExportWeightsOptions>()(['ema', 'dtype']);

const FORMAT = 'mergevq.training_state';
const VERSION = '1';

/** The previous-checkpoint file of `path`. */
export function previousPath(file: string): string {
  return `${file}.prev`;
}

function checkJson(v: unknown, where: string, depth: number): void {
  if (depth > 64) typeError(where, 'JSON nested at most 64 levels deep', v);
  if (v === null || typeof v === 'boolean' || typeof v === 'string') return;
  if (typeof v === 'number') {
    if (!Number.isFinite(v)) typeError(where, 'a finite number (JSON has no NaN or Infinity)', v);
    return;
  }
  if (Array.isArray(v)) {
    v.forEach((x, i) => checkJson(x, `${where}[${i}]`, depth + 1));
    return;
  }
  if (typeof v === 'object') {
    const proto = Object.getPrototypeOf(v);
    if (proto !== Object.prototype && proto !== null)
      typeError(where, 'a plain object, array, string, finite number, boolean or null', v);
    for (const [k, x] of Object.entries(v as Record<string, unknown>)) checkJson(x, `${where}.${k}`, depth + 1);
    return;
  }
  typeError(where, 'a JSON value', v);
}

/** One tensor's bytes, read once, for both the digest and the file. */
interface Entry {
  name: string;
  raw: RawTensor & { dtype: DType };
  bytes: Uint8Array;
}

function entriesOf(tensors: Map<string, Tensor>): Entry[] {
  if (!(tensors instanceof Map)) typeError('state.tensors', 'a Map<string, Tensor>', tensors);
  const out: Entry[] = [];
  for (const [name, t] of tensors) {
    if (typeof name !== 'string' || name === '' || name === '__metadata__')
      typeError('state.tensors key', 'a non-empty string other than "__metadata__"', name);
    if (!(t instanceof Tensor)) typeError(`state.tensors[${JSON.stringify(name)}]`, 'a Tensor', t);
    if (t.disposed) typeError(`state.tensors[${JSON.stringify(name)}]`, 'a live (not disposed) Tensor', t);
    const data = t.device === 'cpu' ? t.toArray() : t.to('cpu').toArray();
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    out.push({ name, raw: { dtype: t.dtype, shape: [...t.shape], data }, bytes });
  }
  return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/**
 * SHA-256 over the tensors in name order: each name, dtype, shape and bytes, length-prefixed so
 * that no two different sets of tensors hash the same stream.
 */
function digest(
  items: readonly { name: string; dtype: string; shape: readonly number[]; bytes: Uint8Array }[],
): string {
  const h = createHash('sha256');
  const u32 = (n: number) => {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(n));
    h.update(b);
  };
  u32(items.length);
  for (const it of items) {
    const name = Buffer.from(it.name, 'utf8');
    u32(name.byteLength);
    h.update(name);
    const dt = Buffer.from(it.dtype, 'utf8');
    u32(dt.byteLength);
    h.update(dt);
    u32(it.shape.length);
    for (const s of it.shape) u32(s);
    u32(it.bytes.byteLength);
    h.update(it.bytes);
  }
  return h.digest('hex');
}

async function fsyncDir(dir: string): Promise<void> {
  let fh: fs.promises.FileHandle | null = null;
  try {
    fh = await fs.promises.open(dir, 'r');
    await fh.sync();
  } catch (e) {
    // Some platforms (Windows) cannot open or fsync a folder; the renames are still atomic there.
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== 'EISDIR' && code !== 'EPERM' && code !== 'EINVAL' && code !== 'EBADF') throw e;
  } finally {
    await fh?.close();
  }
}

async function exists(p: string): Promise<boolean> {
  try {
    await fs.promises.lstat(p);
    return true;
  } catch {
    return false;
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Removes temporary files of `file` left by processes that died while saving. */
async function removeStaleTemps(file: string): Promise<void> {
  const dir = path.dirname(file);
  const prefix = `${path.basename(file)}.tmp-`;
  let names: string[];
  try {
    names = await fs.promises.readdir(dir);
  } catch {
    return;
  }
  for (const n of names) {
    if (!n.startsWith(prefix)) continue;
    const m = /^(\d+)-[0-9a-f]+$/.exec(n.slice(prefix.length));
    if (!m) continue;
    const pid = Number(m[1]);
    if (pid !== process.pid && !pidAlive(pid)) await fs.promises.rm(path.join(dir, n), { force: true });
  }
}

/** Files this process wrote and verified: path -> identity, so a save need not re-read them. */
const written = new Map<string, { ino: number; size: number; mtimeMs: number }>();

async function trustedOrValid(file: string): Promise<{ ok: true } | { ok: false; reason: string }> {
  const key = path.resolve(file);
  const st = await fs.promises.stat(file);
  const w = written.get(key);
  if (w && w.ino === st.ino && w.size === st.size && w.mtimeMs === st.mtimeMs) return { ok: true };
  try {
    readVerified(file);
    return { ok: true };
  } catch (e) {
    return { ok: false, reason: (e as Error).message };
  }
}

/**
 * Saves a checkpoint to `file` atomically (see the module comment). The checkpoint it replaces
 * becomes `<file>.prev` when it is a good one; a damaged one is moved to `<file>.damaged` instead,
 * so that it never pushes out the good `.prev`.
 * @throws TypeError on a bad state (nothing is written then).
 */
export async function saveTrainingState(
  file: string,
  state: TrainingState,
  opts: SaveTrainingStateOptions = {},
): Promise<void> {
  if (typeof file !== 'string' || file === '') typeError('path', 'a non-empty file path', file);
  if (state === null || typeof state !== 'object') typeError('state', 'a TrainingState { tensors, meta }', state);
  checkKeys('saveTrainingState options', opts, SAVE_TRAINING_STATE_KEYS);
  const meta = state.meta;
  if (meta === null || typeof meta !== 'object' || Array.isArray(meta)) typeError('state.meta', 'a JSON object', meta);
  checkJson(meta, 'state.meta', 0);
  const keepPrevious = opts.keepPrevious ?? true;
  if (typeof keepPrevious !== 'boolean') typeError('opts.keepPrevious', 'a boolean', keepPrevious);

  const entries = entriesOf(state.tensors);
  const sha = digest(entries.map((e) => ({ name: e.name, dtype: e.raw.dtype, shape: e.raw.shape, bytes: e.bytes })));
  const bytes = encodeSafetensors(Object.fromEntries(entries.map((e) => [e.name, e.raw])), {
    format: FORMAT,
    version: VERSION,
    sha256: sha,
    meta: JSON.stringify(meta),
  });

  const dir = path.dirname(path.resolve(file));
  await removeStaleTemps(file);
  const tmp = `${file}.tmp-${process.pid}-${Math.floor(Math.random() * 0xffffffff).toString(16)}`;
  try {
    const fh = await fs.promises.open(tmp, 'wx', 0o644);
    try {
      let done = 0;
      while (done < bytes.byteLength) {
        const { bytesWritten } = await fh.write(bytes, done, bytes.byteLength - done);
        done += bytesWritten;
      }
      await fh.sync();
    } finally {
      await fh.close();
    }
    if (await exists(file)) {
      const check = await trustedOrValid(file);
      if (!check.ok) await fs.promises.rename(file, `${file}.damaged`);
      else if (keepPrevious) await fs.promises.rename(file, previousPath(file));
      await fsyncDir(dir);
    }
    await fs.promises.rename(tmp, file);
    await fsyncDir(dir);
  } catch (e) {
    await fs.promises.rm(tmp, { force: true });
    throw e;
  }
  const st = await fs.promises.stat(file);
  written.set(path.resolve(file), { ino: st.ino, size: st.size, mtimeMs: st.mtimeMs });
}

interface VerifiedItem {
  name: string;
  dtype: DType;
  shape: readonly number[];
  bytes: Uint8Array;
}

const FROM_ST: Readonly<Record<string, DType>> = {
  F32: 'float32',
  F16: 'float16',
  BF16: 'bfloat16',
  I32: 'int32',
  I64: 'int64',
  U8: 'uint8',
};

/** Reads `file` whole and checks its structure, format marker and digest. */
function readVerified(file: string): { items: VerifiedItem[]; meta: { [key: string]: JsonValue } } {
  const f = readSafetensorsSync(file);
  try {
    const md = f.metadata;
    if (md.format !== FORMAT)
      throw new MergeVQError(
        `${file}: not a mergevq training state (metadata format ${JSON.stringify(md.format)})`,
        'ERR_BAD_FILE',
      );
    if (md.version !== VERSION)
      throw new MergeVQError(
        `${file}: unsupported training state version ${JSON.stringify(md.version)}`,
        'ERR_BAD_FILE',
      );
    let meta: unknown;
    try {
      meta = JSON.parse(md.meta ?? '');
    } catch {
      throw new MergeVQError(`${file}: metadata "meta" is not valid JSON`, 'ERR_BAD_FILE');
    }
    if (meta === null || typeof meta !== 'object' || Array.isArray(meta))
      throw new MergeVQError(`${file}: metadata "meta" is ${describe(meta)}, not an object`, 'ERR_BAD_FILE');
    const names = [...f.names].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    const items = names.map((name): VerifiedItem => {
      const info = f.info(name);
      const dtype = FROM_ST[info.dtype];
      if (!dtype)
        throw new MergeVQError(
          `${file}: tensor ${JSON.stringify(name)} has dtype ${info.dtype}, which training states do not use`,
          'ERR_BAD_FILE',
        );
      return { name, dtype, shape: info.shape, bytes: f.bytes(name) };
    });
    if (digest(items) !== md.sha256)
      throw new MergeVQError(`${file}: tensor data does not match its SHA-256 (damaged file)`, 'ERR_BAD_FILE');
    return { items, meta: meta as { [key: string]: JsonValue } };
  } finally {
    f.close();
  }
}

function tensorOf(it: VerifiedItem): Tensor {
  const buf = it.bytes.buffer as ArrayBuffer;
  const off = it.bytes.byteOffset;
  const len = it.bytes.byteLength;
  switch (it.dtype) {
    case 'float32':
      return Tensor.from(new Float32Array(buf, off, len / 4), it.shape);
    case 'int32':
      return Tensor.from(new Int32Array(buf, off, len / 4), it.shape);
    case 'int64':
      return Tensor.from(new BigInt64Array(buf, off, len / 8), it.shape);
    case 'uint8':
      return Tensor.from(new Uint8Array(buf, off, len), it.shape);
    default:
      return Tensor.from(new Uint16Array(buf, off, len / 2), it.shape, { dtype: it.dtype });
  }
}

function loadOne(file: string): { tensors: Map<string, Tensor>; meta: { [key: string]: JsonValue } } {
  const { items, meta } = readVerified(file);
  // Header order is by dtype then name (the writer's layout); the map follows name order.
  return { tensors: new Map(items.map((it) => [it.name, tensorOf(it)])), meta };
}

/**
 * Loads the checkpoint at `file`, verifying its structure and digest; when it is missing or
 * damaged, loads `<file>.prev` instead (`which` and `loadedFrom` say which was used). Tensors
 * keep their dtypes and bits exactly.
 * @throws MergeVQError `ERR_NOT_FOUND` when neither exists, `ERR_BAD_FILE` when none is good.
 */
export async function loadTrainingState(file: string): Promise<LoadedTrainingState> {
  if (typeof file !== 'string' || file === '') typeError('path', 'a non-empty file path', file);
  const rejected: { path: string; reason: string }[] = [];
  const candidates: [string, 'latest' | 'previous'][] = [
    [file, 'latest'],
    [previousPath(file), 'previous'],
  ];
  let found = 0;
  for (const [p, which] of candidates) {
    if (!(await exists(p))) {
      rejected.push({ path: p, reason: 'missing' });
      continue;
    }
    ++found;
    try {
      return { ...loadOne(p), loadedFrom: p, which, rejected };
    } catch (e) {
      rejected.push({ path: p, reason: (e as Error).message });
    }
  }
  const why = rejected.map((r) => `${r.path}: ${r.reason}`).join('; ');
  if (found === 0) throw new MergeVQError(`no training state at ${file} or ${previousPath(file)}`, 'ERR_NOT_FOUND');
  throw new MergeVQError(`no loadable training state at ${file} (${why})`, 'ERR_BAD_FILE');
}

/** Synchronous check: whether `file` is a complete, verified training state (reads it fully). */
export function isValidTrainingState(file: string): boolean {
  try {
    readVerified(file);
    return true;
  } catch {
    return false;
  }
}
