/**
 * The tokenizer's full training objective, the reference's `VQLPIPSWithDiscriminator`: the
 * generator pass (reconstruction + perceptual + adversarial + codebook + commitment [+ class]
 * loss) and the discriminator pass (GAN loss + LeCAM), configured by the reference's
 * `loss_kwargs` (snake_case keys as in the YAML files; camelCase is accepted too).
 *
 * Generator pass (`optimizer_idx == 0`):
 * ```
 * nll   = mean(|x - xrec| + perceptual_weight * p)        p = LPIPS(x, xrec) [B,1,1,1], broadcast
 * g     = d_weight * disc_factor * gen_adv_loss(D(xrec))   D in training mode (updates its BN stats)
 * cb    = codebook_weight * codebook_loss;  if codebook_enlarge_ratio > 0:
 *         cb += codebook_enlarge_ratio * max(0, 1 - step / codebook_enlarge_steps) * cb
 * total = nll + g + cb + commit_weight * commitment (+ cls_loss_weight * cls_loss when given and the weight is not 0)
 * ```
 * `d_weight` is `gen_loss_weight` when set, else the adaptive weight
 * `clamp(||d nll/d last|| / (||d g_raw/d last|| + 1e-4), 0, 1e4) * disc_weight` (detached), with
 * `last` the decoder's last layer weight; `disc_factor` is 0 before `disc_start`, else
 * `disc_factor` (1). While it is 0 the adversarial term is left out (the reference multiplies it
 * by 0) and the log shows d_weight = g_loss = 0, but the discriminator still runs on xrec.
 *
 * Discriminator pass (`optimizer_idx == 1`): D(x) then D(xrec) (two training-mode calls on
 * detached inputs), LeCAM EMA update with their mean logits, then
 * `d_loss = disc_factor * (lecam_loss_weight * lecam_reg + disc_loss(real, fake))`.
 *
 * Where the reference breaks, this does what its code means: `disc_loss: non_saturate` is the
 * per-sample-mean sigmoid cross-entropy (see gan.ts; the reference's raises a NameError), and
 * `lecam_loss_weight: null` trains without LeCAM and logs no `lecam_loss` (the reference crashes
 * logging it). `disc_conditional: true` is not supported.
 */
import { MergeVQError, checkKeys, optionKeys, rangeError, typeError } from '../errors.js';
import type { Tape } from '../autograd.js';
import type { Program } from '../graph.js';
import { l1Loss } from '../ops/nn.js';
import { add, detach, mean, mul, scale, sqrt, sum } from '../ops/tensor.js';
import { Tensor } from '../tensor.js';
import { NLayerDiscriminator } from './discriminator.js';
import { LeCAM, discLoss, genLoss, meanValue, type DiscLossKind, type GenLossKind, type LeCAMState } from './gan.js';

/** A perceptual distance, e.g. `LPIPS`: per-sample values [B, 1, 1, 1], recordable by a Tape. */
export interface PerceptualLoss {
  forward(in0: Tensor, in1: Tensor): Program<Tensor>;
}

/** The reference's `loss_kwargs` (snake_case, as in the YAML files). */
export interface VQLPIPSLossKwargs {
  disc_start: number;
  disc_loss?: DiscLossKind;
  disc_dim?: number;
  disc_type?: 'patchgan';
  disc_num_layers?: number;
  disc_in_channels?: number;
  disc_factor?: number;
  disc_weight?: number;
  gen_adv_loss?: GenLossKind;
  reconstruction_loss?: 'l1';
  perceptual_weight?: number;
  cls_loss_weight?: number;
  commit_weight?: number;
  codebook_weight?: number;
  codebook_enlarge_ratio?: number;
  codebook_enlarge_steps?: number;
  gen_loss_weight?: number | null;
  lecam_loss_weight?: number | null;
  disc_conditional?: boolean;
  use_diff_aug?: boolean;
  disc_cr_loss_weight?: number;
}

/** The resolved configuration (the reference's defaults filled in). */
export interface VQLPIPSConfig {
  discStart: number;
  discLoss: DiscLossKind;
  discDim: number;
  discNumLayers: number;
  discInChannels: number;
  discFactor: number;
  discWeight: number;
  genAdvLoss: GenLossKind;
  perceptualWeight: number;
  clsLossWeight: number;
  commitWeight: number;
  codebookWeight: number;
  codebookEnlargeRatio: number;
  codebookEnlargeSteps: number;
  genLossWeight: number | null;
  lecamLossWeight: number | null;
}

