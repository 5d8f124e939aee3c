/**
 * `mergevq eval`: scores a trained tokenizer on Fashion-MNIST (the config's `data:` section):
 * PSNR / SSIM per keep count with the given and the learned source, codebook usage, and the
 * linear-probe accuracy of the cls features. Prints a table, or the JSON of the evaluation.
 */
import { type Command, InvalidArgumentError } from 'commander';
import { fashionMnistDataset } from '../data/loader.js';
import { MergeVQError } from '../errors.js';
import {
  evaluateGeneration,
  evaluateTokenizer,
  loadPixelClassifier,
  type GenerationEvaluation,
  type TokenizerEvaluation,
} from '../eval/index.js';
import { loadGenerator, modelFiles } from '../pretrained.js';
import type { MergeVQGPT } from '../generator/gpt.js';
import { join } from 'node:path';
import { existsSync } from 'node:fs';
import { normalizeConfig } from '../tokenizer/config.js';
import { readWeights } from '../tokenizer/load.js';
import { MergeVQTokenizer } from '../tokenizer/tokenizer.js';
import { readTokenizerRunConfig } from './train.js';
import { DEFAULT_SAMPLING } from './generate.js';

function positiveInt(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('expected an integer >= 1');
  return n;
}
function keepList(v: string): number[] {
  const ks = v.split(',').map((s) => Number(s.trim()));
  if (ks.length === 0 || ks.some((k) => !Number.isInteger(k) || k < 1))
    throw new InvalidArgumentError('expected a comma-separated list of integers >= 1');
  return ks;
}

const fmt = (v: number, digits: number) => (Number.isFinite(v) ? v.toFixed(digits) : v > 0 ? 'inf' : String(v));

