import { describe, expect, it } from 'vitest';
import { type AddonLoad, addon, addonFromLoad } from '../lib/native.js';
import { Tensor } from '../lib/tensor.js';
import { MergeVQError } from '../lib/errors.js';

describe('native runtime', () => {
  it('round-trips a float32 tensor', () => {
    const data = Float32Array.from({ length: 12 }, (_, i) => i * 0.5 - 2);
    const t = Tensor.from(data, [3, 4]);
    expect(t.shape).toEqual([3, 4]);
    expect(t.dtype).toBe('float32');
    expect(Array.from(t.toFloat32())).toEqual(Array.from(data));
  });

  it('reports cuda unavailability with a clear MergeVQError', () => {
    const d = addon.deviceAvailable('cuda');
    if (d.available) return;
    expect(d.reason).toMatch(/cuda/);
    let err: unknown;
    try {
      Tensor.zeros([2], 'float32', 'cuda');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(MergeVQError);
    expect((err as MergeVQError).code).toBe('ERR_NO_DEVICE');
  });

  it('rejects bad arguments with TypeError / RangeError', () => {
    expect(() => Tensor.from(new Float32Array(3), [2, 2])).toThrow(RangeError);
    expect(() => Tensor.from(new Float32Array(3), [3], { dtype: 'float64' as never })).toThrow(TypeError);
    expect(() => addon.runOp('no_such_op', [])).toThrow(TypeError);
  });

  it('runs ops asynchronously', async () => {
    const t = Tensor.from(new Float32Array([1.5, -2.25, 65504, 1e-8]), [4]);
    const [h] = await (await import('../lib/native.js')).runOpAsync('cast', [t.native], { dtype: 'float16' });
    const back = new Tensor(h!).toFloat32();
    expect(Array.from(back.slice(0, 3))).toEqual([1.5, -2.25, 65504]);
  });
});

describe('runtime: threads, async safety, workers', () => {
  it('setNumThreads validates and round-trips', async () => {
    const { addon: a } = await import('../lib/native.js');
    const before = a.getNumThreads();
    a.setNumThreads(1);
    expect(a.getNumThreads()).toBe(1);
    a.setNumThreads(before);
    expect(() => a.setNumThreads(0)).toThrow(RangeError);
    expect(() => a.setNumThreads('2' as never)).toThrow(TypeError);
  });

  it('a large parallel op gives the same result with 1 and N threads', async () => {
    const { addon: a, runOp } = await import('../lib/native.js');
    const n = 1 << 20;
    const x = new Float32Array(n);
    for (let i = 0; i < n; ++i) x[i] = Math.sin(i * 0.37) * 1000;
    const t = Tensor.from(x, [n]);
    const before = a.getNumThreads();
    a.setNumThreads(2);
    const h2 = new Uint16Array(runOp('cast', [t.native], { dtype: 'float16' })[0]!.read());
    a.setNumThreads(1);
    const h1 = new Uint16Array(runOp('cast', [t.native], { dtype: 'float16' })[0]!.read());
    a.setNumThreads(before);
    expect(Buffer.compare(Buffer.from(h1.buffer), Buffer.from(h2.buffer))).toBe(0);
  });

  it('async jobs keep their inputs alive after JS drops them', async () => {
    const { runOpAsync } = await import('../lib/native.js');
    const jobs: Promise<unknown>[] = [];
    for (let k = 0; k < 16; ++k) {
      const data = Float32Array.from({ length: 1 << 16 }, (_, i) => i + k);
      jobs.push(runOpAsync('cast', [Tensor.from(data, [1 << 16]).native], { dtype: 'bfloat16' }));
    }
    (globalThis as { gc?: () => void }).gc?.();
    const outs = (await Promise.all(jobs)) as { read(): ArrayBuffer }[][];
    outs.forEach((o, k) => {
      const back = new Tensor(o[0] as never).toFloat32();
      expect(back[0]).toBe(k);
    });
  });

  it('async errors reject with the caller stack and a typed error', async () => {
    const { runOpAsync } = await import('../lib/native.js');
    const t = Tensor.from(new Float32Array(4), [4]);
    await expect(runOpAsync('cast', [t.native], { dtype: 'float99' })).rejects.toThrow(TypeError);
  });

  it('loads and runs inside worker_threads (per-environment state)', async () => {
    const { Worker } = await import('node:worker_threads');
    const { createRequire } = await import('node:module');
    const req = createRequire(import.meta.url);
    const addonPath = req.resolve('../lib/addon.cjs');
    const code = `
      const { parentPort } = require('node:worker_threads');
      const a = require(${JSON.stringify(addonPath)});
      const t = new a.Tensor(new Float32Array([1.5, 2.5]), [2], 'float32');
      const [h] = a.runOp('cast', [t], { dtype: 'float16' });
      parentPort.postMessage(Array.from(new Uint16Array(h.read())));`;
    const run = () =>
      new Promise<number[]>((resolve, reject) => {
        const w = new Worker(code, { eval: true });
        w.once('message', resolve);
        w.once('error', reject);
      });
    const [r1, r2] = await Promise.all([run(), run()]);
    expect(r1).toEqual([0x3e00, 0x4100]);
    expect(r2).toEqual(r1);
  });
});

describe('tensor lifetime', () => {
  it('dispose() releases a handle; views and later use behave', () => {
    const t = Tensor.from(new Float32Array([1, 2, 3, 4, 5, 6]), [2, 3]);
    const v = t.select(0, 1);
    t.dispose();
    expect(t.disposed).toBe(true);
    expect(() => t.shape).toThrow(/disposed/);
    // a disposed tensor is a MergeVQError with a code, wherever it is used
    for (const use of [() => t.shape, () => addon.runOp('contiguous', [t.native])]) {
      let err: unknown = null;
      try {
        use();
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(MergeVQError);
      expect((err as MergeVQError).code).toBe('ERR_DISPOSED');
    }
    expect(Array.from(v.toFloat32())).toEqual([4, 5, 6]);
  });

  it('disposing an input while an async job reads it does not free the memory under the job', async () => {
    const { runOpAsync } = await import('../lib/native.js');
    const n = 1 << 20;
    const data = Float32Array.from({ length: n }, (_, i) => (i % 1000) * 0.25);
    const t = Tensor.from(data, [n]);
    const job = runOpAsync('cast', [t.native], { dtype: 'bfloat16' });
    t.dispose();
    const [out] = await job;
    const back = new Tensor(out!).toFloat32();
    expect(back[999]).toBe(250); // 249.75 rounded to bfloat16 (8 significant bits)
    expect(back[4]).toBe(1);
  });
});

describe('addon loader', () => {
  // Loads lib/addon.cjs in a fresh Node with the given environment and returns what it exported:
  // the load report when loading failed, or { loaded: true }.
  const loadIn = async (env: Record<string, string>): Promise<{ loadError?: { code: string; message: string } }> => {
    const { spawnSync } = await import('node:child_process');
    const { createRequire } = await import('node:module');
    const addonPath = createRequire(import.meta.url).resolve('../lib/addon.cjs');
    const code = `const r = require(${JSON.stringify(addonPath)});
      process.stdout.write(JSON.stringify(r.loadError ? { loadError: r.loadError } : { loaded: typeof r.runOp === 'function' }));`;
    const out = spawnSync(process.execPath, ['-e', code], { env: { ...process.env, ...env }, encoding: 'utf8' });
    expect(out.status, out.stderr).toBe(0);
    return JSON.parse(out.stdout);
  };
  const tmp = async (name: string, text: string | Uint8Array): Promise<string> => {
    const fs = await import('node:fs');
    const os = await import('node:os');
    const path = await import('node:path');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mergevq-loader-'));
    const file = path.join(dir, name);
    fs.writeFileSync(file, text);
    return file;
  };

  it.runIf(process.arch === 'x64' && process.platform === 'linux')(
    'a CPU without AVX2 gets one actionable ERR_CPU_UNSUPPORTED MergeVQError instead of a crash',
    async () => {
      // An x86-64-v2 CPU (SSE4.2, no AVX): what an old Xeon reports.
      const cpuinfo = await tmp('cpuinfo', 'processor\t: 0\nflags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 popcnt\n');
      const r = await loadIn({ MERGEVQ_CPUINFO: cpuinfo });
      expect(r.loadError?.code).toBe('ERR_CPU_UNSUPPORTED');
      expect(r.loadError?.message).toMatch(/lacks avx, avx2, bmi1, bmi2, f16c, fma, abm, movbe, xsave/);
      expect(r.loadError?.message).toMatch(/AVX2 and FMA/);
      const err = (() => {
        try {
          addonFromLoad(r as AddonLoad);
        } catch (e) {
          return e;
        }
      })();
      expect(err).toBeInstanceOf(MergeVQError);
      expect((err as MergeVQError).code).toBe('ERR_CPU_UNSUPPORTED');
      // The CPU this runs on passes the same check.
      expect((await loadIn({})).loadError).toBeUndefined();
    },
  );

  it('a broken build is one ERR_ADDON_LOAD naming the file, its error and how to rebuild', async () => {
    const bad = await tmp('mergevq.node', new Uint8Array([0x7f, 0x45, 0x4c, 0x46, 1, 2, 3]));
    const r = await loadIn({ MERGEVQ_ADDON: bad });
    expect(r.loadError?.code).toBe('ERR_ADDON_LOAD');
    expect(r.loadError?.message).toContain(bad);
    expect(r.loadError?.message).toMatch(/npm run build:native/);
    expect(() => addonFromLoad(r as AddonLoad)).toThrow(MergeVQError);
    const missing = await loadIn({ MERGEVQ_ADDON: `${bad}.absent` });
    expect(missing.loadError?.message).toMatch(/not built/);
  });

  it('MERGEVQ_PREFER_GYP=1 skips the cmake-js build and loads the node-gyp one', async () => {
    expect(await loadIn({ MERGEVQ_PREFER_GYP: '1' })).toEqual({ loaded: true });
  });
});
