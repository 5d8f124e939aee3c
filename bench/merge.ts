/**
 * Suite `merge`: one ToMe step on the G configuration (B = 1, 1025 tokens with cls, C = 512,
 * metric head dim 64, r = 101): bipartite matching + size-weighted merge, vs the same in torch
 * (bench/torch/merge.py, bipartite soft matching written in torch).
 */
import { Tensor } from '../lib/tensor.js';
import { runSync } from '../lib/graph.js';
import { bipartiteMatch, mergeWavg } from '../lib/ops/merge.js';
import type { BenchContext } from './common.js';

function rand(n: number, seed: number): Float32Array {
  let s = seed >>> 0;
  const a = new Float32Array(n);
  for (let i = 0; i < n; ++i) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    a[i] = s / 4294967296 - 0.5;
  }
  return a;
}

export function run(ctx: BenchContext): void {
  const [B, N, C, H, r] = [1, 1025, 512, 64, 101];
  const metric = Tensor.from(rand(B * N * H, 1), [B, N, H]);
  const x = Tensor.from(rand(B * N * C, 2), [B, N, C]);
  const size = Tensor.from(new Float32Array(B * N).fill(1), [B, N, 1]);
  const step = () => {
    const d = runSync(bipartiteMatch(metric, { r, classToken: true }));
    runSync(mergeWavg(x, size, d));
  };
  const ms = ctx.time(step, { reps: 21, warmup: 3 });
  // Work: the score matrix (Na x Nb x H FMAs) dominates; the merge is memory-bound.
  const flops = 2 * Math.ceil(N / 2) * Math.floor(N / 2) * H;
  const t = ctx.torch('merge', { b: B, n: N, c: C, h: H, r }) as { ms: number } | null;
  ctx.report({
    name: 'tome_match+merge',
    shape: `B=${B} N=${N} C=${C} hd=${H} r=${r}`,
    ms,
    ...ctx.rate(flops, ms),
    torch_ms: t?.ms ?? null,
  });
}
