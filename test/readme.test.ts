// The README's example for the shipped models runs as written (with 'mergevq' pointing at lib/),
// in a temporary folder, and writes the file it says.
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from './fixtures.js';

/** The ```ts blocks that follow `marker` in the README, up to the next heading. */
function blocksAfter(marker: string): string[] {
  const text = readFileSync(join(REPO_ROOT, 'README.md'), 'utf8');
  const at = text.indexOf(marker);
  if (at < 0) throw new Error(`README has no '${marker}'`);
  const section = text.slice(at, text.indexOf('\n#', at + 1) >>> 0 || undefined);
  return [...section.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]!);
}

describe('README', () => {
  it('the shipped-models example runs and writes bags.png', async () => {
    const [code] = blocksAfter('The shipped models:');
    expect(code).toMatch(/loadDefaultModels/);
    const dir = join(REPO_ROOT, 'test', '.tmp');
    mkdirSync(dir, { recursive: true });
    const work = mkdtempSync(join(tmpdir(), 'mvq-readme-'));
    const lib = pathToFileURL(join(REPO_ROOT, 'lib', 'index.ts')).href;
    const file = join(dir, `readme-${process.pid}.ts`);
    // run from the temporary folder: relative output paths land there
    const body = code!
      .replace(/from 'mergevq'/g, `from '${lib}'`)
      .replace(/'bags\.png'/g, JSON.stringify(join(work, 'bags.png')));
    writeFileSync(file, `${body}\nexport {};\n`);
    try {
      await import(pathToFileURL(file).href);
      expect(existsSync(join(work, 'bags.png'))).toBe(true);
    } finally {
      rmSync(file, { force: true });
    }
  });
});
