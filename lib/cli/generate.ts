/**
 * `mergevq generate` (class-conditional samples with MergeAR) and `mergevq demo` (the shipped
 * models end to end: merged tokens, reconstructions with the true and the learned source, source
 * maps, a grid of generated samples per class, and their metrics).
 */
import { type Command, InvalidArgumentError } from 'commander';
import { existsSync, mkdirSync, statSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { Uint8ImageDataset } from '../data/loader.js';
import { FASHION_MNIST_CLASSES } from '../data/idx.js';
import { MergeVQError } from '../errors.js';
import { loadPixelClassifier } from '../eval/generation.js';
import { psnr, ssim } from '../eval/metrics.js';
import { generateImages, type GeneratedImages } from '../generator/images.js';
import type { MergeVQGPT } from '../generator/gpt.js';
import { MergeARGPT } from '../generator/mergear.js';
import { imageGrid, sourceMapTensor, upscaleNearest } from '../io/image.js';
import { readSafetensors } from '../io/safetensors.js';
import { loadDefaultModels, loadGenerator, modelFiles, type DefaultModels } from '../pretrained.js';
import { Tensor } from '../tensor.js';
import { loadTokenizer } from '../tokenizer/load.js';
import type { MergeVQTokenizer } from '../tokenizer/tokenizer.js';
import { TrainRng } from '../train/rng.js';

function intArg(min: number, max = Number.MAX_SAFE_INTEGER) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max)
      throw new InvalidArgumentError(`expected an integer in [${min}, ${max}], got '${v}'`);
    return n;
  };
}
function realArg(min: number, max: number, open = false) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < min || n > max || (open && n === min))
      throw new InvalidArgumentError(`expected a number in ${open ? '(' : '['}${min}, ${max}], got '${v}'`);
    return n;
  };
}

/** A class id, or a Fashion-MNIST class name (case-insensitive; 'boot', 't-shirt', 'bag', ...). */
export function parseClassArg(v: string): number {
  if (/^\d+$/.test(v)) return Number(v);
  const key = v.trim().toLowerCase();
  const i = FASHION_MNIST_CLASSES.findIndex(
    (c) => c.toLowerCase() === key || c.toLowerCase().split(/[\s/]/).includes(key),
  );
  if (i < 0)
    throw new InvalidArgumentError(
      `expected a class id or one of ${FASHION_MNIST_CLASSES.map((c) => `'${c}'`).join(', ')}, got '${v}'`,
    );
  return i;
}

/** Sampling defaults of the shipped generator (used by `generate`, `demo` and the README). */
export const DEFAULT_SAMPLING = { cfgScale: 2, temperature: 1, topK: 0, topP: 1 } as const;

/** Refuses to replace a file the user did not ask to be written by this command. */
function checkOut(path: string, force: boolean | undefined): void {
  if (existsSync(path) && !force)
    throw new MergeVQError(`--out ${path} exists: choose another name or add --force to replace it`, 'ERR_EXISTS');
  if (existsSync(path) && !statSync(path).isFile()) throw new MergeVQError(`--out ${path} is not a file`, 'ERR_EXISTS');
}

async function models(o: {
  tokenizer?: string;
  tokenizerConfig?: string;
  generator?: string;
  generatorConfig?: string;
  window?: number;
}): Promise<{ tokenizer: MergeVQTokenizer; generator: MergeVQGPT }> {
  const custom = [o.tokenizer, o.tokenizerConfig, o.generator, o.generatorConfig].filter((v) => v !== undefined).length;
  if (custom === 0) {
    return loadDefaultModels({ window: o.window });
  }
  if (custom !== 4)
    throw new MergeVQError(
      'give all four of --tokenizer, --tokenizer-config, --generator and --generator-config, or none (the shipped models)',
      'ERR_BAD_ARGUMENT',
    );
  const { tokenizer } = await loadTokenizer({ config: o.tokenizerConfig!, weights: o.tokenizer!, strict: true });
  const { generator } = await loadGenerator({ config: o.generatorConfig!, weights: o.generator!, window: o.window });
  return { tokenizer, generator };
}

