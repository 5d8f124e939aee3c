import { describe, expect, it } from 'vitest';
import { Tensor } from '../lib/tensor.js';
import { runSync } from '../lib/graph.js';
import { conv2d, conv2dBackward } from '../lib/ops/linalg.js';
import { Rng, allFinite, finiteDiffCheck, relErr, seedInfo, withPoison } from './helpers.js';

interface Cfg {
  name: string;
  B: number;
  C: number;
  H: number;
  W: number;
  O: number;
  kh: number;
  kw: number;
  stride: [number, number];
  padding: [number, number];
  groups: number;
}

const outSize = (c: Cfg) =>
  [
    Math.floor((c.H + 2 * c.padding[0] - c.kh) / c.stride[0]) + 1,
    Math.floor((c.W + 2 * c.padding[1] - c.kw) / c.stride[1]) + 1,
  ] as const;

/** Float64 direct convolution (cross-correlation). */
function refConv(c: Cfg, x: ArrayLike<number>, w: ArrayLike<number>, bias?: ArrayLike<number>): Float64Array {
  const [Ho, Wo] = outSize(c);
  const Cg = c.C / c.groups,
    Og = c.O / c.groups;
  const y = new Float64Array(c.B * c.O * Ho * Wo);
  for (let b = 0; b < c.B; ++b)
    for (let o = 0; o < c.O; ++o) {
      const g = Math.floor(o / Og);
      for (let oh = 0; oh < Ho; ++oh)
        for (let ow = 0; ow < Wo; ++ow) {
          let s = bias ? bias[o]! : 0;
          for (let ci = 0; ci < Cg; ++ci) {
            const ch = g * Cg + ci;
            for (let i = 0; i < c.kh; ++i) {
              const ih = oh * c.stride[0] - c.padding[0] + i;
              if (ih < 0 || ih >= c.H) continue;
              for (let j = 0; j < c.kw; ++j) {
                const iw = ow * c.stride[1] - c.padding[1] + j;
                if (iw < 0 || iw >= c.W) continue;
                s += x[((b * c.C + ch) * c.H + ih) * c.W + iw]! * w[((o * Cg + ci) * c.kh + i) * c.kw + j]!;
              }
            }
          }
          y[((b * c.O + o) * Ho + oh) * Wo + ow] = s;
        }
    }
  return y;
}

/** Float64 gradients of sum(gy * conv(x, w) + bias). */
function refConvGrads(c: Cfg, x: ArrayLike<number>, w: ArrayLike<number>, gy: ArrayLike<number>) {
  const [Ho, Wo] = outSize(c);
  const Cg = c.C / c.groups,
    Og = c.O / c.groups;
  const gx = new Float64Array(x.length),
    gw = new Float64Array(w.length),
    gb = new Float64Array(c.O);
  for (let b = 0; b < c.B; ++b)
    for (let o = 0; o < c.O; ++o) {
      const g = Math.floor(o / Og);
      for (let oh = 0; oh < Ho; ++oh)
        for (let ow = 0; ow < Wo; ++ow) {
          const gv = gy[((b * c.O + o) * Ho + oh) * Wo + ow]!;
          gb[o]! += gv;
          for (let ci = 0; ci < Cg; ++ci) {
            const ch = g * Cg + ci;
            for (let i = 0; i < c.kh; ++i) {
              const ih = oh * c.stride[0] - c.padding[0] + i;
              if (ih < 0 || ih >= c.H) continue;
              for (let j = 0; j < c.kw; ++j) {
                const iw = ow * c.stride[1] - c.padding[1] + j;
                if (iw < 0 || iw >= c.W) continue;
                const xi = ((b * c.C + ch) * c.H + ih) * c.W + iw,
                  wi = ((o * Cg + ci) * c.kh + i) * c.kw + j;
                gx[xi]! += gv * w[wi]!;
                gw[wi]! += gv * x[xi]!;
              }
            }
          }
        }
    }
  return { gx, gw, gb };
}

const cfg = (
  name: string,
  B: number,
  C: number,
  H: number,
  W: number,
  O: number,
  k: number | [number, number],
  s: number | [number, number],
  p: number | [number, number],
  groups = 1,
): Cfg => {
  const kk = typeof k === 'number' ? [k, k] : k,
    ss = typeof s === 'number' ? [s, s] : s,
    pp = typeof p === 'number' ? [p, p] : p;
  return {
    name,
    B,
    C,
    H,
    W,
    O,
    kh: kk[0]!,
    kw: kk[1]!,
    stride: ss as [number, number],
    padding: pp as [number, number],
    groups,
  };
};