/** Keys the reference accepts but that change nothing here (its `**ignore_kwargs` and unused options). */
const INERT_KEYS = new Set(['use_diff_aug', 'disc_cr_loss_weight']);

const snake = (k: string) => k.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);

function num(name: string, v: unknown, def: number, min = -Infinity): number {
  if (v === undefined) return def;
  if (typeof v !== 'number' || !Number.isFinite(v)) typeError(name, 'a finite number', v);
  if (v < min) rangeError(name, `a number >= ${min}`, v);
  return v;
}
function nullableNum(name: string, v: unknown): number | null {
  if (v === undefined || v === null) return null;
  return num(name, v, 0);
}
function oneOf<T extends string>(name: string, v: unknown, def: T, allowed: readonly T[]): T {
  if (v === undefined) return def;
  if (typeof v !== 'string' || !allowed.includes(v as T))
    typeError(name, `one of ${allowed.map((a) => `'${a}'`).join(', ')}`, v);
  return v as T;
}

/**
 * Resolves `loss_kwargs` with the reference's defaults. Keys may be snake_case or camelCase;
 * unknown keys are ignored, as the reference does, and listed in `ignored`.
 */
export function resolveLossConfig(kwargs: Record<string, unknown>): { config: VQLPIPSConfig; ignored: string[] } {
  if (kwargs === null || typeof kwargs !== 'object') typeError('lossKwargs', 'an object of loss_kwargs', kwargs);
  const k: Record<string, unknown> = {};
  const ignored: string[] = [];
  const known = new Set([
    'disc_start',
    'disc_loss',
    'disc_dim',
    'disc_type',
    'disc_num_layers',
    'disc_in_channels',
    'disc_factor',
    'disc_weight',
    'gen_adv_loss',
    'reconstruction_loss',
    'perceptual_weight',
    'cls_loss_weight',
    'commit_weight',
    'codebook_weight',
    'codebook_enlarge_ratio',
    'codebook_enlarge_steps',
    'gen_loss_weight',
    'lecam_loss_weight',
    'disc_conditional',
  ]);
  for (const [key, v] of Object.entries(kwargs)) {
    const s = snake(key);
    if (Object.hasOwn(k, s)) rangeError(key, `given once (also given as '${s}')`, v);
    if (known.has(s)) k[s] = v;
    else ignored.push(key);
  }
  if (k.disc_start === undefined) typeError('disc_start', 'a number (required)', undefined);
  oneOf('disc_type', k.disc_type, 'patchgan', ['patchgan'] as const);
  oneOf('reconstruction_loss', k.reconstruction_loss, 'l1', ['l1'] as const);
  if (k.disc_conditional !== undefined && k.disc_conditional !== false)
    rangeError('disc_conditional', 'false (a conditional discriminator is not supported)', k.disc_conditional);
  const int = (name: string, def: number, min: number) => {
    const v = num(name, k[name], def, min);
    if (!Number.isInteger(v)) typeError(name, 'an integer', v);
    return v;
  };
  const config: VQLPIPSConfig = {
    discStart: num('disc_start', k.disc_start, 0),
    discLoss: oneOf('disc_loss', k.disc_loss, 'hinge', ['hinge', 'vanilla', 'non_saturate'] as const),
    discDim: int('disc_dim', 64, 1),
    discNumLayers: int('disc_num_layers', 3, 1),
    discInChannels: int('disc_in_channels', 3, 1),
    discFactor: num('disc_factor', k.disc_factor, 1.0),
    discWeight: num('disc_weight', k.disc_weight, 1.0),
    genAdvLoss: oneOf('gen_adv_loss', k.gen_adv_loss, 'non_saturate', ['hinge', 'non_saturate'] as const),
    perceptualWeight: num('perceptual_weight', k.perceptual_weight, 1.0),
    clsLossWeight: num('cls_loss_weight', k.cls_loss_weight, 0.0),
    commitWeight: num('commit_weight', k.commit_weight, 0.25),
    codebookWeight: num('codebook_weight', k.codebook_weight, 1.0),
    codebookEnlargeRatio: num('codebook_enlarge_ratio', k.codebook_enlarge_ratio, 3),
    codebookEnlargeSteps: num('codebook_enlarge_steps', k.codebook_enlarge_steps, 2000),
    genLossWeight: nullableNum('gen_loss_weight', k.gen_loss_weight),
    lecamLossWeight: nullableNum('lecam_loss_weight', k.lecam_loss_weight),
  };
  if (config.codebookEnlargeRatio > 0 && !(config.codebookEnlargeSteps > 0))
    rangeError('codebook_enlarge_steps', 'a number > 0 when codebook_enlarge_ratio > 0', config.codebookEnlargeSteps);
  return { config, ignored: ignored.filter((key) => !INERT_KEYS.has(snake(key))) };
}

