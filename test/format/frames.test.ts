/**
 * Frame deltas' formats (pure, no tools): a zstd frame's length from its structure alone,
 * the frames index and the delta entries round-trip and refuse what is wrong, the manifest
 * line, and the decoded tail a chunk's dictionary comes from.
 */
import { describe, it, expect } from 'vitest';
import { createHash } from 'node:crypto';
import { DecodedTail, ENTRY, decodedChunks, frameLength, framesLine, framesRefs, parseDeltaEntries, parseFramesIndex, serializeFramesIndex, verifyFramesIndex, type FramesIndex } from '../../src/format/frames.js';
import { parseManifest, serializeManifest } from '../../src/format/manifest.js';
import { layerBytes } from '../support/update-fixtures.js';

/** A zstd frame by hand: single segment, a 1-byte content size, raw blocks (the format's own example of the simplest frame). */
function rawFrame(data: Buffer, { last = true, checksum = false } = {}): Buffer {
  const fhd = (0 << 6) | (1 << 5) | (checksum ? 1 << 2 : 0);
  const bh = (data.length << 3) | (0 << 1) | (last ? 1 : 0);
  return Buffer.concat([Buffer.from([0x28, 0xb5, 0x2f, 0xfd, fhd, data.length]), Buffer.from([bh & 0xff, (bh >> 8) & 0xff, bh >> 16]), data, checksum ? Buffer.alloc(4) : Buffer.alloc(0)]);
}

describe('frameLength', () => {
  const f = rawFrame(Buffer.from('hello'));

  it('walks a frame\'s blocks to its end, wherever it lies', () => {
    expect(frameLength(f, 0)).toBe(f.length);
    const b = Buffer.concat([Buffer.from('xyz'), f, Buffer.from('tail')]);
    expect(frameLength(b, 3)).toBe(f.length);
    const c = rawFrame(Buffer.from('hello'), { checksum: true });
    expect(frameLength(c, 0)).toBe(c.length);
    // an RLE block carries one byte for any size
    const rle = Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0x20, 100, ((100 << 3) | (1 << 1) | 1) & 0xff, (100 << 3) >> 8, 0, 0x41]);
    expect(frameLength(rle, 0)).toBe(rle.length);
  });

  it('says -2 for a frame the buffer cuts short, -1 for bytes that are no frame of a squashfs block', () => {
    expect(frameLength(f.subarray(0, f.length - 1), 0)).toBe(-2);
    expect(frameLength(Buffer.from('not a frame at all'), 0)).toBe(-1);
    const reserved = Buffer.from(f);
    reserved[4] |= 1 << 3;
    expect(frameLength(reserved, 0)).toBe(-1);
    const noSize = Buffer.from(f);
    noSize[4] = 0; // neither single segment nor a content size
    expect(frameLength(noSize, 0)).toBe(-1);
    const badBlock = Buffer.from(f);
    badBlock[6] |= 3 << 1; // block type 3 is reserved
    expect(frameLength(badBlock, 0)).toBe(-1);
  });
});

