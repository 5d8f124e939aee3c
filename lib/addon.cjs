'use strict';
// Locates and loads the native addon. Plain CommonJS on purpose: the build copies this file into
// both dist/esm and dist/cjs, so __dirname and require work the same for every consumer.
//
// On success this module is the addon. On failure it is a load report ({ loadError: { code,
// message } }) that lib/native.ts turns into one MergeVQError; nothing here throws, so the error a
// user sees is always that one, whichever way the package was loaded.
const path = require('node:path');
const fs = require('node:fs');

const packageRoot = require('./root.cjs');

// What -march=x86-64-v3 (the x64 build target) lets the compiler use anywhere in the addon, as
// /proc/cpuinfo names them. A CPU without one of them would die of SIGILL inside the addon.
const X64_V3_FLAGS = ['avx', 'avx2', 'bmi1', 'bmi2', 'f16c', 'fma', 'abm', 'movbe', 'xsave'];

/** The x86-64-v3 features this CPU lacks ([] when all are present or the CPU cannot be read). */
function missingCpuFeatures() {
  if (process.arch !== 'x64' || process.platform !== 'linux') return [];
  let text;
  try {
    // MERGEVQ_CPUINFO lets the tests describe another CPU.
    text = fs.readFileSync(process.env.MERGEVQ_CPUINFO || '/proc/cpuinfo', 'utf8');
  } catch {
    return [];
  }
  const line = text.split('\n').find((l) => /^flags\s*:/.test(l));
  if (!line) return [];
  const have = new Set(
    line
      .slice(line.indexOf(':') + 1)
      .trim()
      .split(/\s+/),
  );
  return X64_V3_FLAGS.filter((f) => !have.has(f));
}

/**
 * The builds to try, in this fixed order: MERGEVQ_ADDON alone when set; otherwise the local cmake-js
 * build (CPU + CUDA; skipped when MERGEVQ_PREFER_GYP=1), the local node-gyp build, then the prebuilt
 * binary for this platform.
 */
function candidates(root) {
  const explicit = process.env.MERGEVQ_ADDON;
  if (explicit) return [{ label: `MERGEVQ_ADDON=${explicit}`, file: path.resolve(explicit) }];
  const list = [];
  if (process.env.MERGEVQ_PREFER_GYP !== '1')
    list.push({ label: 'the cmake-js build', file: path.join(root, 'build-cmake', 'Release', 'mergevq.node') });
  list.push({ label: 'the node-gyp build', file: path.join(root, 'build', 'Release', 'mergevq.node') });
  list.push({ label: 'the prebuilt binary', prebuilt: true });
  return list;
}

// A build that exists but would not load (a CUDA build without its runtime, say) is passed over out
// loud, so a fallback to another build is never silent.
function warnFallback(addon, chosen, tried) {
  const failed = tried.filter((t) => !t.endsWith(': not built'));
  if (failed.length > 0)
    process.emitWarning(`mergevq: loaded ${chosen.label}; passed over ${failed.join('; ')}`, {
      code: 'MERGEVQ_ADDON_FALLBACK',
    });
  return addon;
}

function load() {
  const missing = missingCpuFeatures();
  if (missing.length > 0) {
    return {
      loadError: {
        code: 'ERR_CPU_UNSUPPORTED',
        message:
          `mergevq: this CPU lacks ${missing.join(', ')}, which the native kernels are compiled for ` +
          '(x86-64-v3: AVX2 and FMA, Intel Haswell / AMD Zen or newer). Run mergevq on a CPU with AVX2 and FMA.',
      },
    };
  }
  const root = packageRoot();
  const tried = [];
  const triedFiles = new Set();
  for (const c of candidates(root)) {
    try {
      if (c.prebuilt) {
        // node-gyp-build looks in build/Release before prebuilds/; a local build already tried is
        // not required a second time.
        const file = require('node-gyp-build').resolve(root);
        if (triedFiles.has(file)) continue;
        return warnFallback(require(file), c, tried);
      }
      triedFiles.add(c.file);
      if (!fs.existsSync(c.file)) {
        tried.push(`${c.label} (${c.file}): not built`);
        continue;
      }
      return warnFallback(require(c.file), c, tried);
    } catch (err) {
      const msg = err instanceof Error ? err.message.split('\n')[0] : String(err);
      tried.push(`${c.label}${c.file ? ` (${c.file})` : ''}: ${msg}`);
    }
  }
  return {
    loadError: {
      code: 'ERR_ADDON_LOAD',
      message:
        `mergevq: the native addon could not be loaded. Tried, in order:\n  ${tried.join('\n  ')}\n` +
        'Rebuild it with `npm run build:native` (CPU; needs python3, make and a C++17 compiler) or ' +
        '`npm run build:cuda` (CPU + CUDA; needs cmake and nvcc).',
    },
  };
}

module.exports = load();
