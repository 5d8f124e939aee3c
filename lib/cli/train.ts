/**
 * `mergevq train-tokenizer` and `mergevq train-generator` (stage 2, below): stage-1 training from a YAML file in the reference's format (the
 * model's `ddconfig` / `k2lconfig` / `lossconfig.params` / learning_rate / lr_drop_epoch /
 * use_ema / accumulate_grad_batches, `trainer.max_epochs`) plus a `data:` section for local data.
 *
 * Everything goes to the run folder: `state.safetensors` (+ `.prev`, the resumable training
 * state), `log.jsonl` (every step's values), `loss.png` (curves), `samples/step-N.png`
 * (originals over EMA reconstructions of a fixed batch), `tokenizer.safetensors` (EMA weights
 * with the reference's names) and a copy of the config. SIGINT (Ctrl-C) finishes the step, saves
 * the state and exits; `--resume` continues a run exactly where its state left it.
 */
import { type Command, InvalidArgumentError } from 'commander';
import { appendFileSync, copyFileSync, existsSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { MergeVQError } from '../errors.js';
import { imageGrid } from '../io/image.js';
import { writeFile } from 'node:fs/promises';
import { runAsync } from '../graph.js';
import { normalizeConfig } from '../tokenizer/config.js';
import { MergeVQTokenizer } from '../tokenizer/tokenizer.js';
import { DataLoader, fashionMnistDataset, type Dataset } from '../data/loader.js';
import { ImageFolderDataset } from '../data/folder.js';
import { TokenizerTrainer, type TokenizerStepLog } from '../train/tokenizer-trainer.js';
import { ARTrainer, type ARStepLog } from '../train/ar-trainer.js';
import { extractCodes, readCodes, writeCodes } from '../train/codes.js';
import { MergeVQGPT } from '../generator/gpt.js';
import { MERGEAR_WINDOW, MergeARGPT } from '../generator/mergear.js';
import { parseGPTConfigYaml } from '../generator/config.js';
import { loadTokenizer } from '../tokenizer/load.js';
import { writeCurvesPng } from '../train/plot.js';

function int(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`expected a non-negative integer, got '${v}'`);
  return n;
}

type Obj = Record<string, unknown>;
const obj = (v: unknown): Obj => (v && typeof v === 'object' && !Array.isArray(v) ? (v as Obj) : {});

/** The training settings a YAML file holds (reference keys), checked. */
export interface TokenizerRunConfig {
  modelArgs: Obj;
  loss: Obj;
  learningRate: number;
  lrDropEpoch: number[];
  lrDropRate: number;
  useEma: boolean;
  accumulate: number;
  maxEpochs: number;
  data: { dataset: string; batchSize: number; size: number; mode: 'pad' | 'resize'; channels: 1 | 3; flip: boolean };
}

/** Reads a stage-1 training YAML (the reference's layout, plus `data:`). */
export function readTokenizerRunConfig(path: string): TokenizerRunConfig {
  if (!existsSync(path) || !statSync(path).isFile())
    throw new MergeVQError(`--config: no such file: ${path}`, 'ERR_NOT_FOUND');
  let doc: Obj;
  try {
    doc = obj(parseYaml(readFileSync(path, 'utf8')));
  } catch (e) {
    throw new MergeVQError(`--config ${path}: invalid YAML: ${(e as Error).message}`, 'ERR_BAD_CONFIG');
  }
  const args = obj(obj(doc.model).init_args);
  if (!args.ddconfig) throw new MergeVQError(`--config ${path}: no model.init_args.ddconfig`, 'ERR_BAD_CONFIG');
  const lossParams = obj(obj(args.lossconfig).params);
  const data = obj(doc.data);
  const dd = obj(args.ddconfig);
  const num = (v: unknown, d: number) =>
    typeof v === 'number' && Number.isFinite(v)
      ? v
      : typeof v === 'string' && v.trim() !== '' && Number.isFinite(Number(v))
        ? Number(v)
        : d;
  const channels = num(data.channels, num(dd.in_channels, 3));
  if (channels !== 1 && channels !== 3)
    throw new MergeVQError(`--config ${path}: data.channels must be 1 or 3`, 'ERR_BAD_CONFIG');
  const mode = data.mode === 'resize' ? 'resize' : 'pad';
  return {
    modelArgs: args,
    loss: lossParams,
    learningRate: num(args.learning_rate, 1e-4),
    lrDropEpoch: Array.isArray(args.lr_drop_epoch)
      ? (args.lr_drop_epoch as unknown[]).map((e) => num(e, NaN)).filter(Number.isFinite)
      : [],
    lrDropRate: num(args.lr_drop_rate, 0.1),
    useEma: args.use_ema !== false,
    accumulate: Math.max(1, Math.trunc(num(args.accumulate_grad_batches, 1))),
    maxEpochs: Math.max(1, Math.trunc(num(obj(doc.trainer).max_epochs, 1))),
    data: {
      dataset: typeof data.dataset === 'string' ? data.dataset : 'fashion-mnist',
      batchSize: Math.max(1, Math.trunc(num(data.batch_size, 16))),
      size: Math.trunc(num(data.size, num(dd.resolution, 32))),
      mode,
      channels: channels as 1 | 3,
      flip: data.flip === true,
    },
  };
}

