// Fuzzing of the file readers: npm run fuzz -- <target> [--seconds N] [--jobs J] [--seed S] [--batch K]
//
// <target>: safetensors | checkpoint | legacy | all. Each case is a mutation of a seed file from
// the repository's test data (bit flips, interesting integers, truncation, insertions, chunk
// copies, header-JSON edits for safetensors, central-directory edits for zips), read by the
// target's reader in a child process (scripts/fuzz-case.mjs): one process per case by default,
// or K cases per process with --batch K (a case that kills its batch is rerun alone to confirm
// it, and the cases after it are dropped). Outcomes:
//   ok       the file loaded;              refused  a MergeVQError (the expected failure);
//   bad      another error escaped;        crash    the process died (signal, exit != 0);
//   hang     no answer within --hang-seconds (default 10).
// Inputs that are bad, crash or hang are kept under build/fuzz/findings/. Prints a JSON summary
// (cases, outcomes, codes, slowest case, peak RSS) and exits 1 when anything but ok/refused occurred.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import { join } from 'node:path';
import { ROOT, bundleIo } from './fuzz-bundle.mjs';

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};
const target = args.find((a, i) => !a.startsWith('--') && (i === 0 || !args[i - 1].startsWith('--')));
const TARGETS = ['safetensors', 'checkpoint', 'legacy'];
if (!target || (target !== 'all' && !TARGETS.includes(target))) {
  process.stderr.write(
    `usage: npm run fuzz -- <${TARGETS.join(' | ')} | all> [--seconds N] [--jobs J] [--seed S] [--hang-seconds H]\n`,
  );
  process.exit(2);
}
const seconds = Number(opt('seconds', '30'));
const jobs = Number(opt('jobs', String(Math.max(1, Math.min(4, os.availableParallelism() - 1)))));
const hangMs = Number(opt('hang-seconds', '10')) * 1000;
const batch = Math.max(1, Number(opt('batch', '1')));
let seed = Number(opt('seed', String(Date.now() % 2 ** 31)));
const seed0 = seed;
const rand = () => (seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32;
const ri = (n) => Math.floor(rand() * n);

const list = (dir, re) =>
  fs.existsSync(join(ROOT, dir))
    ? fs
        .readdirSync(join(ROOT, dir))
        .filter((f) => re.test(f))
        .map((f) => join(ROOT, dir, f))
    : [];
const SEEDS = {
  safetensors: [
    ...list('test/data', /\.safetensors$/),
    ...list('test/fixtures', /\.safetensors$/).filter((f) => fs.statSync(f).size < 4 << 20),
  ],
  checkpoint: [...list('test/data', /\.(ckpt|pt)$/), ...list('test/data/legacy', /\.zip\.pt$/)],
  legacy: list('test/data/legacy', /\.legacy\.pt$/),
};

const INTS = [
  0,
  1,
  2,
  7,
  8,
  0x7f,
  0x80,
  0xff,
  0x100,
  0x7fff,
  0xffff,
  0x7fffffff,
  0x80000000,
  0xffffffff,
  2 ** 53 - 1,
  2 ** 53,
  2 ** 62,
  2 ** 64 - 1,
];
function writeInt(b, at, v, size) {
  if (at + size > b.length) return;
  const x = BigInt.asUintN(64, BigInt(v));
  for (let i = 0; i < size; i++) b[at + i] = Number((x >> BigInt(8 * i)) & 0xffn);
}

/** One mutation of `src` for `target`. */
function mutate(src, target) {
  let b = Buffer.from(src);
  const n = 1 + ri(4);
  for (let k = 0; k < n; k++) {
    // Zips: half the edits in the trailing records (central directory, zip64 records).
    const tail = target === 'checkpoint' && b[0] === 0x50 && rand() < 0.5;
    const pos = () => (tail ? Math.max(0, b.length - 1 - ri(Math.min(600, b.length))) : ri(b.length));
    switch (ri(9)) {
      case 0:
        b[pos()] ^= 1 << ri(8);
        break;
      case 1:
        b[pos()] = ri(256);
        break;
      case 2:
        writeInt(b, pos(), INTS[ri(INTS.length)], [1, 2, 4, 8][ri(4)]);
        break;
      case 3:
        b = b.subarray(0, ri(b.length));
        break;
      case 4: {
        const at = pos();
        const ins = Buffer.alloc(1 + ri(16));
        for (let i = 0; i < ins.length; i++) ins[i] = rand() < 0.5 ? 0x28 + ri(8) : ri(256);
        b = Buffer.concat([b.subarray(0, at), ins, b.subarray(at)]);
        break;
      }
      case 5: {
        const from = ri(b.length);
        const len = 1 + ri(64);
        const at = pos();
        b = Buffer.concat([b.subarray(0, at), b.subarray(from, from + len), b.subarray(at)]);
        break;
      }
      case 6: {
        const at = pos();
        b = Buffer.concat([b.subarray(0, at), b.subarray(at + 1 + ri(32))]);
        break;
      }
      case 7:
        if (target === 'safetensors') b = mutateHeader(b);
        else b[pos()] = [0x28, 0x2e, 0x51, 0x52, 0x63, 0x68, 0x71, 0x74, 0x75, 0x7d, 0x8a, 0x93][ri(12)];
        break;
      default:
        writeInt(b, pos(), INTS[ri(INTS.length)] - ri(3), 8);
    }
    if (b.length === 0) break;
  }
  return b;
}

/** safetensors: change one number or string of the JSON header, keeping it valid JSON. */
function mutateHeader(b) {
  if (b.length < 8) return b;
  const n = Number(b.readBigUInt64LE(0));
  if (n > b.length - 8) return b;
  let h;
  try {
    h = JSON.parse(b.subarray(8, 8 + n).toString('utf8'));
  } catch {
    return b;
  }
  const names = Object.keys(h).filter((k) => k !== '__metadata__');
  if (names.length === 0) return b;
  const e = h[names[ri(names.length)]];
  const pick = ri(4);
  if (pick === 0 && Array.isArray(e.shape) && e.shape.length) e.shape[ri(e.shape.length)] = INTS[ri(INTS.length)];
  else if (pick === 1 && Array.isArray(e.data_offsets)) e.data_offsets[ri(2)] = INTS[ri(INTS.length)];
  else if (pick === 2) e.dtype = ['F32', 'F64', 'BF16', 'I64', 'BOOL', 'U64', 'F8_E4M3', 'X'][ri(8)];
  else if (Array.isArray(e.shape))
    e.shape.push(...Array.from({ length: 1 + ri(3) }, () => [0, 1, 2 ** 20, 2 ** 31][ri(4)]));
  const text = Buffer.from(JSON.stringify(h));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(text.length));
  return Buffer.concat([len, text, b.subarray(8 + n)]);
}

