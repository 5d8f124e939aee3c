import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomInt } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import {
  encodeSafetensors,
  parseSafetensorsHeader,
  readSafetensors,
  readSafetensorsSync,
  writeSafetensors,
  writeSafetensorsSync,
  SAFETENSORS_DTYPE_SIZE,
  type SafetensorsDType,
} from '../lib/io/safetensors.js';
import { MergeVQError } from '../lib/errors.js';
import { Tensor } from '../lib/tensor.js';
import { fixtureDirs } from './fixtures.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mergevq-st-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** mulberry32: a small seeded PRNG so a failure can be reproduced from the printed seed. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomBytes(rand: () => number, n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.floor(rand() * 256);
  return out;
}

function typed(dtype: SafetensorsDType, bytes: Uint8Array): ArrayBufferView {
  const b = bytes.slice().buffer;
  switch (dtype) {
    case 'F32':
      return new Float32Array(b);
    case 'F64':
      return new Float64Array(b);
    case 'I64':
      return new BigInt64Array(b);
    default:
      return bytes.slice();
  }
}

const ALL: SafetensorsDType[] = Object.keys(SAFETENSORS_DTYPE_SIZE) as SafetensorsDType[];
const TENSOR_DTYPES: SafetensorsDType[] = ['F32', 'F16', 'BF16', 'I32', 'I64', 'U8', 'BOOL'];

function expectBadFile(fn: () => unknown, ...patterns: RegExp[]): MergeVQError {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err, 'expected an ERR_BAD_FILE error').toBeInstanceOf(MergeVQError);
  expect((err as MergeVQError).code).toBe('ERR_BAD_FILE');
  for (const p of patterns) expect((err as Error).message).toMatch(p);
  return err as MergeVQError;
}

async function expectBadFileAsync(p: Promise<unknown>, ...patterns: RegExp[]): Promise<void> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err, 'expected an ERR_BAD_FILE error').toBeInstanceOf(MergeVQError);
  expect((err as MergeVQError).code).toBe('ERR_BAD_FILE');
  for (const re of patterns) expect((err as Error).message).toMatch(re);
}

/** Builds a file from a header (object or raw JSON text) and `dataBytes` bytes of data. */
function craft(header: unknown, dataBytes: number, lengthOverride?: bigint): Buffer {
  const json = Buffer.isBuffer(header)
    ? header
    : Buffer.from(typeof header === 'string' ? header : JSON.stringify(header), 'utf8');
  const out = Buffer.alloc(8 + json.byteLength + dataBytes);
  out.writeBigUInt64LE(lengthOverride ?? BigInt(json.byteLength), 0);
  json.copy(out, 8);
  return out;
}

