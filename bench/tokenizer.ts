/**
 * Suite `tokenizer`: encode and decode of the official G+R d64 tokenizer (configs/gpu_s1/
 * imagenet_mergevq_256_GR_d64_8gpu_200ep.yaml) at 256 px, K = 144, random weights (initRandom(0)),
 * against the same network rebuilt in plain torch (bench/torch/tokenizer.py), measured in the
 * same run.
 *
 * - encode = image -> indices + codes + compact source (+ cls, dist_head), the async API
 *   `await tok.encode(images)` (what users call); the sync form is reported once as `encode_sync`.
 * - decode = codes + source -> image (unmerge with the true source, then the decoder).
 * - gflops = 2 * MAC / time, MACs per image from docs/model.md, "Cost model (MACs)" (46.2 G encoder, 65.2 G decoder).
 * - Batch 1: median of 3 after a warm-up; batch 8: a warm-up, then 1-3 repeats time-boxed.
 * - `reference_published_ms`: the reference code's published numbers for batch 1 on this
 *   machine (not measured here).
 * - `profile_encode` / `profile_decode`: the top 8 ops by time of one batch-1 run (runAsync with
 *   an observer; each op's time is the wall time since the previous op finished, so it includes
 *   the job hop and the program's own JS work between ops).
 * - The native block cache is emptied before each batch (and before the sync/profile runs, which
 *   come last), so each is measured as a process running only that batch size would see it.
 * - torch: `torch_ms` is the same network in torch 1.13 (Debian's python3-torch, fp32, same thread
 *   count, same batch, same run), validated against the reference fixtures.
 * - The machine is shared: every record carries `load1` (the 1-minute load average right after the
 *   measurement); numbers taken at a high load are not comparable across runs.
 *
 * Knobs (environment): TOKENIZER_BENCH_BATCH="1,8" (batches), TOKENIZER_BENCH_TORCH_BATCH
 * (torch batches, default the same), TOKENIZER_BENCH_TORCH=off (no torch). `--no-profile` skips
 * the per-op breakdown.
 */
import { existsSync } from 'node:fs';
import { loadavg } from 'node:os';
import sharp from 'sharp';
import { runAsync, type OpRequest } from '../lib/graph.js';
import { loadImages } from '../lib/io/image.js';
import { addon } from '../lib/native.js';
import type { Tensor } from '../lib/tensor.js';
import { MergeVQTokenizer, type EncodeResult } from '../lib/tokenizer/tokenizer.js';
import { median, type BenchContext } from './common.js';

/** Resolved from the repository root (this file runs from bench-build/bench/). */
const CONFIG = new URL(
  '../../test/fixtures/configs/gpu_s1/imagenet_mergevq_256_GR_d64_8gpu_200ep.yaml',
  import.meta.url,
).pathname;
const SHAPE = 'G+R d64 256px K=144';
const MAC = { encode: 46.2e9, decode: 65.2e9 };
/** The reference code's published batch-1 numbers on this machine (ms); not measured here. */
const REFERENCE_PUBLISHED_MS = { encode: 1009, decode: 1370 };
const RES = 256;

interface TorchOut {
  encode: Record<string, number>;
  decode: Record<string, number>;
  reps?: Record<string, number[]>;
  load1?: Record<string, number>;
  schedule?: number[];
}

function listEnv(name: string, dflt: number[]): number[] {
  const v = process.env[name];
  if (!v) return dflt;
  return v
    .split(',')
    .map((s) => Number(s.trim()))
    .filter((n) => Number.isInteger(n) && n > 0);
}

