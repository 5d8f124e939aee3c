import * as path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Tensor } from '../lib/tensor.js';
import { MergeVQError } from '../lib/errors.js';
import { REPO_ROOT, fixtureDirs, forEachFixtureDir, loadJsonFixture, relErr } from './fixtures.js';

describe('fixture helpers', () => {
  const saved = process.env.MERGEVQ_FIXTURES;
  afterEach(() => {
    if (saved === undefined) delete process.env.MERGEVQ_FIXTURES;
    else process.env.MERGEVQ_FIXTURES = saved;
  });

  it('fixtureDirs reads MERGEVQ_FIXTURES, defaulting to test/fixtures', () => {
    delete process.env.MERGEVQ_FIXTURES;
    expect(fixtureDirs()).toEqual([path.join(REPO_ROOT, 'test/fixtures')]);
    process.env.MERGEVQ_FIXTURES = '/a/b::rel/c:';
    expect(fixtureDirs()).toEqual(['/a/b', path.join(REPO_ROOT, 'rel/c')]);
  });

  it('relErr is ||a-b||/||b|| in float64', () => {
    const b = Float64Array.from({ length: 50 }, () => Math.random() - 0.5);
    const noise = Float64Array.from({ length: 50 }, () => Math.random() - 0.5);
    const a = b.map((v, i) => v + 1e-3 * noise[i]!);
    const norm = (v: ArrayLike<number>) => Math.sqrt(Array.from(v).reduce((s, x) => s + x * x, 0));
    expect(relErr(a, b)).toBeCloseTo((1e-3 * norm(noise)) / norm(b), 12);
    expect(relErr(b, b)).toBe(0);
    expect(relErr([3, 4], [0, 0])).toBe(5);
    expect(relErr(Tensor.from(Float32Array.from([1, 2])), [1, 2.5])).toBeCloseTo(0.5 / Math.sqrt(1 + 6.25), 12);
    expect(relErr(BigInt64Array.from([1n, 2n]), [1, 2])).toBe(0);
    expect(Number.isNaN(relErr([NaN], [1]))).toBe(true);
    expect(() => relErr([1, 2], [1])).toThrow(RangeError);
  });

  it('loadJsonFixture parses JSON fixtures', () => {
    const s = loadJsonFixture<Record<string, unknown>>(fixtureDirs()[0]!, 'schedules.json');
    expect(s).toHaveProperty('candidates');
  });
});

forEachFixtureDir('lfq.safetensors', (fixture) => {
  it('exposes metadata as parsed JSON and tensors', () => {
    const f = fixture();
    expect(typeof f.meta<string>('loss')).toBe('string');
    expect(Number(f.meta<string>('sample_minimization_weight'))).toBe(1);
    expect(() => f.meta('no-such-key')).toThrow(MergeVQError);
    // Every float32 tensor the file holds reads the same through both accessors, whatever its cases.
    const names = f.names.filter((n) => f.header.tensors.get(n)!.dtype === 'F32');
    expect(names.length).toBeGreaterThan(0);
    for (const n of names) {
      const x = f.tensor(n);
      expect(x.shape).toEqual([...f.header.tensors.get(n)!.shape]);
      expect(relErr(x, f.array(n) as Float32Array)).toBe(0);
    }
  });
});

forEachFixtureDir('no-such-fixture.safetensors', () => {
  it('is never declared for a missing file', () => {
    throw new Error('unreachable');
  });
});
