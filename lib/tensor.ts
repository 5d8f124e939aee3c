/**
 * Tensor: a thin TypeScript handle on a native tensor (CPU or CUDA memory owned by the addon).
 */
import { addon, type DType, type DeviceName, type NativeTensor } from './native.js';
import { checkKeys, describe, optionKeys, typeError } from './errors.js';
import { castNative } from './ops/cast.js';

/** The typed array that holds each dtype's elements on the JS side. */
export interface TypedArrayFor {
  float32: Float32Array;
  float16: Uint16Array;
  bfloat16: Uint16Array;
  int32: Int32Array;
  int64: BigInt64Array;
  uint8: Uint8Array;
}
export type AnyTypedArray = TypedArrayFor[DType];

const DTYPES: readonly DType[] = ['float32', 'float16', 'bfloat16', 'int32', 'int64', 'uint8'];

function inferDType(data: ArrayBufferView): DType {
  if (data instanceof Float32Array) return 'float32';
  if (data instanceof Int32Array) return 'int32';
  if (data instanceof BigInt64Array) return 'int64';
  if (data instanceof Uint8Array) return 'uint8';
  if (data instanceof Uint16Array) return 'float16';
  return typeError('data', 'a Float32Array, Int32Array, BigInt64Array, Uint16Array or Uint8Array', data);
}

function checkShape(shape: unknown): number[] {
  if (!Array.isArray(shape)) typeError('shape', 'an array of non-negative integers', shape);
  for (const [i, s] of shape.entries()) {
    if (typeof s !== 'number' || !Number.isInteger(s) || s < 0) typeError(`shape[${i}]`, 'a non-negative integer', s);
  }
  return shape as number[];
}

export function numelOf(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Options of {@link Tensor.from}. */
export interface TensorFromOptions {
  /** The element type (default: the array's; see `from`). */
  dtype?: DType;
  /** Where the tensor lives (default 'cpu'). */
  device?: DeviceName;
}
const TENSOR_FROM_KEYS = optionKeys<TensorFromOptions>()(['dtype', 'device']);

export class Tensor {
  /** The native handle; pass it to `runOp`. */
  readonly native: NativeTensor;

  constructor(native: NativeTensor) {
    this.native = native;
  }

  /**
   * Copies `data` into a new tensor of `shape`. The dtype follows the array type (Uint16Array is
   * read as float16 unless `dtype: 'bfloat16'` is given); a plain number array becomes float32.
   */
  static from(
    data: ArrayBufferView | readonly number[],
    shape?: readonly number[],
    opts: TensorFromOptions = {},
  ): Tensor {
    checkKeys('Tensor.from options', opts, TENSOR_FROM_KEYS);
    const arr: ArrayBufferView = Array.isArray(data) ? Float32Array.from(data as number[]) : (data as ArrayBufferView);
    if (!ArrayBuffer.isView(arr)) typeError('data', 'a TypedArray or an array of numbers', data);
    const dtype = opts.dtype ?? inferDType(arr);
    if (!DTYPES.includes(dtype)) typeError('dtype', `one of ${DTYPES.join(', ')}`, dtype);
    const sh = shape === undefined ? [(arr as Float32Array).length] : checkShape(shape);
    return new Tensor(new addon.Tensor(arr, sh, dtype, opts.device ?? 'cpu'));
  }

  /** A new tensor of `shape` whose contents are unspecified. */
  static empty(shape: readonly number[], dtype: DType = 'float32', device: DeviceName = 'cpu'): Tensor {
    return new Tensor(new addon.Tensor(null, checkShape(shape), dtype, device));
  }

  /** A new tensor filled with zeros. */
  static zeros(shape: readonly number[], dtype: DType = 'float32', device: DeviceName = 'cpu'): Tensor {
    const n = numelOf(checkShape(shape));
    const bytes: Record<DType, number> = { float32: 4, float16: 2, bfloat16: 2, int32: 4, int64: 8, uint8: 1 };
    return new Tensor(new addon.Tensor(new Uint8Array(n * bytes[dtype]), shape, dtype, device));
  }

  get shape(): number[] {
    return this.native.shape;
  }
  get dtype(): DType {
    return this.native.dtype;
  }
  get device(): DeviceName {
    return this.native.device;
  }
  get numel(): number {
    return this.native.numel;
  }
  get ndim(): number {
    return this.native.shape.length;
  }

  /** Copies the elements (dense, row-major) into a new typed array of the dtype's kind. */
  toArray<D extends DType = DType>(): TypedArrayFor[D] {
    const buf = this.native.read();
    switch (this.dtype) {
      case 'float32':
        return new Float32Array(buf) as TypedArrayFor[D];
      case 'int32':
        return new Int32Array(buf) as TypedArrayFor[D];
      case 'int64':
        return new BigInt64Array(buf) as TypedArrayFor[D];
      case 'uint8':
        return new Uint8Array(buf) as TypedArrayFor[D];
      default:
        return new Uint16Array(buf) as TypedArrayFor[D];
    }
  }

  /** The elements as float32 (converting f16/bf16/int storage). */
  toFloat32(): Float32Array {
    if (this.dtype === 'float32') return this.toArray<'float32'>();
    return new Tensor(castNative(this.native, 'float32')).toArray<'float32'>();
  }

  /** The single element of a one-element tensor, as a number. */
  item(): number {
    if (this.numel !== 1)
      throw new RangeError(`item(): tensor must have exactly one element, got shape [${this.shape.join(', ')}]`);
    const a = this.toArray();
    return Number(a[0]);
  }

  to(device: DeviceName): Tensor {
    return device === this.device ? this : new Tensor(this.native.to(device));
  }
  view(...shape: number[]): Tensor {
    return new Tensor(this.native.view(shape));
  }
  reshape(...shape: number[]): Tensor {
    return new Tensor(this.native.contiguous().view(shape));
  }
  permute(...dims: number[]): Tensor {
    return new Tensor(this.native.permute(dims));
  }
  /** Strided view of [start, start + length) along `dim` (no copy). */
  narrow(dim: number, start: number, length: number): Tensor {
    return new Tensor(this.native.narrow(dim, start, length));
  }
  /** Strided view at `index` along `dim`, with that dim removed (no copy). */
  select(dim: number, index: number): Tensor {
    return new Tensor(this.native.select(dim, index));
  }
  contiguous(): Tensor {
    return this.native.isContiguous ? this : new Tensor(this.native.contiguous());
  }
  cast(dtype: DType): Tensor {
    if (dtype === this.dtype) return this;
    return new Tensor(castNative(this.native, dtype));
  }
  /**
   * Releases this handle's native memory now instead of at garbage collection (views and running
   * async jobs keep the storage alive until they finish). Later use of this handle throws.
   */
  dispose(): void {
    this.native.dispose();
  }
  get disposed(): boolean {
    return this.native.disposed;
  }
  [Symbol.dispose](): void {
    this.dispose();
  }
  toString(): string {
    return `Tensor(${this.dtype}, [${this.shape.join(', ')}], ${this.device})`;
  }
}

/** Unwraps a Tensor argument, naming it in the TypeError when it is not one. */
export function nat(name: string, t: unknown): NativeTensor {
  if (t instanceof Tensor) return t.native;
  return typeError(name, 'a Tensor', t);
}

export { describe };