async function openDataset(
  spec: TokenizerRunConfig['data'],
  split: 'train' | 'test',
  seedFolder?: string,
): Promise<Dataset> {
  if (spec.dataset === 'fashion-mnist')
    return fashionMnistDataset(split, {
      size: spec.size,
      mode: spec.mode,
      channels: spec.channels,
      flip: split === 'train' && spec.flip,
    });
  const root = seedFolder ?? spec.dataset;
  return ImageFolderDataset.open(root, {
    size: spec.size,
    crop: split === 'train' ? 'random' : 'center',
    flip: split === 'train' && spec.flip,
    channels: spec.channels,
  });
}

/** Bar, rate and ETA on one line (stderr on a TTY; every `every` steps as a plain line otherwise). */
function reporter(total: number, batch: number) {
  const t0 = performance.now();
  let first = -1;
  return (l: TokenizerStepLog, done: number) => {
    if (first < 0) first = done - 1;
    const secs = (performance.now() - t0) / 1000;
    const rate = (done - first) / Math.max(secs, 1e-9);
    const eta = (total - done) / Math.max(rate, 1e-9);
    const w = 24;
    const f = Math.round((done / total) * w);
    const loss = l.values.total_loss ?? NaN;
    const line = `[${'#'.repeat(f)}${'.'.repeat(w - f)}] ${done}/${total} step ${l.step} ${rate.toFixed(2)} steps/s ${(rate * batch).toFixed(1)} img/s loss ${loss.toFixed(4)} rec ${(l.values.reconstruct_loss ?? NaN).toFixed(4)} K ${l.keep} ETA ${fmt(eta)}`;
    if (process.stderr.isTTY) process.stderr.write(`\r${line}`);
    else if (done % 50 === 0 || done === total) process.stderr.write(`${line}\n`);
  };
}
function fmt(s: number): string {
  if (!Number.isFinite(s)) return '?';
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return h ? `${h}h${String(m).padStart(2, '0')}m` : `${m}m${String(Math.floor(s % 60)).padStart(2, '0')}s`;
}

/** Loss curves from log.jsonl (a few series, smoothed by a running mean over 20 steps). */
async function drawCurves(logPath: string, out: string): Promise<void> {
  const lines = readFileSync(logPath, 'utf8').split('\n').filter(Boolean);
  const keys = ['reconstruct_loss', 'commit_loss', 'cls_loss', 'source_loss', 'disc/d_loss', 'g_loss'];
  const series = keys.map((k) => ({ name: k, points: [] as [number, number][] }));
  const win = keys.map(() => [] as number[]);
  for (const line of lines) {
    const l = JSON.parse(line) as TokenizerStepLog;
    keys.forEach((k, i) => {
      const v = l.values[k];
      if (typeof v !== 'number') return;
      const w = win[i]!;
      w.push(v);
      if (w.length > 20) w.shift();
      series[i]!.points.push([l.step, w.reduce((a, b) => a + b, 0) / w.length]);
    });
  }
  await writeCurvesPng(
    out,
    series.filter((s) => s.points.length > 0),
    { title: 'tokenizer training (running mean of 20 steps)', logY: true, yTitle: 'loss' },
  );
}

/**
 * Ctrl-C finishes the current step and saves (the signal aborts); a second Ctrl-C quits at once.
 * `dispose()` removes the handler.
 */
function stopOnSigint(): { signal: AbortSignal; dispose(): void } {
  const ac = new AbortController();
  const onSigint = () => {
    if (ac.signal.aborted) process.exit(130);
    process.stderr.write('\ninterrupted: finishing the step and saving (Ctrl-C again to quit without saving)\n');
    ac.abort();
  };
  process.on('SIGINT', onSigint);
  return { signal: ac.signal, dispose: () => process.off('SIGINT', onSigint) };
}