describe('safetensors round trip', () => {
  const seed = randomInt(2 ** 31);
  it(`round-trips every dtype through bytes and files (seed ${seed})`, async () => {
    const rand = rng(seed);
    const tensors: Record<string, { dtype: SafetensorsDType; shape: number[]; data: ArrayBufferView }> = {};
    const raw: Record<string, Uint8Array> = {};
    for (const dtype of ALL) {
      const shape = Array.from({ length: 1 + Math.floor(rand() * 3) }, () => 1 + Math.floor(rand() * 5));
      const n = shape.reduce((a, b) => a * b, 1) * SAFETENSORS_DTYPE_SIZE[dtype];
      let bytes = randomBytes(rand, n);
      if (dtype === 'BOOL') bytes = bytes.map((v) => v & 1);
      const name = `t.${dtype.toLowerCase()}.${Math.floor(rand() * 1000)}`;
      tensors[name] = { dtype, shape, data: typed(dtype, bytes) };
      raw[name] = bytes;
    }
    const metadata = { config: JSON.stringify({ seed, nested: [1, 2] }), note: 'héllo ✓', __proto__x: 'y' };
    const buf = encodeSafetensors(tensors, metadata);
    const n = Number(buf.readBigUInt64LE(0));
    expect(n % 8).toBe(0);
    expect(buf.subarray(8, 8 + n).toString('utf8')).toMatch(/^\{.*\} *$/s);

    const file = path.join(tmp, `rt-${seed}.safetensors`);
    await writeSafetensors(file, tensors, metadata);
    expect(fs.readFileSync(file).equals(buf)).toBe(true);

    const fromBuf = readSafetensorsSync(buf);
    const fromFd = readSafetensorsSync(file);
    const fromHandle = await readSafetensors(file);
    for (const f of [fromBuf, fromFd, fromHandle]) {
      expect([...f.names].sort()).toEqual(Object.keys(tensors).sort());
      expect(f.metadata).toEqual(metadata);
      for (const [name, t] of Object.entries(tensors)) {
        const info = f.info(name);
        expect(info.dtype).toBe(t.dtype);
        expect(info.shape).toEqual(t.shape);
        expect(info.byteLength).toBe(raw[name]!.byteLength);
        expect(Buffer.from(f.bytes(name)).equals(Buffer.from(raw[name]!))).toBe(true);
        const arr = f.array(name);
        expect(Buffer.from(arr.buffer, arr.byteOffset, arr.byteLength).equals(Buffer.from(raw[name]!))).toBe(true);
        const arrA = await f.arrayAsync(name);
        expect(Buffer.from(arrA.buffer, arrA.byteOffset, arrA.byteLength).equals(Buffer.from(raw[name]!))).toBe(true);
        if (TENSOR_DTYPES.includes(t.dtype)) {
          const tt = await f.tensorAsync(name);
          expect(tt.shape).toEqual(t.shape);
          const back = tt.toArray();
          expect(Buffer.from(back.buffer, back.byteOffset, back.byteLength).equals(Buffer.from(raw[name]!))).toBe(true);
          expect(f.tensor(name).dtype).toBe(
            {
              F32: 'float32',
              F16: 'float16',
              BF16: 'bfloat16',
              I32: 'int32',
              I64: 'int64',
              U8: 'uint8',
              BOOL: 'uint8',
            }[t.dtype as 'F32'],
          );
        } else {
          expect(() => f.tensor(name)).toThrow(expect.objectContaining({ code: 'ERR_UNSUPPORTED_DTYPE' }));
        }
      }
    }
    fromBuf.close();
    fromFd.close();
    await fromHandle.closeAsync();
    expect(() => fromFd.tensor(Object.keys(tensors)[0]!)).toThrow(expect.objectContaining({ code: 'ERR_CLOSED' }));
  });

  it(`writes Tensors of every native dtype and reads them back (seed ${seed + 1})`, () => {
    const rand = rng(seed + 1);
    const f32 = Float32Array.from({ length: 12 }, () => rand() * 8 - 4);
    const ts = {
      'b.f32': Tensor.from(f32, [3, 4]),
      'a.perm': Tensor.from(f32, [3, 4]).permute(1, 0),
      'c.f16': Tensor.from(f32, [12]).cast('float16'),
      'd.bf16': Tensor.from(f32, [2, 6]).cast('bfloat16'),
      'e.i32': Tensor.from(
        Int32Array.from({ length: 5 }, () => randomInt(-1e6, 1e6)),
        [5],
      ),
      'f.i64': Tensor.from(
        BigInt64Array.from({ length: 3 }, () => BigInt(randomInt(-1e9, 1e9)) * 1000003n),
        [3],
      ),
      'g.u8': Tensor.from(
        Uint8Array.from({ length: 7 }, () => randomInt(256)),
        [7, 1],
      ),
    };
    const file = path.join(tmp, `tensors-${seed}.safetensors`);
    writeSafetensorsSync(file, ts);
    const r = readSafetensorsSync(file);
    for (const [name, t] of Object.entries(ts)) {
      const back = r.tensor(name);
      expect(back.dtype).toBe(t.dtype);
      expect(back.shape).toEqual(t.shape);
      expect(back.toArray()).toEqual(t.toArray());
    }
    // The transposed view was written in logical (row-major) order.
    expect(Array.from(r.array('a.perm') as Float32Array)).toEqual(Array.from(ts['a.perm'].contiguous().toFloat32()));
    // Layout: widest dtype first, then by name; each tensor naturally aligned in the data section.
    const order = [...r.names].sort((x, y) => r.info(x).dataOffsets[0] - r.info(y).dataOffsets[0]);
    expect(order).toEqual(['f.i64', 'a.perm', 'b.f32', 'e.i32', 'd.bf16', 'c.f16', 'g.u8']);
    for (const n of r.names) expect(r.info(n).dataOffsets[0] % SAFETENSORS_DTYPE_SIZE[r.info(n).dtype]).toBe(0);
    r.close();
  });

  it('handles scalars, empty tensors and an empty file', () => {
    const v = Math.fround(Math.random());
    const buf = encodeSafetensors({
      s: { dtype: 'F32', shape: [], data: new Float32Array([v]) },
      z: { dtype: 'float32', shape: [0, 3], data: new Float32Array(0) },
    });
    const r = readSafetensorsSync(buf);
    expect(r.info('s').shape).toEqual([]);
    expect((r.array('s') as Float32Array)[0]).toBe(v);
    expect(r.tensor('s').item()).toBe(v);
    expect(r.info('z').byteLength).toBe(0);
    expect(r.tensor('z').shape).toEqual([0, 3]);
    const empty = readSafetensorsSync(encodeSafetensors({}));
    expect(empty.names).toEqual([]);
    expect(empty.metadata).toEqual({});
  });

  it('parses a header from bytes, a file descriptor and a FileHandle alike', async () => {
    const shape = [1 + randomInt(4), 1 + randomInt(4)];
    const buf = encodeSafetensors(
      { w: { dtype: 'F16', shape, data: new Uint16Array(shape[0]! * shape[1]!) } },
      { m: String(randomInt(1e6)) },
    );
    const file = path.join(tmp, 'hdr.safetensors');
    fs.writeFileSync(file, buf);
    const fromBytes = parseSafetensorsHeader(buf);
    const fd = fs.openSync(file, 'r');
    const fromFd = parseSafetensorsHeader(fd);
    fs.closeSync(fd);
    const fh = await fs.promises.open(file, 'r');
    const fromHandle = await parseSafetensorsHeader(fh);
    await fh.close();
    for (const h of [fromFd, fromHandle]) {
      expect(h.metadata).toEqual(fromBytes.metadata);
      expect(h.tensors.get('w')).toEqual(fromBytes.tensors.get('w'));
      expect(h.dataStart).toBe(fromBytes.dataStart);
      expect(h.fileSize).toBe(buf.byteLength);
    }
    expect(fromBytes.tensors.get('w')!.shape).toEqual(shape);
    expect(() => parseSafetensorsHeader('x' as never)).toThrow(TypeError);
  });

  it('converts F64 to float32 only when asked', () => {
    const vals = Float64Array.from({ length: 6 }, () => Math.random() * 1e3);
    const r = readSafetensorsSync(encodeSafetensors({ d: { dtype: 'F64', shape: [2, 3], data: vals } }));
    expect(() => r.tensor('d')).toThrow(/convertF64/);
    expect(Array.from(r.tensor('d', { convertF64: true }).toFloat32())).toEqual(Array.from(Float32Array.from(vals)));
    const r2 = readSafetensorsSync(encodeSafetensors({ d: { dtype: 'F64', shape: [6], data: vals } }), {
      convertF64: true,
    });
    expect(r2.tensor('d').dtype).toBe('float32');
    expect(r2.array('d')).toEqual(vals);
  });

  it('rejects bad arguments with TypeError / RangeError', () => {
    expect(() => readSafetensorsSync(42 as never)).toThrow(TypeError);
    expect(() => encodeSafetensors({ a: { dtype: 'F32', shape: [3], data: new Float32Array(2) } })).toThrow(RangeError);
    expect(() => encodeSafetensors({ a: { dtype: 'X9' as never, shape: [1], data: new Float32Array(1) } })).toThrow(
      TypeError,
    );
    expect(() => encodeSafetensors({ a: { dtype: 'F32', shape: [-1], data: new Float32Array(1) } })).toThrow(TypeError);
    expect(() => encodeSafetensors({ a: [1, 2] as never })).toThrow(TypeError);
    expect(() => encodeSafetensors({}, { k: 3 as never })).toThrow(TypeError);
    expect(() => readSafetensorsSync(encodeSafetensors({})).info('nope')).toThrow(
      expect.objectContaining({ code: 'ERR_NOT_FOUND' }),
    );
  });

  it('reads lazily: a tensor from a file far larger than memory', () => {
    // A sparse file whose second tensor claims 64 GiB: reading the first must touch only it.
    const big = 64 * 2 ** 30;
    const hdr = {
      small: { dtype: 'F32', shape: [4], data_offsets: [0, 16] },
      huge: { dtype: 'U8', shape: [big], data_offsets: [16, 16 + big] },
    };
    const json = Buffer.from(JSON.stringify(hdr));
    const file = path.join(tmp, 'sparse.safetensors');
    const fd = fs.openSync(file, 'w');
    const prefix = Buffer.alloc(8);
    prefix.writeBigUInt64LE(BigInt(json.byteLength));
    fs.writeSync(fd, prefix, 0, 8, 0);
    fs.writeSync(fd, json, 0, json.byteLength, 8);
    const vals = Float32Array.from({ length: 4 }, () => Math.random());
    fs.writeSync(fd, new Uint8Array(vals.buffer), 0, 16, 8 + json.byteLength);
    fs.ftruncateSync(fd, 8 + json.byteLength + 16 + big);
    fs.closeSync(fd);
    const before = process.memoryUsage().rss;
    const r = readSafetensorsSync(file);
    expect(r.info('huge').byteLength).toBe(big);
    expect(r.array('small')).toEqual(vals);
    expect(process.memoryUsage().rss - before).toBeLessThan(256 * 2 ** 20);
    r.close();
    fs.rmSync(file);
  });
});

