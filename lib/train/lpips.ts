/**
 * LPIPS, the perceptual distance of the tokenizer's training loss, on a VGG16 feature network.
 *
 * ```ts
 * const lpips = new LPIPS();                        // VGG16 widths [64, 128, 256, 512, 512]
 * lpips.loadWeights({ ...torchvisionVgg16, ...lpipsLinWeights });
 * const tape = new Tape();
 * const d = runSync(lpips.forward(inputs, reconstructions), tape.observe);   // [B, 1, 1, 1]
 * ```
 *
 * Data flow, for each image x in [-1, 1] ([B, 3, H, W], H and W >= 16):
 * ScalingLayer (x - shift) / scale, then five slices of torchvision's `vgg16().features`
 * (3x3 convolutions with padding 1, each followed by ReLU; MaxPool2d(2, 2) opens slices 2-5);
 * the output f_k of slice k is normalized over channels, n(f) = f / (sqrt(sum_c f^2) + 1e-10), and
 * the distance is sum_k mean_hw(lin_k((n(f0_k) - n(f1_k))^2)), lin_k a 1x1 convolution
 * chns[k] -> 1 without bias. Dropout (index 0 of each lin block) is off, as in eval mode.
 *
 * The network is frozen: nothing here updates its weights. The program is made of recordable ops,
 * so a `Tape` gives gradients to both inputs (and, as a side effect of the conv backward, to the
 * weights, which callers simply ignore). To skip the backward through the reference image, compute
 * its `features` outside the tape and call `distance` inside it.
 *
 * Where a feature map is zero across all channels (every ReLU off, which happens in practice),
 * the backward of sqrt(sum_c f^2) is 0 / 0. torch's ReLU backward selects (it never multiplies
 * that NaN), so the reference's gradient there is 0; the slope-0 leaky ReLU backward used here
 * multiplies by the slope, so a 1e-30 under the square root keeps the sqrt gradient finite instead
 * (0 at those positions, as in the reference). Values are unchanged to float32 rounding wherever
 * sum_c f^2 exceeds about 1e-23.
 */
import { MergeVQError, typeError, rangeError, checkKeys, optionKeys } from '../errors.js';
import { release, type Program } from '../graph.js';
import { ParamStore, W, type LoadReport } from '../nn/params.js';
import * as linalg from '../ops/linalg.js';
import * as nn from '../ops/nn.js';
import * as pool from '../ops/pool.js';
import * as T from '../ops/tensor.js';
import { Tensor } from '../tensor.js';

/** The VGG16 widths of the released LPIPS network (one per slice). */
export const VGG16_CHNS: readonly number[] = Object.freeze([64, 128, 256, 512, 512]);

/**
 * torchvision `vgg16().features` indices of the 3x3 convolutions in each of LPIPS's five slices
 * (the slices start at features 0, 4, 9, 16 and 23 and end at 30).
 */
export const VGG16_SLICE_CONVS: readonly (readonly number[])[] = Object.freeze([
  [0, 2],
  [5, 7],
  [10, 12, 14],
  [17, 19, 21],
  [24, 26, 28],
]);

/** LPIPS's ScalingLayer constants: the ImageNet mean and std mapped to inputs in [-1, 1]. */
const SCALING_SHIFT = [-0.03, -0.088, -0.188];
const SCALING_SCALE = [0.458, 0.448, 0.45];

/** Added under the channel-norm square root so that all-zero feature columns have a finite gradient (see above). */
const NORM_TINY = 1e-30;
/** The reference's eps of the channel normalization. */
const NORM_EPS = 1e-10;

// ReLU is leaky_relu with slope 0: its gradient rule (gy where x > 0) is torch's ReLU backward.

/** Options of the {@link LPIPS} constructor. */
export interface LPIPSOptions {
  /** Widths of the five VGG16 slices (default {@link VGG16_CHNS}); `loadWeights` re-derives them. */
  chns?: readonly number[];
}
const LPIPS_KEYS = optionKeys<LPIPSOptions>()(['chns']);

