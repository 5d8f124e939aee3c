// Strict options in the TypeScript API: every public entry point that takes an options object
// refuses a key it does not know with a RangeError naming the entry point, the key and the known
// keys (checkKeys), instead of ignoring a misspelt option. Each row calls one entry point twice
// with tiny inputs: with valid options (which must not be refused) and with one key misspelt.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import {
  DEFAULT_LOSS_WEIGHTS,
  encodeImage,
  evaluateGeneration,
  evaluateTokenizer,
  imageGrid,
  loadCheckpoint,
  psnr,
  readCheckpointObject,
  readSafetensors,
  readSafetensorsSync,
  sourceMapImage,
  sourceMapTensor,
  ssim,
  trainLinearProbe,
  trainLinearProbeAsync,
  trainLinearProbeProgram,
  trainPixelClassifier,
  unpickle,
  unpickleAt,
  MergeARGPT,
  MergeVQGPT,
  MergeVQTokenizer,
  ParamStore,
  Tape,
  Tensor,
  generate,
  generateImages,
  generateImagesSync,
  generateMergeAR,
  generateMergeARSync,
  generateProbList,
  generateSync,
  loadDefaultModels,
  loadGenerator,
  loadTokenizer,
  mergeCandidates,
  modelFiles,
  data,
  ops,
  readWeights,
  runSync,
  sampleMergeARProgram,
  sampleProgram,
  tokenizerForward,
  tokenizerLoss,
  train,
  writeSafetensors,
} from '../lib/index.js';
import { Rng, tinyGPTArgs, tinyGRArgs } from './helpers.js';

const rng = new Rng();
const rand = (shape: number[]) => rng.tensor(shape);
const i64 = (v: number[], shape: number[]) => Tensor.from(BigInt64Array.from(v, BigInt), shape);
const tmp = mkdtempSync(join(tmpdir(), 'mergevq-options-'));

/** A tiny G+R tokenizer (16 px, 16 tokens, keep 9) and a MergeAR generator over its codes. */
const GPT = tinyGPTArgs();
/** N random 16 x 16 gray images with labels in [0, 4). */
function tinyImages(n: number) {
  const px = new Uint8Array(n * 256);
  for (let i = 0; i < px.length; ++i) px[i] = rng.int(256);
  const labels = Uint8Array.from({ length: n }, (_, i) => i % 4);
  return new data.Uint8ImageDataset(px, labels, 16, 16, { size: 16 });
}
/** The objective's loss_kwargs for a tiny run (no perceptual network). */
const LOSS = { disc_start: 2, disc_dim: 8, disc_num_layers: 1, perceptual_weight: 0, disc_in_channels: 1 };
function tinyModels() {
  const tok = MergeVQTokenizer.fromConfig(tinyGRArgs());
  tok.store.initRandom(1);
  const gen = new MergeARGPT(GPT, { numCandidates: tok.candidates.keep.length });
  gen.store.initRandom(2);
  const plain = new MergeVQGPT(GPT);
  plain.store.initRandom(3);
  return { tok, gen, plain };
}

type Opts = Record<string, unknown>;
/** One entry point: `call` runs it with the options given. */
interface Row {
  /** How the entry point names itself in the error: `<name>: unknown option '<key>'`. */
  name: string;
  /** Options that are valid (may be empty). */
  valid: Opts;
  /** A misspelt key and a value for it. */
  bad: Opts;
  /** The key the error names when it is not `bad`'s own (a misspelt key of a nested object). */
  key?: string;
  call: (opts: Opts) => unknown;
  /** false: only the misspelt call runs (valid calls need more setup than the table builds). */
  runValid?: false;
}

/** Runs `call`: an op program is run with runSync, a promise awaited. Returns what it threw, or null. */
async function thrown(call: () => unknown): Promise<unknown> {
  try {
    const r = call();
    if (r && typeof r === 'object' && typeof (r as Generator).next === 'function' && Symbol.iterator in r)
      runSync(r as Generator<never, unknown, never>);
    else await r;
    return null;
  } catch (e) {
    return e;
  }
}

function reEscape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

function runTable(rows: () => Row[] | Promise<Row[]>): void {
  it('valid options pass, a misspelt key is a RangeError naming the entry point and the key', async () => {
    const table = await rows();
    expect(table.length).toBeGreaterThan(0);
    for (const row of table) {
      if (row.runValid !== false)
        expect.soft(await thrown(() => row.call(row.valid)), `${row.name} with valid options`).toBeNull();
      const e = await thrown(() => row.call({ ...row.valid, ...row.bad }));
      const key = row.key ?? Object.keys(row.bad)[0]!;
      expect.soft(e, `${row.name} with '${key}'`).toBeInstanceOf(RangeError);
      expect
        .soft(String((e as Error)?.message))
        .toMatch(new RegExp(`^${reEscape(row.name)}: unknown option '${reEscape(key)}' \\(known: `));
    }
  });
}

