/**
 * MergeVQTokenizer: encoder (CNN + ToMe) -> LFQ -> unmerge (true source or learned recovery) ->
 * decoder. Every method has a Promise form (each native op runs as its own short job off the
 * main thread) and a synchronous `...Sync` form.
 */
import { MergeVQError, checkInt, checkKeys, optionKeys, typeError } from '../errors.js';
import { runAsync, runSync, type Program } from '../graph.js';
import { lfqIndicesToCodes, lfqQuantize } from '../ops/lfq.js';
import { unmerge } from '../ops/merge.js';
import { permute } from '../ops/tensor.js';
import { Tensor } from '../tensor.js';
import { loadImages, type ImageInput } from '../io/image.js';
import { LOAD_KEYS, ParamStore, type LoadOptions, type LoadReport } from '../nn/params.js';
import { reshape } from '../nn/layers.js';
import { loadConfigFile, normalizeConfig, type TokenizerConfig } from './config.js';
import { MergeVQDecoder } from './decoder.js';
import { MergeVQEncoder } from './encoder.js';
import { SourceRecovery } from './recovery.js';
import { keepCandidatesFor, mergeScheduleFor, type KeepCandidates } from './keep.js';

/** The result of encoding a batch. */
export interface EncodeResult {
  /** LFQ indices [B, K] int64 (bit j = channel j, least significant first), in ToMe token order. */
  indices: Tensor;
  /** LFQ codes (+1/-1) [B, d, sqrt K, sqrt K], in ToMe token order. */
  codes: Tensor;
  /** Compact source [B, L] int64: full grid position (raster order) -> kept token index. */
  source: Tensor;
  /** Kept token count K. */
  keep: number;
  /** The cls token features after the ToMe blocks [B, C]. */
  cls: Tensor;
  /** dist_head(cls) [B, num_classes] (null when the config has no dist_head). */
  clsHead: Tensor | null;
  /** Pre-quantization encoder output z [B, d, sqrt K, sqrt K]. */
  z: Tensor;
  /** Token sizes after merging [B, 1 + K] (cls first). */
  size: Tensor;
  /** CNN features before the transformer [B, C, h, w]. */
  encCnn: Tensor;
}

export interface DecodeInput {
  /** LFQ indices [B, K] (int64 or int32). Give this or `codes`. */
  indices?: Tensor;
  /** LFQ codes [B, d, sqrt K, sqrt K] (or any real-valued z of that shape). */
  codes?: Tensor;
  /** The compact source [B, L] from `encode`, or 'learned' to use the learned SourceRecovery. */
  source: Tensor | 'learned';
}
const DECODE_INPUT_KEYS = optionKeys<DecodeInput>()(['indices', 'codes', 'source']);

/** Options of {@link MergeVQTokenizer.encode}. */
export interface EncodeOptions {
  /** Tokens kept (a square; default the config's keep count). */
  keep?: number;
}
const ENCODE_KEYS = optionKeys<EncodeOptions>()(['keep']);

/** Options of {@link MergeVQTokenizer.reconstruct}. */
export interface ReconstructOptions extends EncodeOptions {
  /** Unmerge with the encoder's own source ('given', default) or the learned recovery. */
  source?: 'given' | 'learned';
}
const RECONSTRUCT_KEYS = optionKeys<ReconstructOptions>()([...ENCODE_KEYS, 'source']);

export interface DecodeResult {
  /** Decoded images [B, out_ch, R, R] in [-1, 1] (not clamped). */
  images: Tensor;
  /** The restored full-grid codes [B, d, h, w] fed to the decoder. */
  full: Tensor;
  /** With source 'learned': the recovered map [B, L] and S_hat^T [B, K, L]. */
  recovered?: { map: Tensor; sourceT: Tensor; tokens: Tensor };
}

/** Unmerges [B, d, s, s] codes to the full grid with a compact map [B, L]. */
export function* unmergeGrid(codes: Tensor, map: Tensor): Program<Tensor> {
  const [B, d] = codes.shape as [number, number];
  const K = codes.numel / (B * d);
  const L = map.shape[1]!;
  const h = Math.round(Math.sqrt(L));
  const kept = yield* permute(yield* reshape(codes, [B, d, K]), [0, 2, 1]); // [B, K, d]
  const full = yield* unmerge(kept, map); // [B, L, d]
  return yield* reshape(yield* permute(full, [0, 2, 1]), [B, d, h, h]); // [B, d, L] -> [B, d, h, h]
}

/** Drops the cls entry of an encoder source map [B, 1+L] (cls -> 0) and shifts to kept indices. */
export function keptSourceMap(mapWithCls: Tensor): Tensor {
  const [B, L1] = mapWithCls.shape as [number, number];
  const src = mapWithCls.toArray<'int64'>();
  const out = new BigInt64Array(B * (L1 - 1));
  for (let b = 0; b < B; ++b) for (let l = 1; l < L1; ++l) out[b * (L1 - 1) + l - 1] = src[b * L1 + l]! - 1n;
  return Tensor.from(out, [B, L1 - 1]);
}

