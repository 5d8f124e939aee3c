/**
 * Transformer pieces of the tokenizer (timm-style pre-norm blocks with LayerScale), the ToMe
 * merging block of the encoder, the MixMlp block of the decoder and the cross-attention block of
 * the learned source recovery. Parameter names follow the reference.
 */
import type { Program } from '../graph.js';
import { attention, mergeHeads, splitFusedHeads, splitHeads } from '../ops/attention.js';
import { bipartiteMatch, mergeSource, mergeWavg } from '../ops/merge.js';
import { gelu } from '../ops/nn.js';
import { log, mean } from '../ops/tensor.js';
import { Tensor } from '../tensor.js';
import { Conv2d, LayerNorm, Linear, imageToTokens, residualScaled, tokensToImage } from './layers.js';
import { W, type ParamStore } from './params.js';

/** Multi-head self-attention with a fused qkv projection (bias), optional per-key additive bias. */
export class SelfAttention {
  readonly qkv: Linear;
  readonly proj: Linear;
  readonly headDim: number;
  constructor(
    store: ParamStore,
    name: string,
    readonly dim: number,
    readonly heads: number,
  ) {
    this.qkv = new Linear(store, `${name}.qkv`, dim, 3 * dim);
    this.proj = new Linear(store, `${name}.proj`, dim, dim);
    this.headDim = dim / heads;
  }

  /**
   * x [B, N, C] -> { out [B, N, C], k [B, H, N, hd] (a strided view, for ToMe's metric) }.
   * keyBias [B, N] is added to every query's scores (ToMe's log(size)).
   */
  *forward(x: Tensor, keyBias: Tensor | null = null): Program<{ out: Tensor; k: Tensor }> {
    const qkv = yield* this.qkv.forward(x); // [B, N, 3C]
    const [q, k, v] = yield* splitFusedHeads(qkv, { parts: 3, heads: this.heads }); // each [B, H, N, hd] (views)
    const [o] = yield* attention(q!, k!, v!, keyBias, null, { scale: 1 / Math.sqrt(this.headDim) }); // [B, H, N, hd]
    const merged = yield* mergeHeads(o); // [B, N, C]
    const out = yield* this.proj.forward(merged);
    return { out, k: k! };
  }
}

/** fc1 -> GELU (erf) -> fc2. */
export class Mlp {
  readonly fc1: Linear;
  readonly fc2: Linear;
  constructor(store: ParamStore, name: string, dim: number, hidden: number) {
    this.fc1 = new Linear(store, `${name}.fc1`, dim, hidden);
    this.fc2 = new Linear(store, `${name}.fc2`, hidden, dim);
  }
  *forward(x: Tensor): Program<Tensor> {
    const h = yield* this.fc1.forward(x);
    const a = yield* gelu(h, { approximate: 'none' });
    return yield* this.fc2.forward(a);
  }
}

/** MixMlp (decoder): fc1 -> depthwise 3x3 conv on the token grid -> GELU -> fc2. */
export class MixMlp {
  readonly fc1: Linear;
  readonly dwconv: Conv2d;
  readonly fc2: Linear;
  constructor(store: ParamStore, name: string, dim: number, hidden: number) {
    this.fc1 = new Linear(store, `${name}.fc1`, dim, hidden);
    this.dwconv = new Conv2d(store, `${name}.dwconv`, hidden, hidden, 3, { padding: 1, groups: hidden });
    this.fc2 = new Linear(store, `${name}.fc2`, hidden, dim);
  }
  *forward(x: Tensor): Program<Tensor> {
    const h = yield* this.fc1.forward(x);
    const img = yield* tokensToImage(h);
    const c = yield* this.dwconv.forward(img);
    const t = yield* imageToTokens(c); // [B, N, hidden]
    const a = yield* gelu(t, { approximate: 'none' });
    return yield* this.fc2.forward(a);
  }
}

/** Options of one ToMe merge inside a block. */
export interface MergeState {
  /** Token sizes [B, N] (null before the first merge: all ones). */
  size: Tensor | null;
  /** Compact source map [B, L_full] int64: full position -> current token index. */
  map: Tensor;
}

/**
 * A pre-norm transformer block (timm Block with LayerScale `ls1.gamma`, `ls2.gamma`). With `mix`
 * the MLP is MixMlp (decoder). `forwardToMe` merges r tokens between attention and MLP.
 */
