#!/usr/bin/env node
// Seed sweep: runs the randomized tests under N fresh base seeds (MERGEVQ_SEED) and prints every
// seed that fails, with the failing tests, so a flaky test is found before it lands.
//
//   npm run test:seeds -- 20                 # 20 fresh seeds over every randomized test file
//   npm run test:seeds -- 10 --kernels       # kernel tests only (what .ci/run does)
//   npm run test:seeds -- --seeds 1867523135,696985532 test/reduce.test.ts
//   npm run test:seeds -- 50 --json          # one JSON line per seed
//
// A test file is "randomized" when it draws from test/helpers.ts (`new Rng(` or `freshSeed(`).
// The other files (fixture parity and the like) do not depend on the seed: they run once, first,
// unless --no-fixed is given. A failing seed is reproduced with
// `MERGEVQ_SEED=<seed> npx vitest run <file>` (each file derives its seeds from the base alone).
import { spawnSync } from 'node:child_process';
import { randomInt } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const usage = `usage: npm run test:seeds -- [N] [--seeds a,b,...] [--kernels] [--no-fixed] [--json] [--batch K] [test files...]`;

let count = 10;
let seeds = null;
let kernelsOnly = false;
let runFixed = true;
let json = false;
let batchSize = 8;
const files = [];
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; ++i) {
  const a = argv[i];
  if (a === '--help' || a === '-h') {
    console.log(usage);
    process.exit(0);
  } else if (a === '--seeds') {
    const v = argv[++i] ?? '';
    seeds = v
      .split(',')
      .filter(Boolean)
      .map((s) => {
        const n = Number(s);
        if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) fail(`--seeds: '${s}' is not an integer in [0, 2^32)`);
        return n;
      });
  } else if (a === '--kernels') kernelsOnly = true;
  else if (a === '--no-fixed') runFixed = false;
  else if (a === '--json') json = true;
  else if (a === '--batch') batchSize = Math.max(1, Number(argv[++i]) || 1);
  else if (/^\d+$/.test(a)) count = Number(a);
  else if (a.startsWith('-')) fail(`unknown option ${a}\n${usage}`);
  else files.push(a);
}
if (!seeds && !(count >= 1)) fail(`N must be a positive integer\n${usage}`);

function fail(msg) {
  console.error(msg);
  process.exit(2);
}

// Model-level test files (whole networks); everything else randomized is a kernel test.
const MODEL_FILES = /^(tokenizer|gpt|mergear|fixtures|cli|config)/;
const all = fs
  .readdirSync(path.join(root, 'test'))
  .filter((f) => f.endsWith('.test.ts'))
  .sort();
const isRandomized = (f) => /new Rng\(|freshSeed\(/.test(fs.readFileSync(path.join(root, 'test', f), 'utf8'));
let randomized = files.length ? files.map((f) => path.basename(f)) : all.filter(isRandomized);
if (kernelsOnly) randomized = randomized.filter((f) => !MODEL_FILES.test(f));
const fixed = files.length ? [] : all.filter((f) => !isRandomized(f));
seeds ??= Array.from({ length: count }, () => randomInt(0, 2 ** 32));

// One vitest run for a batch of seeds: one project per seed (each with its own MERGEVQ_SEED), so the
// start-up cost is paid once per batch and both cores stay busy. Results come back through
// scripts/seed-reporter.mjs, one JSON line per test case.
function vitest(list, batch) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mvq-seeds-'));
  const report = path.join(dir, 'report.jsonl');
  const config = path.join(dir, 'vitest.seeds.config.mjs');
  const projects = batch.map((seed) => ({
    extends: false,
    test: {
      name: seed === null ? 'fixed' : `seed-${seed}`,
      root,
      include: list.map((f) => `test/${f}`),
      pool: 'forks',
      testTimeout: 120_000,
      hookTimeout: 120_000,
      env: seed === null ? { MERGEVQ_CHECK_ATTRS: '1' } : { MERGEVQ_CHECK_ATTRS: '1', MERGEVQ_SEED: String(seed) },
    },
  }));
  fs.writeFileSync(config, `export default ${JSON.stringify({ test: { root, projects } }, null, 1)};\n`);
  const env = { ...process.env, MERGEVQ_SEED_REPORT: report };
  delete env.MERGEVQ_SEED;
  const t0 = Date.now();
  const r = spawnSync(
    'npx',
    ['vitest', 'run', '--config', config, `--reporter=${path.join(root, 'scripts/seed-reporter.mjs')}`],
    {
      cwd: root,
      env,
      encoding: 'utf8',
      maxBuffer: 1 << 28,
    },
  );
  const seconds = (Date.now() - t0) / 1000;
  const lines = fs.existsSync(report)
    ? fs
        .readFileSync(report, 'utf8')
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l))
    : [];
  fs.rmSync(dir, { recursive: true, force: true });
  const results = new Map(
    batch.map((seed) => [seed === null ? 'fixed' : `seed-${seed}`, { seed, passed: 0, failures: [] }]),
  );
  for (const l of lines) {
    const res = results.get(l.project);
    if (!res) continue;
    if (l.state === 'passed') res.passed++;
    else if (l.state === 'failed') res.failures.push(`${path.relative(root, l.file)} > ${l.name}: ${l.error}`);
  }
  const broken = lines.length === 0 || (r.status !== 0 && [...results.values()].every((x) => x.failures.length === 0));
  if (broken) {
    const msg = `vitest exited ${r.status} without reporting a failing test:\n${(r.stdout + r.stderr).slice(-4000)}`;
    for (const x of results.values()) x.failures.push(msg);
  }
  return { seconds, results: [...results.values()].map((x) => ({ ...x, ok: x.failures.length === 0 })) };
}

const t0 = Date.now();
let fixedOk = true;
if (runFixed && fixed.length) {
  const {
    seconds,
    results: [r],
  } = vitest(fixed, [null]);
  fixedOk = r.ok;
  if (json) console.log(JSON.stringify({ seed: null, files: fixed.length, seconds, ...r }));
  else {
    console.log(
      `fixed tests (${fixed.length} files, once): ${r.ok ? 'ok' : 'FAILED'}, ${r.passed} passed, ${seconds.toFixed(1)} s`,
    );
    for (const f of r.failures) console.log(`  ${f}`);
  }
}
const bad = [];
let done = 0;
for (let i = 0; i < seeds.length; i += batchSize) {
  const { seconds, results } = vitest(randomized, seeds.slice(i, i + batchSize));
  for (const r of results) {
    ++done;
    if (!r.ok) bad.push(r.seed);
    if (json) console.log(JSON.stringify({ files: randomized.length, batchSeconds: seconds, ...r }));
    else {
      console.log(`seed ${r.seed} (${done}/${seeds.length}): ${r.ok ? 'ok' : 'FAILED'}, ${r.passed} passed`);
      for (const f of r.failures) console.log(`  ${f}`);
    }
  }
  if (!json) console.log(`  (batch of ${results.length} seeds: ${seconds.toFixed(1)} s)`);
}
const minutes = ((Date.now() - t0) / 60000).toFixed(1);
const summary = `${seeds.length} seeds over ${randomized.length} randomized test files in ${minutes} min: ${bad.length ? `failing seeds ${bad.join(', ')}` : 'no failing seed'}`;
console.log(json ? JSON.stringify({ summary, seeds: seeds.length, failing: bad }) : summary);
process.exit(bad.length || !fixedOk ? 1 : 0);
