import { beforeAll, describe, expect, it } from 'vitest';
import { Tensor } from '../lib/tensor.js';
import { runAsync, runSync } from '../lib/graph.js';
import { Tape } from '../lib/autograd.js';
import { MergeVQError } from '../lib/errors.js';
import { LPIPS, VGG16_CHNS, VGG16_SLICE_CONVS } from '../lib/train/lpips.js';
import { allFinite } from './helpers.js';
import { forEachFixtureDir, relErr, type FixtureFile } from './fixtures.js';

const FILE = 'train_losses.safetensors';

interface LpipsMeta {
  chns: number[];
}

/** Fixture tolerances from the metadata when it has them, else the project's defaults. */
function tolerances(f: FixtureFile): { value: number; grad: number } {
  const dflt = { value: 1e-4, grad: 1e-3 };
  if (!Object.hasOwn(f.metadata, 'tolerances')) return dflt;
  const t = f.meta<Record<string, number>>('tolerances');
  return {
    value: t['lpips_out.value'] ?? t.activations ?? dflt.value,
    grad: t['lpips_out.grad_in1'] ?? t.gradients ?? dflt.grad,
  };
}

/** The `lpips.*` tensors of the fixture, with the prefix removed (reference names). */
function lpipsWeights(f: FixtureFile): Map<string, Tensor> {
  const out = new Map<string, Tensor>();
  for (const n of f.names) if (n.startsWith('lpips.')) out.set(n.slice('lpips.'.length), f.tensor(n));
  return out;
}

/** Value and d sum(value) / d (first, second input) of one LPIPS call under a tape. */
function valueAndGrads(model: LPIPS, a: Tensor, b: Tensor) {
  const tape = new Tape();
  const value = runSync(model.forward(a, b), tape.observe);
  const grads = runSync(tape.backward(value, Tensor.from(new Float32Array(value.numel).fill(1), value.shape)));
  return { value, ga: grads.get(a) ?? null, gb: grads.get(b) ?? null, tapeLength: tape.length };
}