export class MergeVQTokenizer {
  readonly store = new ParamStore();
  readonly encoder: MergeVQEncoder;
  readonly decoder: MergeVQDecoder;
  readonly recovery: SourceRecovery | null;
  /** Keep-count candidates of the config (and their probabilities for training). */
  readonly candidates: KeepCandidates;
  /** Full token count L. */
  readonly fullNum: number;
  /** The default keep count K (L - merge_num). */
  readonly defaultKeep: number;

  constructor(readonly config: TokenizerConfig) {
    const dd = config.ddconfig;
    this.encoder = new MergeVQEncoder(this.store, dd);
    this.decoder = new MergeVQDecoder(this.store, dd);
    this.fullNum = this.encoder.geo.fullNum;
    const k2l = config.k2lconfig;
    this.recovery = k2l?.learn_source ? new SourceRecovery(this.store, k2l, this.fullNum, config.embed_dim) : null;
    const mergeNum = dd.merge_num ?? 0;
    this.defaultKeep = k2l?.keep_num ?? this.fullNum - mergeNum;
    this.candidates = keepCandidatesFor(dd.num_att_blocks, this.fullNum, mergeNum, dd.cand_distribution ?? null);
  }

  /** Builds a tokenizer from a reference YAML file path, a YAML text's parsed config, or a config object. */
  static fromConfig(config: string | TokenizerConfig | Record<string, unknown>): MergeVQTokenizer {
    if (typeof config === 'string') return new MergeVQTokenizer(loadConfigFile(config));
    return new MergeVQTokenizer(normalizeConfig(config));
  }

  /** Loads weights by reference name (missing/unexpected reported, shapes checked). */
  loadWeights(tensors: ReadonlyMap<string, Tensor> | Record<string, Tensor>, opts: LoadOptions = {}): LoadReport {
    checkKeys('MergeVQTokenizer.loadWeights options', opts, LOAD_KEYS);
    return this.store.load(tensors, opts);
  }

  /** Frees the weights now; later use is a MergeVQError ERR_DISPOSED until weights are loaded again. */
  dispose(): void {
    this.store.dispose();
  }

  /** The per-block merge counts for keep count K (sum = L - K). */
  mergeSchedule(keep: number): number[] {
    return mergeScheduleFor(this.encoder.blocks.length, this.fullNum, keep);
  }

  private checkImages(images: Tensor): void {
    if (!(images instanceof Tensor))
      typeError(
        'images',
        'a float32 Tensor [B, 3, R, R] (the async encode() also takes image files or buffers)',
        images,
      );
    const dd = this.config.ddconfig;
    const s = images.shape;
    if (
      images.dtype !== 'float32' ||
      s.length !== 4 ||
      s[1] !== dd.in_channels ||
      s[2] !== dd.resolution ||
      s[3] !== dd.resolution
    )
      throw new RangeError(
        `images must be float32 [B, ${dd.in_channels}, ${dd.resolution}, ${dd.resolution}], got ${images.dtype} [${s.join(', ')}]`,
      );
  }

  private checkKeep(keep: number): number {
    checkInt('keep', keep, 1, this.fullNum);
    const r = Math.round(Math.sqrt(keep));
    if (r * r !== keep) throw new RangeError(`keep must be a square number (a kept grid), got ${keep}`);
    return keep;
  }

  /** Program form of `encode`. */
  *encodeProgram(images: Tensor, opts: EncodeOptions = {}): Program<EncodeResult> {
    checkKeys('encode options', opts, ENCODE_KEYS);
    this.checkImages(images);
    const keep = this.checkKeep(opts.keep ?? this.defaultKeep);
    const enc = yield* this.encoder.forward(images, this.mergeSchedule(keep));
    if (enc.keep !== keep)
      throw new MergeVQError(`the merge schedule kept ${enc.keep} tokens instead of ${keep}`, 'ERR_SCHEDULE');
    // codes [B, d, s, s] (+1/-1), idx [B, s, s] int64
    const { codes, indices: idx } = yield* lfqQuantize(enc.z, { dim: 1 });
    const B = images.shape[0]!;
    return {
      indices: yield* reshape(idx, [B, keep]),
      codes,
      source: keptSourceMap(enc.sourceMap),
      keep,
      cls: enc.cls,
      clsHead: enc.clsHead,
      z: enc.z,
      size: enc.size,
      encCnn: enc.encCnn,
    };
  }