/** Inputs of {@link VQLPIPSWithDiscriminator.generatorPass}. */
export interface GeneratorPassInputs {
  /** The real images [B, C, H, W] (float32). */
  inputs: Tensor;
  /** The decoder's reconstructions, same shape; recorded on `tape` when the adaptive weight is used. */
  reconstructions: Tensor;
  /** The quantizer's entropy aux loss (the reference's `codebook_loss`), a scalar tensor. */
  codebookLoss: Tensor;
  /** The quantizer's per-sample entropy (logged). */
  perSampleEntropy: Tensor;
  /** The quantizer's codebook entropy (logged). */
  codebookEntropy: Tensor;
  /** The quantizer's commitment loss, a scalar tensor (weighted by commit_weight). */
  commitment: Tensor;
  /** The class / alignment loss, a scalar tensor (weighted by cls_loss_weight when given and not 0). */
  clsLoss?: Tensor | null;
  /** The training step (disc_start, codebook enlargement). */
  globalStep: number;
  /**
   * The last layer's weight for the adaptive d_weight (needed when gen_loss_weight is null). Its
   * gradients are taken on `tape`, which must be recording this pass (and the ops that made the
   * reconstructions from it).
   */
  lastLayer?: Tensor | null;
  /** The tape recording this pass (required with the adaptive weight). */
  tape?: Tape | null;
  /** Training (default) or validation: eval-mode discriminator and the reference's short log. */
  training?: boolean;
}
const GENERATOR_PASS_KEYS = optionKeys<GeneratorPassInputs>()([
  'inputs',
  'reconstructions',
  'codebookLoss',
  'perSampleEntropy',
  'codebookEntropy',
  'commitment',
  'clsLoss',
  'globalStep',
  'lastLayer',
  'tape',
  'training',
]);

/** Output of the generator pass. */
export interface GeneratorPassResult {
  /** The total loss (scalar, differentiable when recorded). */
  loss: Tensor;
  /** The perceptual distance per sample [B, 1, 1, 1] (null with perceptual_weight 0). */
  pLoss: Tensor | null;
  /** nll = mean(|x - xrec| + perceptual_weight * p), the scalar the adaptive weight differentiates. */
  nllLoss: Tensor;
  /** The unweighted generator adversarial loss gen_adv_loss(D(xrec)) (scalar). */
  genAdvLoss: Tensor;
  /** The discriminator's logits on the reconstructions. */
  logitsFake: Tensor;
  /** The d_weight used (0 while disc_factor is 0). */
  dWeight: number;
  /** The reference's logged terms, without the split prefix (`total_loss`, `nll_loss`, ...). */
  log: Record<string, number>;
}

/** Inputs of {@link VQLPIPSWithDiscriminator.discriminatorPass}. */
export interface DiscriminatorPassInputs {
  inputs: Tensor;
  reconstructions: Tensor;
  globalStep: number;
  /** Training-mode discriminator (default true). The LeCAM EMA moves in both modes, as the reference. */
  training?: boolean;
}
const DISCRIMINATOR_PASS_KEYS = optionKeys<DiscriminatorPassInputs>()([
  'inputs',
  'reconstructions',
  'globalStep',
  'training',
]);

/** Options of {@link VQLPIPSWithDiscriminator} besides the loss_kwargs. */
export interface VQLPIPSOptions {
  /** The perceptual distance (required unless perceptual_weight is 0). */
  perceptual?: PerceptualLoss | null;
  /** Seed of the discriminator's initialization (default 0). */
  discriminatorSeed?: number;
}
const VQLPIPS_KEYS = optionKeys<VQLPIPSOptions>()(['perceptual', 'discriminatorSeed']);

