/**
 * Frame deltas (issue 15): deltas inside the changed files of a layer, with no per-pair
 * delta file and no squashfs parsing.
 *
 * A squashfs layer's compressed blocks (data, fragment and metadata blocks) are zstd
 * frames. When a file changes, every block of it is compressed anew and shares no byte
 * with the old one, so content-defined chunks of the layer file (chunks.ts) must fetch
 * the whole new block, though it is mostly the old file's bytes. Here the unit is a
 * block's *decoded* bytes: the build lists each frame of the layer that the system
 * libzstd gives back byte for byte at the layer's level (`<layer>.frames`, signed through
 * the manifest), cuts each frame's decoded bytes into content-defined chunks, and
 * publishes every chunk compressed against the decoded bytes before it (a raw-content
 * zstd dictionary of up to PREFIX bytes) in `<layer>.delta`. A node that lacks a frame
 * finds most of its decoded chunks in the decoded frames of its own layers, fetches the
 * others (Range requests into `.delta`), and compresses the block again: the layer's
 * chunk index (its sha256s) and then the layer's sha256 judge the bytes it made.
 *
 * `<layer>.frames`, big-endian:
 *   "SBFRAMES" u8 version(1) u8 delta level u8[2] 0
 *   u32 level  u8[16] libzstd version (ASCII, NUL-padded)
 *   u32 min u32 avg u32 max (decoded chunk sizes)  u32 prefix bytes
 *   u64 layer bytes  u64 .delta bytes  u32 frame count  u32 0  u8[32] .delta sha256
 *   count × ( u64 offset, u32 compressed bytes, u32 decoded bytes,
 *             u64 entries offset (in .delta), u32 entry count, u64 data offset (in .delta), u32 data bytes )
 * `<layer>.delta`: every frame's entries (in frame order), then every frame's data:
 *   entry: 16 bytes (the first half of the chunk's sha256), u16 decoded bytes,
 *          u16 stored bytes, u8 mode (0 stored raw, 1 zstd against the prefix)
 *   data: the stored bytes of each entry, in order.
 * The manifest names the frames file: `frames <layer sha256> sha256:<hex> <bytes>`.
 */
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { StackbootError, writeDurable, type Zstd } from '../sys/index.js';
import { Chunker } from './chunker.js';
import { checkLayerFile, chunkDigest, layerFileRefs, type ChunkIndexRef, type ChunkSizes } from './chunks.js';
import type { Manifest } from './manifest.js';

export const FRAMES_MAGIC = 'SBFRAMES';
const HEAD = 104;
const FRAME = 40;
export const ENTRY = 21;
/** Decoded chunk sizes and the dictionary's reach, chosen by measurement (docs/design.md, "Chunk deltas"). */
export const DECODED_SIZES: ChunkSizes = { min: 1024, avg: 4096, max: 16384 };
export const PREFIX_BYTES = 131072;
/** The level the build compresses the delta chunks with (the node only decompresses them). */
export const DELTA_LEVEL = 9;

export interface Frame {
  /** where the frame lies in the layer file */
  offset: number;
  length: number;
  /** its decoded bytes */
  decoded: number;
  /** its entries and data in `.delta` */
  entriesOffset: number;
  entries: number;
  dataOffset: number;
  dataBytes: number;
}

export interface FramesIndex {
  /** the layer's zstd level (its blocks are compressed again at it) */
  level: number;
  /** the level the delta chunks were compressed at (the node only decompresses them) */
  deltaLevel: number;
  zstdVersion: string;
  sizes: ChunkSizes;
  prefix: number;
  layerSize: number;
  deltaSize: number;
  /** the delta file's sha256 (hex): a registry addresses it so */
  deltaDigest: string;
  frames: Frame[];
}

/** A decoded chunk of a frame, as `.delta` lists it. */
export interface DeltaEntry {
  /** the first 16 bytes of its sha256, hex */
  digest: string;
  size: number;
  stored: number;
  /** 0: stored raw; 1: zstd against the decoded bytes before it */
  mode: number;
}

function bad(msg: string): never {
  throw new StackbootError('VERIFY', `frames index: ${msg}`);
}

