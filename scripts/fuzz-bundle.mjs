// Bundles lib/io (TypeScript) into one ESM file that plain Node can import, for the fuzz harness
// and the hostile-file tests that run each case in a child process. The native addon stays
// external, loaded from lib/addon.cjs by absolute path.
import { mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');

/** Writes build/fuzz/io.mjs (or `out`) and returns its path. */
export async function bundleIo(out = join(ROOT, 'build/fuzz/io.mjs')) {
  const { build } = await import('rolldown');
  mkdirSync(dirname(out), { recursive: true });
  const addon = join(ROOT, 'lib/addon.cjs');
  await build({
    input: join(ROOT, 'lib/io/index.ts'),
    platform: 'node',
    makeAbsoluteExternalsRelative: false,
    plugins: [
      {
        name: 'mergevq-addon',
        resolveId: (src) => (src.endsWith('addon.cjs') ? { id: addon, external: 'absolute' } : undefined),
      },
    ],
    external: [/^node:/, 'yauzl', 'yaml', 'sharp'],
    output: { file: out, format: 'esm' },
    logLevel: 'silent',
  });
  return out;
}