describe('tensors and autograd', () => {
  runTable(() => {
    const x = rand([3]);
    const tape = new Tape();
    const y = runSync(
      (function* () {
        return yield* ops.tensor.sum(yield* ops.tensor.mul(x, x));
      })(),
      tape.observe,
    );
    return [
      {
        name: 'Tensor.from options',
        valid: { dtype: 'float16' },
        bad: { dtpye: 'float16' },
        call: (o) => Tensor.from(new Uint16Array(2), [2], o),
      },
      {
        name: 'Tape.backward options',
        valid: { wrt: [x] },
        bad: { with: [x] },
        call: (o) => tape.backward(y, null, o),
      },
    ];
  });
});

describe('ops wrappers', () => {
  const q = rand([1, 2, 4, 8]);
  const x4 = rand([2, 4, 3, 3]);
  const w = rand([4, 4, 3, 3]);
  const x2 = rand([3, 4]);
  const logits = rand([3, 5]);
  const target = i64([0, 4, 2], [3]);
  const f = (shape: number[], v = 0.5) =>
    Tensor.from(new Float32Array(shape.reduce((a, b) => a * b, 1)).fill(v), shape);
  runTable(() => {
    const [o, lse] = runSync(ops.attention.attention(q, q, q, null, null, {}));
    const [y, mean, rstd] = runSync(ops.nn.layerNorm(x2, f([4], 1), f([4], 0)));
    const [, pidx] = runSync(ops.pool.maxPool2d(x4, { kernel: 2 }));
    const py = rand([2, 4, 1, 1]);
    return [
      {
        name: 'attention options',
        valid: { causal: true },
        bad: { causl: true },
        call: (o) => ops.attention.attention(q, q, q, null, null, o),
      },
      {
        name: 'attentionBackward options',
        valid: { causal: false },
        bad: { kvlen: 4 },
        call: (opts) => ops.attention.attentionBackward(q, q, q, null, null, o, lse, q, opts),
      },
      {
        name: 'splitHeads options',
        valid: { heads: 2 },
        bad: { head: 2 },
        call: (o) => ops.attention.splitHeads(rand([1, 3, 8]), o),
      },
      {
        name: 'splitFusedHeads options',
        valid: { parts: 3, heads: 2 },
        bad: { part: 3 },
        call: (o) => ops.attention.splitFusedHeads(rand([1, 3, 12]), o as never),
      },
      { name: 'lfqQuantize options', valid: { dim: 1 }, bad: { dims: 1 }, call: (o) => ops.lfq.lfqQuantize(x4, o) },
      {
        name: 'lfqIndicesToCodes options',
        valid: { bits: 4 },
        bad: { bit: 4 },
        call: (o) => ops.lfq.lfqIndicesToCodes(target, o as never),
      },
      {
        name: 'lfqEntropy options',
        valid: { temperature: 0.1 },
        bad: { temprature: 0.1 },
        call: (o) => ops.lfq.lfqEntropy(x2, o),
      },
      {
        name: 'lfqEntropyBackward options',
        valid: {},
        bad: { avgprobs: null },
        call: (o) => ops.lfq.lfqEntropyBackward(x2, f([]), f([]), o),
      },
      {
        name: 'matmul options',
        valid: { transB: true },
        bad: { transb: true },
        call: (o) => ops.linalg.matmul(x2, x2, o),
      },
      {
        name: 'matmulBackward options',
        valid: { transB: true },
        bad: { alhpa: 2 },
        call: (o) => ops.linalg.matmulBackward(x2, x2, rand([3, 3]), o),
      },
      {
        name: 'linearBackward options',
        valid: { hasBias: true },
        bad: { bias: true },
        call: (o) => ops.linalg.linearBackward(x2, rand([2, 4]), rand([3, 2]), o),
      },
      {
        name: 'conv2d options',
        valid: { padding: 1 },
        bad: { strides: 1 },
        call: (o) => ops.linalg.conv2d(x4, w, null, o),
      },
      {
        name: 'conv2dBackward options',
        valid: { padding: 1, hasBias: true },
        bad: { hasbias: true },
        call: (o) => ops.linalg.conv2dBackward(x4, w, x4, o),
      },
      {
        name: 'bipartiteMatch options',
        valid: { r: 1 },
        bad: { classtoken: true },
        call: (o) => ops.merge.bipartiteMatch(rand([1, 6, 4]), o as never),
      },
      {
        name: 'groupNorm options',
        valid: { groups: 2 },
        bad: { group: 2 },
        call: (o) => ops.nn.groupNorm(x4, null, null, o as never),
      },
      {
        name: 'groupNormBackward options',
        valid: { groups: 2 },
        bad: { hasweight: false },
        call: (o) => {
          const [, m, r] = runSync(ops.nn.groupNorm(x4, null, null, { groups: 2 }));
          return ops.nn.groupNormBackward(x4, null, null, m, r, x4, o as never);
        },
      },
      {
        name: 'layerNorm options',
        valid: { eps: 1e-6 },
        bad: { epsilon: 1e-6 },
        call: (o) => ops.nn.layerNorm(x2, null, null, o),
      },
      {
        name: 'layerNormBackward options',
        valid: { hasBias: true },
        bad: { hasbias: true },
        call: (o) => ops.nn.layerNormBackward(x2, f([4], 1), mean, rstd, y, o),
      },
      {
        name: 'rmsNorm options',
        valid: { eps: 1e-6 },
        bad: { esp: 1e-6 },
        call: (o) => ops.nn.rmsNorm(x2, f([4], 1), o),
      },
      {
        name: 'batchNorm options',
        valid: { training: true },
        bad: { train: true },
        call: (o) => ops.nn.batchNorm(x4, null, null, null, null, o),
      },
      {
        name: 'batchNormBackward options',
        valid: { training: true },
        bad: { trainig: true },
        call: (o) => {
          const [, m, s] = runSync(ops.nn.batchNorm(x4, null, null, null, null, { training: true }));
          return ops.nn.batchNormBackward(x4, null, m, s, x4, o);
        },
      },
      {
        name: 'gelu options',
        valid: { approximate: 'tanh' },
        bad: { approx: 'tanh' },
        call: (o) => ops.nn.gelu(x2, o),
      },
      {
        name: 'geluBackward options',
        valid: {},
        bad: { aproximate: 'none' },
        call: (o) => ops.nn.geluBackward(x2, x2, o),
      },
      {
        name: 'leakyRelu options',
        valid: { slope: 0.1 },
        bad: { negativeSlope: 0.1 },
        call: (o) => ops.nn.leakyRelu(x2, o),
      },
      {
        name: 'leakyReluBackward options',
        valid: {},
        bad: { slop: 0.1 },
        call: (o) => ops.nn.leakyReluBackward(x2, x2, o),
      },
      { name: 'softmax options', valid: { dim: 1 }, bad: { dimm: 1 }, call: (o) => ops.nn.softmax(x2, o) },
      { name: 'logSoftmax options', valid: { dim: 1 }, bad: { axis: 1 }, call: (o) => ops.nn.logSoftmax(x2, o) },
      {
        name: 'softmaxBackward options',
        valid: {},
        bad: { dims: [1] },
        call: (o) => ops.nn.softmaxBackward(x2, x2, o),
      },
      {
        name: 'logSoftmaxBackward options',
        valid: {},
        bad: { Dim: 1 },
        call: (o) => ops.nn.logSoftmaxBackward(x2, x2, o),
      },
      {
        name: 'crossEntropy options',
        valid: { labelSmoothing: 0.1 },
        bad: { label_smoothing: 0.1 },
        call: (o) => ops.nn.crossEntropy(logits, target, o),
      },
      {
        name: 'crossEntropyBackward options',
        valid: {},
        bad: { ignore: 1 },
        call: (o) => ops.nn.crossEntropyBackward(logits, target, f([]), o),
      },
      {
        name: 'softCrossEntropy options',
        valid: { reduction: 'sum' },
        bad: { reduce: 'sum' },
        call: (o) => ops.nn.softCrossEntropy(logits, logits, o),
      },
      {
        name: 'softCrossEntropyBackward options',
        valid: {},
        bad: { reducton: 'sum' },
        call: (o) => ops.nn.softCrossEntropyBackward(logits, logits, f([]), o),
      },
      {
        name: 'klDivSoftmax options',
        valid: { temperature: 4 },
        bad: { T: 4 },
        call: (o) => ops.nn.klDivSoftmax(logits, logits, o),
      },
      {
        name: 'klDivSoftmaxBackward options',
        valid: {},
        bad: { temp: 4 },
        call: (o) => ops.nn.klDivSoftmaxBackward(logits, logits, f([]), o),
      },
      {
        name: 'l1Loss options',
        valid: { reduction: 'sum' },
        bad: { reductions: 'sum' },
        call: (o) => ops.nn.l1Loss(x2, x2, o),
      },
      {
        name: 'l1LossBackward options',
        valid: {},
        bad: { mode: 'sum' },
        call: (o) => ops.nn.l1LossBackward(x2, x2, f([]), o),
      },
      {
        name: 'mseLoss options',
        valid: { reduction: 'none' },
        bad: { Reduction: 'none' },
        call: (o) => ops.nn.mseLoss(x2, x2, o),
      },
      {
        name: 'mseLossBackward options',
        valid: {},
        bad: { reduciton: 'sum' },
        call: (o) => ops.nn.mseLossBackward(x2, x2, f([]), o),
      },
      {
        name: 'adamStep options',
        valid: { lr: 0.1, beta1: 0.9, beta2: 0.99, eps: 1e-8, step: 1 },
        bad: { weight_decay: 0.1 },
        call: (o) => ops.optim.adamStep(f([4]), f([4]), f([4], 0), f([4], 0), o as never),
      },
      {
        name: 'emaUpdate options',
        valid: { decay: 0.9 },
        bad: { decy: 0.9 },
        call: (o) => ops.optim.emaUpdate(f([4]), f([4]), o as never),
      },
      {
        name: 'maxPool2dAttrs options',
        valid: { kernel: 2 },
        bad: { kernal: 2 },
        call: (o) => ops.pool.maxPool2dAttrs(o as never),
      },
      {
        name: 'maxPool2dOutputSize options',
        valid: { kernel: 2 },
        bad: { pad: 0 },
        call: (o) => ops.pool.maxPool2dOutputSize([4, 4], o as never),
      },
      {
        name: 'maxPool2d options',
        valid: { kernel: 2 },
        bad: { size: 2 },
        call: (o) => ops.pool.maxPool2d(x4, o as never),
      },
      {
        name: 'maxPool2dBackward options',
        valid: { inputShape: x4.shape },
        bad: { shape: x4.shape },
        call: (o) => ops.pool.maxPool2dBackward(py, pidx, o as never),
      },
      { name: 'clamp options', valid: { min: 0 }, bad: { minimum: 0 }, call: (o) => ops.tensor.clamp(x2, o) },
      {
        name: 'clampBackward options',
        valid: { max: 0 },
        bad: { maxi: 0 },
        call: (o) => ops.tensor.clampBackward(x2, x2, o),
      },
      { name: 'sum options', valid: { dims: [1] }, bad: { dim: 1 }, call: (o) => ops.tensor.sum(x2, o) },
      { name: 'mean options', valid: { keepdim: true }, bad: { keepDim: true }, call: (o) => ops.tensor.mean(x2, o) },
      {
        name: 'variance options',
        valid: { unbiased: false },
        bad: { unbaised: false },
        call: (o) => ops.tensor.variance(x2, o),
      },
      { name: 'amax options', valid: { dims: [0] }, bad: { keepdims: true }, call: (o) => ops.tensor.amax(x2, o) },
      { name: 'amin options', valid: {}, bad: { dimension: 0 }, call: (o) => ops.tensor.amin(x2, o) },
      {
        name: 'amaxBackward options',
        valid: {},
        bad: { keep: true },
        call: (o) => ops.tensor.amaxBackward(x2, runSync(ops.tensor.amax(x2)), f([]), o),
      },
      {
        name: 'scatterReduce options',
        valid: { dim: 0, reduce: 'sum' },
        bad: { include_self: false },
        call: (o) => ops.tensor.scatterReduce(f([3]), i64([0, 1, 1], [3]), f([3]), o as never),
      },
      {
        name: 'scatterReduceBackward options',
        valid: { dim: 0, reduce: 'mean' },
        bad: { includeself: false },
        call: (o) => ops.tensor.scatterReduceBackward(f([3]), i64([0, 1, 1], [3]), f([3]), f([3]), o as never),
      },
      {
        name: 'randomNormal options',
        valid: { seed: 1 },
        bad: { sd: 2 },
        call: (o) => ops.tensor.randomNormal([2, 2], o as never),
      },
    ];
  });
});

