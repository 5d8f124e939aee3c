/**
 * The models that ship inside the package (models/fashion-mnist): a G+R MergeVQ tokenizer and a
 * class-conditional MergeAR generator, both trained by this library on Fashion-MNIST. Loading reads
 * local files only; nothing is downloaded and nothing is initialized at random on the way.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { parse as parseYaml } from 'yaml';
import packageRoot from './root.cjs';
import { MergeVQError, checkKeys, optionKeys, typeError } from './errors.js';
import { parseGPTConfigYaml } from './generator/config.js';
import { MergeVQGPT } from './generator/gpt.js';
import { MergeARGPT } from './generator/mergear.js';
import type { LoadReport } from './nn/params.js';
import { loadTokenizer, readWeights } from './tokenizer/load.js';
import type { MergeVQTokenizer } from './tokenizer/tokenizer.js';

/** Paths of one shipped model set. */
export interface ModelFiles {
  /** The folder holding the files. */
  dir: string;
  tokenizerConfig: string;
  tokenizerWeights: string;
  generatorConfig: string;
  generatorWeights: string;
}

/** Name of the default model set. */
export const DEFAULT_MODEL = 'fashion-mnist';

/**
 * The files of a shipped model set (default {@link DEFAULT_MODEL}). Throws a MergeVQError
 * ERR_NOT_FOUND naming the first missing file.
 */
export function modelFiles(name: string = DEFAULT_MODEL): ModelFiles {
  if (typeof name !== 'string' || !/^[a-z0-9][a-z0-9-]*$/.test(name))
    typeError('name', 'a model name such as "fashion-mnist"', name);
  const dir = join(packageRoot(), 'models', name);
  const f: ModelFiles = {
    dir,
    tokenizerConfig: join(dir, 'tokenizer.yaml'),
    tokenizerWeights: join(dir, 'tokenizer.safetensors'),
    generatorConfig: join(dir, 'generator.yaml'),
    generatorWeights: join(dir, 'generator.safetensors'),
  };
  for (const p of [f.tokenizerConfig, f.tokenizerWeights, f.generatorConfig, f.generatorWeights])
    if (!existsSync(p) || !statSync(p).isFile())
      throw new MergeVQError(`model '${name}': missing file ${p}`, 'ERR_NOT_FOUND');
  return f;
}

/** Options of {@link loadGenerator}. */
export interface LoadGeneratorOptions {
  /** The stage-2 YAML (the reference layout plus `mergear:`). */
  config: string;
  /** Trained weights (.safetensors with the reference's names, or a checkpoint). */
  weights: string;
  /** Build the plain GPT even when the config enables MergeAR (MergeAR weights load into it; merge_emb is ignored). */
  plain?: boolean;
  /** MergeAR's recent window w (default: the config's, else 2). */
  window?: number;
}
const LOAD_GENERATOR_KEYS = optionKeys<LoadGeneratorOptions>()(['config', 'weights', 'plain', 'window']);

/** Options of {@link loadDefaultModels}. */
export interface LoadDefaultModelsOptions {
  /** The model set under models/ (default {@link DEFAULT_MODEL}). */
  name?: string;
  /** MergeAR's recent window w. */
  window?: number;
  /** Build the generator without MergeAR. */
  plain?: boolean;
}
const LOAD_DEFAULT_MODELS_KEYS = optionKeys<LoadDefaultModelsOptions>()(['name', 'window', 'plain']);

/**
 * Builds the generator a stage-2 YAML describes and loads its weights (strict: every weight must
 * be present). With `mergear.enabled` (the default of this library's configs) a {@link MergeARGPT}
 * whose keep-count table size comes from the weights' `merge_emb.weight`.
 */
export async function loadGenerator(
  opts: LoadGeneratorOptions,
): Promise<{ generator: MergeVQGPT | MergeARGPT; report: LoadReport }> {
  if (!opts || typeof opts !== 'object') typeError('opts', '{ config, weights }', opts);
  checkKeys('loadGenerator options', opts, LOAD_GENERATOR_KEYS);
  if (typeof opts.config !== 'string') typeError('opts.config', 'a YAML file path', opts.config);
  if (typeof opts.weights !== 'string') typeError('opts.weights', 'a weights file path', opts.weights);
  if (!existsSync(opts.config))
    throw new MergeVQError(`generator config: no such file: ${opts.config}`, 'ERR_NOT_FOUND');
  const text = readFileSync(opts.config, 'utf8');
  const cfg = parseGPTConfigYaml(text, opts.config);
  const doc = (parseYaml(text) ?? {}) as { mergear?: { enabled?: unknown; window?: unknown } };
  const mer = doc.mergear && typeof doc.mergear === 'object' ? doc.mergear : {};
  const tensors = await readWeights(opts.weights);
  const emb = tensors.get('merge_emb.weight');
  const useMergeAR = !opts.plain && mer.enabled !== false && emb !== undefined;
  let generator: MergeVQGPT | MergeARGPT;
  if (useMergeAR) {
    const window = opts.window ?? (typeof mer.window === 'number' ? mer.window : undefined);
    generator = new MergeARGPT(cfg, { numCandidates: emb.shape[0]!, ...(window === undefined ? {} : { window }) });
  } else {
    generator = new MergeVQGPT(cfg);
    tensors.delete('merge_emb.weight');
  }
  const report = generator.loadWeights(tensors, { strict: true });
  return { generator, report };
}

/** The shipped tokenizer and generator, ready to use. */
export interface DefaultModels {
  tokenizer: MergeVQTokenizer;
  generator: MergeVQGPT | MergeARGPT;
  files: ModelFiles;
}

/**
 * Loads a shipped model set (default: the Fashion-MNIST tokenizer and MergeAR generator).
 * `window` sets MergeAR's recent window; `plain` builds the generator without MergeAR.
 */
export async function loadDefaultModels(opts: LoadDefaultModelsOptions = {}): Promise<DefaultModels> {
  checkKeys('loadDefaultModels options', opts, LOAD_DEFAULT_MODELS_KEYS);
  const files = modelFiles(opts.name);
  const { tokenizer } = await loadTokenizer({
    config: files.tokenizerConfig,
    weights: files.tokenizerWeights,
    strict: true,
  });
  const { generator } = await loadGenerator({
    config: files.generatorConfig,
    weights: files.generatorWeights,
    plain: opts.plain,
    window: opts.window,
  });
  return { tokenizer, generator, files };
}