/** Output of the discriminator pass. */
export interface DiscriminatorPassResult {
  /** d_loss (scalar, differentiable w.r.t. the discriminator's parameters when recorded). */
  loss: Tensor;
  logitsReal: Tensor;
  logitsFake: Tensor;
  /** The reference's logged terms (`disc_loss`, `logits_real`, `logits_fake`, `disc_factor`, `lecam_loss`, `non_saturated_d_loss`). */
  log: Record<string, number>;
}

/** Checkpointable state besides the discriminator's state dict. */
export interface VQLPIPSState {
  lecam: LeCAMState | null;
}

function image(name: string, t: unknown): Tensor {
  if (!(t instanceof Tensor)) typeError(name, 'a Tensor', t);
  if (t.dtype !== 'float32' || t.ndim !== 4)
    rangeError(name, 'a float32 [B, C, H, W] tensor', `${t.dtype} [${t.shape.join(', ')}]`);
  return t;
}
function scalar(name: string, t: unknown): Tensor {
  if (!(t instanceof Tensor)) typeError(name, 'a Tensor', t);
  if (t.dtype !== 'float32' || t.numel !== 1)
    rangeError(name, 'a float32 one-element tensor', `${t.dtype} [${t.shape.join(', ')}]`);
  return t;
}
function step(v: unknown): number {
  if (typeof v !== 'number' || !Number.isFinite(v)) typeError('globalStep', 'a finite number', v);
  return v;
}

/** The reference's `adopt_weight`: `value` before `threshold`, else `weight`. */
export function adoptWeight(weight: number, globalStep: number, threshold = 0, value = 0): number {
  return globalStep < threshold ? value : weight;
}

/** `||g||_2` of a tensor, read back. */
function* norm(g: Tensor): Program<number> {
  return (yield* sqrt(yield* sum(yield* mul(g, g)))).item();
}

/** The tokenizer's training objective (see the module comment). */
export class VQLPIPSWithDiscriminator {
  readonly config: VQLPIPSConfig;
  /** Keys of the given loss_kwargs that were not used (the reference ignores them too). */
  readonly ignoredKeys: readonly string[];
  readonly discriminator: NLayerDiscriminator;
  /** The LeCAM EMA (null when lecam_loss_weight is null). */
  readonly lecam: LeCAM | null;
  /** The perceptual loss (required unless perceptual_weight is 0). */
  perceptual: PerceptualLoss | null;

  constructor(lossKwargs: VQLPIPSLossKwargs | Record<string, unknown>, opts: VQLPIPSOptions = {}) {
    checkKeys('VQLPIPSWithDiscriminator options', opts, VQLPIPS_KEYS);
    const { config, ignored } = resolveLossConfig(lossKwargs as Record<string, unknown>);
    this.config = config;
    this.ignoredKeys = ignored;
    this.discriminator = new NLayerDiscriminator({
      inputNc: config.discInChannels,
      ndf: config.discDim,
      nLayers: config.discNumLayers,
      useActnorm: false,
    });
    this.discriminator.initRandom(opts.discriminatorSeed ?? 0);
    this.lecam = config.lecamLossWeight === null ? null : new LeCAM();
    const p = opts.perceptual ?? null;
    if (p !== null && (typeof p !== 'object' || typeof (p as PerceptualLoss).forward !== 'function'))
      typeError('perceptual', 'an object with forward(in0, in1)', p);
    this.perceptual = p;
  }

  /** disc_factor at this step (0 before disc_start). */
  discFactor(globalStep: number): number {
    return adoptWeight(this.config.discFactor, step(globalStep), this.config.discStart);
  }

  /** The multiplier of the weighted codebook loss at this step (1 plus the enlargement). */
  codebookScale(globalStep: number): number {
    const c = this.config;
    return c.codebookEnlargeRatio > 0
      ? c.codebookEnlargeRatio * Math.max(0, 1 - step(globalStep) / c.codebookEnlargeSteps)
      : 0;
  }

