/**
 * MergeVQ encoder: CNN (or isotropic patch embedding) -> cls + ToMe transformer that merges the
 * token count from L down to K -> generation head (GN, SiLU, 1x1 conv to z) and representation
 * head (`dist_head` on the cls token). See docs/model.md, "Encoder", "Token merging (ToMe)", "Encoder heads".
 */
import { MergeVQError } from '../errors.js';
import { release, type Program } from '../graph.js';
import { gelu } from '../ops/nn.js';
import { add, concat, permute, slice } from '../ops/tensor.js';
import { Tensor } from '../tensor.js';
import { Conv2d, GroupNorm, LayerNorm, Linear, imageToTokens, reshape } from '../nn/layers.js';
import { W, type ParamStore } from '../nn/params.js';
import { Block, type MergeState } from '../nn/transformer.js';
import type { DDConfig } from './config.js';

/** ResBlock(in, out): GN -> SiLU -> conv3x3 -> GN -> SiLU -> conv3x3, + (1x1 shortcut when in != out). */
export class ResBlock {
  readonly norm1: GroupNorm;
  readonly conv1: Conv2d;
  readonly norm2: GroupNorm;
  readonly conv2: Conv2d;
  readonly shortcut: Conv2d | null;
  constructor(store: ParamStore, name: string, inC: number, outC: number) {
    this.norm1 = new GroupNorm(store, `${name}.norm1`, 32, inC, 1e-6);
    this.conv1 = new Conv2d(store, `${name}.conv1`, inC, outC, 3, { padding: 1, bias: false });
    this.norm2 = new GroupNorm(store, `${name}.norm2`, 32, outC, 1e-6);
    this.conv2 = new Conv2d(store, `${name}.conv2`, outC, outC, 3, { padding: 1, bias: false });
    this.shortcut = inC !== outC ? new Conv2d(store, `${name}.nin_shortcut`, inC, outC, 1, { bias: false }) : null;
  }
  *forward(x: Tensor): Program<Tensor> {
    const n1 = yield* this.norm1.forward(x, 'silu');
    const c1 = yield* this.conv1.forward(n1);
    yield* release(n1);
    const n2 = yield* this.norm2.forward(c1, 'silu');
    yield* release(c1);
    const c2 = yield* this.conv2.forward(n2);
    yield* release(n2);
    const res = this.shortcut ? yield* this.shortcut.forward(x) : x;
    const out = yield* add(c2, res); // [B, outC, H, W]
    yield* release(c2, res === x ? null : res);
    return out;
  }
}

/** What the encoder returns for a batch. */
export interface EncoderOutput {
  /** CNN output before the transformer [B, C, h, w] (h = w = sqrt(L)). */
  encCnn: Tensor;
  /** Generation output z [B, z_channels, sqrt(K), sqrt(K)], tokens in ToMe order. */
  z: Tensor;
  /** Compact source map [B, 1 + L] int64: full position (cls first) -> kept token index (cls = 0). */
  sourceMap: Tensor;
  /** Token sizes after the last merge [B, 1 + K]. */
  size: Tensor;
  /** The cls token after the last block [B, C]. */
  cls: Tensor;
  /** dist_head(cls) [B, num_classes], or null without a dist_head. */
  clsHead: Tensor | null;
  /** Kept token count K (without the cls token). */
  keep: number;
}

/** Structural facts derived from a ddconfig (the reference's constructor logic). */
export interface EncoderGeometry {
  embedRes: number;
  embedDim: number;
  heads: number;
  /** Full token count L = embedRes^2. */
  fullNum: number;
  isotropic: boolean;
  patchSize: number;
}

export function encoderGeometry(dd: DDConfig): EncoderGeometry {
  const n = dd.ch_mult.length;
  const embedRes = dd.resolution / 2 ** (n - 1);
  const iso = Boolean(dd.isotropic);
  let embedDim = dd.ch * dd.ch_mult[n - 1]!;
  if (iso && typeof dd.isotropic === 'number' && dd.isotropic > 1) embedDim = dd.isotropic;
  const numHeads = dd.num_heads ?? 8;
  const heads = dd.head_dim ? Math.max(Math.floor(embedDim / dd.head_dim), numHeads) : numHeads;
  if (embedDim % heads !== 0)
    throw new RangeError(`ddconfig: embed dim ${embedDim} is not divisible by ${heads} heads`);
  return {
    embedRes,
    embedDim,
    heads,
    fullNum: embedRes * embedRes,
    isotropic: iso,
    patchSize: dd.resolution / embedRes,
  };
}

