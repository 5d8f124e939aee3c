// Tokenizer parity with the reference (fixtures/tokenizer_weights + tokenizer_io), data-driven
// over every directory in MERGEVQ_FIXTURES. The model is built from the fixture's own metadata.
import { beforeAll, expect, it } from 'vitest';
import type { Tensor } from '../lib/tensor.js';
import { MergeVQTokenizer, type DecodeResult, type EncodeResult } from '../lib/tokenizer/tokenizer.js';
import { forEachFixtureDir, loadFixture, relErr } from './fixtures.js';

forEachFixtureDir('tokenizer_io.safetensors', (io, dir) => {
  let tok: MergeVQTokenizer;
  let enc: EncodeResult;
  let given: DecodeResult;
  let learned: DecodeResult | null = null;
  let keep: number;

  beforeAll(async () => {
    const w = loadFixture(dir, 'tokenizer_weights.safetensors');
    const ddconfig = w.meta<Record<string, unknown>>('ddconfig');
    const k2lconfig = w.meta<Record<string, unknown>>('k2lconfig');
    tok = MergeVQTokenizer.fromConfig({
      ddconfig,
      k2lconfig,
      n_embed: w.meta('n_embed'),
      embed_dim: w.meta('embed_dim'),
    });
    const tensors = new Map<string, Tensor>();
    for (const n of w.names) tensors.set(n, w.tensor(n));
    const report = tok.loadWeights(tensors);
    expect(report.missing).toEqual([]);
    expect(report.unexpected).toEqual([]);
    w.close();
    keep = (k2lconfig.keep_num as number) ?? tok.defaultKeep;
    const image = io().tensor('image');
    enc = await tok.encode(image, { keep });
    given = await tok.decode({ codes: enc.codes, source: enc.source });
    if (tok.recovery) learned = await tok.decode({ codes: enc.codes, source: 'learned' });
  });

  const close = (name: string, ours: () => Tensor, tol = 1e-4) =>
    it(`${name} within ${tol} relative`, () => {
      const err = relErr(ours().toFloat32(), io().array(name) as Float32Array);
      expect(err, `${name}: relative error ${err}`).toBeLessThan(tol);
    });

  close('enc_cnn', () => enc.encCnn);
  close('z', () => enc.z);
  close('size', () => enc.size);
  close('cls_head', () => enc.clsHead!);
  close('quantized', () => enc.codes);
  it('indices equal', () => {
    expect(Array.from(enc.indices.toArray<'int64'>())).toEqual(Array.from(io().array('indices') as BigInt64Array));
  });
  it('source equals the reference dense source', () => {
    const dense = MergeVQTokenizer.denseSource(enc.source, keep).toFloat32();
    expect(Array.from(dense)).toEqual(Array.from(io().array('source') as Float32Array));
  });
  close('full_given', () => given.full);
  close('decoded_given', () => given.images);
  close('recovered_tokens', () => learned!.recovered!.tokens);
  close('recovered_source', () => learned!.recovered!.sourceT);
  close('full_learned', () => learned!.full);
  close('decoded_learned', () => learned!.images);

  it('sync and async forms agree exactly', () => {
    const image = io().tensor('image');
    const s = tok.encodeSync(image, { keep });
    expect(Array.from(s.z.toFloat32())).toEqual(Array.from(enc.z.toFloat32()));
  });
});
