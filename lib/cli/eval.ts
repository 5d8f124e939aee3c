/**
 * `mergevq eval`: scores a trained tokenizer on Fashion-MNIST (the config's `data:` section):
 * PSNR / SSIM per keep count with the given and the learned source, codebook usage, and the
 * linear-probe accuracy of the cls features. Prints a table, or the JSON of the evaluation.
 */
import { Command, InvalidArgumentError } from 'commander';
import { fashionMnistDataset } from '../data/loader.js';
import { MergeVQError } from '../errors.js';
import { evaluateTokenizer, type TokenizerEvaluation } from '../eval/index.js';
import { normalizeConfig } from '../tokenizer/config.js';
import { readWeights } from '../tokenizer/load.js';
import { MergeVQTokenizer } from '../tokenizer/tokenizer.js';
import { readTokenizerRunConfig } from './train.js';

function positiveInt(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('expected an integer >= 1');
  return n;
}
function keepList(v: string): number[] {
  const ks = v.split(',').map((s) => Number(s.trim()));
  if (ks.length === 0 || ks.some((k) => !Number.isInteger(k) || k < 1)) throw new InvalidArgumentError('expected a comma-separated list of integers >= 1');
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

/** Registers `eval` on the program. */
export function addEvalCommands(program: Command): void {
  program
    .command('eval')
    .description('evaluate a tokenizer on Fashion-MNIST: PSNR/SSIM per keep count (given and learned source), codebook usage, linear probe of the cls features')
    .requiredOption('-c, --config <yaml>', 'the training YAML (model.init_args and data:)')
    .requiredOption('-w, --weights <file>', 'tokenizer weights (.safetensors, .ckpt or .pt)')
    .option('--limit <n>', 'at most n images of each split', positiveInt)
    .option('--keeps <list>', 'comma-separated keep counts (default: the config\'s candidates)', keepList)
    .option('--batch-size <n>', 'images per batch', positiveInt, 32)
    .option('--json', 'print the evaluation as JSON')
    .action(async (o: { config: string; weights: string; limit?: number; keeps?: number[]; batchSize: number; json?: boolean }) => {
      const cfg = readTokenizerRunConfig(o.config);
      if (cfg.data.dataset !== 'fashion-mnist')
        throw new MergeVQError(`eval: only the fashion-mnist dataset is supported (the config names '${cfg.data.dataset}')`, 'ERR_BAD_CONFIG');
      const tok = new MergeVQTokenizer(normalizeConfig(cfg.modelArgs));
      const report = tok.loadWeights(await readWeights(o.weights, { expected: tok.store.names() }));
      if (report.missing.length) throw new MergeVQError(`--weights ${o.weights}: ${report.missing.length} tensors missing (first: ${report.missing[0]})`, 'ERR_BAD_WEIGHTS');
      if (report.unexpected.length) process.stderr.write(`note: ${report.unexpected.length} unused tensors in ${o.weights}\n`);
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
          onProgress: process.stderr.isTTY ? (p) => process.stderr.write(`\r${p.stage} ${p.done}/${p.total}   ${p.done === p.total ? '\n' : ''}`) : undefined,
        });
        process.stdout.write(o.json ? JSON.stringify(result, null, 2) + '\n' : formatEvaluation(result));
      } finally {
        process.off('SIGINT', onSigint);
      }
    });
}
