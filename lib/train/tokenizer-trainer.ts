/**
 * Training the tokenizer (stage 1) as the reference's MergeVQModel.training_step does it, with
 * manual optimization, one batch at a time:
 *
 *   1. pick this step's keep count K (the reference's cycle u = (batch_idx mod 100) / 100 over the
 *      candidate distribution, or a seeded random draw);
 *   2. generator pass, recorded on a Tape: encode with K's merge schedule, LFQ, unmerge with the
 *      true source, decode; the objective's generator side (reconstruction, perceptual, GAN with a
 *      train-mode discriminator call, LFQ aux, commitment, class loss) plus this project's
 *      source-recovery loss; backward, accumulate, optional global-norm clipping, Adam step;
 *   3. discriminator pass on the real images and the (detached) reconstructions, LeCAM;
 *      backward, Adam step on the discriminator (its gradients come from d_loss only);
 *   4. EMA of every trainable parameter (tokenizer and discriminator, as LitEma(self));
 *   5. at the end of each epoch, the lr drops of `lr_drop_epoch`.
 *
 * Every random choice is a function of the seed and the saved state, so a run that is saved and
 * resumed sees the same batches, keep counts and updates as an uninterrupted one, bit for bit.
 */
import { MergeVQError, checkKeys, optionKeys, rangeError, typeError } from '../errors.js';
import { Tape } from '../autograd.js';
import { runAsync, runSync, type Program } from '../graph.js';
import { writeSafetensors } from '../io/safetensors.js';
import type { Tensor } from '../tensor.js';
import { tokenizerForward, type ForwardTerms } from '../tokenizer/train.js';
import type { MergeVQTokenizer } from '../tokenizer/tokenizer.js';
import { add, scale } from '../ops/tensor.js';
import { DataLoader, type Batch, type Dataset, type LoaderPosition } from '../data/loader.js';
import { VQLPIPSWithDiscriminator, type PerceptualLoss } from './objective.js';
import { Adam, GradAccumulator, clipGradNorm, type AdamStateMeta, type ParamSource } from './optim.js';
import { LitEma } from './ema.js';
import { lrDropLr } from './schedule.js';
import { TrainRng, type RngState } from './rng.js';
import { EXPORT_WEIGHTS_KEYS, loadTrainingState, saveTrainingState, type ExportWeightsOptions } from './state.js';

/** The data of a {@link TokenizerTrainer} and its loader settings. */
export interface TokenizerTrainData {
  dataset: Dataset;
  batchSize: number;
  /** Seed of the data order (default: the trainer's seed). */
  seed?: number;
  /** Batches decoded ahead (default 2). */
  prefetch?: number;
  /** Drop each epoch's incomplete last batch (default true). */
  dropLast?: boolean;
}
const TOKENIZER_TRAIN_DATA_KEYS = optionKeys<TokenizerTrainData>()([
  'dataset',
  'batchSize',
  'seed',
  'prefetch',
  'dropLast',
]);

/** Options of {@link TokenizerTrainer.fit}. */
export interface TokenizerFitOptions {
  /** Micro-batches to train on. */
  steps: number;
  /** Checked between batches: an aborted signal stops the run (the logs so far are returned). */
  signal?: AbortSignal;
  /** Called with each step's log (awaited). */
  onStep?: (log: TokenizerStepLog) => void | Promise<void>;
}
const TOKENIZER_FIT_KEYS = optionKeys<TokenizerFitOptions>()(['steps', 'signal', 'onStep']);

/** Options of {@link TokenizerTrainer}. Defaults are the reference's gpu_s1 settings. */
export interface TokenizerTrainOptions {
  /** The model to train (weights loaded or `initRandom`-ed by the caller). */
  tokenizer: MergeVQTokenizer;
  /** The training data and its loader settings. */
  data: TokenizerTrainData;
  /** The objective's loss_kwargs (snake_case, as the YAML's lossconfig.params). */
  loss?: Record<string, unknown>;
  /** The perceptual distance (LPIPS with weights); required when loss.perceptual_weight > 0. */
  perceptual?: PerceptualLoss | null;
  /** Adam lr of both optimizers (default 1e-4). */
  learningRate?: number;
  /** Adam betas (default [0.5, 0.9]). */
  betas?: [number, number];
  /** 1-based epochs after which lr *= lrDropRate (default none). */
  lrDropEpoch?: number[];
  lrDropRate?: number;
  /** EMA of the weights (default true, decay 0.999). */
  useEma?: boolean;
  emaDecay?: number;
  /** Micro-batches per optimizer step (default 1). */
  accumulate?: number;
  /** Global-norm clipping of each optimizer's gradients (default none). */
  gradientClip?: number | null;
  /** 'cycle' (the reference's deterministic cycle, default) or 'random' (seeded draws). */
  keepSampling?: 'cycle' | 'random';
  /** Always train at this keep count (one of the candidates) instead of sampling. */
  fixedKeep?: number | null;
  /** Weight of the learned recovery's loss (default 0.5; ignored without a recovery model). */
  sourceWeight?: number;
  /** Label smoothing of the class loss (default 0.1). */
  labelSmoothing?: number;
  /** Seed of the discriminator's initialization and of the keep draws (default 0). */
  seed?: number;
  /** Run each step's ops on the calling thread (faster for small models; blocks while a step runs). */
  sync?: boolean;
}