export function serializeFramesIndex(ix: FramesIndex): Buffer {
  const b = Buffer.alloc(HEAD + FRAME * ix.frames.length);
  b.write(FRAMES_MAGIC, 0, 'latin1');
  b.writeUInt8(1, 8);
  b.writeUInt8(ix.deltaLevel, 9);
  b.writeUInt32BE(ix.level, 12);
  b.write(ix.zstdVersion.slice(0, 16), 16, 'latin1');
  b.writeUInt32BE(ix.sizes.min, 32);
  b.writeUInt32BE(ix.sizes.avg, 36);
  b.writeUInt32BE(ix.sizes.max, 40);
  b.writeUInt32BE(ix.prefix, 44);
  b.writeBigUInt64BE(BigInt(ix.layerSize), 48);
  b.writeBigUInt64BE(BigInt(ix.deltaSize), 56);
  b.writeUInt32BE(ix.frames.length, 64);
  b.write(ix.deltaDigest, 72, 'hex');
  let at = HEAD;
  for (const f of ix.frames) {
    b.writeBigUInt64BE(BigInt(f.offset), at);
    b.writeUInt32BE(f.length, at + 8);
    b.writeUInt32BE(f.decoded, at + 12);
    b.writeBigUInt64BE(BigInt(f.entriesOffset), at + 16);
    b.writeUInt32BE(f.entries, at + 24);
    b.writeBigUInt64BE(BigInt(f.dataOffset), at + 28);
    b.writeUInt32BE(f.dataBytes, at + 36);
    at += FRAME;
  }
  return b;
}

export function parseFramesIndex(b: Buffer): FramesIndex {
  if (b.length < HEAD || b.toString('latin1', 0, 8) !== FRAMES_MAGIC) bad('bad magic');
  if (b.readUInt8(8) !== 1) bad(`version ${b.readUInt8(8)} is not known`);
  const sizes = { min: b.readUInt32BE(32), avg: b.readUInt32BE(36), max: b.readUInt32BE(40) };
  if (!(sizes.min > 0 && sizes.min <= sizes.avg && sizes.avg <= sizes.max && sizes.max <= 65535)) bad(`bad sizes ${sizes.min}/${sizes.avg}/${sizes.max}`);
  const count = b.readUInt32BE(64);
  if (b.length !== HEAD + FRAME * count) bad(`${b.length} bytes for ${count} frames`);
  const ix: FramesIndex = {
    level: b.readUInt32BE(12),
    deltaLevel: b.readUInt8(9),
    zstdVersion: b.toString('latin1', 16, 32).replace(/\0+$/, ''),
    sizes,
    prefix: b.readUInt32BE(44),
    layerSize: Number(b.readBigUInt64BE(48)),
    deltaSize: Number(b.readBigUInt64BE(56)),
    deltaDigest: b.toString('hex', 72, 104),
    frames: [],
  };
  let end = 0;
  for (let i = 0, at = HEAD; i < count; i++, at += FRAME) {
    const f: Frame = {
      offset: Number(b.readBigUInt64BE(at)),
      length: b.readUInt32BE(at + 8),
      decoded: b.readUInt32BE(at + 12),
      entriesOffset: Number(b.readBigUInt64BE(at + 16)),
      entries: b.readUInt32BE(at + 24),
      dataOffset: Number(b.readBigUInt64BE(at + 28)),
      dataBytes: b.readUInt32BE(at + 36),
    };
    if (f.offset < end || f.length === 0 || f.offset + f.length > ix.layerSize) bad(`frame ${i} at ${f.offset} (${f.length} bytes) is out of order or outside the layer`);
    if (f.entriesOffset + f.entries * ENTRY > ix.deltaSize || f.dataOffset + f.dataBytes > ix.deltaSize) bad(`frame ${i} points outside the delta file`);
    end = f.offset + f.length;
    ix.frames.push(f);
  }
  return ix;
}

export function parseDeltaEntries(b: Buffer, count: number): DeltaEntry[] {
  if (b.length !== count * ENTRY) bad(`${b.length} bytes of entries for ${count}`);
  const out: DeltaEntry[] = [];
  for (let at = 0; at < b.length; at += ENTRY) {
    const e = { digest: b.toString('hex', at, at + 16), size: b.readUInt16BE(at + 16), stored: b.readUInt16BE(at + 18), mode: b.readUInt8(at + 20) };
    if (e.size === 0 || e.stored === 0 || e.mode > 1 || (e.mode === 0 && e.stored !== e.size)) bad(`bad entry ${out.length}`);
    out.push(e);
  }
  return out;
}

