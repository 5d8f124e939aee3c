/**
 * The whole native surface, typed in one place. Everything else in lib/ reaches the addon through
 * this module.
 */
import addonModule from './addon.cjs';
import { MergeVQError } from './errors.js';

export type DType = 'float32' | 'float16' | 'bfloat16' | 'int32' | 'int64' | 'uint8';
export type DeviceName = 'cpu' | 'cuda';
export type AttrValue = boolean | number | bigint | string | readonly number[];
export type Attrs = Record<string, AttrValue | undefined>;

/** A tensor owned by the native core (64-byte aligned storage, shared by views). */
export interface NativeTensor {
  readonly shape: number[];
  /** Strides in elements. */
  readonly strides: number[];
  readonly dtype: DType;
  readonly device: DeviceName;
  readonly numel: number;
  readonly isContiguous: boolean;
  /** An id of the underlying storage (equal for views of one allocation). */
  readonly storageId: number;
  /** True after dispose(). */
  readonly disposed: boolean;
  /** Drops this handle's reference to the native memory now; later use throws. */
  dispose(): void;
  /** Copies the elements, dense and row-major, into a new ArrayBuffer. */
  read(): ArrayBuffer;
  to(device: DeviceName): NativeTensor;
  view(shape: readonly number[]): NativeTensor;
  permute(dims: readonly number[]): NativeTensor;
  /** Strided view of [start, start + length) along dim. */
  narrow(dim: number, start: number, length: number): NativeTensor;
  /** Strided view at index along dim, with that dim removed. */
  select(dim: number, index: number): NativeTensor;
  contiguous(): NativeTensor;
}

export interface NativeTensorCtor {
  /** Copies `data` (or allocates when null) into a new tensor. */
  new (data: ArrayBufferView | null, shape: readonly number[], dtype: DType, device?: DeviceName): NativeTensor;
}

export interface Addon {
  Tensor: NativeTensorCtor;
  runOp(name: string, inputs: readonly (NativeTensor | null | undefined)[], attrs?: Attrs): (NativeTensor | null)[];
  runOpAsync(
    name: string,
    inputs: readonly (NativeTensor | null | undefined)[],
    attrs?: Attrs,
  ): Promise<(NativeTensor | null)[]>;
  setNumThreads(n: number): void;
  getNumThreads(): number;
  setPoison(on: boolean): void;
  supports(op: string, device: DeviceName): boolean;
  listOps(): string[];
  /** The option keys `op` accepts (any other key is refused with a RangeError before it runs). */
  opAttrs(op: string): string[];
  deviceAvailable(device: DeviceName): { available: boolean; reason: string | null };
  /** Frees the CPU allocation cache; returns the bytes released. */
  releaseCpuCache(): number;
  setErrorClass(ctor: new (message: string, code: string) => Error): void;
  buildInfo(): { cuda: boolean; simd: string; threads: number };
}

/** What lib/addon.cjs exports: the addon, or the report of why no build could be loaded. */
export type AddonLoad = Addon | { loadError: { code: string; message: string } };

/** The addon out of a load result; a failed load throws its one MergeVQError (ERR_CPU_UNSUPPORTED, ERR_ADDON_LOAD). */
export function addonFromLoad(loaded: AddonLoad): Addon {
  if ('loadError' in loaded) throw new MergeVQError(loaded.loadError.message, loaded.loadError.code);
  return loaded;
}

export const addon = addonFromLoad(addonModule as AddonLoad);
addon.setErrorClass(MergeVQError);

/** Runs a native op synchronously on the calling thread (plus the native thread pool). */
export function runOp(
  name: string,
  inputs: readonly (NativeTensor | null | undefined)[],
  attrs?: Attrs,
): NativeTensor[] {
  return addon.runOp(name, inputs, attrs) as NativeTensor[];
}

/**
 * Runs a native op as one job on the libuv pool and resolves with its outputs. A rejection keeps
 * the caller's stack (captured before the job was queued) below the native message.
 */
export async function runOpAsync(
  name: string,
  inputs: readonly (NativeTensor | null | undefined)[],
  attrs?: Attrs,
): Promise<NativeTensor[]> {
  const where = new Error();
  try {
    return (await addon.runOpAsync(name, inputs, attrs)) as NativeTensor[];
  } catch (err) {
    if (err instanceof Error && where.stack) {
      err.stack = `${err.name}: ${err.message}\n${where.stack.split('\n').slice(1).join('\n')}`;
    }
    throw err;
  }
}