/** Adds `train-tokenizer` and `train-generator` to the program. */
export function addTrainCommands(program: Command): void {
  program
    .command('train-tokenizer')
    .description('train a MergeVQ tokenizer (generator + discriminator) from a YAML config; resumable, Ctrl-C saves')
    .requiredOption('-c, --config <yaml>', 'training config (the reference layout plus a data: section)')
    .requiredOption('-o, --out <dir>', 'run folder (state, logs, curves, samples, exported weights)')
    .option('--steps <n>', 'stop after this many more steps (default: the config epochs)', int)
    .option('--resume', 'continue the run in --out from its saved state')
    .option('--data <dir>', 'an image folder instead of the config dataset')
    .option('--save-every <n>', 'save the state every n steps', int, 200)
    .option('--sample-every <n>', 'reconstruction grid and curves every n steps', int, 500)
    .option('--seed <n>', 'seed of initialization, data order and keep draws', int, 0)
    .option('--async', 'run every op as its own job on the libuv pool (default: a step runs on the main thread)')
    .action(
      async (o: {
        config: string;
        out: string;
        steps?: number;
        resume?: boolean;
        data?: string;
        saveEvery: number;
        sampleEvery: number;
        seed: number;
        async?: boolean;
      }) => {
        const cfg = readTokenizerRunConfig(o.config);
        if (o.data) cfg.data.dataset = o.data;
        const out = resolve(o.out);
        const statePath = join(out, 'state.safetensors');
        if (existsSync(statePath) && !o.resume)
          throw new MergeVQError(
            `--out ${out} holds a run already: add --resume to continue it, or choose another folder`,
            'ERR_EXISTS',
          );
        if (o.resume && !existsSync(statePath) && !existsSync(`${statePath}.prev`))
          throw new MergeVQError(`--resume: no saved state in ${out}`, 'ERR_NOT_FOUND');
        mkdirSync(join(out, 'samples'), { recursive: true });
        if (!o.resume) copyFileSync(o.config, join(out, 'config.yaml'));

        const tok = new MergeVQTokenizer(normalizeConfig(cfg.modelArgs));
        tok.store.initRandom(o.seed);
        const dataset = await openDataset(cfg.data, 'train');
        const trainer = new TokenizerTrainer({
          tokenizer: tok,
          data: { dataset, batchSize: cfg.data.batchSize, seed: o.seed },
          loss: { disc_in_channels: tok.config.ddconfig.out_ch, ...cfg.loss },
          learningRate: cfg.learningRate,
          lrDropEpoch: cfg.lrDropEpoch,
          lrDropRate: cfg.lrDropRate,
          useEma: cfg.useEma,
          accumulate: cfg.accumulate,
          seed: o.seed,
          sync: !o.async,
        });
        if (o.resume) {
          const r = await trainer.resume(statePath);
          process.stderr.write(`resumed from ${r.loadedFrom} (${r.which}) at step ${trainer.globalStep}\n`);
        }
        // a fixed batch of held-out images for the sample grids
        const evalSet = await openDataset(cfg.data, 'test', o.data);
        const evalLoader = new DataLoader(evalSet, { batchSize: 8, seed: 1234, shuffle: true });
        const evalBatch = await evalLoader.next();
        await evalLoader.close();

        const perEpoch = trainer.loader.batchesPerEpoch;
        const totalMicro = cfg.maxEpochs * perEpoch;
        const doneMicro = trainer.globalStep * cfg.accumulate;
        const steps = o.steps ?? Math.max(0, totalMicro - doneMicro);
        const stop = stopOnSigint();
        const logPath = join(out, 'log.jsonl');
        const report = reporter(steps, cfg.data.batchSize);
        let n = 0;
        const sample = async (tag: string) => {
          await trainer.withEma(async () => {
            const enc = await runAsync(tok.encodeProgram(evalBatch.images, { keep: tok.defaultKeep }));
            const dec = await tok.decode({ indices: enc.indices, source: enc.source });
            const rows = [evalBatch.images, dec.images];
            if (tok.recovery) rows.push((await tok.decode({ indices: enc.indices, source: 'learned' })).images);
            await writeFile(join(out, 'samples', `step-${tag}.png`), await imageGrid(rows));
          });
          await drawCurves(logPath, join(out, 'loss.png'));
        };
        const save = async () => {
          await trainer.save(statePath);
          await trainer.exportWeights(join(out, 'tokenizer.safetensors'));
        };
        await trainer.fit({
          steps,
          signal: stop.signal,
          onStep: async (l) => {
            ++n;
            appendFileSync(logPath, `${JSON.stringify(l)}\n`);
            report(l, n);
            const stepDone = trainer.globalStep;
            if (n % o.saveEvery === 0) await save();
            if (n % o.sampleEvery === 0) await sample(String(stepDone).padStart(6, '0'));
            // let signals and I/O through between steps
            await new Promise<void>((r) => setImmediate(r));
          },
        });
        if (process.stderr.isTTY) process.stderr.write('\n');
        await save();
        await sample(String(trainer.globalStep).padStart(6, '0'));
        await trainer.close();
        stop.dispose();
        process.stdout.write(
          `trained ${n} steps (global step ${trainer.globalStep}); wrote ${statePath}, ${join(out, 'tokenizer.safetensors')}, ${logPath}, ${join(out, 'loss.png')}\n`,
        );
      },
    );

  program
    .command('train-generator')
    .description(
      'train the class-conditional AR generator (MergeAR by default) on codes of a trained tokenizer; resumable, Ctrl-C saves',
    )
    .requiredOption('-c, --config <yaml>', 'generator config (the reference stage-2 layout plus mergear: and data:)')
    .requiredOption('-o, --out <dir>', 'run folder (codes, state, logs, curves, exported weights)')
    .option('--tokenizer-config <yaml>', 'the tokenizer config (to extract codes)')
    .option('--tokenizer <weights>', 'the trained tokenizer weights (to extract codes)')
    .option('--codes <file>', 'pre-extracted codes (safetensors from an earlier run) instead of extracting')
    .option('--limit <n>', 'extract codes of the first n training images only', int)
    .option('--steps <n>', 'stop after this many more steps (default: the config epochs)', int)
    .option('--resume', 'continue the run in --out from its saved state')
    .option('--save-every <n>', 'save the state every n steps', int, 500)
    .option('--seed <n>', 'seed of initialization, order, label dropout and keep draws', int, 0)
    .option('--async', 'run every op as its own job on the libuv pool')
    .action(
      async (o: {
        config: string;
        out: string;
        tokenizerConfig?: string;
        tokenizer?: string;
        codes?: string;
        limit?: number;
        steps?: number;
        resume?: boolean;
        saveEvery: number;
        seed: number;
        async?: boolean;
      }) => {
        if (!existsSync(o.config) || !statSync(o.config).isFile())
          throw new MergeVQError(`--config: no such file: ${o.config}`, 'ERR_NOT_FOUND');
        const text = readFileSync(o.config, 'utf8');
        const gcfg = parseGPTConfigYaml(text, o.config);
        const doc = obj(parseYaml(text));
        const args = obj(obj(doc.model).init_args);
        const mer = obj(doc.mergear);
        const data = obj(doc.data);
        const num = (v: unknown, d: number) =>
          typeof v === 'number' && Number.isFinite(v)
            ? v
            : typeof v === 'string' && Number.isFinite(Number(v))
              ? Number(v)
              : d;
        const out = resolve(o.out);
        const statePath = join(out, 'state.safetensors');
        if (existsSync(statePath) && !o.resume)
          throw new MergeVQError(
            `--out ${out} holds a run already: add --resume to continue it, or choose another folder`,
            'ERR_EXISTS',
          );
        if (o.resume && !existsSync(statePath) && !existsSync(`${statePath}.prev`))
          throw new MergeVQError(`--resume: no saved state in ${out}`, 'ERR_NOT_FOUND');
        mkdirSync(out, { recursive: true });
        const codesPath = o.codes ?? join(out, 'codes.safetensors');
        if (!existsSync(codesPath)) {
          if (!o.tokenizerConfig || !o.tokenizer)
            throw new MergeVQError(
              'give --codes, or --tokenizer-config and --tokenizer to extract them',
              'ERR_BAD_ARGUMENT',
            );
          const { tokenizer } = await loadTokenizer({ config: o.tokenizerConfig, weights: o.tokenizer, strict: true });
          const dd = tokenizer.config.ddconfig;
          const spec = {
            dataset: typeof data.dataset === 'string' ? data.dataset : 'fashion-mnist',
            batchSize: 64,
            size: dd.resolution,
            mode: (data.mode === 'resize' || (data.mode !== 'pad' && dd.resolution < 28) ? 'resize' : 'pad') as
              | 'pad'
              | 'resize',
            channels: (dd.in_channels === 1 ? 1 : 3) as 1 | 3,
            flip: false,
          };
          const ds = await openDataset(spec, 'train');
          const loader = new DataLoader(ds, { batchSize: 64, seed: o.seed, shuffle: false });
          const t0 = performance.now();
          const codes = await extractCodes(tokenizer, loader, {
            seed: o.seed,
            ...(o.limit ? { limit: o.limit } : {}),
            onProgress: (d, t) => process.stderr.isTTY && process.stderr.write(`\rextracting codes ${d}/${t}`),
          });
          await loader.close();
          await writeCodes(codesPath, codes);
          process.stderr.write(
            `\nextracted ${codes.meta.count} code sequences in ${((performance.now() - t0) / 1000).toFixed(1)} s -> ${codesPath}\n`,
          );
        }
        const codes = await readCodes(codesPath);
        const useMergeAR = mer.enabled !== false;
        const model = useMergeAR
          ? new MergeARGPT(gcfg, {
              numCandidates: codes.meta.keepCandidates.length,
              window: Math.trunc(num(mer.window, MERGEAR_WINDOW)),
            })
          : new MergeVQGPT(gcfg);
        model.store.initRandom(o.seed);
        const trainer = new ARTrainer({
          model,
          codes,
          batchSize: Math.max(1, Math.trunc(num(data.batch_size, 64))),
          seed: o.seed,
          learningRate: num(args.learning_rate, 3e-4),
          weightDecay: num(args.weight_decay, 0.05),
          twde: num(args.twde, 0),
          wp: num(args.wp, 0),
          wp0: num(args.wp0, 0.005),
          wpe: num(args.wpe, 0.01),
          maxEpochs: Math.max(1, Math.trunc(num(obj(doc.trainer).max_epochs, 1))),
          labelDropout: gcfg.token_drop,
          sync: !o.async,
        });
        if (o.resume) {
          const r = await trainer.resume(statePath);
          process.stderr.write(`resumed from ${r.loadedFrom} (${r.which}) at step ${trainer.globalStep}\n`);
        }
        const logPath = join(out, 'log.jsonl');
        const stop = stopOnSigint();
        const save = async () => {
          await trainer.save(statePath);
          await trainer.exportWeights(join(out, 'generator.safetensors'));
        };
        const curves = async () => {
          const pts = readFileSync(logPath, 'utf8')
            .split('\n')
            .filter(Boolean)
            .map((l) => JSON.parse(l) as ARStepLog);
          const smooth = (key: 'loss' | 'lossPre' | 'lossPost') => {
            const w: number[] = [];
            return pts.map((p) => {
              w.push(p[key]);
              if (w.length > 20) w.shift();
              return [p.step, w.reduce((a, b) => a + b, 0) / w.length] as [number, number];
            });
          };
          await writeCurvesPng(
            join(out, 'loss.png'),
            [
              { name: 'CE(pre) + CE(post)', points: smooth('loss') },
              { name: 'CE(pre)', points: smooth('lossPre') },
              { name: 'CE(post)', points: smooth('lossPost') },
            ],
            { title: 'generator training (running mean of 20 steps)', yTitle: 'cross-entropy' },
          );
        };
        const steps = o.steps ?? Number.MAX_SAFE_INTEGER;
        const t0 = performance.now();
        let n = 0;
        await trainer.fit({
          steps,
          signal: stop.signal,
          onStep: async (l) => {
            ++n;
            appendFileSync(logPath, `${JSON.stringify(l)}\n`);
            if (n % 50 === 0 || process.stderr.isTTY) {
              const rate = n / ((performance.now() - t0) / 1000);
              const line = `step ${l.step} epoch ${l.epoch} loss ${l.loss.toFixed(4)} (pre ${l.lossPre.toFixed(3)}, post ${l.lossPost.toFixed(3)}) lr ${l.lr.toExponential(2)} ${rate.toFixed(2)} steps/s`;
              process.stderr.write(process.stderr.isTTY ? `\r${line}` : `${line}\n`);
            }
            if (n % o.saveEvery === 0) {
              await save();
              await curves();
            }
            await new Promise<void>((r) => setImmediate(r));
          },
        });
        await save();
        if (n > 0) await curves();
        stop.dispose();
        process.stdout.write(
          `trained ${n} steps (global step ${trainer.globalStep}); wrote ${statePath}, ${join(out, 'generator.safetensors')}, ${logPath}\n`,
        );
      },
    );
}