forEachFixtureDir(FILE, (fixture) => {
  let model: LPIPS;
  let in0: Tensor;
  let in1: Tensor;
  let meta: LpipsMeta;
  beforeAll(() => {
    const f = fixture();
    meta = f.meta<LpipsMeta>('lpips');
    model = new LPIPS();
    const report = model.loadWeights(lpipsWeights(f), { strict: true });
    expect(report.missing).toEqual([]);
    expect(report.unexpected).toEqual([]);
    in0 = f.tensor('lpips_in.in0');
    in1 = f.tensor('lpips_in.in1');
  });

  it('derives the widths from the weights (they equal the metadata chns)', () => {
    expect([...model.chns]).toEqual(meta.chns);
    expect(model.store.shapeMap()['lin4.model.1.weight']).toEqual([1, meta.chns[4], 1, 1]);
  });

  it('value and grad_in1 match the reference', () => {
    const f = fixture();
    const tol = tolerances(f);
    const { value, gb } = valueAndGrads(model, in0, in1);
    expect(value.shape).toEqual(f.info('lpips_out.value').shape);
    const ev = relErr(value, f.tensor('lpips_out.value'));
    expect(ev, `value rel err ${ev}`).toBeLessThan(tol.value);
    const eg = relErr(gb!, f.tensor('lpips_out.grad_in1'));
    expect(eg, `grad_in1 rel err ${eg}`).toBeLessThan(tol.grad);
  });

  it('gradients reach in0 too: LPIPS is symmetric, so d/d(first input) of LPIPS(in1, in0) is grad_in1', () => {
    const f = fixture();
    const { value, ga, gb } = valueAndGrads(model, in1, in0);
    expect(relErr(value, f.tensor('lpips_out.value'))).toBeLessThan(tolerances(f).value);
    const eg = relErr(ga!, f.tensor('lpips_out.grad_in1'));
    expect(eg, `rel err ${eg}`).toBeLessThan(tolerances(f).grad);
    expect(gb).not.toBeNull();
    expect(allFinite(gb!.toFloat32())).toBe(true);
  });

  it('features of in0 computed outside the tape: same value and grad_in1, shorter tape', () => {
    const f = fixture();
    const full = valueAndGrads(model, in0, in1);
    const f0 = runSync(model.features(in0));
    expect(f0.map((t) => t.shape)).toEqual(
      meta.chns.map((c, k) => [in0.shape[0], c, in0.shape[2]! >> k, in0.shape[3]! >> k]),
    );
    const tape = new Tape();
    const value = runSync(
      (function* () {
        const f1 = yield* model.features(in1);
        return yield* model.distance(f0, f1);
      })(),
      tape.observe,
    );
    const grads = runSync(tape.backward(value, Tensor.from(new Float32Array(value.numel).fill(1), value.shape)));
    expect(Array.from(value.toFloat32())).toEqual(Array.from(full.value.toFloat32()));
    expect(Array.from(grads.get(in1)!.toFloat32())).toEqual(Array.from(full.gb!.toFloat32()));
    expect(grads.get(in0)).toBeUndefined();
    expect(tape.length).toBeLessThan(full.tapeLength);
    void f;
  });

  it('runAsync gives the same value as runSync', async () => {
    const a = await runAsync(model.forward(in0, in1));
    const b = runSync(model.forward(in0, in1));
    expect(Array.from(a.toFloat32())).toEqual(Array.from(b.toFloat32()));
  });

  it('loads torchvision VGG16 names (features.N.*) with the same result', () => {
    const f = fixture();
    const renamed = new Map<string, Tensor>();
    for (const [n, t] of lpipsWeights(f)) {
      const m = /^net\.slice\d\.(\d+)\.(weight|bias)$/.exec(n);
      renamed.set(m ? `features.${m[1]}.${m[2]}` : n, t);
    }
    expect([...renamed.keys()].filter((n) => n.startsWith('features.')).length).toBe(
      2 * VGG16_SLICE_CONVS.flat().length,
    );
    // A torchvision file also holds the classifier, which LPIPS does not use.
    renamed.set('classifier.0.weight', Tensor.zeros([4, 4]));
    const tv = new LPIPS();
    const report = tv.loadWeights(renamed, { strict: true });
    expect(report.unexpected).toEqual(['classifier.0.weight']);
    expect([...tv.chns]).toEqual(meta.chns);
    const a = runSync(model.forward(in0, in1));
    const b = runSync(tv.forward(in0, in1));
    expect(Array.from(b.toFloat32())).toEqual(Array.from(a.toFloat32()));
  });

  it('loads in parts and with a prefix; the lins.K alias; a failed load changes nothing', () => {
    const f = fixture();
    const all = lpipsWeights(f);
    const vgg = new Map([...all].filter(([n]) => n.startsWith('net.')));
    const lin = new Map(
      [...all].filter(([n]) => n.startsWith('lin')).map(([n, t]) => [n.replace(/^lin(\d)/, 'lins.$1'), t]),
    );
    const parts = new LPIPS();
    expect(parts.loadWeights(vgg).missing.filter((n) => n.startsWith('lin')).length).toBe(5);
    expect(() => runSync(parts.forward(in0, in1))).toThrow(/not loaded/);
    const rep = parts.loadWeights(lin);
    expect(rep.missing).toEqual([]);
    // The scaling layer keeps LPIPS's constants when no file provides it; the fixture's are those too.
    const ref = runSync(model.forward(in0, in1)).toFloat32();
    expect(relErr(runSync(parts.forward(in0, in1)), ref)).toBeLessThan(1e-6);

    const prefixed = new LPIPS();
    const report = prefixed.loadWeights(
      Object.fromEntries(
        f.names.filter((n) => n.startsWith('lpips') || n.startsWith('disc.')).map((n) => [n, f.tensor(n)]),
      ),
      { prefix: 'lpips.', strict: true },
    );
    expect(report.unexpected.every((n) => !n.startsWith('lpips.')) && report.unexpected.length > 0).toBe(true);
    expect(Array.from(runSync(prefixed.forward(in0, in1)).toFloat32())).toEqual(Array.from(ref));

    // A lin weight of the wrong width: ERR_SHAPE_MISMATCH, the loaded network is unchanged.
    const bad = new Map(all);
    bad.set('lin2.model.1.weight', Tensor.zeros([1, meta.chns[2]! + 1, 1, 1]));
    expect(() => prefixed.loadWeights(bad)).toThrow(expect.objectContaining({ code: 'ERR_SHAPE_MISMATCH' }));
    expect([...prefixed.chns]).toEqual(meta.chns);
    expect(Array.from(runSync(prefixed.forward(in0, in1)).toFloat32())).toEqual(Array.from(ref));
    // strict with a missing weight: ERR_MISSING_WEIGHT, nothing loaded.
    const fresh = new LPIPS();
    const noLin = new Map([...all].filter(([n]) => n !== 'lin0.model.1.weight'));
    expect(() => fresh.loadWeights(noLin, { strict: true })).toThrow(
      expect.objectContaining({ code: 'ERR_MISSING_WEIGHT' }),
    );
    expect([...fresh.chns]).toEqual([...VGG16_CHNS]);
  });

  it('all-zero features (every ReLU off) give finite gradients, equal to dropping that level (torch gives 0 there too)', () => {
    const f = fixture();
    const w = lpipsWeights(f);
    for (const n of VGG16_SLICE_CONVS[4]!)
      w.set(`net.slice5.${n}.bias`, Tensor.from(new Float32Array(meta.chns[4]!).fill(-1e3), [meta.chns[4]!]));
    const dead = new LPIPS();
    dead.loadWeights(w, { strict: true });
    const w2 = new Map(w);
    w2.set('lin4.model.1.weight', Tensor.zeros([1, meta.chns[4]!, 1, 1]));
    const dropped = new LPIPS();
    dropped.loadWeights(w2, { strict: true });
    const a = valueAndGrads(dead, in0, in1);
    const b = valueAndGrads(dropped, in0, in1);
    expect(allFinite(a.gb!.toFloat32())).toBe(true);
    expect(Array.from(a.value.toFloat32())).toEqual(Array.from(b.value.toFloat32()));
    expect(relErr(a.gb!, b.gb!)).toBeLessThan(1e-6);
    // And slice 5 did contribute before: the level is not trivially empty in the fixture.
    expect(relErr(valueAndGrads(model, in0, in1).value, a.value)).toBeGreaterThan(1e-4);
  });

  it('rejects inputs of the wrong shape', () => {
    expect(() => runSync(model.forward(in0, Tensor.zeros([2, 3, 16, 16])))).toThrow(/one shape/);
    expect(() => runSync(model.forward(Tensor.zeros([1, 3, 15, 32]), Tensor.zeros([1, 3, 15, 32])))).toThrow(
      /at least 16x16/,
    );
    expect(() => runSync(model.forward(Tensor.zeros([1, 1, 32, 32]), Tensor.zeros([1, 1, 32, 32])))).toThrow(
      /float32 Tensor \[B, 3, H, W\]/,
    );
    expect(() => runSync(model.forward('x' as unknown as Tensor, in1))).toThrow(TypeError);
    const f0 = runSync(model.features(in0));
    expect(() => runSync(model.distance(f0, f0.slice(0, 4)))).toThrow(TypeError);
    expect(() => runSync(model.distance(f0, runSync(model.features(Tensor.zeros([1, 3, 32, 32])))))).toThrow(
      RangeError,
    );
  });
});

