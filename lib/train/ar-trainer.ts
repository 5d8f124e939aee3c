/**
 * Training the AR generator (stage 2) as the reference's Net2NetTransformer.training_step does it,
 * over pre-extracted codes (codes.ts) instead of tokenizing every image on the fly:
 *
 *   1. the lr and weight decay of the optimizer step about to happen (the VAR-style annealing,
 *      set on every parameter group; itersTrain = batches per epoch, the step = optimizer steps
 *      taken, as the reference, so with accumulation the schedule only runs part of its course);
 *   2. label dropout for classifier-free guidance: each label becomes the model's null class with
 *      probability `labelDropout`, drawn from a seeded generator whose state is saved;
 *   3. teacher-forced loss CE(pre) + CE(post), recorded on a Tape: the plain GPT's sequence
 *      [C, e_0 ..], or with a MergeARGPT the MergeAR sequence [C, M, e_0 ..] (M = the sample's
 *      keep index from the codes file) under the MergeAR mask; backward;
 *   4. gradient accumulation over `accumulate` micro-batches (mean of their gradients; an epoch's
 *      last batch also ends an accumulation), clip_grad_norm_ (default 1.0), AdamW with the two
 *      weight-decay groups (parameters of dim >= 2 decay), betas (0.9, 0.95);
 *   5. optional EMA of the weights (the reference's AR model has none).
 *
 * Differences from the reference: its GPT applies dropout (residual and feed-forward, p 0.1) in
 * training; these models have no dropout, so training here is dropout-free. Mixed precision is not
 * used (float32 throughout).
 *
 * Every random choice is a function of the seed and the saved state, so a run that is saved and
 * resumed sees the same batches, dropped labels and updates as an uninterrupted one, bit for bit.
 */
import { MergeVQError, checkInt, checkKeys, optionKeys, rangeError, typeError } from '../errors.js';
import { Tape } from '../autograd.js';
import { runAsync, runSync, type OpObserver, type Program } from '../graph.js';
import { writeSafetensors } from '../io/safetensors.js';
import { reshape } from '../nn/layers.js';
import { crossEntropy } from '../ops/nn.js';
import type { Tensor } from '../tensor.js';
import type { GPTLogits, MergeVQGPT } from '../generator/gpt.js';
import { MergeARGPT } from '../generator/mergear.js';
import { readCodes, type Codes } from './codes.js';
import { CodeLoader, type CodeBatch, type CodePosition } from './code-dataset.js';
import { AdamW, GradAccumulator, arParamGroups, clipGradNorm, type AdamStateMeta } from './optim.js';
import { LitEma } from './ema.js';
import { applyArAnnealing, arLrWd, pyRound, type ArAnnealConfig } from './schedule.js';
import { TrainRng, type RngState } from './rng.js';
import { EXPORT_WEIGHTS_KEYS, loadTrainingState, saveTrainingState, type ExportWeightsOptions } from './state.js';

export * from './code-dataset.js';

/**
 * Options of {@link ARTrainer}. Defaults are the reference's Net2NetTransformer constructor
 * defaults and its gpu_s2 settings (lr 3e-4, weight decay 0.05, clipping 1.0).
 */
