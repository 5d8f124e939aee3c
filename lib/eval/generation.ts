/**
 * Generation evaluation: class-conditional samples are judged by a classifier trained on real
 * images (multinomial logistic regression on raw pixels, trained here with the native linear probe),
 * and MergeAR's KV cache is measured against a full causal cache, per keep count.
 */
import { checkInt, checkKeys, optionKeys, typeError } from '../errors.js';
import type { Dataset } from '../data/loader.js';
import { generateImages, type GenerateImagesOptions } from '../generator/images.js';
import { MergeARGPT } from '../generator/mergear.js';
import type { MergeVQGPT } from '../generator/gpt.js';
import type { MergeVQTokenizer } from '../tokenizer/tokenizer.js';
import { TrainRng } from '../train/rng.js';
import { Tensor } from '../tensor.js';
import { MergeVQError } from '../errors.js';
import { readSafetensors, writeSafetensors } from '../io/safetensors.js';
import { linearProbeFromArrays, trainLinearProbeAsync, type LinearProbe } from './probe.js';

/** A classifier of real images: a linear probe on raw pixels (clamped to [-1, 1]). */
export interface PixelClassifier {
  probe: LinearProbe;
  /** Images it was trained on (train split). */
  trainSamples: number;
  /** Its accuracy on the test split (null without one). */
  testAccuracy: number | null;
  testSamples: number;
}

async function pixels(
  ds: Dataset,
  n: number,
  rng: TrainRng,
  signal?: AbortSignal,
): Promise<{ x: Float32Array; y: number[] }> {
  const first = await ds.get(0, rng);
  const per = first.image.length;
  const x = new Float32Array(n * per);
  const y: number[] = [];
  for (let i = 0; i < n; ++i) {
    if (i % 1024 === 0) signal?.throwIfAborted();
    const s = i === 0 ? first : await ds.get(i, rng);
    if (typeof s.label !== 'number') throw new RangeError(`the dataset's sample ${i} has no label`);
    x.set(s.image, i * per);
    y.push(s.label);
  }
  return { x, y };
}

/** Options of {@link trainPixelClassifier}. */
export interface PixelClassifierOptions {
  /** Train (and test) on at most this many images of each split (default all). */
  limit?: number;
  /** Probe epochs (default 10). */
  epochs?: number;
  /** Number of classes (default: max label + 1). */
  classes?: number;
  /** Checked while the images are read. */
  signal?: AbortSignal;
}
const PIXEL_CLASSIFIER_KEYS = optionKeys<PixelClassifierOptions>()(['limit', 'epochs', 'classes', 'signal']);

/**
 * Trains the pixel classifier on the first `limit` images of `train` (default all) and scores it on
 * `test`. Deterministic: the probe's weights start at zero and its batches are seeded.
 */
export async function trainPixelClassifier(
  train: Dataset,
  test: Dataset | null,
  opts: PixelClassifierOptions = {},
): Promise<PixelClassifier> {
  checkKeys('trainPixelClassifier options', opts, PIXEL_CLASSIFIER_KEYS);
  const rng = new TrainRng(0);
  const nTrain = Math.min(train.length, opts.limit === undefined ? Infinity : checkInt('opts.limit', opts.limit, 1));
  const tr = await pixels(train, nTrain, rng, opts.signal);
  const classes = opts.classes ?? Math.max(...tr.y) + 1;
  const probe = await trainLinearProbeAsync(tr.x, tr.y, {
    classes,
    epochs: opts.epochs ?? 10,
    lr: 1e-2,
    batchSize: 256,
    seed: 0,
  });
  let testAccuracy: number | null = null;
  let testSamples = 0;
  if (test) {
    testSamples = Math.min(test.length, opts.limit === undefined ? Infinity : opts.limit);
    const te = await pixels(test, testSamples, rng, opts.signal);
    testAccuracy = probe.accuracy(te.x, te.y);
  }
  return { probe, trainSamples: nTrain, testAccuracy, testSamples };
}

/** Writes a pixel classifier as safetensors (mean, std, weight, bias; counts in the metadata). */
export async function savePixelClassifier(path: string, c: PixelClassifier): Promise<void> {
  const p = c.probe;
  await writeSafetensors(
    path,
    {
      mean: Tensor.from(p.mean, [p.dim]),
      std: Tensor.from(p.std, [p.dim]),
      weight: Tensor.from(p.weight, [p.classes, p.dim]),
      bias: Tensor.from(p.bias, [p.classes]),
    },
    {
      kind: 'pixel-logistic-regression',
      train_samples: String(c.trainSamples),
      test_samples: String(c.testSamples),
      test_accuracy: String(c.testAccuracy ?? ''),
    },
  );
}

/** Reads a pixel classifier written by {@link savePixelClassifier}. */
export async function loadPixelClassifier(path: string): Promise<PixelClassifier> {
  const f = await readSafetensors(path);
  try {
    const get = async (n: string): Promise<Float32Array> => {
      if (!f.names.includes(n))
        throw new MergeVQError(`${path}: no tensor '${n}' (not a pixel classifier)`, 'ERR_BAD_FILE');
      return Float32Array.from((await f.tensorAsync(n)).toFloat32());
    };
    const weight = await get('weight');
    const bias = await get('bias');
    const mean = await get('mean');
    const probe = linearProbeFromArrays({
      dim: mean.length,
      classes: bias.length,
      mean,
      std: await get('std'),
      weight,
      bias,
    });
    const m = f.metadata;
    const acc = m.test_accuracy ? Number(m.test_accuracy) : null;
    return {
      probe,
      trainSamples: Number(m.train_samples ?? 0),
      testSamples: Number(m.test_samples ?? 0),
      testAccuracy: Number.isFinite(acc) ? acc : null,
    };
  } finally {
    await f.closeAsync();
  }
}

