// AR generator parity with the reference (fixtures gpt_weights / gpt_io / gpt_grads), data-driven
// over every directory in MERGEVQ_FIXTURES. The model is built from the fixture's own metadata.
import { beforeAll, expect, it } from 'vitest';
import { Tape } from '../lib/autograd.js';
import { runSync } from '../lib/graph.js';
import { MergeVQGPT, generate, generateSync, type GPTLogits } from '../lib/generator/index.js';
import type { Tensor } from '../lib/tensor.js';
import { forEachFixtureDir, loadFixture, relErr } from './fixtures.js';

function buildModel(dir: string): MergeVQGPT {
  const w = loadFixture(dir, 'gpt_weights.safetensors');
  const model = new MergeVQGPT(w.meta<Record<string, unknown>>('transformer'));
  const tensors = new Map<string, Tensor>();
  for (const n of w.names) tensors.set(n, w.tensor(n));
  const report = model.loadWeights(tensors);
  expect(report.missing).toEqual([]);
  expect(report.unexpected).toEqual([]);
  w.close();
  return model;
}

const ints = (t: Tensor) => Array.from(t.toArray<'int64'>(), Number);

forEachFixtureDir('gpt_io.safetensors', (io, dir) => {
  let model: MergeVQGPT;
  let logits: GPTLogits;
  beforeAll(() => {
    model = buildModel(dir);
    logits = runSync(model.forward(io().tensor('idx_pre'), io().tensor('idx_post'), io().tensor('class_label')));
  });

  it('teacher-forced logits_pre within 1e-4 relative', () => {
    const err = relErr(logits.pre.toFloat32(), io().array('logits_pre') as Float32Array);
    console.log(`gpt logits_pre relative error ${err.toExponential(2)}`);
    expect(err, `logits_pre relative error ${err}`).toBeLessThan(1e-4);
  });
  it('teacher-forced logits_post within 1e-4 relative', () => {
    const err = relErr(logits.post.toFloat32(), io().array('logits_post') as Float32Array);
    console.log(`gpt logits_post relative error ${err.toExponential(2)}`);
    expect(err, `logits_post relative error ${err}`).toBeLessThan(1e-4);
  });

  it('greedy generation (top_k 1, no guidance) equals the reference', async () => {
    const s = io().meta<{ temperature: number[]; top_k: number[]; top_p: number[] }>('sampling');
    const ref = io().tensor('greedy_pre');
    const out = await generate(model, io().tensor('class_label'), {
      steps: ref.shape[1]!,
      temperature: [s.temperature[0]!, s.temperature[1]!],
      topK: [s.top_k[0]!, s.top_k[1]!],
      topP: [s.top_p[0]!, s.top_p[1]!],
    });
    expect(ints(out.pre)).toEqual(ints(ref));
    expect(ints(out.post)).toEqual(ints(io().tensor('greedy_post')));
  });

  it('greedy generation with classifier-free guidance equals the reference', () => {
    const s = io().meta<{
      temperature: number[];
      top_k: number[];
      top_p: number[];
      cfg_scale_for_greedy_cfg: number[];
    }>('sampling');
    const ref = io().tensor('greedy_cfg_pre');
    const out = generateSync(model, io().tensor('class_label'), {
      steps: ref.shape[1]!,
      temperature: [s.temperature[0]!, s.temperature[1]!],
      topK: [s.top_k[0]!, s.top_k[1]!],
      topP: [s.top_p[0]!, s.top_p[1]!],
      cfgScale: [s.cfg_scale_for_greedy_cfg[0]!, s.cfg_scale_for_greedy_cfg[1]!],
    });
    expect(ints(out.pre)).toEqual(ints(ref));
    expect(ints(out.post)).toEqual(ints(io().tensor('greedy_cfg_post')));
  });

  it('cfg_scale exactly 1.0 runs and gives the unguided greedy tokens', () => {
    const ref = io().tensor('greedy_pre');
    const out = generateSync(model, io().tensor('class_label'), { steps: ref.shape[1]!, topK: 1, cfgScale: 1.0 });
    expect(ints(out.pre)).toEqual(ints(ref));
    expect(ints(out.post)).toEqual(ints(io().tensor('greedy_post')));
  });

  it('KV-cached decoding reproduces the teacher-forced logits of the greedy sequence', () => {
    // Teacher-force the greedy sequence; the cached sampler's picks must be the argmax there.
    const pre = io().tensor('greedy_pre');
    const post = io().tensor('greedy_post');
    const lg = runSync(model.forward(pre, post, io().tensor('class_label')));
    const [B, N] = pre.shape as [number, number];
    const [V0] = model.subVocab;
    const lp = lg.pre.toFloat32();
    const argmax = (a: Float32Array, off: number, n: number) => {
      let m = 0;
      for (let i = 1; i < n; ++i) if (a[off + i]! > a[off + m]!) m = i;
      return m;
    };
    const picks: number[] = [];
    for (let r = 0; r < B * N; ++r) picks.push(argmax(lp, r * V0, V0));
    expect(picks).toEqual(ints(pre));
  });
});

forEachFixtureDir('gpt_grads.safetensors', (gr, dir) => {
  it('gradients of CE(pre) + CE(post) within 1e-3 relative for every parameter', () => {
    const model = buildModel(dir);
    const io = loadFixture(dir, 'gpt_io.safetensors');
    const tape = new Tape();
    const { loss } = runSync(
      model.loss(io.tensor('idx_pre'), io.tensor('idx_post'), io.tensor('class_label')),
      tape.observe,
    );
    const lossErr = relErr(loss.toFloat32(), gr().array('loss') as Float32Array);
    expect(lossErr, `loss relative error ${lossErr}`).toBeLessThan(1e-4);
    const grads = runSync(tape.backward(loss));
    const names = gr().names.filter((n) => n.startsWith('grad.'));
    expect(names.length).toBe(model.store.names().length);
    const errs: Record<string, number> = {};
    for (const n of names) {
      const p = n.slice('grad.'.length);
      const g = grads.get(model.store.get(p));
      expect(g, `no gradient for ${p}`).toBeDefined();
      errs[p] = relErr(g!.toFloat32(), gr().array(n) as Float32Array);
    }
    console.log(
      `gpt grads: max relative error ${Math.max(...Object.values(errs)).toExponential(2)}, loss ${lossErr.toExponential(2)}`,
    );
    const bad = Object.entries(errs).filter(([, e]) => !(e < 1e-3));
    expect(bad, `gradient errors: ${JSON.stringify(errs)}`).toEqual([]);
    io.close();
  });
});
