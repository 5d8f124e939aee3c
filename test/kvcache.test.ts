import { describe, expect, it } from 'vitest';
import { addon } from '../lib/native.js';
import { Tensor } from '../lib/tensor.js';
import { runSync } from '../lib/graph.js';
import { kvCacheCompact, kvCacheWrite } from '../lib/ops/attention.js';
import { Rng, seedInfo, withPoison } from './helpers.js';

/** x given in logical [B, H, n, hd] order, stored as [B, n, H, hd] and permuted (non-contiguous). */
function stridedBHNd(data: Float32Array, B: number, H: number, n: number, hd: number): Tensor {
  const buf = new Float32Array(data.length);
  for (let b = 0; b < B; ++b)
    for (let h = 0; h < H; ++h)
      for (let r = 0; r < n; ++r)
        for (let c = 0; c < hd; ++c) buf[((b * n + r) * H + h) * hd + c] = data[((b * H + h) * n + r) * hd + c]!;
  return Tensor.from(buf, [B, n, H, hd]).permute(0, 2, 1, 3);
}

function refWrite(
  cache: Float32Array,
  x: Float32Array,
  B: number,
  H: number,
  Mcap: number,
  n: number,
  hd: number,
  pos: number,
) {
  const out = Float32Array.from(cache);
  for (let b = 0; b < B; ++b)
    for (let h = 0; h < H; ++h)
      for (let r = 0; r < n; ++r)
        for (let c = 0; c < hd; ++c) out[((b * H + h) * Mcap + pos + r) * hd + c] = x[((b * H + h) * n + r) * hd + c]!;
  return out;
}

function refCompact(cache: Float32Array, idx: Int32Array, B: number, H: number, Mcap: number, m: number, hd: number) {
  const out = Float32Array.from(cache);
  for (let b = 0; b < B; ++b)
    for (let h = 0; h < H; ++h)
      for (let t = 0; t < m; ++t)
        for (let c = 0; c < hd; ++c)
          out[((b * H + h) * Mcap + t) * hd + c] = cache[((b * H + h) * Mcap + idx[b * m + t]!) * hd + c]!;
  return out;
}

/** A random strictly increasing subset of [0, len) of size m per batch row. */
function randomKeep(rng: Rng, B: number, len: number, m: number): Int32Array {
  const out = new Int32Array(B * m);
  for (let b = 0; b < B; ++b) {
    const all = Array.from({ length: len }, (_, i) => i);
    for (let i = len - 1; i > 0; --i) {
      const j = rng.int(i + 1);
      [all[i], all[j]] = [all[j]!, all[i]!];
    }
    const pick = all.slice(0, m).sort((a, c) => a - c);
    out.set(pick, b * m);
  }
  return out;
}