/** Scores at one keep count. */
export interface GenerationKeepScores {
  /** The keep-count instruction (null for a plain GPT). */
  keep: number | null;
  samples: number;
  /** Fraction of samples the pixel classifier assigns to the class they were generated for. */
  accuracy: number;
  /** Mean over batches of MergeAR's live KV rows / a full cache's rows (null without MergeAR). */
  kvRatio: number | null;
  /** Wall time of the sampling and decoding, ms. */
  ms: number;
}

/** The result of {@link evaluateGeneration}. */
export interface GenerationEvaluation {
  classifier: {
    kind: 'pixel-logistic-regression';
    trainSamples: number;
    testSamples: number;
    testAccuracy: number | null;
  };
  sampling: Pick<GenerateImagesOptions, 'cfgScale' | 'topK' | 'topP' | 'temperature' | 'seed'>;
  keeps: GenerationKeepScores[];
}

/** Options of {@link evaluateGeneration}. */
export interface GenerationEvalOptions {
  /** Real images the judge is trained on. */
  train: Dataset;
  /** Real images the judge is scored on (optional). */
  test?: Dataset;
  /** A judge trained before (skips training). */
  classifier?: PixelClassifier;
  /** Train/test images for the judge (default 10000). */
  classifierLimit?: number;
  /** Keep counts (default: every candidate of the tokenizer; ignored for a plain GPT). */
  keeps?: number[];
  /** Samples per class and keep count (default 10). */
  perClass?: number;
  /** Images per generation batch (default 50). */
  batchSize?: number;
  /** Sampling settings (default: cfg 2, top-k 0, top-p 1, temperature 1, seed 0). */
  sampling?: GenerationEvaluation['sampling'];
  signal?: AbortSignal;
  onProgress?: (p: { stage: 'classifier' | 'generate'; done: number; total: number }) => void;
}
const GENERATION_EVAL_KEYS = optionKeys<GenerationEvalOptions>()([
  'train',
  'test',
  'classifier',
  'classifierLimit',
  'keeps',
  'perClass',
  'batchSize',
  'sampling',
  'signal',
  'onProgress',
]);
const GENERATION_SAMPLING_KEYS = optionKeys<GenerationEvaluation['sampling']>()([
  'cfgScale',
  'topK',
  'topP',
  'temperature',
  'seed',
]);

/**
 * Generates `perClass` samples of every class at each keep count and reports the judge's accuracy
 * on them and MergeAR's KV-cache ratio.
 */
export async function evaluateGeneration(
  tok: MergeVQTokenizer,
  gen: MergeVQGPT,
  opts: GenerationEvalOptions,
): Promise<GenerationEvaluation> {
  if (!opts || typeof opts !== 'object') typeError('opts', '{ train, ... }', opts);
  checkKeys('evaluateGeneration options', opts, GENERATION_EVAL_KEYS);
  checkKeys('evaluateGeneration options.sampling', opts.sampling, GENERATION_SAMPLING_KEYS);
  const classes = gen.config.class_num;
  const perClass = checkInt('opts.perClass', opts.perClass ?? 10, 1, 1 << 20);
  const bs = checkInt('opts.batchSize', opts.batchSize ?? 50, 1, 1 << 16);
  const mergear = gen instanceof MergeARGPT;
  const keeps: (number | null)[] = mergear ? (opts.keeps ?? tok.candidates.keep) : [null];
  opts.onProgress?.({ stage: 'classifier', done: 0, total: 1 });
  const judge =
    opts.classifier ??
    (await trainPixelClassifier(opts.train, opts.test ?? null, {
      limit: opts.classifierLimit ?? 10000,
      classes,
      signal: opts.signal,
    }));
  opts.onProgress?.({ stage: 'classifier', done: 1, total: 1 });
  const sampling = { cfgScale: 2, topK: 0, topP: 1, temperature: 1, seed: 0, ...opts.sampling };
  const wanted = Array.from({ length: classes * perClass }, (_, i) => i % classes);
  const batches = Math.ceil(wanted.length / bs);
  const results: GenerationKeepScores[] = [];
  let done = 0;
  for (const keep of keeps) {
    const t0 = performance.now();
    let correct = 0;
    let kvSum = 0;
    for (let b = 0; b < batches; ++b) {
      opts.signal?.throwIfAborted();
      const cls = wanted.slice(b * bs, (b + 1) * bs);
      const g = await generateImages(tok, gen, {
        ...sampling,
        seed: (sampling.seed ?? 0) + b,
        classes: cls,
        signal: opts.signal,
        ...(keep === null ? {} : { keep }),
      });
      const img = Float32Array.from(g.images.toArray<'float32'>(), (v) => Math.max(-1, Math.min(1, v)));
      const pred = judge.probe.predict(img);
      cls.forEach((c, i) => (correct += pred[i] === c ? 1 : 0));
      if (g.kv) kvSum += g.kv.ratio;
      for (const t of [g.images, g.indices]) if (t instanceof Tensor && !t.disposed) t.dispose();
      opts.onProgress?.({ stage: 'generate', done: ++done, total: batches * keeps.length });
    }
    results.push({
      keep,
      samples: wanted.length,
      accuracy: correct / wanted.length,
      kvRatio: mergear ? kvSum / batches : null,
      ms: performance.now() - t0,
    });
  }
  return {
    classifier: {
      kind: 'pixel-logistic-regression',
      trainSamples: judge.trainSamples,
      testSamples: judge.testSamples,
      testAccuracy: judge.testAccuracy,
    },
    sampling,
    keeps: results,
  };
}
