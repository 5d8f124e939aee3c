/**
 * Benchmark entry point: `npm run bench -- <suite> [--json] [--threads N]`.
 * Suites live in bench/<suite>.ts and export `run(ctx)`. `npm run bench -- list` lists them.
 */
import { readdirSync } from 'node:fs';
import { addon } from '../lib/native.js';
import { makeContext, type BenchContext } from './common.js';

const args = process.argv.slice(2);
const json = args.includes('--json');
const ti = args.indexOf('--threads');
const threads = ti >= 0 ? Number(args[ti + 1]) : addon.getNumThreads();
const suites = args.filter((a, i) => !a.startsWith('--') && !(ti >= 0 && i === ti + 1));
const here = new URL('.', import.meta.url);
const available = readdirSync(here)
  .filter((f) => f.endsWith('.js') && !['main.js', 'common.js'].includes(f))
  .map((f) => f.slice(0, -3))
  .sort();

if (suites.length === 0 || suites[0] === 'list') {
  process.stdout.write(`usage: npm run bench -- <suite> [--json] [--threads N]\nsuites: ${available.join(', ')}\n`);
  process.exit(suites.length === 0 ? 1 : 0);
}
addon.setNumThreads(threads);
const ctx = makeContext(json, threads);
if (!json) process.stdout.write(`# ${threads} threads, measured fp32 peak ${ctx.peakGflops.toFixed(1)} GFLOP/s\n`);
for (const s of suites) {
  if (!available.includes(s)) {
    process.stderr.write(`unknown suite '${s}'; suites: ${available.join(', ')}\n`);
    process.exit(2);
  }
  const mod = (await import(new URL(`./${s}.js`, here).href)) as { run(ctx: BenchContext): Promise<void> | void };
  await mod.run(ctx);
}