/** The logged values of one step. */
/** Frees every tensor of a gradient map (each once). */
function disposeValues(m: ReadonlyMap<unknown, Tensor>): void {
  for (const t of m.values()) if (!t.disposed) t.dispose();
}

export interface TokenizerStepLog {
  step: number;
  epoch: number;
  keep: number;
  lr: number;
  /** Generator side: total plus every term the objective logs; discriminator side prefixed `disc/`. */
  values: Record<string, number>;
  ms: number;
}

const TOKENIZER_TRAIN_KEYS = optionKeys<TokenizerTrainOptions>()([
  'tokenizer',
  'data',
  'loss',
  'perceptual',
  'learningRate',
  'betas',
  'lrDropEpoch',
  'lrDropRate',
  'useEma',
  'emaDecay',
  'accumulate',
  'gradientClip',
  'keepSampling',
  'fixedKeep',
  'sourceWeight',
  'labelSmoothing',
  'seed',
  'sync',
]);

const DISC = 'loss.discriminator.';

/** Scalar values of a log record (tensors read back, numbers kept). */
function scalars(log: Record<string, unknown>, prefix = ''): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(log)) {
    if (typeof v === 'number') out[prefix + k] = v;
    else if (v && typeof v === 'object' && 'numel' in v && (v as Tensor).numel === 1)
      out[prefix + k] = (v as Tensor).item();
  }
  return out;
}

/** Trains a MergeVQ tokenizer with its discriminator; see the module comment for one step. */
export class TokenizerTrainer {
  readonly tokenizer: MergeVQTokenizer;
  readonly objective: VQLPIPSWithDiscriminator;
  readonly optGen: Adam;
  readonly optDisc: Adam;
  readonly ema: LitEma | null;
  readonly loader: DataLoader;
  /** Optimizer steps taken (the reference's global_step). */
  globalStep = 0;
  /** Micro-batches seen (batch_idx for the keep cycle counts within the epoch, as the reference). */
  private microInEpoch = 0;
  private epoch = 0;
  private readonly genNames: string[];
  private readonly discNames: string[];
  private readonly accGen: GradAccumulator;
  private readonly accDisc: GradAccumulator;
  private readonly keepRng: TrainRng;
  private readonly opts: Required<
    Omit<TokenizerTrainOptions, 'perceptual' | 'loss' | 'fixedKeep' | 'gradientClip' | 'lrDropEpoch'>
  > & {
    fixedKeep: number | null;
    gradientClip: number | null;
    lrDropEpoch: number[];
  };
  /** Parameters of the tokenizer and the discriminator by one name space (discriminator under `loss.discriminator.`). */
  readonly params: ParamSource;

