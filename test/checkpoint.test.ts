import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomInt } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import {
  ALLOWED_GLOBALS,
  PickleObject,
  type TorchTensorRef,
  loadCheckpoint,
  readCheckpointObject,
} from '../lib/io/index.js';
import { unpickle } from '../lib/io/pickle.js';
import { readSafetensorsSync, type SafetensorsFile } from '../lib/io/safetensors.js';
import { MergeVQError } from '../lib/errors.js';
import { REPO_ROOT } from './fixtures.js';

const DATA = path.join(REPO_ROOT, 'test/data');
const ckpt = (f: string) => path.join(DATA, f);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mergevq-ckpt-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

let expected: SafetensorsFile;
const exp = () => (expected ??= readSafetensorsSync(ckpt('expected.safetensors')));
afterAll(() => expected?.close());

function sameBytes(a: ArrayBufferView, b: ArrayBufferView): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

async function rejects(p: Promise<unknown>, code: string, pattern?: RegExp): Promise<MergeVQError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err, `expected ${code}`).toBeInstanceOf(MergeVQError);
  expect((err as MergeVQError).code).toBe(code);
  if (pattern) expect((err as Error).message).toMatch(pattern);
  return err as MergeVQError;
}

const RAW_KEYS = [
  'encoder.conv_in.weight',
  'encoder.norm.weight',
  'encoder.proj.weight',
  'encoder.big',
  'encoder.slice',
  'encoder.strided',
  'decoder.half',
  'decoder.bf16',
  'decoder.double',
  'quantize.index',
  'quantize.i32',
  'quantize.u8',
  'quantize.mask',
  'quantize.scale',
  'quantize.param',
  'quantize.empty',
];