export interface ARTrainOptions {
  /** The generator (weights loaded or `store.initRandom`-ed by the caller). A MergeARGPT trains with the [M] instruction and the MergeAR mask. */
  model: MergeVQGPT;
  /** The training codes (readCodes / extractCodes); {@link ARTrainer.create} also takes a file path. */
  codes: Codes;
  /** Sequences per micro-batch. */
  batchSize: number;
  /** Seed of the data order and of the label dropout (default 0). */
  seed?: number;
  /** Shuffle every epoch (default true). */
  shuffle?: boolean;
  /** Drop each epoch's incomplete last batch (default true). */
  dropLast?: boolean;
  /** Peak learning rate (default 3e-4). */
  learningRate?: number;
  /** Peak weight decay of the decay group (default 0.05). */
  weightDecay?: number;
  /** Final weight decay of the cosine; 0 means "= weightDecay" (default 0, as the reference). */
  twde?: number;
  /** AdamW betas (default [0.9, 0.95]). */
  betas?: [number, number];
  /** AdamW eps (default 1e-8). */
  eps?: number;
  /** Epochs of the schedule (default 300); `fit` stops when they are done. */
  maxEpochs?: number;
  /** Warm-up length in epochs (default 0). */
  wp?: number;
  /** lr ratio at the start of the warm-up (default 0.005). */
  wp0?: number;
  /** lr ratio at the end of training (default 0.01). */
  wpe?: number;
  /** Micro-batches per optimizer step (default 1). */
  accumulate?: number;
  /** Global-norm clipping of the gradients (default 1.0; null: none). */
  gradientClip?: number | null;
  /** Label-dropout probability for classifier-free guidance (default 0.1, the reference's LabelEmbedder). */
  labelDropout?: number;
  /** EMA of the weights (default false, as the reference). */
  useEma?: boolean;
  emaDecay?: number;
  /** Run the op programs on the calling thread (blocks while a step runs; faster for tiny models). */
  sync?: boolean;
}

/** The log of one micro-batch. */
export interface ARStepLog {
  /** Optimizer step the micro-batch belongs to (0-based; the annealing's global step). */
  step: number;
  epoch: number;
  /** Index of the batch within its epoch. */
  batch: number;
  lr: number;
  weightDecay: number;
  /** CE(pre) + CE(post), and the two terms. */
  loss: number;
  lossPre: number;
  lossPost: number;
  /** Labels replaced by the null class in this micro-batch. */
  dropped: number;
  /** True when this micro-batch completed an optimizer step. */
  stepped: boolean;
  /** Total gradient norm before clipping (when this micro-batch stepped and clipping is on). */
  gradNorm: number | null;
  ms: number;
}

const AR_TRAIN_KEYS = optionKeys<ARTrainOptions>()([
  'model',
  'codes',
  'batchSize',
  'seed',
  'shuffle',
  'dropLast',
  'learningRate',
  'weightDecay',
  'twde',
  'betas',
  'eps',
  'maxEpochs',
  'wp',
  'wp0',
  'wpe',
  'accumulate',
  'gradientClip',
  'labelDropout',
  'useEma',
  'emaDecay',
  'sync',
]);

/** Options of {@link ARTrainer.fit}. */
export interface ARFitOptions {
  /** Micro-batches to train on at most. */
  steps: number;
  /** Checked between batches: an aborted signal stops the run (the logs so far are returned). */
  signal?: AbortSignal;
  /** Called with each micro-batch's log (awaited). */
  onStep?: (log: ARStepLog) => void | Promise<void>;
}
const AR_FIT_KEYS = optionKeys<ARFitOptions>()(['steps', 'signal', 'onStep']);

const KIND = 'mergevq-ar-training';

function finite(name: string, v: unknown, min = -Infinity): number {
  if (typeof v !== 'number' || Number.isNaN(v)) typeError(name, 'a number', v);
  if (!Number.isFinite(v) || v < min) rangeError(name, `a finite number >= ${min}`, v);
  return v;
}

type Resolved = Required<Omit<ARTrainOptions, 'gradientClip'>> & { gradientClip: number | null };

/** Trains a MergeVQGPT / MergeARGPT on pre-extracted codes; see the module comment for one step. */
export class ARTrainer {
  readonly model: MergeVQGPT;
  readonly loader: CodeLoader;
  readonly optimizer: AdamW;
  readonly ema: LitEma | null;
  /** True when the model is a MergeARGPT (trains with the [M] instruction and the MergeAR mask). */
  readonly mergeAR: boolean;
  /** Optimizer steps taken (the reference's global_step). */
  globalStep = 0;
  private readonly names: string[];
  private readonly acc = new GradAccumulator();
  private readonly dropRng: TrainRng;
  private readonly opts: Resolved;
  private readonly anneal: ArAnnealConfig;

