/**
 * Suite `train`: one training step of the default models on synthetic data of their shapes.
 * - `tokenizer_step`: generator pass (full objective + recovery loss) and backward, discriminator
 *   pass and backward, both Adam steps and the EMA update, for configs/fashion-mnist/
 *   mergevq_fmnist_GR.yaml at batch 32 (images/s); once with the discriminator off (before
 *   disc_start) and once on.
 * - `generator_step`: one MergeAR training step (CE on both sub-tokens, backward, clipping,
 *   AdamW) for configs/fashion-mnist/mergear_fmnist.yaml at batch 64 (tokens/s).
 * Both sync (ops on the calling thread) and async (each op a libuv job). torch_ms: null (no
 * PyTorch version of these steps exists in bench/torch yet).
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseConfigYaml } from '../lib/tokenizer/config.js';
import { MergeVQTokenizer } from '../lib/tokenizer/tokenizer.js';
import { parseGPTConfigYaml } from '../lib/generator/config.js';
import { MergeARGPT } from '../lib/generator/mergear.js';
import { TokenizerTrainer } from '../lib/train/tokenizer-trainer.js';
import { ARTrainer } from '../lib/train/ar-trainer.js';
import type { Dataset } from '../lib/data/loader.js';
import type { Codes } from '../lib/train/codes.js';
import { readTokenizerRunConfig } from '../lib/cli/train.js';
import type { BenchContext } from './common.js';

const root = fileURLToPath(new URL('../../', import.meta.url));
const TOK = `${root}configs/fashion-mnist/mergevq_fmnist_GR.yaml`;
const GEN = `${root}configs/fashion-mnist/mergear_fmnist.yaml`;

/** Deterministic pseudo-images of the config's shape (the step's cost does not depend on content). */
function synthetic(n: number, c: number, s: number): Dataset {
  return {
    length: n,
    sampleShape: [c, s, s],
    async get(i) {
      const a = new Float32Array(c * s * s);
      for (let k = 0; k < a.length; ++k) a[k] = Math.sin(0.37 * k + 1.7 * i) * 0.9;
      return { image: a, label: i % 10 };
    },
  };
}

export async function run(ctx: BenchContext): Promise<void> {
  const run = readTokenizerRunConfig(TOK);
  const B = run.data.batchSize;
  for (const sync of [true, false]) {
    for (const disc of [false, true]) {
      const tok = new MergeVQTokenizer(parseConfigYaml(readFileSync(TOK, 'utf8'), TOK));
      tok.store.initRandom(0);
      const dd = tok.config.ddconfig;
      const tr = new TokenizerTrainer({
        tokenizer: tok,
        data: { dataset: synthetic(B * 8, dd.in_channels, dd.resolution), batchSize: B, seed: 0 },
        loss: { disc_in_channels: dd.out_ch, ...run.loss, disc_start: disc ? 0 : 1_000_000 },
        learningRate: run.learningRate,
        sync,
      });
      const ms = await ctx.timeAsync(
        async () => {
          await tr.fit({ steps: 1 });
        },
        { reps: 5, warmup: 1, budgetMs: 60_000 },
      );
      await tr.close();
      ctx.report({
        name: `tokenizer_step_${sync ? 'sync' : 'async'}${disc ? '' : '_nodisc'}`,
        shape: `${dd.in_channels}x${dd.resolution}x${dd.resolution} L${tok.fullNum}`,
        batch: B,
        ms,
        images_per_s: (B * 1000) / ms,
        params: tok.store.count(),
        torch_ms: null,
      });
    }
  }

  const text = readFileSync(GEN, 'utf8');
  const g = parseGPTConfigYaml(text, GEN);
  const L = g.block_size;
  const N = 64 * 4;
  const bits = g.factorized_bits[0]! + g.factorized_bits[1]!;
  const codes: Codes = {
    indices: BigInt64Array.from({ length: N * L }, (_, i) => BigInt((i * 2654435761) % 2 ** bits)),
    source: BigInt64Array.from({ length: N * L }, (_, i) => BigInt(i % L)),
    keepIndex: BigInt64Array.from({ length: N }, (_, i) => BigInt(i % 4)),
    labels: BigInt64Array.from({ length: N }, (_, i) => BigInt(i % g.class_num)),
    meta: { fullNum: L, bits, keepCandidates: [25, 36, 49, 64], keepMode: 'sample', seed: 0, count: N },
  };
  for (const sync of [true, false]) {
    const model = new MergeARGPT(g, { numCandidates: 4 });
    model.store.initRandom(0);
    const tr = new ARTrainer({ model, codes, batchSize: 64, sync, maxEpochs: 100 });
    const ms = await ctx.timeAsync(
      async () => {
        await tr.fit({ steps: 1 });
      },
      { reps: 5, warmup: 1, budgetMs: 60_000 },
    );
    ctx.report({
      name: `generator_step_${sync ? 'sync' : 'async'}`,
      shape: `L${L} dim${g.dim} ${g.spatial_n_layer}+${g.factorized_n_layer} layers`,
      batch: 64,
      ms,
      tokens_per_s: (64 * L * 1000) / ms,
      params: model.store.count(),
      torch_ms: null,
    });
  }
}
