// The legacy (pre-zip) torch.save format: files written by python3-torch with
// _use_new_zipfile_serialization=False (scripts/make-legacy-ckpt.py; committed in
// test/data/legacy, and generated afresh here when torch is installed) load to the values the
// script defines and to the same tensors as their zip-format twins; truncated, corrupted or
// malicious legacy files are refused with a MergeVQError.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomInt } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import { MergeVQError } from '../lib/errors.js';
import { TorchTensorRef, loadCheckpoint, readCheckpointObject } from '../lib/io/checkpoint.js';
import { LEGACY_MAGIC } from '../lib/io/legacy.js';
import { DEFAULT_PICKLE_LIMITS, unpickleAt } from '../lib/io/pickle.js';
import type { Tensor } from '../lib/tensor.js';
import { readWeights } from '../lib/tokenizer/load.js';
import { REPO_ROOT } from './fixtures.js';

const COMMITTED = path.join(REPO_ROOT, 'test/data/legacy');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mergevq-legacy-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const PY = '/usr/bin/python3';
const hasTorch = fs.existsSync(PY) && spawnSync(PY, ['-c', 'import torch'], { encoding: 'utf8' }).status === 0;
const dirs: [string, string][] = [['committed', COMMITTED]];
if (hasTorch) {
  const fresh = path.join(tmp, 'fresh');
  const r = spawnSync(PY, [path.join(REPO_ROOT, 'scripts/make-legacy-ckpt.py'), fresh], {
    encoding: 'utf8',
    timeout: 120_000,
  });
  if (r.status !== 0) throw new Error(`make-legacy-ckpt.py failed: ${r.stderr}`);
  dirs.push(['generated now by torch', fresh]);
}

const quiet = { convertF64: true, onWarning: () => undefined };
const bytesOf = (t: Tensor) => Buffer.from(t.native.read());

/** The values make-legacy-ckpt.py's base(n, dtype) defines, as numbers (int64 as bigint). */
function base(n: number, dtype: string): (number | bigint)[] {
  return Array.from({ length: n }, (_, i) => {
    if (dtype === 'bool') return i % 3 === 0 ? 1 : 0;
    if (dtype.startsWith('float') || dtype === 'bfloat16') return i * 0.25 - 2;
    if (dtype === 'uint8') return (i * 7) % 256;
    if (dtype === 'int64') return BigInt(i) * 1_000_000_007n - 20n;
    return i * 7 - 20;
  });
}

/** Elements of a strided view of `src` (row-major), computed independently of the loader. */
function view<T>(src: T[], offset: number, shape: number[], stride: number[]): T[] {
  const out: T[] = [];
  const walk = (d: number, at: number) => {
    if (d === shape.length) return void out.push(src[at]!);
    for (let i = 0; i < shape[d]!; i++) walk(d + 1, at + i * stride[d]!);
  };
  walk(0, offset);
  return out;
}

const values = (t: Tensor): (number | bigint)[] =>
  t.dtype === 'int64' ? Array.from(t.toArray<'int64'>()) : Array.from(t.toFloat32());

