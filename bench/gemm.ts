/**
 * Suite `gemm`: sgemm throughput on 2048^3 and on the linear layers of the tokenizer (G+R d64:
 * 145..257 tokens, attention qkv/proj, MLP, decoder MixMlp) and GPT-B at 256 tokens, through the
 * `matmul` / `linear` ops. Each row: median ms, GFLOP/s, fraction of the measured FMA peak, and
 * the same op in PyTorch (bench/torch/gemm.py) when torch is installed.
 */
import { Tensor } from '../lib/tensor.js';
import { op1 } from '../lib/graph.js';
import type { BenchContext } from './common.js';

interface Case {
  name: string;
  kind: 'matmul' | 'linear';
  M: number;
  N: number;
  K: number;
}

const cases: Case[] = [
  { name: 'matmul 2048^3', kind: 'matmul', M: 2048, N: 2048, K: 2048 },
  { name: 'enc qkv (145 tok)', kind: 'linear', M: 145, N: 1536, K: 512 },
  { name: 'enc qkv (257 tok)', kind: 'linear', M: 257, N: 1536, K: 512 },
  { name: 'enc proj (257 tok)', kind: 'linear', M: 257, N: 512, K: 512 },
  { name: 'enc mlp fc1 (257 tok)', kind: 'linear', M: 257, N: 2048, K: 512 },
  { name: 'enc mlp fc2 (257 tok)', kind: 'linear', M: 257, N: 512, K: 2048 },
  { name: 'enc mlp fc1 (145 tok)', kind: 'linear', M: 145, N: 2048, K: 512 },
  { name: 'enc mlp fc2 (145 tok)', kind: 'linear', M: 145, N: 512, K: 2048 },
  { name: 'dec MixMlp fc1', kind: 'linear', M: 256, N: 2048, K: 512 },
  { name: 'dec MixMlp fc2', kind: 'linear', M: 256, N: 512, K: 2048 },
  { name: 'GPT-B qkv', kind: 'linear', M: 256, N: 3072, K: 1024 },
  { name: 'GPT-B proj', kind: 'linear', M: 256, N: 1024, K: 1024 },
  { name: 'GPT-B fc1', kind: 'linear', M: 256, N: 4096, K: 1024 },
  { name: 'GPT-B fc2', kind: 'linear', M: 256, N: 1024, K: 4096 },
];

function randn(n: number, scale: number): Float32Array {
  const a = new Float32Array(n);
  let s = 12345;
  for (let i = 0; i < n; ++i) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    a[i] = ((s / 4294967296) * 2 - 1) * scale;
  }
  return a;
}

export function run(ctx: BenchContext): void {
  const [nr] = new Int32Array(op1('gemm_kernel', []).toArray<'int32'>());
  const kernel = nr === 32 ? 'avx512 6x32' : 'avx2 6x16';
  if (!ctx.json) process.stdout.write(`# sgemm micro-kernel: ${kernel}\n`);
  for (const c of cases) {
    const flops = 2 * c.M * c.N * c.K;
    let fn: () => void;
    if (c.kind === 'matmul') {
      const a = Tensor.from(randn(c.M * c.K, 1), [c.M, c.K]);
      const b = Tensor.from(randn(c.K * c.N, 1), [c.K, c.N]);
      fn = () => void op1('matmul', [a, b]);
    } else {
      const x = Tensor.from(randn(c.M * c.K, 1), [c.M, c.K]);
      const w = Tensor.from(randn(c.N * c.K, 0.05), [c.N, c.K]);
      const bias = Tensor.from(randn(c.N, 0.1), [c.N]);
      fn = () => void op1('linear', [x, w, bias]);
    }
    const ms = ctx.time(fn, { reps: flops > 4e9 ? 7 : 25, warmup: 2, budgetMs: 4000 });
    const t = ctx.torch('gemm', { kind: c.kind, M: c.M, N: c.N, K: c.K }) as { ms: number } | null;
    ctx.report({
      name: c.name,
      shape: `${c.M}x${c.K} -> ${c.N}`,
      ms,
      ...ctx.rate(flops, ms),
      torch_ms: t ? t.ms : null,
      kernel,
    });
  }
}
