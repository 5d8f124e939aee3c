import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  MergeSchedulePicker,
  checkParseR,
  generateProbList,
  mergeCandidates,
  npAround,
  parseR,
} from '../lib/tokenizer/schedule.js';
import { Rng, seedInfo } from './helpers.js';
import { fixtureDirs } from './st-mini.js';

interface Schedules {
  parse_r: { num_layers: number; r: number; inflect: number; total: number | null; out: number[] }[];
  check_parse_r: { num_layers: number; merge_num: number; total_num: number; inflect: number; out: number }[];
  generate_prob_list: {
    distribution: string;
    n: number;
    kwargs: { mean?: number; std?: number; lambd?: number };
    out: number[];
  }[];
  candidates: {
    embed_res: number;
    merge_num: number;
    cand_distribution: string;
    r: [number, number];
    merge_res: number;
    remain_list: number[];
    r_cand_list: number[];
    r_prob_list: number[];
    num_layers?: number;
  }[];
}

describe('merge schedules: parity with the reference', () => {
  const files = fixtureDirs()
    .map((d) => join(d, 'schedules.json'))
    .filter((f) => existsSync(f));
  it('finds at least one schedules fixture', () => expect(files.length).toBeGreaterThan(0));
  for (const file of files) {
    const s = JSON.parse(readFileSync(file, 'utf8')) as Schedules;
    it(`${file}: parse_r`, () => {
      for (const c of s.parse_r)
        expect(parseR(c.num_layers, c.r, c.inflect, c.total), JSON.stringify(c)).toEqual(c.out);
    });
    it(`${file}: check_parse_r`, () => {
      for (const c of s.check_parse_r)
        expect(checkParseR(c.num_layers, c.merge_num, c.total_num, c.inflect), JSON.stringify(c)).toBe(c.out);
    });
    it(`${file}: generate_prob_list`, () => {
      for (const c of s.generate_prob_list)
        expect(generateProbList(c.n, c.distribution, c.kwargs), JSON.stringify(c)).toEqual(c.out);
    });
    it(`${file}: candidates (official configurations, 12 attention blocks unless given)`, () => {
      for (const c of s.candidates) {
        const got = mergeCandidates({
          embedRes: c.embed_res,
          mergeNum: c.merge_num,
          candDistribution: c.cand_distribution,
          numLayers: c.num_layers ?? 12,
          inflect: c.r[1],
        });
        expect(got.remainList, JSON.stringify(c)).toEqual(c.remain_list);
        expect(got.rCandList).toEqual(c.r_cand_list);
        expect(got.rProbList).toEqual(c.r_prob_list);
        expect(got.r).toBe(c.r[0]);
        expect(got.mergeRes).toBe(c.merge_res);
      }
    });
  }
});

describe('merge schedules: semantics', () => {
  it('np.around rounds half to even on the binary value', () => {
    expect(npAround(0.125, 2)).toBe(0.12);
    expect(npAround(0.375, 2)).toBe(0.38);
    expect(npAround(2.5, 0)).toBe(2);
    expect(npAround(-0.5, 0)).toBe(-0);
    expect(npAround(1.000005, 5)).toBe(1); // x * 1e5 = 100000.5 exactly in float64: half to even (NumPy gives 1.0)
  });
  it('parse_r with total removes exactly total tokens', () => {
    const rng = new Rng();
    for (let t = 0; t < 50; ++t) {
      const n = 2 + rng.int(23);
      const r = rng.int(60);
      const infl = [-1, -0.5, 0, 0.5, 1][rng.int(5)]!;
      const total = rng.int(500);
      const out = parseR(n, r, infl, total);
      expect(
        out.reduce((a, b) => a + b, 0),
        seedInfo(rng.seed),
      ).toBe(total);
      expect(out.length).toBe(n);
    }
    expect(() => parseR(1, 3, 0)).toThrow(RangeError);
    expect(() => parseR(12, 1.5, 0)).toThrow(TypeError);
  });
  it('the picker cycles deterministically and draws reproducibly with the given probabilities', () => {
    const c = mergeCandidates({ embedRes: 16, mergeNum: 112, candDistribution: 'gaussian-6', numLayers: 12 });
    const p = new MergeSchedulePicker(c, 1234);
    for (let t = 0; t < 250; ++t) {
      const u = (t % 100) * 0.01;
      let idx = 0;
      while (c.rProbList[idx]! < u) ++idx;
      const pick = p.atStep(t);
      expect(pick.index, `step ${t}`).toBe(idx);
      expect(pick.r).toBe(c.rCandList[idx]);
      expect(pick.keep).toBe(c.remainList[idx]);
      expect(pick.perLayer.reduce((a, b) => a + b, 0)).toBe(256 - pick.keep);
    }
    // Step 0 picks the first candidate; step 12 (u = 0.12 > 0.11797) the second.
    expect(p.atStep(0).index).toBe(0);
    expect(p.atStep(12).index).toBe(1);
    const a = new MergeSchedulePicker(c, 99);
    const b = new MergeSchedulePicker(c, 99);
    const counts = new Array<number>(6).fill(0);
    const draws = 20000;
    for (let i = 0; i < draws; ++i) {
      const x = a.random();
      expect(x.index).toBe(b.random().index);
      counts[x.index]! += 1;
    }
    let prev = 0;
    counts.forEach((k, i) => {
      expect(Math.abs(k / draws - (c.rProbList[i]! - prev))).toBeLessThan(0.015);
      prev = c.rProbList[i]!;
    });
  });
});
