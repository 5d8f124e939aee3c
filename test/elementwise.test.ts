import { describe, expect, it } from 'vitest';
import { op1, runSync } from '../lib/graph.js';
import { Tensor } from '../lib/tensor.js';
import * as T from '../lib/ops/tensor.js';
import { Rng, allFinite, finiteDiffCheck, maxAbsErr, relErr, seedInfo, withPoison } from './helpers.js';
import { broadcastShape, mapRef, numel, randTensor } from './tensor_ref.js';

const BCAST: [number[], number[]][] = [
  [
    [5, 7],
    [5, 7],
  ],
  [
    [2, 3, 4, 5],
    [1, 3, 1, 1],
  ],
  [[6, 33], [33]],
  [
    [4, 1, 3],
    [5, 1],
  ],
  [[257], [1]],
  [[3, 4], []],
  [
    [1, 5],
    [3, 1, 5],
  ],
  [
    [2, 7, 1],
    [2, 1, 9],
  ],
  [[1], [1]],
];

const BINARY: Record<string, (a: number, b: number) => number> = {
  add: (a, b) => a + b,
  sub: (a, b) => a - b,
  mul: (a, b) => a * b,
  div: (a, b) => a / b,
  maximum: (a, b) => Math.max(a, b),
  minimum: (a, b) => Math.min(a, b),
};

describe('binary element-wise ops', () => {
  for (const [name, f] of Object.entries(BINARY)) {
    it(`${name} matches a float64 reference with broadcasting and strided inputs`, () => {
      const rng = new Rng();
      for (const [sa, sb] of BCAST) {
        for (const strided of [false, true]) {
          const a = randTensor(rng, sa, strided);
          const b = randTensor(rng, sb, !strided);
          const out = broadcastShape(sa, sb);
          const y = withPoison(() => op1(name, [a.t, b.t]));
          expect(y.shape).toEqual(out);
          const ref = mapRef(
            out,
            [
              { data: a.data, shape: sa },
              { data: b.data, shape: sb },
            ],
            f,
          );
          const got = y.toFloat32();
          // One float32 rounding of the exact result.
          const tol = name === 'div' ? 1e-6 : 1e-7;
          expect(relErr(got, ref), `${name} ${sa} ${sb} ${seedInfo(rng.seed)}`).toBeLessThan(tol);
          expect(maxAbsErr(got, Float32Array.from(ref)), `${name} ${sa} ${sb} ${seedInfo(rng.seed)}`).toBeLessThan(
            name === 'div' ? 1e-3 : 1e-12,
          );
        }
      }
    });
  }

  it('add/sub honour alpha', () => {
    const rng = new Rng();
    const a = randTensor(rng, [3, 17]);
    const b = randTensor(rng, [17]);
    const ya = runSync(T.add(a.t, b.t, -0.37)).toFloat32();
    const ys = runSync(T.sub(a.t, b.t, 2.5)).toFloat32();
    const ra = mapRef(
      [3, 17],
      [
        { data: a.data, shape: [3, 17] },
        { data: b.data, shape: [17] },
      ],
      (x, y) => x - 0.37 * y,
    );
    const rs = mapRef(
      [3, 17],
      [
        { data: a.data, shape: [3, 17] },
        { data: b.data, shape: [17] },
      ],
      (x, y) => x - 2.5 * y,
    );
    expect(relErr(ya, ra), seedInfo(rng.seed)).toBeLessThan(1e-6);
    expect(relErr(ys, rs), seedInfo(rng.seed)).toBeLessThan(1e-6);
  });

  it('maximum/minimum propagate NaN', () => {
    const a = Tensor.from(new Float32Array([NaN, 1, 2]), [3]);
    const b = Tensor.from(new Float32Array([0, NaN, 3]), [3]);
    expect(Array.from(op1('maximum', [a, b]).toFloat32())).toEqual([NaN, NaN, 3]);
    expect(Array.from(op1('minimum', [a, b]).toFloat32())).toEqual([NaN, NaN, 2]);
  });

  it('rejects shapes that do not broadcast and non-float inputs', () => {
    const a = Tensor.zeros([3, 4]);
    const b = Tensor.zeros([5]);
    expect(() => op1('add', [a, b])).toThrow(RangeError);
    expect(() => op1('add', [a, b])).toThrow(/add: shapes \[3, 4\] and \[5\]/);
    expect(() => op1('mul', [a, Tensor.zeros([4], 'int32')])).toThrow(TypeError);
  });

  it('handles a large per-channel bias on NCHW across threads', () => {
    const rng = new Rng();
    const x = randTensor(rng, [3, 64, 33, 35]);
    const b = randTensor(rng, [1, 64, 1, 1]);
    const y = withPoison(() => runSync(T.add(x.t, b.t))).toFloat32();
    const ref = mapRef(
      [3, 64, 33, 35],
      [
        { data: x.data, shape: [3, 64, 33, 35] },
        { data: b.data, shape: [1, 64, 1, 1] },
      ],
      (p, q) => p + q,
    );
    expect(maxAbsErr(y, Float32Array.from(ref)), seedInfo(rng.seed)).toBe(0);
  });
});