describe('tokenizer and generator', () => {
  runTable(async () => {
    const { tok, gen, plain } = tinyModels();
    const images = rand([1, 1, 16, 16]);
    const enc = tok.encodeSync(images);
    const weights = join(tmp, 'tok.safetensors');
    await writeSafetensors(weights, Object.fromEntries(tok.store.stateDict()));
    const labels = i64([1], [1]);
    const keepIndex = i64([0], [1]);
    const pre = i64([1, 2, 1, 0], [1, 4]);
    const post = i64([3, 0, 3, 1], [1, 4]);
    const files = modelFiles();
    const { cls, source, labelSmoothing, temperature } = DEFAULT_LOSS_WEIGHTS;
    return [
      { name: 'encode options', valid: { keep: 9 }, bad: { kepp: 9 }, call: (o) => tok.encode(images, o) },
      { name: 'encode options', valid: {}, bad: { Keep: 4 }, call: (o) => tok.encodeSync(images, o) },
      { name: 'encode options', valid: { keep: 4 }, bad: { k: 4 }, call: (o) => tok.encodeProgram(images, o) },
      {
        name: 'decode input',
        valid: { indices: enc.indices, source: enc.source },
        bad: { keep: 9 },
        call: (o) => tok.decode(o as never),
      },
      {
        name: 'decode input',
        valid: { codes: enc.codes, source: 'learned' },
        bad: { src: 1 },
        call: (o) => tok.decodeSync(o as never),
      },
      {
        name: 'reconstruct options',
        valid: { source: 'learned' },
        bad: { sorce: 'learned' },
        call: (o) => tok.reconstruct(images, o),
      },
      { name: 'reconstruct options', valid: { keep: 9 }, bad: { kep: 9 }, call: (o) => tok.reconstructSync(images, o) },
      {
        name: 'MergeVQTokenizer.loadWeights options',
        valid: { strict: false },
        bad: { strcit: true },
        call: (o) => tok.loadWeights(new Map(), o),
      },
      {
        name: 'ParamStore.load options',
        valid: { strict: true },
        bad: { stirct: true },
        call: (o) => new ParamStore().load({}, o),
      },
      {
        name: 'loadTokenizer options',
        valid: { config: tinyGRArgs(), weights, strict: true },
        bad: { wieghts: weights },
        call: (o) => loadTokenizer(o as never),
      },
      {
        name: 'readWeights options',
        valid: { prefer: 'raw' },
        bad: { perfer: 'raw' },
        call: (o) => readWeights(weights, o),
      },
      {
        name: 'generateProbList kwargs',
        valid: { mean: 1, std: 0.5 },
        bad: { sigma: 0.5 },
        call: (o) => generateProbList(3, 'gaussian', o),
      },
      {
        name: 'mergeCandidates options',
        valid: { embedRes: 4, mergeNum: 7, candDistribution: 'gaussian-3', numLayers: 3 },
        bad: { inflection: 0 },
        call: (o) => mergeCandidates(o as never),
      },
      {
        name: 'tokenizerForward weights',
        valid: { cls, source, labelSmoothing, temperature },
        bad: { labelSmothing: 0.1 },
        call: (o) => tokenizerForward(tok, images, null, 9, o as never),
      },
      {
        name: 'tokenizerLoss weights',
        valid: { ...DEFAULT_LOSS_WEIGHTS },
        bad: { comitment: 0.25 },
        call: (o) => tokenizerLoss(tok, images, null, 9, o as never),
      },
      // the plain sampler has no MergeAR decoding mode
      {
        name: 'generate options',
        valid: { steps: 2, topK: 3 },
        bad: { mode: 'full' },
        call: (o) => generate(plain, labels, o),
      },
      {
        name: 'generate options',
        valid: { steps: 1, cfgScale: 2 },
        bad: { topk: 3 },
        call: (o) => generateSync(plain, labels, o),
      },
      { name: 'generate options', valid: { steps: 1 }, bad: { sead: 1 }, call: (o) => sampleProgram(plain, labels, o) },
      {
        name: 'generateMergeAR options',
        valid: { steps: 3, mode: 'full' },
        bad: { mdoe: 'full' },
        call: (o) => generateMergeAR(gen, labels, keepIndex, o),
      },
      {
        name: 'generateMergeAR options',
        valid: { steps: 2, seed: 4 },
        bad: { temperatur: 2 },
        call: (o) => generateMergeARSync(gen, labels, keepIndex, o),
      },
      {
        name: 'generateMergeAR options',
        valid: { steps: 2 },
        bad: { onstep: () => {} },
        call: (o) => sampleMergeARProgram(gen, labels, keepIndex, o),
      },
      {
        name: 'generateImages options',
        valid: { classes: [1], topK: 2 },
        bad: { sead: 3 },
        call: (o) => generateImages(tok, gen, o as never),
      },
      {
        name: 'generateImages options',
        valid: { classes: [0], mergear: false },
        bad: { mergeAR: false },
        call: (o) => generateImagesSync(tok, plain, o as never),
      },
      {
        name: 'MergeARGPT options',
        valid: { numCandidates: 3, window: 1 },
        bad: { windw: 1 },
        call: (o) => new MergeARGPT(GPT, o as never),
      },
      {
        name: 'MergeARGPT.forwardAR options',
        valid: { mask: false },
        bad: { masked: false },
        call: (o) => gen.forwardAR(pre, post, labels, keepIndex, o),
      },
      {
        name: 'MergeVQGPT.loadWeights options',
        valid: { strict: false },
        bad: { Strict: false },
        call: (o) => plain.loadWeights({}, o),
      },
      {
        name: 'loadGenerator options',
        valid: { config: files.generatorConfig, weights: files.generatorWeights, window: 1 },
        bad: { plian: true },
        call: (o) => loadGenerator(o as never),
      },
      {
        name: 'loadDefaultModels options',
        valid: { plain: true },
        bad: { nmae: 'fashion-mnist' },
        call: (o) => loadDefaultModels(o),
      },
    ];
  });
});