/** A smooth synthetic RGB photo-like image (gradients, a disc, a soft bar), varied by `seed`. */
function syntheticRgb(size: number, seed: number): Uint8Array {
  const px = new Uint8Array(size * size * 3);
  const cx = 0.38 + 0.05 * seed,
    cy = 0.55 - 0.03 * seed;
  for (let y = 0; y < size; ++y)
    for (let x = 0; x < size; ++x) {
      const u = x / (size - 1),
        v = y / (size - 1);
      let r = 0.55 + 0.35 * Math.sin(2 * Math.PI * (u + 0.13 * seed));
      let g = 0.2 + 0.6 * v;
      let b = 0.5 + 0.3 * Math.cos(2 * Math.PI * u * v + seed);
      const d2 = (u - cx) ** 2 + (v - cy) ** 2;
      const disc = 1 / (1 + Math.exp((Math.sqrt(d2) - 0.22) * 60)); // soft-edged disc
      r = r * (1 - disc) + 0.9 * disc;
      g = g * (1 - disc) + 0.35 * disc;
      b = b * (1 - disc) + 0.15 * disc;
      const bar = 1 / (1 + Math.exp((Math.abs(u + 0.4 * v - 0.95) - 0.05) * 80)); // a diagonal bar
      r = r * (1 - bar) + 0.1 * bar;
      g = g * (1 - bar) + 0.45 * bar;
      b = b * (1 - bar) + 0.8 * bar;
      const o = (y * size + x) * 3;
      px[o] = Math.round(255 * Math.min(1, Math.max(0, r)));
      px[o + 1] = Math.round(255 * Math.min(1, Math.max(0, g)));
      px[o + 2] = Math.round(255 * Math.min(1, Math.max(0, b)));
    }
  return px;
}

/** Real photos when python3-skimage's data is installed, else synthetic PNGs; loaded with loadImages. */
async function benchImages(batch: number): Promise<{ images: Tensor; source: string }> {
  const dir = '/usr/lib/python3/dist-packages/skimage/data';
  const photos = ['astronaut.png', 'chelsea.png', 'coffee.png', 'rocket.jpg']
    .map((f) => `${dir}/${f}`)
    .filter((p) => existsSync(p));
  if (photos.length > 0) {
    const inputs = Array.from({ length: batch }, (_, i) => photos[i % photos.length]!);
    return {
      images: await loadImages(inputs, RES),
      source: `skimage photos (${photos.map((p) => p.split('/').pop()).join(', ')})`,
    };
  }
  const pngs: Buffer[] = [];
  for (let i = 0; i < Math.min(batch, 4); ++i)
    pngs.push(
      await sharp(Buffer.from(syntheticRgb(RES, i)), { raw: { width: RES, height: RES, channels: 3 } })
        .png()
        .toBuffer(),
    );
  const inputs = Array.from({ length: batch }, (_, i) => pngs[i % pngs.length]!);
  return {
    images: await loadImages(inputs, RES),
    source: 'synthetic (no skimage photos installed): smooth gradients, a disc and a bar, 4 variants',
  };
}

/** Per-op name including the conv kind, so the breakdown says which convs cost what. */
function opKey(req: OpRequest): string {
  if (req.op === 'conv2d') {
    const w = req.inputs[1]!;
    const [, , kh, kw] = w.shape as [number, number, number, number];
    const groups = Number(req.attrs?.groups ?? 1);
    const stride = Number(req.attrs?.stride ?? 1);
    return `conv2d ${kh}x${kw}${stride > 1 ? `/s${stride}` : ''}${groups > 1 ? ' depthwise' : ''}`;
  }
  return req.op;
}

/** Multiply-accumulate count of the ops the MAC budget counts (convs, linears, attention). */
function opMacs(req: OpRequest, out: Tensor[]): number {
  if (req.op === 'conv2d') {
    const w = req.inputs[1]!;
    const [, cinG, kh, kw] = w.shape as [number, number, number, number];
    return out[0]!.numel * cinG * kh * kw;
  }
  if (req.op === 'linear') {
    const w = req.inputs[1]!;
    return out[0]!.numel * w.shape[1]!;
  }
  if (req.op === 'attention') {
    const q = req.inputs[0]!,
      k = req.inputs[1]!;
    const hd = q.shape[q.ndim - 1]!;
    const M = k.shape[k.ndim - 2]!;
    return 2 * (q.numel / hd) * M * hd;
  }
  return 0;
}

interface OpStat {
  ms: number;
  calls: number;
  macs: number;
}

