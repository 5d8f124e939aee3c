/**
 * The PatchGAN discriminator of the tokenizer's GAN objective (the reference's
 * `NLayerDiscriminator` with BatchNorm, as in pix2pix), with the reference's state_dict names:
 *
 * ```
 * main.0   Conv4x4 s2 p1 (inputNc -> ndf, bias)       main.1  LeakyReLU(0.2)
 * for n in 1 .. nLayers-1 (c_n = ndf * min(2^n, 8)):
 *   Conv4x4 s2 p1 (c_{n-1} -> c_n, no bias), BatchNorm2d(c_n), LeakyReLU(0.2)
 * Conv4x4 s1 p1 (c_{nLayers-1} -> c_{nLayers}, no bias), BatchNorm2d, LeakyReLU(0.2)
 * Conv4x4 s1 p1 (-> 1, bias)                            (the patch logits [B, 1, h, w])
 * ```
 *
 * Sequential indices count every layer, so for nLayers = 3 the convolutions are `main.{0,2,5,8,11}`
 * and the BatchNorms `main.{3,6,9}` (`weight`, `bias`, and the buffers `running_mean`,
 * `running_var`, `num_batches_tracked`).
 *
 * BatchNorm follows torch: in training mode a call normalizes with its own batch statistics
 * (biased variance) and moves the running statistics by momentum 0.1 (running_var with the
 * unbiased batch variance; num_batches_tracked += 1), so real and fake images given in separate
 * calls are normalized separately, as the reference trains. Eval mode uses the running statistics.
 * The forward pass is an op program; recorded by a `Tape` it yields gradients for the parameters
 * (by handle, `store.get(name)`) and for the input.
 */
import { MergeVQError, checkInt, rangeError, typeError, checkKeys, optionKeys } from '../errors.js';
import { runSync, type Program } from '../graph.js';
import { conv2d } from '../ops/linalg.js';
import { batchNorm, leakyRelu } from '../ops/nn.js';
import { randomNormal } from '../ops/tensor.js';
import { LOAD_KEYS, ParamStore, W, type LoadOptions, type LoadReport } from '../nn/params.js';
import { Tensor } from '../tensor.js';

/** Constructor options, the reference's `input_nc`, `ndf`, `n_layers`, `use_actnorm`. */
export interface NLayerDiscriminatorOptions {
  /** Input image channels (default 3). */
  inputNc?: number;
  /** Filters of the first convolution (default 64). */
  ndf?: number;
  /** Number of down-sampling stages, >= 1 (default 3). */
  nLayers?: number;
  /** ActNorm instead of BatchNorm: only `false` (the reference's tokenizer setting) is supported. */
  useActnorm?: false;
}
const DISCRIMINATOR_KEYS = optionKeys<NLayerDiscriminatorOptions>()(['inputNc', 'ndf', 'nLayers', 'useActnorm']);

/** Mode of one forward call. */
export interface DiscriminatorForwardOptions {
  /** Batch statistics and running-stat updates (true) or the running statistics (false). */
  training: boolean;
}
const DISCRIMINATOR_FORWARD_KEYS = optionKeys<DiscriminatorForwardOptions>()(['training']);

/** One convolution of the stack, optionally followed by BatchNorm and LeakyReLU. */
interface Stage {
  conv: string;
  inChannels: number;
  outChannels: number;
  stride: number;
  bias: boolean;
  /** The BatchNorm's name prefix (`main.3`), or null. */
  bn: string | null;
  act: boolean;
}

/** LeakyReLU slope, BatchNorm momentum and eps of the reference. */
const SLOPE = 0.2;
const BN_MOMENTUM = 0.1;
const BN_EPS = 1e-5;
const KERNEL = 4;
const PAD = 1;

