/**
 * Content-defined chunking of a layer file (FastCDC style: a gear hash, normalized
 * chunking with a harder mask before the average size and an easier one after it).
 * Equal runs of bytes in two layers cut at the same places, so a layer's chunks can be
 * found in another layer by their sha256. Squashfs-aware: besides the content cuts, a
 * layer is always cut where its superblock ends, where each metadata table begins
 * (they change with any file; the data blocks before them do not), and where its
 * dm-verity tree begins (the squashfs's bytes used, rounded up to 4096: a node computes
 * the tree's chunks from the data instead of fetching them).
 *
 * The cutting is a pure function of the bytes and the sizes (ChunkSizes): a node cuts
 * its old layers itself, with the sizes the new layer's index names. A chunk is named by
 * the first 16 bytes of its sha256 (chunks.ts).
 */
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { CHUNK_DIGEST_HEX, chunkIndexName, parseChunkIndex, serializeChunkIndex, type ChunkEntry, type ChunkIndex, type ChunkIndexRef, type ChunkSizes } from './chunks.js';
import type { LayerRef } from './manifest.js';
import { verityTreeBytes } from './verity-tree.js';
import type { BundleChunks } from './bundle.js';
import { writeDurable } from '../sys/index.js';

/** The gear table: 256 fixed pseudo-random words (sha256 of "stackboot-gear <i>"). */
const GEAR: Int32Array = (() => {
  const g = new Int32Array(256);
  for (let i = 0; i < 256; i++) g[i] = createHash('sha256').update(`stackboot-gear ${i}`).digest().readInt32BE(0);
  return g;
})();

/** `bits` one bits at the top of a 32-bit word (the gear hash's top bits see the last 32 bytes). */
function topMask(bits: number): number {
  return bits >= 32 ? 0xffffffff : ((0xffffffff << (32 - bits)) >>> 0);
}

/** Squashfs superblock facts: where the superblock ends and each table starts (sorted, unique). */
export function squashfsCuts(head: Buffer, fileSize: number): number[] {
  if (head.length < 96 || head.readUInt32LE(0) !== 0x73717368) return [];
  const cuts = new Set<number>([96]);
  // id, xattr id, inode, directory, fragment and export table starts (u64 LE; ~0 = none)
  for (const at of [48, 56, 64, 72, 80, 88]) {
    const v = head.readBigUInt64LE(at);
    if (v > 0n && v < BigInt(fileSize)) cuts.add(Number(v));
  }
  // bytes used (u64 at 40), padded to a verity block: where an appended hash tree starts
  const used = head.readBigUInt64LE(40);
  const tree = ((used + 4095n) / 4096n) * 4096n;
  if (used > 0n && tree < BigInt(fileSize)) cuts.add(Number(tree));
  return [...cuts].sort((a, b) => a - b);
}

/**
 * A streaming chunker: push() bytes in order, it returns the chunks they completed;
 * end() returns the last one. Each chunk is its size and sha256.
 */
export class Chunker {
  private readonly maskS: number;
  private readonly maskL: number;
  private hash = 0;
  private len = 0;
  private offset = 0;
  private sha = createHash('sha256');
  private cutIdx = 0;

  constructor(private readonly sizes: ChunkSizes, private readonly cuts: number[] = []) {
    const bits = Math.round(Math.log2(sizes.avg));
    this.maskS = topMask(bits + 2);
    this.maskL = topMask(bits - 2);
  }

  push(buf: Buffer): ChunkEntry[] {
    const out: ChunkEntry[] = [];
    const { min, avg, max } = this.sizes;
    const maskS = this.maskS | 0;
    const maskL = this.maskL | 0;
    let start = 0;
    let h = this.hash;
    let len = this.len;
    let i = 0;
    while (i < buf.length) {
      const forced = this.cutIdx < this.cuts.length ? this.cuts[this.cutIdx] - this.offset : Infinity;
      // bytes of buf up to the next forced cut, or to the max chunk size
      const end = i + Math.min(buf.length - i, forced - len, max - len);
      // the chunk's length when buf[x - 1] is its last byte is base + x
      const base = len - i;
      let cut = -1;
      // the first `min` bytes of a chunk are not looked at (FastCDC's skip)
      let j = Math.min(end, Math.max(i, min - base));
      // before the average size the harder mask, after it the easier one (normalized chunking)
      const mid = Math.min(end, avg - base);
      while (j < mid) {
        h = ((h << 1) + GEAR[buf[j++]]) | 0;
        if ((h & maskS) === 0) {
          cut = j;
          break;
        }
      }
      if (cut < 0) {
        while (j < end) {
          h = ((h << 1) + GEAR[buf[j++]]) | 0;
          if ((h & maskL) === 0) {
            cut = j;
            break;
          }
        }
      }
      len = base + j;
      if (cut < 0 && (len === max || len === forced)) cut = j;
      if (cut < 0) {
        i = j;
        continue;
      }
      this.sha.update(buf.subarray(start, cut));
      out.push({ size: len, digest: this.sha.digest('hex').slice(0, CHUNK_DIGEST_HEX) });
      this.offset += len;
      while (this.cutIdx < this.cuts.length && this.cuts[this.cutIdx] <= this.offset) this.cutIdx++;
      this.sha = createHash('sha256');
      h = 0;
      len = 0;
      start = cut;
      i = cut;
    }
    if (start < buf.length) this.sha.update(buf.subarray(start));
    this.hash = h;
    this.len = len;
    return out;
  }