/** Runs the program once (async, as users do) with per-op timing and reports the top 8 ops. */
async function profile(
  ctx: BenchContext,
  name: 'encode' | 'decode',
  program: () => Generator<OpRequest, unknown, Tensor[]>,
): Promise<void> {
  const stats = new Map<string, OpStat>();
  const t0 = performance.now();
  let last = t0;
  await runAsync(program(), (req, out) => {
    const now = performance.now();
    const k = opKey(req);
    const s = stats.get(k) ?? { ms: 0, calls: 0, macs: 0 };
    s.ms += now - last;
    s.calls += 1;
    s.macs += opMacs(req, out);
    stats.set(k, s);
    last = now;
  });
  const total = performance.now() - t0;
  const sorted = [...stats.entries()].sort((a, b) => b[1].ms - a[1].ms);
  const top = sorted.slice(0, 8).map(([op, s]) => ({
    op,
    ms: Math.round(s.ms * 10) / 10,
    share: Math.round((1000 * s.ms) / total) / 1000,
    calls: s.calls,
    ...(s.macs > 0
      ? {
          gflops: Math.round((2 * s.macs) / (s.ms * 1e5)) / 10,
          peak_fraction: Math.round(((2 * s.macs) / (s.ms * 1e6) / ctx.peakGflops) * 1000) / 1000,
        }
      : {}),
  }));
  const rest = sorted.slice(8).reduce((a, [, s]) => a + s.ms, 0);
  const record = {
    name: `profile_${name}`,
    shape: SHAPE,
    batch: 1,
    ms: total,
    gflops: null,
    peak_fraction: null,
    torch_ms: null,
    top_ops: top,
    other_ms: Math.round(rest * 10) / 10,
    ops_total: sorted.reduce((a, [, s]) => a + s.calls, 0),
    mode: 'async (runAsync), per-op wall time between op completions',
    load1: loadavg()[0]!,
  };
  ctx.report(record);
  if (ctx.json) return;
  for (const t of top) {
    const rate =
      t.gflops != null ? `  ${t.gflops.toFixed(1)} GFLOP/s (${(100 * t.peak_fraction!).toFixed(1)}% peak)` : '';
    process.stdout.write(
      `    ${t.op.padEnd(24)} ${t.ms.toFixed(1).padStart(9)} ms  ${(100 * t.share).toFixed(1).padStart(5)}%  x${t.calls}${rate}\n`,
    );
  }
}

/** Median ms after `warmup` runs; stops after `budgetMs` once `minReps` repeats are in (time box). */
async function timeBoxed(
  fn: () => Promise<void>,
  o: { warmup: number; reps: number; minReps: number; budgetMs: number },
): Promise<{ ms: number; reps: number }> {
  for (let i = 0; i < o.warmup; ++i) await fn();
  const ts: number[] = [];
  const start = performance.now();
  for (let i = 0; i < o.reps; ++i) {
    const t0 = performance.now();
    await fn();
    ts.push(performance.now() - t0);
    if (ts.length >= o.minReps && performance.now() - start > o.budgetMs) break;
  }
  return { ms: median(ts), reps: ts.length };
}

function runTorch(ctx: BenchContext, batches: number[]): TorchOut | null {
  if (batches.length === 0) return null;
  try {
    return ctx.torch('tokenizer', { batch: batches, reps: 3, budget_s: 20 }) as TorchOut | null;
  } catch (err) {
    process.stderr.write(`torch tokenizer failed: ${(err as Error).message}\n`);
    return null;
  }
}

