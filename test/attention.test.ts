import { describe, expect, it } from 'vitest';
import { addon } from '../lib/native.js';
import { Tensor } from '../lib/tensor.js';
import { runSync } from '../lib/graph.js';
import { attention, attentionBackward, type AttentionOptions } from '../lib/ops/attention.js';
import { Rng, allFinite, finiteDiffCheck, maxAbsErr, relErr, seedInfo, withPoison } from './helpers.js';

// ---------------------------------------------------------------- float64 reference (materialized softmax)

interface Dims {
  B: number;
  H: number;
  N: number;
  M: number;
  hd: number;
}

function visible(i: number, j: number, b: number, d: Dims, o: AttentionOptions, keep: Uint8Array | null): boolean {
  const qpos = (o.qOffset ?? 0) + i;
  if (j >= (o.kvLen ?? d.M)) return false;
  if (o.causal && j > qpos) return false;
  if (keep && !keep[b * d.M + j] && qpos - j > (o.window ?? 2)) return false;
  return true;
}

/** Reference forward; returns o, lse and the probabilities P [B,H,N,M] for the analytic backward. */
function refForward(
  d: Dims,
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  bias: ArrayLike<number> | null,
  keep: Uint8Array | null,
  o: AttentionOptions,
): { out: Float64Array; lse: Float64Array; P: Float64Array } {
  const { B, H, N, M, hd } = d;
  const scale = o.scale ?? 1 / Math.sqrt(hd);
  const out = new Float64Array(B * H * N * hd);
  const lse = new Float64Array(B * H * N);
  const P = new Float64Array(B * H * N * M);
  const s = new Float64Array(M);
  for (let b = 0; b < B; ++b)
    for (let h = 0; h < H; ++h)
      for (let i = 0; i < N; ++i) {
        const qo = ((b * H + h) * N + i) * hd;
        let mx = -Infinity;
        for (let j = 0; j < M; ++j) {
          if (!visible(i, j, b, d, o, keep)) {
            s[j] = -Infinity;
            continue;
          }
          const ko = ((b * H + h) * M + j) * hd;
          let acc = 0;
          for (let c = 0; c < hd; ++c) acc += q[qo + c]! * k[ko + c]!;
          s[j] = scale * acc + (bias ? bias[b * M + j]! : 0);
          mx = Math.max(mx, s[j]!);
        }
        const row = (b * H + h) * N + i;
        if (mx === -Infinity) {
          lse[row] = -Infinity;
          continue;
        }
        let sum = 0;
        for (let j = 0; j < M; ++j) sum += s[j] === -Infinity ? 0 : Math.exp(s[j]! - mx);
        lse[row] = mx + Math.log(sum);
        for (let j = 0; j < M; ++j) {
          const p = s[j] === -Infinity ? 0 : Math.exp(s[j]! - mx) / sum;
          P[row * M + j] = p;
          if (p === 0) continue;
          const vo = ((b * H + h) * M + j) * hd;
          for (let c = 0; c < hd; ++c) out[qo + c]! += p * v[vo + c]!;
        }
      }
  return { out, lse, P };
}

/** Analytic float64 gradients of sum(o * go). */
function refBackward(
  d: Dims,
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  P: Float64Array,
  go: ArrayLike<number>,
  scale: number,
): { gq: Float64Array; gk: Float64Array; gv: Float64Array; gb: Float64Array } {
  const { B, H, N, M, hd } = d;
  const gq = new Float64Array(B * H * N * hd);
  const gk = new Float64Array(B * H * M * hd);
  const gv = new Float64Array(B * H * M * hd);
  const gb = new Float64Array(B * M);
  const dP = new Float64Array(M);
  for (let b = 0; b < B; ++b)
    for (let h = 0; h < H; ++h)
      for (let i = 0; i < N; ++i) {
        const row = (b * H + h) * N + i;
        const qo = row * hd;
        let D = 0;
        for (let j = 0; j < M; ++j) {
          const vo = ((b * H + h) * M + j) * hd;
          let acc = 0;
          for (let c = 0; c < hd; ++c) acc += go[qo + c]! * v[vo + c]!;
          dP[j] = acc;
          D += P[row * M + j]! * acc;
        }
        for (let j = 0; j < M; ++j) {
          const p = P[row * M + j]!;
          if (p === 0) continue;
          const ds = p * (dP[j]! - D);
          const ko = ((b * H + h) * M + j) * hd;
          gb[b * M + j]! += ds;
          for (let c = 0; c < hd; ++c) {
            gq[qo + c]! += scale * ds * k[ko + c]!;
            gk[ko + c]! += scale * ds * q[qo + c]!;
            gv[ko + c]! += p * go[qo + c]!;
          }
        }
      }
  return { gq, gk, gv, gb };
}

