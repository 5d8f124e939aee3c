'use strict';
// Locates and loads the native addon. Plain CommonJS on purpose: the build copies this file into
// both dist/esm and dist/cjs, so __dirname and require work the same for every consumer.
const path = require('node:path');
const fs = require('node:fs');

const packageRoot = require('./root.cjs');

function load() {
  const explicit = process.env.MERGEVQ_ADDON;
  if (explicit) return require(path.resolve(explicit));
  const root = packageRoot();
  // Local builds: the cmake-js one (CPU + CUDA) and the portable node-gyp one. When both exist the
  // newer wins, so a rebuild of either is what runs; MERGEVQ_PREFER_GYP=1 forces the node-gyp one.
  const cmake = path.join(root, 'build-cmake', 'Release', 'mergevq.node');
  const gyp = path.join(root, 'build', 'Release', 'mergevq.node');
  if (process.env.MERGEVQ_PREFER_GYP !== '1' && fs.existsSync(cmake)) {
    if (!fs.existsSync(gyp) || fs.statSync(cmake).mtimeMs >= fs.statSync(gyp).mtimeMs) return require(cmake);
  }
  try {
    return require('node-gyp-build')(root);
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err);
    throw new Error(
      `mergevq: the native addon could not be loaded (${msg}). Build it with \`npm run build:native\` ` +
        '(CPU; needs python3, make and a C++17 compiler) or `npm run build:cuda` (CPU + CUDA; needs cmake and nvcc).',
    );
  }
}

module.exports = load();