/** The evaluation as a text table. */
export function formatEvaluation(r: TokenizerEvaluation): string {
  const lines = [`test images: ${r.samples.test}   codebook: 2^${r.codebookBits}`, ''];
  const head = ['K', 'PSNR', 'SSIM', 'PSNR(learned)', 'SSIM(learned)', 'codes used', 'usage', 'perplexity'];
  const rows = r.keeps.map((k) => [
    String(k.keep),
    fmt(k.given.psnr, 2),
    fmt(k.given.ssim, 4),
    k.learned ? fmt(k.learned.psnr, 2) : '-',
    k.learned ? fmt(k.learned.ssim, 4) : '-',
    String(k.codebook.used),
    `${(100 * k.codebook.fraction).toFixed(1)}%`,
    fmt(k.codebook.perplexity, 1),
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padStart(widths[i]!)).join('  ');
  lines.push(line(head), ...rows.map(line), '');
  if (r.probe)
    lines.push(
      `linear probe (cls features, K ${r.probe.keep}, ${r.probe.dim} dims, ${r.probe.classes} classes, ${r.probe.trainSamples} train / ${r.probe.testSamples} test): ` +
        `train ${(100 * r.probe.trainAccuracy).toFixed(2)}%  test ${(100 * r.probe.testAccuracy).toFixed(2)}%`,
    );
  else lines.push('linear probe: skipped (no labels)');
  return lines.join('\n') + '\n';
}

/** The generation part of the evaluation as text. */
export function formatGeneration(r: GenerationEvaluation): string {
  const c = r.classifier;
  const lines = [
    `generation (${r.keeps[0]?.samples ?? 0} samples per keep count; cfg ${r.sampling.cfgScale ?? 'none'}, top-k ${r.sampling.topK ?? 0}, top-p ${r.sampling.topP ?? 1}, temperature ${r.sampling.temperature ?? 1}):`,
    `  judge: logistic regression on pixels, trained on ${c.trainSamples} real images${c.testAccuracy === null ? '' : `, ${(100 * c.testAccuracy).toFixed(2)}% on ${c.testSamples} real test images`}`,
  ];
  for (const k of r.keeps)
    lines.push(
      `  ${k.keep === null ? 'plain GPT' : `keep ${String(k.keep).padStart(2)}`}: judged as their class ${(100 * k.accuracy).toFixed(1)}%` +
        (k.kvRatio === null ? '' : `   KV cache ${k.kvRatio.toFixed(2)}x of a full cache`) +
        `   ${(k.ms / 1000).toFixed(1)} s`,
    );
  return lines.join('\n') + '\n';
}

/** Registers `eval` on the program. */
export function addEvalCommands(program: Command): void {
  program
    .command('eval')
    .description(
      'evaluate on Fashion-MNIST (the shipped models by default): PSNR/SSIM per keep count (given and learned source), codebook usage, linear probe of the cls features, and generated samples (class accuracy by a pixel classifier, MergeAR KV cache per keep count)',
    )
    .option('-c, --config <yaml>', 'the training YAML (model.init_args and data:); default: the shipped model')
    .option('-w, --weights <file>', 'tokenizer weights (.safetensors, .ckpt or .pt); default: the shipped model')
    .option(
      '--generator <file>',
      'generator weights to evaluate (default: the shipped generator when the tokenizer is the shipped one)',
    )
    .option('--generator-config <yaml>', 'the generator config (stage-2 YAML with mergear:)')
    .option('--samples-per-class <n>', 'generated samples per class and keep count', positiveInt, 20)
    .option('--no-generation', 'skip the generation evaluation')
    .option('--limit <n>', 'at most n images of each split', positiveInt)
    .option('--keeps <list>', "comma-separated keep counts (default: the config's candidates)", keepList)
    .option('--batch-size <n>', 'images per batch', positiveInt, 32)
    .option('--json', 'print the evaluation as JSON')
    .action(
      async (o: {
        config?: string;
        weights?: string;
        generator?: string;
        generatorConfig?: string;
        samplesPerClass: number;
        generation: boolean;
        limit?: number;
        keeps?: number[];
        batchSize: number;
        json?: boolean;
      }) => {
        if ((o.config === undefined) !== (o.weights === undefined))
          throw new MergeVQError(
            'give both --config and --weights, or neither (the shipped model)',
            'ERR_BAD_ARGUMENT',
          );
        if ((o.generator === undefined) !== (o.generatorConfig === undefined))
          throw new MergeVQError('give both --generator and --generator-config, or neither', 'ERR_BAD_ARGUMENT');
        const shipped = o.config === undefined ? modelFiles() : null;
        const configPath = o.config ?? shipped!.tokenizerConfig;
        const weightsPath = o.weights ?? shipped!.tokenizerWeights;
        const cfg = readTokenizerRunConfig(configPath);
        if (cfg.data.dataset !== 'fashion-mnist')
          throw new MergeVQError(
            `eval: only the fashion-mnist dataset is supported (the config names '${cfg.data.dataset}')`,
            'ERR_BAD_CONFIG',
          );
        const tok = new MergeVQTokenizer(normalizeConfig(cfg.modelArgs));
        const report = tok.loadWeights(await readWeights(weightsPath, { expected: tok.store.names() }));
        if (report.missing.length)
          throw new MergeVQError(
            `--weights ${weightsPath}: ${report.missing.length} tensors missing (first: ${report.missing[0]})`,
            'ERR_BAD_WEIGHTS',
          );
        if (report.unexpected.length)
          process.stderr.write(`note: ${report.unexpected.length} unused tensors in ${weightsPath}\n`);
        let generator: MergeVQGPT | null = null;
        if (o.generation) {
          if (o.generator)
            generator = (await loadGenerator({ config: o.generatorConfig!, weights: o.generator })).generator;
          else if (shipped)
            generator = (await loadGenerator({ config: shipped.generatorConfig, weights: shipped.generatorWeights }))
              .generator;
        }
        const ds = { size: cfg.data.size, mode: cfg.data.mode, channels: cfg.data.channels };
        const [train, test] = await Promise.all([fashionMnistDataset('train', ds), fashionMnistDataset('test', ds)]);
        const ac = new AbortController();
        const onSigint = () => ac.abort(new MergeVQError('eval: interrupted', 'ERR_ABORTED'));
        process.once('SIGINT', onSigint);
        try {
          const result = await evaluateTokenizer(tok, {
            train,
            test,
            keeps: o.keeps,
            limit: o.limit,
            batchSize: o.batchSize,
            signal: ac.signal,
            onProgress: process.stderr.isTTY
              ? (p) => process.stderr.write(`\r${p.stage} ${p.done}/${p.total}   ${p.done === p.total ? '\n' : ''}`)
              : undefined,
          });
          let generation: GenerationEvaluation | null = null;
          if (generator) {
            const judgePath = shipped ? join(shipped.dir, 'judge.safetensors') : null;
            const classifier = judgePath && existsSync(judgePath) ? await loadPixelClassifier(judgePath) : undefined;
            generation = await evaluateGeneration(tok, generator, {
              train,
              test,
              classifier,
              perClass: o.samplesPerClass,
              keeps: o.keeps,
              sampling: { ...DEFAULT_SAMPLING, seed: 0 },
              signal: ac.signal,
              onProgress: process.stderr.isTTY
                ? (p) => process.stderr.write(`\r${p.stage} ${p.done}/${p.total}   ${p.done === p.total ? '\n' : ''}`)
                : undefined,
            });
          }
          process.stdout.write(
            o.json
              ? JSON.stringify({ ...result, generation }, null, 2) + '\n'
              : formatEvaluation(result) + (generation ? formatGeneration(generation) : ''),
          );
        } finally {
          process.off('SIGINT', onSigint);
        }
      },
    );
}
