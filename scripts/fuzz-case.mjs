// One fuzz case, run in its own process: node scripts/fuzz-case.mjs <bundle> <target> <file>
// Reads <file> with the reader of <target> (safetensors | checkpoint | legacy) and prints one
// JSON line: {result: 'ok' | 'error', code, message, ms, maxRSS}. An uncaught exception or a
// native crash shows as a nonzero exit without that line.
import { pathToFileURL } from 'node:url';

const [bundle, target, file] = process.argv.slice(2);
const io = await import(pathToFileURL(bundle).href);
const t0 = performance.now();
let out;
try {
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
  out = { result: 'ok' };
} catch (e) {
  out = { result: 'error', name: e?.name, code: e?.code, message: String(e?.message ?? e).slice(0, 300) };
}
out.ms = performance.now() - t0;
out.maxRSS = process.resourceUsage().maxRSS * 1024;
process.stdout.write(`${JSON.stringify(out)}\n`);
