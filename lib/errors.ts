/**
 * Errors thrown by mergevq. Bad arguments throw the built-in `TypeError` or `RangeError` with a
 * message naming the argument and the expected value; every other failure is a `MergeVQError`
 * carrying a stable `code` (for example `ERR_NO_DEVICE`, `ERR_ALLOC`, `ERR_BAD_FILE`, `ERR_CUDA`).
 */
export class MergeVQError extends Error {
  /** A stable machine-readable code, e.g. `ERR_BAD_FILE`. */
  readonly code: string;
  constructor(message: string, code = 'ERR_MERGEVQ') {
    super(message);
    this.name = 'MergeVQError';
    this.code = code;
  }
}

/** Describes a JS value for error messages: `number 3`, `string "a"`, `Float32Array(4)`, ... */
export function describe(v: unknown): string {
  if (v === null) return 'null';
  if (v === undefined) return 'undefined';
  if (typeof v === 'string') return `string ${JSON.stringify(v.length > 40 ? v.slice(0, 40) + '...' : v)}`;
  if (typeof v === 'number' || typeof v === 'bigint' || typeof v === 'boolean') return `${typeof v} ${String(v)}`;
  if (Array.isArray(v)) return `array(${v.length})`;
  if (ArrayBuffer.isView(v))
    return `${v.constructor.name}(${(v as unknown as { length?: number }).length ?? v.byteLength})`;
  if (typeof v === 'function') return 'function';
  const name = (v as object).constructor?.name;
  return name && name !== 'Object' ? name : 'object';
}

/** Throws a TypeError naming `name`, what was expected, and what was given. */
export function typeError(name: string, expected: string, got: unknown): never {
  throw new TypeError(`${name} must be ${expected}, got ${describe(got)}`);
}

/** Throws a RangeError naming `name`, the allowed range, and the value given. */
export function rangeError(name: string, expected: string, got: unknown): never {
  throw new RangeError(`${name} must be ${expected}, got ${describe(got)}`);
}

/** Asserts `v` is an integer in [min, max]. */
export function checkInt(name: string, v: unknown, min = -Infinity, max = Infinity): number {
  if (typeof v !== 'number' || !Number.isInteger(v)) typeError(name, 'an integer', v);
  if (v < min || v > max) rangeError(name, `an integer in [${min}, ${max}]`, v);
  return v;
}

/**
 * Throws a RangeError naming the first key of the options object `opts` that is not in `known`
 * (a misspelt option would otherwise be ignored silently), listing the known ones.
 */
export function checkKeys(name: string, opts: object | null | undefined, known: readonly string[]): void {
  if (opts === null || opts === undefined) return;
  for (const k of Object.keys(opts)) {
    if (!known.includes(k)) throw new RangeError(`${name}: unknown option '${k}' (known: ${known.join(', ')})`);
  }
}