function serializeEntry(e: DeltaEntry, b: Buffer, at: number): void {
  b.write(e.digest, at, 'hex');
  b.writeUInt16BE(e.size, at + 16);
  b.writeUInt16BE(e.stored, at + 18);
  b.writeUInt8(e.mode, at + 20);
}

/** How `.delta` names a decoded chunk: as the chunk index names a chunk (the first 16 bytes of its sha256). */
export const shortDigest = chunkDigest;

// ---- finding the frames of a layer ------------------------------------------------

const MAGIC = 0xfd2fb528;
/** The largest decoded frame taken (a squashfs block is at most 1 MiB). */
const MAX_DECODED = 1 << 20;

/** The length of a structurally valid zstd frame at `p` of `b` (with a content size), or -1 (or -2: `b` ends first). */
export function frameLength(b: Buffer, p: number): number {
  if (p + 6 > b.length) return -2;
  if (b.readUInt32LE(p) !== MAGIC) return -1;
  let q = p + 4;
  const fhd = b[q++];
  const fcsFlag = fhd >> 6;
  const single = (fhd >> 5) & 1;
  if ((fhd >> 3) & 1) return -1; // reserved bit
  if (fcsFlag === 0 && !single) return -1; // no content size: not a squashfs block as gensquashfs writes them
  if (!single) q++;
  q += [0, 1, 2, 4][fhd & 3];
  const fcsBytes = [1, 2, 4, 8][fcsFlag];
  if (q + fcsBytes > b.length) return -2;
  const size = fcsBytes === 1 ? b[q] : fcsBytes === 2 ? b.readUInt16LE(q) + 256 : fcsBytes === 4 ? b.readUInt32LE(q) : Number(b.readBigUInt64LE(q));
  if (size === 0 || size > MAX_DECODED) return -1;
  q += fcsBytes;
  for (;;) {
    if (q + 3 > b.length) return -2;
    const bh = b[q] | (b[q + 1] << 8) | (b[q + 2] << 16);
    q += 3;
    const type = (bh >> 1) & 3;
    const bsize = bh >>> 3;
    if (type === 3 || bsize > 131072) return -1;
    q += type === 1 ? 1 : bsize;
    if (q > b.length) return -2;
    if (bh & 1) break;
  }
  if ((fhd >> 2) & 1) q += 4;
  return q > b.length ? -2 : q - p;
}

/** Where to look for frames: squashfs's blocks lie between its superblock and the bytes it uses. */
function scanRange(head: Buffer, size: number): [number, number] {
  if (head.length >= 96 && head.readUInt32LE(0) === 0x73717368) return [96, Math.min(size, Number(head.readBigUInt64LE(40)))];
  return [0, size];
}

/**
 * The zstd frames of a layer file, in order, with their decoded bytes: structurally
 * valid frames (with a content size) that decode, found in windows of 8 MiB and decoded
 * a window at a time.
 */
export async function* layerFrames(file: string, zstd: Zstd): AsyncGenerator<{ offset: number; frame: Buffer; decoded: Buffer }> {
  const fh = await fs.open(file, 'r');
  try {
    const size = (await fh.stat()).size;
    const head = Buffer.alloc(Math.min(96, size));
    await fh.read(head, 0, head.length, 0);
    const [from, to] = scanRange(head, size);
    const WIN = 8 << 20;
    const buf = Buffer.allocUnsafe(WIN);
    for (let base = from; base < to; ) {
      const { bytesRead } = await fh.read(buf, 0, Math.min(WIN, to - base), base);
      if (bytesRead === 0) break;
      const win = buf.subarray(0, bytesRead);
      const atEnd = base + bytesRead >= to;
      const cands: { offset: number; frame: Buffer }[] = [];
      let q = 0;
      while (q < win.length) {
        const i = win.indexOf(0x28, q);
        if (i < 0) {
          q = win.length;
          break;
        }
        const n = frameLength(win, i);
        if (n === -2 && !atEnd && i > 0) {
          q = i; // the frame goes on past the window: the next window starts with it
          break;
        }
        if (n < 0) {
          q = i + 1;
          continue;
        }
        cands.push({ offset: base + i, frame: Buffer.from(win.subarray(i, i + n)) });
        q = i + n;
      }
      for (const f of await decodeEach(zstd, cands)) if (f.decoded) yield { offset: f.offset, frame: f.frame, decoded: f.decoded };
      base += q;
    }
  } finally {
    await fh.close();
  }
}

