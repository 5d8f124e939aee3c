// Stage-1 training end to end on a slice of Fashion-MNIST: the losses fall, and a run that is
// saved and resumed continues exactly as the uninterrupted run (weights, optimizer moments, EMA,
// discriminator BatchNorm statistics, LeCAM EMAs, data order, keep draws).
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { MergeVQTokenizer } from '../lib/tokenizer/tokenizer.js';
import { FASHION_MNIST_DIR } from '../lib/data/idx.js';
import { Uint8ImageDataset, fashionMnistDataset } from '../lib/data/loader.js';
import { TokenizerTrainer, type TokenizerTrainOptions } from '../lib/train/tokenizer-trainer.js';
import { tinyGRArgs } from './helpers.js';

const haveFashion = fs.existsSync(path.join(FASHION_MNIST_DIR, 'train-images-idx3-ubyte.gz'));
if (!haveFashion)
  console.warn(
    `SKIPPED tokenizer training tests: no Fashion-MNIST in ${FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)`,
  );

/** A tiny G+R tokenizer on 16 px images: 4x4 = 16 tokens, 9 kept by default, learned recovery. */
function tinyTokenizer(seed: number): MergeVQTokenizer {
  const tok = MergeVQTokenizer.fromConfig(tinyGRArgs(32));
  tok.store.initRandom(seed);
  return tok;
}

const LOSS = {
  disc_start: 2,
  disc_weight: 0.8,
  gen_loss_weight: 0.1,
  cls_loss_weight: 1.0,
  lecam_loss_weight: 0.01,
  codebook_weight: 0.1,
  commit_weight: 0.25,
  codebook_enlarge_ratio: 0,
  disc_dim: 16,
  disc_num_layers: 1,
  perceptual_weight: 0,
  disc_in_channels: 1,
};

async function slice(n: number): Promise<Uint8ImageDataset> {
  const full = await fashionMnistDataset('train', { size: 16, mode: 'resize', channels: 1 });
  const fm = full.source;
  return new Uint8ImageDataset(fm.images.subarray(0, n * 28 * 28), fm.labels.subarray(0, n), 28, 28, {
    size: 16,
    mode: 'resize',
    channels: 1,
  });
}

function trainer(ds: Uint8ImageDataset, extra: Partial<TokenizerTrainOptions> = {}): TokenizerTrainer {
  return new TokenizerTrainer({
    tokenizer: tinyTokenizer(3),
    data: { dataset: ds, batchSize: 8, seed: 5 },
    loss: LOSS,
    learningRate: 1e-3,
    seed: 7,
    sync: true,
    ...extra,
  });
}

const mean = (a: number[]) => a.reduce((s, v) => s + v, 0) / a.length;

/** Per keep count drawn in both the first 20 and the last 40 steps: late mean source loss / early mean. */
function srcRatios(logs: { keep: number; values: Record<string, number> }[]): Map<number, number> {
  const at = (part: typeof logs, keep: number) => part.filter((l) => l.keep === keep).map((l) => l.values.source_loss!);
  const early = logs.slice(0, 20);
  const late = logs.slice(-40);
  const out = new Map<number, number>();
  for (const keep of new Set(early.map((l) => l.keep))) {
    const [a, b] = [at(early, keep), at(late, keep)];
    if (a.length > 0 && b.length > 0) out.set(keep, mean(b) / mean(a));
  }
  return out;
}

describe.skipIf(!haveFashion)('TokenizerTrainer on Fashion-MNIST', () => {
  it('reconstruction, class and source-recovery losses fall well below their start', async () => {
    const tr = trainer(await slice(256), { keepSampling: 'random' });
    const logs = await tr.fit({ steps: 160 });
    await tr.close();
    const rec = logs.map((l) => l.values.reconstruct_loss!);
    const cls = logs.map((l) => l.values.cls_loss!);
    const src = logs.map((l) => l.values.source_loss!);
    for (const l of logs)
      for (const [k, v] of Object.entries(l.values)) expect(Number.isFinite(v), `${k} at step ${l.step}`).toBe(true);
    const msg = `rec ${mean(rec.slice(0, 5)).toFixed(3)} -> ${mean(rec.slice(-20)).toFixed(3)}, cls ${mean(cls.slice(0, 5)).toFixed(3)} -> ${mean(cls.slice(-20)).toFixed(3)}, src ${mean(src.slice(0, 5)).toFixed(3)} -> ${mean(src.slice(-20)).toFixed(3)}`;
    expect(mean(rec.slice(-20)), msg).toBeLessThan(0.7 * mean(rec.slice(0, 5)));
    expect(mean(cls.slice(-20)), msg).toBeLessThan(0.9 * mean(cls.slice(0, 5)));
    // The source-recovery loss depends most on how many tokens were kept (4 kept: about 1.2 nats, 16:
    // about 2.5), so it is compared per keep count: early steps against late ones.
    const ratios = srcRatios(logs);
    expect(ratios.size, msg).toBeGreaterThan(0);
    for (const [keep, ratio] of ratios) expect(ratio, `${msg}; keep ${keep}`).toBeLessThan(0.92);
    // every keep candidate was drawn, and the discriminator came on at disc_start
    expect(new Set(logs.map((l) => l.keep)).size).toBe(tr.tokenizer.candidates.keep.length);
    expect(logs[1]!.values.disc_factor).toBe(0);
    expect(logs[2]!.values.disc_factor).toBe(1);
  });

  it('a saved and resumed run continues bit for bit like the uninterrupted one', async () => {
    const ds = await slice(40);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mvq-trainer-'));
    const ckpt = path.join(dir, 'state.safetensors');
    const N = 8;
    const k = 5;
    const full = trainer(ds, { keepSampling: 'random' });
    const a = await full.fit({ steps: N });
    const partial = trainer(ds, { keepSampling: 'random' });
    const b1 = await partial.fit({ steps: k });
    await partial.save(ckpt);
    await partial.close();
    const resumed = trainer(ds, { keepSampling: 'random', tokenizer: tinyTokenizer(99) });
    const r = await resumed.resume(ckpt);
    expect(r.which).toBe('latest');
    const b2 = await resumed.fit({ steps: N - k });
    const strip = (l: { step: number; keep: number; lr: number; values: Record<string, number> }) => ({
      step: l.step,
      keep: l.keep,
      lr: l.lr,
      values: l.values,
    });
    expect([...b1, ...b2].map(strip)).toEqual(a.map(strip));
    const sa = full.stateTensors();
    const sb = resumed.stateTensors();
    expect([...sb.tensors.keys()].sort()).toEqual([...sa.tensors.keys()].sort());
    for (const [name, t] of sa.tensors) {
      const u = sb.tensors.get(name)!;
      expect(Buffer.from(u.toArray().buffer).equals(Buffer.from(t.toArray().buffer)), name).toBe(true);
    }
    expect(JSON.stringify({ ...sb.meta, loader: null })).toEqual(JSON.stringify({ ...sa.meta, loader: null }));
    await full.close();
    await resumed.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('rejects unknown options and keep counts outside the candidates', async () => {
    const ds = await slice(16);
    expect(
      () =>
        new TokenizerTrainer({
          tokenizer: tinyTokenizer(0),
          data: { dataset: ds, batchSize: 4 },
          lerningRate: 1,
        } as unknown as TokenizerTrainOptions),
    ).toThrow(/unknown option 'lerningRate'/);
    expect(() => trainer(ds, { fixedKeep: 10 })).toThrow(/fixedKeep/);
  });
});
