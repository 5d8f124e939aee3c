/** Argument checks shared by the op wrappers: each names the argument and the expected value. */
import { typeError } from '../errors.js';
import { Tensor } from '../tensor.js';

/** `t` must be a Tensor. */
export function tensorArg(name: string, t: unknown): Tensor {
  if (!(t instanceof Tensor)) typeError(name, 'a Tensor', t);
  return t;
}

/** `t` must be a Tensor, null or undefined (an optional input). */
export function optTensor(name: string, t: unknown): Tensor | null {
  if (t === undefined || t === null) return null;
  return tensorArg(name, t);
}