  /** Like the constructor, with `codes` also given as the path of a codes file. */
  static async create(o: Omit<ARTrainOptions, 'codes'> & { codes: Codes | string }): Promise<ARTrainer> {
    if (o === null || typeof o !== 'object') typeError('options', 'an options object', o);
    checkKeys('ARTrainer.create options', o, AR_TRAIN_KEYS);
    const codes = typeof o.codes === 'string' ? await readCodes(o.codes) : o.codes;
    return new ARTrainer({ ...o, codes });
  }

  constructor(o: ARTrainOptions) {
    if (o === null || typeof o !== 'object') typeError('options', 'an options object', o);
    checkKeys('ARTrainer options', o, AR_TRAIN_KEYS);
    const model = o.model;
    if (!model || typeof model !== 'object' || !model.store || typeof model.loss !== 'function')
      typeError('model', 'a MergeVQGPT or MergeARGPT', model);
    const codes = o.codes;
    if (!codes || typeof codes !== 'object' || !(codes.indices instanceof BigInt64Array))
      typeError('codes', 'a Codes object (or use ARTrainer.create with a path)', codes);
    const r: Resolved = {
      model,
      codes,
      batchSize: checkInt('batchSize', o.batchSize, 1),
      seed: checkInt('seed', o.seed ?? 0, 0, Number.MAX_SAFE_INTEGER),
      shuffle: o.shuffle ?? true,
      dropLast: o.dropLast ?? true,
      learningRate: finite('learningRate', o.learningRate ?? 3e-4, 0),
      weightDecay: finite('weightDecay', o.weightDecay ?? 0.05, 0),
      twde: finite('twde', o.twde ?? 0, 0),
      betas: o.betas ?? [0.9, 0.95],
      eps: finite('eps', o.eps ?? 1e-8, 0),
      maxEpochs: checkInt('maxEpochs', o.maxEpochs ?? 300, 1),
      wp: finite('wp', o.wp ?? 0, 0),
      wp0: finite('wp0', o.wp0 ?? 0.005),
      wpe: finite('wpe', o.wpe ?? 0.01),
      accumulate: checkInt('accumulate', o.accumulate ?? 1, 1),
      gradientClip: o.gradientClip === undefined ? 1.0 : o.gradientClip,
      labelDropout: o.labelDropout ?? 0.1,
      useEma: o.useEma ?? false,
      emaDecay: o.emaDecay ?? 0.999,
      sync: o.sync ?? false,
    };
    if (r.gradientClip !== null) finite('gradientClip', r.gradientClip, 0);
    if (typeof r.labelDropout !== 'number' || !(r.labelDropout >= 0 && r.labelDropout <= 1))
      rangeError('labelDropout', 'a probability in [0, 1]', r.labelDropout);
    for (const k of ['useEma', 'sync', 'shuffle', 'dropLast'] as const)
      if (typeof r[k] !== 'boolean') typeError(k, 'a boolean', r[k]);
    this.opts = r;

    const c = model.config;
    const meta = codes.meta;
    if (meta.fullNum !== c.block_size)
      rangeError(
        'codes.meta.fullNum',
        `the model's block_size ${c.block_size} (sequences of the full grid)`,
        meta.fullNum,
      );
    const labels = codes.labels;
    if (labels) {
      for (let i = 0; i < labels.length; ++i)
        if (labels[i]! < 0n || labels[i]! >= BigInt(c.class_num))
          rangeError(`codes.labels[${i}]`, `a class in [0, ${c.class_num})`, labels[i]);
    }
    this.mergeAR = model instanceof MergeARGPT;
    if (this.mergeAR) {
      const nc = (model as MergeARGPT).numCandidates;
      if (meta.keepCandidates.length !== nc)
        rangeError(
          'codes.meta.keepCandidates',
          `a list of the model's ${nc} keep candidates (merge_emb rows)`,
          meta.keepCandidates,
        );
      for (let i = 0; i < codes.keepIndex.length; ++i)
        if (codes.keepIndex[i]! < 0n || codes.keepIndex[i]! >= BigInt(nc))
          rangeError(`codes.keepIndex[${i}]`, `a candidate index in [0, ${nc})`, codes.keepIndex[i]);
    }
    this.model = model;
    this.loader = new CodeLoader(codes, {
      batchSize: r.batchSize,
      seed: r.seed,
      shuffle: r.shuffle,
      dropLast: r.dropLast,
      factorizedBits: c.factorized_bits,
      unlabeledClass: model.nullClass,
    });
    this.anneal = {
      itersTrain: this.loader.batchesPerEpoch,
      maxEpochs: r.maxEpochs,
      wp: r.wp,
      wp0: r.wp0,
      wpe: r.wpe,
      twde: r.twde,
      weightDecay: r.weightDecay,
      learningRate: r.learningRate,
    };
    const maxIt = r.maxEpochs * this.loader.batchesPerEpoch;
    const wpIt = pyRound(r.wp * this.loader.batchesPerEpoch);
    if (maxIt - 1 - wpIt <= 0)
      rangeError(
        'maxEpochs',
        `a schedule longer than warm-up + 1 step (${wpIt} warm-up steps of ${this.loader.batchesPerEpoch} per epoch)`,
        r.maxEpochs,
      );
    this.names = model.store.names();
    for (const n of this.names) model.store.get(n); // every weight must be loaded or initialized
    const groups = arParamGroups(this.names, model.store.shapeMap(), r.weightDecay);
    this.optimizer = new AdamW(model.store, groups, {
      lr: r.learningRate,
      betas: r.betas,
      eps: r.eps,
      weightDecay: r.weightDecay,
    });
    this.ema = r.useEma ? new LitEma(model.store, this.names, { decay: r.emaDecay }) : null;
    this.dropRng = TrainRng.derive(r.seed, 'label-drop');
  }

