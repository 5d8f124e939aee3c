/**
 * The legacy torch.save format (torch < 1.6, or `_use_new_zipfile_serialization=False`): a stream
 * of five pickles followed by the storages' bytes.
 *
 * 1. the magic number 0x1950a86a20f9469cfc6c, 2. the protocol version 1001, 3. a dict of system
 * information (`little_endian`, `type_sizes`), 4. the saved object, whose storages are persistent
 * ids `('storage', torch.FloatStorage, key, location, numel, view_metadata)`, 5. the list of
 * storage keys. Then, for each key of that list in order, an 8-byte little-endian element count
 * and the storage's raw little-endian bytes.
 *
 * The pickles are read with the same restricted unpickler and budgets as the zip format; every
 * storage's count and extent is checked against the pickle and the file size before any byte of
 * data is read.
 */
import * as fs from 'node:fs';
import { PickleTruncatedError, describePickled, unpickleAt, type UnpickleOptions } from './pickle.js';
import {
  ELEMENT_SIZE,
  badFile,
  makeResolver,
  storageRef,
  type TorchPickleOptions,
  type TorchSource,
  type TorchStorageRef,
} from './torch.js';

/** The number the legacy format starts with. */
export const LEGACY_MAGIC = 0x1950a86a20f9469cfc6cn;
const PROTOCOL_VERSION = 1001;

/**
 * Whether a file may be in the legacy format: it starts with a pickle (PROTO). The first pickle
 * must then hold the magic number, whatever protocol wrote it (checked when parsing).
 */
export function isLegacyHeader(head: Uint8Array): boolean {
  return head.length >= 2 && head[0] === 0x80 && head[1]! >= 2 && head[1]! <= 5;
}

function preadFully(fd: number, dst: Uint8Array, pos: number, label: string): void {
  let done = 0;
  while (done < dst.byteLength) {
    const n = fs.readSync(fd, dst, done, Math.min(dst.byteLength - done, 1 << 30), pos + done);
    if (n === 0) badFile(label, `unexpected end of file at byte ${pos + done}`);
    done += n;
  }
}

async function preadFullyAsync(fd: number, dst: Uint8Array, pos: number, label: string): Promise<void> {
  let done = 0;
  while (done < dst.byteLength) {
    const n = await new Promise<number>((resolve, reject) =>
      fs.read(fd, dst, done, Math.min(dst.byteLength - done, 1 << 30), pos + done, (e, k) =>
        e ? reject(e) : resolve(k),
      ),
    );
    if (n === 0) badFile(label, `unexpected end of file at byte ${pos + done}`);
    done += n;
  }
}

interface Parsed {
  object: unknown;
  keys: string[];
  /** Byte just past the keys pickle: where the first storage's count begins. */
  end: number;
  storages: Map<string, TorchStorageRef>;
  /** Root storage key -> bytes the pickle declares. */
  roots: Map<string, number>;
  /** Root storage key -> bytes per element. */
  elementSize: Map<string, number>;
}