export class Block {
  readonly norm1: LayerNorm;
  readonly attn: SelfAttention;
  readonly ls1: string;
  readonly norm2: LayerNorm;
  readonly mlp: Mlp | MixMlp;
  readonly ls2: string;
  constructor(
    readonly store: ParamStore,
    name: string,
    dim: number,
    heads: number,
    opts: { mix?: boolean; initValues?: number } = {},
  ) {
    const init = opts.initValues ?? 1e-5;
    this.norm1 = new LayerNorm(store, `${name}.norm1`, dim, 1e-5);
    this.attn = new SelfAttention(store, `${name}.attn`, dim, heads);
    this.ls1 = store.declare(`${name}.ls1.gamma`, [dim], W.value(init));
    this.norm2 = new LayerNorm(store, `${name}.norm2`, dim, 1e-5);
    this.mlp = opts.mix ? new MixMlp(store, `${name}.mlp`, dim, 4 * dim) : new Mlp(store, `${name}.mlp`, dim, 4 * dim);
    this.ls2 = store.declare(`${name}.ls2.gamma`, [dim], W.value(init));
  }

  *forward(x: Tensor): Program<Tensor> {
    const n1 = yield* this.norm1.forward(x);
    const { out } = yield* this.attn.forward(n1);
    const x1 = yield* residualScaled(x, this.store.get(this.ls1), out);
    const n2 = yield* this.norm2.forward(x1);
    const m = yield* this.mlp.forward(n2);
    return yield* residualScaled(x1, this.store.get(this.ls2), m);
  }

  /**
   * ToMe block: proportional attention (log size as key bias), then bipartite soft matching on
   * the head-averaged keys merges r tokens (class token protected), then the MLP.
   */
  *forwardToMe(x: Tensor, r: number, state: MergeState): Program<{ x: Tensor; state: MergeState }> {
    const n1 = yield* this.norm1.forward(x);
    const bias = state.size ? yield* log(state.size) : null; // [B, N]
    const { out, k } = yield* this.attn.forward(n1, bias);
    let x1 = yield* residualScaled(x, this.store.get(this.ls1), out);
    let next = state;
    if (r > 0) {
      const N = x1.shape[1]!;
      const metric = yield* mean(k, { dims: [1] }); // keys averaged over heads: [B, N, hd]
      const d = yield* bipartiteMatch(metric, { r, classToken: true });
      const map = yield* mergeSource(state.map, d, N); // [B, L_full]
      const size = state.size ?? Tensor.from(new Float32Array(x1.shape[0]! * N).fill(1), [x1.shape[0]!, N]);
      const merged = yield* mergeWavg(x1, size, d); // x [B, N - r', C], size [B, N - r']
      x1 = merged.x;
      next = { size: merged.size, map };
    }
    const n2 = yield* this.norm2.forward(x1);
    const m = yield* this.mlp.forward(n2);
    return { x: yield* residualScaled(x1, this.store.get(this.ls2), m), state: next };
  }
}

/** Cross-attention block of SourceRecovery: queries attend to kv (names q, kv, proj, gamma1/2). */
export class CrossAttentionBlock {
  readonly norm1: LayerNorm;
  readonly q: Linear;
  readonly kv: Linear;
  readonly proj: Linear;
  readonly gamma1: string;
  readonly norm2: LayerNorm;
  readonly mlp: Mlp;
  readonly gamma2: string;
  readonly headDim: number;
  constructor(
    readonly store: ParamStore,
    name: string,
    readonly dim: number,
    readonly heads: number,
  ) {
    this.norm1 = new LayerNorm(store, `${name}.norm1`, dim, 1e-5);
    this.q = new Linear(store, `${name}.q`, dim, dim);
    this.kv = new Linear(store, `${name}.kv`, dim, 2 * dim);
    this.proj = new Linear(store, `${name}.proj`, dim, dim);
    this.gamma1 = store.declare(`${name}.gamma1`, [dim], W.value(1e-5));
    this.norm2 = new LayerNorm(store, `${name}.norm2`, dim, 1e-5);
    this.mlp = new Mlp(store, `${name}.mlp`, dim, 4 * dim);
    this.gamma2 = store.declare(`${name}.gamma2`, [dim], W.value(1e-5));
    this.headDim = dim / heads;
  }

  /** q [B, N, D] (queries), kv [B, M, D] -> [B, N, D]. */
  *forward(q: Tensor, kv: Tensor): Program<Tensor> {
    const hd = this.headDim;
    const nq = yield* this.norm1.forward(q);
    const qp = yield* splitHeads(yield* this.q.forward(nq), { heads: this.heads }); // [B, H, N, hd] view
    const [kp, vp] = yield* splitFusedHeads(yield* this.kv.forward(kv), { parts: 2, heads: this.heads }); // each [B, H, M, hd] (views)
    const [o] = yield* attention(qp, kp!, vp!, null, null, { scale: 1 / Math.sqrt(hd) }); // [B, H, N, hd]
    const merged = yield* mergeHeads(o); // [B, N, D]
    const a = yield* this.proj.forward(merged);
    const q1 = yield* residualScaled(q, this.store.get(this.gamma1), a);
    const m = yield* this.mlp.forward(yield* this.norm2.forward(q1));
    return yield* residualScaled(q1, this.store.get(this.gamma2), m);
  }
}
