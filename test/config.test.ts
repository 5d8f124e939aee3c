// Every official configuration builds a model whose parameter names and shapes equal the
// reference's state_dict (fixtures/official_state_dicts.json), and whose merge schedule matches.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { MergeVQError } from '../lib/errors.js';
import { parseConfigYaml } from '../lib/tokenizer/config.js';
import { MergeVQTokenizer } from '../lib/tokenizer/tokenizer.js';
import { fixtureDirs, loadJsonFixture } from './fixtures.js';

interface Official {
  params: number;
  state_dict: Record<string, number[]>;
  merge?: {
    embed_res: number;
    merge_res: number;
    r: [number, number];
    remain_list: number[];
    r_cand_list: number[];
    r_prob_list: number[];
  };
}

for (const dir of fixtureDirs()) {
  const jsonPath = path.join(dir, 'official_state_dicts.json');
  if (!fs.existsSync(jsonPath)) continue;
  const official = loadJsonFixture<Record<string, Official>>(dir, 'official_state_dicts.json');
  describe(`official configs in ${dir}`, () => {
    for (const [file, ref] of Object.entries(official)) {
      const yamlPath = path.join(dir, 'configs', 'gpu_s1', file);
      if (!fs.existsSync(yamlPath) || !ref.merge) continue;
      it(`${file}: parameter names and shapes equal the reference state_dict`, () => {
        const tok = MergeVQTokenizer.fromConfig(yamlPath);
        const ours = tok.store.shapeMap();
        const want = Object.fromEntries(
          Object.entries(ref.state_dict).filter(
            ([k]) => k.startsWith('encoder.') || k.startsWith('decoder.') || k.startsWith('recovery.'),
          ),
        );
        expect(Object.keys(ours).sort()).toEqual(Object.keys(want).sort());
        for (const [k, s] of Object.entries(want)) expect(ours[k], k).toEqual(s);
      });
      it(`${file}: keep-count candidates and merge schedule equal the reference`, () => {
        const tok = MergeVQTokenizer.fromConfig(yamlPath);
        const m = ref.merge!;
        expect(tok.candidates.keep).toEqual(m.remain_list);
        expect(tok.candidates.r).toEqual(m.r_cand_list);
        expect(tok.candidates.cumulative).toEqual(m.r_prob_list);
        expect(tok.defaultKeep).toBe(m.merge_res * m.merge_res);
        const sched = tok.mergeSchedule(tok.defaultKeep);
        expect(sched.reduce((a, b) => a + b, 0)).toBe(tok.fullNum - tok.defaultKeep);
      });
    }
  });
}

describe('config parsing', () => {
  it('rejects YAML without a ddconfig with ERR_BAD_CONFIG', () => {
    expect(() => parseConfigYaml('model:\n  init_args:\n    n_embed: 4\n')).toThrow(MergeVQError);
    try {
      parseConfigYaml('model: [1, 2');
    } catch (e) {
      expect((e as MergeVQError).code).toBe('ERR_BAD_CONFIG');
    }
  });
});
