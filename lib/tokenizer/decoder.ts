/**
 * MergeVQ decoder (docs/model.md, "Decoder"): conv_in -> DWConv positional encoding + transformer blocks with
 * MixMlp -> per level AdaptiveGroupNorm (style = the decoder input), ResBlocks, depth-to-space
 * upsampler -> GN, SiLU, conv_out.
 */
import { release, type Program } from '../graph.js';
import { add, depthToSpace, mean, mul, scale, sqrt, variance } from '../ops/tensor.js';
import type { Tensor } from '../tensor.js';
import { Conv2d, GroupNorm, Linear, imageToTokens, reshape, tokensToImage } from '../nn/layers.js';
import type { ParamStore } from '../nn/params.js';
import { Block } from '../nn/transformer.js';
import type { DDConfig } from './config.js';
import { ResBlock } from './encoder.js';

/**
 * AdaptiveGroupNorm(z_ch, C): GN(32, C, no affine)(x) * gamma(std_hw(style)) + beta(mean_hw(style)),
 * std with the unbiased variance over H*W plus eps 1e-6 (as the reference computes it).
 */
export class AdaptiveGroupNorm {
  readonly gn: GroupNorm;
  readonly gamma: Linear;
  readonly beta: Linear;
  constructor(store: ParamStore, name: string, zChannels: number, channels: number) {
    this.gn = new GroupNorm(store, `${name}.gn`, 32, channels, 1e-6, false);
    this.gamma = new Linear(store, `${name}.gamma`, zChannels, channels);
    this.beta = new Linear(store, `${name}.beta`, zChannels, channels);
  }
  *forward(x: Tensor, style: Tensor): Program<Tensor> {
    const [B, C] = x.shape as [number, number];
    // style [B, z, h, w] -> per-channel statistics over H*W: [B, z]
    const v = yield* variance(style, { dims: [2, 3], unbiased: true });
    const sd = yield* sqrt(yield* scale(v, 1, 1e-6));
    const gain = yield* reshape(yield* this.gamma.forward(sd), [B, C, 1, 1]);
    const m = yield* mean(style, { dims: [2, 3] });
    const bias = yield* reshape(yield* this.beta.forward(m), [B, C, 1, 1]);
    const n = yield* this.gn.forward(x);
    const sn = yield* mul(n, gain);
    yield* release(n);
    const out = yield* add(sn, bias);
    yield* release(sn);
    return out;
  }
}

/** Conv3x3(C -> 4C) then depth-to-space(2) in DCR order. */
export class Upsampler {
  readonly conv1: Conv2d;
  constructor(store: ParamStore, name: string, dim: number) {
    this.conv1 = new Conv2d(store, `${name}.conv1`, dim, 4 * dim, 3, { padding: 1 });
  }
  *forward(x: Tensor): Program<Tensor> {
    const c = yield* this.conv1.forward(x);
    const out = yield* depthToSpace(c, 2); // [B, 4C, H, W] -> [B, C, 2H, 2W]
    yield* release(c);
    return out;
  }
}

export class MergeVQDecoder {
  readonly convIn: Conv2d;
  readonly posEmbed: Conv2d;
  readonly blocks: Block[] = [];
  readonly adaptive: AdaptiveGroupNorm[] = [];
  readonly up: { blocks: ResBlock[]; upsample: Upsampler | null }[] = [];
  readonly normOut: GroupNorm;
  readonly convOut: Conv2d;
  readonly embedDim: number;

  constructor(
    readonly store: ParamStore,
    readonly dd: DDConfig,
    readonly name = 'decoder',
  ) {
    const n = dd.ch_mult.length;
    const extra = dd.num_res_extra ?? 1;
    const counts = Array.isArray(dd.num_res_blocks)
      ? dd.num_res_blocks
      : Array.from({ length: n }, (_, i) => (dd.num_res_blocks as number) + (i === 0 ? 0 : extra));
    let blockIn = dd.ch * dd.ch_mult[n - 1]!;
    this.embedDim = blockIn;
    const numHeads = dd.num_heads ?? 8;
    const heads = dd.head_dim ? Math.max(Math.floor(blockIn / dd.head_dim), numHeads) : numHeads;
    this.convIn = new Conv2d(store, `${name}.conv_in`, dd.z_channels, blockIn, 3, { padding: 1 });
    this.posEmbed = new Conv2d(store, `${name}.attn.pos_embed`, blockIn, blockIn, 3, { padding: 1, groups: blockIn });
    const initValues = typeof dd.init_values === 'number' ? dd.init_values : undefined;
    for (let j = 0; j < dd.num_att_blocks; ++j)
      this.blocks.push(new Block(store, `${name}.attn.blocks.${j}`, blockIn, heads, { mix: true, initValues }));
    const adaptive: AdaptiveGroupNorm[] = new Array(n);
    const up: { blocks: ResBlock[]; upsample: Upsampler | null }[] = new Array(n);
    for (let i = n - 1; i >= 0; --i) {
      const out = dd.ch * dd.ch_mult[i]!;
      adaptive[i] = new AdaptiveGroupNorm(store, `${name}.adaptive.${i}`, dd.z_channels, blockIn);
      const blocks: ResBlock[] = [];
      for (let j = 0; j < counts[i]!; ++j) {
        blocks.push(new ResBlock(store, `${name}.up.${i}.block.${j}`, blockIn, out));
        blockIn = out;
      }
      up[i] = { blocks, upsample: i > 0 ? new Upsampler(store, `${name}.up.${i}.upsample`, blockIn) : null };
    }
    this.adaptive = adaptive;
    this.up = up;
    this.normOut = new GroupNorm(store, `${name}.norm_out`, 32, blockIn, 1e-6);
    this.convOut = new Conv2d(store, `${name}.conv_out`, blockIn, dd.out_ch, 3, { padding: 1 });
  }

  /** z [B, z_channels, s, s] (full grid) -> image [B, out_ch, R, R]. */
  *forward(z: Tensor): Program<Tensor> {
    const style = z;
    let x = yield* this.convIn.forward(z);
    const pe = yield* this.posEmbed.forward(x);
    x = yield* add(x, pe);
    let t = yield* imageToTokens(x);
    for (const b of this.blocks) t = yield* b.forward(t);
    x = yield* tokensToImage(t);
    const step = function* (next: Tensor): Program<void> {
      yield* release(x);
      x = next;
    };
    for (let i = this.up.length - 1; i >= 0; --i) {
      yield* step(yield* this.adaptive[i]!.forward(x, style));
      for (const b of this.up[i]!.blocks) yield* step(yield* b.forward(x));
      const u = this.up[i]!.upsample;
      if (u) yield* step(yield* u.forward(x));
    }
    yield* step(yield* this.normOut.forward(x, 'silu'));
    const out = yield* this.convOut.forward(x);
    yield* release(x);
    return out;
  }
}