  private run<T>(p: Program<T>, observe?: OpObserver): Promise<T> {
    return this.opts.sync ? Promise.resolve(runSync(p, observe)) : runAsync(p, observe);
  }

  /** The lr and weight decay of the optimizer step about to run. */
  get schedule(): { lr: number; weightDecay: number } {
    return arLrWd(this.globalStep, this.anneal);
  }

  /** The annealing settings (itersTrain = batches per epoch). */
  get annealConfig(): Readonly<ArAnnealConfig> {
    return { ...this.anneal };
  }

  /** True once `maxEpochs` epochs of batches have been taken from the loader. */
  get finished(): boolean {
    return this.loader.position().epoch >= this.opts.maxEpochs;
  }

  /** The batch {@link fit} trains on next (advances the loader). */
  nextBatch(): CodeBatch {
    return this.loader.next();
  }

  /**
   * One micro-batch: label dropout, the loss and its gradients, and the optimizer step when
   * `accumulate` micro-batches are in (or the batch is its epoch's last). Returns the log.
   */
  async trainBatch(batch: CodeBatch): Promise<ARStepLog> {
    const t0 = performance.now();
    const model = this.model;
    const p = this.opts.labelDropout;
    const labels = p > 0 ? model.dropLabels(batch.labels, () => this.dropRng.next(), p) : batch.labels;
    const before = batch.labels.toArray<'int64'>();
    const after = labels.toArray<'int64'>();
    let dropped = 0;
    for (let i = 0; i < after.length; ++i) if (after[i] !== before[i]) ++dropped;

    const step = this.globalStep;
    const tape = new Tape();
    const keepIndex = this.mergeAR ? batch.keepIndex : null;
    const fwd = await this.run(
      (function* (self: ARTrainer): Program<{ loss: Tensor; lossPre: Tensor }> {
        const { loss, logits } = self.mergeAR
          ? yield* (model as MergeARGPT).lossAR(batch.pre, batch.post, labels, keepIndex)
          : yield* model.loss(batch.pre, batch.post, labels);
        return { loss, lossPre: yield* self.preTerm(logits, batch.pre) };
      })(this),
      tape.observe,
    );
    const loss = fwd.loss.item();
    const lossPre = fwd.lossPre.item();
    const grads = await this.run(tape.backward(fwd.loss, null, { free: true }));
    const named = new Map<string, Tensor>();
    for (const n of this.names) {
      const g = grads.get(model.store.get(n));
      if (g) named.set(n, g);
    }
    await this.run(this.acc.add(named));
    // the step's intermediates and gradients go back to the allocator now (never a parameter)
    for (const g of grads.values()) if (!g.disposed) g.dispose();
    tape.dispose(this.names.map((n) => model.store.get(n)));

    let stepped = false;
    let gradNorm: number | null = null;
    const sched = this.schedule;
    if (this.acc.count === this.opts.accumulate || batch.lastInEpoch) {
      const mean = await this.run(this.acc.mean());
      this.acc.reset();
      if (this.opts.gradientClip !== null) gradNorm = await this.run(clipGradNorm(mean, this.opts.gradientClip));
      applyArAnnealing(this.optimizer, step, this.anneal);
      await this.run(this.optimizer.step(mean));
      for (const t of mean.values()) t.dispose();
      if (this.ema) await this.run(this.ema.update(model.store));
      ++this.globalStep;
      stepped = true;
    }
    return {
      step,
      epoch: batch.epoch,
      batch: batch.batch,
      lr: sched.lr,
      weightDecay: sched.weightDecay,
      loss,
      lossPre,
      lossPost: loss - lossPre,
      dropped,
      stepped,
      gradNorm,
      ms: performance.now() - t0,
    };
  }

