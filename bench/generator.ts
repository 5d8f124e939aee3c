/**
 * Suite `generator`: class-conditional generation with the shipped Fashion-MNIST models (one
 * image per class, guidance 2, so 20 rows per step), 64 tokens plus the decode, through the async
 * API and sync, with MergeAR's compacted KV cache and with a full cache; tokens/s counts generated
 * tokens of the 10 images, and `kv_ratio` the live cache rows against a full cache after the last
 * token. torch_ms: null (the reference has no MergeAR sampler to compare with).
 */
import { generateImages, generateImagesSync } from '../lib/generator/images.js';
import { loadDefaultModels } from '../lib/pretrained.js';
import type { BenchContext } from './common.js';

export async function run(ctx: BenchContext): Promise<void> {
  const t0 = performance.now();
  const { tokenizer, generator } = await loadDefaultModels();
  const loadMs = performance.now() - t0;
  ctx.report({ name: 'load_default_models', shape: 'tokenizer + generator', batch: 1, ms: loadMs, torch_ms: null });
  const classes = Array.from({ length: 10 }, (_, i) => i);
  const L = tokenizer.fullNum;
  for (const mergear of [true, false]) {
    for (const sync of [false, true]) {
      const opts = { classes, cfgScale: 2, seed: 0, mergear };
      let kv: number | null = null;
      const ms = await ctx.timeAsync(
        async () => {
          const g = sync
            ? generateImagesSync(tokenizer, generator, opts)
            : await generateImages(tokenizer, generator, opts);
          kv = g.kv?.ratio ?? null;
        },
        { reps: 5, warmup: 1, budgetMs: 60_000 },
      );
      ctx.report({
        name: `generate_${mergear ? 'mergear' : 'full_cache'}_${sync ? 'sync' : 'async'}`,
        shape: `L${L} keep ${tokenizer.defaultKeep} cfg 2`,
        batch: classes.length,
        ms,
        tokens_per_s: (classes.length * L * 1000) / ms,
        kv_ratio: kv,
        torch_ms: null,
      });
    }
  }
}