describe.each(dirs)('legacy torch.save files (%s)', (_, dir) => {
  const f = (name: string) => path.join(dir, name);

  it('loads every dtype, views, shared storages to the values written, identical to the zip twin', async () => {
    const legacy = await loadCheckpoint(f('state.legacy.pt'), quiet);
    const zip = await loadCheckpoint(f('state.zip.pt'), quiet);
    expect(legacy.format).toBe('legacy');
    expect(zip.format).toBe('zip');
    expect([...legacy.tensors.keys()]).toEqual([...zip.tensors.keys()]);
    for (const [k, t] of legacy.tensors) {
      const z = zip.tensors.get(k)!;
      expect([t.dtype, t.shape], k).toEqual([z.dtype, z.shape]);
      expect(bytesOf(t).equals(bytesOf(z)), k).toBe(true);
    }
    const p4 = await loadCheckpoint(f('state_p4.legacy.pt'), quiet);
    expect(p4.format).toBe('legacy');
    expect([...p4.tensors.keys()]).toEqual([...zip.tensors.keys()]);
    for (const [k, t] of p4.tensors)
      expect(bytesOf(t).equals(bytesOf(zip.tensors.get(k)!)), `protocol 4: ${k}`).toBe(true);
    const T = legacy.tensors;
    const dtypes: Record<string, string> = {
      float32: 'float32',
      float16: 'float16',
      bfloat16: 'bfloat16',
      float64: 'float32',
      int64: 'int64',
      int32: 'int32',
      uint8: 'uint8',
      bool: 'uint8',
    };
    for (const [dt, as] of Object.entries(dtypes)) {
      const t = T.get(`dtype.${dt}`)!;
      expect([t.dtype, t.shape], dt).toEqual([as, [3, 4]]);
      expect(values(t), dt).toEqual(base(12, dt));
    }
    const grid = base(24, 'float32') as number[];
    expect(values(T.get('view.grid')!)).toEqual(grid);
    expect(values(T.get('view.tied')!)).toEqual(grid);
    expect(values(T.get('view.transposed')!)).toEqual(view(grid, 0, [6, 4], [1, 6]));
    expect(values(T.get('view.sliced')!)).toEqual(view(grid, 8, [2, 3], [6, 1]));
    expect(values(T.get('view.strided')!)).toEqual(view(grid, 0, [4, 3], [6, 2]));
    expect(values(T.get('view.row')!)).toEqual(grid.slice(12, 18));
    expect(values(T.get('view.half_tail')!)).toEqual((base(10, 'float16') as number[]).slice(3));
    expect(values(T.get('view.long_t')!)).toEqual(view(base(6, 'int64'), 0, [3, 2], [1, 3]));
    expect(T.get('scalar')!.shape).toEqual([]);
    expect(T.get('scalar')!.item()).toBe(2.5);
    expect(T.get('empty')!.shape).toEqual([0, 3]);
    // readWeights (the tokenizer's and the CLI's reader) takes the legacy file directly.
    const w = await readWeights(f('state.legacy.pt'));
    expect(bytesOf(w.get('view.sliced')!).equals(bytesOf(T.get('view.sliced')!))).toBe(true);
  });

  it('reads a nested dict beside the state dict', async () => {
    for (const fmt of ['legacy', 'zip']) {
      const r = await loadCheckpoint(f(`nested.${fmt}.pt`), quiet);
      expect(r.stateDictKey).toBe('state_dict');
      expect([...r.tensors.keys()]).toEqual(['enc.w', 'enc.b']);
      expect(values(r.tensors.get('enc.w')!)).toEqual(base(6, 'float32'));
      expect(r.extra.get('epoch')).toBe(7);
      const hp = r.extra.get('hparams') as Map<string, unknown>;
      const dd = hp.get('ddconfig') as Map<string, unknown>;
      expect(dd.get('ch_mult')).toEqual([1, 2, 2]);
      expect(dd.get('pair')).toEqual([3, 'x']);
      expect(hp.get('lr')).toBe(1e-4);
      const st = (r.extra.get('optimizer') as Map<string, Map<number, Map<string, unknown>>>)
        .get('state')!
        .get(0)!
        .get('exp_avg');
      expect(st).toBeInstanceOf(TorchTensorRef);
      expect((st as TorchTensorRef).shape).toEqual([2]);
    }
  });

  it('describes int8/int16 storages and refuses to load them as tensors', async () => {
    await expect(loadCheckpoint(f('narrow_ints.legacy.pt'), quiet)).rejects.toMatchObject({
      code: 'ERR_UNSUPPORTED_DTYPE',
      message: expect.stringMatching(/i8 has dtype int8/),
    });
    const top = (await readCheckpointObject(f('narrow_ints.legacy.pt'))) as Map<string, TorchTensorRef>;
    expect([...top.values()].map((t) => t.dtype)).toEqual(['int8', 'int16']);
  });
});

const refused = async (file: string, code = 'ERR_BAD_FILE'): Promise<MergeVQError> => {
  const t0 = performance.now();
  const e = await loadCheckpoint(file, quiet).then(
    () => undefined,
    (x: unknown) => x,
  );
  expect(e, file).toBeInstanceOf(MergeVQError);
  expect((e as MergeVQError).code, (e as Error).message).toBe(code);
  expect(performance.now() - t0).toBeLessThan(1000);
  return e as MergeVQError;
};