describe('safetensors fixtures', () => {
  for (const dir of fixtureDirs()) {
    const files = fs.existsSync(dir) ? fs.readdirSync(dir).filter((f) => f.endsWith('.safetensors')) : [];
    it.skipIf(files.length === 0)(`reads every fixture in ${dir}`, async () => {
      for (const name of files) {
        const file = path.join(dir, name);
        const whole = readSafetensorsSync(fs.readFileSync(file), { label: file });
        // float64 tensors (schedules, LeCAM EMAs) come back as float32 with convertF64
        const lazy = await readSafetensors(file, { convertF64: true });
        expect(lazy.names.length).toBeGreaterThan(0);
        expect(lazy.names).toEqual(whole.names);
        for (const v of Object.values(lazy.metadata)) expect(() => JSON.parse(v)).not.toThrow();
        for (const n of lazy.names) {
          const info = lazy.info(n);
          const t = await lazy.tensorAsync(n);
          expect(t.shape).toEqual(info.shape);
          const got = t.toArray();
          const ref = whole.array(n);
          if (info.dtype === 'F64') {
            expect(Array.from(got as Float32Array), n).toEqual(Array.from(ref as Float64Array, Math.fround));
            continue;
          }
          expect(
            Buffer.from(got.buffer, got.byteOffset, got.byteLength).equals(
              Buffer.from(ref.buffer, ref.byteOffset, ref.byteLength),
            ),
            n,
          ).toBe(true);
          if (info.dtype === 'F32') expect((whole.array(n) as Float32Array).every(Number.isFinite)).toBe(true);
        }
        await lazy.closeAsync();
      }
    });
  }
});

