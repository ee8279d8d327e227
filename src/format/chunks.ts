/**
 * The chunk index of a layer (pure): the layer file cut at content-defined boundaries
 * (build/chunker.ts), each chunk its size and sha256, in file order. It is stored beside
 * the layer as `layers/<layer sha256>.chunks` and covered by the signed manifest through a
 * line `chunks <layer sha256> sha256:<index sha256> <index bytes>` (docs/PROTOCOL.md,
 * "Chunk index"). Binary, big-endian:
 *
 *   "SBCHUNKS" u8 version(2) u8[3] 0  u32 min u32 avg u32 max  u64 layer bytes  u32 count
 *   count × ( u16 size, the first 16 bytes of its sha256 )
 *
 * Version 1 (still read) had u32 sizes and whole sha256s: 36 bytes a chunk where 18 do.
 * A chunk is named by half its sha256 (128 bits: no accidental match among the chunks of
 * a fleet, no forged one either); the layer's whole sha256 stays the judge of the bytes.
 */
import { createHash } from 'node:crypto';
import { StackbootError } from '../sys/index.js';
import type { Manifest } from './manifest.js';

export const CHUNKS_MAGIC = 'SBCHUNKS';
const HEAD = 36;
const ENTRY = 18;
const ENTRY_V1 = 36;
/** The hex characters of a chunk's name: the first 16 bytes of its sha256. */
export const CHUNK_DIGEST_HEX = 32;

/** The cutting sizes (bytes): no chunk below min (but a file's last and a forced cut's), none above max. */
export interface ChunkSizes {
  min: number;
  avg: number;
  max: number;
}

export interface ChunkEntry {
  size: number;
  /** the first 16 bytes of its sha256, lowercase hex (chunkDigest) */
  digest: string;
}

/** A chunk's name: the first 16 bytes of its sha256, hex. */
export function chunkDigest(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex').slice(0, CHUNK_DIGEST_HEX);
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
  if (ix.sizes.max > 0xffff) bad(`chunks of up to ${ix.sizes.max} bytes do not fit the index (at most 65535)`);
  const b = Buffer.alloc(HEAD + ENTRY * ix.chunks.length);
  b.write(CHUNKS_MAGIC, 0, 'latin1');
  b.writeUInt8(2, 8);
  b.writeUInt32BE(ix.sizes.min, 12);
  b.writeUInt32BE(ix.sizes.avg, 16);
  b.writeUInt32BE(ix.sizes.max, 20);
  b.writeBigUInt64BE(BigInt(ix.layerSize), 24);
  b.writeUInt32BE(ix.chunks.length, 32);
  let at = HEAD;
  for (const c of ix.chunks) {
    b.writeUInt16BE(c.size, at);
    b.write(c.digest.slice(0, CHUNK_DIGEST_HEX), at + 2, 'hex');
    at += ENTRY;
  }
  return b;
}

export function parseChunkIndex(b: Buffer): ChunkIndex {
  if (b.length < HEAD || b.toString('latin1', 0, 8) !== CHUNKS_MAGIC) bad('bad magic');
  const version = b.readUInt8(8);
  if (version !== 1 && version !== 2) bad(`version ${version} is not known`);
  const entry = version === 1 ? ENTRY_V1 : ENTRY;
  const sizes = { min: b.readUInt32BE(12), avg: b.readUInt32BE(16), max: b.readUInt32BE(20) };
  if (!(sizes.min > 0 && sizes.min <= sizes.avg && sizes.avg <= sizes.max)) bad(`bad sizes ${sizes.min}/${sizes.avg}/${sizes.max}`);
  const layerSize = Number(b.readBigUInt64BE(24));
  const count = b.readUInt32BE(32);
  if (b.length !== HEAD + entry * count) bad(`${b.length} bytes for ${count} chunks`);
  const chunks: ChunkEntry[] = [];
  let sum = 0;
  for (let i = 0, at = HEAD; i < count; i++, at += entry) {
    const size = version === 1 ? b.readUInt32BE(at) : b.readUInt16BE(at);
    if (size === 0 || size > sizes.max) bad(`chunk ${i} has ${size} bytes`);
    sum += size;
    const d = version === 1 ? at + 4 : at + 2;
    chunks.push({ size, digest: b.toString('hex', d, d + CHUNK_DIGEST_HEX / 2) });
  }
  if (sum !== layerSize) bad(`chunks sum to ${sum} bytes, the layer has ${layerSize}`);
  return { sizes, layerSize, chunks };
}

/** A layer's file as the signed manifest names it (`<key> <layer> sha256:<hex> <bytes>`): throws VERIFY unless `b` is it. */
export function checkLayerFile(ref: ChunkIndexRef, b: Buffer, source: string, what: string): void {
  const d = createHash('sha256').update(b).digest('hex');
  if (b.length !== ref.size || d !== ref.digest) {
    throw new StackbootError('VERIFY', `${source}: the ${what} of layer ${ref.layer.slice(0, 12)} does not match the signed manifest (${b.length} bytes, sha256 ${d.slice(0, 12)}; expected ${ref.size}, ${ref.digest.slice(0, 12)})`);
  }
}

/** The lines `<key> <layer> sha256:<hex> <bytes>` of a manifest (extra lines), by layer digest. */
export function layerFileRefs(m: Manifest, key: string): Map<string, ChunkIndexRef> {
  const out = new Map<string, ChunkIndexRef>();
  for (const [k, v] of m.extra ?? []) {
    if (k !== key) continue;
    const w = /^([0-9a-f]{64}) sha256:([0-9a-f]{64}) (\d+)$/.exec(v);
    if (!w) throw new StackbootError('MANIFEST', `bad ${key} line ${JSON.stringify(v)} (expected "${key} <layer sha256> sha256:<hex> <bytes>")`);
    out.set(w[1], { layer: w[1], digest: w[2], size: Number(w[3]) });
  }
  return out;
}

/** A chunk index checked against the signed manifest's line for its layer (size and sha256 first, then parsed). */
export function verifyChunkIndex(ref: ChunkIndexRef, layerSize: number, b: Buffer, source: string): ChunkIndex {
  checkLayerFile(ref, b, source, 'chunk index');
  const ix = parseChunkIndex(b);
  if (ix.layerSize !== layerSize) bad(`layer ${ref.layer.slice(0, 12)}: the index is of ${ix.layerSize} bytes, the layer has ${layerSize}`);
  return ix;
}

/** The chunk index lines of a manifest (`chunks <layer> sha256:<hex> <bytes>`: kept as extra lines), by layer digest. */
export function chunkIndexRefs(m: Manifest): Map<string, ChunkIndexRef> {
  return layerFileRefs(m, 'chunks');
}

/** The manifest's extra line for an index. */
export function chunkIndexLine(ref: ChunkIndexRef): [string, string] {
  return ['chunks', `${ref.layer} sha256:${ref.digest} ${ref.size}`];
}

/** The file name of a layer's index beside the layer (`<sha256>.chunks`). */
export function chunkIndexName(layerDigest: string): string {
  return `${layerDigest}.chunks`;
}
