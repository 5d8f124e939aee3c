'use strict';
// The installed package's root folder (the nearest folder above this file whose package.json is
// named "mergevq"). Plain CommonJS for the same reason as addon.cjs: the build copies it into both
// dist/esm and dist/cjs, and under vitest it runs from lib/.
const path = require('node:path');
const fs = require('node:fs');

let cached;
function packageRoot() {
  if (cached) return cached;
  let dir = __dirname;
  for (;;) {
    const pj = path.join(dir, 'package.json');
    if (fs.existsSync(pj)) {
      try {
        if (JSON.parse(fs.readFileSync(pj, 'utf8')).name === 'mergevq') return (cached = dir);
      } catch {
        /* keep looking */
      }
    }
    const up = path.dirname(dir);
    if (up === dir) throw new Error(`mergevq: cannot find the package root above ${__dirname}`);
    dir = up;
  }
}

module.exports = packageRoot;