/** A one-line progress bar on stderr (TTY only). */
function bar(label: string): (done: number, total: number) => void {
  return (done, total) => {
    if (!process.stderr.isTTY) return;
    const w = 30;
    const f = Math.round((done / total) * w);
    process.stderr.write(
      `\r${label} [${'#'.repeat(f)}${'.'.repeat(w - f)}] ${done}/${total}${done === total ? '\n' : ''}`,
    );
  };
}

/** The demo's test images: 100 Fashion-MNIST test images shipped with the model (uint8 [N, 28, 28], labels). */
async function demoImages(m: DefaultModels): Promise<{ images: Tensor; labels: number[] }> {
  const path = join(m.files.dir, 'test-images.safetensors');
  const f = await readSafetensors(path);
  let bytes: Uint8Array;
  let labels: Uint8Array;
  let shape: number[];
  try {
    const t = await f.tensorAsync('images');
    shape = t.shape;
    bytes = Uint8Array.from(t.toArray<'uint8'>());
    labels = Uint8Array.from((await f.tensorAsync('labels')).toArray<'uint8'>());
  } finally {
    await f.closeAsync();
  }
  const [n, h, w] = shape as [number, number, number];
  const R = m.tokenizer.config.ddconfig.resolution;
  const ds = new Uint8ImageDataset(bytes, labels, h, w, {
    size: R,
    mode: 'pad',
    channels: m.tokenizer.config.ddconfig.in_channels === 1 ? 1 : 3,
  });
  const rng = new TrainRng(0);
  const per = ds.sampleShape.reduce((a, b) => a * b, 1);
  const buf = new Float32Array(n * per);
  for (let i = 0; i < n; ++i) buf.set((await ds.get(i, rng)).image, i * per);
  return { images: Tensor.from(buf, [n, ...ds.sampleShape]), labels: Array.from(labels) };
}

/** Rows `rows` of a [B, ...] tensor. */
function pick(t: Tensor, rows: number[]): Tensor {
  const per = t.numel / t.shape[0]!;
  const src = t.toFloat32();
  const out = new Float32Array(rows.length * per);
  rows.forEach((r, i) => out.set(src.subarray(r * per, (r + 1) * per), i * per));
  return Tensor.from(out, [rows.length, ...t.shape.slice(1)]);
}
function pickInt(t: Tensor, rows: number[]): Tensor {
  const per = t.numel / t.shape[0]!;
  const src = t.toArray<'int64'>();
  const out = new BigInt64Array(rows.length * per);
  rows.forEach((r, i) => out.set(src.subarray(r * per, (r + 1) * per), i * per));
  return Tensor.from(out, [rows.length, ...t.shape.slice(1)]);
}
function clamp(t: Tensor): Tensor {
  return Tensor.from(
    Float32Array.from(t.toFloat32(), (v) => Math.max(-1, Math.min(1, v))),
    t.shape,
  );
}

/** What `mergevq demo` measured (also printed). */
export interface DemoReport {
  loadMs: number;
  images: number;
  reconstruction: { keep: number; psnr: number; ssim: number; psnrLearned: number; ssimLearned: number }[];
  generation: {
    keep: number;
    samples: number;
    classAccuracy: number;
    judgeTestAccuracy: number | null;
    kvRatio: number | null;
    ms: number;
  };
  files: string[];
  totalMs: number;
}

