/**
 * Layers: thin declarations of parameters (by reference name) plus programs that run them with
 * native ops. Layouts: images NCHW, token sequences [B, N, C].
 */
import type { Program } from '../graph.js';
import { conv2d, linear } from '../ops/linalg.js';
import { groupNorm, layerNorm } from '../ops/nn.js';
import { add, mul, permute, permuteView, reshape, select } from '../ops/tensor.js';
import type { Tensor } from '../tensor.js';
import { W, type ParamStore } from './params.js';

export class Linear {
  readonly weight: string;
  readonly bias: string | null;
  constructor(
    readonly store: ParamStore,
    readonly name: string,
    readonly inFeatures: number,
    readonly outFeatures: number,
    bias = true,
  ) {
    this.weight = store.declare(`${name}.weight`, [outFeatures, inFeatures], W.normal(0.02));
    this.bias = bias ? store.declare(`${name}.bias`, [outFeatures], W.zeros) : null;
  }
  /** x [..., in] -> [..., out] */
  *forward(x: Tensor): Program<Tensor> {
    return yield* linear(x, this.store.get(this.weight), this.bias ? this.store.get(this.bias) : null);
  }
}

export class Conv2d {
  readonly weight: string;
  readonly bias: string | null;
  constructor(
    readonly store: ParamStore,
    readonly name: string,
    readonly inChannels: number,
    readonly outChannels: number,
    readonly kernel: number,
    readonly opts: { stride?: number; padding?: number; groups?: number; bias?: boolean } = {},
  ) {
    const groups = opts.groups ?? 1;
    this.weight = store.declare(`${name}.weight`, [outChannels, inChannels / groups, kernel, kernel], W.normal(0.02));
    this.bias = opts.bias === false ? null : store.declare(`${name}.bias`, [outChannels], W.zeros);
  }
  *forward(x: Tensor): Program<Tensor> {
    return yield* conv2d(x, this.store.get(this.weight), this.bias ? this.store.get(this.bias) : null, {
      stride: this.opts.stride ?? 1,
      padding: this.opts.padding ?? 0,
      groups: this.opts.groups ?? 1,
    });
  }
}

export type Activation = 'none' | 'silu' | 'gelu';

export class GroupNorm {
  readonly weight: string | null;
  readonly bias: string | null;
  constructor(
    readonly store: ParamStore,
    readonly name: string,
    readonly groups: number,
    readonly channels: number,
    readonly eps = 1e-6,
    affine = true,
  ) {
    this.weight = affine ? store.declare(`${name}.weight`, [channels], W.ones) : null;
    this.bias = affine ? store.declare(`${name}.bias`, [channels], W.zeros) : null;
  }
  /** GroupNorm, optionally fused with the activation that follows it. */
  *forward(x: Tensor, act: Activation = 'none'): Program<Tensor> {
    const s = this.store;
    const [y] = yield* groupNorm(x, this.weight ? s.get(this.weight) : null, this.bias ? s.get(this.bias) : null, {
      groups: this.groups,
      eps: this.eps,
      act,
    });
    return y;
  }
}

export class LayerNorm {
  readonly weight: string;
  readonly bias: string;
  constructor(
    readonly store: ParamStore,
    readonly name: string,
    readonly dim: number,
    readonly eps = 1e-5,
  ) {
    this.weight = store.declare(`${name}.weight`, [dim], W.ones);
    this.bias = store.declare(`${name}.bias`, [dim], W.zeros);
  }
  *forward(x: Tensor): Program<Tensor> {
    const [y] = yield* layerNorm(x, this.store.get(this.weight), this.store.get(this.bias), { eps: this.eps });
    return y;
  }
}

/** x + gamma * y (LayerScale residual), gamma [C] broadcast over the last dim. */
export function* residualScaled(x: Tensor, gamma: Tensor, y: Tensor): Program<Tensor> {
  const gy = yield* mul(y, gamma);
  return yield* add(x, gy);
}

// The layout views live with the other tensor ops; re-exported for the layer code that uses them.
export { permuteView, reshape, select };

/** [B, N, C] tokens -> [B, C, s, s] image (s = sqrt(N)). */
export function* tokensToImage(x: Tensor): Program<Tensor> {
  const [B, N, C] = x.shape as [number, number, number];
  const s = Math.round(Math.sqrt(N));
  if (s * s !== N) throw new RangeError(`tokensToImage: token count ${N} is not a square`);
  const t = yield* permute(x, [0, 2, 1]); // [B, C, N]
  return yield* reshape(t, [B, C, s, s]);
}

/** [B, C, H, W] image -> [B, H*W, C] tokens. */
export function* imageToTokens(x: Tensor): Program<Tensor> {
  const [B, C, H, Wd] = x.shape as [number, number, number, number];
  return yield* permute(yield* reshape(x, [B, C, H * Wd]), [0, 2, 1]);
}
