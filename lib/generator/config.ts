/**
 * Configuration of the AR generator (docs/model.md, "AR generator"): the reference GPT's constructor keys
 * (`taming.modules.transformer.gpt.GPT`), with the reference's defaults, read from a plain object
 * or from the stage-2 YAML files (`model.init_args.transformer_config.params`).
 */
import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { MergeVQError, typeError } from '../errors.js';

/** Constructor keys of the reference GPT that shape the model (dropout keys are accepted and ignored). */
export interface GPTConfig {
  vocab_size: number;
  /** Number of image tokens L (a square). */
  block_size: number;
  spatial_n_layer: number;
  factorized_n_layer: number;
  n_head: number;
  dim: number;
  class_num: number;
  factorized_bits: number[];
  factorized_k: number;
  multiple_of: number;
  ffn_dim_multiplier: number | null;
  cls_token_num: number;
  rope_base: number;
  norm_eps: number;
  n_kv_head: number | null;
  /** Label dropout probability in training; > 0 adds the null-class row to the label table. */
  token_drop: number;
}

const DEFAULTS: GPTConfig = {
  vocab_size: 262144,
  block_size: 256,
  spatial_n_layer: 12,
  factorized_n_layer: 2,
  n_head: 8,
  dim: 256,
  class_num: 1000,
  factorized_bits: [9, 9],
  factorized_k: 2,
  multiple_of: 256,
  ffn_dim_multiplier: null,
  cls_token_num: 1,
  rope_base: 10000,
  norm_eps: 1e-5,
  n_kv_head: null,
  token_drop: 0.1,
};

function posInt(key: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1) typeError(`transformer.${key}`, 'a positive integer', v);
  return v;
}

/** Reads a constructor dict (snake_case keys) into a complete, checked {@link GPTConfig}. */
export function normalizeGPTConfig(raw: unknown): GPTConfig {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw))
    typeError('transformer config', 'an object of GPT constructor keys', raw);
  const r = raw as Record<string, unknown>;
  const c: GPTConfig = { ...DEFAULTS, factorized_bits: [...DEFAULTS.factorized_bits] };
  for (const k of Object.keys(DEFAULTS) as (keyof GPTConfig)[])
    if (r[k] !== undefined && r[k] !== null) (c as unknown as Record<string, unknown>)[k] = r[k];
  if (r.ffn_dim_multiplier === null) c.ffn_dim_multiplier = null;
  for (const k of [
    'vocab_size',
    'block_size',
    'spatial_n_layer',
    'n_head',
    'dim',
    'class_num',
    'factorized_k',
    'multiple_of',
    'cls_token_num',
  ] as const)
    posInt(k, c[k]);
  if (!Number.isInteger(c.factorized_n_layer) || c.factorized_n_layer < 0)
    typeError('transformer.factorized_n_layer', 'a non-negative integer', c.factorized_n_layer);
  if (r.token_factorization === false)
    throw new MergeVQError(
      'transformer: only token_factorization=True is supported (as in the reference)',
      'ERR_UNSUPPORTED',
    );
  if (
    !Array.isArray(c.factorized_bits) ||
    c.factorized_bits.length !== c.factorized_k ||
    c.factorized_bits.some((b) => !Number.isInteger(b) || b < 1)
  )
    typeError('transformer.factorized_bits', `${c.factorized_k} positive integers`, c.factorized_bits);
  if (c.factorized_k !== 2)
    throw new MergeVQError(
      `transformer: factorized_k must be 2 (the reference's sampler and forward use two sub-tokens), got ${c.factorized_k}`,
      'ERR_UNSUPPORTED',
    );
  if (c.dim % c.n_head !== 0)
    throw new RangeError(`transformer.dim (${c.dim}) must be divisible by n_head (${c.n_head})`);
  if ((c.dim / c.n_head) % 4 !== 0)
    throw new RangeError(`transformer: head dim ${c.dim / c.n_head} must be a multiple of 4 (2D RoPE)`);
  if (c.n_kv_head !== null && c.n_kv_head !== c.n_head)
    throw new MergeVQError(
      `transformer.n_kv_head ${c.n_kv_head} != n_head ${c.n_head}: grouped-query attention is not supported`,
      'ERR_UNSUPPORTED',
    );
  const g = Math.round(Math.sqrt(c.block_size));
  if (g * g !== c.block_size) throw new RangeError(`transformer.block_size ${c.block_size} must be a square`);
  return c;
}

/** find_multiple(n, k) of the reference. */
export function findMultiple(n: number, k: number): number {
  return n % k === 0 ? n : n + k - (n % k);
}

/** Hidden width of the SwiGLU feed-forward: find_multiple(int(2 * 4D / 3) [* multiplier], multiple_of). */
export function ffnHidden(c: GPTConfig): number {
  let h = Math.trunc((2 * 4 * c.dim) / 3);
  if (c.ffn_dim_multiplier !== null) h = Math.trunc(c.ffn_dim_multiplier * h);
  return findMultiple(h, c.multiple_of);
}

/** Grid side sqrt(block_size). */
export function gridSize(c: GPTConfig): number {
  return Math.round(Math.sqrt(c.block_size));
}

/**
 * Reads the GPT constructor keys from a stage-2 YAML (Lightning CLI format,
 * `model.init_args.transformer_config.params`), or from a bare constructor dict.
 */
export function parseGPTConfigYaml(text: string, source = 'config'): GPTConfig {
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (e) {
    throw new MergeVQError(`${source}: not valid YAML (${(e as Error).message})`, 'ERR_BAD_CONFIG');
  }
  // biome-ignore lint/suspicious/noExplicitAny: a parsed YAML document of any shape
  const d = doc as Record<string, any> | null;
  const params = d?.model?.init_args?.transformer_config?.params ?? d?.transformer_config?.params ?? d;
  if (params === null || typeof params !== 'object')
    throw new MergeVQError(`${source}: no model.init_args.transformer_config.params`, 'ERR_BAD_CONFIG');
  return normalizeGPTConfig(params);
}

/** {@link parseGPTConfigYaml} of a file. */
export function loadGPTConfigFile(path: string): GPTConfig {
  return parseGPTConfigYaml(readFileSync(path, 'utf8'), path);
}
