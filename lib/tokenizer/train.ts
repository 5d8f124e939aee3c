/**
 * The tokenizer's generator-side loss (docs/model.md, "Training objective"), as an op program so it can be recorded by
 * a `Tape` and differentiated. Terms: reconstruction (L1 as the reference code, or L2 as the
 * paper), LFQ entropy aux (per-sample minus codebook entropy), commitment, the class loss
 * (label-smoothed cross-entropy on labels when no teacher is given), and this project's
 * source-recovery loss: the mean over full positions of -log(S_hat[group(l), l] + 1e-12), with
 * group(l) the kept token that holds position l in the encoder's true source.
 * (Perceptual and GAN terms need user-supplied networks and are added by the caller.)
 */
import { checkKeys, optionKeys } from '../errors.js';
import type { Program } from '../graph.js';
import { lfqEntropy, lfqQuantize } from '../ops/lfq.js';
import { crossEntropy, l1Loss, mseLoss, softmax } from '../ops/nn.js';
import { add, detach, gather, log, mean, permute, scale, sub } from '../ops/tensor.js';
import { reshape } from '../nn/layers.js';
import type { Tensor } from '../tensor.js';
import type { EncoderOutput } from './encoder.js';
import { keptSourceMap, unmergeGrid, type MergeVQTokenizer } from './tokenizer.js';

export interface LossWeights {
  recon: 'l1' | 'l2';
  aux: number;
  commitment: number;
  cls: number;
  /** Source-recovery loss weight (0.5 for G+R, 1.0 for R in this project). */
  source: number;
  labelSmoothing: number;
  /** LFQ softmax temperature (0.01 in the reference). */
  temperature: number;
}

const LOSS_WEIGHT_KEYS = optionKeys<LossWeights>()([
  'recon',
  'aux',
  'commitment',
  'cls',
  'source',
  'labelSmoothing',
  'temperature',
]);

export const DEFAULT_LOSS_WEIGHTS: LossWeights = {
  recon: 'l1',
  aux: 0.1,
  commitment: 0.25,
  cls: 1.0,
  source: 0.5,
  labelSmoothing: 0.1,
  temperature: 0.01,
};

export interface LossTerms {
  loss: Tensor;
  recon: Tensor;
  aux: Tensor;
  perSample: Tensor;
  codebook: Tensor;
  commitment: Tensor;
  cls: Tensor | null;
  source: Tensor | null;
  /** The decoded images (given source). */
  decoded: Tensor;
}

function* weighted(terms: [Tensor, number][]): Program<Tensor> {
  let acc: Tensor | null = null;
  for (const [t, w] of terms) {
    const s = w === 1 ? t : yield* scale(t, w, 0);
    acc = acc ? yield* add(acc, s) : s;
  }
  return acc!;
}

/** Everything one training forward pass produces, before the terms are weighted. */
export interface ForwardTerms {
  /** Decoded images (the decoder fed the true-source unmerge of the codes). */
  decoded: Tensor;
  /** Per-sample and codebook entropies of the LFQ aux loss, and aux = perSample - codebook. */
  perSample: Tensor;
  codebook: Tensor;
  aux: Tensor;
  /** mean (z - code)^2 (codes detached). */
  commitment: Tensor;
  /** Label-smoothed CE of dist_head(cls) on the labels (null without labels or a dist_head). */
  cls: Tensor | null;
  /** The learned recovery's loss (null without a recovery model or with weight 0). */
  source: Tensor | null;
  /** The encoder's outputs (z, source map, cls features ...). */
  enc: EncoderOutput;
}

/**
 * One training forward pass: encode with the merge schedule of `keep`, quantize, unmerge with the
 * true source, decode; plus the quantizer, class and source-recovery terms. The reconstruction
 * and adversarial terms are the caller's (see `tokenizerLoss`, or the full objective).
 */
export function* tokenizerForward(
  tok: MergeVQTokenizer,
  images: Tensor,
  labels: Tensor | null,
  keep: number,
  w: Pick<LossWeights, 'cls' | 'source' | 'labelSmoothing' | 'temperature'> = DEFAULT_LOSS_WEIGHTS,
): Program<ForwardTerms> {
  checkKeys('tokenizerForward weights', w, LOSS_WEIGHT_KEYS); // a whole LossWeights is fine too
  const enc = yield* tok.encoder.forward(images, tok.mergeSchedule(keep));
  const { codes } = yield* lfqQuantize(enc.z, { dim: 1 }); // [B, d, s, s]
  const source = keptSourceMap(enc.sourceMap); // [B, L] int64
  const full = yield* unmergeGrid(codes, source);
  const decoded = yield* tok.decoder.forward(full);

  const [B, d, s] = enc.z.shape as [number, number, number];
  // z [B, d, s, s] -> [B, s, s, d] -> rows [B*s*s, d]; the entropies are scalars []
  const rows = yield* reshape(yield* permute(enc.z, [0, 2, 3, 1]), [B * s * s, d]);
  const { perSample, codebook } = yield* lfqEntropy(rows, { temperature: w.temperature });
  const aux = yield* sub(perSample, codebook);
  const commitment = yield* mseLoss(enc.z, yield* detach(codes), { reduction: 'mean' });

  let cls: Tensor | null = null;
  if (labels && enc.clsHead && w.cls) {
    cls = yield* crossEntropy(enc.clsHead, labels, { labelSmoothing: w.labelSmoothing, reduction: 'mean' });
  }
  let src: Tensor | null = null;
  if (tok.recovery && w.source) {
    const K = keep;
    const kept = yield* permute(yield* reshape(codes, [B, d, K]), [0, 2, 1]); // [B, K, d]
    const rec = yield* tok.recovery.forward(kept);
    const L = tok.fullNum;
    // -mean log(S_hat[group(l), l] + 1e-12), S_hat = softmax over the kept tokens (as the fixtures define it)
    const probs = yield* softmax(yield* reshape(rec.logits, [B * L, K]), { dim: -1 }); // [B*L, K]
    const picked = yield* gather(probs, yield* reshape(source, [B * L, 1]), 1); // [B*L, 1]
    const logp = yield* log(yield* scale(picked, 1, 1e-12));
    src = yield* scale(yield* mean(logp), -1, 0); // scalar []
  }
  return { decoded, perSample, codebook, aux, commitment, cls, source: src, enc };
}

/** The training loss of one batch (images [B, 3, R, R], integer labels [B] for the class loss). */
export function* tokenizerLoss(
  tok: MergeVQTokenizer,
  images: Tensor,
  labels: Tensor | null,
  keep: number,
  w: LossWeights = DEFAULT_LOSS_WEIGHTS,
): Program<LossTerms> {
  checkKeys('tokenizerLoss weights', w, LOSS_WEIGHT_KEYS);
  const f = yield* tokenizerForward(tok, images, labels, keep, w);
  const recon =
    w.recon === 'l1'
      ? yield* l1Loss(f.decoded, images, { reduction: 'mean' })
      : yield* mseLoss(f.decoded, images, { reduction: 'mean' });
  const terms: [Tensor, number][] = [
    [recon, 1],
    [f.aux, w.aux],
    [f.commitment, w.commitment],
  ];
  if (f.cls) terms.push([f.cls, w.cls]);
  if (f.source) terms.push([f.source, w.source]);
  const loss = yield* weighted(terms);
  return {
    loss,
    recon,
    aux: f.aux,
    perSample: f.perSample,
    codebook: f.codebook,
    commitment: f.commitment,
    cls: f.cls,
    source: f.source,
    decoded: f.decoded,
  };
}