describe('loadCheckpoint', () => {
  it('loads a Lightning checkpoint to the tensors torch saved (strides, offsets, shared storages, every dtype)', async () => {
    const r = await loadCheckpoint(ckpt('lightning.ckpt'), { convertF64: true, skipUnknownGlobals: true });
    expect(r.stateDictKey).toBe('state_dict');
    expect([...r.tensors.keys()]).toEqual(RAW_KEYS);
    expect(r.dropped.sort()).toEqual(['loss.discriminator.main.0.weight', 'loss.logvar']);
    expect(r.ema).toEqual({ available: false, used: false, ambiguous: [] });
    for (const k of RAW_KEYS) {
      const t = r.tensors.get(k)!;
      const info = exp().info(`raw.${k}`);
      expect(t.shape, k).toEqual(info.shape);
      if (info.dtype === 'F64') {
        expect(t.dtype).toBe('float32');
        expect(Array.from(t.toFloat32())).toEqual(
          Array.from(Float32Array.from(exp().array(`raw.${k}`) as Float64Array)),
        );
      } else {
        expect(t.dtype, k).toBe(
          { F32: 'float32', F16: 'float16', BF16: 'bfloat16', I64: 'int64', I32: 'int32', U8: 'uint8', BOOL: 'uint8' }[
            info.dtype as 'F32'
          ],
        );
        expect(sameBytes(t.toArray(), exp().array(`raw.${k}`)), k).toBe(true);
      }
    }
    // Values checked against an independent reading of the same numbers.
    const big = exp().array('raw.encoder.big') as Float32Array;
    expect(Array.from(r.tensors.get('encoder.slice')!.toFloat32())).toEqual(Array.from(big.slice(3, 7)));
    expect(Array.from(r.tensors.get('encoder.strided')!.toFloat32())).toEqual([big[1], big[4], big[7]]);
    expect(r.extra.get('epoch')).toBe(3);
    expect(r.extra.get('global_step')).toBe(120);
    expect(r.extra.get('pytorch-lightning_version')).toBe('2.1.0');
    const opt = (r.extra.get('optimizer_states') as Map<string, unknown>[])[0]!;
    const groups = opt.get('param_groups') as Map<string, unknown>[];
    expect(groups[0]!.get('betas')).toEqual([0.5, 0.9]);
    expect(
      ((opt.get('state') as Map<number, Map<string, unknown>>).get(0)!.get('exp_avg') as TorchTensorRef).shape,
    ).toEqual([2]);
  }, 60_000);

  it('reads hyper_parameters holding an unknown class as an inert placeholder, with a warning', async () => {
    // lightning.ckpt's hyper_parameters (a Lightning AttributeDict, read as a dict) hold an
    // instance of a user class: by default a placeholder, named in a warning; 'refuse' refuses it.
    const warnings: string[] = [];
    const r = await loadCheckpoint(ckpt('lightning.ckpt'), { convertF64: true, onWarning: (m) => warnings.push(m) });
    expect(r.unknownGlobals).toEqual(['taming.modules.losses.vqperceptual.LossConfig']);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(
      /1 global outside the allowlist, read as inert placeholders .*taming\.modules\.losses\.vqperceptual\.LossConfig/,
    );
    expect(r.tensors.size).toBe(RAW_KEYS.length);
    await rejects(
      loadCheckpoint(ckpt('lightning.ckpt'), { convertF64: true, unknownGlobals: 'refuse' }),
      'ERR_UNSAFE_PICKLE',
      /taming\.modules\.losses\.vqperceptual\.LossConfig/,
    );
    await rejects(
      readCheckpointObject(ckpt('lightning.ckpt'), { skipUnknownGlobals: false }),
      'ERR_UNSAFE_PICKLE',
      /LossConfig/,
    );
    const top = (await readCheckpointObject(ckpt('lightning.ckpt'), { onWarning: () => undefined })) as Map<
      string,
      unknown
    >;
    const hp = top.get('hyper_parameters') as Map<string, unknown>;
    expect(hp).toBeInstanceOf(Map);
    expect(hp.get('lr')).toBe(1e-4);
    expect(hp.get('use_ema')).toBe(true);
    expect((hp.get('ddconfig') as Map<string, unknown>).get('ch_mult')).toEqual([1, 1, 2]);
    expect(hp.get('tags')).toEqual(new Set(['a', 'b']));
    expect(hp.get('blob')).toEqual(Uint8Array.from([0, 255, 114, 97, 119]));
    const loss = hp.get('lossconfig') as PickleObject;
    expect(loss).toBeInstanceOf(PickleObject);
    expect(loss.global).toBe('taming.modules.losses.vqperceptual.LossConfig');
    expect(loss.state).toEqual(
      new Map<string, unknown>([
        ['disc_start', 0],
        ['disc_weight', 0.8],
      ]),
    );
  });

  it('refuses float64 without convertF64', async () => {
    await rejects(
      loadCheckpoint(ckpt('lightning.ckpt'), { skipUnknownGlobals: true }),
      'ERR_UNSUPPORTED_DTYPE',
      /decoder\.double/,
    );
  });

  it('maps LitEma weights back onto parameter names with prefer: ema', async () => {
    const expectedNames = [...RAW_KEYS, 'encoder.not_in_ckpt'];
    const ema = await loadCheckpoint(ckpt('lightning_ema.ckpt'), {
      prefer: 'ema',
      convertF64: true,
      expected: expectedNames.filter((k) => k !== 'quantize.u8'),
    });
    expect(ema.ema.available).toBe(true);
    expect(ema.ema.used).toBe(true);
    expect(ema.ema.numUpdates).toBe(120);
    expect(ema.ema.decay).toBeCloseTo(0.999, 6);
    expect(ema.missing).toEqual(['encoder.not_in_ckpt']);
    expect(ema.unexpected).toEqual(['quantize.u8']);
    expect([...ema.tensors.keys()]).toEqual(RAW_KEYS);
    const emaNames = exp()
      .names.filter((n) => n.startsWith('ema.'))
      .map((n) => n.slice(4));
    expect(emaNames.length).toBeGreaterThan(5);
    for (const k of RAW_KEYS) {
      const t = ema.tensors.get(k)!;
      const ref = emaNames.includes(k) ? `ema.${k}` : `raw.${k}`;
      if (exp().info(ref).dtype === 'F64')
        expect(Array.from(t.toFloat32())).toEqual(Array.from(Float32Array.from(exp().array(ref) as Float64Array)));
      else expect(sameBytes(t.toArray(), exp().array(ref)), k).toBe(true);
    }
    // EMA differs from the raw weights, and prefer: raw returns the raw ones.
    const raw = await loadCheckpoint(ckpt('lightning_ema.ckpt'), { prefer: 'raw', convertF64: true });
    expect(raw.ema.used).toBe(false);
    expect(
      sameBytes(raw.tensors.get('encoder.conv_in.weight')!.toArray(), exp().array('raw.encoder.conv_in.weight')),
    ).toBe(true);
    expect(
      sameBytes(ema.tensors.get('encoder.conv_in.weight')!.toArray(), exp().array('raw.encoder.conv_in.weight')),
    ).toBe(false);
    expect(raw.dropped).toContain('model_ema.encoderconv_inweight');
    expect([...raw.tensors.keys()].some((k) => k.startsWith('model_ema') || k.startsWith('loss.'))).toBe(false);
  }, 60_000);

  it('loads a bare state dict (torch.save(model.state_dict()))', async () => {
    const r = await loadCheckpoint(ckpt('plain_state_dict.pt'), { convertF64: true });
    expect(r.stateDictKey).toBe('');
    expect([...r.tensors.keys()]).toEqual(RAW_KEYS);
    expect(sameBytes(r.tensors.get('encoder.proj.weight')!.toArray(), exp().array('raw.encoder.proj.weight'))).toBe(
      true,
    );
  });

  it('refuses a pickle naming os.system with ERR_UNSAFE_PICKLE, whatever the options', async () => {
    for (const o of [
      {},
      { skipUnknownGlobals: true },
      { unknownGlobals: 'placeholder' as const },
      { unknownGlobals: 'refuse' as const },
    ]) {
      await rejects(
        loadCheckpoint(ckpt('malicious_os_system.ckpt'), o),
        'ERR_UNSAFE_PICKLE',
        /os\.system, which can execute code/,
      );
      await rejects(readCheckpointObject(ckpt('malicious_os_system.ckpt'), o), 'ERR_UNSAFE_PICKLE', /os\.system/);
    }
  });

  it('refuses builtins.eval hidden inside a state_dict, whatever the options', async () => {
    await rejects(loadCheckpoint(ckpt('malicious_reduce.ckpt')), 'ERR_UNSAFE_PICKLE', /(__builtin__|builtins)\.eval/);
    await rejects(
      loadCheckpoint(ckpt('malicious_reduce.ckpt'), { skipUnknownGlobals: true }),
      'ERR_UNSAFE_PICKLE',
      /(__builtin__|builtins)\.eval/,
    );
  });

  it('checks every tensor and storage description against the archive', async () => {
    const ok = await loadCheckpoint(ckpt('good_handmade.ckpt'));
    expect(Array.from(ok.tensors.get('w')!.toFloat32())).toEqual([2, 3, 4]);
    await rejects(
      loadCheckpoint(ckpt('bad_view_out_of_range.ckpt')),
      'ERR_BAD_FILE',
      /tensor w .*reaches element 4 of a storage of 4/,
    );
    await rejects(
      loadCheckpoint(ckpt('bad_storage_size.ckpt')),
      'ERR_BAD_FILE',
      /storage 0 entry holds 16 bytes but 8 elements of float32 need 32/,
    );
    await rejects(
      loadCheckpoint(ckpt('bad_missing_storage.ckpt')),
      'ERR_BAD_FILE',
      /storage 7 has no zip entry archive\/data\/7/,
    );
    await rejects(
      loadCheckpoint(ckpt('bad_storage_key.ckpt')),
      'ERR_BAD_FILE',
      /storage key "\.\.\/0" is not a plain name/,
    );
  });

  it('rejects files that are not torch archives with ERR_BAD_FILE', async () => {
    const notZip = path.join(tmp, 'not.ckpt');
    fs.writeFileSync(notZip, Buffer.from('hello, this is not a zip archive at all'));
    await rejects(
      loadCheckpoint(notZip),
      'ERR_BAD_FILE',
      /not a torch\.save file \(neither a zip archive nor the legacy format/,
    );
    const legacy = path.join(tmp, 'legacy.pt');
    fs.writeFileSync(
      legacy,
      Buffer.from([0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e]),
    );
    await rejects(loadCheckpoint(legacy), 'ERR_BAD_FILE', /legacy/);
    const truncated = path.join(tmp, 'truncated.ckpt');
    const whole = fs.readFileSync(ckpt('lightning.ckpt'));
    fs.writeFileSync(truncated, whole.subarray(0, randomInt(100, whole.length - 30)));
    await rejects(loadCheckpoint(truncated), 'ERR_BAD_FILE');
    await expect(loadCheckpoint('')).rejects.toThrow(TypeError);
    await expect(loadCheckpoint(ckpt('lightning.ckpt'), { prefer: 'best' as never })).rejects.toThrow(TypeError);
  });
});

describe('restricted unpickler', () => {
  const resolveNone = () => undefined;
  const P = (...parts: (number[] | string)[]) =>
    Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p, 'latin1') : Buffer.from(p))));

  it('rebuilds containers and scalars', () => {
    // {'a': [1, -2, 3.5, True, None, (b'\x00\xff',)], 'big': 2**70}
    const v = unpickle(
      P(
        [0x80, 0x02, 0x7d, 0x28, 0x8c, 1],
        'a',
        [
          0x5d, 0x28, 0x4b, 1, 0x4a, 0xfe, 0xff, 0xff, 0xff, 0x47, 0x40, 0x0c, 0, 0, 0, 0, 0, 0, 0x88, 0x4e, 0x43, 2, 0,
          0xff, 0x85, 0x65,
        ],
        [0x8c, 3],
        'big',
        [0x8a, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0x40, 0x75, 0x2e],
      ),
      { resolveGlobal: resolveNone },
    ) as Map<string, unknown>;
    expect(v.get('a')).toEqual([1, -2, 3.5, true, null, [Uint8Array.from([0, 255])]]);
    expect(v.get('big')).toBe(2n ** 70n);
  });

  it('handles a list of 300k items appended at once', () => {
    const n = 300_000 + randomInt(1000);
    const pkl = Buffer.concat([
      Buffer.from([0x80, 0x02, 0x5d, 0x28]),
      Buffer.alloc(n, 0x4e),
      Buffer.from([0x65, 0x2e]),
    ]);
    const v = unpickle(pkl, { resolveGlobal: resolveNone }) as unknown[];
    expect(v.length).toBe(n);
    expect(v[n - 1]).toBe(null);
  });

  it('fails with ERR_BAD_FILE, never a crash, on malformed input', () => {
    const cases: number[][] = [
      [],
      [0x80, 0x02],
      [0x80, 0x02, 0xff, 0x2e],
      [0x80, 0x02, 0x30, 0x2e],
      [0x80, 0x02, 0x68, 0x07, 0x2e],
      [0x80, 0x02, 0x58, 0xff, 0xff, 0xff, 0x7f],
      [0x80, 0x02, 0x4e, 0x4e, 0x2e],
      [0x80, 0x02, 0x4e, 0x52, 0x2e],
      [0x80, 0x02, 0x75, 0x2e],
    ];
    for (const c of cases) {
      expect(() => unpickle(Uint8Array.from(c), { resolveGlobal: resolveNone }), JSON.stringify(c)).toThrow(
        expect.objectContaining({ code: 'ERR_BAD_FILE' }),
      );
    }
  });

  it('refuses every global outside the allowlist, by name, including STACK_GLOBAL', () => {
    for (const [mod, name] of [
      ['os', 'system'],
      ['builtins', 'eval'],
      ['subprocess', 'Popen'],
      ['builtins', 'getattr'],
      ['torch', 'load'],
    ] as const) {
      const viaGlobal = P([0x80, 0x02, 0x63], `${mod}\n${name}\n`, [0x29, 0x52, 0x2e]);
      const viaStack = P([0x80, 0x04, 0x8c, mod.length], mod, [0x8c, name.length], name, [0x93, 0x29, 0x52, 0x2e]);
      for (const pkl of [viaGlobal, viaStack]) {
        expect(() => unpickle(pkl, { resolveGlobal: resolveNone })).toThrow(
          expect.objectContaining({ code: 'ERR_UNSAFE_PICKLE', message: expect.stringContaining(`${mod}.${name}`) }),
        );
      }
      expect(ALLOWED_GLOBALS).not.toContain(`${mod}.${name}`);
    }
  });

  const seed = randomInt(2 ** 31);
  it(`survives random corruption of a real checkpoint pickle (seed ${seed})`, () => {
    const zipBytes = fs.readFileSync(ckpt('lightning.ckpt'));
    // data.pkl is the first (stored) entry, followed by a data descriptor (PK\x07\x08).
    const start = 30 + zipBytes.readUInt16LE(26) + zipBytes.readUInt16LE(28);
    const pkl = zipBytes.subarray(start, zipBytes.indexOf(Buffer.from([0x50, 0x4b, 0x07, 0x08]), start));
    expect(pkl[0]).toBe(0x80);
    let a = seed;
    const rand = () => (a = (Math.imul(a, 1664525) + 1013904223) >>> 0) / 2 ** 32;
    for (let i = 0; i < 300; i++) {
      const b = Uint8Array.from(pkl);
      for (let j = 0; j < 3; j++) b[Math.floor(rand() * b.length)] = Math.floor(rand() * 256);
      try {
        unpickle(b.subarray(0, rand() < 0.3 ? Math.floor(rand() * b.length) : b.length), {
          resolveGlobal: () => undefined,
          skipUnknownGlobals: true,
          persistentLoad: (p) => p,
        });
      } catch (e) {
        expect(e).toBeInstanceOf(MergeVQError);
        expect(['ERR_BAD_FILE', 'ERR_UNSAFE_PICKLE']).toContain((e as MergeVQError).code);
      }
    }
  });
});