  constructor(o: TokenizerTrainOptions) {
    if (o === null || typeof o !== 'object') typeError('options', 'an options object', o);
    checkKeys('TokenizerTrainer options', o, TOKENIZER_TRAIN_KEYS);
    if (!o.tokenizer || typeof o.tokenizer.encoder !== 'object')
      typeError('tokenizer', 'a MergeVQTokenizer', o.tokenizer);
    if (!o.data || typeof o.data !== 'object' || !o.data.dataset) typeError('data', '{ dataset, batchSize }', o.data);
    checkKeys('TokenizerTrainer options.data', o.data, TOKENIZER_TRAIN_DATA_KEYS);
    const seed = o.seed ?? 0;
    this.opts = {
      tokenizer: o.tokenizer,
      data: o.data,
      learningRate: o.learningRate ?? 1e-4,
      betas: o.betas ?? [0.5, 0.9],
      lrDropEpoch: o.lrDropEpoch ?? [],
      lrDropRate: o.lrDropRate ?? 0.1,
      useEma: o.useEma ?? true,
      emaDecay: o.emaDecay ?? 0.999,
      accumulate: o.accumulate ?? 1,
      gradientClip: o.gradientClip ?? null,
      keepSampling: o.keepSampling ?? 'cycle',
      fixedKeep: o.fixedKeep ?? null,
      sourceWeight: o.sourceWeight ?? 0.5,
      labelSmoothing: o.labelSmoothing ?? 0.1,
      seed,
      sync: o.sync ?? false,
    };
    if (!Number.isInteger(this.opts.accumulate) || this.opts.accumulate < 1)
      rangeError('accumulate', 'a positive integer', this.opts.accumulate);
    if (this.opts.keepSampling !== 'cycle' && this.opts.keepSampling !== 'random')
      rangeError('keepSampling', "'cycle' or 'random'", this.opts.keepSampling);
    const tok = o.tokenizer;
    if (this.opts.fixedKeep !== null && !tok.candidates.keep.includes(this.opts.fixedKeep))
      rangeError('fixedKeep', `one of the keep candidates ${tok.candidates.keep.join(', ')}`, this.opts.fixedKeep);
    this.tokenizer = tok;
    const dd = tok.config.ddconfig;
    const loss = { disc_in_channels: dd.out_ch, ...(o.loss ?? {}) };
    this.objective = new VQLPIPSWithDiscriminator(loss, { perceptual: o.perceptual ?? null, discriminatorSeed: seed });
    const disc = this.objective.discriminator;
    this.genNames = tok.store.names();
    this.discNames = disc.paramNames();
    this.params = {
      get: (name: string) => (name.startsWith(DISC) ? disc.store.get(name.slice(DISC.length)) : tok.store.get(name)),
    };
    const discSource: ParamSource = { get: (n: string) => disc.store.get(n) };
    const adam = { lr: this.opts.learningRate, betas: this.opts.betas, eps: 1e-8, weightDecay: 0 };
    this.optGen = new Adam(tok.store, this.genNames, adam);
    this.optDisc = new Adam(discSource, this.discNames, adam);
    this.ema = this.opts.useEma
      ? new LitEma(this.params, [...this.genNames, ...this.discNames.map((n) => DISC + n)], {
          decay: this.opts.emaDecay,
        })
      : null;
    this.accGen = new GradAccumulator();
    this.accDisc = new GradAccumulator();
    this.keepRng = TrainRng.derive(seed, 'keep');
    this.loader = new DataLoader(o.data.dataset, {
      batchSize: o.data.batchSize,
      seed: o.data.seed ?? seed,
      prefetch: o.data.prefetch ?? 2,
      dropLast: o.data.dropLast ?? true,
    });
  }

  private run<T>(p: Program<T>, observe?: Tape['observe']): Promise<T> {
    return this.opts.sync ? Promise.resolve(runSync(p, observe)) : runAsync(p, observe);
  }

  /** The lr of the step about to run. */
  get lr(): number {
    return lrDropLr(this.globalStep, {
      learningRate: this.opts.learningRate,
      stepsPerEpoch: Math.max(1, Math.floor(this.loader.batchesPerEpoch / this.opts.accumulate)),
      lrDropEpoch: this.opts.lrDropEpoch,
      lrDropRate: this.opts.lrDropRate,
    });
  }

  /** The keep count of the next micro-batch. */
  private pickKeep(): number {
    const c = this.tokenizer.candidates;
    if (this.opts.fixedKeep !== null) return this.opts.fixedKeep;
    const u = this.opts.keepSampling === 'cycle' ? (this.microInEpoch % 100) * 0.01 : this.keepRng.next();
    let i = c.cumulative.findIndex((p) => p >= u);
    if (i < 0) i = c.keep.length - 1;
    return c.keep[i]!;
  }

