/**
 * Zip access for torch.save archives, hardened against hostile files.
 *
 * yauzl parses the archive, but every byte it reads goes through `GuardedReader`: reads are
 * checked against the real file size before they reach `fs` (a corrupt zip64 record can otherwise
 * ask for positions past 2^53, which `fs.read` throws on inside a callback, ending the process),
 * and every continuation yauzl runs from a read callback is wrapped, so that an exception in it
 * rejects the pending promise instead of escaping to the event loop. Entry sizes are validated
 * against the caller's limits (and a compression-ratio cap) before any buffer is allocated.
 */
import * as fs from 'node:fs';
import { PassThrough, Readable } from 'node:stream';
import yauzl from 'yauzl';
import { MergeVQError } from '../errors.js';

/** Reads of one file descriptor for yauzl, validated and exception-safe. */
class GuardedReader extends yauzl.RandomAccessReader {
  private readonly pending = new Set<(e: Error) => void>();
  private failure: Error | undefined;

  constructor(
    readonly fd: number,
    readonly size: number,
  ) {
    super();
    // An 'error' event nobody listens to would end the process.
    this.on('error', (e: Error) => this.fail(e));
  }

  /** Runs `fn` (a yauzl continuation); an exception in it fails every pending operation. */
  safely(fn: () => void): void {
    try {
      fn();
    } catch (e) {
      this.fail(e instanceof Error ? e : new Error(String(e)));
    }
  }

  fail(e: Error): void {
    this.failure ??= e;
    for (const reject of [...this.pending]) reject(e);
  }

  /** A promise that also rejects when a guarded yauzl continuation throws. */
  guard<T>(executor: (resolve: (v: T) => void, reject: (e: Error) => void) => void): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      if (this.failure) return reject(this.failure);
      let done = false;
      const rej = (e: Error) => {
        if (done) return;
        done = true;
        this.pending.delete(rej);
        reject(e);
      };
      this.pending.add(rej);
      const res = (v: T) => {
        if (done) return;
        done = true;
        this.pending.delete(rej);
        resolve(v);
      };
      try {
        executor(res, rej);
      } catch (e) {
        rej(e instanceof Error ? e : new Error(String(e)));
      }
    });
  }

  private outside(start: number, end: number): Error | undefined {
    if (Number.isSafeInteger(start) && Number.isSafeInteger(end) && start >= 0 && start <= end && end <= this.size)
      return undefined;
    return new Error(`the archive asks for bytes [${start}, ${end}) of a file of ${this.size} bytes`);
  }

  override _readStreamForRange(start: number, end: number): Readable {
    const err = this.outside(start, end);
    if (err) {
      const s = new PassThrough();
      setImmediate(() => s.destroy(err));
      return s;
    }
    // Our own stream (an fs.ReadStream on a shared fd closes it when destroyed).
    const fd = this.fd;
    let pos = start;
    return new Readable({
      read(this: Readable) {
        const n = Math.min(end - pos, 1 << 20);
        if (n <= 0) {
          this.push(null);
          return;
        }
        const buf = Buffer.allocUnsafe(n);
        fs.read(fd, buf, 0, n, pos, (err, got) => {
          if (err) return void this.destroy(err);
          if (got === 0) return void this.destroy(new Error(`unexpected end of file at byte ${pos}`));
          pos += got;
          this.push(got < n ? buf.subarray(0, got) : buf);
        });
      },
    });
  }

  override read(
    buffer: Buffer,
    offset: number,
    length: number,
    position: number,
    callback: (err: Error | null, bytesRead?: number) => void,
  ): void {
    const err =
      this.outside(position, position + length) ??
      (offset < 0 || offset + length > buffer.length ? new Error('read past the end of the buffer') : undefined);
    if (err) {
      setImmediate(() => this.safely(() => callback(err)));
      return;
    }
    fs.read(this.fd, buffer, offset, length, position, (e, n) => this.safely(() => callback(e, n)));
  }

  override close(callback: (err: Error | null) => void): void {
    setImmediate(() => callback(null));
  }
}

/** Limits of `openZip`. */
export interface ZipLimits {
  /** Largest accepted ratio of an entry's uncompressed to compressed size (entries over 1 MiB). */
  maxCompressionRatio: number;
}

