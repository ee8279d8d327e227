/**
 * The chunk index of a layer (pure): the layer file cut at content-defined boundaries
 * (build/chunker.ts), each chunk its size and sha256, in file order. It is stored beside
 * the layer as `layers/<layer sha256>.chunks` and covered by the signed manifest through a
 * line `chunks <layer sha256> sha256:<index sha256> <index bytes>` (docs/PROTOCOL.md,
 * "Chunk index"). Binary, big-endian:
 *
 *   "SBCHUNKS" u8 version(1) u8[3] 0  u32 min u32 avg u32 max  u64 layer bytes  u32 count
 *   count × ( u32 size, 32 bytes sha256 )
 */
import { createHash } from 'node:crypto';
import { StackbootError } from '../sys/index.js';
import type { Manifest } from './manifest.js';

export const CHUNKS_MAGIC = 'SBCHUNKS';
const HEAD = 36;
const ENTRY = 36;

/** The cutting sizes (bytes): no chunk below min (but a file's last and a forced cut's), none above max. */
export interface ChunkSizes {
  min: number;
  avg: number;
  max: number;
}

export interface ChunkEntry {
  size: number;
  /** lowercase hex sha256 */
  digest: string;
}

export interface ChunkIndex {
  sizes: ChunkSizes;
  /** the layer's size (the sum of the chunks) */
  layerSize: number;
  chunks: ChunkEntry[];
}

/** What the manifest says of a layer's index. */
export interface ChunkIndexRef {
  layer: string;
  digest: string;
  size: number;
}

function bad(msg: string): never {
  throw new StackbootError('VERIFY', `chunk index: ${msg}`);
}

export function serializeChunkIndex(ix: ChunkIndex): Buffer {
  const b = Buffer.alloc(HEAD + ENTRY * ix.chunks.length);
  b.write(CHUNKS_MAGIC, 0, 'latin1');
  b.writeUInt8(1, 8);
  b.writeUInt32BE(ix.sizes.min, 12);
  b.writeUInt32BE(ix.sizes.avg, 16);
  b.writeUInt32BE(ix.sizes.max, 20);
  b.writeBigUInt64BE(BigInt(ix.layerSize), 24);
  b.writeUInt32BE(ix.chunks.length, 32);
  let at = HEAD;
  for (const c of ix.chunks) {
    b.writeUInt32BE(c.size, at);
    b.write(c.digest, at + 4, 'hex');
    at += ENTRY;
  }
  return b;
}

export function parseChunkIndex(b: Buffer): ChunkIndex {
  if (b.length < HEAD || b.toString('latin1', 0, 8) !== CHUNKS_MAGIC) bad('bad magic');
  if (b.readUInt8(8) !== 1) bad(`version ${b.readUInt8(8)} is not known`);
  const sizes = { min: b.readUInt32BE(12), avg: b.readUInt32BE(16), max: b.readUInt32BE(20) };
  if (!(sizes.min > 0 && sizes.min <= sizes.avg && sizes.avg <= sizes.max)) bad(`bad sizes ${sizes.min}/${sizes.avg}/${sizes.max}`);
  const layerSize = Number(b.readBigUInt64BE(24));
  const count = b.readUInt32BE(32);
  if (b.length !== HEAD + ENTRY * count) bad(`${b.length} bytes for ${count} chunks`);
  const chunks: ChunkEntry[] = [];
  let sum = 0;
  for (let i = 0, at = HEAD; i < count; i++, at += ENTRY) {
    const size = b.readUInt32BE(at);
    if (size === 0 || size > sizes.max) bad(`chunk ${i} has ${size} bytes`);
    sum += size;
    chunks.push({ size, digest: b.toString('hex', at + 4, at + ENTRY) });
  }
  if (sum !== layerSize) bad(`chunks sum to ${sum} bytes, the layer has ${layerSize}`);
  return { sizes, layerSize, chunks };
}

/** A chunk index checked against the signed manifest's line for its layer (size and sha256 first, then parsed). */
export function verifyChunkIndex(ref: ChunkIndexRef, layerSize: number, b: Buffer, source: string): ChunkIndex {
  const d = createHash('sha256').update(b).digest('hex');
  if (b.length !== ref.size || d !== ref.digest) {
    throw new StackbootError('VERIFY', `${source}: the chunk index of layer ${ref.layer.slice(0, 12)} does not match the signed manifest (${b.length} bytes, sha256 ${d.slice(0, 12)}; expected ${ref.size}, ${ref.digest.slice(0, 12)})`);
  }
  const ix = parseChunkIndex(b);
  if (ix.layerSize !== layerSize) bad(`layer ${ref.layer.slice(0, 12)}: the index is of ${ix.layerSize} bytes, the layer has ${layerSize}`);
  return ix;
}

/** The chunk index lines of a manifest (`chunks <layer> sha256:<hex> <bytes>`: kept as extra lines), by layer digest. */
export function chunkIndexRefs(m: Manifest): Map<string, ChunkIndexRef> {
  const out = new Map<string, ChunkIndexRef>();
  for (const [k, v] of m.extra ?? []) {
    if (k !== 'chunks') continue;
    const w = /^([0-9a-f]{64}) sha256:([0-9a-f]{64}) (\d+)$/.exec(v);
    if (!w) throw new StackbootError('MANIFEST', `bad chunks line ${JSON.stringify(v)} (expected "chunks <layer sha256> sha256:<hex> <bytes>")`);
    out.set(w[1], { layer: w[1], digest: w[2], size: Number(w[3]) });
  }
  return out;
}

/** The manifest's extra line for an index. */
export function chunkIndexLine(ref: ChunkIndexRef): [string, string] {
  return ['chunks', `${ref.layer} sha256:${ref.digest} ${ref.size}`];
}

/** The file name of a layer's index beside the layer (`<sha256>.chunks`). */
export function chunkIndexName(layerDigest: string): string {
  return `${layerDigest}.chunks`;
}
