/**
 * Tokenizer evaluation: reconstruction quality (PSNR, SSIM) per keep count with the encoder's own
 * source and with the learned source recovery, codebook usage, and a linear probe on the cls
 * features. Reconstructions are clamped to [-1, 1] before scoring, as images would be saved.
 */
import { checkInt, checkKeys, optionKeys, typeError } from '../errors.js';
import { runAsync } from '../graph.js';
import type { Dataset } from '../data/loader.js';
import { Tensor } from '../tensor.js';
import type { MergeVQTokenizer } from '../tokenizer/tokenizer.js';
import { TrainRng } from '../train/rng.js';
import { codebookUsage, psnr, ssim, type CodebookUsage } from './metrics.js';
import { LINEAR_PROBE_KEYS, trainLinearProbeAsync, type LinearProbeOptions } from './probe.js';

export * from './metrics.js';
export * from './probe.js';
export * from './generation.js';

/** Options of {@link evaluateTokenizer}. */
export interface EvaluateOptions {
  /** The split the probe is trained on. */
  train: Dataset;
  /** The split reconstructions are scored on and the probe is tested on. */
  test: Dataset;
  /** Keep counts to score (default: the tokenizer's candidates). */
  keeps?: number[];
  /** At most this many samples of each split (default: all). */
  limit?: number;
  /** Images per encode/decode batch (default 32). */
  batchSize?: number;
  /** Probe training options (classes default to max label + 1). */
  probe?: Partial<LinearProbeOptions>;
  /** Checked between batches; an aborted signal rejects with its reason. */
  signal?: AbortSignal;
  /** Called after every batch. */
  onProgress?: (p: EvaluateProgress) => void;
}
const EVALUATE_KEYS = optionKeys<EvaluateOptions>()([
  'train',
  'test',
  'keeps',
  'limit',
  'batchSize',
  'probe',
  'signal',
  'onProgress',
]);

/** Progress of {@link evaluateTokenizer}. */
export interface EvaluateProgress {
  stage: 'reconstruct' | 'probe-features' | 'probe-train';
  done: number;
  total: number;
}

/** Mean PSNR (dB) and SSIM over the scored images. */
export interface ReconstructionScores {
  psnr: number;
  ssim: number;
}

/** Scores at one keep count. */
export interface KeepEvaluation {
  keep: number;
  /** Reconstructions unmerged with the encoder's own source. */
  given: ReconstructionScores;
  /** Reconstructions through the learned source recovery (null without a recovery model). */
  learned: ReconstructionScores | null;
  /** Usage of the 2^embed_dim codes by the kept tokens of the scored images. */
  codebook: CodebookUsage;
}

/** Linear-probe accuracy of the cls features at the default keep count. */
export interface ProbeEvaluation {
  keep: number;
  dim: number;
  classes: number;
  trainSamples: number;
  testSamples: number;
  trainAccuracy: number;
  testAccuracy: number;
}

/** The result of {@link evaluateTokenizer}: plain JSON-able data. */
export interface TokenizerEvaluation {
  /** Images scored (test split) and used to train the probe (train split). */
  samples: { train: number; test: number };
  codebookBits: number;
  keeps: KeepEvaluation[];
  /** null when the datasets carry no labels. */
  probe: ProbeEvaluation | null;
}

function checkDataset(name: string, d: unknown): Dataset {
  if (
    !d ||
    typeof d !== 'object' ||
    typeof (d as Dataset).get !== 'function' ||
    typeof (d as Dataset).length !== 'number'
  )
    typeError(name, 'a Dataset { length, get(index, rng) }', d);
  return d as Dataset;
}

/** Loads samples [start, start + n) as one [n, C, H, W] tensor, plus their labels (null if any lacks one). */
async function loadBatch(
  ds: Dataset,
  start: number,
  n: number,
  rng: TrainRng,
): Promise<{ images: Tensor; labels: number[] | null }> {
  const samples = [];
  for (let i = start; i < start + n; ++i) samples.push(await ds.get(i, rng));
  const per = samples[0]!.image.length;
  const shape = ds.sampleShape;
  if (!shape) throw new RangeError('the dataset must declare sampleShape [C, H, W]');
  const buf = new Float32Array(n * per);
  samples.forEach((s, i) => buf.set(s.image, i * per));
  const labels = samples.every((s) => typeof s.label === 'number') ? samples.map((s) => s.label!) : null;
  return { images: Tensor.from(buf, [n, ...shape]), labels };
}

/** Frees the tensors of an encode/decode result (the images passed in are not among them). */
function free(r: object): void {
  for (const v of Object.values(r)) {
    if (v instanceof Tensor) {
      if (!v.disposed) v.dispose();
    } else if (v && typeof v === 'object' && !Array.isArray(v)) free(v);
  }
}

function clamped(t: Tensor): Tensor {
  const a = Float32Array.from(t.toArray<'float32'>(), (v) => Math.max(-1, Math.min(1, v)));
  return Tensor.from(a, t.shape);
}

/**
 * Evaluates a tokenizer: for each keep count, PSNR / SSIM of the test split's reconstructions
 * (given and learned source) and codebook usage; then the cls features of both splits at the
 * default keep count train a linear probe (on train) whose test accuracy is reported.
 */
