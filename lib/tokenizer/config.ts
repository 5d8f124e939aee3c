/**
 * Tokenizer configuration: built from the reference's YAML files as they are (Lightning CLI
 * format: `model.init_args.ddconfig`, `k2lconfig`, `n_embed`, `embed_dim`, ...) or from a typed
 * object with the same keys.
 */
import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { MergeVQError, typeError } from '../errors.js';

/** The reference's `ddconfig` (one dict builds encoder and decoder). */
export interface DDConfig {
  z_channels: number;
  resolution: number;
  in_channels: number;
  out_ch: number;
  ch: number;
  ch_mult: number[];
  num_res_blocks: number | number[];
  num_att_blocks: number;
  num_heads?: number;
  head_dim?: number | null;
  num_res_extra?: number;
  dist_head?: string | null;
  num_classes?: number | null;
  merge_num?: number | null;
  merge_ratio?: number | null;
  cand_distribution?: string | null;
  isotropic?: number | boolean | null;
  num_rep_blocks?: number;
  double_z?: boolean;
  [other: string]: unknown;
}

/** The reference's `k2lconfig` (SourceRecovery). */
export interface K2LConfig {
  learn_source?: boolean | null;
  rec_embed_dim?: number;
  num_layers?: number;
  num_heads?: number;
  keep_num?: number | null;
  full_num?: number;
  embed_dim?: number;
  [other: string]: unknown;
}

export interface TokenizerConfig {
  ddconfig: DDConfig;
  k2lconfig: K2LConfig | null;
  n_embed: number;
  embed_dim: number;
  token_factorization?: boolean;
  factorized_bits?: [number, number];
}

function num(o: Record<string, unknown>, key: string, where: string, dflt?: number): number {
  const v = o[key];
  if (v === undefined || v === null) {
    if (dflt !== undefined) return dflt;
    throw new MergeVQError(`${where}: missing '${key}'`, 'ERR_BAD_CONFIG');
  }
  if (typeof v !== 'number' || !Number.isFinite(v))
    throw new MergeVQError(`${where}: '${key}' must be a number, got ${JSON.stringify(v)}`, 'ERR_BAD_CONFIG');
  return v;
}

/** Validates and normalizes a config object (the YAML's `model.init_args`, or the same keys). */
export function normalizeConfig(raw: unknown): TokenizerConfig {
  if (typeof raw !== 'object' || raw === null) typeError('config', 'an object with ddconfig', raw);
  const r = raw as Record<string, unknown>;
  const dd = r.ddconfig as Record<string, unknown> | undefined;
  if (!dd || typeof dd !== 'object') throw new MergeVQError("config: missing 'ddconfig'", 'ERR_BAD_CONFIG');
  const where = 'ddconfig';
  const chMult = dd.ch_mult;
  if (!Array.isArray(chMult) || chMult.length === 0 || chMult.some((m) => typeof m !== 'number'))
    throw new MergeVQError(`${where}: 'ch_mult' must be a non-empty array of numbers`, 'ERR_BAD_CONFIG');
  const ddconfig: DDConfig = {
    ...(dd as object),
    z_channels: num(dd, 'z_channels', where, 18),
    resolution: num(dd, 'resolution', where, 256),
    in_channels: num(dd, 'in_channels', where, 3),
    out_ch: num(dd, 'out_ch', where, 3),
    ch: num(dd, 'ch', where),
    ch_mult: chMult as number[],
    num_res_blocks: Array.isArray(dd.num_res_blocks)
      ? (dd.num_res_blocks as number[])
      : num(dd, 'num_res_blocks', where, 2),
    num_att_blocks: num(dd, 'num_att_blocks', where, 12),
  };
  const k2l = r.k2lconfig && typeof r.k2lconfig === 'object' ? (r.k2lconfig as K2LConfig) : null;
  const bits = r.factorized_bits as [number, number] | undefined;
  return {
    ddconfig,
    k2lconfig: k2l,
    n_embed: typeof r.n_embed === 'number' ? r.n_embed : 2 ** ddconfig.z_channels,
    embed_dim: typeof r.embed_dim === 'number' ? r.embed_dim : ddconfig.z_channels,
    token_factorization: Boolean(r.token_factorization),
    factorized_bits: Array.isArray(bits) && bits.length === 2 ? bits : [9, 9],
  };
}

/** Parses a reference YAML file's text (Lightning CLI format) into a TokenizerConfig. */
export function parseConfigYaml(text: string, source = 'config'): TokenizerConfig {
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (err) {
    throw new MergeVQError(`${source}: invalid YAML: ${(err as Error).message}`, 'ERR_BAD_CONFIG');
  }
  const d = doc as { model?: { init_args?: unknown } } | null;
  const initArgs = d?.model?.init_args ?? doc;
  try {
    return normalizeConfig(initArgs);
  } catch (err) {
    if (err instanceof MergeVQError) err.message = `${source}: ${err.message}`;
    throw err;
  }
}

/** Reads a reference YAML config file. */
export function loadConfigFile(path: string): TokenizerConfig {
  if (typeof path !== 'string') typeError('path', 'a file path string', path);
  return parseConfigYaml(readFileSync(path, 'utf8'), path);
}
