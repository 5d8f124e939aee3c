// The layering rule: lib/ops is the only module that names a native op. Every other module reaches
// the kernels through its typed wrappers, so option checking, argument order and shapes live in one
// place. Gradient rules are registered, by op name, only in lib/autograd.ts (the rule registry).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { addon } from '../lib/native.js';

const LIB = path.resolve(import.meta.dirname, '..', 'lib');

function tsFiles(dir: string): string[] {
  return fs
    .readdirSync(dir, { withFileTypes: true })
    .flatMap((e) => (e.isDirectory() ? tsFiles(path.join(dir, e.name)) : [path.join(dir, e.name)]))
    .filter((f) => f.endsWith('.ts'));
}

/** `file:line name` for every call that names a registered op by a string literal. */
function opNameCalls(files: string[], callee: RegExp): string[] {
  const ops = new Set(addon.listOps());
  const found: string[] = [];
  for (const f of files) {
    const src = fs.readFileSync(f, 'utf8');
    for (const m of src.matchAll(new RegExp(`\\b(?:${callee.source})\\(\\s*(['"\`])([A-Za-z0-9_]+)\\1`, 'g'))) {
      if (!ops.has(m[2]!)) continue;
      const line = src.slice(0, m.index).split('\n').length;
      found.push(`${path.relative(LIB, f)}:${line} ${m[2]}`);
    }
  }
  return found;
}

describe('layering', () => {
  const outsideOps = tsFiles(LIB).filter((f) => !f.startsWith(path.join(LIB, 'ops') + path.sep));

  it('the scan sees the op calls lib/ops makes (so an empty result below means something)', () => {
    const inOps = opNameCalls(tsFiles(path.join(LIB, 'ops')), /call1?|op1?|runOp(?:Async)?|addon\.runOp/);
    expect(inOps.length).toBeGreaterThan(100);
  });

  it('no module outside lib/ops calls a native op by name', () => {
    expect(opNameCalls(outsideOps, /call1?|op1?|runOp(?:Async)?|addon\.runOp/)).toEqual([]);
  });

  it('gradient rules are registered only in lib/autograd.ts', () => {
    const others = outsideOps.filter((f) => f !== path.join(LIB, 'autograd.ts'));
    expect(opNameCalls(others, /defineGrad|defineNonDifferentiable|hasGrad/)).toEqual([]);
  });
});