/** Runs `files` in one child; resolves one result per file answered (fewer after a crash or hang). */
function runBatch(bundle, target, files) {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [join(ROOT, 'scripts/fuzz-case.mjs'), bundle, target, ...files], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const results = [];
    let buf = '';
    let err = '';
    let hung = false;
    let timer;
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(
        () => {
          hung = true;
          child.kill('SIGKILL');
        },
        hangMs + (results.length === 0 ? 2000 : 0),
      );
    };
    arm();
    child.stdout.on('data', (d) => {
      buf += d;
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        try {
          const r = JSON.parse(line);
          const outcome = r.result === 'ok' ? 'ok' : r.name === 'MergeVQError' && r.code ? 'refused' : 'bad';
          results.push({
            outcome,
            ms: r.ms,
            maxRSS: r.maxRSS,
            code: r.code,
            detail: outcome === 'bad' ? `${r.name}: ${r.message}` : undefined,
          });
          arm();
        } catch {
          /* not a result line */
        }
      }
    });
    child.stderr.on('data', (d) => (err = (err + d).slice(-2000)));
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (results.length < files.length) {
        if (hung) results.push({ outcome: 'hang', detail: `no answer in ${hangMs} ms` });
        else results.push({ outcome: 'crash', detail: `exit ${code} ${signal ?? ''} ${err.slice(-500)}` });
      } else if (code !== 0)
        results.push({
          outcome: 'crash',
          detail: `exit ${code} ${signal ?? ''} after the last case ${err.slice(-500)}`,
        });
      resolve(results.slice(0, files.length));
    });
  });
}