/** Runs the demo on the shipped models; writes the pictures into `out`. */
export async function runDemo(opts: {
  out: string;
  seed?: number;
  perClass?: number;
  signal?: AbortSignal;
  log?: (line: string) => void;
}): Promise<DemoReport> {
  const log = opts.log ?? (() => {});
  const t0 = performance.now();
  const m = await loadDefaultModels();
  const loadMs = performance.now() - t0;
  const tok = m.tokenizer;
  log(
    `models: ${m.files.dir} (tokenizer ${(tok.store.count() / 1e6).toFixed(2)}M parameters, generator ${(m.generator.store.count() / 1e6).toFixed(2)}M; loaded in ${loadMs.toFixed(0)} ms)`,
  );
  log(
    `tokenizer: ${tok.config.ddconfig.resolution} px, ${tok.fullNum} full tokens, keep candidates ${tok.candidates.keep.join(' / ')} (default ${tok.defaultKeep}), ${tok.config.embed_dim}-bit LFQ`,
  );
  const { images, labels } = await demoImages(m);
  const n = images.shape[0]!;
  // one image of each class for the pictures
  const show: number[] = [];
  for (let c = 0; c < 10; ++c) {
    const i = labels.indexOf(c);
    if (i >= 0) show.push(i);
  }
  const keeps = [tok.candidates.keep[0]!, tok.defaultKeep].filter((k, i, a) => a.indexOf(k) === i);
  const up = 4;
  const reconRows: Tensor[] = [upscaleNearest(pick(images, show), up)];
  const mapRows: Tensor[] = [];
  const reconstruction: DemoReport['reconstruction'] = [];
  for (const keep of keeps) {
    opts.signal?.throwIfAborted();
    const enc = await tok.encode(images, { keep });
    const given = clamp((await tok.decode({ codes: enc.codes, source: enc.source })).images);
    const learnedRes = await tok.decode({ codes: enc.codes, source: 'learned' });
    const learned = clamp(learnedRes.images);
    reconstruction.push({
      keep,
      psnr: psnr(images, given).mean,
      ssim: ssim(images, given).mean,
      psnrLearned: psnr(images, learned).mean,
      ssimLearned: ssim(images, learned).mean,
    });
    reconRows.push(upscaleNearest(pick(given, show), up), upscaleNearest(pick(learned, show), up));
    const shown = upscaleNearest(pick(images, show), up);
    mapRows.push(sourceMapTensor(shown, pickInt(enc.source, show)));
    if (learnedRes.recovered) mapRows.push(sourceMapTensor(shown, pickInt(learnedRes.recovered.map, show)));
  }
  mkdirSync(opts.out, { recursive: true });
  const files = [
    join(opts.out, 'reconstructions.png'),
    join(opts.out, 'source-maps.png'),
    join(opts.out, 'samples.png'),
  ];
  await writeFile(files[0]!, await imageGrid(reconRows));
  await writeFile(files[1]!, await imageGrid(mapRows));

  const perClass = opts.perClass ?? 8;
  const classes = Array.from({ length: 10 * perClass }, (_, i) => Math.floor(i / perClass));
  const tg = performance.now();
  const g: GeneratedImages = await generateImages(tok, m.generator, {
    ...DEFAULT_SAMPLING,
    seed: opts.seed ?? 0,
    classes,
    signal: opts.signal,
  });
  const genMs = performance.now() - tg;
  const samples = clamp(g.images);
  const rows = Array.from({ length: 10 }, (_, c) =>
    upscaleNearest(
      pick(
        samples,
        Array.from({ length: perClass }, (_, j) => c * perClass + j),
      ),
      up,
    ),
  );
  await writeFile(files[2]!, await imageGrid(rows));
  const judge = await loadPixelClassifier(join(m.files.dir, 'judge.safetensors'));
  const pred = judge.probe.predict(samples.toFloat32());
  const classAccuracy = classes.reduce((a, c, i) => a + (pred[i] === c ? 1 : 0), 0) / classes.length;
  return {
    loadMs,
    images: n,
    reconstruction,
    generation: {
      keep: g.keep ?? tok.fullNum,
      samples: classes.length,
      classAccuracy,
      judgeTestAccuracy: judge.testAccuracy,
      kvRatio: g.kv?.ratio ?? null,
      ms: genMs,
    },
    files,
    totalMs: performance.now() - t0,
  };
}

