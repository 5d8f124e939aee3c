import { describe, expect, it } from 'vitest';
import { addon } from '../lib/native.js';
import { Tensor } from '../lib/tensor.js';
import { MergeVQError } from '../lib/errors.js';

describe('native runtime', () => {
  it('round-trips a float32 tensor', () => {
    const data = Float32Array.from({ length: 12 }, (_, i) => i * 0.5 - 2);
    const t = Tensor.from(data, [3, 4]);
    expect(t.shape).toEqual([3, 4]);
    expect(t.dtype).toBe('float32');
    expect(Array.from(t.toFloat32())).toEqual(Array.from(data));
  });

  it('reports cuda unavailability with a clear MergeVQError', () => {
    const d = addon.deviceAvailable('cuda');
    if (d.available) return;
    expect(d.reason).toMatch(/cuda/);
    let err: unknown;
    try {
      Tensor.zeros([2], 'float32', 'cuda');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(MergeVQError);
    expect((err as MergeVQError).code).toBe('ERR_NO_DEVICE');
  });

  it('rejects bad arguments with TypeError / RangeError', () => {
    expect(() => Tensor.from(new Float32Array(3), [2, 2])).toThrow(RangeError);
    expect(() => Tensor.from(new Float32Array(3), [3], { dtype: 'float64' as never })).toThrow(TypeError);
    expect(() => addon.runOp('no_such_op', [])).toThrow(TypeError);
  });

  it('runs ops asynchronously', async () => {
    const t = Tensor.from(new Float32Array([1.5, -2.25, 65504, 1e-8]), [4]);
    const [h] = await (await import('../lib/native.js')).runOpAsync('cast', [t.native], { dtype: 'float16' });
    const back = new Tensor(h!).toFloat32();
    expect(Array.from(back.slice(0, 3))).toEqual([1.5, -2.25, 65504]);
  });
});
