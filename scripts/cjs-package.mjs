// After tsc: mark dist/cjs as CommonJS and copy the plain-JS addon loader into both builds.
import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';

mkdirSync('dist/cjs', { recursive: true });
writeFileSync('dist/cjs/package.json', JSON.stringify({ type: 'commonjs' }) + '\n');
for (const dir of ['dist/esm', 'dist/cjs']) {
  copyFileSync('lib/addon.cjs', `${dir}/addon.cjs`);
  copyFileSync('lib/addon.d.cts', `${dir}/addon.d.cts`);
  copyFileSync('lib/root.cjs', `${dir}/root.cjs`);
  copyFileSync('lib/root.d.cts', `${dir}/root.d.cts`);
}
