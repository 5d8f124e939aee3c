/**
 * Learned SourceRecovery (docs/model.md, "Source recovery"): K kept tokens -> L full tokens. Learned queries
 * (`rec_tokens`, one per full position) cross-attend to the embedded kept tokens; a shared head
 * scores every (full position, kept token) pair; softmax over kept tokens gives S_hat [B, L, K];
 * the hard assignment (argmax) unmerges the kept tokens.
 */
import type { Program } from '../graph.js';
import { matmul } from '../ops/linalg.js';
import { unmerge } from '../ops/merge.js';
import { softmax } from '../ops/nn.js';
import { argmax, concat, permute } from '../ops/tensor.js';
import type { Tensor } from '../tensor.js';
import { LayerNorm, Linear } from '../nn/layers.js';
import { W, type ParamStore } from '../nn/params.js';
import { CrossAttentionBlock } from '../nn/transformer.js';
import type { K2LConfig } from './config.js';

export interface RecoveryOutput {
  /** Restored tokens [B, L, d]. */
  tokens: Tensor;
  /** S_hat transposed [B, K, L] (softmax over K for every full position). */
  sourceT: Tensor;
  /** Hard assignment [B, L] int64: full position -> kept token. */
  map: Tensor;
  /** The scores before the softmax [B, L, K] (for the source-recovery loss). */
  logits: Tensor;
}

export class SourceRecovery {
  readonly recEmbed: Linear;
  readonly recTokens: string;
  readonly normIn: LayerNorm;
  readonly blocks: CrossAttentionBlock[] = [];
  readonly recHead: Linear;
  readonly fullNum: number;
  readonly dim: number;

  constructor(
    readonly store: ParamStore,
    cfg: K2LConfig,
    fullNum: number,
    embedDim: number,
    readonly name = 'recovery',
  ) {
    const D = (this.dim = cfg.rec_embed_dim ?? 384);
    this.fullNum = cfg.full_num ?? fullNum;
    const d = cfg.embed_dim ?? embedDim;
    this.recEmbed = new Linear(store, `${name}.rec_embed`, d, D);
    this.recTokens = store.declare(`${name}.rec_tokens`, [1, this.fullNum, D], W.normal(1e-6));
    this.normIn = new LayerNorm(store, `${name}.norm_in`, D, 1e-5);
    const layers = cfg.num_layers ?? 2;
    const heads = cfg.num_heads ?? 8;
    for (let i = 0; i < layers; ++i) this.blocks.push(new CrossAttentionBlock(store, `${name}.blocks.${i}`, D, heads));
    this.recHead = new Linear(store, `${name}.rec_head`, D, D);
  }

  /** kept [B, K, d] -> restored tokens, S_hat^T and the hard map. */
  *forward(kept: Tensor): Program<RecoveryOutput> {
    const B = kept.shape[0]!;
    const kv = yield* this.normIn.forward(yield* this.recEmbed.forward(kept));
    const rec = this.store.get(this.recTokens);
    // rec_tokens [1, L, D] repeated to queries [B, L, D]; kv [B, K, D]
    let q =
      B === 1
        ? rec
        : yield* concat(
            Array.from({ length: B }, () => rec),
            0,
          );
    for (const blk of this.blocks) q = yield* blk.forward(q, kv);
    const qh = yield* this.recHead.forward(q); // [B, L, D]
    const kh = yield* this.recHead.forward(kv); // [B, K, D]
    const logits = yield* matmul(qh, kh, { transB: true }); // qh kh^T [B, L, K]
    const s = yield* softmax(logits, { dim: -1 }); // S_hat [B, L, K]
    const map = yield* argmax(s, -1); // [B, L] int64
    const tokens = yield* unmerge(kept, map); // [B, L, d]
    const sourceT = yield* permute(s, [0, 2, 1]); // [B, K, L]
    return { tokens, sourceT, map, logits };
  }
}
