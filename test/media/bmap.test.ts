import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { createHash } from 'node:crypto';
import { mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { buildBmap, isZero, mappedBytes, parseBmap, serializeBmap, type Bmap } from '../../src/media/bmap.js';

let tmp: string;
beforeAll(async () => {
  tmp = await mkdtemp(path.join(tmpdir(), 'sb-bmap-'));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

describe('bmap format', () => {
  const b: Bmap = {
    imageSize: 10 * 4096 + 100,
    blockSize: 4096,
    blocksCount: 11,
    mappedBlocks: 4,
    ranges: [
      { first: 0, last: 1, sha256: 'a'.repeat(64) },
      { first: 5, last: 5, sha256: 'b'.repeat(64) },
      { first: 10, last: 10, sha256: 'c'.repeat(64) },
    ],
  };
  it('round-trips and writes bmaptool 2.0 XML with a file checksum', () => {
    const t = serializeBmap(b);
    expect(t).toContain('<bmap version="2.0">');
    expect(t).toContain('<Range chksum="' + 'b'.repeat(64) + '"> 5 </Range>');
    expect(t).toContain('> 0-1 </Range>');
    expect(parseBmap(t)).toEqual(b);
    expect(mappedBytes(b)).toBe(3 * 4096 + 100);
  });
  it('refuses an edited map (file checksum), bad ranges and unsupported versions', () => {
    const t = serializeBmap(b);
    expect(() => parseBmap(t.replace('> 5 </Range>', '> 6 </Range>'))).toThrow(/checksum mismatch/);
    expect(() => parseBmap(t.replace('version="2.0"', 'version="1.4"'))).toThrow(/not supported/);
    const bad = serializeBmap({ ...b, ranges: [b.ranges[1], b.ranges[0], b.ranges[2]] });
    expect(() => parseBmap(bad)).toThrow(/bad range/);
    const count = serializeBmap({ ...b, mappedBlocks: 9 });
    expect(() => parseBmap(count)).toThrow(/MappedBlocksCount/);
  });
});

describe('buildBmap', () => {
  it("maps allocated blocks only (FIEMAP), with the sha256 of each range, and leaves holes out", async () => {
    const f = path.join(tmp, 'img');
    const fh = await open(f, 'w');
    await fh.truncate(64 * 4096 + 10); // sparse, short last block
    const d1 = Buffer.alloc(2 * 4096, 7);
    const d2 = Buffer.alloc(4096);
    d2[4095] = 1;
    const tail = Buffer.from('0123456789');
    await fh.write(d1, 0, d1.length, 3 * 4096);
    await fh.write(d2, 0, d2.length, 20 * 4096);
    await fh.write(tail, 0, tail.length, 64 * 4096);
    await fh.close();
    const b = await buildBmap(f);
    expect(b.blocksCount).toBe(65);
    expect(b.ranges.map((r) => [r.first, r.last])).toEqual([[3, 4], [20, 20], [64, 64]]);
    expect(b.ranges[0].sha256).toBe(sha(d1));
    expect(b.ranges[1].sha256).toBe(sha(d2));
    expect(b.ranges[2].sha256).toBe(sha(tail));
    expect(mappedBytes(b)).toBe(3 * 4096 + 10);
    expect(parseBmap(serializeBmap(b))).toEqual(b);
  });
  it('cuts long data runs into ranges of at most maxRangeBytes', async () => {
    const f = path.join(tmp, 'full');
    await writeFile(f, Buffer.alloc(10 * 4096, 0xff));
    const b = await buildBmap(f, { maxRangeBytes: 4 * 4096 });
    expect(b.ranges.map((r) => [r.first, r.last])).toEqual([[0, 3], [4, 7], [8, 9]]);
    expect(b.mappedBlocks).toBe(10);
  });
});

describe('buildBmap without FIEMAP (scan)', () => {
  it('maps non-zero blocks, and every block of the first and last MiB', async () => {
    const f = path.join(tmp, 'scan');
    const fh = await open(f, 'w');
    await fh.truncate(4 * 1024 * 1024);
    await fh.write(Buffer.alloc(4096, 1), 0, 4096, 2 * 1024 * 1024);
    await fh.close();
    const b = await buildBmap(f, { scan: true });
    const edge = 256;
    expect(b.mappedBlocks).toBe(2 * edge + 1);
    expect(b.ranges.some((r) => r.first === 512 && r.last === 512)).toBe(true);
  });
});

describe('isZero', () => {
  it('finds one non-zero byte anywhere, at any length (across its 1 MiB compare chunks)', () => {
    for (const n of [0, 1, 7, 8, 65536, (1 << 20) - 1, 1 << 20, (1 << 20) + 3, 3 << 20]) {
      const b = Buffer.alloc(n);
      expect(isZero(b), `${n} zeros`).toBe(true);
      for (const at of [0, n >> 1, n - 1]) {
        if (n === 0) continue;
        b[at] = 1;
        expect(isZero(b), `${n} bytes, a 1 at ${at}`).toBe(false);
        b[at] = 0;
      }
    }
  });
});
