// The map-of-arrays view of a fixture that the merge/LFQ parity tests use, on top of the real
// safetensors reader (lib/io/safetensors.ts) and the shared fixture-directory list.
import { readSafetensorsSync } from '../lib/io/safetensors.js';
export { fixtureDirs } from './fixtures.js';

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
  const f = readSafetensorsSync(path);
  try {
    const metadata: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(f.metadata)) metadata[k] = JSON.parse(v);
    const tensors = new Map<string, StEntry>();
    for (const name of f.names) {
      const info = f.info(name);
      if (info.dtype !== 'F32' && info.dtype !== 'I64')
        throw new Error(`${path}: unsupported dtype ${info.dtype} for ${name}`);
      tensors.set(name, {
        dtype: info.dtype,
        shape: [...info.shape],
        data: f.array(name) as Float32Array | BigInt64Array,
      });
    }
    return { tensors, metadata };
  } finally {
    f.close();
  }
}