describe('training', () => {
  runTable(async () => {
    const { tok, gen } = tinyModels();
    const ds = tinyImages(8);
    const loader = () => new data.DataLoader(ds, { batchSize: 4, seed: 1, prefetch: 0 });
    const codes = await train.extractCodes(tok, loader());
    const grads = () => new Map([['w', rand([4])]]);
    const params = new ParamStore();
    params.declare('w', [4], { kind: 'const', value: 1 });
    params.declare('b', [4], { kind: 'const', value: 0 });
    params.initRandom(0);
    const anneal = {
      itersTrain: 10,
      maxEpochs: 2,
      wp: 0.5,
      wp0: 0.005,
      wpe: 0.01,
      weightDecay: 0.05,
      learningRate: 1e-3,
    };
    const tokTrain = (o: Opts = {}) =>
      new train.TokenizerTrainer({
        tokenizer: tok,
        data: { dataset: ds, batchSize: 4, prefetch: 0 },
        loss: LOSS,
        sync: true,
        ...o,
      } as never);
    const arTrain = (o: Opts = {}) =>
      new train.ARTrainer({ model: gen, codes, batchSize: 4, sync: true, ...o } as never);
    const tt = tokTrain();
    const at = arTrain();
    const disc = new train.NLayerDiscriminator({ inputNc: 1, ndf: 4, nLayers: 1 });
    disc.initRandom(0);
    const obj = new train.VQLPIPSWithDiscriminator(LOSS);
    const img = rand([2, 1, 16, 16]);
    const series = [{ name: 'loss', points: [[0, 1] as const, [1, 0.5] as const] }];
    return [
      {
        name: 'clipGradNorm options',
        valid: { errorIfNonfinite: true },
        bad: { errorIfNonFinite: true },
        call: (o) => train.clipGradNorm(grads(), 1, o),
      },
      {
        name: 'Adam options',
        valid: { lr: 0.1, eps: 1e-6 },
        bad: { betas1: 0.9 },
        call: (o) => new train.Adam(params, ['w'], o as never),
      },
      {
        name: 'AdamW options',
        valid: { lr: 0.1, weightDecay: 0 },
        bad: { weight_decay: 0 },
        call: (o) => new train.AdamW(params, ['w'], o as never),
      },
      {
        name: 'Adam groups[1]',
        valid: { names: ['b'], lr: 0.01 },
        bad: { weightdecay: 0 },
        call: (o) => new train.Adam(params, [{ names: ['w'] }, o as never], { lr: 0.1 }),
      },
      {
        name: 'lrDropLr config',
        valid: { learningRate: 1, stepsPerEpoch: 2, lrDropEpoch: [1] },
        bad: { lrDropEpochs: [1] },
        call: (o) => train.lrDropLr(5, o as never),
      },
      {
        name: 'arLrWd config',
        valid: { ...anneal, twde: 0.1 },
        bad: { tdwe: 0.1 },
        call: (o) => train.arLrWd(3, o as never),
      },
      {
        name: 'applyArAnnealing config',
        valid: anneal,
        bad: { warmup: 1 },
        call: (o) => train.applyArAnnealing({ groups: [{ lr: 0, weightDecay: 0 }] }, 3, o as never),
      },
      {
        name: 'lambdaWarmUpCosine config',
        valid: { warmUpSteps: 2, lrMin: 0.1, lrMax: 1, lrStart: 0, maxDecaySteps: 10 },
        bad: { warmupSteps: 2 },
        call: (o) => train.lambdaWarmUpCosine(4, o as never),
      },
      {
        name: 'LitEma options',
        valid: { decay: 0.9 },
        bad: { useNumUpates: true },
        call: (o) => new train.LitEma(params, ['w'], o),
      },
      {
        name: 'saveTrainingState options',
        valid: { keepPrevious: false },
        bad: { keepPrev: false },
        call: (o) => train.saveTrainingState(join(tmp, 'state.safetensors'), { tensors: new Map(), meta: {} }, o),
      },
      {
        name: 'NLayerDiscriminator options',
        valid: { ndf: 4, nLayers: 1 },
        bad: { n_layers: 1 },
        call: (o) => new train.NLayerDiscriminator(o),
      },
      {
        name: 'NLayerDiscriminator.forward options',
        valid: { training: false },
        bad: { train: true },
        call: (o) => disc.forward(img, o as never),
      },
      { name: 'NLayerDiscriminator.load options', valid: {}, bad: { strictly: true }, call: (o) => disc.load({}, o) },
      { name: 'LeCAM options', valid: { decay: 0.99 }, bad: { ema: 0.99 }, call: (o) => new train.LeCAM(o) },
      {
        name: 'LPIPS options',
        valid: { chns: [2, 2, 2, 2, 2] },
        bad: { channels: [2, 2, 2, 2, 2] },
        call: (o) => new train.LPIPS(o as never),
      },
      {
        name: 'LPIPS.loadWeights options',
        valid: { prefix: 'net.' },
        bad: { prefx: 'net.' },
        call: (o) => new train.LPIPS({ chns: [2, 2, 2, 2, 2] }).loadWeights({}, o),
      },
      {
        name: 'VQLPIPSWithDiscriminator options',
        valid: { discriminatorSeed: 3 },
        bad: { seed: 3 },
        call: (o) => new train.VQLPIPSWithDiscriminator(LOSS, o),
      },
      {
        name: 'generatorPass inputs',
        valid: {},
        bad: { lastlayer: null },
        call: (o) => obj.generatorPass({ inputs: img, reconstructions: img, globalStep: 0, ...o } as never),
        runValid: false,
      },
      {
        name: 'discriminatorPass inputs',
        valid: { inputs: img, reconstructions: img, globalStep: 0, training: false },
        bad: { step: 0 },
        call: (o) => obj.discriminatorPass(o as never),
      },
      {
        name: 'extractCodes options',
        valid: { keep: 9, limit: 4 },
        bad: { keeps: 9 },
        call: (o) => train.extractCodes(tok, loader(), o as never),
      },
      {
        name: 'curvesSvg options',
        valid: { logY: true },
        bad: { logy: true },
        call: (o) => train.curvesSvg(series, o),
      },
      {
        name: 'writeCurvesPng options',
        valid: { title: 'loss' },
        bad: { titel: 'loss' },
        call: (o) => train.writeCurvesPng(join(tmp, 'curves.png'), series, o),
      },
      {
        name: 'CodeLoader options',
        valid: { batchSize: 4, factorizedBits: [3, 5], shuffle: false },
        bad: { drop_last: true },
        call: (o) => new train.CodeLoader(codes, o as never),
      },
      { name: 'TokenizerTrainer options', valid: { fixedKeep: 9 }, bad: { lerningRate: 1 }, call: (o) => tokTrain(o) },
      {
        name: 'TokenizerTrainer options.data',
        valid: {},
        bad: { batch_size: 4 },
        call: (o) => tokTrain({ data: { dataset: ds, batchSize: 4, prefetch: 0, ...o } }),
      },
      { name: 'TokenizerTrainer.fit options', valid: { steps: 0 }, bad: { step: 1 }, call: (o) => tt.fit(o as never) },
      {
        name: 'TokenizerTrainer.exportWeights options',
        valid: { ema: false },
        bad: { useEma: false },
        call: (o) => tt.exportWeights(join(tmp, 'tok-export.safetensors'), o),
      },
      { name: 'ARTrainer options', valid: { labelDropout: 0 }, bad: { labelDroput: 0 }, call: (o) => arTrain(o) },
      {
        name: 'ARTrainer.create options',
        valid: { model: gen, codes, batchSize: 4 },
        bad: { batchsize: 4 },
        call: (o) => train.ARTrainer.create(o as never),
      },
      { name: 'ARTrainer.fit options', valid: { steps: 0 }, bad: { signl: null }, call: (o) => at.fit(o as never) },
      {
        name: 'ARTrainer.exportWeights options',
        valid: { dtype: 'float16' },
        bad: { dype: 'float16' },
        call: (o) => at.exportWeights(join(tmp, 'ar-export.safetensors'), o),
      },
    ];
  });
});