/** Options of {@link LPIPS.loadWeights}. */
export interface LPIPSLoadOptions {
  /**
   * Only names starting with this prefix are used, with the prefix removed (e.g.
   * `'loss.perceptual_loss.'` in a Lightning checkpoint); other names are reported as unexpected.
   */
  prefix?: string;
  /** Every parameter must be loaded after this call (else ERR_MISSING_WEIGHT, nothing changed). Default false. */
  strict?: boolean;
}
const LPIPS_LOAD_KEYS = optionKeys<LPIPSLoadOptions>()(['prefix', 'strict']);

function checkChns(chns: unknown): number[] {
  if (!Array.isArray(chns) || chns.length !== 5)
    typeError('chns', 'an array of 5 positive integers (one width per VGG16 slice)', chns);
  for (const [i, c] of (chns as unknown[]).entries())
    if (typeof c !== 'number' || !Number.isInteger(c) || c < 1) rangeError(`chns[${i}]`, 'a positive integer', c);
  return [...(chns as number[])];
}

/** The reference name of a torchvision `features.N.(weight|bias)` tensor, or null when N is no convolution. */
function torchvisionName(name: string): string | null {
  const m = /^features\.(\d+)\.(weight|bias)$/.exec(name);
  if (!m) return null;
  const n = Number(m[1]);
  const k = VGG16_SLICE_CONVS.findIndex((convs) => convs.includes(n));
  return k < 0 ? null : `net.slice${k + 1}.${n}.${m[2]}`;
}

/** The learned perceptual distance of Zhang et al. on VGG16, with the reference's parameter names. */
export class LPIPS {
  private store_: ParamStore;
  private chns_: number[];

  constructor(opts: LPIPSOptions = {}) {
    checkKeys('LPIPS options', opts, LPIPS_KEYS);
    this.chns_ = checkChns(opts.chns ?? VGG16_CHNS);
    this.store_ = LPIPS.declare(this.chns_);
  }

  /** The slice widths in use. */
  get chns(): readonly number[] {
    return this.chns_;
  }
  /**
   * The parameters by reference name: `net.slice{1..5}.{N}.weight|bias` (N the torchvision
   * features index), `lin{0..4}.model.1.weight` [1, chns[k], 1, 1], `scaling_layer.shift|scale`
   * [1, 3, 1, 1] (preset to LPIPS's constants). Replaced when `loadWeights` changes the widths.
   */
  get store(): ParamStore {
    return this.store_;
  }

  /** The parameter names of a network with these widths, with their shapes, in declaration order. */
  static parameterShapes(chns: readonly number[] = VGG16_CHNS): Record<string, number[]> {
    return LPIPS.declare(checkChns(chns)).shapeMap();
  }

  private static declare(chns: readonly number[]): ParamStore {
    const s = new ParamStore();
    s.declare('scaling_layer.shift', [1, 3, 1, 1], W.zeros);
    s.declare('scaling_layer.scale', [1, 3, 1, 1], W.ones);
    let cin = 3;
    VGG16_SLICE_CONVS.forEach((convs, k) => {
      for (const n of convs) {
        s.declare(`net.slice${k + 1}.${n}.weight`, [chns[k]!, cin, 3, 3], W.normal(0.02));
        s.declare(`net.slice${k + 1}.${n}.bias`, [chns[k]!], W.zeros);
        cin = chns[k]!;
      }
    });
    chns.forEach((c, k) => s.declare(`lin${k}.model.1.weight`, [1, c, 1, 1], W.normal(0.02)));
    s.set('scaling_layer.shift', Tensor.from(Float32Array.from(SCALING_SHIFT), [1, 3, 1, 1]));
    s.set('scaling_layer.scale', Tensor.from(Float32Array.from(SCALING_SCALE), [1, 3, 1, 1]));
    return s;
  }