// ---------------------------------------------------------------- helpers

/** A [B, H, R, hd] tensor stored as [B, R, H, hd] and permuted: non-contiguous, like qkv views. */
function strided(data: Float32Array, B: number, H: number, R: number, hd: number): Tensor {
  const buf = new Float32Array(data.length);
  for (let b = 0; b < B; ++b)
    for (let h = 0; h < H; ++h)
      for (let r = 0; r < R; ++r)
        for (let c = 0; c < hd; ++c) buf[((b * R + r) * H + h) * hd + c] = data[((b * H + h) * R + r) * hd + c]!;
  const t = Tensor.from(buf, [B, R, H, hd]).permute(0, 2, 1, 3);
  if (H > 1 && R > 1 && t.native.isContiguous) throw new Error('expected a non-contiguous view');
  return t;
}

interface Case {
  d: Dims;
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  bias: Float32Array | null;
  keep: Uint8Array | null;
}

function makeCase(rng: Rng, d: Dims, withBias: boolean, withKeep: boolean): Case {
  const { B, H, N, M, hd } = d;
  return {
    d,
    // scaled so scores have a standard deviation near 1.5: the softmax is far from flat
    q: rng.randn(B * H * N * hd, 1.2),
    k: rng.randn(B * H * M * hd, 1.2),
    v: rng.randn(B * H * M * hd),
    bias: withBias ? Float32Array.from({ length: B * M }, () => Math.log(1 + rng.int(5))) : null,
    keep: withKeep ? Uint8Array.from({ length: B * M }, () => (rng.next() < 0.4 ? 1 : 0)) : null,
  };
}

function tensors(c: Case, layout: 'dense' | 'strided') {
  const { B, H, N, M, hd } = c.d;
  const mk = (a: Float32Array, R: number) =>
    layout === 'dense' ? Tensor.from(a, [B, H, R, hd]) : strided(a, B, H, R, hd);
  return {
    q: mk(c.q, N),
    k: mk(c.k, M),
    v: mk(c.v, M),
    bias: c.bias ? Tensor.from(c.bias, [B, M]) : null,
    keep: c.keep ? Tensor.from(c.keep, [B, M]) : null,
  };
}

function runForward(c: Case, o: AttentionOptions, layout: 'dense' | 'strided' = 'dense') {
  const t = tensors(c, layout);
  return withPoison(() => runSync(attention(t.q, t.k, t.v, t.bias, t.keep, o)));
}

function checkForward(c: Case, o: AttentionOptions, seed: number, layout: 'dense' | 'strided' = 'dense'): void {
  const [out, lse] = runForward(c, o, layout);
  const { B, H, N, hd } = c.d;
  expect(out.shape).toEqual([B, H, N, hd]);
  expect(lse.shape).toEqual([B, H, N]);
  const ref = refForward(c.d, c.q, c.k, c.v, c.bias, c.keep, o);
  const oa = out.toFloat32();
  const la = lse.toFloat32();
  const info = `${seedInfo(seed)} dims ${JSON.stringify(c.d)} opts ${JSON.stringify(o)} ${layout}`;
  expect(allFinite(oa), `o has NaN/inf: ${info}`).toBe(true);
  expect(maxAbsErr(oa, ref.out), info).toBeLessThan(2e-5);
  for (let r = 0; r < la.length; ++r) {
    if (ref.lse[r] === -Infinity) expect(la[r], `lse[${r}] ${info}`).toBe(-Infinity);
    else
      expect(Math.abs(la[r]! - ref.lse[r]!), `lse[${r}] ${info}`).toBeLessThan(
        2e-5 * Math.max(1, Math.abs(ref.lse[r]!)),
      );
  }
}

