// Gradient parity of the whole tokenizer with the reference (fixtures/tokenizer_grads): the same
// weights, image and loss formula; every parameter's gradient within 1e-3 relative.
import { beforeAll, describe, expect, it } from 'vitest';
import { Tape } from '../lib/autograd.js';
import { runSync } from '../lib/graph.js';
import type { Tensor } from '../lib/tensor.js';
import { MergeVQTokenizer } from '../lib/tokenizer/tokenizer.js';
import { tokenizerLoss, type LossTerms } from '../lib/tokenizer/train.js';
import { forEachFixtureDir, loadFixture, relErr } from './fixtures.js';

forEachFixtureDir('tokenizer_grads.safetensors', (gradsFile, dir) => {
  let tok: MergeVQTokenizer;
  let terms: LossTerms;
  let grads: Map<Tensor, Tensor>;

  beforeAll(() => {
    const w = loadFixture(dir, 'tokenizer_weights.safetensors');
    const k2l = w.meta<Record<string, unknown>>('k2lconfig');
    tok = MergeVQTokenizer.fromConfig({
      ddconfig: w.meta('ddconfig'),
      k2lconfig: k2l,
      n_embed: w.meta('n_embed'),
      embed_dim: w.meta('embed_dim'),
    });
    const m = new Map<string, Tensor>();
    for (const n of w.names) m.set(n, w.tensor(n));
    tok.loadWeights(m, { strict: true });
    w.close();
    const io = loadFixture(dir, 'tokenizer_io.safetensors');
    const image = io.tensor('image');
    io.close();
    const labels = gradsFile().tensor('labels');
    const tape = new Tape();
    terms = runSync(tokenizerLoss(tok, image, labels, (k2l.keep_num as number) ?? tok.defaultKeep), tape.observe);
    grads = runSync(tape.backward(terms.loss));
  });

  describe('loss terms', () => {
    const term = (name: string, get: () => Tensor | null) =>
      it(`${name} within 1e-3 relative`, () => {
        const err = relErr(get()!.toFloat32(), gradsFile().array(name) as Float32Array);
        expect(err, `${name}: ${err}`).toBeLessThan(1e-3);
      });
    term('loss', () => terms.loss);
    term('l_rec', () => terms.recon);
    term('aux', () => terms.aux);
    term('commitment', () => terms.commitment);
    term('l_cls', () => terms.cls);
    term('l_src', () => terms.source);
  });

  it('every parameter gradient within 1e-3 relative', () => {
    // A gradient that is exactly zero in exact arithmetic (e.g. a per-channel shift that a
    // GroupNorm with one channel per group removes) is float noise in both implementations:
    // those are checked against an absolute floor, 1e-6 of the largest gradient entry.
    let gmax = 0;
    for (const name of tok.store.names())
      for (const v of gradsFile().array(`grad.${name}`) as Float32Array) gmax = Math.max(gmax, Math.abs(v));
    const floor = 1e-6 * gmax;
    const bad: string[] = [];
    let worst = 0;
    let checked = 0;
    for (const name of tok.store.names()) {
      const ref = gradsFile().array(`grad.${name}`) as Float32Array;
      const g = grads.get(tok.store.get(name));
      const ours = g ? g.toFloat32() : new Float32Array(ref.length);
      const refMax = ref.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
      if (refMax < floor) {
        const diff = ours.reduce((m, v, i) => Math.max(m, Math.abs(v - ref[i]!)), 0);
        if (!(diff < floor))
          bad.push(`${name}: |diff| ${diff.toExponential(2)} above the floor ${floor.toExponential(2)}`);
        continue;
      }
      checked++;
      const err = relErr(ours, ref);
      worst = Math.max(worst, err);
      if (!(err < 1e-3)) bad.push(`${name}: ${err.toExponential(2)}`);
    }
    expect(bad, `worst ${worst}`).toEqual([]);
    expect(checked).toBeGreaterThan(tok.store.names().length - 8);
  });
});
