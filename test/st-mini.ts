// Minimal safetensors reader for the parity tests (F32 / I64 only). To be replaced by lib/io.
import { readFileSync } from 'node:fs';

export interface StEntry {
  dtype: 'F32' | 'I64';
  shape: number[];
  data: Float32Array | BigInt64Array;
}
export interface StFile {
  tensors: Map<string, StEntry>;
  /** `__metadata__` values, JSON-decoded. */
  metadata: Record<string, unknown>;
}

export function readSafetensors(path: string): StFile {
  const buf = readFileSync(path);
  const hlen = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + hlen).toString('utf8')) as Record<string, any>;
  const base = 8 + hlen;
  const metadata: Record<string, unknown> = {};
  for (const [k, v] of Object.entries((header.__metadata__ ?? {}) as Record<string, string>)) metadata[k] = JSON.parse(v);
  const tensors = new Map<string, StEntry>();
  for (const [name, e] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const [b, end] = e.data_offsets as [number, number];
    const bytes = buf.subarray(base + b, base + end);
    const copy = new Uint8Array(bytes).buffer; // aligned copy
    if (e.dtype === 'F32') tensors.set(name, { dtype: 'F32', shape: e.shape, data: new Float32Array(copy) });
    else if (e.dtype === 'I64') tensors.set(name, { dtype: 'I64', shape: e.shape, data: new BigInt64Array(copy) });
    else throw new Error(`st-mini: unsupported dtype ${e.dtype} for ${name}`);
  }
  return { tensors, metadata };
}

/** Fixture directories: MERGEVQ_FIXTURES (colon-separated), default test/fixtures. */
export function fixtureDirs(): string[] {
  return (process.env.MERGEVQ_FIXTURES ?? 'test/fixtures').split(':').filter((d) => d.length > 0);
}
