/**
 * Suite `lfq`: the LFQ entropy loss (per-sample + codebook entropy, forward + backward) at d = 18
 * (2^18 codes) through the bit factorization, vs the reference's approach in torch (materializing
 * [N, 2^18] logits; run once, at N = 1024 only, since it takes seconds and gigabytes).
 *
 * Memory: `scratch_mb` is the scratch the native kernels allocate (formula in native/cpu/lfq.cc);
 * `rss_delta_mb` is the growth of the process's peak RSS over the first call at that size.
 */
import { Tensor } from '../lib/tensor.js';
import { runSync } from '../lib/graph.js';
import { lfqEntropy, lfqEntropyBackward } from '../lib/ops/lfq.js';
import type { BenchContext } from './common.js';

function randn(n: number, scale: number, seed: number): Float32Array {
  let s = seed >>> 0;
  const next = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = Math.imul(s ^ (s >>> 15), s | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (((t ^ (t >>> 14)) >>> 0) + 1) / 4294967297;
  };
  const a = new Float32Array(n);
  for (let i = 0; i < n; ++i) a[i] = Math.sqrt(-2 * Math.log(next())) * Math.cos(2 * Math.PI * next()) * scale;
  return a;
}

/** Bytes of scratch the CPU kernels allocate for one forward + backward on the dense path (the
 * sparse path needs less; see native/cpu/lfq.cc). avg_probs (an output) holds the pbar sums. */
function scratchBytes(N: number, d: number): number {
  const r16 = (v: number) => Math.ceil(v / 16) * 16;
  const lo = Math.floor(d / 2);
  const Lp = r16(2 ** lo);
  const Hp = r16(2 ** (d - lo));
  const R = Math.min(N, 1024);
  const tables = R * (Lp + Hp) * 4 + R * d * 8 + R * 40;
  const fwd = tables;
  const bwd = tables + 2 ** d * 4 + R * (Lp + Hp) * 4; // tables, G, dP tables
  return Math.max(fwd, bwd);
}

export function run(ctx: BenchContext): void {
  const d = 18;
  const one = Tensor.from(new Float32Array([1]), []);
  const mone = Tensor.from(new Float32Array([-1]), []);
  // z ~ N(0, 1): encoder outputs are O(1) (the commitment loss pulls them to +-1), so at T = 0.01
  // the factor tables are sparse. z ~ N(0, 0.05) keeps most bits uncertain: the dense worst case.
  const cases: [number, number][] = [
    [1024, 1],
    [4096, 1],
    [16384, 1],
    [1024, 0.05],
    [4096, 0.05],
  ];
  for (const [N, std] of cases) {
    const z = Tensor.from(randn(N * d, std, 7 + N), [N, d]);
    const rss0 = process.resourceUsage().maxRSS;
    const step = () => {
      const e = runSync(lfqEntropy(z));
      runSync(lfqEntropyBackward(z, one, mone, { avgProbs: e.avgProbs }));
    };
    step();
    const rssDelta = (process.resourceUsage().maxRSS - rss0) / 1024;
    const ms = ctx.time(step, { reps: 9, warmup: 1, budgetMs: 4000 });
    const flops = 3 * 2 * N * 2 ** d; // pbar, and the two backward table products
    const t =
      N === 1024 && std === 1 ? (ctx.torch('lfq', { n: N, d }) as { ms: number; peak_mb: number } | null) : null;
    ctx.report({
      name: 'lfq_entropy_fwd_bwd',
      shape: `N=${N} d=${d} z_std=${std}`,
      ms,
      ...ctx.rate(flops, ms),
      torch_ms: t?.ms ?? null,
      scratch_mb: scratchBytes(N, d) / 2 ** 20,
      rss_delta_mb: rssDelta,
      torch_peak_mb: t?.peak_mb ?? null,
    });
    if (!ctx.json)
      process.stdout.write(
        `  scratch ${(scratchBytes(N, d) / 2 ** 20).toFixed(2)} MB, peak RSS growth ${rssDelta.toFixed(2)} MB${t ? `, torch peak RSS growth ${t.peak_mb.toFixed(0)} MB` : ''}\n`,
      );
  }
}