/** A tiny deterministic PRNG (mulberry32) for the uniform default init of the conv biases. */
function uniformDraws(n: number, seed: number, bound: number): Float32Array {
  let s = (seed ^ 0x5bd1e995) >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; ++i) {
    let t = (s = (s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    const u = ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    out[i] = (2 * u - 1) * bound;
  }
  return out;
}

/** PatchGAN discriminator (see the module comment). */
export class NLayerDiscriminator {
  /** The parameters (conv weights/biases, BatchNorm weight/bias) by state_dict name. */
  readonly store = new ParamStore();
  readonly inputNc: number;
  readonly ndf: number;
  readonly nLayers: number;
  private readonly stages: Stage[] = [];
  /** running_mean / running_var by full name (`main.3.running_mean`). */
  private readonly stats = new Map<string, Tensor>();
  /** num_batches_tracked by BatchNorm prefix (`main.3`). */
  private readonly tracked = new Map<string, number>();

  constructor(opts: NLayerDiscriminatorOptions = {}) {
    if (opts === null || typeof opts !== 'object') typeError('opts', 'an options object', opts);
    checkKeys('NLayerDiscriminator options', opts, DISCRIMINATOR_KEYS);
    this.inputNc = checkInt('inputNc', opts.inputNc ?? 3, 1);
    this.ndf = checkInt('ndf', opts.ndf ?? 64, 1);
    this.nLayers = checkInt('nLayers', opts.nLayers ?? 3, 1, 64);
    if ((opts.useActnorm ?? false) !== false)
      rangeError('useActnorm', 'false (ActNorm is not implemented; the tokenizer uses BatchNorm)', opts.useActnorm);
    let idx = 0;
    const add = (inC: number, outC: number, stride: number, bias: boolean, norm: boolean, act: boolean) => {
      const conv = `main.${idx++}`;
      const bn = norm ? `main.${idx++}` : null;
      if (act) idx++;
      this.stages.push({ conv, inChannels: inC, outChannels: outC, stride, bias, bn, act });
    };
    const width = (n: number) => this.ndf * Math.min(2 ** n, 8);
    add(this.inputNc, this.ndf, 2, true, false, true);
    for (let n = 1; n < this.nLayers; ++n) add(width(n - 1), width(n), 2, false, true, true);
    add(width(this.nLayers - 1), width(this.nLayers), 1, false, true, true);
    add(width(this.nLayers), 1, 1, true, false, false);
    for (const s of this.stages) {
      this.store.declare(`${s.conv}.weight`, [s.outChannels, s.inChannels, KERNEL, KERNEL], W.normal(0.02));
      if (s.bias) this.store.declare(`${s.conv}.bias`, [s.outChannels], W.zeros);
      if (s.bn) {
        this.store.declare(`${s.bn}.weight`, [s.outChannels], W.ones);
        this.store.declare(`${s.bn}.bias`, [s.outChannels], W.zeros);
      }
    }
    this.resetStats();
  }

  /** Parameter names in the reference's state_dict order. */
  paramNames(): string[] {
    return this.store.names();
  }
  /** BatchNorm buffer names (`main.3.running_mean`, `main.3.running_var`, `main.3.num_batches_tracked`, ...). */
  bufferNames(): string[] {
    const out: string[] = [];
    for (const s of this.stages)
      if (s.bn) out.push(`${s.bn}.running_mean`, `${s.bn}.running_var`, `${s.bn}.num_batches_tracked`);
    return out;
  }
  /** The BatchNorm prefixes (`main.3`, ...). */
  batchNormNames(): string[] {
    return this.stages.filter((s) => s.bn).map((s) => s.bn!);
  }

  /** Running statistics back to a fresh torch BatchNorm's: mean 0, var 1, 0 batches tracked. */
  resetStats(): void {
    for (const s of this.stages) {
      if (!s.bn) continue;
      this.stats.set(`${s.bn}.running_mean`, Tensor.zeros([s.outChannels]));
      this.stats.set(`${s.bn}.running_var`, Tensor.from(new Float32Array(s.outChannels).fill(1), [s.outChannels]));
      this.tracked.set(s.bn, 0);
    }
  }

  /**
   * The reference's `weights_init` on a freshly built module, deterministically from `seed`:
   * conv weights N(0, 0.02), BatchNorm weights N(1, 0.02) and biases 0; the two conv biases keep
   * torch's default Conv2d init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)). Running stats are reset.
   */
  initRandom(seed = 0): void {
    checkInt('seed', seed, 0, 2 ** 40);
    let k = 0;
    const next = () => (seed * 1000003 + 7919 * ++k) % 2 ** 52;
    for (const s of this.stages) {
      this.store.set(
        `${s.conv}.weight`,
        runSync(randomNormal([s.outChannels, s.inChannels, KERNEL, KERNEL], { std: 0.02, seed: next() })),
      );
      if (s.bias) {
        const bound = 1 / Math.sqrt(s.inChannels * KERNEL * KERNEL);
        this.store.set(`${s.conv}.bias`, Tensor.from(uniformDraws(s.outChannels, next(), bound), [s.outChannels]));
      }
      if (s.bn) {
        this.store.set(`${s.bn}.weight`, runSync(randomNormal([s.outChannels], { mean: 1, std: 0.02, seed: next() })));
        this.store.set(`${s.bn}.bias`, Tensor.zeros([s.outChannels]));
      }
    }
    this.resetStats();
  }

  /**
   * Patch logits `[B, 1, h, w]` of images `x [B, inputNc, H, W]` (float32). In training mode each
   * BatchNorm uses this call's batch statistics and its running statistics are replaced by the
   * updated ones (and num_batches_tracked incremented) when the call's ops have run.
   */
  *forward(x: Tensor, opts: DiscriminatorForwardOptions): Program<Tensor> {
    if (!(x instanceof Tensor)) typeError('x', 'a Tensor', x);
    if (x.dtype !== 'float32' || x.ndim !== 4 || x.shape[1] !== this.inputNc)
      rangeError('x', `a float32 [B, ${this.inputNc}, H, W] tensor`, `${x.dtype} [${x.shape.join(', ')}]`);
    if (opts === null || typeof opts !== 'object' || typeof opts.training !== 'boolean')
      typeError('opts.training', 'a boolean', opts?.training);
    checkKeys('NLayerDiscriminator.forward options', opts, DISCRIMINATOR_FORWARD_KEYS);
    const training = opts.training;
    let h = x;
    for (const s of this.stages) {
      const w = this.store.get(`${s.conv}.weight`);
      const b = s.bias ? this.store.get(`${s.conv}.bias`) : null;
      h = yield* conv2d(h, w, b, { stride: s.stride, padding: PAD });
      if (s.bn) {
        const rm = this.stats.get(`${s.bn}.running_mean`)!;
        const rv = this.stats.get(`${s.bn}.running_var`)!;
        const [y, , , nrm, nrv] = yield* batchNorm(
          h,
          this.store.get(`${s.bn}.weight`),
          this.store.get(`${s.bn}.bias`),
          rm,
          rv,
          {
            training,
            momentum: BN_MOMENTUM,
            eps: BN_EPS,
          },
        );
        if (training) {
          this.stats.set(`${s.bn}.running_mean`, nrm!);
          this.stats.set(`${s.bn}.running_var`, nrv!);
          this.tracked.set(s.bn, this.tracked.get(s.bn)! + 1);
        }
        h = y;
      }
      if (s.act) h = yield* leakyRelu(h, { slope: SLOPE });
    }
    return h;
  }

  /** The running statistics of one BatchNorm (`main.3`). */
  runningStats(bn: string): { runningMean: Tensor; runningVar: Tensor; numBatchesTracked: number } {
    if (!this.tracked.has(bn)) rangeError('bn', `one of ${this.batchNormNames().join(', ')}`, bn);
    return {
      runningMean: this.stats.get(`${bn}.running_mean`)!,
      runningVar: this.stats.get(`${bn}.running_var`)!,
      numBatchesTracked: this.tracked.get(bn)!,
    };
  }

  /**
   * Parameters and buffers by state_dict name (num_batches_tracked as an int64 scalar), the
   * layout of the reference's `discriminator.*` keys.
   */
  stateDict(): Map<string, Tensor> {
    const out = this.store.stateDict();
    for (const s of this.stages) {
      if (!s.bn) continue;
      out.set(`${s.bn}.running_mean`, this.stats.get(`${s.bn}.running_mean`)!);
      out.set(`${s.bn}.running_var`, this.stats.get(`${s.bn}.running_var`)!);
      out.set(`${s.bn}.num_batches_tracked`, Tensor.from(new BigInt64Array([BigInt(this.tracked.get(s.bn)!)]), []));
    }
    return out;
  }

  /**
   * Loads parameters and buffers by state_dict name (e.g. a checkpoint's `discriminator.*` keys
   * with the prefix removed). Shapes must match (ERR_SHAPE_MISMATCH, nothing changed); with
   * `strict`, every parameter and buffer must be given (ERR_MISSING_WEIGHT). Buffers not given
   * keep their values.
   */
  load(source: ReadonlyMap<string, Tensor> | Record<string, Tensor>, opts: LoadOptions = {}): LoadReport {
    checkKeys('NLayerDiscriminator.load options', opts, LOAD_KEYS);
    const entries = source instanceof Map ? [...source.entries()] : Object.entries(source);
    const params = new Map<string, Tensor>();
    const stats = new Map<string, Tensor>();
    const tracked = new Map<string, number>();
    const bufferSet = new Set(this.bufferNames());
    for (const [name, t] of entries) {
      if (!(t instanceof Tensor)) typeError(`source['${name}']`, 'a Tensor', t);
      if (!bufferSet.has(name)) {
        params.set(name, t);
        continue;
      }
      const prefix = name.slice(0, name.lastIndexOf('.'));
      if (name.endsWith('.num_batches_tracked')) {
        if (t.numel !== 1)
          throw new MergeVQError(
            `buffer '${name}' has shape [${t.shape.join(', ')}], the model expects []`,
            'ERR_SHAPE_MISMATCH',
          );
        const v = Number(t.toArray()[0]);
        if (!Number.isInteger(v) || v < 0) rangeError(name, 'a non-negative integer', v);
        tracked.set(prefix, v);
      } else {
        const c = this.stats.get(name)!.shape[0]!;
        if (t.ndim !== 1 || t.shape[0] !== c)
          throw new MergeVQError(
            `buffer '${name}' has shape [${t.shape.join(', ')}], the model expects [${c}]`,
            'ERR_SHAPE_MISMATCH',
          );
        stats.set(name, t.dtype === 'float32' ? t : t.cast('float32'));
      }
    }
    const missingBuffers = this.bufferNames().filter((n) =>
      n.endsWith('.num_batches_tracked') ? !tracked.has(n.slice(0, n.lastIndexOf('.'))) : !stats.has(n),
    );
    if (opts.strict && missingBuffers.length)
      throw new MergeVQError(
        `missing ${missingBuffers.length} discriminator buffers, e.g. ${missingBuffers.slice(0, 3).join(', ')}`,
        'ERR_MISSING_WEIGHT',
      );
    // Parameters are validated (shapes, strict) before any buffer is replaced.
    const report = this.store.load(params, opts);
    for (const [n, t] of stats) this.stats.set(n, t);
    for (const [n, v] of tracked) this.tracked.set(n, v);
    return { missing: [...report.missing, ...missingBuffers], unexpected: report.unexpected };
  }
}
