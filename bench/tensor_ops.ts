/**
 * Suite `tensor_ops`: memory-bound element-wise, reduction, layout and indexing ops on tokenizer-
 * sized tensors. These do ~1 flop per element, so the figure of merit is bandwidth (GB/s moved);
 * gflops / peak_fraction are reported as null. torch_ms is PyTorch's time for the same work.
 */
import { op1 } from '../lib/graph.js';
import { Tensor } from '../lib/tensor.js';
import type { BenchContext } from './common.js';

function randn(shape: number[]): Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const a = new Float32Array(n);
  for (let i = 0; i < n; ++i) a[i] = Math.random() * 2 - 1;
  return Tensor.from(a, shape);
}

export function run(ctx: BenchContext): void {
  const cases = [
    { name: 'add_same', shape: [4, 256, 64, 64] },
    { name: 'add_bias', shape: [4, 256, 64, 64], bias: [1, 256, 1, 1] },
    { name: 'permute_tr', shape: [4, 256, 4096] },
    { name: 'sum_bias_grad', shape: [4, 256, 64, 64] },
    { name: 'sum_all', shape: [1 << 24] },
    { name: 'embedding', weight: [16384, 768], n: 4096 },
    { name: 'depth_to_space', shape: [4, 512, 32, 32], block: 2 },
  ];
  const torchMs = (ctx.torch('tensor_ops', cases) ?? {}) as Record<string, number>;
  for (const c of cases) {
    let fn: () => void;
    let bytes: number;
    let shape: string;
    if (c.name === 'add_same' || c.name === 'add_bias') {
      const a = randn(c.shape!);
      const b = randn(c.name === 'add_same' ? c.shape! : c.bias!);
      fn = () => void op1('add', [a, b]);
      bytes = a.numel * 4 * (c.name === 'add_same' ? 3 : 2);
      shape = `${JSON.stringify(c.shape)} + ${JSON.stringify(c.name === 'add_same' ? c.shape : c.bias)}`;
    } else if (c.name === 'permute_tr') {
      const a = randn(c.shape!);
      fn = () => void op1('permute', [a], { dims: [0, 2, 1] });
      bytes = a.numel * 8;
      shape = `${JSON.stringify(c.shape)} -> [0, 2, 1]`;
    } else if (c.name === 'sum_bias_grad') {
      const a = randn(c.shape!);
      fn = () => void op1('sum', [a], { dims: [0, 2, 3] });
      bytes = a.numel * 4;
      shape = `${JSON.stringify(c.shape)} dims [0, 2, 3]`;
    } else if (c.name === 'sum_all') {
      const a = randn(c.shape!);
      fn = () => void op1('sum', [a]);
      bytes = a.numel * 4;
      shape = JSON.stringify(c.shape);
    } else if (c.name === 'embedding') {
      const w = randn(c.weight!);
      const idx = Tensor.from(
        BigInt64Array.from({ length: c.n! }, () => BigInt(Math.floor(Math.random() * c.weight![0]!))),
        [c.n!],
      );
      fn = () => void op1('embedding', [w, idx]);
      bytes = c.n! * c.weight![1]! * 8;
      shape = `weight ${JSON.stringify(c.weight)}, ${c.n} ids`;
    } else {
      const a = randn(c.shape!);
      fn = () => void op1('depth_to_space', [a], { block: c.block! });
      bytes = a.numel * 8;
      shape = `${JSON.stringify(c.shape)} r=${c.block}`;
    }
    const ms = ctx.time(fn, { reps: 15, warmup: 2 });
    ctx.report({
      name: c.name,
      shape,
      ms,
      gflops: null,
      peak_fraction: null,
      gbps: bytes / ms / 1e6,
      torch_ms: torchMs[c.name] ?? null,
    });
  }
}