/** Each candidate decoded; one that does not decode (bytes that only looked like a frame) gets none. */
async function decodeEach(zstd: Zstd, cands: { offset: number; frame: Buffer }[]): Promise<{ offset: number; frame: Buffer; decoded?: Buffer }[]> {
  if (cands.length === 0) return [];
  try {
    const d = await zstd.decompress(cands.map((c) => c.frame));
    return cands.map((c, i) => ({ ...c, decoded: d[i] }));
  } catch {
    if (cands.length === 1) return [cands[0]];
    const half = cands.length >> 1;
    return [...(await decodeEach(zstd, cands.slice(0, half))), ...(await decodeEach(zstd, cands.slice(half)))];
  }
}

/** A frame's decoded bytes cut into chunks (each frame on its own: a fresh chunker). */
export function decodedChunks(decoded: Buffer, sizes: ChunkSizes): { size: number; digest: string }[] {
  const c = new Chunker(sizes);
  const out = c.push(decoded);
  out.push(...c.end());
  return out;
}

// ---- the build side -----------------------------------------------------------------

/** What the manifest says of a layer's frames index (as of its chunk index). */
export type FramesRef = ChunkIndexRef;

export function framesIndexName(layerDigest: string): string {
  return `${layerDigest}.frames`;
}
export function deltaFileName(layerDigest: string): string {
  return `${layerDigest}.delta`;
}

/** The frames lines of a manifest (`frames <layer> sha256:<hex> <bytes>`), by layer digest. */
export function framesRefs(m: Manifest): Map<string, FramesRef> {
  return layerFileRefs(m, 'frames');
}

export function framesLine(ref: FramesRef): [string, string] {
  return ['frames', `${ref.layer} sha256:${ref.digest} ${ref.size}`];
}

/** A frames index checked against the manifest's line (size and sha256), then parsed. */
export function verifyFramesIndex(ref: FramesRef, layerSize: number, b: Buffer, source: string): FramesIndex {
  checkLayerFile(ref, b, source, 'frames index');
  const ix = parseFramesIndex(b);
  if (ix.layerSize !== layerSize) bad(`layer ${ref.layer.slice(0, 12)}: the index is of ${ix.layerSize} bytes, the layer has ${layerSize}`);
  return ix;
}

/** The decoded bytes of a stream of frames, kept as far back as the dictionary reaches. */
export class DecodedTail {
  private parts: Buffer[] = [];
  private size = 0;
  constructor(private readonly keep: number) {}
  push(b: Buffer): void {
    this.parts.push(b);
    this.size += b.length;
    while (this.parts.length > 1 && this.size - this.parts[0].length >= this.keep) this.size -= this.parts.shift()!.length;
  }
  /** the bytes kept, joined */
  bytes(): Buffer {
    return Buffer.concat(this.parts);
  }
  clear(): void {
    this.parts = [];
    this.size = 0;
  }
  /**
   * The decoded bytes the dictionary can reach before a frame, joined with the frame's
   * own (which start at `start`): the prefix of a chunk is the `keep` bytes before it.
   */
  context(decoded: Buffer): { buf: Buffer; start: number } {
    const buf = Buffer.concat([...this.parts, decoded]);
    return { buf, start: buf.length - decoded.length };
  }
}

/**
 * Writes a layer's frames index and delta file beside it (`<sha256>.frames`,
 * `<sha256>.delta`) and returns the manifest's reference to the index. Only the frames
 * the system libzstd gives back byte for byte at `level` are listed (a node rebuilds
 * them with the same library version, which the index names). With several libzstd
 * processes (`zstd` a list) the work is shared among them; the files are the same.
 */
