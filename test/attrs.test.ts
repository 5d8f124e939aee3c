// Strict op options: every native op declares the option keys it reads; any other key is refused
// with a RangeError naming the op, the key and the known keys, before the op runs.
import { describe, expect, it } from 'vitest';
import { addon, runOp } from '../lib/native.js';
import { Tensor } from '../lib/tensor.js';
import { Rng } from './helpers.js';

const rng = new Rng();
const rand = (shape: number[]) => rng.tensor(shape);

function rangeErrorOf(fn: () => unknown): RangeError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(RangeError);
    return e as RangeError;
  }
  throw new Error('expected a RangeError');
}

describe('strict op options', () => {
  it('the test suite runs with the read-audit on (each option an op reads must be declared)', () => {
    expect(process.env.MERGEVQ_CHECK_ATTRS).toBe('1');
  });

  it('every registered op lists its options, sorted and unique', () => {
    const ops = addon.listOps();
    expect(ops.length).toBeGreaterThan(50);
    for (const op of ops) {
      const keys = addon.opAttrs(op);
      expect([...keys].sort()).toEqual(keys);
      expect(new Set(keys).size).toBe(keys.length);
    }
    expect(addon.opAttrs('attention')).toEqual(['causal', 'kv_len', 'q_offset', 'scale', 'window']);
    expect(() => addon.opAttrs('no_such_op')).toThrow(TypeError);
  });

  it('a misspelt option is a RangeError naming the op, the key and the known keys', () => {
    const q = rand([1, 2, 4, 8]);
    const cases: [string, Tensor[], Record<string, unknown>, RegExp][] = [
      [
        'attention',
        [q, q, q],
        { causl: true },
        /attention: unknown option 'causl' \(known: causal, kv_len, q_offset, scale, window\)/,
      ],
      ['softmax', [q], { dimm: 1 }, /softmax: unknown option 'dimm' \(known: dim\)/],
      ['add', [q, q], { alpah: 2 }, /add: unknown option 'alpah' \(known: alpha\)/],
      [
        'conv2d',
        [rand([1, 2, 5, 5]), rand([3, 2, 3, 3])],
        { strides: 2 },
        /conv2d: unknown option 'strides' \(known: groups, padding, stride\)/,
      ],
      ['silu', [q], { slope: 0.1 }, /silu: unknown option 'slope' \(it takes no options\)/],
      ['tome_match', [rand([1, 6, 4])], { r: 1, classtoken: true }, /tome_match: unknown option 'classtoken'/],
    ];
    for (const [op, inputs, attrs, msg] of cases) {
      const err = rangeErrorOf(() =>
        runOp(
          op,
          inputs.map((t) => t.native),
          attrs as never,
        ),
      );
      expect(err.message).toMatch(msg);
    }
  });

  it('the refusal comes before any work: an in-place op leaves its tensors as they were', () => {
    const cache = rand([1, 2, 4, 8]);
    const before = Array.from(cache.toFloat32());
    const x = rand([1, 2, 1, 8]);
    expect(() => runOp('kv_cache_write', [cache.native, x.native], { pos: 0, positon: 1 } as never)).toThrow(
      /unknown option 'positon'/,
    );
    expect(Array.from(cache.toFloat32())).toEqual(before);
  });

  it('the device option is accepted by every op, and the correct keys run', () => {
    const q = rand([2, 3]);
    const [y] = runOp('softmax', [q.native], { dim: 1, device: 'cpu' });
    const s = new Tensor(y!).toFloat32();
    expect(s[0]! + s[1]! + s[2]!).toBeCloseTo(1, 6);
  });
});
