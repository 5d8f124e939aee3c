/**
 * Fixture loading for parity tests. Fixture directories hold reference outputs in safetensors (see
 * test/fixtures/README.md); tests are data-driven over every directory named by the environment,
 * so a new set of fixtures can be checked without code changes:
 *
 *   MERGEVQ_FIXTURES=/data/fx-a:/data/fx-b npx vitest run test/tokenizer.parity.test.ts
 *
 * Usage:
 *   forEachFixtureDir('lfq.safetensors', (fixture) => {
 *     it('matches', () => {
 *       const f = fixture();
 *       const cfg = f.meta('loss');
 *       expect(relErr(ours, f.array('d10.quantized'))).toBeLessThan(1e-4);
 *     });
 *   });
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, it } from 'vitest';
import { MergeVQError, typeError } from '../lib/errors.js';
import { readSafetensorsSync, type SafetensorsFile } from '../lib/io/safetensors.js';
import { Tensor } from '../lib/tensor.js';

/** The repository root (the folder above test/). */
export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/**
 * Fixture directories: `MERGEVQ_FIXTURES` split on `:` (empty entries ignored), else
 * `test/fixtures`. Relative entries resolve against the repository root. Returned as absolute paths.
 */
export function fixtureDirs(): string[] {
  const env = process.env.MERGEVQ_FIXTURES;
  const dirs = env && env.trim() !== '' ? env.split(':').filter((d) => d.trim() !== '') : ['test/fixtures'];
  return dirs.map((d) => path.resolve(REPO_ROOT, d.trim()));
}

/** A fixture file: the safetensors file plus JSON-parsed access to its `__metadata__`. */
export type FixtureFile = SafetensorsFile & {
  /** The fixture directory. */
  readonly dir: string;
  /** The file's full path. */
  readonly path: string;
  /**
   * The `__metadata__` entry `name`, JSON-parsed.
   * @throws MergeVQError `ERR_NOT_FOUND` when absent, `ERR_BAD_FILE` when it is not JSON.
   */
  meta<T = unknown>(name: string): T;
};

/** Opens `dir/file` (a safetensors fixture) lazily. Close it when done. */
export function loadFixture(dir: string, file: string): FixtureFile {
  if (typeof dir !== 'string') typeError('dir', 'a directory path', dir);
  if (typeof file !== 'string') typeError('file', 'a file name', file);
  const full = path.resolve(REPO_ROOT, dir, file);
  const st = readSafetensorsSync(full);
  const meta = <T>(name: string): T => {
    if (!Object.hasOwn(st.metadata, name)) {
      throw new MergeVQError(
        `${full}: no __metadata__ entry ${JSON.stringify(name)} (has: ${Object.keys(st.metadata).join(', ')})`,
        'ERR_NOT_FOUND',
      );
    }
    try {
      return JSON.parse(st.metadata[name]!) as T;
    } catch (e) {
      throw new MergeVQError(
        `${full}: __metadata__ entry ${JSON.stringify(name)} is not JSON (${(e as Error).message})`,
        'ERR_BAD_FILE',
      );
    }
  };
  return Object.assign(st, { dir: path.resolve(REPO_ROOT, dir), path: full, meta });
}

/** Reads and parses a JSON fixture (`schedules.json`, `official_state_dicts.json`). */
export function loadJsonFixture<T = unknown>(dir: string, file: string): T {
  const full = path.resolve(REPO_ROOT, dir, file);
  try {
    return JSON.parse(fs.readFileSync(full, 'utf8')) as T;
  } catch (e) {
    if (e instanceof SyntaxError) throw new MergeVQError(`${full}: not valid JSON (${e.message})`, 'ERR_BAD_FILE');
    throw e;
  }
}

/**
 * Declares one vitest `describe` per fixture directory that holds `file`, named after the file and
 * the directory. `fn` receives an opener for the file (opened on first call, closed after the
 * suite) and the directory. Directories without the file show up as a skipped suite.
 * Works for `.json` fixtures too: then call `loadJsonFixture(dir, file)` yourself.
 */
export function forEachFixtureDir(file: string, fn: (fixture: () => FixtureFile, dir: string) => void): void {
  for (const dir of fixtureDirs()) {
    const full = path.join(dir, file);
    if (!fs.existsSync(full)) {
      describe.skip(`${file} in ${dir} (missing: skipped)`, () => {
        it(`needs ${full}`, () => undefined);
      });
      continue;
    }
    describe(`${file} in ${dir}`, () => {
      let opened: FixtureFile | undefined;
      const fixture = (): FixtureFile => (opened ??= loadFixture(dir, file));
      afterAll(() => opened?.close());
      fn(fixture, dir);
    });
  }
}

type Numeric = ArrayLike<number> | ArrayLike<bigint> | Tensor;

function toF64(name: string, v: Numeric): ArrayLike<number | bigint> {
  if (v instanceof Tensor) return v.dtype === 'int64' ? v.toArray<'int64'>() : Float64Array.from(v.toFloat32());
  if (v === null || typeof v !== 'object' || typeof (v as ArrayLike<unknown>).length !== 'number')
    typeError(name, 'a Tensor or an array of numbers', v);
  return v;
}

/**
 * Relative error ||a - b|| / ||b|| (Euclidean norms, accumulated in float64), with `b` the
 * reference. When ||b|| is 0 the absolute error ||a - b|| is returned. NaN anywhere gives NaN.
 * @throws RangeError when the lengths differ.
 */
export function relErr(a: Numeric, b: Numeric): number {
  const x = toF64('a', a);
  const y = toF64('b', b);
  if (x.length !== y.length) throw new RangeError(`relErr: a has ${x.length} elements, b has ${y.length}`);
  let num = 0;
  let den = 0;
  for (let i = 0; i < x.length; i++) {
    const yi = Number(y[i]);
    const d = Number(x[i]) - yi;
    num += d * d;
    den += yi * yi;
  }
  return den === 0 ? Math.sqrt(num) : Math.sqrt(num) / Math.sqrt(den);
}