const configs: Cfg[] = [
  cfg('3x3 s1 p1', 2, 5, 9, 11, 7, 3, 1, 1),
  cfg('3x3 s1 p1 wide rows (vector packing, edges)', 1, 3, 5, 37, 13, 3, 1, 1),
  cfg('3x3 s1 p1 W=16', 1, 8, 16, 16, 33, 3, 1, 1),
  cfg('3x3 s2 p1', 2, 6, 13, 10, 9, 3, 2, 1),
  cfg('3x3 s1 p2 narrow rows (W < 8, padded chunks)', 1, 2, 5, 6, 3, 3, 1, 2),
  cfg('3x3 s2 p1 wide rows (vector stride-2 packing)', 1, 3, 7, 45, 5, 3, 2, 1),
  cfg('4x4 s2 p1 wide rows', 2, 2, 6, 70, 4, 4, 2, 1),
  cfg('1x1', 2, 7, 6, 5, 33, 1, 1, 0),
  cfg('1x1 s2', 1, 4, 7, 7, 5, 1, 2, 0),
  cfg('depthwise 3x3', 2, 6, 9, 8, 6, 3, 1, 1, 6),
  cfg('depthwise 3x3 multiplier 2', 1, 4, 7, 9, 8, 3, 1, 1, 4),
  cfg('depthwise 3x3 s2', 1, 5, 9, 10, 5, 3, 2, 1, 5),
  cfg('4x4 s2 p1', 2, 3, 10, 12, 8, 4, 2, 1),
  cfg('4x4 s1 p1', 1, 4, 9, 7, 6, 4, 1, 1),
  cfg('16x16 s16 patch embed', 2, 3, 32, 48, 8, 16, 16, 0),
  cfg('16x16 s16 patch embed, batch 1 (explicit im2col path)', 1, 3, 48, 32, 8, 16, 16, 0),
  cfg('groups 2', 2, 4, 8, 9, 6, 3, 1, 1, 2),
  cfg('non-square kernel/stride/padding', 1, 3, 11, 13, 5, [3, 2], [1, 2], [2, 0]),
  cfg('padding > kernel-1 (general gx path)', 1, 2, 5, 6, 3, 2, 1, 2),
  cfg('1x1 image, 3x3 pad 1', 3, 4, 1, 1, 7, 3, 1, 1),
  cfg('257 output channels', 1, 2, 6, 6, 257, 3, 1, 1),
  // K = 4608 / 9216 makes the backward column tiles (about 8 MB of im2col) smaller than N.
  cfg('C=512 3x3 s1 p1 (gw over 2 column tiles)', 1, 512, 24, 24, 4, 3, 1, 1),
  cfg('C=1024 3x3 s2 p1 (gx col2im and gw over 2 column tiles)', 1, 1024, 32, 32, 3, 3, 2, 1),
  // Training shapes (small images, batch of >= 2 images per thread): the direct 3x3 kernel runs
  // one task per (image, band) over the whole batch, forward and the stride-1 input gradient.
  cfg('3x3 s1 p1 batch 5 at 16x16 (batch-wide direct kernel)', 5, 6, 16, 16, 7, 3, 1, 1),
  cfg(
    '3x3 s1 p1 batch 4 at 32x32, 13 output channels (batch-wide direct kernel, partial channel block)',
    4,
    5,
    32,
    32,
    13,
    3,
    1,
    1,
  ),
  // Stride 1 with output rows of a multiple of 8 columns: gw's im2col is built by masked vector loads.
  cfg('5x5 s1 p2 at 16x16 (vector im2col, 2 padding columns)', 2, 3, 16, 16, 4, 5, 1, 2),
  cfg('3x3 s1 p0 at 10x10 (vector im2col, no padding)', 2, 3, 10, 10, 4, 3, 1, 0),
  cfg('3x3 s1 p1 at 8x8 (vector im2col, 8-column input rows)', 3, 2, 8, 8, 5, 3, 1, 1),
  cfg(
    'depthwise 3x3 odd rows, 3 chunks per row (4-chunk register groups, repeated tail chunk)',
    2,
    5,
    3,
    21,
    5,
    3,
    1,
    1,
    5,
  ),
];

