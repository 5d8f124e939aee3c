/**
 * The `mergevq` command line: reconstruct, encode, decode, inspect, source-map, convert, train-tokenizer.
 * Every command has --help. Weights: --weights (.safetensors, .ckpt, .pt); config: --config (YAML).
 */
import { Command, InvalidArgumentError } from 'commander';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { basename, extname, join } from 'node:path';
import { encodeImage, imageGrid, loadImages, sourceMapImage } from '../io/image.js';
import { readSafetensors, writeSafetensors } from '../io/safetensors.js';
import { Tensor } from '../tensor.js';
import { loadTokenizer, readWeights } from '../tokenizer/load.js';
import type { MergeVQTokenizer } from '../tokenizer/tokenizer.js';
import { addTrainCommands } from './train.js';
import { addEvalCommands } from './eval.js';
import { addGenerateCommands } from './generate.js';

function int(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`expected a positive integer, got '${v}'`);
  return n;
}

interface ModelOpts {
  config: string;
  weights?: string;
  raw?: boolean;
  keep?: number;
  batch: number;
}

function withModelOptions(cmd: Command): Command {
  return cmd
    .requiredOption('-c, --config <yaml>', "the reference's YAML config (Lightning CLI format)")
    .option(
      '-w, --weights <file>',
      'weights: .safetensors with reference names, or a Lightning .ckpt / .pt (random weights when omitted)',
    )
    .option('--raw', 'use the raw (non-EMA) weights of a Lightning checkpoint')
    .option('-k, --keep <K>', 'kept token count (a square from the config candidates)', int)
    .option('-b, --batch <n>', 'images per batch', int, 4);
}

async function model(o: ModelOpts): Promise<MergeVQTokenizer> {
  const { tokenizer, report } = await loadTokenizer({
    config: o.config,
    weights: o.weights,
    prefer: o.raw ? 'raw' : 'ema',
  });
  if (!o.weights) process.stderr.write('warning: no --weights given: using random weights\n');
  if (report.missing.length)
    process.stderr.write(
      `warning: ${report.missing.length} weights missing (e.g. ${report.missing.slice(0, 3).join(', ')})\n`,
    );
  if (report.unexpected.length)
    process.stderr.write(`note: ${report.unexpected.length} unused tensors in the weights file\n`);
  return tokenizer;
}

/** A one-line progress bar on stderr (only on a TTY). */
function progress(total: number, label: string): (done: number) => void {
  const tty = process.stderr.isTTY;
  return (done) => {
    if (!tty) return;
    const w = 30;
    const f = Math.round((done / total) * w);
    process.stderr.write(
      `\r${label} [${'#'.repeat(f)}${'.'.repeat(w - f)}] ${done}/${total}${done === total ? '\n' : ''}`,
    );
  };
}

function batches<T>(xs: T[], n: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < xs.length; i += n) out.push(xs.slice(i, i + n));
  return out;
}

