// `mergevq train-tokenizer`: a few steps of a tiny config on Fashion-MNIST write the run folder;
// a second run into the same folder is refused without --resume; --resume continues the step count.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { createProgram } from '../lib/cli/program.js';
import { FASHION_MNIST_DIR } from '../lib/data/idx.js';

const haveFashion = fs.existsSync(path.join(FASHION_MNIST_DIR, 'train-images-idx3-ubyte.gz'));
if (!haveFashion) console.warn(`SKIPPED train-tokenizer CLI tests: no Fashion-MNIST in ${FASHION_MNIST_DIR}`);

const YAML = `
trainer:
  max_epochs: 1
model:
  init_args:
    ddconfig: { z_channels: 8, resolution: 16, in_channels: 1, out_ch: 1, ch: 32, ch_mult: [1, 2, 2], num_res_blocks: 1,
                num_att_blocks: 3, num_heads: 2, dist_head: 'layer3', num_classes: 10, merge_num: 7, cand_distribution: 'gaussian-3', init_values: 0.1 }
    k2lconfig: { learn_source: True, rec_embed_dim: 32, num_layers: 1, num_heads: 2 }
    lossconfig:
      params: { disc_start: 1, gen_loss_weight: 0.1, lecam_loss_weight: 0.01, codebook_weight: 0.1, commit_weight: 0.25,
                codebook_enlarge_ratio: 0, disc_dim: 16, disc_num_layers: 1, perceptual_weight: 0.0, cls_loss_weight: 1.0 }
    n_embed: 256
    embed_dim: 8
    learning_rate: 1e-3
data: { dataset: fashion-mnist, batch_size: 4, size: 16, mode: resize, channels: 1 }
`;

const GPT_YAML = `
trainer: { max_epochs: 5 }
model:
  init_args:
    learning_rate: 1e-3
    weight_decay: 5e-2
    transformer_config:
      params: { vocab_size: 256, block_size: 16, spatial_n_layer: 1, factorized_n_layer: 1, factorized_bits: [4, 4], n_head: 2, dim: 32, token_drop: 0.1, class_num: 10, multiple_of: 32 }
mergear: { enabled: true, window: 2 }
data: { dataset: fashion-mnist, batch_size: 8 }
`;

async function run(...args: string[]): Promise<void> {
  await createProgram()
    .exitOverride()
    .parseAsync(['node', 'mergevq', ...args]);
}

describe.skipIf(!haveFashion)('mergevq train-tokenizer', () => {
  it('trains, saves, refuses to overwrite a run, and resumes it', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mvq-cli-train-'));
    const cfg = path.join(dir, 'tiny.yaml');
    fs.writeFileSync(cfg, YAML);
    const out = path.join(dir, 'run');
    await run('train-tokenizer', '-c', cfg, '-o', out, '--steps', '3', '--save-every', '2', '--sample-every', '3');
    for (const f of [
      'state.safetensors',
      'tokenizer.safetensors',
      'log.jsonl',
      'loss.png',
      'config.yaml',
      'samples/step-000003.png',
    ])
      expect(fs.existsSync(path.join(out, f)), f).toBe(true);
    const steps = () =>
      fs
        .readFileSync(path.join(out, 'log.jsonl'), 'utf8')
        .trim()
        .split('\n')
        .map((l) => (JSON.parse(l) as { step: number }).step);
    expect(steps()).toEqual([0, 1, 2]);
    const before = fs.readFileSync(cfg);
    await expect(run('train-tokenizer', '-c', cfg, '-o', out, '--steps', '1')).rejects.toThrow(/--resume/);
    await run('train-tokenizer', '-c', cfg, '-o', out, '--steps', '2', '--resume');
    expect(steps()).toEqual([0, 1, 2, 3, 4]);
    expect(fs.readFileSync(cfg).equals(before)).toBe(true);

    // stage 2 on codes of the tokenizer just trained: extraction, a few MergeAR steps, resume
    const gcfg = path.join(dir, 'gpt.yaml');
    fs.writeFileSync(gcfg, GPT_YAML);
    const gout = path.join(dir, 'gen');
    await run(
      'train-generator',
      '-c',
      gcfg,
      '-o',
      gout,
      '--tokenizer-config',
      cfg,
      '--tokenizer',
      path.join(out, 'tokenizer.safetensors'),
      '--limit',
      '24',
      '--steps',
      '3',
      '--save-every',
      '2',
    );
    for (const f of ['codes.safetensors', 'state.safetensors', 'generator.safetensors', 'log.jsonl', 'loss.png'])
      expect(fs.existsSync(path.join(gout, f)), f).toBe(true);
    await expect(run('train-generator', '-c', gcfg, '-o', gout, '--steps', '1')).rejects.toThrow(/--resume/);
    await run('train-generator', '-c', gcfg, '-o', gout, '--steps', '2', '--resume');
    const gsteps = fs
      .readFileSync(path.join(gout, 'log.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => (JSON.parse(l) as { step: number }).step);
    expect(gsteps).toEqual([0, 1, 2, 3, 4]);
    fs.rmSync(dir, { recursive: true, force: true });
  });
});