export async function writeFrameDeltas(layerFile: string, layerDigest: string, zstd: Zstd | Zstd[], level: number, progress?: (done: number, total: number) => void): Promise<FramesRef> {
  const dir = path.dirname(layerFile);
  const size = (await fs.stat(layerFile)).size;
  const frames: Frame[] = [];
  const entries: Buffer[] = [];
  const dataFile = path.join(dir, `.${layerDigest}.delta-data.${process.pid}`);
  const data = await fs.open(dataFile, 'w');
  let dataAt = 0;
  let entryCount = 0;
  const tail = new DecodedTail(PREFIX_BYTES);
  const pool = Array.isArray(zstd) ? zstd : [zstd];
  try {
    const BATCH = 16 * pool.length;
    let batch: { offset: number; frame: Buffer; decoded: Buffer }[] = [];
    // the frames of a batch are checked and their chunks compressed on every libzstd
    // process at once (each chunk's dictionary is decoded bytes, known before any is
    // compressed); what they give is written in frame order, so the files do not depend
    // on how many there are
    const flush = async () => {
      if (batch.length === 0) return;
      const share = Math.ceil(batch.length / pool.length);
      const again = (await Promise.all(pool.map((z, w) => z.compress(batch.slice(w * share, (w + 1) * share).map((f) => f.decoded), level)))).flat();
      const work: { f: (typeof batch)[number]; chunks: { size: number; digest: string }[]; ctx: { buf: Buffer; start: number }; slices: [number, number][] }[] = [];
      for (let i = 0; i < batch.length; i++) {
        const f = batch[i];
        if (!again[i].equals(f.frame)) continue; // not reproducible with this libzstd: the node fetches it as chunks
        const chunks = decodedChunks(f.decoded, DECODED_SIZES);
        const ctx = tail.context(f.decoded);
        const slices: [number, number][] = [];
        let at = 0;
        for (const c of chunks) {
          slices.push([ctx.start + at, ctx.start + at + c.size]);
          at += c.size;
        }
        work.push({ f, chunks, ctx, slices });
        tail.push(f.decoded);
      }
      const packed = await Promise.all(work.map((x, k) => pool[k % pool.length].compressSlices(x.ctx.buf, x.slices, PREFIX_BYTES, DELTA_LEVEL)));
      for (let w = 0; w < work.length; w++) {
        const { f, chunks, ctx, slices } = work[w];
        const ents = Buffer.alloc(chunks.length * ENTRY);
        const start = dataAt;
        for (let k = 0; k < chunks.length; k++) {
          const raw = packed[w][k].length >= chunks[k].size;
          const stored = raw ? ctx.buf.subarray(slices[k][0], slices[k][1]) : packed[w][k];
          serializeEntry({ digest: chunks[k].digest, size: chunks[k].size, stored: stored.length, mode: raw ? 0 : 1 }, ents, k * ENTRY);
          await data.write(stored);
          dataAt += stored.length;
        }
        entries.push(ents);
        frames.push({ offset: f.offset, length: f.frame.length, decoded: f.decoded.length, entriesOffset: entryCount * ENTRY, entries: chunks.length, dataOffset: start, dataBytes: dataAt - start });
        entryCount += chunks.length;
        progress?.(f.offset + f.frame.length, size);
      }
      batch = [];
    };
    for await (const f of layerFrames(layerFile, pool[0])) {
      batch.push(f);
      if (batch.length >= BATCH) await flush();
    }
    await flush();
  } finally {
    await data.close();
  }
  try {
    const entriesBytes = entryCount * ENTRY;
    for (const f of frames) f.dataOffset += entriesBytes;
    const deltaFile = path.join(dir, deltaFileName(layerDigest));
    const tmp = `${deltaFile}.tmp-${process.pid}`;
    const out = await fs.open(tmp, 'w');
    const sha = createHash('sha256');
    try {
      for (const e of entries) {
        sha.update(e);
        await out.write(e);
      }
      const src = await fs.open(dataFile, 'r');
      try {
        const buf = Buffer.allocUnsafe(4 << 20);
        for (let pos = 0; ; ) {
          const { bytesRead } = await src.read(buf, 0, buf.length, pos);
          if (bytesRead === 0) break;
          sha.update(buf.subarray(0, bytesRead));
          await out.write(buf.subarray(0, bytesRead));
          pos += bytesRead;
        }
      } finally {
        await src.close();
      }
      await out.sync();
    } finally {
      await out.close();
    }
    await fs.rename(tmp, deltaFile);
    const index = serializeFramesIndex({ level, deltaLevel: DELTA_LEVEL, zstdVersion: pool[0].version, sizes: DECODED_SIZES, prefix: PREFIX_BYTES, layerSize: size, deltaSize: entriesBytes + dataAt, deltaDigest: sha.digest('hex'), frames });
    await writeDurable(path.join(dir, framesIndexName(layerDigest)), index);
    return { layer: layerDigest, digest: createHash('sha256').update(index).digest('hex'), size: index.length };
  } finally {
    await fs.rm(dataFile, { force: true });
  }
}
