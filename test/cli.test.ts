// The mergevq command line on the fixture's small model: inspect, encode -> decode round trip,
// reconstruct, source-map and convert, with real files in a temporary folder.
import { mkdtempSync, readFileSync, writeFileSync, existsSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { stringify } from 'yaml';
import { createProgram } from '../lib/cli/program.js';
import { readSafetensorsSync } from '../lib/io/safetensors.js';
import { loadFixture, REPO_ROOT } from './fixtures.js';

const dir = mkdtempSync(join(tmpdir(), 'mergevq-cli-'));
const weights = join(REPO_ROOT, 'test/fixtures/tokenizer_weights.safetensors');
const config = join(dir, 'tiny.yaml');
const image = join(dir, 'photo.png');

async function run(...args: string[]): Promise<string> {
  let out = '';
  const spy = vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
    out += String(chunk);
    return true;
  });
  const err = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
  try {
    await createProgram()
      .exitOverride()
      .parseAsync(['node', 'mergevq', ...args]);
  } finally {
    spy.mockRestore();
    err.mockRestore();
  }
  return out;
}

beforeAll(async () => {
  const w = loadFixture('test/fixtures', 'tokenizer_weights.safetensors');
  const doc = {
    model: {
      class_path: 'taming.models.lfqgan_rep.MergeVQModel',
      init_args: { ddconfig: w.meta('ddconfig'), k2lconfig: w.meta('k2lconfig'), n_embed: 262144, embed_dim: 18 },
    },
  };
  w.close();
  writeFileSync(config, stringify(doc));
  // A real (if small) picture: smooth gradients and a disc, 48x40 so resize and crop both run.
  const W = 48,
    H = 40;
  const px = Buffer.alloc(W * H * 3);
  for (let y = 0; y < H; ++y)
    for (let x = 0; x < W; ++x) {
      const inDisc = (x - 30) ** 2 + (y - 18) ** 2 < 100;
      px[(y * W + x) * 3] = inDisc ? 230 : (x * 5) % 256;
      px[(y * W + x) * 3 + 1] = inDisc ? 40 : (y * 6) % 256;
      px[(y * W + x) * 3 + 2] = 128;
    }
  await sharp(px, { raw: { width: W, height: H, channels: 3 } })
    .png()
    .toFile(image);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('mergevq CLI', () => {
  it('inspect prints the geometry and merge schedule', async () => {
    const out = JSON.parse(await run('inspect', '-c', config, '--json')) as {
      fullTokens: number;
      defaultKeep: number;
      candidates: { keep: number; schedule: number[] }[];
    };
    expect(out.fullTokens).toBe(64);
    expect(out.defaultKeep).toBe(36);
    for (const c of out.candidates) expect(c.schedule.reduce((a, b) => a + b, 0)).toBe(64 - c.keep);
  });

  it('encode -> decode round trip through JSON and safetensors', async () => {
    const json = join(dir, 'tokens.json');
    await run('encode', '-c', config, '-w', weights, '-k', '36', image, image, '-o', json);
    const doc = JSON.parse(readFileSync(json, 'utf8')) as { keep: number; indices: number[][]; source: number[][] };
    expect(doc.keep).toBe(36);
    expect(doc.indices).toHaveLength(2);
    expect(doc.indices[0]).toEqual(doc.indices[1]);
    for (const v of doc.indices[0]!) expect(v >= 0 && v < 2 ** 18).toBe(true);
    expect(new Set(doc.source[0]).size).toBe(36);
    const st = join(dir, 'tokens.safetensors');
    await run('encode', '-c', config, '-w', weights, image, '-o', st);
    const f = readSafetensorsSync(st);
    expect(Array.from(f.array('indices') as BigInt64Array).map(Number)).toEqual(doc.indices[0]);
    f.close();
    const outDir = join(dir, 'decoded');
    await run('decode', '-c', config, '-w', weights, json, '-o', outDir);
    const meta = await sharp(join(outDir, '0.png')).metadata();
    expect([meta.width, meta.height]).toEqual([32, 32]);
  });

  it('reconstruct writes images and a grid; source-map writes a PNG', async () => {
    const outDir = join(dir, 'rec');
    await run('reconstruct', '-c', config, '-w', weights, image, '-o', outDir);
    expect(existsSync(join(outDir, 'photo.png'))).toBe(true);
    expect(existsSync(join(outDir, 'grid-0.png'))).toBe(true);
    const map = join(dir, 'map.png');
    await run('source-map', '-c', config, '-w', weights, image, '-o', map);
    expect((await sharp(map).metadata()).format).toBe('png');
  });

  it('convert writes safetensors with the reference names from a checkpoint', async () => {
    const out = join(dir, 'conv.safetensors');
    await run('convert', join(REPO_ROOT, 'test/data/lightning.ckpt'), out);
    const f = readSafetensorsSync(out);
    expect(f.names.length).toBeGreaterThan(0);
    f.close();
  });

  it('reports a bad config file as an error, not a crash', async () => {
    const bad = join(dir, 'bad.yaml');
    writeFileSync(bad, 'model: {init_args: {n_embed: 3}}\n');
    await expect(run('inspect', '-c', bad)).rejects.toThrow(/ddconfig/);
  });
});

describe('tokenizer API with image files and buffers', () => {
  it('encode() accepts paths and buffers and equals encoding the loaded tensor', async () => {
    const { MergeVQTokenizer } = await import('../lib/tokenizer/tokenizer.js');
    const { loadImages } = await import('../lib/io/image.js');
    const tok = MergeVQTokenizer.fromConfig(config);
    const w = loadFixture('test/fixtures', 'tokenizer_weights.safetensors');
    tok.loadWeights(new Map(w.names.map((n) => [n, w.tensor(n)])));
    w.close();
    const fromPath = await tok.encode(image);
    const fromBuffers = await tok.encode([readFileSync(image), readFileSync(image)]);
    const fromTensor = await tok.encode(await loadImages([image], 32));
    expect(Array.from(fromPath.indices.toArray<'int64'>())).toEqual(Array.from(fromTensor.indices.toArray<'int64'>()));
    expect(fromBuffers.indices.shape).toEqual([2, 36]);
    expect(() => tok.encodeSync(image as never)).toThrow(TypeError);
    await expect(tok.encode(Buffer.from('not an image'))).rejects.toMatchObject({ code: 'ERR_BAD_IMAGE' });
  });
});
