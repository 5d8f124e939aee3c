// Hostile files and arguments: every crasher of test/data/hostile (written by make_hostile.py
// there) is refused with a MergeVQError, quickly and in bounded memory, and the pickle policy
// is the same on every path (loadCheckpoint, readCheckpointObject, readWeights, mergevq convert).
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomInt } from 'node:crypto';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createProgram } from '../lib/cli/program.js';
import { MergeVQError } from '../lib/errors.js';
import { loadCheckpoint, readCheckpointObject } from '../lib/io/checkpoint.js';
import {
  DEFAULT_PICKLE_LIMITS,
  type PickleObject,
  describePickled,
  isCodeExecutionGlobal,
  unpickle,
} from '../lib/io/pickle.js';
import { makeResolver } from '../lib/io/torch.js';
import { runOp } from '../lib/native.js';
import { Tensor } from '../lib/tensor.js';
import { readWeights } from '../lib/tokenizer/load.js';
import { REPO_ROOT } from './fixtures.js';

const HOSTILE = path.join(REPO_ROOT, 'test/data/hostile');
const h = (f: string) => path.join(HOSTILE, f);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mergevq-hostile-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

async function refusal(p: Promise<unknown>): Promise<MergeVQError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(MergeVQError);
  return err as MergeVQError;
}

