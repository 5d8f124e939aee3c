// `npm run bench -- <suite> [--json]`: compiles lib/ and bench/ with tsc, then runs bench/main.
import { execFileSync } from 'node:child_process';
import { copyFileSync } from 'node:fs';

execFileSync(process.execPath, ['node_modules/typescript/bin/tsc', '-p', 'tsconfig.bench.json'], { stdio: 'inherit' });
copyFileSync('lib/addon.cjs', 'bench-build/lib/addon.cjs');
copyFileSync('lib/root.cjs', 'bench-build/lib/root.cjs');
await import('../bench-build/bench/main.js');