/** An open archive: its entries by name, and reads of their bytes. */
export interface ZipArchive {
  readonly entries: ReadonlyMap<string, yauzl.Entry>;
  readonly fileSize: number;
  /** Reads a whole entry into a new buffer; `expectBytes` must match its size, `maxBytes` bound it. */
  read(name: string, opts?: { expectBytes?: number; maxBytes?: number }): Promise<Uint8Array>;
  close(): void;
}

/** Most entries an archive may have (torch writes one per storage plus a few). */
const MAX_ENTRIES = 1 << 20;

function bad(label: string, problem: string): never {
  throw new MergeVQError(`${label}: invalid checkpoint: ${problem}`, 'ERR_BAD_FILE');
}

/** Opens the zip archive on `fd` (size `size`); closes nothing on failure (the caller owns `fd`). */
export async function openZip(fd: number, size: number, label: string, limits: ZipLimits): Promise<ZipArchive> {
  const reader = new GuardedReader(fd, size);
  const zip = await reader
    .guard<yauzl.ZipFile>((resolve, reject) => {
      yauzl.fromRandomAccessReader(
        reader,
        size,
        { lazyEntries: true, autoClose: false, validateEntrySizes: true, strictFileNames: false, decodeStrings: true },
        (err, z) => (err ? reject(err) : resolve(z)),
      );
    })
    .catch((err: Error) => bad(label, `not a zip archive written by torch.save (${err.message})`));
  zip.on('error', (e: Error) => reader.fail(e));
  if (zip.entryCount > MAX_ENTRIES) {
    zip.close();
    bad(label, `the archive declares ${zip.entryCount} entries (limit ${MAX_ENTRIES})`);
  }
  const entries = new Map<string, yauzl.Entry>();
  await reader
    .guard<void>((resolve, reject) => {
      zip.on('entry', (e: yauzl.Entry) =>
        reader.safely(() => {
          if (entries.has(e.fileName))
            return reject(new Error(`duplicate entry ${JSON.stringify(e.fileName.slice(0, 100))}`));
          entries.set(e.fileName, e);
          zip.readEntry();
        }),
      );
      zip.on('end', () => resolve());
      zip.on('error', reject);
      zip.readEntry();
    })
    .catch((err: Error) => bad(label, `corrupt zip archive (${err.message})`));

  const read = async (name: string, opts: { expectBytes?: number; maxBytes?: number } = {}): Promise<Uint8Array> => {
    const e = entries.get(name);
    if (!e) bad(label, `missing zip entry ${name}`);
    const n = e.uncompressedSize;
    if (opts.expectBytes !== undefined && n !== opts.expectBytes)
      bad(label, `zip entry ${name} holds ${n} bytes, the pickle says ${opts.expectBytes}`);
    if (opts.maxBytes !== undefined && n > opts.maxBytes)
      bad(label, `zip entry ${name} is too large (${n} bytes; limit ${opts.maxBytes})`);
    if (!Number.isSafeInteger(n) || n < 0) bad(label, `zip entry ${name} declares ${n} bytes`);
    if (
      e.compressionMethod === 0
        ? e.compressedSize !== n
        : n > 1 << 20 && n > limits.maxCompressionRatio * e.compressedSize
    ) {
      bad(
        label,
        `zip entry ${name} expands ${e.compressedSize} bytes to ${n} (limit: ratio ${limits.maxCompressionRatio})`,
      );
    }
    if (e.compressedSize > size)
      bad(label, `zip entry ${name} claims ${e.compressedSize} compressed bytes in a file of ${size}`);
    const out = new Uint8Array(n);
    if (n === 0) return out;
    await reader
      .guard<void>((resolve, reject) => {
        zip.openReadStream(e, (err, stream) => {
          if (err) return reject(err);
          let pos = 0;
          stream.on('error', reject);
          stream.on('data', (chunk: Buffer) => {
            if (pos + chunk.byteLength > n) {
              stream.destroy(new Error('entry longer than its declared size'));
              return;
            }
            out.set(chunk, pos);
            pos += chunk.byteLength;
          });
          stream.on('end', () =>
            pos === n ? resolve() : reject(new Error(`entry shorter than its declared size (${pos} of ${n})`)),
          );
        });
      })
      .catch((err: Error) => bad(label, `cannot read zip entry ${name} (${err.message})`));
    return out;
  };
  return { entries, fileSize: size, read, close: () => zip.close() };
}