describe('safetensors validation', () => {
  const good = () =>
    encodeSafetensors(
      {
        a: { dtype: 'F32', shape: [2, 2], data: new Float32Array(4) },
        b: { dtype: 'I64', shape: [3], data: new BigInt64Array(3) },
      },
      { k: 'v' },
    );
  const t = (dtype: unknown, shape: unknown, offsets: unknown) => ({ dtype, shape, data_offsets: offsets });

  const cases: [string, () => Buffer, RegExp][] = [
    ['empty file', () => Buffer.alloc(0), /shorter than the 8-byte/],
    ['truncated inside the length', () => good().subarray(0, 5), /shorter than the 8-byte/],
    ['truncated inside the header', () => good().subarray(0, 20), /beyond the end of the file/],
    ['truncated inside the data', () => good().subarray(0, good().length - 3), /beyond the data section|truncated/],
    ['trailing bytes', () => Buffer.concat([good(), Buffer.alloc(8)]), /trailing/],
    ['header length 2^60', () => craft({}, 0, 2n ** 60n), /exceeds the 100000000-byte limit/],
    ['header length 2^64-1', () => craft({}, 0, 2n ** 64n - 1n), /exceeds/],
    ['header length over 100 MB', () => craft({}, 0, 100_000_001n), /exceeds/],
    ['bad JSON', () => craft('{"a": {"dtype": "F32",', 0), /not valid JSON/],
    ['invalid UTF-8', () => craft(Buffer.from([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x3a, 0x7b, 0x7d, 0x7d]), 0), /UTF-8/],
    ['JSON array header', () => craft([1, 2], 0), /must be a JSON object/],
    ['JSON number header', () => craft('12345678', 0), /must be a JSON object/],
    ['JSON null header', () => craft('null    ', 0), /must be a JSON object/],
    ['tensor entry not an object', () => craft({ a: 5 }, 0), /tensor "a" must be an object/],
    ['unknown dtype', () => craft({ a: t('Q4', [2], [0, 2]) }, 2), /unknown dtype string "Q4"/],
    ['missing dtype', () => craft({ a: { shape: [1], data_offsets: [0, 4] } }, 4), /unknown dtype undefined/],
    [
      'negative shape',
      () => craft({ a: t('F32', [-1, 2], [0, 0]) }, 0),
      /shape\[0\] must be a non-negative safe integer/,
    ],
    ['fractional shape', () => craft({ a: t('F32', [1.5], [0, 6]) }, 6), /shape\[0\]/],
    ['huge shape dim', () => craft({ a: t('F32', [2 ** 60], [0, 4]) }, 4), /shape\[0\]/],
    [
      'shape product overflow',
      () => craft({ a: t('F32', [2 ** 30, 2 ** 30, 2 ** 30], [0, 4]) }, 4),
      /too many elements/,
    ],
    ['byte size overflow', () => craft({ a: t('F64', [2 ** 51], [0, 8]) }, 8), /too large|needs/],
    ['shape not an array', () => craft({ a: t('F32', '4', [0, 16]) }, 16), /shape must be an array/],
    ['offsets with 3 entries', () => craft({ a: t('U8', [2], [0, 1, 2]) }, 2), /must be \[begin, end\]/],
    ['offsets not an array', () => craft({ a: t('U8', [2], { begin: 0 }) }, 2), /data_offsets must be an array/],
    ['negative offsets', () => craft({ a: t('U8', [2], [-2, 0]) }, 2), /data_offsets\[0\]/],
    ['begin > end', () => craft({ a: t('U8', [0], [4, 2]) }, 4), /begin > end/],
    ['offsets out of range', () => craft({ a: t('U8', [8], [0, 8]) }, 4), /beyond the data section \(4 bytes\)/],
    [
      'offsets far out of range',
      () => craft({ a: t('U8', [2], [2 ** 52, 2 ** 52 + 2]) }, 2),
      /beyond the data section/,
    ],
    [
      'byte length mismatch',
      () => craft({ a: t('F32', [3], [0, 8]) }, 8),
      /holds 8 bytes but shape \[3\] of F32 needs 12/,
    ],
    [
      'overlapping tensors',
      () => craft({ a: t('F32', [2], [0, 8]), b: t('F32', [2], [4, 12]) }, 12),
      /overlaps tensor "a"/,
    ],
    ['same region twice', () => craft({ a: t('F32', [2], [0, 8]), b: t('F32', [2], [0, 8]) }, 8), /overlaps/],
    [
      'hole between tensors',
      () => craft({ a: t('F32', [1], [0, 4]), b: t('F32', [1], [8, 12]) }, 12),
      /hole: bytes \[4, 8\)/,
    ],
    ['hole at the start', () => craft({ a: t('F32', [1], [4, 8]) }, 8), /hole: bytes \[0, 4\)/],
    ['metadata value not a string', () => craft({ __metadata__: { k: 3 } }, 0), /__metadata__\["k"\] must be a string/],
    ['metadata not an object', () => craft({ __metadata__: ['x'] }, 0), /__metadata__ must be an object/],
  ];

  for (const [what, make, pattern] of cases) {
    it(`rejects: ${what}`, async () => {
      const bytes = make();
      expectBadFile(() => readSafetensorsSync(bytes), /<buffer>/, pattern);
      expectBadFile(() => parseSafetensorsHeader(bytes), pattern);
      const file = path.join(tmp, `bad-${what.replace(/\W+/g, '_')}.safetensors`);
      fs.writeFileSync(file, bytes);
      expectBadFile(() => readSafetensorsSync(file), new RegExp(file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')), pattern);
      await expectBadFileAsync(readSafetensors(file), pattern);
    });
  }

  it('accepts the well-formed base case of the malformed ones', () => {
    const r = readSafetensorsSync(
      craft(
        { a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] }, b: { dtype: 'U8', shape: [0], data_offsets: [4, 4] } },
        4,
      ),
    );
    expect(r.names).toEqual(['a', 'b']);
  });

  const seed = randomInt(2 ** 31);
  it(`never crashes on random corruption (seed ${seed})`, () => {
    const rand = rng(seed);
    const base = good();
    let rejected = 0;
    for (let i = 0; i < 300; i++) {
      const b = Buffer.from(base);
      const flips = 1 + Math.floor(rand() * 4);
      for (let j = 0; j < flips; j++) b[Math.floor(rand() * b.length)] = Math.floor(rand() * 256);
      const cut = rand() < 0.2 ? b.subarray(0, Math.floor(rand() * b.length)) : b;
      try {
        const r = readSafetensorsSync(cut);
        for (const n of r.names) r.bytes(n);
      } catch (e) {
        expect(e).toBeInstanceOf(MergeVQError);
        expect((e as MergeVQError).code).toBe('ERR_BAD_FILE');
        rejected++;
      }
    }
    expect(rejected).toBeGreaterThan(0);
  });
});
