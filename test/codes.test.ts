// Code extraction for AR training: every full-grid position carries its kept token's LFQ index,
// keep counts come from the candidate list, and the file round-trips and is validated on read.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { MergeVQTokenizer } from '../lib/tokenizer/tokenizer.js';
import { DataLoader, Uint8ImageDataset } from '../lib/data/loader.js';
import { extractCodes, readCodes, writeCodes } from '../lib/train/codes.js';
import { runSync } from '../lib/graph.js';
import { Rng } from './helpers.js';
import { writeSafetensors } from '../lib/io/safetensors.js';
import { Tensor } from '../lib/tensor.js';

function tiny(): MergeVQTokenizer {
  const tok = MergeVQTokenizer.fromConfig({
    ddconfig: {
      z_channels: 8,
      resolution: 16,
      in_channels: 1,
      out_ch: 1,
      ch: 32,
      ch_mult: [1, 2, 2],
      num_res_blocks: 1,
      num_att_blocks: 3,
      num_heads: 2,
      merge_num: 7,
      cand_distribution: 'gaussian-3',
      init_values: 0.1,
    },
    k2lconfig: null,
    n_embed: 256,
    embed_dim: 8,
  });
  tok.store.initRandom(1);
  return tok;
}

describe('extractCodes / writeCodes / readCodes', () => {
  it('full-grid indices equal the kept token index at every position, per sampled keep count', async () => {
    const rng = new Rng();
    const N = 13;
    const imgs = Uint8Array.from({ length: N * 16 * 16 }, () => rng.int(256));
    const labels = Uint8Array.from({ length: N }, () => rng.int(10));
    const ds = new Uint8ImageDataset(imgs, labels, 16, 16, { size: 16, mode: 'pad', channels: 1 });
    const tok = tiny();
    const loader = new DataLoader(ds, { batchSize: 4, seed: 3, shuffle: false });
    const codes = await extractCodes(tok, loader, { seed: 9 });
    await loader.close();
    expect(codes.meta.count).toBe(N);
    expect(codes.meta.keepCandidates).toEqual(tok.candidates.keep);
    const L = tok.fullNum;
    const used = new Set<number>();
    for (let i = 0; i < N; ++i) {
      const ki = Number(codes.keepIndex[i]);
      used.add(ki);
      const K = tok.candidates.keep[ki]!;
      const x = Tensor.from(
        Float32Array.from(imgs.subarray(i * 256, (i + 1) * 256), (v) => v / 127.5 - 1),
        [1, 1, 16, 16],
      );
      const enc = runSync(tok.encodeProgram(x, { keep: K }));
      const ind = enc.indices.toArray<'int64'>();
      const src = enc.source.toArray<'int64'>();
      for (let l = 0; l < L; ++l) {
        expect(codes.source[i * L + l]).toBe(src[l]);
        expect(codes.indices[i * L + l]).toBe(ind[Number(src[l])]);
      }
      expect(codes.labels![i]).toBe(BigInt(labels[i]!));
    }
    expect(used.size).toBeGreaterThan(1);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mvq-codes-'));
    const file = path.join(dir, 'codes.safetensors');
    await writeCodes(file, codes);
    const back = await readCodes(file);
    expect(back.meta).toEqual(codes.meta);
    expect(Array.from(back.indices)).toEqual(Array.from(codes.indices));
    expect(Array.from(back.keepIndex)).toEqual(Array.from(codes.keepIndex));
    // an index outside 2^bits and a missing tensor are refused
    const bad = path.join(dir, 'bad.safetensors');
    const big = codes.indices.slice();
    big[0] = 1n << 20n;
    await writeSafetensors(
      bad,
      {
        indices: Tensor.from(big, [N, L]),
        source: Tensor.from(codes.source, [N, L]),
        keep_index: Tensor.from(codes.keepIndex, [N]),
      },
      { codes: JSON.stringify(codes.meta) },
    );
    await expect(readCodes(bad)).rejects.toMatchObject({ code: 'ERR_BAD_FILE' });
    await writeSafetensors(bad, { indices: Tensor.from(codes.indices, [N, L]) }, { codes: JSON.stringify(codes.meta) });
    await expect(readCodes(bad)).rejects.toThrow(/missing 'source'/);
    fs.rmSync(dir, { recursive: true, force: true });
  });
});