const MASKS: { name: string; bias: boolean; keep: boolean; opts: (d: Dims) => AttentionOptions }[] = [
  { name: 'no mask', bias: false, keep: false, opts: () => ({}) },
  { name: 'causal', bias: false, keep: false, opts: () => ({ causal: true }) },
  { name: 'key bias', bias: true, keep: false, opts: () => ({}) },
  { name: 'causal + keep/window', bias: false, keep: true, opts: () => ({ causal: true }) },
  { name: 'keep, window 0, non-causal', bias: true, keep: true, opts: () => ({ window: 0 }) },
  {
    name: 'causal + q_offset + kv_len (cache)',
    bias: false,
    keep: false,
    opts: (d) => ({ causal: true, qOffset: d.M - d.N, kvLen: d.M }),
  },
  { name: 'scale', bias: false, keep: false, opts: () => ({ scale: 0.3 }) },
];

describe('attention forward (CPU) vs float64 reference', () => {
  for (const hd of [32, 64, 96, 128, 40, 3]) {
    it(`hd ${hd}: every mask, odd sizes, self attention`, () => {
      const rng = new Rng();
      for (const m of MASKS) {
        const N = [1, 7, 33][rng.int(3)]!;
        const d = { B: 2, H: 2, N, M: N, hd };
        checkForward(makeCase(rng, d, m.bias, m.keep), m.opts(d), rng.seed);
      }
    });
  }

  for (const [N, M] of [
    [1, 1],
    [1, 257],
    [7, 33],
    [33, 7],
    [257, 257],
    [257, 1],
    [49, 97],
  ] as const) {
    it(`N ${N}, M ${M}: cross attention, all masks, strided inputs`, () => {
      const rng = new Rng();
      for (const m of MASKS) {
        const d = { B: 1, H: 2, N, M, hd: 64 };
        const o = m.opts(d);
        if (o.qOffset !== undefined && o.qOffset < 0) continue;
        checkForward(makeCase(rng, d, m.bias, m.keep), o, rng.seed, rng.next() < 0.5 ? 'strided' : 'dense');
      }
    });
  }

  it('reads permuted (non-contiguous) q, k, v views in place', () => {
    const rng = new Rng();
    const d = { B: 2, H: 3, N: 50, M: 50, hd: 40 };
    checkForward(makeCase(rng, d, true, false), {}, rng.seed, 'strided');
    checkForward(makeCase(rng, d, false, true), { causal: true, window: 3 }, rng.seed, 'strided');
    const d1 = { B: 1, H: 3, N: 2, M: 70, hd: 64 };
    checkForward(makeCase(rng, d1, false, true), { causal: true, qOffset: 60, kvLen: 62 }, rng.seed, 'strided');
  });

  it('decode step: N = 1 against a cache whose unused slots are NaN', () => {
    const rng = new Rng();
    for (const [M, len] of [
      [256, 200],
      [1024, 1000],
      [64, 1],
    ] as const) {
      const d = { B: 2, H: 4, N: 1, M, hd: 64 };
      const c = makeCase(rng, d, false, rng.next() < 0.5);
      for (let b = 0; b < 2; ++b)
        for (let h = 0; h < 4; ++h)
          for (let j = len; j < M; ++j)
            for (let x = 0; x < 64; ++x) {
              c.k[((b * 4 + h) * M + j) * 64 + x] = NaN;
              c.v[((b * 4 + h) * M + j) * 64 + x] = NaN;
            }
      checkForward(c, { causal: true, qOffset: len - 1, kvLen: len }, rng.seed);
      // several queries at once against a partly filled cache (prefill continuation)
      const d5 = { ...d, N: 5 };
      const c5 = { ...makeCase(rng, d5, false, false), k: c.k, v: c.v };
      checkForward(c5, { causal: true, qOffset: Math.max(len - 5, 0), kvLen: len }, rng.seed);
    }
  });

  it('fully masked rows give o = 0 and lse = -inf, never NaN', () => {
    const rng = new Rng();
    const d = { B: 2, H: 2, N: 9, M: 20, hd: 32 };
    const c = makeCase(rng, d, false, false);
    const [o0, l0] = runForward(c, { kvLen: 0 });
    expect(Array.from(o0.toFloat32()).every((x) => x === 0)).toBe(true);
    expect(Array.from(l0.toFloat32()).every((x) => x === -Infinity)).toBe(true);
    // -inf key bias on every key of sample 1 masks all of its rows; sample 0 is unaffected.
    const c2 = { ...c, bias: Float32Array.from({ length: 2 * 20 }, (_, i) => (i >= 20 ? -Infinity : 0.5)) };
    checkForward(c2, {}, rng.seed);
    const [o2, l2] = runForward(c2, { causal: true });
    const oa = o2.toFloat32();
    const la = l2.toFloat32();
    for (let i = 2 * 9 * 32; i < oa.length; ++i) expect(oa[i]).toBe(0);
    for (let i = 2 * 9; i < la.length; ++i) expect(la[i]).toBe(-Infinity);
    expect(allFinite(oa)).toBe(true);
  });

  it('rejects bad arguments naming them', () => {
    const q = Tensor.zeros([1, 2, 4, 8]);
    const k = Tensor.zeros([1, 2, 5, 8]);
    expect(() => runSync(attention(q, Tensor.zeros([1, 2, 5, 4]), k))).toThrow(/'k'/);
    expect(() => runSync(attention(q, k, Tensor.zeros([1, 2, 6, 8])))).toThrow(/'v'/);
    expect(() => runSync(attention(q, k, k, Tensor.zeros([1, 4])))).toThrow(/key_bias/);
    expect(() => runSync(attention(q, k, k, null, Tensor.zeros([1, 5])))).toThrow(TypeError);
    expect(() => runSync(attention(q, k, k, null, null, { kvLen: 6 }))).toThrow(RangeError);
    expect(() => runSync(attention(q, k, k, null, null, { window: -1 }))).toThrow(RangeError);
    expect(() => addon.runOp('attention', [q.native, k.native, k.native], { kv_len: 9 })).toThrow(/kv_len/);
  });
});