/** The demo's metrics as text. */
export function formatDemo(r: DemoReport): string {
  const lines = [
    `reconstruction of ${r.images} Fashion-MNIST test images (PSNR dB / SSIM; true source, learned recovery):`,
  ];
  for (const k of r.reconstruction)
    lines.push(
      `  K ${String(k.keep).padStart(2)}: true source ${k.psnr.toFixed(2)} / ${k.ssim.toFixed(4)}   learned ${k.psnrLearned.toFixed(2)} / ${k.ssimLearned.toFixed(4)}`,
    );
  const g = r.generation;
  lines.push(
    `generation (MergeAR, keep ${g.keep}, ${g.samples} samples, cfg ${DEFAULT_SAMPLING.cfgScale}): judged as their class ${(100 * g.classAccuracy).toFixed(1)}% ` +
      `(judge: logistic regression on pixels, ${g.judgeTestAccuracy === null ? '?' : (100 * g.judgeTestAccuracy).toFixed(1)}% on real test images)` +
      (g.kvRatio === null ? '' : `; KV cache ${g.kvRatio.toFixed(2)}x of a full cache`) +
      `; ${(g.ms / 1000).toFixed(1)} s`,
  );
  lines.push(`wrote ${r.files.join(', ')}`, `total ${(r.totalMs / 1000).toFixed(1)} s`);
  return lines.join('\n') + '\n';
}

