// `npm run demo [-- image.png] [-- --weights model.ckpt] [-- --keep 144]`: the main job on a fresh
// clone. Tokenizes a real photo with the official G+R d64 configuration (256 px, 256 -> K tokens),
// decodes it back, and writes the reconstruction, a side-by-side grid and the source map (each
// full-grid cell painted by its merge group) to demo-out/. Without --weights (or MERGEVQ_WEIGHTS)
// the network has random weights: the merging and timings are real, the pictures are not.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: { weights: { type: 'string' }, keep: { type: 'string' }, config: { type: 'string' }, out: { type: 'string' } },
});
const m = await import('../dist/esm/index.js');
const config = values.config ?? 'test/fixtures/configs/gpu_s1/imagenet_mergevq_256_GR_d64_8gpu_200ep.yaml';
const image = positionals[0] ?? 'test/data/photo.jpg';
const weights = values.weights ?? process.env.MERGEVQ_WEIGHTS;
const out = values.out ?? 'demo-out';
mkdirSync(out, { recursive: true });

const t0 = performance.now();
const { tokenizer: tok, report } = await m.loadTokenizer({ config, weights, seed: 0 });
console.log(`config ${config}: ${(tok.store.count() / 1e6).toFixed(1)}M parameters, L = ${tok.fullNum} tokens, keep candidates ${tok.candidates.keep.join(', ')}`);
console.log(weights ? `weights ${weights} (${report.missing.length} missing)` : 'weights: random (pass --weights model.ckpt|.safetensors for real reconstructions)');
const keep = values.keep ? Number(values.keep) : tok.defaultKeep;
const x = await m.loadImages([image], tok.config.ddconfig.resolution);
const t1 = performance.now();
const enc = await tok.encode(x, { keep });
const t2 = performance.now();
const dec = await tok.decode({ indices: enc.indices, source: enc.source });
const t3 = performance.now();
console.log(`image ${image}: ${tok.fullNum} tokens merged to ${enc.keep}; schedule per block ${tok.mergeSchedule(keep).join(' ')}`);
console.log(`first indices: ${Array.from(enc.indices.toArray().slice(0, 8)).join(' ')} ...`);
console.log(`load ${(t1 - t0).toFixed(0)} ms, encode ${(t2 - t1).toFixed(0)} ms, decode ${(t3 - t2).toFixed(0)} ms (${m.getNumThreads()} threads)`);
writeFileSync(join(out, 'reconstruction.png'), await m.encodeImage(dec.images));
writeFileSync(join(out, 'grid.png'), await m.imageGrid([x, dec.images]));
writeFileSync(join(out, 'source-map.png'), await m.sourceMapImage(x, enc.source));
console.log(`wrote ${out}/reconstruction.png, grid.png, source-map.png`);