// ---------------------------------------------------------------- backward

function runBackward(c: Case, o: AttentionOptions, go: Float32Array, layout: 'dense' | 'strided' = 'dense') {
  const t = tensors(c, layout);
  const { B, H, N, hd } = c.d;
  return withPoison(() => {
    const [out, lse] = runSync(attention(t.q, t.k, t.v, t.bias, t.keep, o));
    const gt = layout === 'dense' ? Tensor.from(go, [B, H, N, hd]) : strided(go, B, H, N, hd);
    return runSync(attentionBackward(t.q, t.k, t.v, t.bias, t.keep, out, lse, gt, o));
  });
}

function checkBackward(
  c: Case,
  o: AttentionOptions,
  seed: number,
  layout: 'dense' | 'strided' = 'dense',
  fd = false,
): void {
  const rng = new Rng(seed ^ 0x5bd1e995);
  const { B, H, N, hd } = c.d;
  const go = rng.randn(B * H * N * hd);
  const [gq, gk, gv, gb] = runBackward(c, o, go, layout);
  const info = `${seedInfo(seed)} dims ${JSON.stringify(c.d)} opts ${JSON.stringify(o)} ${layout}`;
  const ref = refForward(c.d, c.q, c.k, c.v, c.bias, c.keep, o);
  const g = refBackward(c.d, c.q, c.k, c.v, ref.P, go, o.scale ?? 1 / Math.sqrt(hd));
  const arrays: [string, Tensor, Float64Array][] = [
    ['gq', gq, g.gq],
    ['gk', gk, g.gk],
    ['gv', gv, g.gv],
  ];
  if (c.bias) {
    expect(gb, info).not.toBeNull();
    arrays.push(['gbias', gb!, g.gb]);
  } else {
    expect(gb, info).toBeNull();
  }
  for (const [name, t, r] of arrays) {
    const a = t.toFloat32();
    expect(allFinite(a), `${name} not finite: ${info}`).toBe(true);
    expect(maxAbsErr(a, r), `${name}: ${info}`).toBeLessThan(1e-4 * Math.max(1, Math.max(...Array.from(r, Math.abs))));
  }
  if (!fd) return;
  // Finite differences of the float64 reference loss sum(o * go) against the op's gradients.
  const loss = (q: ArrayLike<number>, k: ArrayLike<number>, v: ArrayLike<number>, bias: ArrayLike<number> | null) => {
    const r = refForward(c.d, q, k, v, bias, c.keep, o).out;
    let s = 0;
    for (let i = 0; i < r.length; ++i) s += r[i]! * go[i]!;
    return s;
  };
  const checks: [string, Float32Array, (x: Float32Array) => number, Float32Array][] = [
    ['gq', c.q, (x) => loss(x, c.k, c.v, c.bias), gq.toFloat32()],
    ['gk', c.k, (x) => loss(c.q, x, c.v, c.bias), gk.toFloat32()],
    ['gv', c.v, (x) => loss(c.q, c.k, x, c.bias), gv.toFloat32()],
  ];
  if (c.bias) checks.push(['gbias', c.bias, (x) => loss(c.q, c.k, c.v, x), gb!.toFloat32()]);
  for (const [name, x, f, an] of checks) {
    const r = finiteDiffCheck(x, f, an, { eps: 1e-3, count: 16, rng });
    expect(r.maxRel, `${name} finite differences ${JSON.stringify(r.worst)}: ${info}`).toBeLessThan(5e-3);
  }
}

