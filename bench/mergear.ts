/**
 * Suite `mergear`: MergeAR compacted-cache decoding against full-cache causal decoding with the
 * same weights, on a GPT-B-shaped but shallow random model (dim 1024, 16 heads, 2 spatial and 2
 * factorized layers, bits [6, 12], 256 tokens). The token sequence unmerges K = 144 random codes
 * with a random source map (every kept token owns at least one grid cell), as a G+R tokenizer's
 * restored grid would. Reports per decode step (every 32nd, and the last) KV length and bytes and
 * visible pairs for both, and the tokens/s of the whole decode (spatial + factorized + heads).
 * The attention FLOPs of a step are 4 * hd * H * layers * visible pairs.
 */
import { MergeARGPT, mergeARDecodeStats } from '../lib/generator/index.js';
import { Tensor } from '../lib/tensor.js';
import type { BenchContext } from './common.js';

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 4294967296;
  };
}

export function run(ctx: BenchContext): void {
  const L = 256;
  const K = 144;
  const cfg = {
    vocab_size: 2 ** 18,
    block_size: L,
    spatial_n_layer: 2,
    factorized_n_layer: 2,
    n_head: 16,
    dim: 1024,
    class_num: 1000,
    factorized_bits: [6, 12],
  };
  const model = new MergeARGPT(cfg, { numCandidates: 6 });
  model.store.initRandom(1);
  const rnd = lcg(7);
  const codes = Array.from({ length: K }, () => [Math.floor(rnd() * 64), Math.floor(rnd() * 4096)] as const);
  // Random source map: a random permutation gives K cells one kept token each, the rest draw at random.
  const cells = Array.from({ length: L }, (_, i) => i);
  for (let i = L - 1; i > 0; --i) {
    const j = Math.floor(rnd() * (i + 1));
    [cells[i], cells[j]] = [cells[j]!, cells[i]!];
  }
  const src = new Array<number>(L);
  cells.forEach((c, r) => (src[c] = r < K ? r : Math.floor(rnd() * K)));
  const pre = Tensor.from(
    BigInt64Array.from(src, (s) => BigInt(codes[s]![0])),
    [1, L],
  );
  const post = Tensor.from(
    BigInt64Array.from(src, (s) => BigInt(codes[s]![1])),
    [1, L],
  );
  const labels = Tensor.from(BigInt64Array.from([207n]), [1]);
  const keepIndex = Tensor.from(BigInt64Array.from([2n]), [1]);

  // Short warm-up (allocator, page faults) on the first 16 tokens, then the measured pass.
  const head = (t: Tensor) => Tensor.from(t.toArray<'int64'>().slice(0, 16), [1, 16]);
  mergeARDecodeStats(model, head(pre), head(post), labels, keepIndex);
  const s = mergeARDecodeStats(model, pre, post, labels, keepIndex);
  const hd = model.headDim;
  const H = cfg.n_head;
  const layers = cfg.spatial_n_layer;
  for (const rep of [s.compact, s.full]) {
    rep.steps.forEach((st, n) => {
      if (n % 32 !== 0 && n !== rep.steps.length - 1) return;
      ctx.report({
        name: `mergear_${rep.mode}_step`,
        shape: `pos ${st.pos}`,
        ms: rep.stepMs[n]!,
        kv_len: st.kvLen,
        kv_bytes: st.kvBytes,
        visible_pairs: st.visiblePairs,
      });
    });
    const flops = 4 * hd * H * layers * rep.totalVisiblePairs;
    ctx.report({
      name: `mergear_${rep.mode}_total`,
      shape: `L ${L}, K ${K}, D 1024, H 16, 2+2 layers`,
      ms: rep.totalMs,
      gflops: null,
      tokens_per_s: Number(rep.tokensPerSec.toFixed(1)),
      final_kv_len: rep.finalKvLen,
      final_kv_bytes: rep.finalKvBytes,
      visible_pairs: rep.totalVisiblePairs,
      attention_gflop: Number((flops / 1e9).toFixed(4)),
    });
  }
}
