import { describe, expect, it } from 'vitest';
import { op, op1, runSync } from '../lib/graph.js';
import { Tensor } from '../lib/tensor.js';
import * as T from '../lib/ops/tensor.js';
import { Rng, seedInfo, withPoison } from './helpers.js';
import { coordsOf, numel, randTensor, stridesOf } from './tensor_ref.js';

/** Reference gather: out[i] = data[src(coordsOf(i, outShape))]. */
function remap(data: ArrayLike<number>, outShape: number[], src: (c: number[]) => number): Float32Array {
  const r = new Float32Array(numel(outShape));
  for (let i = 0; i < r.length; ++i) r[i] = data[src(coordsOf(i, outShape))]!;
  return r;
}
function flat(c: number[], shape: number[]): number {
  const st = stridesOf(shape);
  return c.reduce((s, v, d) => s + v * st[d]!, 0);
}
function expectSame(got: Float32Array, want: Float32Array, msg: string) {
  expect(got.length, msg).toBe(want.length);
  for (let i = 0; i < got.length; ++i)
    if (!Object.is(got[i], want[i])) expect(`${i}: ${got[i]}`, msg).toBe(`${i}: ${want[i]}`);
}

describe('layout ops', () => {
  it('permute makes dense copies, incl. blocked [B, C, HW] <-> [B, HW, C] transposes', () => {
    const rng = new Rng();
    const cases: [number[], number[]][] = [
      [
        [3, 67, 129],
        [0, 2, 1],
      ],
      [
        [2, 129, 67],
        [0, 2, 1],
      ],
      [
        [1, 256, 1024],
        [0, 2, 1],
      ],
      [
        [2, 3, 4, 5],
        [3, 1, 0, 2],
      ],
      [
        [7, 1, 9],
        [2, 1, 0],
      ],
      [[5], [0]],
      [
        [33, 8, 17],
        [1, 2, 0],
      ],
    ];
    for (const [shape, dims] of cases) {
      for (const strided of [false, true]) {
        const x = randTensor(rng, shape, strided);
        const y = withPoison(() => runSync(T.permute(x.t, dims)));
        const out = dims.map((d) => shape[d]!);
        expect(y.shape).toEqual(out);
        const want = remap(x.data, out, (c) => {
          const ci = new Array<number>(shape.length);
          dims.forEach((d, k) => (ci[d] = c[k]!));
          return flat(ci, shape);
        });
        expectSame(y.toFloat32(), want, `${shape} ${dims} ${seedInfo(rng.seed)}`);
      }
    }
    // Other dtypes go through the same copy.
    const xi = Tensor.from(
      BigInt64Array.from({ length: 6 }, (_, i) => BigInt(i)),
      [2, 3],
    );
    expect(Array.from(op1('permute', [xi], { dims: [1, 0] }).toArray<'int64'>())).toEqual([0n, 3n, 1n, 4n, 2n, 5n]);
    expect(() => op1('permute', [xi], { dims: [0, 0] })).toThrow(RangeError);
  });

  it('concat and split are inverse, along any dim, with strided inputs', () => {
    const rng = new Rng();
    for (const dim of [0, 1, 2, -1]) {
      const d = dim < 0 ? dim + 3 : dim;
      const sizes = [1, 7, 4];
      const parts = sizes.map((s, k) => {
        const sh = [3, 5, 6];
        sh[d] = s;
        return randTensor(rng, sh, k === 1);
      });
      const y = withPoison(() =>
        runSync(
          T.concat(
            parts.map((p) => p.t),
            dim,
          ),
        ),
      );
      const out = [3, 5, 6];
      out[d] = 12;
      expect(y.shape).toEqual(out);
      const got = y.toFloat32();
      const want = remap(new Float32Array(0), out, () => 0);
      for (let i = 0; i < want.length; ++i) {
        const c = coordsOf(i, out);
        let k = 0;
        let at = c[d]!;
        while (at >= sizes[k]!) at -= sizes[k++]!;
        const sh = [3, 5, 6];
        sh[d] = sizes[k]!;
        const cc = [...c];
        cc[d] = at;
        want[i] = parts[k]!.data[flat(cc, sh)]!;
      }
      expectSame(got, want, `concat dim ${dim} ${seedInfo(rng.seed)}`);
      const back = withPoison(() => runSync(T.split(y.permute(0, 1, 2), dim, sizes)));
      back.forEach((b, k) => expectSame(b.toFloat32(), parts[k]!.data, `split ${dim} part ${k}`));
    }
    expect(() => op1('concat', [Tensor.zeros([2, 3]), Tensor.zeros([3, 3])], { dim: 1 })).toThrow(/concat: 'x1'/);
    expect(() => op('split', [Tensor.zeros([5])], { dim: 0, sizes: [2, 2] })).toThrow(/split/);
  });

  it('slice follows Python semantics (negative bounds, step, clamping)', () => {
    const rng = new Rng();
    const x = randTensor(rng, [4, 11, 3], true);
    for (const [start, end, step] of [
      [0, 11, 1],
      [2, 9, 3],
      [-4, -1, 1],
      [5, 100, 2],
      [8, 3, 1],
      [-100, 4, 4],
    ] as [number, number, number][]) {
      const y = withPoison(() => runSync(T.slice(x.t, 1, start, end, step)));
      const idx: number[] = [];
      const n = 11;
      let s = start < 0 ? Math.max(start + n, 0) : Math.min(start, n);
      const e = end < 0 ? Math.max(end + n, 0) : Math.min(end, n);
      for (; s < e; s += step) idx.push(s);
      expect(y.shape).toEqual([4, idx.length, 3]);
      const want = remap(x.data, [4, idx.length, 3], (c) => flat([c[0]!, idx[c[1]!]!, c[2]!], [4, 11, 3]));
      expectSame(y.toFloat32(), want, `slice ${start}:${end}:${step} ${seedInfo(rng.seed)}`);
    }
  });

  it('pad2d pads the last two dims with a value', () => {
    const rng = new Rng();
    const x = randTensor(rng, [2, 3, 5, 7], true);
    const [l, r, t, b] = [1, 2, 0, 3];
    const y = withPoison(() => runSync(T.pad2d(x.t, [l, r, t, b], -1.5)));
    const out = [2, 3, 5 + t + b, 7 + l + r];
    expect(y.shape).toEqual(out);
    const got = y.toFloat32();
    for (let i = 0; i < got.length; ++i) {
      const c = coordsOf(i, out);
      const h = c[2]! - t;
      const w = c[3]! - l;
      const want = h >= 0 && h < 5 && w >= 0 && w < 7 ? x.data[flat([c[0]!, c[1]!, h, w], [2, 3, 5, 7])]! : -1.5;
      if (got[i] !== want) expect(`${c}: ${got[i]}`, seedInfo(rng.seed)).toBe(`${c}: ${want}`);
    }
  });

  it('depth_to_space uses DCR order and space_to_depth inverts it', () => {
    const rng = new Rng();
    for (const [B, C, H, W, r] of [
      [2, 3, 5, 7, 2],
      [1, 1, 1, 1, 3],
      [3, 4, 4, 9, 2],
    ]) {
      const shape = [B!, C! * r! * r!, H!, W!];
      const x = randTensor(rng, shape, B! % 2 === 0); // dense (direct kernel) and strided inputs
      const y = withPoison(() => runSync(T.depthToSpace(x.t, r!)));
      const out = [B!, C!, H! * r!, W! * r!];
      expect(y.shape).toEqual(out);
      // out[b, c, h*r + i, w*r + j] = x[b, (i*r + j)*C + c, h, w]
      const want = remap(x.data, out, ([b, c, hh, ww]) => {
        const i = hh! % r!;
        const j = ww! % r!;
        return flat([b!, (i * r! + j) * C! + c!, Math.floor(hh! / r!), Math.floor(ww! / r!)], shape);
      });
      expectSame(y.toFloat32(), want, `${B},${C},${H},${W},${r} ${seedInfo(rng.seed)}`);
      const back = withPoison(() => runSync(T.spaceToDepth(y.permute(0, 1, 2, 3), r!)));
      expect(back.shape).toEqual(shape);
      expectSame(back.toFloat32(), x.data, 'space_to_depth(depth_to_space(x)) == x');
      // The same from a strided view of y.
      const yStrided = runSync(T.permute(y, [0, 1, 3, 2])).permute(0, 1, 3, 2);
      const back2 = withPoison(() => runSync(T.spaceToDepth(yStrided, r!)));
      expectSame(back2.toFloat32(), x.data, 'space_to_depth(strided view) == x');
    }
    expect(() => op1('depth_to_space', [Tensor.zeros([1, 6, 2, 2])], { block: 2 })).toThrow(RangeError);
  });

  it('flip reverses the given dims', () => {
    const rng = new Rng();
    const x = randTensor(rng, [3, 4, 5], true);
    for (const dims of [[0], [2], [0, 2], [-1, 1]]) {
      const y = withPoison(() => runSync(T.flip(x.t, dims)));
      const nd = dims.map((d) => (d < 0 ? d + 3 : d));
      const want = remap(x.data, [3, 4, 5], (c) =>
        flat(
          c.map((v, d) => (nd.includes(d) ? [3, 4, 5][d]! - 1 - v : v)),
          [3, 4, 5],
        ),
      );
      expectSame(y.toFloat32(), want, `flip ${dims} ${seedInfo(rng.seed)}`);
    }
  });
});