describe('attention backward (CPU)', () => {
  it('matches finite differences of the float64 reference (q, k, v, key bias) for every mask', () => {
    const rng = new Rng();
    for (const m of MASKS) {
      const d = { B: 2, H: 2, N: 7, M: 9, hd: 8 };
      const o = m.opts(d);
      checkBackward(
        makeCase(rng, d, true, m.keep),
        o.qOffset !== undefined ? { ...o, qOffset: 2 } : o,
        rng.seed,
        'dense',
        true,
      );
    }
  });

  for (const hd of [32, 64, 96, 128, 40]) {
    it(`hd ${hd}: analytic float64 gradients, all masks, odd sizes`, () => {
      const rng = new Rng();
      for (const m of MASKS) {
        const N = [1, 7, 33][rng.int(3)]!;
        const M = [1, 7, 33][rng.int(3)]!;
        const d = { B: 2, H: 2, N, M, hd };
        const o = m.opts(d);
        checkBackward(
          makeCase(rng, d, m.bias, m.keep),
          o.qOffset !== undefined ? { ...o, qOffset: Math.max(0, M - N) } : o,
          rng.seed,
        );
      }
    });
  }

  it('257 tokens, strided inputs and go, key bias + causal + keep', () => {
    const rng = new Rng();
    const d = { B: 1, H: 2, N: 257, M: 257, hd: 64 };
    checkBackward(makeCase(rng, d, true, true), { causal: true }, rng.seed, 'strided');
    checkBackward(
      makeCase(rng, { ...d, N: 33 }, true, false),
      { causal: true, qOffset: 224, kvLen: 250 },
      rng.seed,
      'strided',
    );
  });

  it('fully masked rows get zero gradients', () => {
    const rng = new Rng();
    const d = { B: 2, H: 2, N: 5, M: 6, hd: 16 };
    const c = {
      ...makeCase(rng, d, true, false),
      bias: Float32Array.from({ length: 12 }, (_, i) => (i >= 6 ? -Infinity : 0.1 * i)),
    };
    checkBackward(c, {}, rng.seed);
    const [gq, gk, gv] = runBackward(c, { kvLen: 0 }, rng.randn(2 * 2 * 5 * 16));
    for (const t of [gq, gk, gv]) expect(Array.from(t.toFloat32()).every((x) => x === 0)).toBe(true);
  });
});

