// Models free their weights on dispose(): later use is a MergeVQError ERR_DISPOSED naming a
// weight, and loading or initializing again makes them usable. The async MergeAR sampler equals
// the sync one.
import { describe, expect, it } from 'vitest';
import { MergeVQError } from '../lib/errors.js';
import { MergeARGPT, generateMergeAR, generateMergeARSync } from '../lib/generator/mergear.js';
import { MergeVQTokenizer } from '../lib/tokenizer/tokenizer.js';
import { Tensor } from '../lib/tensor.js';
import { tinyGPTArgs, tinyGRArgs } from './helpers.js';

const TOK = tinyGRArgs();
const GPT = tinyGPTArgs();
const i64 = (v: number[]) => Tensor.from(BigInt64Array.from(v, BigInt), [v.length]);

describe('dispose', () => {
  it('a disposed tokenizer refuses work with ERR_DISPOSED until weights come back', async () => {
    const tok = MergeVQTokenizer.fromConfig(TOK);
    tok.store.initRandom(1);
    const x = Tensor.from(new Float32Array(2 * 16 * 16).fill(0.1), [2, 1, 16, 16]);
    const before = tok.encodeSync(x).indices.toArray<'int64'>().slice();
    const weights = [...tok.store.stateDict().values()];
    const copy = new Map([...tok.store.stateDict()].map(([n, t]) => [n, Tensor.from(t.toFloat32().slice(), t.shape)]));
    tok.dispose();
    expect(tok.store.disposed).toBe(true);
    expect(weights.every((t) => t.disposed)).toBe(true);
    let err: unknown;
    try {
      tok.encodeSync(x);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(MergeVQError);
    expect((err as MergeVQError).code).toBe('ERR_DISPOSED');
    expect(String((err as Error).message)).toMatch(/weight '/);
    tok.loadWeights(copy);
    expect(tok.store.disposed).toBe(false);
    expect(Array.from(tok.encodeSync(x).indices.toArray<'int64'>())).toEqual(Array.from(before));
  });

  it('a disposed MergeAR generator refuses work; the async sampler equals the sync one', async () => {
    const gen = new MergeARGPT(GPT, { numCandidates: 3 });
    gen.store.initRandom(2);
    const opts = { seed: 5, cfgScale: 2, topK: 10 };
    const a = await generateMergeAR(gen, i64([0, 3]), i64([1, 2]), opts);
    const b = generateMergeARSync(gen, i64([0, 3]), i64([1, 2]), opts);
    expect(Array.from(a.pre.toArray<'int64'>())).toEqual(Array.from(b.pre.toArray<'int64'>()));
    expect(Array.from(a.post.toArray<'int64'>())).toEqual(Array.from(b.post.toArray<'int64'>()));
    gen.dispose();
    await expect(generateMergeAR(gen, i64([0]), i64([0]))).rejects.toMatchObject({ code: 'ERR_DISPOSED' });
    gen.store.initRandom(2);
    const c = generateMergeARSync(gen, i64([0, 3]), i64([1, 2]), opts);
    expect(Array.from(c.pre.toArray<'int64'>())).toEqual(Array.from(b.pre.toArray<'int64'>()));
  });
});