  /**
   * The generator pass: total loss and log (see the module comment). Run it recorded by the tape
   * that also recorded the model (`runSync(obj.generatorPass({...}), tape.observe)`), then
   * `tape.backward(result.loss)`; only the generator's parameters should be stepped with it (the
   * tape also reaches the discriminator's).
   */
  *generatorPass(a: GeneratorPassInputs): Program<GeneratorPassResult> {
    if (a === null || typeof a !== 'object') typeError('inputs', 'a GeneratorPassInputs object', a);
    checkKeys('generatorPass inputs', a, GENERATOR_PASS_KEYS);
    const c = this.config;
    const x = image('inputs', a.inputs);
    const xrec = image('reconstructions', a.reconstructions);
    if (x.shape.some((d, i) => d !== xrec.shape[i]))
      rangeError('reconstructions', `the shape of inputs [${x.shape.join(', ')}]`, `[${xrec.shape.join(', ')}]`);
    const codebookLoss = scalar('codebookLoss', a.codebookLoss);
    const perSampleEntropy = scalar('perSampleEntropy', a.perSampleEntropy);
    const codebookEntropy = scalar('codebookEntropy', a.codebookEntropy);
    const commitment = scalar('commitment', a.commitment);
    const clsLoss = a.clsLoss === undefined || a.clsLoss === null ? null : scalar('clsLoss', a.clsLoss);
    const globalStep = step(a.globalStep);
    const training = a.training ?? true;
    if (typeof training !== 'boolean') typeError('training', 'a boolean', training);
    const discFactor = this.discFactor(globalStep);
    const adaptive = c.genLossWeight === null;
    if (adaptive && training && discFactor !== 0) {
      if (!(a.lastLayer instanceof Tensor))
        typeError(
          'lastLayer',
          'the last layer weight Tensor (gen_loss_weight is null: the adaptive d_weight needs it)',
          a.lastLayer,
        );
      if (!a.tape || typeof a.tape.backward !== 'function')
        typeError('tape', 'the Tape recording this pass (the adaptive d_weight needs it)', a.tape);
    }

    // nll = mean(|x - xrec| + pw * p) = mean|x - xrec| + pw * mean(p) (p is constant over C, H, W)
    const rec = yield* l1Loss(x, xrec, { reduction: 'mean' });
    let pLoss: Tensor | null = null;
    let pMean: Tensor | null = null;
    let nll = rec;
    if (c.perceptualWeight > 0) {
      if (!this.perceptual)
        throw new MergeVQError(
          'VQLPIPSWithDiscriminator: perceptual_weight > 0 needs a perceptual loss (pass { perceptual: lpips })',
          'ERR_MISSING_WEIGHT',
        );
      pLoss = yield* this.perceptual.forward(x, xrec);
      if (!(pLoss instanceof Tensor) || pLoss.numel !== x.shape[0])
        throw new RangeError(
          `perceptual.forward must return one value per sample ([${x.shape[0]}, 1, 1, 1]), got ${String(pLoss)}`,
        );
      pMean = yield* mean(pLoss);
      nll = yield* add(rec, yield* scale(pMean, c.perceptualWeight));
    }

    const logitsFake = yield* this.discriminator.forward(xrec, { training });
    const gRaw = yield* genLoss(c.genAdvLoss, logitsFake);

    let dWeight: number;
    if (!adaptive) dWeight = Math.fround(c.genLossWeight!);
    else if (discFactor === 0 || !a.lastLayer || !a.tape) dWeight = 0;
    else dWeight = yield* this.adaptiveWeight(nll, gRaw, a.lastLayer, a.tape);

    let total = nll;
    let gLoss = 0;
    if (discFactor !== 0) {
      const g = yield* scale(gRaw, Math.fround(dWeight * discFactor));
      gLoss = g.item();
      total = yield* add(total, g);
    }
    let cb = yield* scale(codebookLoss, c.codebookWeight);
    const enlarge = this.codebookScale(globalStep);
    if (c.codebookEnlargeRatio > 0) cb = yield* add(yield* scale(cb, enlarge), cb);
    total = yield* add(total, cb);
    total = yield* add(total, yield* scale(commitment, c.commitWeight));
    const useCls = clsLoss !== null && c.clsLossWeight !== 0 && clsLoss.item() !== 0;
    if (useCls) total = yield* add(total, yield* scale(clsLoss!, c.clsLossWeight));

    const log: Record<string, number> = {};
    const pValue = pMean ? pMean.item() : 0;
    if (!training) {
      log.reconstruct_loss = rec.item();
      log.perceptual_loss = pValue;
      log.g_loss = discFactor * gRaw.item();
    } else {
      log.total_loss = total.item();
      log.per_sample_entropy = perSampleEntropy.item();
      log.codebook_entropy = codebookEntropy.item();
      log.commit_loss = commitment.item();
      if (discFactor !== 0) log.entropy_loss = codebookLoss.item();
      log.nll_loss = nll.item();
      log.reconstruct_loss = rec.item();
      log.perceptual_loss = pValue;
      log.d_weight = discFactor === 0 ? 0 : dWeight;
      log.disc_factor = discFactor;
      log.g_loss = gLoss;
    }
    if (useCls) log.cls_loss = clsLoss!.item();
    return {
      loss: total,
      pLoss,
      nllLoss: nll,
      genAdvLoss: gRaw,
      logitsFake,
      dWeight: discFactor === 0 ? 0 : dWeight,
      log,
    };
  }