export async function evaluateTokenizer(tok: MergeVQTokenizer, opts: EvaluateOptions): Promise<TokenizerEvaluation> {
  if (!tok || typeof tok !== 'object' || typeof tok.encodeProgram !== 'function')
    typeError('tok', 'a MergeVQTokenizer', tok);
  if (!opts || typeof opts !== 'object') typeError('opts', 'an options object { train, test, ... }', opts);
  checkKeys('evaluateTokenizer options', opts, EVALUATE_KEYS);
  checkKeys('evaluateTokenizer options.probe', opts.probe, LINEAR_PROBE_KEYS);
  const train = checkDataset('opts.train', opts.train);
  const test = checkDataset('opts.test', opts.test);
  const keeps = opts.keeps ?? tok.candidates.keep;
  if (!Array.isArray(keeps) || keeps.length === 0) typeError('opts.keeps', 'a non-empty array of keep counts', keeps);
  keeps.forEach((k, i) => checkInt(`opts.keeps[${i}]`, k, 1, tok.fullNum));
  const limit = opts.limit === undefined ? Infinity : checkInt('opts.limit', opts.limit, 1);
  const bs = checkInt('opts.batchSize', opts.batchSize ?? 32, 1, 1 << 16);
  const nTest = Math.min(test.length, limit);
  const nTrain = Math.min(train.length, limit);
  if (nTest < 1) throw new RangeError('opts.test must hold at least one sample');
  const bits = tok.config.embed_dim;
  const rng = new TrainRng(0);
  const progress = (stage: EvaluateProgress['stage'], done: number, total: number) =>
    opts.onProgress?.({ stage, done, total });

  const sums = keeps.map(() => ({ gp: 0, gs: 0, lp: 0, ls: 0, idx: [] as BigInt64Array[] }));
  const testCls: Float32Array[] = [];
  const testLabels: number[] = [];
  let labeled = true;
  const defaultKeep = tok.defaultKeep;
  const batches = Math.ceil(nTest / bs);
  for (let bi = 0; bi < batches; ++bi) {
    opts.signal?.throwIfAborted();
    const n = Math.min(bs, nTest - bi * bs);
    const { images, labels } = await loadBatch(test, bi * bs, n, rng);
    if (labels) testLabels.push(...labels);
    else labeled = false;
    let clsDone = false;
    for (const [ki, keep] of keeps.entries()) {
      const enc = await runAsync(tok.encodeProgram(images, { keep }));
      const s = sums[ki]!;
      s.idx.push(enc.indices.toArray<'int64'>().slice());
      if (keep === defaultKeep && !clsDone) {
        testCls.push(Float32Array.from(enc.cls.toArray<'float32'>()));
        clsDone = true;
      }
      const given = await runAsync(tok.decodeProgram({ codes: enc.codes, source: enc.source }));
      const g = clamped(given.images);
      s.gp += psnr(images, g).values.reduce((a, v) => a + v, 0);
      s.gs += ssim(images, g).values.reduce((a, v) => a + v, 0);
      if (tok.recovery) {
        const learned = await runAsync(tok.decodeProgram({ codes: enc.codes, source: 'learned' }));
        const l = clamped(learned.images);
        s.lp += psnr(images, l).values.reduce((a, v) => a + v, 0);
        s.ls += ssim(images, l).values.reduce((a, v) => a + v, 0);
        free(learned);
        l.dispose();
      }
      free(given);
      g.dispose();
      free(enc);
    }
    if (!clsDone) {
      const enc = await runAsync(tok.encodeProgram(images, { keep: defaultKeep }));
      testCls.push(Float32Array.from(enc.cls.toArray<'float32'>()));
      free(enc);
    }
    images.dispose();
    progress('reconstruct', bi + 1, batches);
  }
  const keepResults: KeepEvaluation[] = keeps.map((keep, ki) => {
    const s = sums[ki]!;
    const all = new BigInt64Array(s.idx.reduce((a, x) => a + x.length, 0));
    let o = 0;
    for (const x of s.idx) all.set(x, (o += x.length) - x.length);
    return {
      keep,
      given: { psnr: s.gp / nTest, ssim: s.gs / nTest },
      learned: tok.recovery ? { psnr: s.lp / nTest, ssim: s.ls / nTest } : null,
      codebook: codebookUsage(all, bits),
    };
  });

  let probe: ProbeEvaluation | null = null;
  if (labeled && nTrain >= 2) {
    const trainCls: Float32Array[] = [];
    const trainLabels: number[] = [];
    const tb = Math.ceil(nTrain / bs);
    for (let bi = 0; bi < tb && labeled; ++bi) {
      opts.signal?.throwIfAborted();
      const n = Math.min(bs, nTrain - bi * bs);
      const { images, labels } = await loadBatch(train, bi * bs, n, rng);
      if (!labels) {
        labeled = false;
        break;
      }
      trainLabels.push(...labels);
      const enc = await runAsync(tok.encodeProgram(images, { keep: defaultKeep }));
      trainCls.push(Float32Array.from(enc.cls.toArray<'float32'>()));
      free(enc);
      images.dispose();
      progress('probe-features', bi + 1, tb);
    }
    if (labeled) {
      const cat = (xs: Float32Array[]) => {
        const out = new Float32Array(xs.reduce((a, x) => a + x.length, 0));
        let o = 0;
        for (const x of xs) out.set(x, (o += x.length) - x.length);
        return out;
      };
      const xtr = cat(trainCls);
      const xte = cat(testCls);
      const classes = opts.probe?.classes ?? Math.max(1, ...trainLabels, ...testLabels) + 1;
      opts.signal?.throwIfAborted();
      const model = await trainLinearProbeAsync(xtr, trainLabels, { ...opts.probe, classes });
      progress('probe-train', 1, 1);
      probe = {
        keep: defaultKeep,
        dim: model.dim,
        classes,
        trainSamples: nTrain,
        testSamples: nTest,
        trainAccuracy: model.accuracy(xtr, trainLabels),
        testAccuracy: model.accuracy(xte, testLabels),
      };
    }
  }
  return { samples: { train: probe ? nTrain : 0, test: nTest }, codebookBits: bits, keeps: keepResults, probe };
}
