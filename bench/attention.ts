/**
 * Suite `attention`: the fused CPU attention at the model's shapes, forward and backward.
 * FLOPs = 4 * B * H * hd * (visible query-key pairs) for the forward (two matmuls), x2.5 for the
 * backward (five matmuls); causal and KV-cache cases count only the visible pairs.
 * torch_ms: PyTorch 1.13 materializing softmax(QK^T)V (what the reference does; it has no SDPA).
 */
import { runSync } from '../lib/graph.js';
import { Tensor } from '../lib/tensor.js';
import { attention, attentionBackward, type AttentionOptions } from '../lib/ops/attention.js';
import type { BenchContext } from './common.js';

interface Shape {
  name: string;
  B: number;
  H: number;
  N: number;
  M: number;
  hd: number;
  bias?: boolean;
  opts?: AttentionOptions;
  backward?: boolean;
}

function randn(n: number, seed: number): Float32Array {
  const a = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; ++i) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    const u1 = (s + 1) / 4294967297;
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    a[i] = Math.sqrt(-2 * Math.log(u1)) * Math.cos((2 * Math.PI * s) / 4294967296);
  }
  return a;
}

function visiblePairs(s: Shape): number {
  const kvLen = s.opts?.kvLen ?? s.M;
  const off = s.opts?.qOffset ?? 0;
  let n = 0;
  for (let i = 0; i < s.N; ++i) n += s.opts?.causal ? Math.min(kvLen, off + i + 1) : kvLen;
  return n;
}

const SHAPES: Shape[] = [
  { name: 'attn_tok_enc_hd64', B: 1, H: 8, N: 256, M: 256, hd: 64, backward: true },
  { name: 'attn_tok_enc_bias_145', B: 1, H: 8, N: 145, M: 145, hd: 64, bias: true, backward: true },
  { name: 'attn_gptb_causal', B: 1, H: 16, N: 256, M: 256, hd: 64, opts: { causal: true }, backward: true },
  // decode steps with classifier-free guidance (cond + null rows): B = 2, one query against the cache
  { name: 'attn_decode_cache256', B: 2, H: 16, N: 1, M: 256, hd: 64, opts: { causal: true, qOffset: 255, kvLen: 256 } },
  {
    name: 'attn_decode_cache1024',
    B: 2,
    H: 16,
    N: 1,
    M: 1024,
    hd: 64,
    opts: { causal: true, qOffset: 1023, kvLen: 1024 },
  },
];

export function run(ctx: BenchContext): void {
  for (const s of SHAPES) {
    const { B, H, N, M, hd } = s;
    const q = Tensor.from(randn(B * H * N * hd, 1), [B, H, N, hd]);
    const k = Tensor.from(randn(B * H * M * hd, 2), [B, H, M, hd]);
    const v = Tensor.from(randn(B * H * M * hd, 3), [B, H, M, hd]);
    const bias = s.bias
      ? Tensor.from(
          Float32Array.from({ length: B * M }, (_, j) => Math.log(1 + (j % 4))),
          [B, M],
        )
      : null;
    const opts = s.opts ?? {};
    const fwdFlops = 4 * B * H * hd * visiblePairs(s);
    const shape = `B${B} H${H} N${N} M${M} hd${hd}${opts.causal ? ' causal' : ''}${s.bias ? ' bias' : ''}`;
    const torchArgs = {
      B,
      H,
      N,
      M,
      hd,
      causal: !!opts.causal,
      bias: !!s.bias,
      q_offset: opts.qOffset ?? 0,
      kv_len: opts.kvLen ?? M,
    };

    const ms = ctx.time(() => void runSync(attention(q, k, v, bias, null, opts)), { reps: 21, warmup: 3 });
    const tf = ctx.torch('attention', { ...torchArgs, mode: 'fwd' }) as { ms: number } | null;
    ctx.report({ name: `${s.name}_fwd`, shape, batch: B, ms, ...ctx.rate(fwdFlops, ms), torch_ms: tf?.ms ?? null });

    if (!s.backward) continue;
    const [o, lse] = runSync(attention(q, k, v, bias, null, opts));
    const go = Tensor.from(randn(B * H * N * hd, 4), [B, H, N, hd]);
    const msb = ctx.time(() => void runSync(attentionBackward(q, k, v, bias, null, o, lse, go, opts)), {
      reps: 15,
      warmup: 2,
    });
    const tb = ctx.torch('attention', { ...torchArgs, mode: 'bwd' }) as { ms: number } | null;
    ctx.report({
      name: `${s.name}_bwd`,
      shape,
      batch: B,
      ms: msb,
      ...ctx.rate(2.5 * fwdFlops, msb),
      torch_ms: tb?.ms ?? null,
    });
  }
}