  /**
   * The adaptive weight `clamp(||d nll/d last|| / (||d g/d last|| + 1e-4), 0, 1e4) * disc_weight`
   * (a detached number), both gradients taken on `tape` pruned to `last`.
   */
  *adaptiveWeight(nll: Tensor, g: Tensor, last: Tensor, tape: Tape): Program<number> {
    const gn = (yield* tape.backward(nll, null, { wrt: [last] })).get(last);
    const gg = (yield* tape.backward(g, null, { wrt: [last] })).get(last);
    if (!gn || !gg)
      throw new MergeVQError(
        `adaptive d_weight: the ${!gn ? 'reconstruction' : 'adversarial'} loss does not depend on lastLayer on this tape (record the decoder and this pass with tape.observe)`,
        'ERR_NO_GRAD',
      );
    const ratio = (yield* norm(gn)) / (Math.fround(yield* norm(gg)) + 1e-4);
    return Math.fround(Math.fround(Math.min(Math.max(Math.fround(ratio), 0), 1e4)) * this.config.discWeight);
  }

  /**
   * The discriminator pass: d_loss and log. Recorded by a tape, `tape.backward(result.loss)`
   * gives the discriminator's parameter gradients (the images are detached).
   */
  *discriminatorPass(a: DiscriminatorPassInputs): Program<DiscriminatorPassResult> {
    if (a === null || typeof a !== 'object') typeError('inputs', 'a DiscriminatorPassInputs object', a);
    checkKeys('discriminatorPass inputs', a, DISCRIMINATOR_PASS_KEYS);
    const c = this.config;
    const x = image('inputs', a.inputs);
    const xrec = image('reconstructions', a.reconstructions);
    if (x.shape.some((d, i) => d !== xrec.shape[i]))
      rangeError('reconstructions', `the shape of inputs [${x.shape.join(', ')}]`, `[${xrec.shape.join(', ')}]`);
    const globalStep = step(a.globalStep);
    const training = a.training ?? true;
    if (typeof training !== 'boolean') typeError('training', 'a boolean', training);
    const logitsReal = yield* this.discriminator.forward(yield* detach(x), { training });
    const logitsFake = yield* this.discriminator.forward(yield* detach(xrec), { training });
    const discFactor = this.discFactor(globalStep);
    const dl = yield* discLoss(c.discLoss, logitsReal, logitsFake);
    let inner = dl;
    let lecamLoss: Tensor | null = null;
    if (this.lecam) {
      yield* this.lecam.updateFrom(logitsReal, logitsFake);
      lecamLoss = yield* this.lecam.reg(logitsReal, logitsFake);
      inner = yield* add(yield* scale(lecamLoss, c.lecamLossWeight!), dl);
    }
    const loss = yield* scale(inner, discFactor);
    const log: Record<string, number> = {
      disc_loss: discFactor === 0 ? 0 : loss.item(),
      logits_real: discFactor === 0 ? 0 : yield* meanValue(logitsReal),
      logits_fake: discFactor === 0 ? 0 : yield* meanValue(logitsFake),
      disc_factor: discFactor,
    };
    if (lecamLoss) log.lecam_loss = lecamLoss.item();
    log.non_saturated_d_loss = dl.item();
    return { loss, logitsReal, logitsFake, log };
  }

  /** LeCAM EMAs for checkpoints (the discriminator's weights and buffers: `discriminator.stateDict()`). */
  state(): VQLPIPSState {
    return { lecam: this.lecam ? this.lecam.state() : null };
  }

  /** Restores {@link state}. */
  loadState(s: VQLPIPSState): void {
    if (s === null || typeof s !== 'object') typeError('state', 'a VQLPIPSState object', s);
    if (this.lecam && s.lecam) this.lecam.loadState(s.lecam);
    else if (this.lecam && !s.lecam)
      rangeError('state.lecam', 'the LeCAM EMA state (lecam_loss_weight is set)', s.lecam);
  }
}