const UNARY: Record<string, (v: number) => number> = {
  neg: (v) => -v,
  exp: Math.exp,
  log: (v) => Math.log(Math.abs(v)),
  sqrt: (v) => Math.sqrt(Math.abs(v)),
  rsqrt: (v) => 1 / Math.sqrt(Math.abs(v)),
  abs: Math.abs,
  sign: Math.sign,
  tanh: Math.tanh,
  sigmoid: (v) => 1 / (1 + Math.exp(-v)),
};

describe('unary and scalar ops', () => {
  for (const [name, f] of Object.entries(UNARY)) {
    it(`${name} matches float64 math on strided inputs`, () => {
      const rng = new Rng();
      for (const shape of [[1], [7], [33, 5], [2, 3, 257]]) {
        const x = randTensor(rng, shape, shape.length > 1, 3);
        let input = x.t;
        let data = x.data;
        if (['log', 'sqrt', 'rsqrt'].includes(name)) {
          input = runSync(T.abs(x.t));
          data = data.map(Math.abs);
        }
        const y = withPoison(() => op1(name, [input])).toFloat32();
        const ref = Float64Array.from(data, f);
        expect(allFinite(y) || name === 'log', seedInfo(rng.seed)).toBe(true);
        expect(relErr(y, ref), `${name} ${shape} ${seedInfo(rng.seed)}`).toBeLessThan(2e-7);
      }
    });
  }

  it('sigmoid is stable for large |x|', () => {
    const y = op1('sigmoid', [Tensor.from([-200, -50, 0, 50, 200])]).toFloat32();
    expect(Array.from(y)).toEqual([0, Math.fround(1 / (1 + Math.exp(50))), 0.5, 1, 1]);
  });

  it('clamp, scale, pow_scalar, addcmul match float64 references', () => {
    const rng = new Rng();
    const x = randTensor(rng, [9, 31], true, 2);
    const c = runSync(T.clamp(x.t, { min: -0.5, max: 1.25 })).toFloat32();
    expect(
      maxAbsErr(
        c,
        x.data.map((v) => Math.min(Math.max(v, -0.5), 1.25)),
      ),
      seedInfo(rng.seed),
    ).toBe(0);
    const lo = runSync(T.clamp(x.t, { min: 0.1 })).toFloat32();
    expect(
      maxAbsErr(
        lo,
        x.data.map((v) => Math.max(v, 0.1)),
      ),
      seedInfo(rng.seed),
    ).toBe(0);
    const s = runSync(T.scale(x.t, 1.5, -0.25)).toFloat32();
    expect(
      relErr(
        s,
        Float64Array.from(x.data, (v) => v * 1.5 - 0.25),
      ),
      seedInfo(rng.seed),
    ).toBeLessThan(1e-7);
    for (const p of [2, 3, 0.5, -1, 1.7]) {
      const base = p === 2 || p === 3 || p === -1 ? x : { t: runSync(T.abs(x.t)), data: x.data.map(Math.abs) };
      const y = runSync(T.powScalar(base.t, p)).toFloat32();
      expect(
        relErr(
          y,
          Float64Array.from(base.data, (v) => v ** p),
        ),
        `p=${p} ${seedInfo(rng.seed)}`,
      ).toBeLessThan(1e-6);
    }
    const a = randTensor(rng, [4, 1, 6]);
    const b = randTensor(rng, [5, 6], true);
    const cc = randTensor(rng, [6]);
    const y = withPoison(() => runSync(T.addcmul(a.t, b.t, cc.t, -0.3))).toFloat32();
    const ref = mapRef(
      [4, 5, 6],
      [
        { data: a.data, shape: [4, 1, 6] },
        { data: b.data, shape: [5, 6] },
        { data: cc.data, shape: [6] },
      ],
      (p, q, r) => p - 0.3 * q * r,
    );
    expect(relErr(y, ref), seedInfo(rng.seed)).toBeLessThan(1e-6);
  });

  it('where selects with broadcasting for float32 and int64', () => {
    const rng = new Rng();
    const cond = Uint8Array.from({ length: 15 }, () => (rng.next() < 0.5 ? 1 : 0));
    const ct = Tensor.from(cond, [3, 5, 1]);
    const a = randTensor(rng, [5, 4], true);
    const b = randTensor(rng, [1]);
    const y = withPoison(() => runSync(T.where(ct, a.t, b.t))).toFloat32();
    const ref = mapRef(
      [3, 5, 4],
      [
        { data: cond, shape: [3, 5, 1] },
        { data: a.data, shape: [5, 4] },
        { data: b.data, shape: [1] },
      ],
      (c, p, q) => (c ? p : q),
    );
    expect(maxAbsErr(y, ref), seedInfo(rng.seed)).toBe(0);
    const ia = Tensor.from(BigInt64Array.from([1n, 2n, 3n]), [3]);
    const ib = Tensor.from(BigInt64Array.from([-7n]), [1]);
    const yi = op1('where', [Tensor.from(Uint8Array.from([1, 0, 1]), [3]), ia, ib]);
    expect(Array.from(yi.toArray<'int64'>())).toEqual([1n, -7n, 3n]);
  });
});

