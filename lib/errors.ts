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
 * (a misspelt option would otherwise be ignored silently), listing the known ones. `name` names
 * the entry point: `'attention options'`, `'DataLoader options'`, `'TokenizerTrainer.fit options'`.
 * Build `known` with {@link optionKeys} next to the options type.
 */
export function checkKeys(name: string, opts: object | null | undefined, known: readonly string[]): void {
  if (opts === null || opts === undefined) return;
  for (const k of Object.keys(opts)) {
    if (!known.includes(k)) throw new RangeError(`${name}: unknown option '${k}' (known: ${known.join(', ')})`);
  }
}

/** The keys of T that the list K leaves out (`never` when K names them all). */
export type MissingKeys<T, K extends readonly PropertyKey[]> = Exclude<keyof T, K[number]>;

/**
 * The option names of the options type `T`, as the list {@link checkKeys} reads, checked against
 * the type at compile time: `optionKeys<FooOptions>()(['a', 'b'])` compiles only when the list
 * names every key of `FooOptions` and nothing else, so the list cannot drift from the type. (The
 * call is curried so that `T` is given while the list's literal type is inferred.) Build the list
 * once, at module level, next to the type.
 */
export function optionKeys<T extends object>() {
  return <const K extends readonly (keyof T & string)[]>(
    keys: K & ([MissingKeys<T, K>] extends [never] ? unknown : { readonly 'missing option keys': MissingKeys<T, K> }),
  ): K => keys;
}
