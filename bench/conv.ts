/**
 * Suite `conv`: conv2d forward (and the backward of the 3x3 ResBlock shapes) on the tokenizer's
 * encoder/decoder layers at batch 1: 3x3 stride 1 ResBlock convs, 3x3 stride 2 downsampling, 1x1,
 * the decoder's depthwise 3x3, the PatchGAN 4x4 convs and the 16x16/16 patch embedding; plus the
 * small-image training shapes (32x32 Fashion-MNIST tokenizer and discriminator, batch 32). GFLOP/s
 * count 2 * B * O * Ho * Wo * (C/groups) * kh * kw per direction; torch_ms from bench/torch/conv.py.
 */
import { Tensor } from '../lib/tensor.js';
import { op } from '../lib/graph.js';
import type { BenchContext } from './common.js';

interface Case {
  name: string;
  /** Batch (default 1). */
  B?: number;
  C: number;
  H: number;
  O: number;
  k: number;
  s: number;
  p: number;
  g?: number;
  backward?: boolean;
}

const cases: Case[] = [
  { name: 'resblock 3x3 128@256', C: 128, H: 256, O: 128, k: 3, s: 1, p: 1 },
  { name: 'resblock 3x3 256@64', C: 256, H: 64, O: 256, k: 3, s: 1, p: 1, backward: true },
  { name: 'resblock 3x3 512@16', C: 512, H: 16, O: 512, k: 3, s: 1, p: 1, backward: true },
  { name: 'resblock 3x3 256@128', C: 256, H: 128, O: 256, k: 3, s: 1, p: 1 },
  { name: 'conv_in 3x3 3->128@256', C: 3, H: 256, O: 128, k: 3, s: 1, p: 1 },
  { name: 'down 3x3 s2 128@256', C: 128, H: 256, O: 128, k: 3, s: 2, p: 1 },
  { name: 'nin 1x1 128->256@128', C: 128, H: 128, O: 256, k: 1, s: 1, p: 0 },
  { name: 'dwconv 3x3 512@16', C: 512, H: 16, O: 512, k: 3, s: 1, p: 1, g: 512, backward: true },
  { name: 'patchgan 4x4 s2 64->128@128', C: 64, H: 128, O: 128, k: 4, s: 2, p: 1 },
  { name: 'patchgan 4x4 s1 256->512@32', C: 256, H: 32, O: 512, k: 4, s: 1, p: 1 },
  { name: 'patch embed 16x16/16 3->768', C: 3, H: 256, O: 768, k: 16, s: 16, p: 0 },
  { name: 'train resblock 3x3 64@16 b32', B: 32, C: 64, H: 16, O: 64, k: 3, s: 1, p: 1, backward: true },
  { name: 'train resblock 3x3 32@32 b32', B: 32, C: 32, H: 32, O: 32, k: 3, s: 1, p: 1, backward: true },
  { name: 'train resblock 3x3 64@8 b32', B: 32, C: 64, H: 8, O: 64, k: 3, s: 1, p: 1, backward: true },
  { name: 'train patchgan 4x4 s2 64->64@8 b32', B: 32, C: 64, H: 8, O: 64, k: 4, s: 2, p: 1, backward: true },
  { name: 'train patchgan 4x4 s2 64->128@16 b32', B: 32, C: 64, H: 16, O: 128, k: 4, s: 2, p: 1, backward: true },
];

function randn(n: number, scale: number): Float32Array {
  const a = new Float32Array(n);
  let s = 777;
  for (let i = 0; i < n; ++i) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    a[i] = ((s / 4294967296) * 2 - 1) * scale;
  }
  return a;
}

export function run(ctx: BenchContext): void {
  for (const c of cases) {
    const g = c.g ?? 1;
    const B = c.B ?? 1;
    const Ho = Math.floor((c.H + 2 * c.p - c.k) / c.s) + 1;
    const x = Tensor.from(randn(B * c.C * c.H * c.H, 1), [B, c.C, c.H, c.H]);
    const w = Tensor.from(randn(c.O * (c.C / g) * c.k * c.k, 0.05), [c.O, c.C / g, c.k, c.k]);
    const bias = Tensor.from(randn(c.O, 0.1), [c.O]);
    const attrs = { stride: c.s, padding: c.p, groups: g };
    const flops = 2 * B * c.O * Ho * Ho * (c.C / g) * c.k * c.k;
    const big = flops > 2e9;
    const ms = ctx.time(() => void op('conv2d', [x, w, bias], attrs), {
      reps: big ? 5 : 15,
      warmup: 1,
      budgetMs: 5000,
    });
    const t = (
      B === 1 ? ctx.torch('conv', { C: c.C, H: c.H, O: c.O, k: c.k, s: c.s, p: c.p, g, backward: false }) : null
    ) as { ms: number } | null;
    const shape = `[${B},${c.C},${c.H},${c.H}] k${c.k} s${c.s} p${c.p}${g > 1 ? ` g${g}` : ''} -> ${c.O}`;
    ctx.report({ name: c.name, shape, ms, ...ctx.rate(flops, ms), torch_ms: t ? t.ms : null });
    if (c.backward) {
      const gy = Tensor.from(randn(B * c.O * Ho * Ho, 1), [B, c.O, Ho, Ho]);
      const bms = ctx.time(() => void op('conv2d_backward', [x, w, gy], { ...attrs, has_bias: true }), {
        reps: big ? 5 : 15,
        warmup: 1,
        budgetMs: 5000,
      });
      const tb = (
        B === 1 ? ctx.torch('conv', { C: c.C, H: c.H, O: c.O, k: c.k, s: c.s, p: c.p, g, backward: true }) : null
      ) as { ms: number } | null;
      ctx.report({
        name: `${c.name} backward`,
        shape,
        ms: bms,
        ...ctx.rate(2 * flops, bms),
        torch_ms: tb ? tb.ms : null,
      });
    }
  }
}