  /** CE of the first sub-token (logged; the total is the model's loss program). */
  private *preTerm(logits: GPTLogits, pre: Tensor): Program<Tensor> {
    const [B, N] = pre.shape as [number, number];
    const V0 = this.model.subVocab[0];
    return yield* crossEntropy(yield* reshape(logits.pre, [B * N, V0]), yield* reshape(pre, [B * N]));
  }

  /**
   * Trains on up to `steps` more micro-batches (stopping early when `signal` aborts, between
   * batches, or when the schedule's `maxEpochs` are done), calling `onStep` with each log.
   */
  async fit(opts: ARFitOptions): Promise<ARStepLog[]> {
    if (opts === null || typeof opts !== 'object') typeError('opts', '{ steps, signal?, onStep? }', opts);
    checkKeys('ARTrainer.fit options', opts, AR_FIT_KEYS);
    checkInt('steps', opts.steps, 0);
    const logs: ARStepLog[] = [];
    for (let i = 0; i < opts.steps; ++i) {
      if (opts.signal?.aborted || this.finished) break;
      const log = await this.trainBatch(this.loader.next());
      logs.push(log);
      await opts.onStep?.(log);
    }
    return logs;
  }

  /** Runs `fn` with the EMA weights in place of the live ones (no-op without EMA). */
  async withEma<T>(fn: () => Promise<T> | T): Promise<T> {
    if (!this.ema) return fn();
    await this.run(this.ema.store(this.model.store));
    await this.run(this.ema.copyTo(this.model.store));
    try {
      return await fn();
    } finally {
      await this.run(this.ema.restore(this.model.store));
    }
  }

  private fingerprint(): Record<string, unknown> {
    const o = this.opts;
    const m = this.model as MergeVQGPT & Partial<MergeARGPT>;
    return {
      count: this.loader.count,
      length: this.loader.length,
      batchSize: o.batchSize,
      seed: o.seed,
      shuffle: o.shuffle,
      dropLast: o.dropLast,
      accumulate: o.accumulate,
      mergeAR: this.mergeAR,
      numCandidates: m.numCandidates ?? null,
      config: this.model.config,
    };
  }