/** Each crasher: the code and the message it must be refused with. */
const CRASHERS: [file: string, code: string, message: RegExp][] = [
  ['zip64_locator.pt', 'ERR_BAD_FILE', /asks for bytes \[\d+, \d+\) of a file of 5067 bytes/],
  ['dag_key.ckpt', 'ERR_BAD_FILE', /state dict key \[\[\[.*\.\.\..* is not a string/],
  ['stride0_expand.ckpt', 'ERR_BAD_FILE', /tensors would take 1073741824 bytes, more than the limit of 16777224/],
  ['stride0_huge.ckpt', 'ERR_BAD_FILE', /size \[2147483648, 2147483648\] has more than 2\^53 elements/],
  ['mark_flood.ckpt', 'ERR_BAD_FILE', /data\.pkl expands \d+ bytes to 67108866 \(limit: ratio 64\)/],
  ['huge_int.ckpt', 'ERR_BAD_FILE', /INT of 20000 digits \(limit maxIntDigits = 4300\)/],
  ['deep_key.ckpt', 'ERR_BAD_FILE', /nested more than 256 deep \(limit maxDepth\)/],
  ['zip_bomb.ckpt', 'ERR_BAD_FILE', /data\/0 expands \d+ bytes to 67108864 \(limit: ratio 64\)/],
  ['many_views.ckpt', 'ERR_BAD_FILE', /tensors would take 67108864 bytes, more than the limit of 18874368/],
  ['system_beside_state_dict.ckpt', 'ERR_UNSAFE_PICKLE', /posix\.system, which can execute code \(nothing was run\)/],
  ['empty_state_dict.ckpt', 'ERR_BAD_FILE', /no tensors to load/],
];

describe('hostile checkpoints', () => {
  it.each(CRASHERS)('%s is refused with %s', async (file, code, message) => {
    const t0 = performance.now();
    const err = await refusal(loadCheckpoint(h(file), { onWarning: () => undefined }));
    expect(performance.now() - t0).toBeLessThan(1000);
    expect(err.code).toBe(code);
    expect(err.message).toMatch(message);
    expect(err.message.startsWith(h(file))).toBe(true);
    expect(err.message.length).toBeLessThan(600);
    // The same refusal on every path that reads checkpoints.
    expect((await refusal(readWeights(h(file)))).code).toBe(code);
    expect((await refusal(loadCheckpoint(h(file), { unknownGlobals: 'refuse' }))).code).toBe(code);
  });

  let bundle = '';
  beforeAll(async () => {
    const { bundleIo } = (await import(pathToFileURL(path.join(REPO_ROOT, 'scripts/fuzz-bundle.mjs')).href)) as {
      bundleIo: (out: string) => Promise<string>;
    };
    bundle = await bundleIo(path.join(REPO_ROOT, 'build/fuzz/hostile-test-io.mjs'));
  });
  const inChild = (file: string) => {
    const r = spawnSync(process.execPath, [path.join(REPO_ROOT, 'scripts/fuzz-case.mjs'), bundle, 'checkpoint', file], {
      encoding: 'utf8',
      timeout: 20_000,
    });
    expect(r.status, r.stderr).toBe(0);
    return JSON.parse(r.stdout.trim().split('\n').pop()!) as {
      result: string;
      code?: string;
      ms: number;
      maxRSS: number;
    };
  };

  it('each crasher, in its own process, takes under a second and under 64 MB more than loading a good file', () => {
    const base = inChild(path.join(REPO_ROOT, 'test/data/plain_state_dict.pt'));
    expect(base.result).toBe('ok');
    for (const [file, code] of CRASHERS) {
      const r = inChild(h(file));
      expect(r.result, file).toBe('error');
      expect(r.code, file).toBe(code);
      expect(r.ms, file).toBeLessThan(1000);
      expect(r.maxRSS - base.maxRSS, file).toBeLessThan(64 << 20);
    }
  });

  it('mergevq convert of each crasher fails with the MergeVQError (the CLI prints one line, exit 1)', async () => {
    const err = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    try {
      for (const [file, code] of CRASHERS) {
        const out = path.join(tmp, `${file}.safetensors`);
        const e = await refusal(
          createProgram()
            .exitOverride()
            .parseAsync(['node', 'mergevq', 'convert', h(file), out]),
        );
        expect(e.code, file).toBe(code);
        expect(fs.existsSync(out), file).toBe(false);
      }
      const e = await refusal(
        createProgram()
          .exitOverride()
          .parseAsync([
            'node',
            'mergevq',
            'convert',
            path.join(REPO_ROOT, 'test/data/malicious_reduce.ckpt'),
            path.join(tmp, 'x.safetensors'),
          ]),
      );
      expect(e.code).toBe('ERR_UNSAFE_PICKLE');
    } finally {
      err.mockRestore();
    }
  });

  it(`random one-byte corruptions of a real checkpoint never escape as anything but a MergeVQError`, async () => {
    const whole = fs.readFileSync(path.join(REPO_ROOT, 'test/data/plain_state_dict.pt'));
    const f = path.join(tmp, 'corrupt.pt');
    for (let i = 0; i < 60; i++) {
      const b = Buffer.from(whole);
      // Half in the zip's trailing records (central directory, zip64 records), half anywhere.
      const at = i % 2 ? randomInt(b.length) : b.length - 1 - randomInt(Math.min(300, b.length));
      b[at] = randomInt(256);
      fs.writeFileSync(f, b);
      await loadCheckpoint(f, { convertF64: true, onWarning: () => undefined }).then(
        (r) => r.tensors.forEach((t) => t.dispose()),
        (e: unknown) => {
          expect(e, `byte ${at}`).toBeInstanceOf(MergeVQError);
          expect(['ERR_BAD_FILE', 'ERR_UNSAFE_PICKLE', 'ERR_UNSUPPORTED_DTYPE']).toContain((e as MergeVQError).code);
        },
      );
    }
  });
});

describe('pickle policy', () => {
  it('refuses code-execution globals and reads other unknown globals as reported placeholders', () => {
    for (const [m, n] of [
      ['os', 'system'],
      ['posix', 'system'],
      ['nt', 'system'],
      ['os', 'execv'],
      ['posix', 'execve'],
      ['subprocess', 'Popen'],
      ['subprocess', 'check_output'],
      ['builtins', 'eval'],
      ['__builtin__', 'exec'],
      ['builtins', 'compile'],
      ['builtins', '__import__'],
      ['builtins', 'getattr'],
      ['builtins', 'open'],
      ['importlib', 'import_module'],
      ['torch', 'load'],
      ['OS', 'system'],
    ]) {
      expect(isCodeExecutionGlobal(m!, n!), `${m}.${n}`).toBe(true);
    }
    for (const [m, n] of [
      ['taming.modules.losses.vqperceptual', 'LossConfig'],
      ['pathlib', 'PosixPath'],
      ['argparse', 'Namespace'],
      ['builtins', 'float'],
      ['numpy.core.multiarray', '_reconstruct'],
    ]) {
      expect(isCodeExecutionGlobal(m!, n!), `${m}.${n}`).toBe(false);
    }
    const P = (s: string) => Buffer.from(s, 'latin1');
    // [argparse.Namespace(), argparse.Namespace()] -> two placeholders, reported once.
    const seen: string[] = [];
    const v = unpickle(P('\x80\x02(cargparse\nNamespace\n)Rcargparse\nNamespace\n)Rl.'), {
      resolveGlobal: () => undefined,
      onUnknownGlobal: (q) => seen.push(q),
    }) as PickleObject[];
    expect(v.map((o) => o.global)).toEqual(['argparse.Namespace', 'argparse.Namespace']);
    expect(seen).toEqual(['argparse.Namespace']);
    expect(() =>
      unpickle(P('\x80\x02cargparse\nNamespace\n)R.'), { resolveGlobal: () => undefined, unknownGlobals: 'refuse' }),
    ).toThrow(expect.objectContaining({ code: 'ERR_UNSAFE_PICKLE' }));
    // Code-execution globals are refused even when the caller asks for placeholders.
    expect(() =>
      unpickle(P('\x80\x02cposix\nsystem\n(X\x02\x00\x00\x00idtR.'), {
        resolveGlobal: () => undefined,
        skipUnknownGlobals: true,
      }),
    ).toThrow(expect.objectContaining({ code: 'ERR_UNSAFE_PICKLE', message: expect.stringMatching(/posix\.system/) }));
  });

  it('readCheckpointObject follows the same policy', async () => {
    const warnings: string[] = [];
    await expect(
      readCheckpointObject(h('system_beside_state_dict.ckpt'), {
        skipUnknownGlobals: true,
        onWarning: (w) => warnings.push(w),
      }),
    ).rejects.toMatchObject({ code: 'ERR_UNSAFE_PICKLE' });
    expect(warnings).toEqual([]);
  });
});

describe('unpickler budgets', () => {
  const P = (...parts: (string | Buffer)[]) =>
    Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p, 'latin1') : p)));
  const none = () => undefined;
  const refusedWith = (pkl: Uint8Array, re: RegExp, limits = {}) => {
    const t0 = performance.now();
    expect(() => unpickle(pkl, { resolveGlobal: makeResolver('<t>'), limits })).toThrow(
      expect.objectContaining({ code: 'ERR_BAD_FILE', message: expect.stringMatching(re) }),
    );
    expect(performance.now() - t0).toBeLessThan(2000);
  };

  it('bounds MARKs and the stack', () => {
    const n = DEFAULT_PICKLE_LIMITS.maxStack + 1 + randomInt(1000);
    refusedWith(P('\x80\x02', Buffer.alloc(n, 0x28), '.'), /limit maxStack/);
    refusedWith(P('\x80\x02', Buffer.alloc(n, 0x4e), '.'), /limit maxStack/);
    // Under the budget, a deep stack is fine.
    expect(unpickle(P('\x80\x02(', Buffer.alloc(5000, 0x4e), 'l.'), { resolveGlobal: none })).toHaveLength(5000);
  });

  it('bounds opcodes, memo entries, integer digits and nesting depth', () => {
    refusedWith(P('\x80\x02', Buffer.alloc(200, 0x4e), Buffer.alloc(200, 0x30), 'N.'), /limit maxOps/, { maxOps: 300 });
    const memo = Buffer.concat(
      Array.from({ length: 300 }, (_, i) => Buffer.from([0x4e, 0x72, i & 255, i >> 8, 0, 0, 0x30])),
    );
    refusedWith(P('\x80\x02', memo, 'N.'), /limit maxMemo/, { maxMemo: 256 });
    refusedWith(P('\x80\x02I', '7'.repeat(5000), '\n.'), /INT of 5000 digits/);
    refusedWith(P('\x80\x02L', '7'.repeat(5000), 'L\n.'), /LONG of 5000 digits/);
    const long4 = Buffer.alloc(5 + 100_000, 0x11);
    long4[0] = 0x8b;
    long4.writeInt32LE(100_000, 1);
    refusedWith(P('\x80\x02', long4, '.'), /integer of 100000 bytes/);
    // A big but allowed integer parses exactly.
    const digits = `${randomInt(1, 10)}${Array.from({ length: 3000 }, () => randomInt(10)).join('')}`;
    expect(unpickle(P('\x80\x02I', digits, '\n.'), { resolveGlobal: none })).toBe(BigInt(digits));
    const b = Buffer.from(
      BigInt(digits)
        .toString(16)
        .padStart(2 * Math.ceil(BigInt(digits).toString(16).length / 2) + 2, '0'),
      'hex',
    ).reverse();
    const l4 = Buffer.alloc(5);
    l4[0] = 0x8b;
    l4.writeInt32LE(b.length, 1);
    expect(unpickle(P('\x80\x02', l4, b, '.'), { resolveGlobal: none })).toBe(BigInt(digits));
    // Nesting: depth 256 passes, 257 does not (lists built by APPEND, and a DAG shared by memo).
    const nest = (d: number) => P('\x80\x02', ']'.repeat(d), 'a'.repeat(d - 1), '.');
    expect(() => unpickle(nest(256), { resolveGlobal: none })).not.toThrow();
    refusedWith(nest(257), /nested more than 256 deep/);
    const u32 = (i: number) => {
      const x = Buffer.alloc(4);
      x.writeUInt32LE(i);
      return x;
    };
    const dag: Buffer[] = [P(']r'), u32(0), P('0')];
    for (let d = 1; d <= 300; d++) dag.push(P('(j'), u32(d - 1), P('j'), u32(d - 1), P('lr'), u32(d), P('0'));
    refusedWith(P('\x80\x02', ...dag, P('j'), u32(300), '.'), /nested more than 256 deep/);
    const dag200 = [P(']r'), u32(0), P('0')];
    for (let d = 1; d <= 200; d++) dag200.push(P('(j'), u32(d - 1), P('j'), u32(d - 1), P('lr'), u32(d), P('0'));
    expect(() => unpickle(P('\x80\x02', ...dag200, P('j'), u32(200), '.'), { resolveGlobal: none })).not.toThrow();
  });

  it('bounds the memory of the values built (a flood of small containers)', () => {
    // [{}, {}, ...] by EMPTY_DICT + APPEND: 2 bytes of pickle per dict.
    const n = 200_000 + randomInt(1000);
    const flood = P('\x80\x02]', Buffer.alloc(2 * n, 0), '.');
    for (let i = 0; i < n; i++) flood.write('}a', 3 + 2 * i, 'latin1');
    refusedWith(flood, /limit maxObjectBytes/, { maxObjectBytes: 16 << 20 });
    expect(unpickle(flood, { resolveGlobal: none })).toHaveLength(n);
    // The default budget stops a big flood in bounded memory.
    const big = 4_000_000;
    const huge = P('\x80\x02]', Buffer.alloc(2 * big, 0), '.');
    for (let i = 0; i < big; i++) huge.write('}a', 3 + 2 * i, 'latin1');
    refusedWith(huge, /limit maxObjectBytes/);
  });

  it('bounds what the allowed callables copy (memo references cannot multiply the pickle)', () => {
    // A list of 20k Nones in the memo, then builtins.list(it) 400 times: 8M copies from 10 KB.
    const reps = Buffer.concat(Array.from({ length: 400 }, () => P('h\x01h\x00\x85R0')));
    const pkl = P('\x80\x02c__builtin__\nlist\nq\x01(', Buffer.alloc(20_000, 0x4e), 'lq\x00', reps, 'N.');
    refusedWith(pkl, /limit maxCopy/);
  });

  it('describes any value in bounded time and length', () => {
    // 2^60 paths, 61 containers.
    let v: unknown[] = [];
    for (let d = 0; d < 60; d++) v = [v, v];
    const t0 = performance.now();
    const s = describePickled(v);
    expect(performance.now() - t0).toBeLessThan(50);
    expect(s.length).toBeLessThan(200);
    expect(s.startsWith('[[[')).toBe(true);
  });
});