  end(): ChunkEntry[] {
    if (this.len === 0) return [];
    const last = { size: this.len, digest: this.sha.digest('hex').slice(0, CHUNK_DIGEST_HEX) };
    this.offset += this.len;
    this.len = 0;
    return [last];
  }
}

/** The chunks of a layer file (read in 4 MiB pieces; squashfs cuts from its superblock). */
export async function chunkFile(file: string, sizes: ChunkSizes): Promise<ChunkEntry[]> {
  const fh = await fs.open(file, 'r');
  try {
    const size = (await fh.stat()).size;
    const head = Buffer.alloc(Math.min(96, size));
    await fh.read(head, 0, head.length, 0);
    const c = new Chunker(sizes, squashfsCuts(head, size));
    const out: ChunkEntry[] = [];
    const buf = Buffer.allocUnsafe(4 << 20);
    for (let pos = 0; pos < size; ) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
      if (bytesRead === 0) break;
      for (const e of c.push(buf.subarray(0, bytesRead))) out.push(e);
      pos += bytesRead;
    }
    for (const e of c.end()) out.push(e);
    return out;
  } finally {
    await fh.close();
  }
}

/** The default cutting sizes (chosen by measurement on two Debian bases: docs/PROTOCOL.md, "Chunk index"). */
export const DEFAULT_CHUNK_SIZES: ChunkSizes = { min: 1024, avg: 4096, max: 16384 };

/** The chunk index of a layer file, as its bytes. */
export async function chunkIndexBytes(layerFile: string, sizes: ChunkSizes = DEFAULT_CHUNK_SIZES): Promise<Buffer> {
  const chunks = await chunkFile(layerFile, sizes);
  return serializeChunkIndex({ sizes, layerSize: chunks.reduce((n, c) => n + c.size, 0), chunks });
}

/**
 * Writes the chunk index of a built layer beside it (`<sha256>.chunks`, durably) and
 * returns the manifest's reference to it.
 */
export async function writeChunkIndex(layerFile: string, layerDigest: string, sizes: ChunkSizes = DEFAULT_CHUNK_SIZES): Promise<ChunkIndexRef> {
  const bytes = await chunkIndexBytes(layerFile, sizes);
  await writeDurable(path.join(path.dirname(layerFile), chunkIndexName(layerDigest)), bytes);
  return { layer: layerDigest, digest: createHash('sha256').update(bytes).digest('hex'), size: bytes.length };
}

/** The chunks of LAYER (cut as INDEX says) that lie wholly inside its dm-verity tree. */
export function treeChunks(layer: LayerRef, index: ChunkIndex): Set<number> {
  const out = new Set<number>();
  const v = layer.verity;
  if (!v) return out;
  const [start, end] = [v.hashOffset, v.hashOffset + verityTreeBytes(v.dataBytes)];
  let at = 0;
  index.chunks.forEach((c, i) => {
    if (at >= start && at + c.size <= end) out.add(i);
    at += c.size;
  });
  return out;
}

/**
 * A layer's chunk delta against base layers (`bundle --base … --chunks`): the chunks of
 * the new layer (its index) that none of `baseFiles` has, as chunk numbers and as the
 * byte ranges of the layer file that hold them (adjacent ones merged), in order. With the
 * layer's manifest entry (`ref`), the chunks of its dm-verity tree are left out: the node
 * computes them.
 */
export async function chunkDelta(layer: string, indexBytes: Buffer, baseFiles: string[], ref?: LayerRef): Promise<BundleChunks> {
  const ix = parseChunkIndex(indexBytes);
  const have = new Set<string>();
  const tree = ref ? treeChunks(ref, ix) : new Set<number>();
  for (const f of baseFiles) for (const c of await chunkFile(f, ix.sizes)) have.add(c.digest);
  const carried: number[] = [];
  const ranges: { start: number; end: number }[] = [];
  let at = 0;
  ix.chunks.forEach((c, i) => {
    if (!have.has(c.digest) && !tree.has(i)) {
      carried.push(i);
      const last = ranges[ranges.length - 1];
      if (last && last.end === at) last.end += c.size;
      else ranges.push({ start: at, end: at + c.size });
    }
    at += c.size;
  });
  return { layer, index: indexBytes, carried, ranges };
}
