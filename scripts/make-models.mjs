// Builds a shipped model folder (models/<name>) from two finished training runs:
//   node scripts/make-models.mjs --tokenizer-run runs/fmnist-GR --generator-run runs/fmnist-ar \
//     --generator-config configs/fashion-mnist/mergear_fmnist.yaml --out models/fashion-mnist
// Writes tokenizer.yaml / tokenizer.safetensors (float32), generator.yaml / generator.safetensors
// (float16 storage: the loader widens to float32), judge.safetensors (logistic regression on the
// pixels of the whole train split, the judge of generated samples), test-images.safetensors (the
// first 100 test images, uint8, for the demo) and reference.json (what the shipped-model test
// checks: PSNR of those images and a seeded generation's indices, per sgemm kernel).
// Re-run with MERGEVQ_SIMD=avx2 and --reference-only to add the AVX2 record.
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

const { values: o } = parseArgs({
  options: {
    'tokenizer-run': { type: 'string' },
    'generator-run': { type: 'string' },
    'generator-config': { type: 'string' },
    out: { type: 'string' },
    'reference-only': { type: 'boolean' },
    'generator-dtype': { type: 'string', default: 'float16' },
  },
});
const m = await import('../dist/esm/index.js');
const { DEFAULT_SAMPLING } = await import('../dist/esm/cli/generate.js');
const { gemmKernel } = await import('../dist/esm/ops/linalg.js');
const out = o.out ?? 'models/fashion-mnist';
mkdirSync(out, { recursive: true });
const log = (s) => process.stderr.write(`${s}\n`);

if (!o['reference-only']) {
  if (!o['tokenizer-run'] || !o['generator-run'] || !o['generator-config'])
    throw new Error('give --tokenizer-run, --generator-run and --generator-config');
  copyFileSync(join(o['tokenizer-run'], 'config.yaml'), join(out, 'tokenizer.yaml'));
  copyFileSync(o['generator-config'], join(out, 'generator.yaml'));
  const tok = await m.readWeights(join(o['tokenizer-run'], 'tokenizer.safetensors'));
  await m.writeSafetensors(join(out, 'tokenizer.safetensors'), Object.fromEntries(tok), {
    source: 'mergevq train-tokenizer (EMA weights)',
  });
  const gen = await m.readWeights(join(o['generator-run'], 'generator.safetensors'));
  const dt = o['generator-dtype'];
  await m.writeSafetensors(
    join(out, 'generator.safetensors'),
    Object.fromEntries([...gen].map(([k, v]) => [k, dt === 'float32' ? v : v.cast(dt)])),
    { source: `mergevq train-generator (${dt} storage)` },
  );
  log('weights written');

  const ds = { size: 32, mode: 'pad', channels: 1 };
  const [train, test] = await Promise.all([
    m.data.fashionMnistDataset('train', ds),
    m.data.fashionMnistDataset('test', ds),
  ]);
  const t0 = performance.now();
  const judge = await m.trainPixelClassifier(train, test, { epochs: 10, classes: 10 });
  await m.savePixelClassifier(join(out, 'judge.safetensors'), judge);
  log(
    `judge: ${judge.trainSamples} train images, test accuracy ${(100 * judge.testAccuracy).toFixed(2)}% (${((performance.now() - t0) / 1000).toFixed(0)} s)`,
  );

  const fm = test.source;
  const n = 100;
  await m.writeSafetensors(
    join(out, 'test-images.safetensors'),
    {
      images: m.Tensor.from(fm.images.slice(0, n * fm.height * fm.width), [n, fm.height, fm.width]),
      labels: m.Tensor.from(fm.labels.slice(0, n), [n]),
    },
    { source: `the first ${n} images of the Fashion-MNIST test split` },
  );
}

// reference.json: what the shipped-model test reproduces
const { runDemo } = await import('../dist/esm/cli/generate.js');
const kernel = gemmKernel().name;
const refPath = join(out, 'reference.json');
const ref = existsSync(refPath) ? JSON.parse(readFileSync(refPath, 'utf8')) : {};
const tmp = join(out, '.demo-tmp');
if (!o['reference-only']) {
  const r = await runDemo({ out: tmp, log });
  ref.demo = { kernel, reconstruction: r.reconstruction, generation: { ...r.generation, ms: undefined } };
}
const models = await m.loadDefaultModels();
const gen = await m.generateImages(models.tokenizer, models.generator, {
  ...DEFAULT_SAMPLING,
  seed: 0,
  classes: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
});
ref.generation = ref.generation ?? {};
ref.generation.settings = { ...DEFAULT_SAMPLING, seed: 0, classes: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] };
ref.generation[kernel] = Array.from(gen.indices.toArray(), Number);
writeFileSync(refPath, `${JSON.stringify(ref, null, 1)}\n`);
(await import('node:fs')).rmSync(tmp, { recursive: true, force: true });
log(`wrote ${refPath} (${kernel}); demo: ${JSON.stringify(ref.demo)}`);
