/**
 * ParamStore: a model's parameters by their reference state_dict names
 * (`encoder.attn.blocks.3.attn.qkv.weight`), with declared shapes, so checkpoints move both ways
 * between this project and the reference. Modules declare what they need; weights are loaded
 * (from safetensors or a Lightning .ckpt) or initialized randomly.
 */
import { MergeVQError, checkKeys, optionKeys } from '../errors.js';
import { runSync } from '../graph.js';
import { randomNormal } from '../ops/tensor.js';
import { Tensor } from '../tensor.js';

/** How a parameter is initialized by `initRandom` (the reference's initializers). */
export type InitKind = { kind: 'normal'; std: number } | { kind: 'const'; value: number };

export interface LoadReport {
  /** Declared parameters the source did not provide. */
  missing: string[];
  /** Source tensors no parameter declared (ignored). */
  unexpected: string[];
}

/** Options of the weight loaders (`ParamStore.load`, the models' `loadWeights`). */
export interface LoadOptions {
  /** Missing weights are an error (ERR_MISSING_WEIGHT) instead of reported (default false). */
  strict?: boolean;
}
/** The keys of {@link LoadOptions}. */
export const LOAD_KEYS = optionKeys<LoadOptions>()(['strict']);

export class ParamStore {
  private readonly shapes = new Map<string, number[]>();
  private readonly inits = new Map<string, InitKind>();
  private readonly values = new Map<string, Tensor>();

  /** Declares a parameter. Declaring one name twice is a programming error. */
  declare(name: string, shape: readonly number[], init: InitKind): string {
    if (this.shapes.has(name)) throw new Error(`parameter ${name} declared twice`);
    this.shapes.set(name, [...shape]);
    this.inits.set(name, init);
    return name;
  }

  /** Every declared name, in declaration order. */
  names(): string[] {
    return [...this.shapes.keys()];
  }
  /** Name -> shape of every declared parameter. */
  shapeMap(): Record<string, number[]> {
    return Object.fromEntries(this.shapes);
  }
  /** Total number of scalar parameters declared. */
  count(): number {
    let n = 0;
    for (const s of this.shapes.values()) n += s.reduce((a, b) => a * b, 1);
    return n;
  }
  has(name: string): boolean {
    return this.values.has(name);
  }

  private freed = false;

  /** True after {@link dispose} until weights are loaded or initialized again. */
  get disposed(): boolean {
    return this.freed;
  }

  /**
   * Frees every parameter's native memory now (instead of when the GC finds the handles). Later
   * use of the model is a MergeVQError ERR_DISPOSED naming the weight; `load` or `initRandom`
   * make it usable again.
   */
  dispose(): void {
    for (const t of this.values.values()) if (!t.disposed) t.dispose();
    this.values.clear();
    this.freed = true;
  }

  /** The loaded tensor for `name`; a MergeVQError ERR_MISSING_WEIGHT when it was never loaded. */
  get(name: string): Tensor {
    const t = this.values.get(name);
    if (t) return t;
    if (!this.shapes.has(name)) throw new Error(`parameter ${name} was never declared`);
    if (this.freed)
      throw new MergeVQError(
        `the model was disposed (weight '${name}'); load weights or call initRandom() to use it again`,
        'ERR_DISPOSED',
      );
    throw new MergeVQError(
      `weight '${name}' is not loaded (load a checkpoint or call initRandom())`,
      'ERR_MISSING_WEIGHT',
    );
  }

  /** Replaces one parameter's value; shape and dtype must match the declaration. */
  set(name: string, t: Tensor): void {
    const shape = this.shapes.get(name);
    if (!shape) throw new RangeError(`set: unknown parameter '${name}'`);
    if (!(t instanceof Tensor)) throw new TypeError(`set: value for '${name}' must be a Tensor`);
    const got = t.shape;
    if (got.length !== shape.length || got.some((s, i) => s !== shape[i]))
      throw new MergeVQError(
        `weight '${name}' has shape [${got.join(', ')}], the model expects [${shape.join(', ')}]`,
        'ERR_SHAPE_MISMATCH',
      );
    this.values.set(name, t.dtype === 'float32' ? t : t.cast('float32'));
  }

  /**
   * Loads tensors by name. Every name must have the declared shape (else ERR_SHAPE_MISMATCH and
   * nothing is changed). With `strict`, missing names are an error (ERR_MISSING_WEIGHT).
   */
  load(source: ReadonlyMap<string, Tensor> | Record<string, Tensor>, opts: LoadOptions = {}): LoadReport {
    checkKeys('ParamStore.load options', opts, LOAD_KEYS);
    const entries = source instanceof Map ? [...source.entries()] : Object.entries(source);
    const unexpected: string[] = [];
    const staged = new Map<string, Tensor>();
    for (const [name, t] of entries) {
      const shape = this.shapes.get(name);
      if (!shape) {
        unexpected.push(name);
        continue;
      }
      const got = t.shape;
      if (got.length !== shape.length || got.some((s: number, i: number) => s !== shape[i]))
        throw new MergeVQError(
          `weight '${name}' has shape [${got.join(', ')}], the model expects [${shape.join(', ')}]`,
          'ERR_SHAPE_MISMATCH',
        );
      staged.set(name, t.dtype === 'float32' ? t : t.cast('float32'));
    }
    const missing = this.names().filter((n) => !staged.has(n) && !this.values.has(n));
    if (opts.strict && missing.length)
      throw new MergeVQError(
        `missing ${missing.length} weights, e.g. ${missing.slice(0, 3).join(', ')}`,
        'ERR_MISSING_WEIGHT',
      );
    for (const [n, t] of staged) this.values.set(n, t);
    if (staged.size) this.freed = false;
    return { missing, unexpected };
  }

  /**
   * Initializes every parameter with the reference's initializers (truncated normal at +-2 std,
   * constants), natively and deterministically from `seed`.
   */
  initRandom(seed = 0): void {
    this.freed = false;
    let k = 0;
    for (const [name, shape] of this.shapes) {
      const init = this.inits.get(name)!;
      const n = shape.reduce((a, b) => a * b, 1);
      const t =
        init.kind === 'const'
          ? Tensor.from(new Float32Array(n).fill(init.value), shape)
          : runSync(randomNormal(shape, { std: init.std, seed: (seed * 1000003 + ++k) % 2 ** 52, truncate: 2 }));
      this.values.set(name, t);
    }
  }

  /** The loaded parameters by name (for saving). */
  stateDict(): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    for (const n of this.names()) {
      const t = this.values.get(n);
      if (t) out.set(n, t);
    }
    return out;
  }
}

export const W = {
  normal: (std = 0.02): InitKind => ({ kind: 'normal', std }),
  zeros: { kind: 'const', value: 0 } as InitKind,
  ones: { kind: 'const', value: 1 } as InitKind,
  value: (v: number): InitKind => ({ kind: 'const', value: v }),
};