describe('unary backward ops', () => {
  // Each: forward in float64, backward op name, which forward value it saves ('x' or 'y').
  const CASES: {
    name: string;
    f: (v: number) => number;
    saves: 'x' | 'y';
    op: string;
    attrs?: Record<string, number>;
  }[] = [
    { name: 'sigmoid_backward', f: (v) => 1 / (1 + Math.exp(-v)), saves: 'y', op: 'sigmoid' },
    { name: 'tanh_backward', f: Math.tanh, saves: 'y', op: 'tanh' },
    { name: 'abs_backward', f: Math.abs, saves: 'x', op: 'abs' },
    {
      name: 'clamp_backward',
      f: (v) => Math.min(Math.max(v, -0.6), 0.9),
      saves: 'x',
      op: 'clamp',
      attrs: { min: -0.6, max: 0.9 },
    },
  ];
  for (const c of CASES) {
    it(`${c.name} matches finite differences and the analytic gradient`, () => {
      const rng = new Rng();
      const shape = [7, 13];
      const x = randTensor(rng, shape, true);
      // Keep inputs away from kinks so finite differences are valid.
      const xd = x.data.map((v) =>
        Math.abs(v) < 0.05 || Math.abs(v + 0.6) < 0.05 || Math.abs(v - 0.9) < 0.05 ? v + 0.2 : v,
      );
      const xt = Tensor.from(xd, shape);
      const gy = rng.randn(numel(shape));
      const gyt = Tensor.from(gy, shape);
      const y = op1(c.op, [xt], c.attrs);
      const gx = withPoison(() => op1(c.name, [c.saves === 'x' ? xt : y, gyt], c.attrs)).toFloat32();
      expect(allFinite(gx)).toBe(true);
      const loss = (v: Float32Array) => v.reduce((s, vi, i) => s + gy[i]! * c.f(vi), 0);
      const fd = finiteDiffCheck(xd, loss, gx, { eps: 1e-3, count: 40, rng });
      expect(fd.maxRel, `${c.name} ${JSON.stringify(fd.worst)} ${seedInfo(rng.seed)}`).toBeLessThan(1e-3);
      const h = 1e-6;
      const analytic = Float64Array.from(xd, (v, i) => (gy[i]! * (c.f(v + h) - c.f(v - h))) / (2 * h));
      expect(relErr(gx, analytic), seedInfo(rng.seed)).toBeLessThan(1e-5);
    });
  }
});