/** Registers `generate` and `demo`. */
export function addGenerateCommands(program: Command): void {
  program
    .command('generate')
    .description(
      'generate class-conditional images with MergeAR (the shipped models unless given) and write them as a grid',
    )
    .option(
      '--class <n>',
      'class id or Fashion-MNIST name (0 T-shirt/top, 1 trouser, 2 pullover, 3 dress, 4 coat, 5 sandal, 6 shirt, 7 sneaker, 8 bag, 9 ankle boot)',
      parseClassArg,
      0,
    )
    .option('--count <n>', 'number of images', intArg(1, 4096), 8)
    .option('--cfg <s>', 'classifier-free guidance scale (1 = none)', realArg(0, 100), DEFAULT_SAMPLING.cfgScale)
    .option('--top-k <k>', 'keep the k most likely sub-tokens (0 = all)', intArg(0), DEFAULT_SAMPLING.topK)
    .option('--top-p <p>', 'nucleus threshold in (0, 1]', realArg(0, 1, true), DEFAULT_SAMPLING.topP)
    .option('--temperature <t>', 'softmax temperature (> 0)', realArg(0, 100, true), DEFAULT_SAMPLING.temperature)
    .option('--seed <n>', 'sampler seed', intArg(0), 0)
    .option(
      '--keep <K>',
      "MergeAR's keep-count instruction (a keep candidate of the tokenizer; default its default keep)",
      intArg(1),
    )
    .option('--no-mergear', 'decode with a full KV cache (no MergeAR compaction)')
    .option('--window <w>', "MergeAR's recent window", intArg(0))
    .option('--tokenizer <file>', 'tokenizer weights (with --tokenizer-config, --generator, --generator-config)')
    .option('--tokenizer-config <yaml>', 'tokenizer config')
    .option('--generator <file>', 'generator weights')
    .option('--generator-config <yaml>', 'generator config (stage-2 YAML with mergear:)')
    .option('-o, --out <png>', 'output grid', 'samples.png')
    .option('--force', 'replace --out if it exists')
    .action(
      async (o: {
        class: number;
        count: number;
        cfg: number;
        topK: number;
        topP: number;
        temperature: number;
        seed: number;
        keep?: number;
        mergear: boolean;
        window?: number;
        tokenizer?: string;
        tokenizerConfig?: string;
        generator?: string;
        generatorConfig?: string;
        out: string;
        force?: boolean;
      }) => {
        const out = resolve(o.out);
        checkOut(out, o.force);
        const { tokenizer, generator } = await models(o);
        if (o.class >= generator.config.class_num)
          throw new MergeVQError(
            `--class must be below ${generator.config.class_num}, got ${o.class}`,
            'ERR_BAD_ARGUMENT',
          );
        const ac = new AbortController();
        const onSigint = () => ac.abort(new MergeVQError('generate: interrupted', 'ERR_ABORTED'));
        process.once('SIGINT', onSigint);
        try {
          const t0 = performance.now();
          const g = await generateImages(tokenizer, generator, {
            classes: new Array<number>(o.count).fill(o.class),
            cfgScale: o.cfg === 1 ? null : o.cfg,
            topK: o.topK,
            topP: o.topP,
            temperature: o.temperature,
            seed: o.seed,
            ...(o.keep === undefined || !(generator instanceof MergeARGPT) ? {} : { keep: o.keep }),
            mergear: o.mergear,
            signal: ac.signal,
            onStep: bar('generating'),
          });
          const ms = performance.now() - t0;
          const cols = Math.ceil(Math.sqrt(o.count));
          const img = clamp(g.images);
          const rows: Tensor[] = [];
          for (let r = 0; r * cols < o.count; ++r) {
            const idx = Array.from({ length: cols }, (_, j) => r * cols + j).filter((i) => i < o.count);
            while (idx.length < cols) idx.push(-1);
            const t = pick(
              img,
              idx.map((i) => Math.max(i, 0)),
            );
            if (idx.includes(-1)) {
              const a = t.toFloat32();
              const per = t.numel / cols;
              idx.forEach((i, j) => i < 0 && a.fill(1, j * per, (j + 1) * per));
              rows.push(upscaleNearest(Tensor.from(a, t.shape), 4));
            } else rows.push(upscaleNearest(t, 4));
          }
          await writeFile(out, await imageGrid(rows));
          process.stdout.write(
            `generated ${o.count} images of class ${o.class} in ${(ms / 1000).toFixed(1)} s` +
              (g.keep === null
                ? ''
                : ` (keep instruction ${g.keep}${g.kv ? `, KV cache ${g.kv.rows}/${g.kv.fullRows} rows = ${g.kv.ratio.toFixed(2)}x` : ', full cache'})`) +
              `; wrote ${out}\n`,
          );
        } finally {
          process.off('SIGINT', onSigint);
        }
      },
    );

  program
    .command('demo')
    .description(
      'the shipped Fashion-MNIST models end to end: reconstructions (true and learned source) at two keep counts, source maps, generated samples per class, metrics',
    )
    .option(
      '-o, --out <dir>',
      'folder for the pictures (reconstructions.png, source-maps.png, samples.png)',
      'mergevq-demo',
    )
    .option('--seed <n>', 'sampler seed', intArg(0), 0)
    .option('--json', 'print the metrics as JSON')
    .action(async (o: { out: string; seed: number; json?: boolean }) => {
      modelFiles();
      const out = resolve(o.out);
      if (existsSync(out) && !statSync(out).isDirectory())
        throw new MergeVQError(`--out ${out} is not a folder`, 'ERR_EXISTS');
      const ac = new AbortController();
      const onSigint = () => ac.abort(new MergeVQError('demo: interrupted', 'ERR_ABORTED'));
      process.once('SIGINT', onSigint);
      try {
        const r = await runDemo({
          out,
          seed: o.seed,
          signal: ac.signal,
          log: o.json ? undefined : (l) => process.stdout.write(`${l}\n`),
        });
        process.stdout.write(o.json ? `${JSON.stringify(r, null, 2)}\n` : formatDemo(r));
      } finally {
        process.off('SIGINT', onSigint);
      }
    });
}