  /**
   * Loads weights by the reference names, or by torchvision's VGG16 names (`features.N.weight`
   * -> `net.sliceK.N.weight`; `classifier.*` and other names are reported as unexpected), plus
   * the LPIPS lin layers (`lin{k}.model.1.weight`, or the `lins.{k}.model.1.weight` alias). Where
   * a tensor comes under both names, the reference name wins and the alias is reported as
   * unexpected. The widths are derived from the given shapes (the convolutions' output channels,
   * else the lin layers' input channels); when they differ from the current ones the network is
   * rebuilt with the new widths, dropping weights loaded before. On any error (ERR_SHAPE_MISMATCH,
   * or ERR_MISSING_WEIGHT with `strict`) nothing changes. Several calls may fill the network in
   * parts (e.g. the VGG file, then the lin file).
   */
  loadWeights(source: ReadonlyMap<string, Tensor> | Record<string, Tensor>, opts: LPIPSLoadOptions = {}): LoadReport {
    if (source === null || typeof source !== 'object')
      typeError('source', 'a Map or a record of Tensors by name', source);
    checkKeys('LPIPS.loadWeights options', opts, LPIPS_LOAD_KEYS);
    const prefix = opts.prefix ?? '';
    if (typeof prefix !== 'string') typeError('opts.prefix', 'a string', prefix);
    const entries =
      source instanceof Map ? [...(source as ReadonlyMap<string, Tensor>).entries()] : Object.entries(source);
    const unexpected: string[] = [];
    const direct = new Map<string, Tensor>();
    const aliased = new Map<string, [string, Tensor]>();
    for (const [name, t] of entries) {
      if (!(t instanceof Tensor)) typeError(`source['${name}']`, 'a Tensor', t);
      if (!name.startsWith(prefix)) {
        unexpected.push(name);
        continue;
      }
      const local = name.slice(prefix.length);
      const lins = /^lins\.(\d+)\.model\.1\.weight$/.exec(local);
      const mapped = lins ? `lin${lins[1]}.model.1.weight` : torchvisionName(local);
      if (mapped) {
        if (aliased.has(mapped)) unexpected.push(name);
        else aliased.set(mapped, [name, t]);
      } else direct.set(local, t);
    }
    const staged = new Map(direct);
    for (const [mapped, [name, t]] of aliased) {
      if (staged.has(mapped)) unexpected.push(name);
      else staged.set(mapped, t);
    }

    const chns = this.deriveChns(staged);
    const same = chns.every((c, i) => c === this.chns_[i]);
    const target = same ? this.store_ : LPIPS.declare(chns);
    const report = target.load(staged, { strict: opts.strict ?? false });
    if (!same) {
      this.store_ = target;
      this.chns_ = chns;
    }
    return { missing: report.missing, unexpected: [...unexpected, ...report.unexpected.map((n) => prefix + n)] };
  }

  private deriveChns(staged: ReadonlyMap<string, Tensor>): number[] {
    return this.chns_.map((current, k) => {
      for (const n of VGG16_SLICE_CONVS[k]!) {
        const w = staged.get(`net.slice${k + 1}.${n}.weight`);
        if (w && w.ndim === 4 && w.shape[0]! >= 1) return w.shape[0]!;
      }
      const lin = staged.get(`lin${k}.model.1.weight`);
      if (lin && lin.ndim === 4 && lin.shape[1]! >= 1) return lin.shape[1]!;
      return current;
    });
  }

  private checkLoaded(): void {
    const names = this.store_.names();
    const missing = names.filter((n) => !this.store_.has(n));
    if (missing.length)
      throw new MergeVQError(
        `LPIPS: ${missing.length} of ${names.length} weights are not loaded (e.g. ${missing.slice(0, 3).join(', ')}); ` +
          'load the VGG16 features (torchvision or reference names) and the LPIPS lin weights with loadWeights()',
        'ERR_MISSING_WEIGHT',
      );
  }

  private checkImage(name: string, x: unknown): Tensor {
    if (!(x instanceof Tensor)) typeError(name, 'a float32 Tensor [B, 3, H, W]', x);
    const s = x.shape;
    if (x.dtype !== 'float32' || s.length !== 4 || s[1] !== 3)
      throw new RangeError(`${name} must be a float32 Tensor [B, 3, H, W], got ${x.dtype} [${s.join(', ')}]`);
    if (s[2]! < 16 || s[3]! < 16)
      throw new RangeError(`${name} must be at least 16x16 (four 2x2 max pools), got [${s.join(', ')}]`);
    return x;
  }