function resBlockCounts(dd: DDConfig): number[] {
  const n = dd.ch_mult.length;
  return Array.isArray(dd.num_res_blocks)
    ? dd.num_res_blocks
    : Array.from({ length: n }, () => dd.num_res_blocks as number);
}

export class MergeVQEncoder {
  readonly geo: EncoderGeometry;
  readonly convIn: Conv2d;
  readonly convInNorm: GroupNorm | null;
  readonly levels: { blocks: ResBlock[]; downsample: Conv2d | null }[] = [];
  readonly clsToken: string;
  readonly blocks: Block[] = [];
  readonly normOut: GroupNorm;
  readonly convOut: Conv2d;
  readonly distHead: { kind: 'layer3' | 'ln'; layers: Linear[]; norm: LayerNorm | null } | null;

  constructor(
    readonly store: ParamStore,
    readonly dd: DDConfig,
    readonly name = 'encoder',
  ) {
    const g = (this.geo = encoderGeometry(dd));
    const n = dd.ch_mult.length;
    const inMult = [1, ...dd.ch_mult];
    const counts = resBlockCounts(dd);
    if (dd.num_rep_blocks && dd.num_rep_blocks > 0)
      throw new RangeError(
        'ddconfig: num_rep_blocks > 0 (extra representation blocks) is not supported by this implementation',
      );
    if (g.isotropic) {
      this.convIn = new Conv2d(store, `${name}.conv_in.0`, dd.in_channels, g.embedDim, g.patchSize, {
        stride: g.patchSize,
      });
      this.convInNorm = new GroupNorm(store, `${name}.conv_in.1`, g.embedDim, g.embedDim, 1e-6);
    } else {
      this.convIn = new Conv2d(store, `${name}.conv_in`, dd.in_channels, dd.ch, 3, { padding: 1, bias: false });
      this.convInNorm = null;
      for (let i = 0; i < n; ++i) {
        let c = dd.ch * inMult[i]!;
        const out = dd.ch * dd.ch_mult[i]!;
        const blocks: ResBlock[] = [];
        for (let j = 0; j < counts[i]!; ++j) {
          blocks.push(new ResBlock(store, `${name}.down.${i}.block.${j}`, c, out));
          c = out;
        }
        const downsample =
          i < n - 1 ? new Conv2d(store, `${name}.down.${i}.downsample`, out, out, 3, { stride: 2, padding: 1 }) : null;
        this.levels.push({ blocks, downsample });
      }
    }
    const C = g.embedDim;
    this.clsToken = store.declare(`${name}.attn.cls_token`, [1, 1, C], W.normal(1e-6));
    // init_values: LayerScale's initial gamma (the reference's 1e-5 unless the config sets it)
    const initValues = typeof dd.init_values === 'number' ? dd.init_values : undefined;
    for (let j = 0; j < dd.num_att_blocks; ++j)
      this.blocks.push(new Block(store, `${name}.attn.blocks.${j}`, C, g.heads, { initValues }));
    this.normOut = new GroupNorm(store, `${name}.norm_out`, 32, C, 1e-6);
    this.convOut = new Conv2d(store, `${name}.conv_out`, C, dd.z_channels, 1);
    if (dd.dist_head) {
      const hidden = 4 * C;
      const classes = dd.num_classes || C;
      if (dd.dist_head === 'layer3') {
        this.distHead = {
          kind: 'layer3',
          layers: [
            new Linear(store, `${name}.dist_head.0`, C, hidden),
            new Linear(store, `${name}.dist_head.2`, hidden, hidden),
            new Linear(store, `${name}.dist_head.4`, hidden, classes),
          ],
          norm: null,
        };
      } else {
        this.distHead = {
          kind: 'ln',
          layers: [
            new Linear(store, `${name}.dist_head.0`, C, hidden),
            new Linear(store, `${name}.dist_head.3`, hidden, classes),
          ],
          norm: new LayerNorm(store, `${name}.dist_head.2`, hidden, 1e-5),
        };
      }
    } else {
      this.distHead = null;
    }
  }