describe('data, eval and io', () => {
  runTable(async () => {
    const { tok, gen } = tinyModels();
    const ds = tinyImages(8);
    const idx = { dtype: 'u8' as const, shape: [2, 2], data: Uint8Array.from([1, 2, 3, 4]) };
    const idxFile = join(tmp, 'a.idx');
    (await import('node:fs')).writeFileSync(idxFile, data.encodeIdx(idx));
    const img = rand([2, 1, 16, 16]);
    const folder = join(tmp, 'images');
    const fs = await import('node:fs');
    fs.mkdirSync(folder, { recursive: true });
    fs.writeFileSync(join(folder, 'a.png'), await encodeImage(img));
    const enc = tok.encodeSync(img);
    const stFile = join(tmp, 'st.safetensors');
    await writeSafetensors(stFile, { x: rand([2]) });
    const st = readSafetensorsSync(stFile);
    const ckpt = fileURLToPath(new URL('./data/lightning.ckpt', import.meta.url));
    const feats = rand([8, 3]).toFloat32();
    const labels = [0, 1, 0, 1, 0, 1, 0, 1];
    const pickle = Uint8Array.from([0x80, 0x02, 0x4b, 0x05, 0x2e]); // protocol 2: int 5, STOP
    const resolveGlobal = () => undefined;
    return [
      {
        name: 'decodeIdx options',
        valid: { maxDims: 4 },
        bad: { maxdims: 4 },
        call: (o) => data.decodeIdx(data.encodeIdx(idx), o),
      },
      { name: 'readIdx options', valid: { label: 'a' }, bad: { lable: 'a' }, call: (o) => data.readIdx(idxFile, o) },
      { name: 'encodeIdx options', valid: { gzip: true }, bad: { gz: true }, call: (o) => data.encodeIdx(idx, o) },
      {
        name: 'loadFashionMnist options',
        valid: { dir: data.FASHION_MNIST_DIR },
        bad: { folder: '.' },
        call: (o) => data.loadFashionMnist('test', o),
        runValid: fs.existsSync(data.FASHION_MNIST_DIR) ? undefined : false,
      },
      {
        name: 'fashionMnistDataset options',
        valid: { dir: data.FASHION_MNIST_DIR, size: 28, channels: 3 }, // dir and the dataset's own options
        bad: { channel: 3 },
        call: (o) => data.fashionMnistDataset('test', o),
        runValid: fs.existsSync(data.FASHION_MNIST_DIR) ? undefined : false,
      },
      {
        name: 'ImageFolderDataset.open options',
        valid: { size: 8, crop: 'center' },
        bad: { extension: ['.png'] },
        call: (o) => data.ImageFolderDataset.open(folder, o as never),
      },
      {
        name: 'DataLoader options',
        valid: { batchSize: 2, seed: 0, prefetch: 0 },
        bad: { shufle: false },
        call: (o) => new data.DataLoader(ds, o as never),
      },
      {
        name: 'Uint8ImageDataset options',
        valid: { size: 8, mode: 'resize' },
        bad: { resize: 8 },
        call: (o) => new data.Uint8ImageDataset(new Uint8Array(16), null, 4, 4, o as never),
      },
      { name: 'psnr options', valid: { dataRange: 1 }, bad: { range: 1 }, call: (o) => psnr(img, img, o) },
      // psnr's options do not take ssim's window
      { name: 'psnr options', valid: {}, bad: { sigma: 1 }, call: (o) => psnr(img, img, o) },
      { name: 'ssim options', valid: { sigma: 1 }, bad: { sgima: 1 }, call: (o) => ssim(img, img, o) },
      {
        name: 'trainLinearProbe options',
        valid: { classes: 2, epochs: 1 },
        bad: { epoch: 1 },
        call: (o) => trainLinearProbe(feats, labels, o as never),
      },
      {
        name: 'trainLinearProbeAsync options',
        valid: { classes: 2, epochs: 1 },
        bad: { learningRate: 1 },
        call: (o) => trainLinearProbeAsync(feats, labels, o as never),
      },
      {
        name: 'trainLinearProbeProgram options',
        valid: { classes: 2, epochs: 1 },
        bad: { batch: 2 },
        call: (o) => trainLinearProbeProgram(feats, labels, o as never),
      },
      {
        name: 'evaluateTokenizer options',
        valid: { train: ds, test: ds, keeps: [9], limit: 4, probe: { epochs: 1 } },
        bad: { batchsize: 2 },
        call: (o) => evaluateTokenizer(tok, o as never),
      },
      {
        name: 'evaluateTokenizer options.probe',
        valid: { train: ds, test: ds, limit: 2 },
        bad: { probe: { epohcs: 1 } },
        key: 'epohcs',
        call: (o) => evaluateTokenizer(tok, o as never),
      },
      {
        name: 'trainPixelClassifier options',
        valid: { limit: 8, epochs: 1 },
        bad: { epocs: 1 },
        call: (o) => trainPixelClassifier(ds, ds, o),
      },
      {
        name: 'evaluateGeneration options',
        valid: { train: ds, classifierLimit: 8, keeps: [9], perClass: 1, sampling: { seed: 1 } },
        bad: { perclass: 1 },
        call: (o) => evaluateGeneration(tok, gen, o as never),
      },
      {
        name: 'evaluateGeneration options.sampling',
        valid: { train: ds, classifierLimit: 8, keeps: [4], perClass: 1 },
        bad: { sampling: { cfg: 2 } },
        key: 'cfg',
        call: (o) => evaluateGeneration(tok, gen, o as never),
      },
      {
        name: 'encodeImage options',
        valid: { index: 1, format: 'jpeg' },
        bad: { idx: 1 },
        call: (o) => encodeImage(img, o),
      },
      { name: 'imageGrid options', valid: { pad: 0 }, bad: { padding: 0 }, call: (o) => imageGrid([img, img], o) },
      {
        name: 'sourceMapImage options',
        valid: { alpha: 0.3, index: 1 },
        bad: { opacity: 0.3 },
        call: (o) => sourceMapImage(img, enc.source, o),
      },
      {
        name: 'sourceMapTensor options',
        valid: { alpha: 1 },
        bad: { index: 0 },
        call: (o) => sourceMapTensor(img, enc.source, o),
      },
      {
        name: 'readSafetensors options',
        valid: { label: 'x' },
        bad: { convertf64: true },
        call: async (o) => (await readSafetensors(stFile, o)).close(),
      },
      {
        name: 'readSafetensorsSync options',
        valid: { convertF64: true },
        bad: { name: 'x' },
        call: (o) => readSafetensorsSync(stFile, o).close(),
      },
      {
        name: 'SafetensorsFile.tensor options',
        valid: { convertF64: false },
        bad: { label: 'x' },
        call: (o) => st.tensor('x', o),
      },
      {
        name: 'SafetensorsFile.tensorAsync options',
        valid: {},
        bad: { convert: true },
        call: (o) => st.tensorAsync('x', o),
      },
      {
        name: 'loadCheckpoint options',
        valid: { convertF64: true, onWarning: () => {} },
        bad: { skipUnknownGlobal: true },
        call: (o) => loadCheckpoint(ckpt, o),
      },
      // readCheckpointObject reads no tensors: loadCheckpoint's tensor options are unknown to it
      {
        name: 'readCheckpointObject options',
        valid: { onWarning: () => {} },
        bad: { convertF64: true },
        call: (o) => readCheckpointObject(ckpt, o as never),
      },
      {
        name: 'unpickle options',
        valid: { resolveGlobal, label: 'p' },
        bad: { resolve: resolveGlobal },
        call: (o) => unpickle(pickle, o as never),
      },
      {
        name: 'unpickleAt options',
        valid: { resolveGlobal },
        bad: { persistentload: null },
        call: (o) => unpickleAt(pickle, 0, o as never),
      },
      {
        name: 'unpickle options.limits',
        valid: { resolveGlobal, limits: { maxDepth: 4 } },
        bad: { limits: { maxdepth: 4 } },
        key: 'maxdepth',
        call: (o) => unpickle(pickle, o as never),
      },
    ];
  });
});