export async function run(ctx: BenchContext): Promise<void> {
  const batches = listEnv('TOKENIZER_BENCH_BATCH', [1, 8]);
  const torchBatches =
    process.env.TOKENIZER_BENCH_TORCH === 'off' ? [] : listEnv('TOKENIZER_BENCH_TORCH_BATCH', batches);
  const doProfile = !process.argv.includes('--no-profile');

  const tok = MergeVQTokenizer.fromConfig(CONFIG);
  tok.store.initRandom(0);
  const schedule = tok.mergeSchedule(144);

  // Per batch: ours, then torch right after (never concurrently: they would share the cores), so
  // that both see about the same load on this shared machine.
  const ours: Record<
    string,
    { encode: number; decode: number; reps: [number, number]; warmup: number; image: string; load1: number }
  > = {};
  const torchRuns: Record<string, TorchOut | null> = {};
  let last: { images: Tensor; enc: EncodeResult } | null = null;
  for (const B of batches) {
    // Start every batch from an empty block cache: blocks cached at another batch size fill the
    // cache (2 GB) and leave none for this size's 134 MB activations, which then come fresh from
    // the kernel (one page fault per 4 KB) at every op.
    addon.releaseCpuCache();
    const { images, source: imageSource } = await benchImages(B);
    let enc: EncodeResult | null = null;
    // batch 1: median of 3 after a warm-up; larger batches: a warm-up, then 1-3 repeats within 20 s
    const opts =
      B > 1 ? { warmup: 1, reps: 3, minReps: 1, budgetMs: 20_000 } : { warmup: 1, reps: 3, minReps: 3, budgetMs: 0 };
    const encT = await timeBoxed(async () => {
      enc = await tok.encode(images);
    }, opts);
    const e = enc! as EncodeResult;
    if (
      e.z.shape.join(',') !== `${B},18,12,12` ||
      e.indices.shape.join(',') !== `${B},144` ||
      e.source.shape.join(',') !== `${B},256`
    )
      throw new Error(`encode shapes: z [${e.z.shape}] indices [${e.indices.shape}] source [${e.source.shape}]`);
    let out: Tensor | null = null;
    const decT = await timeBoxed(async () => {
      out = (await tok.decode({ codes: e.codes, source: e.source })).images;
    }, opts);
    if ((out! as Tensor).shape.join(',') !== `${B},3,${RES},${RES}`)
      throw new Error(`decode shape [${(out! as Tensor).shape}]`);
    ours[String(B)] = {
      encode: encT.ms,
      decode: decT.ms,
      reps: [encT.reps, decT.reps],
      warmup: opts.warmup,
      image: imageSource,
      load1: loadavg()[0]!,
    };
    if (B === 1) last = { images, enc: e };
    const t = torchBatches.includes(B) ? runTorch(ctx, [B]) : null;
    if (t?.schedule && t.schedule.join(',') !== schedule.join(','))
      process.stderr.write(`warning: torch merge schedule [${t.schedule}] differs from ours [${schedule}]\n`);
    torchRuns[String(B)] = t;
  }

  for (const B of batches) {
    const o = ours[String(B)]!;
    const torch = torchRuns[String(B)] ?? null;
    for (const name of ['encode', 'decode'] as const) {
      const ms = o[name];
      const j = name === 'encode' ? 0 : 1;
      const tms = torch?.[name]?.[String(B)] ?? null;
      ctx.report({
        name,
        shape: SHAPE,
        batch: B,
        ms,
        ...ctx.rate(2 * MAC[name] * B, ms),
        torch_ms: tms,
        ratio_vs_torch: tms != null ? tms / ms : null,
        reps: o.reps[j],
        warmup: o.warmup,
        torch_reps: torch?.reps?.[String(B)]?.[j] ?? null,
        reference_published_ms: B === 1 ? REFERENCE_PUBLISHED_MS[name] : null,
        reference_published_note:
          B === 1
            ? "the reference code's published batch-1 number for this machine; not measured in this run"
            : undefined,
        api: 'async (await tok.encode / tok.decode)',
        image: o.image,
        schedule,
        mac_per_image: MAC[name],
        peak_gflops: ctx.peakGflops,
        threads: ctx.threads,
        load1: o.load1,
        torch_load1: torch?.load1?.[String(B)] ?? null,
      });
      if (!ctx.json) {
        const tl = torch?.load1?.[String(B)];
        const ref = B === 1 ? `; reference published (not measured here): ${REFERENCE_PUBLISHED_MS[name]} ms` : '';
        process.stdout.write(
          `    batch ${B}, reps ${o.reps[j]} (torch ${torch?.reps?.[String(B)]?.[j] ?? '-'}), load1 ${o.load1.toFixed(2)} (torch ${tl != null ? tl.toFixed(2) : '-'})${ref}\n`,
        );
      }
    }
  }

  // After the timed runs (a sync run keeps every intermediate alive until it returns, which
  // fills the block cache): the sync API once, and the per-op breakdown at batch 1.
  if (last) {
    addon.releaseCpuCache();
    const { images, enc } = last;
    const ms = ctx.time(
      () => {
        tok.encodeSync(images);
      },
      { reps: 1, warmup: 0 },
    );
    ctx.report({
      name: 'encode_sync',
      shape: SHAPE,
      batch: 1,
      ms,
      ...ctx.rate(2 * MAC.encode, ms),
      torch_ms: torchRuns['1']?.encode?.['1'] ?? null,
      api: 'sync (tok.encodeSync), one run',
      load1: loadavg()[0]!,
    });
    if (doProfile) {
      addon.releaseCpuCache();
      await profile(ctx, 'encode', () => tok.encodeProgram(images));
      await profile(ctx, 'decode', () => tok.decodeProgram({ codes: enc.codes, source: enc.source }));
    }
  }
}