describe('conv2d', () => {
  for (const c of configs) {
    for (const withBias of [false, true]) {
      it(`${c.name} bias=${withBias}: forward and backward vs float64`, () => {
        const rng = new Rng();
        const [Ho, Wo] = outSize(c);
        const xs = [c.B, c.C, c.H, c.W],
          ws = [c.O, c.C / c.groups, c.kh, c.kw];
        const x = rng.randn(xs.reduce((a, b) => a * b)),
          w = rng.randn(
            ws.reduce((a, b) => a * b),
            0.3,
          );
        const bias = withBias ? rng.randn(c.O) : undefined;
        const opts = { stride: c.stride, padding: c.padding, groups: c.groups };
        const y = withPoison(() =>
          runSync(conv2d(Tensor.from(x, xs), Tensor.from(w, ws), bias ? Tensor.from(bias, [c.O]) : null, opts)),
        );
        expect(y.shape).toEqual([c.B, c.O, Ho, Wo]);
        const yf = y.toFloat32();
        expect(allFinite(yf), seedInfo(rng.seed)).toBe(true);
        expect(relErr(yf, refConv(c, x, w, bias)), seedInfo(rng.seed)).toBeLessThan(2e-5);
        const gy = rng.randn(c.B * c.O * Ho * Wo);
        const [gx, gw, gb] = withPoison(() =>
          runSync(
            conv2dBackward(Tensor.from(x, xs), Tensor.from(w, ws), Tensor.from(gy, [c.B, c.O, Ho, Wo]), {
              ...opts,
              hasBias: withBias,
            }),
          ),
        );
        const ref = refConvGrads(c, x, w, gy);
        expect(gx.shape).toEqual(xs);
        expect(gw.shape).toEqual(ws);
        const gxf = gx.toFloat32(),
          gwf = gw.toFloat32();
        expect(allFinite(gxf) && allFinite(gwf), seedInfo(rng.seed)).toBe(true);
        expect(relErr(gxf, ref.gx), seedInfo(rng.seed)).toBeLessThan(2e-5);
        expect(relErr(gwf, ref.gw), seedInfo(rng.seed)).toBeLessThan(2e-5);
        if (withBias) expect(relErr(gb!.toFloat32(), ref.gb), seedInfo(rng.seed)).toBeLessThan(2e-5);
        else expect(gb).toBeNull();
      });
    }
  }

  for (const c of [configs[0]!, configs[3]!, configs[6]!, configs[13]!, configs[12]!]) {
    it(`${c.name}: finite differences of gx, gw, gbias`, () => {
      const rng = new Rng();
      const [Ho, Wo] = outSize(c);
      const xs = [c.B, c.C, c.H, c.W],
        ws = [c.O, c.C / c.groups, c.kh, c.kw];
      const x = rng.randn(xs.reduce((a, b) => a * b)),
        w = rng.randn(
          ws.reduce((a, b) => a * b),
          0.3,
        ),
        bias = rng.randn(c.O);
      const r = rng.randn(c.B * c.O * Ho * Wo);
      const loss = (xx: Float32Array, ww: Float32Array, bb: Float32Array) => {
        const y = refConv(c, xx, ww, bb);
        let s = 0;
        for (let i = 0; i < y.length; ++i) s += y[i]! * r[i]!;
        return s;
      };
      const opts = { stride: c.stride, padding: c.padding, groups: c.groups, hasBias: true };
      const [gx, gw, gb] = runSync(
        conv2dBackward(Tensor.from(x, xs), Tensor.from(w, ws), Tensor.from(r, [c.B, c.O, Ho, Wo]), opts),
      );
      for (const [name, v, f, g] of [
        ['x', x, (t: Float32Array) => loss(t, w, bias), gx.toFloat32()],
        ['w', w, (t: Float32Array) => loss(x, t, bias), gw.toFloat32()],
        ['bias', bias, (t: Float32Array) => loss(x, w, t), gb!.toFloat32()],
      ] as const) {
        const fd = finiteDiffCheck(v, f, g, { rng, count: 12 });
        expect(fd.maxRel, `${name} ${JSON.stringify(fd.worst)} ${seedInfo(rng.seed)}`).toBeLessThan(1e-2);
      }
    });
  }

  it('accepts a non-contiguous (permuted) input', () => {
    const rng = new Rng();
    const c = configs[0]!;
    // stored [B, H, W, C], viewed as [B, C, H, W]
    const nhwc = rng.randn(c.B * c.H * c.W * c.C);
    const xv = Tensor.from(nhwc, [c.B, c.H, c.W, c.C]).permute(0, 3, 1, 2);
    const xd = xv.contiguous().toFloat32();
    const w = rng.randn(c.O * c.C * 9);
    const y = withPoison(() => runSync(conv2d(xv, Tensor.from(w, [c.O, c.C, 3, 3]), null, { padding: 1 })));
    expect(relErr(y.toFloat32(), refConv(c, xd, w)), seedInfo(rng.seed)).toBeLessThan(2e-5);
  });

  it('a larger 3x3 layer (multi-threaded GEMM, several K blocks, column tiles in backward)', () => {
    const rng = new Rng();
    const c = cfg('big', 1, 64, 20, 36, 40, 3, 1, 1);
    const x = rng.randn(64 * 20 * 36),
      w = rng.randn(40 * 64 * 9, 0.1);
    const y = withPoison(() =>
      runSync(conv2d(Tensor.from(x, [1, 64, 20, 36]), Tensor.from(w, [40, 64, 3, 3]), null, { padding: 1 })),
    );
    expect(relErr(y.toFloat32(), refConv(c, x, w)), seedInfo(rng.seed)).toBeLessThan(2e-5);
    const gy = rng.randn(40 * 20 * 36);
    const [gx, gw] = runSync(
      conv2dBackward(
        Tensor.from(x, [1, 64, 20, 36]),
        Tensor.from(w, [40, 64, 3, 3]),
        Tensor.from(gy, [1, 40, 20, 36]),
        { padding: 1 },
      ),
    );
    const ref = refConvGrads(c, x, w, gy);
    expect(relErr(gx.toFloat32(), ref.gx), seedInfo(rng.seed)).toBeLessThan(2e-5);
    expect(relErr(gw.toFloat32(), ref.gw), seedInfo(rng.seed)).toBeLessThan(2e-5);
  });

  // 3x3 stride 1 pad 1 with groups = 1 and rows of >= 10 output pixels run the direct kernel
  // (6 output channels x 16 pixels of one row, input channels in chunks of 64, bands of rows).
  for (const [B, C, H, W, O] of [
    [1, 1, 5, 10, 1], // W < 16, one input and one output channel (partial channel block)
    [2, 7, 9, 21, 5], // odd width: a full and a partial 16-pixel tile
    [1, 33, 6, 33, 13], // 33 channels, three tiles per row, 2 full + 1 partial channel block
    [1, 70, 23, 100, 12], // two channel chunks (64 + 6) and several row bands with a short last band
    [1, 130, 4, 16, 7], // three channel chunks, the last one of 2 channels; W = 16 exactly
    [1, 8, 5, 12, 40], // weights outweigh the input band: output-channel blocks outermost
  ] as const) {
    it(`direct 3x3 path B=${B} C=${C} ${H}x${W} O=${O} (bias, poisoned output) vs float64`, () => {
      const rng = new Rng();
      const c = cfg('direct', B, C, H, W, O, 3, 1, 1);
      const x = rng.randn(B * C * H * W),
        w = rng.randn(O * C * 9, 0.3),
        bias = rng.randn(O);
      const y = withPoison(() =>
        runSync(
          conv2d(Tensor.from(x, [B, C, H, W]), Tensor.from(w, [O, C, 3, 3]), Tensor.from(bias, [O]), { padding: 1 }),
        ),
      );
      expect(y.shape).toEqual([B, O, H, W]);
      const yf = y.toFloat32();
      expect(allFinite(yf), seedInfo(rng.seed)).toBe(true);
      expect(relErr(yf, refConv(c, x, w, bias)), seedInfo(rng.seed)).toBeLessThan(2e-5);
    });
  }

  it('direct 3x3 path on a non-contiguous (permuted) input of 33 channels', () => {
    const rng = new Rng();
    const c = cfg('direct nhwc', 2, 33, 7, 19, 8, 3, 1, 1);
    const nhwc = rng.randn(2 * 7 * 19 * 33);
    const xv = Tensor.from(nhwc, [2, 7, 19, 33]).permute(0, 3, 1, 2);
    const xd = xv.contiguous().toFloat32();
    const w = rng.randn(8 * 33 * 9, 0.3);
    const y = withPoison(() => runSync(conv2d(xv, Tensor.from(w, [8, 33, 3, 3]), null, { padding: 1 })));
    expect(allFinite(y.toFloat32()), seedInfo(rng.seed)).toBe(true);
    expect(relErr(y.toFloat32(), refConv(c, xd, w)), seedInfo(rng.seed)).toBeLessThan(2e-5);
  });

  it('rejects bad arguments naming the op and argument', () => {
    const x = Tensor.zeros([1, 4, 5, 5]);
    expect(() => runSync(conv2d(x, Tensor.zeros([3, 3, 3, 3])))).toThrow(/conv2d: 'w'/);
    expect(() => runSync(conv2d(x, Tensor.zeros([3, 4, 3, 3]), Tensor.zeros([4])))).toThrow(/conv2d: 'bias'/);
    expect(() => runSync(conv2d(x, Tensor.zeros([3, 4, 7, 7])))).toThrow(/larger than the padded input/);
    expect(() => runSync(conv2d(x, Tensor.zeros([3, 2, 3, 3]), null, { groups: 3 }))).toThrow(/groups/);
    expect(() => runSync(conv2d(x, Tensor.zeros([3, 4, 3, 3]), null, { stride: 0 }))).toThrow(RangeError);
    expect(() => runSync(conv2d(Tensor.zeros([4, 5, 5]), Tensor.zeros([3, 4, 3, 3])))).toThrow(/conv2d: 'x'/);
    expect(() => runSync(conv2dBackward(x, Tensor.zeros([3, 4, 3, 3]), Tensor.zeros([1, 3, 5, 5])))).toThrow(
      /conv2d_backward: 'gy'/,
    );
  });
});
