// Fuzz cases, run in a child process: node scripts/fuzz-case.mjs <bundle> <target> <file>...
// Reads each <file> in turn with the reader of <target> (safetensors | checkpoint | legacy) and
// prints one JSON line per file: {result: 'ok' | 'error', name, code, message, ms, maxRSS}
// (maxRSS: the process's peak so far). An uncaught exception or a native crash shows as a
// nonzero exit before the line of the file that caused it.
import { pathToFileURL } from 'node:url';

const [bundle, target, ...files] = process.argv.slice(2);
const io = await import(pathToFileURL(bundle).href);

async function readOne(file) {
  if (target === 'safetensors') {
    const f = await io.readSafetensors(file, { convertF64: true });
    try {
      for (const n of f.names) (await f.tensorAsync(n)).dispose();
    } finally {
      await f.closeAsync();
    }
  } else if (target === 'checkpoint' || target === 'legacy') {
    const r = await io.loadCheckpoint(file, { convertF64: true, keepLoss: true, onWarning: () => undefined });
    for (const t of r.tensors.values()) t.dispose();
  } else throw new Error(`unknown target ${target}`);
}

for (const file of files) {
  const t0 = performance.now();
  let out;
  try {
    await readOne(file);
    out = { result: 'ok' };
  } catch (e) {
    out = { result: 'error', name: e?.name, code: e?.code, message: String(e?.message ?? e).slice(0, 300) };
  }
  out.ms = performance.now() - t0;
  out.maxRSS = process.resourceUsage().maxRSS * 1024;
  process.stdout.write(`${JSON.stringify(out)}\n`);
}