  private namedGrads(names: readonly string[], src: ParamSource, grads: Map<Tensor, Tensor>): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    for (const n of names) {
      const g = grads.get(src.get(n));
      if (g) out.set(n, g);
    }
    return out;
  }

  /**
   * One micro-batch: both passes, and the optimizer steps when `accumulate` micro-batches are in.
   * Returns the step's log.
   */
  async trainBatch(batch: Batch): Promise<TokenizerStepLog> {
    const t0 = performance.now();
    if (batch.epoch !== this.epoch) {
      this.epoch = batch.epoch;
      this.microInEpoch = 0;
    }
    const tok = this.tokenizer;
    const keep = this.pickKeep();
    const acc = this.opts.accumulate;
    const lr = this.lr;
    for (const g of this.optGen.groups) g.lr = lr;
    for (const g of this.optDisc.groups) g.lr = lr;
    const step = this.globalStep;

    // generator pass
    const tape = new Tape();
    const w = {
      cls: this.objective.config.clsLossWeight || 1,
      source: this.opts.sourceWeight,
      labelSmoothing: this.opts.labelSmoothing,
      temperature: 0.01,
    };
    const fwd = await this.run(
      (function* (self: TokenizerTrainer): Program<{ f: ForwardTerms; total: Tensor; log: Record<string, unknown> }> {
        const f = yield* tokenizerForward(tok, batch.images, batch.labels, keep, w);
        const lastLayer =
          self.objective.config.genLossWeight === null ? tok.store.get('decoder.conv_out.weight') : null;
        const g = yield* self.objective.generatorPass({
          inputs: batch.images,
          reconstructions: f.decoded,
          codebookLoss: f.aux,
          perSampleEntropy: f.perSample,
          codebookEntropy: f.codebook,
          commitment: f.commitment,
          clsLoss: f.cls,
          globalStep: step,
          lastLayer,
          tape,
          training: true,
        });
        let total = g.loss;
        if (f.source) total = yield* add(total, yield* scale(f.source, self.opts.sourceWeight));
        return { f, total, log: g.log };
      })(this),
      tape.observe,
    );
    const gradsG = await this.run(tape.backward(fwd.total, null, { free: true }));
    await this.run(this.accGen.add(this.namedGrads(this.genNames, tok.store, gradsG)));
    disposeValues(gradsG);

    // discriminator pass (reconstructions detached inside)
    const dtape = new Tape();
    const dres = await this.run(
      this.objective.discriminatorPass({
        inputs: batch.images,
        reconstructions: fwd.f.decoded,
        globalStep: step,
        training: true,
      }),
      dtape.observe,
    );
    // accumulated gradients are averaged by the accumulator (the reference divides each loss by
    // the count and sums: the same mean)
    const gradsD = await this.run(dtape.backward(dres.loss, null, { free: true }));
    const disc = this.objective.discriminator;
    await this.run(this.accDisc.add(this.namedGrads(this.discNames, { get: (n) => disc.store.get(n) }, gradsD)));
    disposeValues(gradsD);

    ++this.microInEpoch;
    const values: Record<string, number> = { ...scalars(fwd.log), ...scalars(dres.log, 'disc/') };
    if (fwd.f.source) values.source_loss = fwd.f.source.item();
    if (this.accGen.count === acc) {
      const gG = await this.run(this.accGen.mean());
      const gD = await this.run(this.accDisc.mean());
      if (this.opts.gradientClip !== null) {
        values.grad_norm = await this.run(clipGradNorm(gG, this.opts.gradientClip));
        values['disc/grad_norm'] = await this.run(clipGradNorm(gD, this.opts.gradientClip));
      }
      await this.run(this.optGen.step(gG));
      await this.run(this.optDisc.step(gD));
      disposeValues(gG);
      disposeValues(gD);
      this.accGen.reset();
      this.accDisc.reset();
      if (this.ema) await this.run(this.ema.update(this.params));
      ++this.globalStep;
    }
    // Both passes' intermediates go back to the allocator now (not when the GC finds them); the
    // weights and the discriminator's updated running statistics stay.
    const live = [...tok.store.stateDict().values(), ...disc.stateDict().values()];
    tape.dispose(live);
    dtape.dispose(live);
    return { step, epoch: batch.epoch, keep, lr, values, ms: performance.now() - t0 };
  }

  /**
   * Trains for `steps` more micro-batches (or until `signal` aborts, between batches), calling
   * `onStep` with each log. Returns the logs.
   */
  async fit(opts: TokenizerFitOptions): Promise<TokenizerStepLog[]> {
    if (opts === null || typeof opts !== 'object') typeError('opts', '{ steps, signal?, onStep? }', opts);
    checkKeys('TokenizerTrainer.fit options', opts, TOKENIZER_FIT_KEYS);
    if (!Number.isInteger(opts.steps) || opts.steps < 0) rangeError('steps', 'a non-negative integer', opts.steps);
    const logs: TokenizerStepLog[] = [];
    for (let i = 0; i < opts.steps; ++i) {
      if (opts.signal?.aborted) break;
      const batch = await this.loader.next();
      const log = await this.trainBatch(batch);
      logs.push(log);
      await opts.onStep?.(log);
    }
    return logs;
  }

  /** Runs `fn` with the EMA weights in place of the live ones (no-op without EMA). */
  async withEma<T>(fn: () => Promise<T> | T): Promise<T> {
    if (!this.ema) return fn();
    await this.run(this.ema.store(this.params));
    await this.run(this.ema.copyTo(this.params));
    try {
      return await fn();
    } finally {
      await this.run(this.ema.restore(this.params));
    }
  }

  /** Everything a resumed run needs, as one training state. */
  stateTensors(): { tensors: Map<string, Tensor>; meta: Record<string, unknown> } {
    const tensors = new Map<string, Tensor>();
    for (const [n, t] of this.tokenizer.store.stateDict()) tensors.set(`model.${n}`, t);
    for (const [n, t] of this.objective.discriminator.stateDict()) tensors.set(`disc.${n}`, t);
    const g = this.optGen.stateDict();
    const d = this.optDisc.stateDict();
    for (const [n, t] of g.tensors) tensors.set(`opt_gen.${n}`, t);
    for (const [n, t] of d.tensors) tensors.set(`opt_disc.${n}`, t);
    if (this.ema) for (const [n, t] of this.ema.stateDict()) tensors.set(`ema.${n}`, t);
    if (this.accGen.count !== 0)
      throw new MergeVQError('save: a gradient accumulation is in progress; save after an optimizer step', 'ERR_BUSY');
    const meta = {
      kind: 'mergevq-tokenizer-training',
      globalStep: this.globalStep,
      epoch: this.epoch,
      microInEpoch: this.microInEpoch,
      loader: this.loader.position(),
      optGen: g.meta,
      optDisc: d.meta,
      objective: this.objective.state(),
      keepRng: this.keepRng.state(),
      tokenizerConfig: this.tokenizer.config,
    };
    return { tensors, meta: JSON.parse(JSON.stringify(meta)) as Record<string, unknown> };
  }

  /** Saves the training state atomically (the previous one survives as `<path>.prev`). */
  async save(path: string): Promise<void> {
    const s = this.stateTensors();
    await saveTrainingState(path, s);
  }

  /**
   * Restores a state saved by {@link save} into this trainer (built with the same options).
   * Returns which file was loaded (the latest, or the previous one when the latest is damaged).
   */
  async resume(path: string): Promise<{ loadedFrom: string; which: 'latest' | 'previous' }> {
    const st = await loadTrainingState(path);
    const meta = st.meta as Record<string, unknown>;
    if (meta.kind !== 'mergevq-tokenizer-training')
      throw new MergeVQError(`${path}: not a tokenizer training state`, 'ERR_BAD_FILE');
    const pick = (prefix: string) => {
      const m = new Map<string, Tensor>();
      for (const [k, t] of st.tensors) if (k.startsWith(prefix)) m.set(k.slice(prefix.length), t);
      return m;
    };
    this.tokenizer.store.load(pick('model.'), { strict: true });
    this.objective.discriminator.load(pick('disc.'), { strict: true });
    this.optGen.loadStateDict({ tensors: pick('opt_gen.'), meta: meta.optGen as AdamStateMeta });
    this.optDisc.loadStateDict({ tensors: pick('opt_disc.'), meta: meta.optDisc as AdamStateMeta });
    if (this.ema) this.ema.loadStateDict(pick('ema.'));
    this.objective.loadState(meta.objective as ReturnType<VQLPIPSWithDiscriminator['state']>);
    this.keepRng.restore(meta.keepRng as RngState);
    this.globalStep = meta.globalStep as number;
    this.epoch = meta.epoch as number;
    this.microInEpoch = meta.microInEpoch as number;
    this.loader.seek(meta.loader as LoaderPosition);
    return { loadedFrom: st.loadedFrom, which: st.which };
  }

  /**
   * Writes the tokenizer's weights (EMA by default) as safetensors with the reference's names,
   * loadable by `MergeVQTokenizer.loadWeights` / `readWeights`.
   */
  async exportWeights(path: string, opts: ExportWeightsOptions = {}): Promise<void> {
    checkKeys('TokenizerTrainer.exportWeights options', opts, EXPORT_WEIGHTS_KEYS);
    const useEma = (opts.ema ?? true) && this.ema !== null;
    const out: Record<string, Tensor> = {};
    for (const n of this.genNames) {
      const t = useEma ? this.ema!.shadow(n) : this.tokenizer.store.get(n);
      out[n] = opts.dtype && opts.dtype !== 'float32' ? t.cast(opts.dtype) : t;
    }
    await writeSafetensors(path, out, {
      format: 'pt',
      mergevq: JSON.stringify({ kind: 'tokenizer', config: this.tokenizer.config, step: this.globalStep, ema: useEma }),
    });
  }

  /** Stops the loader's prefetching. */
  async close(): Promise<void> {
    await this.loader.close();
  }
}
