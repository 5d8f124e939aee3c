/**
 * Class-conditional image generation end to end: the AR generator samples a full grid of LFQ
 * sub-token pairs (MergeAR: conditioned on a keep count, with its compacted KV cache), the pairs
 * become LFQ indices and the tokenizer's decoder turns them into images.
 */
import { checkInt, checkKeys, optionKeys, typeError } from '../errors.js';
import { runAsync, runSync, type Program } from '../graph.js';
import { lfqUnfactorize } from '../ops/lfq.js';
import { Tensor } from '../tensor.js';
import type { MergeVQTokenizer } from '../tokenizer/tokenizer.js';
import type { MergeVQGPT } from './gpt.js';
import { MergeARGPT, sampleMergeARProgram } from './mergear.js';
import { SAMPLE_OPTION_KEYS, sampleProgram, type SampleOptions } from './sample.js';

/** Options of {@link generateImages}: the sampler's, plus what to generate. */
export interface GenerateImagesOptions extends Omit<SampleOptions, 'steps'> {
  /** One class id per image (0 .. class_num - 1; class_num itself is the unconditional null class). */
  classes: readonly number[];
  /** MergeAR's keep-count instruction, one of the tokenizer's candidates (default its default keep). */
  keep?: number;
  /** false: decode with a full causal cache instead of MergeAR's compacted one (default true). */
  mergear?: boolean;
}
const GENERATE_IMAGES_KEYS = optionKeys<GenerateImagesOptions>()([
  'classes',
  'keep',
  'mergear',
  ...SAMPLE_OPTION_KEYS.filter((k): k is Exclude<typeof k, 'steps'> => k !== 'steps'),
]);

/** KV-cache size of a MergeAR generation against a full causal cache. */
export interface KVCacheUse {
  /** Live cache rows after the last token (the largest over the batch rows). */
  rows: number;
  /** Rows a full causal cache holds at the same point (prefix + generated tokens). */
  fullRows: number;
  /** rows / fullRows. */
  ratio: number;
}

/** What {@link generateImages} returns. */
export interface GeneratedImages {
  /** Decoded images [B, out_ch, R, R] in [-1, 1] (not clamped). */
  images: Tensor;
  /** The generated LFQ indices [B, L] (int64, full grid, row-major). */
  indices: Tensor;
  /** The keep count the generator was conditioned on (null for a plain GPT). */
  keep: number | null;
  /** KV-cache use (null for a plain GPT or with mergear false). */
  kv: KVCacheUse | null;
}

function checkModels(tok: MergeVQTokenizer, gen: MergeVQGPT): void {
  if (!tok || typeof tok !== 'object' || typeof tok.decodeProgram !== 'function')
    typeError('tokenizer', 'a MergeVQTokenizer', tok);
  if (!gen || typeof gen !== 'object' || typeof gen.subTokenStep !== 'function')
    typeError('generator', 'a MergeVQGPT or MergeARGPT', gen);
  const c = gen.config;
  if (c.block_size !== tok.fullNum)
    throw new RangeError(
      `generator block_size ${c.block_size} must equal the tokenizer's full token count ${tok.fullNum}`,
    );
  const bits = c.factorized_bits[0]! + c.factorized_bits[1]!;
  if (bits !== tok.config.embed_dim)
    throw new RangeError(
      `generator factorized_bits ${c.factorized_bits.join('+')} must sum to the tokenizer's embed_dim ${tok.config.embed_dim}`,
    );
}

/** Program form of {@link generateImages}. */
export function* generateImagesProgram(
  tok: MergeVQTokenizer,
  gen: MergeVQGPT,
  opts: GenerateImagesOptions,
): Program<GeneratedImages> {
  checkModels(tok, gen);
  if (!opts || typeof opts !== 'object') typeError('opts', '{ classes, ... }', opts);
  checkKeys('generateImages options', opts, GENERATE_IMAGES_KEYS);
  if (!Array.isArray(opts.classes) || opts.classes.length === 0)
    typeError('opts.classes', 'a non-empty array of class ids', opts.classes);
  const nClass = gen.config.class_num;
  opts.classes.forEach((c, i) => checkInt(`opts.classes[${i}]`, c, 0, nClass));
  const B = opts.classes.length;
  const labels = Tensor.from(
    BigInt64Array.from(opts.classes, (c) => BigInt(c)),
    [B],
  );
  const L = tok.fullNum;
  const { classes: _c, keep: _k, mergear: _m, ...rest } = opts;
  const sampleOpts: SampleOptions = { ...rest, steps: L };
  let r: { pre: Tensor; post: Tensor };
  let keep: number | null = null;
  let kv: KVCacheUse | null = null;
  if (gen instanceof MergeARGPT) {
    keep = opts.keep ?? tok.defaultKeep;
    const ki = tok.candidates.keep.indexOf(keep);
    if (ki < 0)
      throw new RangeError(
        `opts.keep must be one of the tokenizer's keep candidates ${tok.candidates.keep.join(', ')}, got ${keep}`,
      );
    if (ki >= gen.numCandidates)
      throw new RangeError(
        `opts.keep: the generator knows ${gen.numCandidates} keep counts, ${keep} is candidate ${ki}`,
      );
    const compact = opts.mergear !== false;
    const keepIndex = Tensor.from(new BigInt64Array(B).fill(BigInt(ki)), [B]);
    const s = yield* sampleMergeARProgram(gen, labels, keepIndex, {
      ...sampleOpts,
      mode: compact ? 'compact' : 'full',
    });
    r = s;
    if (compact) {
      const last = s.stats[s.stats.length - 1]!;
      const fullRows = last.pos + 1;
      kv = { rows: last.liveAfter, fullRows, ratio: last.liveAfter / fullRows };
    }
  } else {
    if (opts.keep !== undefined)
      throw new RangeError('opts.keep needs a MergeAR generator (the plain GPT has no keep-count instruction)');
    r = yield* sampleProgram(gen, labels, sampleOpts);
  }
  const bits = gen.config.factorized_bits;
  const indices = yield* lfqUnfactorize(r.pre, r.post, [bits[0]!, bits[1]!]);
  const ident = new BigInt64Array(B * L);
  for (let b = 0; b < B; ++b) for (let l = 0; l < L; ++l) ident[b * L + l] = BigInt(l);
  const dec = yield* tok.decodeProgram({ indices, source: Tensor.from(ident, [B, L]) });
  return { images: dec.images, indices, keep, kv };
}

/**
 * Generates class-conditional images: samples token grids with the generator (MergeAR when it is a
 * {@link MergeARGPT}), decodes them with the tokenizer. Every op runs as a short native job off the
 * main thread; `signal` aborts between tokens, `onStep` reports each generated token.
 */
export function generateImages(
  tokenizer: MergeVQTokenizer,
  generator: MergeVQGPT,
  opts: GenerateImagesOptions,
): Promise<GeneratedImages> {
  return runAsync(generateImagesProgram(tokenizer, generator, opts));
}

/** {@link generateImages} on the calling thread. */
export function generateImagesSync(
  tokenizer: MergeVQTokenizer,
  generator: MergeVQGPT,
  opts: GenerateImagesOptions,
): GeneratedImages {
  return runSync(generateImagesProgram(tokenizer, generator, opts));
}
