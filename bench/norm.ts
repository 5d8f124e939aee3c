/**
 * Suite `norm`: GroupNorm(32) + fused SiLU on the tokenizer encoder shapes and LayerNorm [257, 512]
 * (the ViT width). These ops are memory-bound, so the figure of merit is bandwidth: bytes moved is
 * the minimum traffic (read x once, write y once, plus the per-channel parameters), reported as
 * GB/s and as a fraction of the 23 GB/s DRAM bandwidth of this machine (`bandwidth_fraction`).
 * Inputs of the smaller shapes fit in L3 (32 MiB), so their fraction can exceed 1.
 */
import { runOp } from '../lib/native.js';
import { Tensor } from '../lib/tensor.js';
import type { BenchContext } from './common.js';

const DRAM_GBPS = 23;

function randTensor(shape: number[], seed: number): Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const a = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; ++i) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    a[i] = (s / 4294967296) * 4 - 2;
  }
  return Tensor.from(a, shape);
}

export function run(ctx: BenchContext): void {
  const gnShapes = [
    [1, 128, 256, 256],
    [1, 256, 64, 64],
    [1, 512, 16, 16],
  ];
  const lnShapes = [[257, 512]];
  const torch = ctx.torch('norm', { gn: gnShapes, ln: lnShapes }) as { gn: number[]; ln: number[] } | null;

  gnShapes.forEach((shape, i) => {
    const C = shape[1]!;
    const x = randTensor(shape, 1 + i),
      w = randTensor([C], 7),
      b = randTensor([C], 9);
    const numel = x.numel;
    const ms = ctx.time(
      () => {
        runOp('group_norm', [x.native, w.native, b.native], { groups: 32, eps: 1e-6, act: 'silu' });
      },
      { reps: 9, warmup: 2 },
    );
    const bytes = 2 * numel * 4 + 2 * C * 4;
    const gbps = bytes / (ms * 1e6);
    // flops: stats (2 per element, float64), affine (2), SiLU (~20 incl. exp and divide)
    const { gflops, peak_fraction } = ctx.rate(24 * numel, ms);
    ctx.report({
      name: 'group_norm_silu',
      shape: shape.join('x'),
      ms,
      gflops,
      peak_fraction,
      gb_per_s: gbps,
      bandwidth_fraction: gbps / DRAM_GBPS,
      torch_ms: torch ? torch.gn[i]! : null,
    });
  });

  lnShapes.forEach((shape, i) => {
    const C = shape[1]!;
    const x = randTensor(shape, 21),
      w = randTensor([C], 22),
      b = randTensor([C], 23);
    const numel = x.numel;
    const ms = ctx.time(
      () => {
        runOp('layer_norm', [x.native, w.native, b.native], { eps: 1e-5 });
      },
      { reps: 51, warmup: 5 },
    );
    const bytes = 2 * numel * 4 + 2 * C * 4 + 2 * shape[0]! * 4;
    const gbps = bytes / (ms * 1e6);
    const { gflops, peak_fraction } = ctx.rate(8 * numel, ms);
    ctx.report({
      name: 'layer_norm',
      shape: shape.join('x'),
      ms,
      gflops,
      peak_fraction,
      gb_per_s: gbps,
      bandwidth_fraction: gbps / DRAM_GBPS,
      torch_ms: torch ? torch.ln[i]! : null,
    });
  });
}
