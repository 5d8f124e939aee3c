/** Suite `peak`: the machine's fp32 FMA peak on 1 and N threads (the denominator of every fraction). */
import { measurePeak, type BenchContext } from './common.js';

export function run(ctx: BenchContext): void {
  for (const t of [...new Set([1, ctx.threads])]) {
    const gflops = measurePeak(t);
    ctx.report({
      name: 'fma_peak',
      shape: `threads=${t}`,
      ms: 0,
      gflops,
      peak_fraction: gflops / ctx.peakGflops,
      torch_ms: null,
    });
  }
}
