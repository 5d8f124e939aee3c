/**
 * Suite `optim`: one fused AdamW step (`adam_step`, in place) and one EMA update (`ema_update`)
 * on a single parameter tensor of 1M and 16M elements. Memory-bound: an Adam step reads param,
 * grad and both moments and writes three of them (7 x 4 bytes per element), an EMA update reads
 * two tensors and writes one (12 bytes); reported as GB/s. torch_ms: torch.optim.AdamW
 * (single-tensor, foreach=False) step and the LitEma arithmetic on the same sizes.
 */
import { runSync } from '../lib/graph.js';
import { adamStep, emaUpdate } from '../lib/ops/optim.js';
import { Tensor } from '../lib/tensor.js';
import type { BenchContext } from './common.js';

function randTensor(n: number, seed: number, scale = 1): Tensor {
  const a = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; ++i) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    a[i] = ((s / 4294967296) * 2 - 1) * scale;
  }
  return Tensor.from(a, [n]);
}

export function run(ctx: BenchContext): void {
  const sizes = [1 << 20, 1 << 24];
  const torch = ctx.torch('optim', { sizes }) as { adamw: number[]; ema: number[] } | null;
  sizes.forEach((n, i) => {
    const p = randTensor(n, 1 + i);
    const g = randTensor(n, 11 + i, 0.1);
    const m = Tensor.zeros([n]);
    const v = Tensor.zeros([n]);
    let step = 0;
    const ms = ctx.time(
      () => {
        runSync(
          adamStep(p, g, m, v, {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weightDecay: 0.05,
            decoupled: true,
            step: ++step,
          }),
        );
      },
      { reps: 9, warmup: 2 },
    );
    const gbps = (28 * n) / (ms * 1e6);
    ctx.report({ name: 'adamw_step', shape: String(n), ms, gb_per_s: gbps, torch_ms: torch ? torch.adamw[i]! : null });
    const sh = randTensor(n, 21 + i);
    const ems = ctx.time(
      () => {
        runSync(emaUpdate(sh, p, { decay: 0.999 }));
      },
      { reps: 9, warmup: 2 },
    );
    ctx.report({
      name: 'ema_update',
      shape: String(n),
      ms: ems,
      gb_per_s: (12 * n) / (ems * 1e6),
      torch_ms: torch ? torch.ema[i]! : null,
    });
  });
}