describe('frames index', () => {
  const ix: FramesIndex = {
    level: 3,
    deltaLevel: 9,
    zstdVersion: '1.5.4',
    sizes: { min: 1024, avg: 4096, max: 16384 },
    prefix: 131072,
    layerSize: 1_000_000,
    deltaSize: 10 * ENTRY + 5000,
    deltaDigest: 'd'.repeat(64),
    frames: [
      { offset: 96, length: 40_000, decoded: 131072, entriesOffset: 0, entries: 6, dataOffset: 10 * ENTRY, dataBytes: 3000 },
      { offset: 40_096, length: 8_000, decoded: 8192, entriesOffset: 6 * ENTRY, entries: 4, dataOffset: 10 * ENTRY + 3000, dataBytes: 2000 },
    ],
  };
  const bytes = serializeFramesIndex(ix);
  const ref = { layer: 'b'.repeat(64), digest: createHash('sha256').update(bytes).digest('hex'), size: bytes.length };

  it('round-trips and is checked against the manifest line', () => {
    expect(parseFramesIndex(bytes)).toEqual(ix);
    expect(verifyFramesIndex(ref, 1_000_000, bytes, 'test')).toEqual(ix);
  });

  it('refuses a tampered, truncated or unknown index, frames out of order or outside the layer or the delta file', () => {
    const t = Buffer.from(bytes);
    t[110] ^= 1;
    expect(() => verifyFramesIndex(ref, 1_000_000, t, 'test')).toThrow(/does not match the signed manifest/);
    expect(() => verifyFramesIndex(ref, 999_999, bytes, 'test')).toThrow(/the layer has 999999/);
    expect(() => parseFramesIndex(bytes.subarray(0, bytes.length - 1))).toThrow(/bytes for 2 frames/);
    const v = Buffer.from(bytes);
    v[8] = 2;
    expect(() => parseFramesIndex(v)).toThrow(/version 2 is not known/);
    expect(() => parseFramesIndex(serializeFramesIndex({ ...ix, frames: [ix.frames[1], ix.frames[0]] }))).toThrow(/out of order/);
    expect(() => parseFramesIndex(serializeFramesIndex({ ...ix, frames: [{ ...ix.frames[0], offset: 999_000 }] }))).toThrow(/outside the layer/);
    expect(() => parseFramesIndex(serializeFramesIndex({ ...ix, frames: [{ ...ix.frames[0], dataBytes: 99_999 }] }))).toThrow(/outside the delta file/);
    expect(() => parseFramesIndex(serializeFramesIndex({ ...ix, sizes: { min: 1024, avg: 4096, max: 70_000 } }))).toThrow(/bad sizes/);
  });

  it('travels in the manifest as a frames line', () => {
    const m = { name: 'node', version: '2', compatible: 'test-node', created: 0, compression: 'zstd', extra: [framesLine(ref)], layers: [{ digest: 'b'.repeat(64), size: 1_000_000, name: 'base' }] };
    const back = parseManifest(serializeManifest(m));
    expect(framesRefs(back).get('b'.repeat(64))).toEqual(ref);
    expect(() => framesRefs(parseManifest(serializeManifest(m).replace(`sha256:${ref.digest}`, 'sha256:xyz')))).toThrow(/bad frames line/);
  });
});

describe('delta entries', () => {
  const entry = (digest: string, size: number, stored: number, mode: number) => {
    const b = Buffer.alloc(ENTRY);
    b.write(digest, 0, 'hex');
    b.writeUInt16BE(size, 16);
    b.writeUInt16BE(stored, 18);
    b.writeUInt8(mode, 20);
    return b;
  };

  it('parse, and a raw entry must store its bytes as they are', () => {
    const d = 'c'.repeat(32);
    expect(parseDeltaEntries(Buffer.concat([entry(d, 4096, 900, 1), entry(d, 2000, 2000, 0)]), 2)).toEqual([
      { digest: d, size: 4096, stored: 900, mode: 1 },
      { digest: d, size: 2000, stored: 2000, mode: 0 },
    ]);
    expect(() => parseDeltaEntries(entry(d, 2000, 1999, 0), 1)).toThrow(/bad entry 0/);
    expect(() => parseDeltaEntries(entry(d, 2000, 100, 2), 1)).toThrow(/bad entry 0/);
    expect(() => parseDeltaEntries(entry(d, 0, 100, 1), 1)).toThrow(/bad entry 0/);
    expect(() => parseDeltaEntries(entry(d, 10, 10, 0), 2)).toThrow(/bytes of entries for 2/);
  });
});

describe('decoded chunks and the decoded tail', () => {
  it('cuts a frame\'s decoded bytes on their own, named like the chunk index names chunks', () => {
    const data = layerBytes(200_000, 'decoded');
    const chunks = decodedChunks(data, { min: 1024, avg: 4096, max: 16384 });
    expect(chunks.reduce((n, c) => n + c.size, 0)).toBe(data.length);
    expect(chunks[0].digest).toBe(createHash('sha256').update(data.subarray(0, chunks[0].size)).digest('hex').slice(0, 32));
    expect(decodedChunks(data, { min: 1024, avg: 4096, max: 16384 })).toEqual(chunks);
  });

  it('keeps at least the reach of the dictionary, the newest bytes last', () => {
    const t = new DecodedTail(100);
    t.push(Buffer.alloc(60, 1));
    t.push(Buffer.alloc(60, 2));
    t.push(Buffer.alloc(60, 3));
    const kept = t.bytes();
    expect(kept.length).toBeGreaterThanOrEqual(100);
    expect(kept.subarray(-60)).toEqual(Buffer.alloc(60, 3));
    expect(kept.includes(1)).toBe(false);
    const ctx = t.context(Buffer.alloc(10, 4));
    expect(ctx.buf.length - ctx.start).toBe(10);
    expect(ctx.buf.subarray(0, ctx.start)).toEqual(kept);
    t.clear();
    expect(t.bytes().length).toBe(0);
  });
});