/** Builds the `mergevq` command (exported for tests and embedding). */
export function createProgram(): Command {
  const program = new Command();
  program
    .name('mergevq')
    .description('MergeVQ image tokenizer: token merging + lookup-free quantization, on a native core')
    .version('0.1.0');

  withModelOptions(program.command('reconstruct'))
    .description('encode and decode images; writes <out>/<name>.png and a grid (original over reconstruction)')
    .argument('<images...>', 'PNG/JPEG/WebP files')
    .option('-o, --out <dir>', 'output folder', 'reconstructions')
    .option('--learned', 'restore the full grid with the learned source recovery instead of the true source')
    .action(async (images: string[], o: ModelOpts & { out: string; learned?: boolean }) => {
      const tok = await model(o);
      mkdirSync(o.out, { recursive: true });
      const R = tok.config.ddconfig.resolution;
      const tick = progress(images.length, 'reconstruct');
      let done = 0;
      for (const group of batches(images, o.batch)) {
        const x = await loadImages(group, R);
        const res = await tok.reconstruct(x, { keep: o.keep, source: o.learned ? 'learned' : 'given' });
        for (let i = 0; i < group.length; ++i) {
          const name = basename(group[i]!, extname(group[i]!));
          writeFileSync(join(o.out, `${name}.png`), await encodeImage(res.images, { index: i }));
        }
        writeFileSync(join(o.out, `grid-${done}.png`), await imageGrid([x, res.images]));
        done += group.length;
        tick(done);
      }
    });

  withModelOptions(program.command('encode'))
    .description('encode images to tokens (indices, source map, keep count) as JSON or safetensors')
    .argument('<images...>', 'PNG/JPEG/WebP files')
    .option('-o, --out <file>', 'output .json or .safetensors', 'tokens.json')
    .action(async (images: string[], o: ModelOpts & { out: string }) => {
      const tok = await model(o);
      const R = tok.config.ddconfig.resolution;
      const tick = progress(images.length, 'encode');
      const indices: bigint[][] = [];
      const sources: bigint[][] = [];
      let keep = 0;
      for (const group of batches(images, o.batch)) {
        const res = await tok.encode(await loadImages(group, R), { keep: o.keep });
        keep = res.keep;
        const idx = res.indices.toArray<'int64'>();
        const src = res.source.toArray<'int64'>();
        const L = tok.fullNum;
        for (let i = 0; i < group.length; ++i) {
          indices.push(Array.from(idx.subarray(i * keep, (i + 1) * keep)));
          sources.push(Array.from(src.subarray(i * L, (i + 1) * L)));
        }
        tick(indices.length);
      }
      if (o.out.endsWith('.safetensors')) {
        const B = indices.length;
        await writeSafetensors(
          o.out,
          {
            indices: Tensor.from(BigInt64Array.from(indices.flat()), [B, keep]),
            source: Tensor.from(BigInt64Array.from(sources.flat()), [B, tok.fullNum]),
          },
          { keep: String(keep), images: JSON.stringify(images) },
        );
      } else {
        const doc = {
          keep,
          images,
          indices: indices.map((r) => r.map(Number)),
          source: sources.map((r) => r.map(Number)),
        };
        writeFileSync(o.out, JSON.stringify(doc) + '\n');
      }
    });

  withModelOptions(program.command('decode'))
    .description('decode tokens written by `mergevq encode` to PNG images')
    .argument('<tokens>', 'a .json or .safetensors file from `mergevq encode`')
    .option('-o, --out <dir>', 'output folder', 'decoded')
    .option('--learned', 'restore the full grid with the learned source recovery (ignores the saved source)')
    .action(async (file: string, o: ModelOpts & { out: string; learned?: boolean }) => {
      const tok = await model(o);
      let indices: Tensor;
      let source: Tensor;
      if (file.endsWith('.safetensors')) {
        const f = await readSafetensors(file);
        indices = await f.tensorAsync('indices');
        source = await f.tensorAsync('source');
        await f.closeAsync();
      } else {
        const doc = JSON.parse(readFileSync(file, 'utf8')) as { keep: number; indices: number[][]; source: number[][] };
        indices = Tensor.from(BigInt64Array.from(doc.indices.flat().map(BigInt)), [doc.indices.length, doc.keep]);
        source = Tensor.from(BigInt64Array.from(doc.source.flat().map(BigInt)), [doc.source.length, tok.fullNum]);
      }
      mkdirSync(o.out, { recursive: true });
      const res = await tok.decode({ indices, source: o.learned ? 'learned' : source });
      for (let i = 0; i < indices.shape[0]!; ++i)
        writeFileSync(join(o.out, `${i}.png`), await encodeImage(res.images, { index: i }));
    });

  program
    .command('inspect')
    .description('print a config: geometry, parameter count, keep-count candidates and merge schedules')
    .requiredOption('-c, --config <yaml>', "the reference's YAML config")
    .option('--json', 'machine-readable output')
    .action(async (o: { config: string; json?: boolean }) => {
      const { MergeVQTokenizer } = await import('../tokenizer/tokenizer.js');
      const tok = MergeVQTokenizer.fromConfig(o.config);
      const info = {
        config: o.config,
        parameters: tok.store.count(),
        fullTokens: tok.fullNum,
        defaultKeep: tok.defaultKeep,
        embedDim: tok.encoder.geo.embedDim,
        heads: tok.encoder.geo.heads,
        isotropic: tok.encoder.geo.isotropic,
        learnedRecovery: tok.recovery !== null,
        candidates: tok.candidates.keep.map((k, i) => ({
          keep: k,
          r: tok.candidates.r[i],
          cumulativeP: tok.candidates.cumulative[i],
          schedule: tok.mergeSchedule(k),
        })),
      };
      if (o.json) {
        process.stdout.write(JSON.stringify(info, null, 2) + '\n');
        return;
      }
      process.stdout.write(
        `${o.config}\n  parameters ${(info.parameters / 1e6).toFixed(1)}M, L = ${info.fullTokens}, default K = ${info.defaultKeep}, ` +
          `C = ${info.embedDim}, heads ${info.heads}${info.isotropic ? ', isotropic' : ''}${info.learnedRecovery ? ', learned recovery' : ''}\n`,
      );
      for (const c of info.candidates)
        process.stdout.write(
          `  K ${String(c.keep).padStart(4)}  r ${String(c.r).padStart(3)}  P<= ${c.cumulativeP}  per block ${c.schedule.join(' ')}\n`,
        );
    });

  withModelOptions(program.command('source-map'))
    .description('paint each full-grid cell by its merge group over the image (PNG)')
    .argument('<image>', 'a PNG/JPEG/WebP file')
    .option('-o, --out <file>', 'output PNG', 'source-map.png')
    .action(async (image: string, o: ModelOpts & { out: string }) => {
      const tok = await model(o);
      const x = await loadImages([image], tok.config.ddconfig.resolution);
      const res = await tok.encode(x, { keep: o.keep });
      writeFileSync(o.out, await sourceMapImage(x, res.source));
    });

  program
    .command('convert')
    .description('convert a Lightning .ckpt / .pt to safetensors with the reference names (EMA weights by default)')
    .argument('<checkpoint>', '.ckpt or .pt')
    .argument('<out>', '.safetensors')
    .option('--raw', 'take the raw weights instead of the EMA copy')
    .action(async (ckpt: string, out: string, o: { raw?: boolean }) => {
      const tensors = await readWeights(ckpt, { prefer: o.raw ? 'raw' : 'ema' });
      const keep = [...tensors].filter(([k]) => /^(encoder|decoder|recovery|quantize|transformer)\./.test(k));
      await writeSafetensors(out, Object.fromEntries(keep.length ? keep : [...tensors]));
      process.stderr.write(`wrote ${keep.length || tensors.size} tensors to ${out}\n`);
    });

  addTrainCommands(program);
  addEvalCommands(program);
  addGenerateCommands(program);
  return program;
}