describe('native arguments', () => {
  it('tome_source_update checks n against the map before allocating', () => {
    const B = 2,
      L = 8;
    const map = Tensor.from(
      BigInt64Array.from({ length: B * L }, (_, i) => BigInt(i % L)),
      [B, L],
    );
    const empty = Tensor.from(new BigInt64Array(0), [B, 0]);
    for (const n of [1e9, 2 ** 40, L + 1]) {
      const t0 = performance.now();
      expect(() => runOp('tome_source_update', [map.native, empty.native, empty.native, empty.native], { n })).toThrow(
        RangeError,
      );
      expect(() => runOp('tome_source_update', [map.native, empty.native, empty.native, empty.native], { n })).toThrow(
        /'n' .*must be <= 8/,
      );
      expect(performance.now() - t0).toBeLessThan(100);
    }
    // A split that does not match n: refused before the table is built.
    const unm = Tensor.from(new BigInt64Array(B * 2), [B, 2]);
    const src = Tensor.from(new BigInt64Array(B * 1), [B, 1]);
    expect(() => runOp('tome_source_update', [map.native, unm.native, src.native, src.native], { n: L })).toThrow(
      /must split the 4 even rows of n = 8/,
    );
    // The identity merge with a valid n still works and returns the map.
    const out = new Tensor(
      runOp('tome_source_update', [map.native, empty.native, empty.native, empty.native], { n: L })[0]!,
    );
    expect(Array.from(out.toArray<'int64'>())).toEqual(Array.from(map.toArray<'int64'>()));
  });
});

describe('readWeights on an empty safetensors file', () => {
  it('is an ERR_BAD_FILE error, not an empty map', async () => {
    const { readWeights } = await import('../lib/tokenizer/load.js');
    const { encodeSafetensors } = await import('../lib/io/safetensors.js');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mvq-empty-'));
    const file = path.join(dir, 'empty.safetensors');
    fs.writeFileSync(file, encodeSafetensors({}));
    await expect(readWeights(file)).rejects.toMatchObject({ code: 'ERR_BAD_FILE' });
    fs.rmSync(dir, { recursive: true, force: true });
  });
});