async function fuzz(bundle, target, ms) {
  const seeds = SEEDS[target].map((f) => fs.readFileSync(f));
  if (seeds.length === 0) throw new Error(`no seed files for ${target}`);
  const work = fs.mkdtempSync(join(os.tmpdir(), `mergevq-fuzz-${target}-`));
  const findings = join(ROOT, 'build/fuzz/findings', target);
  const stats = {
    target,
    cases: 0,
    casesPerSecond: 0,
    outcomes: { ok: 0, refused: 0, bad: 0, crash: 0, hang: 0 },
    codes: {},
    slowestMs: 0,
    peakRSS: 0,
    findings: [],
  };
  const end = Date.now() + ms;
  let id = 0;
  const worker = async () => {
    while (Date.now() < end) {
      const files = Array.from({ length: batch }, () => {
        const file = join(work, `case-${id++}`);
        fs.writeFileSync(file, mutate(seeds[ri(seeds.length)], target));
        return file;
      });
      let results = await runBatch(bundle, target, files);
      const last = results[results.length - 1];
      if (batch > 1 && last && (last.outcome === 'crash' || last.outcome === 'hang')) {
        // Confirm alone: the case, in its own process.
        const alone = (await runBatch(bundle, target, [files[results.length - 1]]))[0];
        results = [
          ...results.slice(0, -1),
          alone.outcome === 'crash' || alone.outcome === 'hang'
            ? alone
            : { ...last, detail: `${last.detail} (not reproduced alone: ${alone.outcome})` },
        ];
      }
      results.forEach((r, k) => record(r, files[k]));
      for (const f of files) fs.rmSync(f, { force: true });
    }
  };
  const record = (r, file) => {
    stats.cases++;
    stats.outcomes[r.outcome]++;
    if (r.code) stats.codes[r.code] = (stats.codes[r.code] ?? 0) + 1;
    if (r.ms !== undefined) stats.slowestMs = Math.max(stats.slowestMs, Math.round(r.ms));
    if (r.maxRSS) stats.peakRSS = Math.max(stats.peakRSS, r.maxRSS);
    if (r.outcome === 'bad' || r.outcome === 'crash' || r.outcome === 'hang') {
      fs.mkdirSync(findings, { recursive: true });
      const keep = join(findings, `${r.outcome}-${stats.cases}`);
      fs.copyFileSync(file, keep);
      if (stats.findings.length < 20)
        stats.findings.push({ file: keep, outcome: r.outcome, detail: r.detail?.slice(0, 300) });
    }
  };
  await Promise.all(Array.from({ length: jobs }, worker));
  fs.rmSync(work, { recursive: true, force: true });
  stats.casesPerSecond = Math.round((stats.cases / (ms / 1000)) * 10) / 10;
  stats.peakRSSMiB = Math.round((stats.peakRSS / 2 ** 20) * 10) / 10;
  delete stats.peakRSS;
  return stats;
}

const bundle = await bundleIo();
const targets = target === 'all' ? TARGETS : [target];
const results = [];
for (const t of targets) results.push(await fuzz(bundle, t, (seconds * 1000) / targets.length));
process.stdout.write(`${JSON.stringify({ seed: seed0, seconds, jobs, batch, results }, null, 2)}\n`);
process.exit(results.some((r) => r.outcomes.bad + r.outcomes.crash + r.outcomes.hang > 0) ? 1 : 0);
