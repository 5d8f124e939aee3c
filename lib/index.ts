/**
 * mergevq: MergeVQ (token merging + lookup-free quantization) for Node.js on a native C++/CUDA core.
 *
 * ```ts
 * import { MergeVQTokenizer, loadImages } from 'mergevq';
 * const tok = MergeVQTokenizer.fromConfig('imagenet_mergevq_256_GR_d64_8gpu_200ep.yaml');
 * tok.loadWeights(await readWeights('model.safetensors'));
 * const { indices, source } = await tok.encode(await loadImages(['cat.jpg'], 256), { keep: 144 });
 * const { images } = await tok.decode({ indices, source });
 * ```
 */
export { MergeVQError } from './errors.js';
export { Tensor, type TypedArrayFor } from './tensor.js';
export { addon, runOp, runOpAsync, type DType, type DeviceName, type NativeTensor, type Attrs } from './native.js';
export { call, call1, op, op1, runAsync, runSync, type OpRequest, type Program } from './graph.js';
export { ParamStore, type LoadReport } from './nn/params.js';
export {
  loadConfigFile,
  parseConfigYaml,
  normalizeConfig,
  type TokenizerConfig,
  type DDConfig,
  type K2LConfig,
} from './tokenizer/config.js';
export { MergeVQTokenizer, type EncodeResult, type DecodeInput, type DecodeResult } from './tokenizer/tokenizer.js';
export { loadTokenizer, readWeights, type LoadTokenizerOptions } from './tokenizer/load.js';
export {
  parseR,
  checkParseR,
  generateProbList,
  mergeCandidates,
  MergeSchedulePicker,
  type MergeCandidates,
  type MergePick,
} from './tokenizer/schedule.js';
export {
  tokenizerLoss,
  tokenizerForward,
  DEFAULT_LOSS_WEIGHTS,
  type LossWeights,
  type LossTerms,
  type ForwardTerms,
} from './tokenizer/train.js';
export * as train from './train/index.js';
export * as data from './data/index.js';
export { Tape, defineGrad, defineNonDifferentiable, type GradRule } from './autograd.js';
export { release, RELEASE } from './graph.js';
export * as ops from './ops/index.js';
export * from './io/index.js';
export {
  loadImages,
  loadImage,
  encodeImage,
  imageGrid,
  sourceMapImage,
  sourceMapTensor,
  upscaleNearest,
  type ImageInput,
  type ImageFormat,
} from './io/image.js';
export {
  generateImages,
  generateImagesSync,
  generateImagesProgram,
  type GenerateImagesOptions,
  type GeneratedImages,
  type KVCacheUse,
} from './generator/images.js';
export {
  loadDefaultModels,
  loadGenerator,
  modelFiles,
  DEFAULT_MODEL,
  type DefaultModels,
  type ModelFiles,
  type LoadGeneratorOptions,
} from './pretrained.js';
export {
  MergeVQGPT,
  generate,
  generateSync,
  sampleProgram,
  SeededRandom,
  loadGPTConfigFile,
  parseGPTConfigYaml,
  normalizeGPTConfig,
  type GPTConfig,
  type SampleOptions,
  type SampleResult,
  type GPTLogits,
} from './generator/index.js';
export {
  MergeARGPT,
  MergeARDecoder,
  codeGroups,
  maskVisibleKeys,
  decodeReplay,
  mergeARDecodeStats,
  sampleMergeARProgram,
  generateMergeAR,
  generateMergeARSync,
  MERGEAR_WINDOW,
  type MergeAROptions,
  type DecodeMode,
  type DecodeStepStats,
  type DecodeReport,
} from './generator/mergear.js';
export {
  evaluateTokenizer,
  psnr,
  ssim,
  codebookUsage,
  trainLinearProbe,
  trainLinearProbeAsync,
  trainLinearProbeProgram,
  linearProbeFromArrays,
  evaluateGeneration,
  trainPixelClassifier,
  savePixelClassifier,
  loadPixelClassifier,
  type GenerationEvaluation,
  type GenerationEvalOptions,
  type GenerationKeepScores,
  type PixelClassifier,
  type TokenizerEvaluation,
  type EvaluateOptions,
  type KeepEvaluation,
  type ProbeEvaluation,
  type LinearProbe,
  type LinearProbeOptions,
  type CodebookUsage,
} from './eval/index.js';

import { addon } from './native.js';

/** Sets the number of CPU threads native ops use (default: MERGEVQ_NUM_THREADS or all CPUs). */
export function setNumThreads(n: number): void {
  addon.setNumThreads(n);
}
/** The number of CPU threads native ops use. */
export function getNumThreads(): number {
  return addon.getNumThreads();
}
/** Whether `op` has an implementation on `device`. */
export function supports(op: string, device: 'cpu' | 'cuda'): boolean {
  return addon.supports(op, device);
}
/** Whether a CUDA GPU is usable, and why not. */
export function cudaAvailable(): { available: boolean; reason: string | null } {
  return addon.deviceAvailable('cuda');
}