  /** CNN (or patch embedding) part: image [B, 3, R, R] -> [B, C, h, w]. */
  *forwardCnn(image: Tensor): Program<Tensor> {
    let x = yield* this.convIn.forward(image);
    if (this.convInNorm) {
      const n = yield* this.convInNorm.forward(x);
      yield* release(x);
      return n;
    }
    for (const lvl of this.levels) {
      for (const b of lvl.blocks) {
        const y = yield* b.forward(x);
        yield* release(x);
        x = y;
      }
      if (lvl.downsample) {
        const y = yield* lvl.downsample.forward(x);
        yield* release(x);
        x = y;
      }
    }
    return x;
  }

  /** dist_head(cls) [B, C] -> [B, classes]. */
  *forwardHead(cls: Tensor): Program<Tensor | null> {
    const h = this.distHead;
    if (!h) return null;
    let y = yield* h.layers[0]!.forward(cls);
    y = yield* gelu(y, { approximate: 'none' }); // [B, 4C]
    if (h.kind === 'layer3') {
      y = yield* h.layers[1]!.forward(y);
      y = yield* gelu(y, { approximate: 'none' }); // [B, 4C]
      return yield* h.layers[2]!.forward(y);
    }
    y = yield* h.norm!.forward(y);
    return yield* h.layers[1]!.forward(y);
  }

  /**
   * Full forward. `rList` is the per-block merge count (its sum = L - K, see schedule.ts).
   */
  *forward(image: Tensor, rList: readonly number[]): Program<EncoderOutput> {
    if (rList.length !== this.blocks.length)
      throw new RangeError(`rList must have ${this.blocks.length} entries, got ${rList.length}`);
    const encCnn = yield* this.forwardCnn(image);
    const [B, C, h, w] = encCnn.shape as [number, number, number, number];
    const L = h * w;
    const tokens = yield* imageToTokens(encCnn);
    const cls = this.store.get(this.clsToken);
    // cls [1, 1, C] repeated to [B, 1, C]; tokens [B, L, C] -> x [B, 1 + L, C]
    const clsB =
      B === 1
        ? cls
        : yield* concat(
            Array.from({ length: B }, () => cls),
            0,
          );
    let x = yield* concat([clsB, tokens], 1);
    const ident = new BigInt64Array(B * (L + 1));
    for (let b = 0; b < B; ++b) for (let l = 0; l <= L; ++l) ident[b * (L + 1) + l] = BigInt(l);
    let state: MergeState = { size: null, map: Tensor.from(ident, [B, L + 1]) };
    for (let i = 0; i < this.blocks.length; ++i) {
      const res = yield* this.blocks[i]!.forwardToMe(x, rList[i]!, state);
      x = res.x;
      state = res.state;
    }
    const N = x.shape[1]!;
    const K = N - 1;
    const s = Math.round(Math.sqrt(K));
    if (s * s !== K)
      throw new MergeVQError(`the merge schedule left ${K} tokens, which is not a square`, 'ERR_SCHEDULE');
    // x [B, 1 + K, C]: cls row [B, 1, C] -> [B, C]; kept rows [B, K, C] -> [B, C, K] -> [B, C, s, s]
    const clsOut = yield* reshape(yield* slice(x, 1, 0, 1), [B, C]);
    const kept = yield* slice(x, 1, 1, N);
    const img = yield* reshape(yield* permute(kept, [0, 2, 1]), [B, C, s, s]);
    const g = yield* this.normOut.forward(img, 'silu');
    const z = yield* this.convOut.forward(g);
    const clsHead = yield* this.forwardHead(clsOut);
    const size = state.size ?? Tensor.from(new Float32Array(B * N).fill(1), [B, N]);
    return { encCnn, z, sourceMap: state.map, size, cls: clsOut, clsHead, keep: K };
  }
}