  /** Everything a resumed run needs, as one training state. */
  stateTensors(): { tensors: Map<string, Tensor>; meta: Record<string, unknown> } {
    if (this.acc.count !== 0)
      throw new MergeVQError('save: a gradient accumulation is in progress; save after an optimizer step', 'ERR_BUSY');
    const tensors = new Map<string, Tensor>();
    for (const [n, t] of this.model.store.stateDict()) tensors.set(`model.${n}`, t);
    const opt = this.optimizer.stateDict();
    for (const [n, t] of opt.tensors) tensors.set(`opt.${n}`, t);
    if (this.ema) for (const [n, t] of this.ema.stateDict()) tensors.set(`ema.${n}`, t);
    const meta = {
      kind: KIND,
      globalStep: this.globalStep,
      loader: this.loader.position(),
      opt: opt.meta,
      dropRng: this.dropRng.state(),
      fingerprint: this.fingerprint(),
    };
    return { tensors, meta: JSON.parse(JSON.stringify(meta)) as Record<string, unknown> };
  }

  /** Saves the training state atomically (the previous one survives as `<path>.prev`). */
  async save(path: string): Promise<void> {
    await saveTrainingState(path, this.stateTensors());
  }

  /**
   * Restores a state saved by {@link save} into this trainer, which must be built with the same
   * model configuration, codes and data options (checked). Returns which file was loaded (the
   * latest, or the previous one when the latest is damaged).
   */
  async resume(path: string): Promise<{ loadedFrom: string; which: 'latest' | 'previous' }> {
    const st = await loadTrainingState(path);
    const meta = st.meta as Record<string, unknown>;
    if (meta.kind !== KIND) throw new MergeVQError(`${path}: not an AR generator training state`, 'ERR_BAD_FILE');
    const mine = JSON.stringify(JSON.parse(JSON.stringify(this.fingerprint())));
    const theirs = JSON.stringify(meta.fingerprint);
    if (mine !== theirs)
      throw new MergeVQError(
        `${path}: saved with other data, model or loader settings (${theirs}; this trainer: ${mine})`,
        'ERR_STATE_MISMATCH',
      );
    const pick = (prefix: string) => {
      const m = new Map<string, Tensor>();
      for (const [k, t] of st.tensors) if (k.startsWith(prefix)) m.set(k.slice(prefix.length), t);
      return m;
    };
    this.model.store.load(pick('model.'), { strict: true });
    this.optimizer.loadStateDict({ tensors: pick('opt.'), meta: meta.opt as unknown as AdamStateMeta });
    if (this.ema) this.ema.loadStateDict(pick('ema.'));
    this.dropRng.restore(meta.dropRng as unknown as RngState);
    this.globalStep = checkInt('state.globalStep', meta.globalStep, 0);
    this.loader.seek(meta.loader as unknown as CodePosition);
    this.acc.reset();
    return { loadedFrom: st.loadedFrom, which: st.which };
  }

  /**
   * Writes the generator's weights (EMA when kept and `ema` is not false) as safetensors with the
   * reference's state_dict names without the `transformer.` prefix (as `loadWeights` takes them;
   * a MergeARGPT adds `merge_emb.weight`).
   */
  async exportWeights(path: string, opts: ExportWeightsOptions = {}): Promise<void> {
    checkKeys('ARTrainer.exportWeights options', opts, EXPORT_WEIGHTS_KEYS);
    const useEma = (opts.ema ?? true) && this.ema !== null;
    const out: Record<string, Tensor> = {};
    for (const n of this.names) {
      const t = useEma ? this.ema!.shadow(n) : this.model.store.get(n);
      out[n] = opts.dtype && opts.dtype !== 'float32' ? t.cast(opts.dtype) : t;
    }
    const m = this.model as MergeVQGPT & Partial<MergeARGPT>;
    const info = {
      kind: this.mergeAR ? 'mergear-gpt' : 'gpt',
      config: this.model.config,
      numCandidates: m.numCandidates ?? null,
      window: m.window ?? null,
      keepCandidates: this.loader.codes.meta.keepCandidates,
      step: this.globalStep,
      ema: useEma,
    };
    await writeSafetensors(path, out, { format: 'pt', mergevq: JSON.stringify(info) });
  }
}