// ---------------------------------------------------------------- CUDA vs CPU

const cuda = addon.deviceAvailable('cuda');
describe.skipIf(!cuda.available || !addon.supports('attention', 'cuda'))(
  `attention on CUDA vs CPU (${cuda.reason ?? 'cuda available'})`,
  () => {
    const cases: [Dims, boolean, boolean, AttentionOptions][] = [
      [{ B: 2, H: 3, N: 33, M: 33, hd: 64 }, false, false, {}],
      [{ B: 1, H: 4, N: 257, M: 257, hd: 64 }, true, false, {}],
      [{ B: 1, H: 2, N: 100, M: 100, hd: 128 }, false, true, { causal: true }],
      [{ B: 2, H: 2, N: 7, M: 300, hd: 40 }, true, true, { causal: true, qOffset: 280, kvLen: 290, window: 3 }],
      [{ B: 2, H: 16, N: 1, M: 1024, hd: 64 }, false, false, { causal: true, qOffset: 999, kvLen: 1000 }],
      [{ B: 1, H: 2, N: 1, M: 256, hd: 96 }, false, true, { causal: true, qOffset: 255 }],
      [{ B: 1, H: 1, N: 5, M: 9, hd: 32 }, false, false, { kvLen: 0 }],
    ];
    it('forward and backward match the CPU op', () => {
      const rng = new Rng();
      for (const [d, wb, wk, o] of cases) {
        const c = makeCase(rng, d, wb, wk);
        const t = tensors(c, 'strided');
        const g = rng.randn(d.B * d.H * d.N * d.hd);
        const go = Tensor.from(g, [d.B, d.H, d.N, d.hd]);
        const [oc, lc] = runSync(attention(t.q, t.k, t.v, t.bias, t.keep, o));
        const cpuGrads = runSync(attentionBackward(t.q, t.k, t.v, t.bias, t.keep, oc, lc, go, o));
        const dev = (x: Tensor | null) => (x ? x.to('cuda') : null);
        const [og, lg] = runSync(attention(dev(t.q)!, dev(t.k)!, dev(t.v)!, dev(t.bias), dev(t.keep), o));
        const gpuGrads = runSync(
          attentionBackward(dev(t.q)!, dev(t.k)!, dev(t.v)!, dev(t.bias), dev(t.keep), og, lg, dev(go)!, o),
        );
        const info = `${seedInfo(rng.seed)} ${JSON.stringify(d)} ${JSON.stringify(o)}`;
        expect(relErr(og.to('cpu').toFloat32(), oc.toFloat32()), info).toBeLessThan(1e-5);
        const la = lg.to('cpu').toFloat32();
        const lb = lc.toFloat32();
        for (let i = 0; i < la.length; ++i) {
          if (lb[i] === -Infinity) expect(la[i], info).toBe(-Infinity);
          else expect(Math.abs(la[i]! - lb[i]!), info).toBeLessThan(1e-4);
        }
        for (let i = 0; i < 4; ++i) {
          if (!cpuGrads[i]) {
            expect(gpuGrads[i], info).toBeNull();
            continue;
          }
          expect(
            relErr(gpuGrads[i]!.to('cpu').toFloat32(), cpuGrads[i]!.toFloat32()),
            `grad ${i} ${info}`,
          ).toBeLessThan(1e-4);
        }
      }
    });
  },
);
