// The stage-2 YAML files (configs/gpu_s2) build a MergeVQGPT whose parameter names and shapes equal
// the reference's state_dict (official_state_dicts.json lists them with the `transformer.` prefix),
// and config validation rejects what the model cannot run.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { MergeVQError } from '../lib/errors.js';
import {
  MergeVQGPT,
  ffnHidden,
  loadGPTConfigFile,
  normalizeGPTConfig,
  parseGPTConfigYaml,
} from '../lib/generator/index.js';
import { fixtureDirs, loadJsonFixture } from './fixtures.js';

interface Official {
  params: number;
  state_dict: Record<string, number[]>;
}

for (const dir of fixtureDirs()) {
  const jsonPath = path.join(dir, 'official_state_dicts.json');
  if (!fs.existsSync(jsonPath)) continue;
  const official = loadJsonFixture<Record<string, Official>>(dir, 'official_state_dicts.json');
  describe(`official stage-2 configs in ${dir}`, () => {
    const files = Object.keys(official).filter((f) => fs.existsSync(path.join(dir, 'configs', 'gpu_s2', f)));
    it('the gpu_s2 configs are listed', () => {
      expect(files.length).toBeGreaterThan(0);
    });
    for (const file of files) {
      it(`${file}: parameter names, shapes and count equal the reference state_dict`, () => {
        const cfg = loadGPTConfigFile(path.join(dir, 'configs', 'gpu_s2', file));
        const model = new MergeVQGPT(cfg);
        const ours = Object.fromEntries(
          Object.entries(model.store.shapeMap()).map(([k, s]) => [`transformer.${k}`, s]),
        );
        const want = Object.fromEntries(
          Object.entries(official[file]!.state_dict).filter(([k]) => k.startsWith('transformer.')),
        );
        expect(Object.keys(want).length).toBeGreaterThan(0);
        expect(Object.keys(ours).sort()).toEqual(Object.keys(want).sort());
        for (const [k, s] of Object.entries(want)) expect(ours[k], k).toEqual(s);
        expect(model.store.count()).toBe(official[file]!.params);
      });
    }
  });
}

describe('GPT config', () => {
  it('applies the reference defaults and the SwiGLU width rule', () => {
    const c = normalizeGPTConfig({ dim: 1024, n_head: 16, block_size: 256 });
    expect(c.multiple_of).toBe(256);
    expect(c.factorized_bits).toEqual([9, 9]);
    expect(ffnHidden(c)).toBe(2816);
    expect(ffnHidden(normalizeGPTConfig({ dim: 64, n_head: 4, block_size: 36, multiple_of: 32 }))).toBe(192);
  });
  it('rejects what the model cannot run, naming the key', () => {
    expect(() => normalizeGPTConfig({ block_size: 35 })).toThrow(/block_size/);
    expect(() => normalizeGPTConfig({ dim: 60, n_head: 8 })).toThrow(/n_head/);
    expect(() => normalizeGPTConfig({ n_kv_head: 2 })).toThrow(MergeVQError);
    expect(() => normalizeGPTConfig({ token_factorization: false })).toThrow(/token_factorization/);
    expect(() => normalizeGPTConfig({ factorized_bits: [6] })).toThrow(/factorized_bits/);
    expect(() => normalizeGPTConfig(null)).toThrow(TypeError);
    expect(() => parseGPTConfigYaml('a: [', 'x.yaml')).toThrow(/x.yaml/);
  });
});