describe('damaged and hostile legacy files', () => {
  const whole = fs.readFileSync(path.join(COMMITTED, 'state.legacy.pt'));
  const file = path.join(tmp, 'damaged.pt');

  it('refuses every truncation with ERR_BAD_FILE', async () => {
    const cuts = new Set<number>([3, 14, 15, 16, 20, 21, 100, whole.length - 1, whole.length - 8]);
    while (cuts.size < 120) cuts.add(randomInt(3, whole.length));
    for (const n of cuts) {
      fs.writeFileSync(file, whole.subarray(0, n));
      const e = await refused(file);
      expect(e.message, `cut at ${n}`).toMatch(/truncated|unexpected end|past the end|bytes after|holds \d+ elements/);
    }
  });

  it(`random corruptions are a MergeVQError or a load, never anything else`, async () => {
    for (let i = 0; i < 150; i++) {
      const b = Buffer.from(whole);
      for (let j = 0; j < 1 + (i % 3); j++) b[randomInt(b.length)] = randomInt(256);
      fs.writeFileSync(file, b);
      const t0 = performance.now();
      await loadCheckpoint(file, quiet).then(
        (r) => r.tensors.forEach((t) => t.dispose()),
        (e: unknown) => {
          expect(e).toBeInstanceOf(MergeVQError);
          expect(['ERR_BAD_FILE', 'ERR_UNSAFE_PICKLE', 'ERR_UNSUPPORTED_DTYPE']).toContain((e as MergeVQError).code);
        },
      );
      expect(performance.now() - t0).toBeLessThan(1000);
    }
  });

  // The byte just past the keys pickle: where the first storage's count is.
  const pickles: number[] = [];
  let at = 0;
  for (let k = 0; k < 5; k++) {
    at = unpickleAt(whole, at, { resolveGlobal: () => undefined, persistentLoad: (p) => p }).end;
    pickles.push(at);
  }

  it('checks each storage count against the pickle and the file against its end', async () => {
    expect(unpickleAt(whole, 0, { resolveGlobal: () => undefined }).value).toBe(LEGACY_MAGIC);
    const b = Buffer.from(whole);
    b.writeBigUInt64LE(b.readBigUInt64LE(pickles[4]!) + 1n, pickles[4]!);
    fs.writeFileSync(file, b);
    expect((await refused(file)).message).toMatch(/holds \d+ elements in the file, the pickle says \d+/);
    b.writeBigUInt64LE(2n ** 63n, pickles[4]!);
    fs.writeFileSync(file, b);
    await refused(file);
    fs.writeFileSync(file, Buffer.concat([whole, Buffer.from([0])]));
    expect((await refused(file)).message).toMatch(/1 bytes after the last storage/);
  });

  it('applies the pickle policy and budgets to legacy pickles', async () => {
    const head = whole.subarray(0, pickles[2]!); // magic, protocol, system information
    const cmd = Buffer.from('echo pwned');
    const len = Buffer.alloc(4);
    len.writeUInt32LE(cmd.length);
    const evil = Buffer.concat([
      Buffer.from('\x80\x02cposix\nsystem\n(X', 'latin1'),
      len,
      cmd,
      Buffer.from('tR.', 'latin1'),
      Buffer.from('\x80\x02].', 'latin1'),
    ]);
    fs.writeFileSync(file, Buffer.concat([head, evil]));
    expect((await refused(file, 'ERR_UNSAFE_PICKLE')).message).toMatch(/posix\.system/);
    // A MARK flood larger than the first read of the pickles: refused by the stack budget.
    const flood = Buffer.concat([
      head,
      Buffer.from([0x80, 0x02]),
      Buffer.alloc(DEFAULT_PICKLE_LIMITS.maxStack + 10, 0x28),
    ]);
    fs.writeFileSync(file, flood);
    expect((await refused(file)).message).toMatch(/limit maxStack/);
    // A storage key in the list that no tensor uses, and a magic number that is not torch's.
    const b = Buffer.from(whole);
    b[5]! ^= 1;
    fs.writeFileSync(file, b);
    expect((await refused(file)).message).toMatch(/not the magic number/);
  });
});
