/**
 * Building a ready tokenizer from a config (YAML path or object) and weights (safetensors with the
 * reference's names, or a Lightning/PyTorch .ckpt read with the restricted unpickler).
 */
import { extname } from 'node:path';
import { MergeVQError, checkKeys, optionKeys, typeError } from '../errors.js';
import { loadCheckpoint } from '../io/checkpoint.js';
import { readSafetensors } from '../io/safetensors.js';
import type { LoadReport } from '../nn/params.js';
import type { Tensor } from '../tensor.js';
import type { TokenizerConfig } from './config.js';
import { MergeVQTokenizer } from './tokenizer.js';

export interface LoadTokenizerOptions {
  /** A reference YAML path or a config object. */
  config: string | TokenizerConfig | Record<string, unknown>;
  /** A .safetensors, .ckpt or .pt file; omitted: random weights (`seed`). */
  weights?: string;
  /** EMA or raw weights from a Lightning checkpoint (default 'ema' when present). */
  prefer?: 'ema' | 'raw';
  /** Seed for random initialization when no weights are given. */
  seed?: number;
  /** Throw when weights are missing (default false: reported). */
  strict?: boolean;
}
const LOAD_TOKENIZER_KEYS = optionKeys<LoadTokenizerOptions>()(['config', 'weights', 'prefer', 'seed', 'strict']);

/** Options of {@link readWeights}. */
export interface ReadWeightsOptions {
  /** EMA or raw weights from a Lightning checkpoint (default 'ema' when present). */
  prefer?: 'ema' | 'raw';
  /** The parameter names the caller expects (a checkpoint's `loadCheckpoint` option). */
  expected?: Iterable<string>;
}
const READ_WEIGHTS_KEYS = optionKeys<ReadWeightsOptions>()(['prefer', 'expected']);

/** Reads the tensors of a weights file by name (safetensors or checkpoint). */
export async function readWeights(path: string, opts: ReadWeightsOptions = {}): Promise<Map<string, Tensor>> {
  if (typeof path !== 'string') typeError('weights', 'a file path', path);
  checkKeys('readWeights options', opts, READ_WEIGHTS_KEYS);
  const ext = extname(path).toLowerCase();
  if (ext === '.safetensors') {
    const f = await readSafetensors(path);
    try {
      const out = new Map<string, Tensor>();
      for (const n of f.names) out.set(n, await f.tensorAsync(n));
      if (out.size === 0) throw new MergeVQError(`${path}: the file holds no tensors`, 'ERR_BAD_FILE');
      return out;
    } finally {
      await f.closeAsync();
    }
  }
  const ck = await loadCheckpoint(path, {
    prefer: opts.prefer ?? 'ema',
    expected: opts.expected,
    skipUnknownGlobals: true,
    convertF64: true,
  });
  return ck.tensors;
}

/** Builds a tokenizer and loads its weights. Returns the tokenizer and the load report. */
export async function loadTokenizer(
  opts: LoadTokenizerOptions,
): Promise<{ tokenizer: MergeVQTokenizer; report: LoadReport }> {
  if (opts === null || typeof opts !== 'object') typeError('opts', '{ config, weights?, ... }', opts);
  checkKeys('loadTokenizer options', opts, LOAD_TOKENIZER_KEYS);
  const tok = MergeVQTokenizer.fromConfig(opts.config);
  if (!opts.weights) {
    tok.store.initRandom(opts.seed ?? 0);
    return { tokenizer: tok, report: { missing: [], unexpected: [] } };
  }
  const tensors = await readWeights(opts.weights, { prefer: opts.prefer, expected: tok.store.names() });
  const report = tok.loadWeights(tensors, { strict: opts.strict });
  return { tokenizer: tok, report };
}