describe('LPIPS without weights', () => {
  it('forward throws MergeVQError ERR_MISSING_WEIGHT before any work', () => {
    const m = new LPIPS();
    const x = Tensor.zeros([1, 3, 16, 16]);
    let err: unknown;
    try {
      runSync(m.forward(x, x));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(MergeVQError);
    expect((err as MergeVQError).code).toBe('ERR_MISSING_WEIGHT');
    expect((err as Error).message).toMatch(/loadWeights/);
  });
  it('declares the reference names with VGG16 widths by default', () => {
    const shapes = LPIPS.parameterShapes();
    expect(shapes['net.slice1.0.weight']).toEqual([64, 3, 3, 3]);
    expect(shapes['net.slice2.5.weight']).toEqual([128, 64, 3, 3]);
    expect(shapes['net.slice5.28.weight']).toEqual([512, 512, 3, 3]);
    expect(shapes['lin3.model.1.weight']).toEqual([1, 512, 1, 1]);
    expect(shapes['scaling_layer.shift']).toEqual([1, 3, 1, 1]);
    expect(Object.keys(shapes).length).toBe(2 + 2 * 13 + 5);
    expect(new LPIPS({ chns: [2, 3, 4, 5, 6] }).store.shapeMap()['net.slice4.17.weight']).toEqual([5, 4, 3, 3]);
    expect(() => new LPIPS({ chns: [1, 2, 3] })).toThrow(TypeError);
    expect(() => new LPIPS({ chns: [1, 2, 3, 0, 4] })).toThrow(RangeError);
  });
});