function suite(device: 'cpu' | 'cuda') {
  it('kv_cache_write writes x at pos..pos+n-1 in place, dense and strided x', () => {
    const rng = new Rng();
    for (const [B, H, Mcap, hd, n, pos] of [
      [1, 1, 1, 1, 1, 0],
      [2, 3, 33, 40, 7, 26],
      [2, 4, 257, 64, 1, 256],
      [1, 2, 10, 8, 0, 10],
    ] as const) {
      const init = rng.randn(B * H * Mcap * hd);
      const x = rng.randn(B * H * n * hd);
      for (const layout of ['dense', 'strided'] as const) {
        const cache = Tensor.from(init, [B, H, Mcap, hd]).to(device);
        const xt = (layout === 'dense' ? Tensor.from(x, [B, H, n, hd]) : stridedBHNd(x, B, H, n, hd)).to(device);
        const out = withPoison(() => runSync(kvCacheWrite(cache, xt, pos)));
        expect(out.native.storageId).toBe(cache.native.storageId);
        const want = refWrite(init, x, B, H, Mcap, n, hd, pos);
        expect(Array.from(cache.to('cpu').toFloat32()), `${seedInfo(rng.seed)} ${layout}`).toEqual(Array.from(want));
      }
    }
  });

  it('kv_cache_write validates before writing (cache unchanged on error)', () => {
    const rng = new Rng();
    const init = rng.randn(2 * 2 * 8 * 4);
    const cache = Tensor.from(init, [2, 2, 8, 4]).to(device);
    const x = Tensor.from(rng.randn(2 * 2 * 3 * 4), [2, 2, 3, 4]).to(device);
    expect(() => runSync(kvCacheWrite(cache, x, 6))).toThrow(RangeError);
    expect(() => runSync(kvCacheWrite(cache, x, -1))).toThrow(RangeError);
    expect(() => runSync(kvCacheWrite(cache, Tensor.zeros([2, 2, 3, 5]).to(device), 0))).toThrow(/'x'/);
    expect(() => runSync(kvCacheWrite(cache, Tensor.zeros([2, 2, 3, 4], 'int32').to(device), 0))).toThrow(TypeError);
    expect(Array.from(cache.to('cpu').toFloat32())).toEqual(Array.from(init));
  });

  it('kv_cache_compact moves keep_idx rows to the front in place (MergeAR index map)', () => {
    const rng = new Rng();
    for (const [B, H, Mcap, hd, len, m] of [
      [1, 1, 4, 3, 4, 4],
      [2, 3, 64, 40, 50, 17],
      [3, 2, 257, 64, 257, 1],
      [2, 16, 300, 64, 256, 200],
      [1, 2, 9, 8, 5, 0],
    ] as const) {
      const init = rng.randn(B * H * Mcap * hd);
      const idx = randomKeep(rng, B, len, m);
      const cache = Tensor.from(init, [B, H, Mcap, hd]).to(device);
      const out = runSync(kvCacheCompact(cache, Tensor.from(idx, [B, m]).to(device), len));
      expect(out.native.storageId).toBe(cache.native.storageId);
      const want = refCompact(init, idx, B, H, Mcap, m, hd);
      expect(Array.from(cache.to('cpu').toFloat32()), `${seedInfo(rng.seed)} ${[B, H, Mcap, hd, len, m]}`).toEqual(
        Array.from(want),
      );
    }
  });

  it('kv_cache_compact rejects bad index maps and leaves the cache untouched', () => {
    const rng = new Rng();
    const init = rng.randn(2 * 2 * 10 * 4);
    const cache = Tensor.from(init, [2, 2, 10, 4]).to(device);
    const bad = (rows: number[][], len: number) =>
      runSync(
        kvCacheCompact(
          cache,
          Tensor.from(Int32Array.from(rows.flat()), [rows.length, rows[0]!.length]).to(device),
          len,
        ),
      );
    expect(() =>
      bad(
        [
          [0, 2, 2],
          [0, 1, 2],
        ],
        8,
      ),
    ).toThrow(/strictly increasing/);
    expect(() =>
      bad(
        [
          [0, 1, 2],
          [3, 1, 4],
        ],
        8,
      ),
    ).toThrow(/strictly increasing/);
    expect(() =>
      bad(
        [
          [0, 1, 8],
          [0, 1, 2],
        ],
        8,
      ),
    ).toThrow(RangeError);
    expect(() =>
      bad(
        [
          [-1, 1, 2],
          [0, 1, 2],
        ],
        8,
      ),
    ).toThrow(RangeError);
    expect(() =>
      bad(
        [
          [0, 1, 2],
          [0, 1, 2],
        ],
        11,
      ),
    ).toThrow(/len/);
    expect(() => bad([[0, 1, 2]], 8)).toThrow(TypeError);
    expect(Array.from(cache.to('cpu').toFloat32())).toEqual(Array.from(init));
  });
}

describe('KV cache ops (CPU)', () => suite('cpu'));

const cuda = addon.deviceAvailable('cuda');
describe.skipIf(!cuda.available || !addon.supports('kv_cache_write', 'cuda'))(
  `KV cache ops (CUDA) (${cuda.reason ?? 'cuda available'})`,
  () => suite('cuda'),
);
