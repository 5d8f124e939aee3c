/**
 * The dtype conversion the Tensor class itself is built on (`toFloat32`, `cast`): synchronous, on
 * native handles. It imports nothing but the native surface, so lib/tensor.ts can use it without an
 * import cycle through the other wrappers.
 */
import { type DType, type NativeTensor, addon } from '../native.js';

/** A new native tensor holding `x`'s elements converted to `dtype`. */
export function castNative(x: NativeTensor, dtype: DType): NativeTensor {
  return addon.runOp('cast', [x], { dtype })[0] as NativeTensor;
}
