/**
 * The chunker (content-defined cuts, squashfs cuts) and the chunk index format (pure,
 * no tools): equal bytes cut alike wherever they lie, sizes bounded, forced cuts kept,
 * the index round-trips and a wrong one is refused.
 */
import { describe, it, expect } from 'vitest';
import { createHash } from 'node:crypto';
import { Chunker, squashfsCuts } from '../../src/format/chunker.js';
import { chunkIndexLine, chunkIndexRefs, parseChunkIndex, serializeChunkIndex, verifyChunkIndex, type ChunkEntry } from '../../src/format/chunks.js';
import { parseManifest, serializeManifest } from '../../src/format/manifest.js';
import { layerBytes } from '../support/update-fixtures.js';

const sizes = { min: 1024, avg: 4096, max: 16384 };

function cut(data: Buffer, cuts: number[] = [], piece = 7777): ChunkEntry[] {
  const c = new Chunker(sizes, cuts);
  const out: ChunkEntry[] = [];
  for (let i = 0; i < data.length; i += piece) out.push(...c.push(data.subarray(i, i + piece)));
  return [...out, ...c.end()];
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const half = (b: Buffer) => sha(b).slice(0, 32);

describe('Chunker', () => {
  const data = layerBytes(2 << 20, 'chunker');

  it('covers the input with chunks named by their sha256, within the sizes, whatever the pieces pushed', () => {
    const chunks = cut(data);
    expect(chunks.reduce((n, c) => n + c.size, 0)).toBe(data.length);
    let at = 0;
    for (const c of chunks) {
      expect(c.digest).toBe(half(data.subarray(at, at + c.size)));
      at += c.size;
    }
    expect(chunks.slice(0, -1).every((c) => c.size >= sizes.min && c.size <= sizes.max)).toBe(true);
    const avg = data.length / chunks.length;
    expect(avg).toBeGreaterThan(sizes.avg / 2);
    expect(avg).toBeLessThan(sizes.avg * 2);
    expect(cut(data, [], 1 << 20)).toEqual(chunks);
    expect(cut(data, [], 100)).toEqual(chunks);
  });

  it('cuts equal bytes alike after an insertion: only the chunks around it change', () => {
    const changed = Buffer.concat([data.subarray(0, 700_000), Buffer.from('a security fix, 37 bytes long .......'), data.subarray(700_000)]);
    const a = new Set(cut(data).map((c) => c.digest));
    const b = cut(changed);
    const fresh = b.filter((c) => !a.has(c.digest));
    expect(fresh.length).toBeGreaterThan(0);
    expect(fresh.length).toBeLessThanOrEqual(3);
    expect(fresh.reduce((n, c) => n + c.size, 0)).toBeLessThan(3 * sizes.max);
  });

  it('always cuts at the forced offsets', () => {
    const cuts = [96, 300_001, 300_002, 1_500_000];
    const ends = new Set<number>();
    let at = 0;
    for (const c of cut(data, cuts)) ends.add((at += c.size));
    for (const x of cuts) expect(ends.has(x)).toBe(true);
  });

  it('reads the table starts and the hash tree start of a squashfs superblock, and nothing from other files', () => {
    const sb = Buffer.alloc(96);
    sb.writeUInt32LE(0x73717368, 0);
    sb.writeBigUInt64LE(5000n, 64); // inode table
    sb.writeBigUInt64LE(6000n, 72); // directory table
    sb.writeBigUInt64LE(0xffffffffffffffffn, 88); // no export table
    expect(squashfsCuts(sb, 10_000)).toEqual([96, 5000, 6000]);
    // bytes used 6100: a hash tree appended at 8192 (cut there); none when the file ends there
    sb.writeBigUInt64LE(6100n, 40);
    expect(squashfsCuts(sb, 10_000)).toEqual([96, 5000, 6000, 8192]);
    expect(squashfsCuts(sb, 8192)).toEqual([96, 5000, 6000]);
    expect(squashfsCuts(Buffer.alloc(96), 10_000)).toEqual([]);
  });
});

describe('chunk index', () => {
  const chunks = cut(layerBytes(300_000, 'ix'));
  const ix = { sizes, layerSize: 300_000, chunks };
  const bytes = serializeChunkIndex(ix);
  const ref = { layer: 'a'.repeat(64), digest: sha(bytes), size: bytes.length };

  it('round-trips, and is checked against the manifest line', () => {
    expect(parseChunkIndex(bytes)).toEqual(ix);
    expect(bytes.length).toBe(36 + 18 * chunks.length);
    expect(verifyChunkIndex(ref, 300_000, bytes, 'test').chunks).toEqual(chunks);
  });

  it('reads version 1 (u32 sizes, whole sha256s): the chunks named by the first half of the sha256', () => {
    const v1 = Buffer.alloc(36 + 36 * chunks.length);
    bytes.copy(v1, 0, 0, 36);
    v1.writeUInt8(1, 8);
    const data = layerBytes(300_000, 'ix');
    let at = 0;
    chunks.forEach((c, i) => {
      v1.writeUInt32BE(c.size, 36 + 36 * i);
      v1.write(sha(data.subarray(at, at + c.size)), 40 + 36 * i, 'hex');
      at += c.size;
    });
    expect(parseChunkIndex(v1)).toEqual(ix);
    expect(chunks.every((c) => c.digest.length === 32)).toBe(true);
    const v3 = Buffer.from(bytes);
    v3.writeUInt8(3, 8);
    expect(() => parseChunkIndex(v3)).toThrow(/version 3 is not known/);
    expect(() => serializeChunkIndex({ ...ix, sizes: { min: 1024, avg: 65536, max: 131072 } })).toThrow(/at most 65535/);
  });

  it('refuses a tampered index, a truncated one, one of another size of layer', () => {
    const t = Buffer.from(bytes);
    t[40] ^= 1;
    expect(() => verifyChunkIndex(ref, 300_000, t, 'test')).toThrow(/does not match the signed manifest/);
    expect(() => parseChunkIndex(bytes.subarray(0, bytes.length - 1))).toThrow(/bytes for/);
    expect(() => verifyChunkIndex(ref, 300_001, bytes, 'test')).toThrow(/the layer has 300001/);
    const sum = Buffer.from(bytes);
    sum.writeBigUInt64BE(299_999n, 24);
    expect(() => parseChunkIndex(sum)).toThrow(/sum to 300000/);
  });

  it('travels in the manifest as a chunks line that round-trips (the stack id stays)', () => {
    const layer = { digest: 'a'.repeat(64), size: 300_000, name: 'base' };
    const text = serializeManifest({ name: 'n', version: '1', compatible: 'c', created: 0, layers: [layer], extra: [chunkIndexLine(ref)] });
    expect(text).toContain(`chunks ${'a'.repeat(64)} sha256:${ref.digest} ${ref.size}\n`);
    const m = parseManifest(text);
    expect(serializeManifest(m)).toBe(text);
    expect(chunkIndexRefs(m).get(layer.digest)).toEqual(ref);
    expect(() => chunkIndexRefs(parseManifest(text.replace(`sha256:${ref.digest}`, 'sha256:xyz')))).toThrow(/bad chunks line/);
  });
});
