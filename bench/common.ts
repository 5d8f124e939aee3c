/**
 * Shared benchmark machinery: timing (median of repeats), the machine's measured fp32 peak, the
 * JSON-lines / table output, and PyTorch comparisons run in the same process tree.
 *
 * Each suite file exports `run(ctx)`; bench/main.ts picks the suite named on the command line.
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { runOp } from '../lib/native.js';

export interface BenchRecord {
  name: string;
  shape: string;
  batch?: number;
  /** Median wall time in milliseconds. */
  ms: number;
  gflops?: number | null;
  peak_fraction?: number | null;
  /** The same work in PyTorch, measured in the same run; null when torch is unavailable. */
  torch_ms?: number | null;
  [extra: string]: unknown;
}

export interface BenchContext {
  json: boolean;
  /** Measured fp32 peak of this machine for the current thread count, GFLOP/s. */
  peakGflops: number;
  threads: number;
  report(r: BenchRecord): void;
  /** Median ms of fn over `reps` runs after `warmup` runs (time-boxed to about `budgetMs`). */
  time(fn: () => void, opts?: { reps?: number; warmup?: number; budgetMs?: number }): number;
  timeAsync(fn: () => Promise<void>, opts?: { reps?: number; warmup?: number; budgetMs?: number }): Promise<number>;
  /** Runs bench/torch/<script>.py with JSON args; returns its JSON output or null without torch. */
  torch(script: string, args: unknown): unknown | null;
  /** flops / ms -> GFLOP/s and its fraction of the measured peak. */
  rate(flops: number, ms: number): { gflops: number; peak_fraction: number };
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export function time(fn: () => void, opts: { reps?: number; warmup?: number; budgetMs?: number } = {}): number {
  const warmup = opts.warmup ?? 1;
  const reps = opts.reps ?? 7;
  const budget = opts.budgetMs ?? 3000;
  for (let i = 0; i < warmup; ++i) fn();
  const ts: number[] = [];
  const start = performance.now();
  for (let i = 0; i < reps; ++i) {
    const t0 = performance.now();
    fn();
    ts.push(performance.now() - t0);
    if (performance.now() - start > budget && ts.length >= 3) break;
  }
  return median(ts);
}

export async function timeAsync(
  fn: () => Promise<void>,
  opts: { reps?: number; warmup?: number; budgetMs?: number } = {},
): Promise<number> {
  const warmup = opts.warmup ?? 1;
  const reps = opts.reps ?? 7;
  const budget = opts.budgetMs ?? 3000;
  for (let i = 0; i < warmup; ++i) await fn();
  const ts: number[] = [];
  const start = performance.now();
  for (let i = 0; i < reps; ++i) {
    const t0 = performance.now();
    await fn();
    ts.push(performance.now() - t0);
    if (performance.now() - start > budget && ts.length >= 3) break;
  }
  return median(ts);
}

/** Measures the fp32 FMA peak with the native FMA loop, on `threads` threads. */
export function measurePeak(threads: number): number {
  // Best of three: a single short loop can land on a clock ramp or a neighbour's burst.
  let best = 0;
  for (let i = 0; i < 3; ++i) {
    const [out] = runOp('fma_peak', [], { iters: 30_000_000, threads });
    best = Math.max(best, new Float32Array(out!.read())[0]!);
  }
  return best;
}

/** The python3 that has torch (Debian's python3-torch lands under /usr/bin/python3). */
export function torchPython(): string | null {
  for (const py of ['/usr/bin/python3', 'python3']) {
    try {
      if (py.startsWith('/') && !existsSync(py)) continue;
      execFileSync(py, ['-c', 'import torch'], { stdio: 'ignore' });
      return py;
    } catch {
      /* try the next */
    }
  }
  return null;
}

let torchPy: string | null | undefined;

export function makeContext(json: boolean, threads: number): BenchContext {
  const peak = measurePeak(threads);
  const ctx: BenchContext = {
    json,
    peakGflops: peak,
    threads,
    report(r) {
      if (json) {
        process.stdout.write(JSON.stringify(r) + '\n');
      } else {
        const parts = [`${r.name.padEnd(28)} ${String(r.shape).padEnd(28)}`, `${r.ms.toFixed(3).padStart(10)} ms`];
        if (r.gflops != null) parts.push(`${r.gflops.toFixed(1).padStart(7)} GFLOP/s`);
        if (r.peak_fraction != null) parts.push(`${(100 * r.peak_fraction).toFixed(1).padStart(5)}% peak`);
        if (r.torch_ms != null) parts.push(`torch ${r.torch_ms.toFixed(3)} ms (x${(r.torch_ms / r.ms).toFixed(2)})`);
        process.stdout.write(parts.join('  ') + '\n');
      }
    },
    time,
    timeAsync,
    torch(script, args) {
      if (torchPy === undefined) torchPy = torchPython();
      if (!torchPy) return null;
      const out = execFileSync(
        torchPy,
        [new URL(`../../bench/torch/${script}.py`, import.meta.url).pathname, JSON.stringify(args)],
        {
          encoding: 'utf8',
          env: { ...process.env, OMP_NUM_THREADS: String(threads), MKL_NUM_THREADS: String(threads) },
          maxBuffer: 64 << 20,
        },
      );
      return JSON.parse(out.trim().split('\n').pop()!);
    },
    rate(flops, ms) {
      const gflops = flops / (ms * 1e6);
      return { gflops, peak_fraction: gflops / peak };
    },
  };
  return ctx;
}