  /**
   * The five channel-normalized feature maps n(f_k) of images `x` [B, 3, H, W] (in [-1, 1]):
   * [B, chns[k], H_k, W_k] with H_k = floor(H / 2^k).
   * @throws MergeVQError ERR_MISSING_WEIGHT when weights are missing; RangeError on a bad shape.
   */
  *features(x: Tensor): Program<Tensor[]> {
    this.checkImage('x', x);
    this.checkLoaded();
    const s = this.store_;
    const centered = yield* T.sub(x, s.get('scaling_layer.shift'));
    let h = yield* T.div(centered, s.get('scaling_layer.scale'));
    yield* release(centered);
    const out: Tensor[] = [];
    for (let k = 0; k < 5; ++k) {
      if (k > 0) {
        const [p, idx] = yield* pool.maxPool2d(h, { kernel: 2, stride: 2 });
        yield* release(h, idx);
        h = p;
      }
      for (const n of VGG16_SLICE_CONVS[k]!) {
        const c = yield* linalg.conv2d(
          h,
          s.get(`net.slice${k + 1}.${n}.weight`),
          s.get(`net.slice${k + 1}.${n}.bias`),
          { padding: 1 },
        );
        yield* release(h);
        h = yield* nn.leakyRelu(c, { slope: 0 });
        yield* release(c);
      }
      out.push(yield* normalizeChannels(h));
    }
    yield* release(h);
    return out;
  }

  /**
   * The distance [B, 1, 1, 1] between two sets of `features` (of the same shapes):
   * sum_k mean_hw(lin_k((feats0[k] - feats1[k])^2)). The given features are not released.
   */
  *distance(feats0: readonly Tensor[], feats1: readonly Tensor[]): Program<Tensor> {
    this.checkLoaded();
    for (const [name, f] of [
      ['feats0', feats0],
      ['feats1', feats1],
    ] as const) {
      if (!Array.isArray(f) || f.length !== 5 || f.some((t) => !(t instanceof Tensor)))
        typeError(name, 'the 5 feature maps of LPIPS.features()', f);
    }
    let total: Tensor | null = null;
    for (let k = 0; k < 5; ++k) {
      const a = feats0[k]!,
        b = feats1[k]!;
      const sa = a.shape,
        sb = b.shape;
      if (sa.length !== 4 || sa[1] !== this.chns_[k] || sa.some((d, i) => d !== sb[i]))
        throw new RangeError(
          `distance: feature ${k} must be [B, ${this.chns_[k]}, h, w] in both sets, got [${sa.join(', ')}] and [${sb.join(', ')}]`,
        );
      const d = yield* T.sub(a, b);
      const d2 = yield* T.mul(d, d);
      yield* release(d);
      const lin = yield* linalg.conv2d(d2, this.store_.get(`lin${k}.model.1.weight`), null);
      yield* release(d2);
      const m = yield* T.mean(lin, { dims: [2, 3], keepdim: true });
      yield* release(lin);
      if (total) {
        const next: Tensor = yield* T.add(total, m);
        yield* release(total, m);
        total = next;
      } else total = m;
    }
    return total!;
  }

  /**
   * LPIPS(in0, in1) per sample: [B, 1, 1, 1]. Both inputs are float32 [B, 3, H, W] in [-1, 1]
   * of one shape (H, W >= 16). Recordable by a Tape: gradients reach in0 and in1.
   * @throws MergeVQError ERR_MISSING_WEIGHT before any work when weights are missing.
   */
  *forward(in0: Tensor, in1: Tensor): Program<Tensor> {
    this.checkImage('in0', in0);
    this.checkImage('in1', in1);
    if (in0.shape.some((d, i) => d !== in1.shape[i]))
      throw new RangeError(
        `in0 and in1 must have one shape, got [${in0.shape.join(', ')}] and [${in1.shape.join(', ')}]`,
      );
    this.checkLoaded();
    const f0 = yield* this.features(in0);
    const f1 = yield* this.features(in1);
    const value = yield* this.distance(f0, f1);
    yield* release(...f0, ...f1);
    return value;
  }
}

/** f / (sqrt(sum_c f^2) + 1e-10) over dim 1 of [B, C, h, w]. */
function* normalizeChannels(f: Tensor): Program<Tensor> {
  const C = f.shape[1]!;
  const sq = yield* T.mul(f, f);
  const m = yield* T.mean(sq, { dims: [1], keepdim: true });
  yield* release(sq);
  const ss = yield* T.scale(m, C, NORM_TINY);
  yield* release(m);
  const norm = yield* T.sqrt(ss);
  yield* release(ss);
  const den = yield* T.scale(norm, 1, NORM_EPS);
  yield* release(norm);
  const n = yield* T.div(f, den);
  yield* release(den);
  return n;
}