function parse(head: Uint8Array, label: string, opts: TorchPickleOptions, unknown: Set<string>): Parsed {
  const storages = new Map<string, TorchStorageRef>();
  const roots = new Map<string, number>();
  const base: UnpickleOptions = {
    label,
    resolveGlobal: () => undefined,
    unknownGlobals: 'refuse',
    limits: { maxDepth: 8, maxOps: 4096 },
  };
  let at = 0;
  const magic = unpickleAt(head, at, base);
  if (magic.value !== LEGACY_MAGIC)
    badFile(label, `not a torch.save file (first pickle is ${describePickled(magic.value, 40)}, not the magic number)`);
  const proto = unpickleAt(head, magic.end, base);
  if (proto.value !== PROTOCOL_VERSION)
    badFile(
      label,
      `legacy torch.save protocol ${describePickled(proto.value, 40)} is not supported (only ${PROTOCOL_VERSION})`,
    );
  const sys = unpickleAt(head, proto.end, base);
  if (!(sys.value instanceof Map)) badFile(label, 'the system-information pickle is not a dict');
  if (sys.value.get('little_endian') !== true)
    badFile(label, 'written on a big-endian machine (only little-endian files are supported)');
  at = sys.end;
  const obj = unpickleAt(head, at, {
    label: `${label} (object pickle)`,
    resolveGlobal: makeResolver(label),
    unknownGlobals: opts.unknownGlobals,
    onUnknownGlobal: (q) => unknown.add(q),
    persistentLoad: (pid) =>
      storageRef(label, pid, storages, (key, nbytes) => {
        const prior = roots.get(key);
        if (prior !== undefined && prior !== nbytes)
          badFile(label, `storage ${key} is described twice with different sizes`);
        roots.set(key, nbytes);
        return nbytes;
      }),
  });
  const keysPickle = unpickleAt(head, obj.end, { ...base, label: `${label} (storage keys)`, limits: { maxDepth: 2 } });
  const keys = keysPickle.value;
  if (!Array.isArray(keys) || !keys.every((k) => typeof k === 'string'))
    badFile(label, 'the storage keys pickle is not a list of strings');
  const seen = new Set<string>();
  for (const k of keys as string[]) {
    if (seen.has(k)) badFile(label, `storage key ${describePickled(k, 40)} is listed twice`);
    if (!roots.has(k)) badFile(label, `storage key ${describePickled(k, 40)} is listed but no tensor uses it`);
    seen.add(k);
  }
  for (const k of roots.keys())
    if (!seen.has(k)) badFile(label, `storage ${k} is used by a tensor but missing from the storage keys`);
  const elementSize = new Map<string, number>();
  for (const r of storages.values()) {
    const root = r.base?.key ?? r.key;
    const es = r.dtype === 'untyped' ? 1 : ELEMENT_SIZE[r.dtype];
    if ((elementSize.get(root) ?? es) !== es) badFile(label, `storage ${root} is viewed with different element sizes`);
    elementSize.set(root, es);
  }
  return { object: obj.value, keys: keys as string[], end: keysPickle.end, storages, roots, elementSize };
}

/**
 * Opens a legacy torch.save file on `fd` (size `size`; the caller owns and closes `fd`). The
 * pickles are parsed and every storage located (counts checked) before this resolves.
 */
export function openLegacy(fd: number, size: number, label: string, opts: TorchPickleOptions): TorchSource {
  // The pickles come first; read a growing prefix until they parse (they are small next to the data).
  let chunk = Math.min(size, 1 << 20);
  let parsed: Parsed | undefined;
  const unknown = new Set<string>();
  while (!parsed) {
    const head = new Uint8Array(chunk);
    preadFully(fd, head, 0, label);
    unknown.clear();
    try {
      parsed = parse(head, label, opts, unknown);
    } catch (e) {
      if (!(e instanceof PickleTruncatedError)) throw e;
      if (chunk >= size) badFile(label, `truncated legacy torch.save file (${e.message.slice(label.length + 2)})`);
      chunk = Math.min(size, chunk * 4);
    }
  }
  for (const q of unknown) opts.onUnknownGlobal(q);
  // Locate each storage: an 8-byte count, then its bytes.
  const start = new Map<string, number>();
  let pos = parsed.end;
  const count = new Uint8Array(8);
  for (const k of parsed.keys) {
    if (pos + 8 > size)
      badFile(label, `truncated: storage ${k}'s header at byte ${pos} is past the end (${size} bytes)`);
    preadFully(fd, count, pos, label);
    const n = new DataView(count.buffer).getBigUint64(0, true);
    const nbytes = parsed.roots.get(k)!;
    const es = parsed.elementSize.get(k)!;
    if (n !== BigInt(nbytes / es))
      badFile(label, `storage ${k} holds ${n} elements in the file, the pickle says ${nbytes / es}`);
    if (pos + 8 + nbytes > size)
      badFile(label, `truncated: storage ${k} needs bytes [${pos + 8}, ${pos + 8 + nbytes}) of a ${size}-byte file`);
    start.set(k, pos + 8);
    pos += 8 + nbytes;
  }
  if (pos !== size) badFile(label, `${size - pos} bytes after the last storage (corrupt file?)`);
  const object = parsed.object;
  return {
    label,
    fileSize: size,
    format: 'legacy',
    readObject: () => Promise.resolve(object),
    readStorage: async (ref) => {
      const root = ref.base?.key ?? ref.key;
      const at = start.get(root);
      if (at === undefined) badFile(label, `storage ${root} is not in the file`);
      const es = ref.dtype === 'untyped' ? 1 : ELEMENT_SIZE[ref.dtype];
      const out = new Uint8Array(ref.nbytes);
      await preadFullyAsync(fd, out, at + (ref.base?.offset ?? 0) * es, label);
      return out;
    },
    close: () => undefined,
  };
}
