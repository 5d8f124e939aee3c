// Tape.backward({ free: true }) frees intermediate gradients as it goes: the leaves' gradients are
// bit-identical to the keeping pass, only leaves stay in the map, intermediate gradients are
// disposed, pass-through and repeated-input gradients survive where still needed, and a caller's
// seed is never freed. Tape.dispose frees recorded outputs except the kept ones.
import { describe, expect, it } from 'vitest';
import { Tape } from '../lib/autograd.js';
import { runSync, type Program } from '../lib/graph.js';
import { linear } from '../lib/ops/linalg.js';
import { gelu } from '../lib/ops/nn.js';
import { add, concat, mean, mul, scale, slice } from '../lib/ops/tensor.js';
import type { Tensor } from '../lib/tensor.js';
import { Rng, seedInfo, tinyGRArgs } from './helpers.js';
import { MergeVQTokenizer } from '../lib/tokenizer/tokenizer.js';
import { tokenizerLoss } from '../lib/tokenizer/train.js';
import { Tensor as T } from '../lib/tensor.js';

/** A small graph with shared subexpressions: repeated inputs (add(h, h)), a fan-out, slices and a concat. */
function* model(x: Tensor, w: Tensor, b: Tensor, w2: Tensor): Program<{ loss: Tensor; h: Tensor }> {
  const h = yield* gelu(yield* linear(x, w, b));
  const d = yield* add(h, h);
  const e = yield* mul(d, h);
  const parts = yield* concat([yield* slice(e, 1, 0, 3), yield* scale(yield* slice(e, 1, 3), -0.5)], 1);
  const y = yield* linear(parts, w2, null);
  return { loss: yield* mean(yield* mul(y, y)), h };
}

function setup(rng: Rng) {
  return { x: rng.tensor([5, 4]), w: rng.tensor([7, 4], 0.5), b: rng.tensor([7], 0.1), w2: rng.tensor([3, 7], 0.5) };
}

describe('Tape.backward free', () => {
  it('gives the same leaf gradients as the keeping pass and frees every intermediate gradient', () => {
    const rng = new Rng();
    const { x, w, b, w2 } = setup(rng);
    const grads = (free: boolean) => {
      const tape = new Tape();
      const r = runSync(model(x, w, b, w2), tape.observe);
      return { g: runSync(tape.backward(r.loss, null, { free })), r, tape };
    };
    const keep = grads(false);
    const freed = grads(true);
    for (const leaf of [x, w, b, w2]) {
      const a = keep.g.get(leaf)!;
      const c = freed.g.get(leaf)!;
      expect(c.disposed, seedInfo(rng.seed)).toBe(false);
      expect(Array.from(c.toFloat32())).toEqual(Array.from(a.toFloat32()));
    }
    expect(new Set(freed.g.keys())).toEqual(new Set([x, w, b, w2]));
    // the keeping pass has a gradient for h; the freeing one disposed it (and the others it made)
    expect(keep.g.get(keep.r.h)!.disposed).toBe(false);
    const intermediates = [...keep.g.entries()].filter(([t]) => ![x, w, b, w2].includes(t)).length;
    expect(intermediates).toBeGreaterThan(5);
  });

  it("never frees the caller's seed or a forward value; wrt pruning still works", () => {
    const rng = new Rng();
    const { x, w, b, w2 } = setup(rng);
    const tape = new Tape();
    const r = runSync(model(x, w, b, w2), tape.observe);
    const seed = rng.tensor([]);
    const out = runSync(tape.backward(r.loss, seed, { free: true, wrt: [w2] }));
    expect(seed.disposed).toBe(false);
    expect(r.h.disposed).toBe(false);
    expect([...out.keys()]).toEqual([w2]);
    const ref = runSync(tape.backward(r.loss, seed, { wrt: [w2] })).get(w2)!;
    expect(Array.from(out.get(w2)!.toFloat32())).toEqual(Array.from(ref.toFloat32()));
  });

  it('on a whole G+R tokenizer loss (merging, LFQ, attention, recovery) every parameter gradient is bit-identical', () => {
    const rng = new Rng();
    const tok = MergeVQTokenizer.fromConfig(tinyGRArgs());
    tok.store.initRandom(rng.int(1000));
    const x = rng.tensor([3, 1, 16, 16], 0.5);
    const labels = T.from(BigInt64Array.from([1n, 4n, 7n]), [3]);
    const run = (free: boolean) => {
      const tape = new Tape();
      const terms = runSync(tokenizerLoss(tok, x, labels, tok.candidates.keep[0]!), tape.observe);
      return runSync(tape.backward(terms.loss, null, { free }));
    };
    const keep = run(false);
    const freed = run(true);
    for (const [name, p] of tok.store.stateDict()) {
      const a = keep.get(p);
      const b = freed.get(p);
      expect(b === undefined, `${name} ${seedInfo(rng.seed)}`).toBe(a === undefined);
      if (a && b) expect(Array.from(b.toFloat32()), name).toEqual(Array.from(a.toFloat32()));
    }
    expect(freed.size).toBeLessThan(keep.size / 2);
  });

  it('Tape.dispose frees recorded outputs except the kept ones and empties the tape', () => {
    const rng = new Rng();
    const { x, w, b, w2 } = setup(rng);
    const tape = new Tape();
    const r = runSync(model(x, w, b, w2), tape.observe);
    expect(tape.length).toBeGreaterThan(8);
    tape.dispose([r.h]);
    expect(tape.length).toBe(0);
    expect(r.loss.disposed).toBe(true);
    expect(r.h.disposed).toBe(false);
    for (const leaf of [x, w, b, w2]) expect(leaf.disposed).toBe(false);
  });
});