  /** Program form of `decode`. */
  *decodeProgram(input: DecodeInput): Program<DecodeResult> {
    if (typeof input !== 'object' || input === null) typeError('input', '{ indices | codes, source }', input);
    checkKeys('decode input', input, DECODE_INPUT_KEYS);
    let codes = input.codes;
    const d = this.config.embed_dim;
    if (!codes) {
      const idx = input.indices;
      if (!(idx instanceof Tensor)) typeError('input.indices', 'an int64 Tensor [B, K] (or give input.codes)', idx);
      const [B, K] = idx.shape as [number, number];
      const s = Math.round(Math.sqrt(K));
      if (idx.shape.length !== 2 || s * s !== K)
        throw new RangeError(`input.indices must be [B, K] with K square, got [${idx.shape.join(', ')}]`);
      const c = yield* lfqIndicesToCodes(idx, { bits: d, dim: 1 }); // [B, d, K]
      codes = yield* reshape(c, [B, d, s, s]);
    } else if (!(codes instanceof Tensor)) {
      typeError('input.codes', `a float32 Tensor [B, ${d}, s, s]`, codes);
    }
    const B = codes.shape[0]!;
    const K = codes.numel / (B * d);
    if (input.source === 'learned') {
      if (!this.recovery)
        throw new MergeVQError("source 'learned' needs a config with k2lconfig.learn_source: true", 'ERR_NO_RECOVERY');
      const kept = yield* permute(yield* reshape(codes, [B, d, K]), [0, 2, 1]); // [B, K, d]
      const rec = yield* this.recovery.forward(kept);
      const h = Math.round(Math.sqrt(this.fullNum));
      // rec.tokens [B, L, d] -> [B, d, L] -> [B, d, h, h]
      const full = yield* reshape(yield* permute(rec.tokens, [0, 2, 1]), [B, d, h, h]);
      const images = yield* this.decoder.forward(full);
      return { images, full, recovered: rec };
    }
    const src = input.source;
    if (!(src instanceof Tensor)) typeError('input.source', "a Tensor [B, L] from encode() or 'learned'", src);
    if (src.shape.length !== 2 || src.shape[0] !== B || src.shape[1] !== this.fullNum)
      throw new RangeError(`input.source must be [${B}, ${this.fullNum}], got [${src.shape.join(', ')}]`);
    const full = yield* unmergeGrid(codes, src);
    const images = yield* this.decoder.forward(full);
    return { images, full };
  }

  /**
   * Turns image files or encoded buffers (PNG/JPEG/WebP) into a [B, 3, R, R] tensor at the
   * model's resolution (shorter side resized, center crop, [-1, 1]); tensors pass through.
   */
  async toImageTensor(images: Tensor | ImageInput | readonly ImageInput[]): Promise<Tensor> {
    if (images instanceof Tensor) return images;
    const list = Array.isArray(images) ? (images as readonly ImageInput[]) : [images as ImageInput];
    return loadImages(list, this.config.ddconfig.resolution);
  }

  /**
   * Encodes images (a [B, 3, R, R] tensor in [-1, 1], or image files / buffers) to indices, codes
   * and the source map.
   */
  async encode(images: Tensor | ImageInput | readonly ImageInput[], opts: EncodeOptions = {}): Promise<EncodeResult> {
    return runAsync(this.encodeProgram(await this.toImageTensor(images), opts));
  }
  encodeSync(images: Tensor, opts: EncodeOptions = {}): EncodeResult {
    return runSync(this.encodeProgram(images, opts));
  }
  /** Decodes indices or codes, restoring the full grid with the given source or the learned recovery. */
  decode(input: DecodeInput): Promise<DecodeResult> {
    return runAsync(this.decodeProgram(input));
  }
  decodeSync(input: DecodeInput): DecodeResult {
    return runSync(this.decodeProgram(input));
  }
  /** encode then decode with the encoder's own source (or 'learned'). */
  async reconstruct(
    images: Tensor | ImageInput | readonly ImageInput[],
    opts: ReconstructOptions = {},
  ): Promise<DecodeResult & { encoded: EncodeResult }> {
    checkKeys('reconstruct options', opts, RECONSTRUCT_KEYS);
    const encoded = await this.encode(images, opts.keep === undefined ? {} : { keep: opts.keep });
    const dec = await this.decode({
      codes: encoded.codes,
      source: opts.source === 'learned' ? 'learned' : encoded.source,
    });
    return { ...dec, encoded };
  }
  reconstructSync(images: Tensor, opts: ReconstructOptions = {}): DecodeResult & { encoded: EncodeResult } {
    checkKeys('reconstruct options', opts, RECONSTRUCT_KEYS);
    const encoded = this.encodeSync(images, opts.keep === undefined ? {} : { keep: opts.keep });
    const dec = this.decodeSync({
      codes: encoded.codes,
      source: opts.source === 'learned' ? 'learned' : encoded.source,
    });
    return { ...dec, encoded };
  }

  /** The dense source [B, 1+K, 1+L] as the reference keeps it, from a compact map [B, L]. */
  static denseSource(source: Tensor, keep: number): Tensor {
    const [B, L] = source.shape as [number, number];
    const m = source.toArray<'int64'>();
    const out = new Float32Array(B * (keep + 1) * (L + 1));
    for (let b = 0; b < B; ++b) {
      out[b * (keep + 1) * (L + 1)] = 1;
      for (let l = 0; l < L; ++l) out[b * (keep + 1) * (L + 1) + (Number(m[b * L + l]!) + 1) * (L + 1) + l + 1] = 1;
    }
    return Tensor.from(out, [B, keep + 1, L + 1]);
  }
}
