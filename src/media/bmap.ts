/**
 * Block maps, bmaptool's idea and file format (bmap version 2.0, sha256): which block
 * ranges of an image hold data, each with the sha256 of its bytes. `stackboot flash`
 * (and `bmaptool copy`) write only these ranges and verify them after.
 *
 * How the ranges are found: Node has no SEEK_DATA/SEEK_HOLE, so the builder asks the
 * kernel for the file's extents with FIEMAP through `filefrag` (e2fsprogs) and maps the
 * allocated blocks, as bmaptool does. A zero-block scan alone is NOT enough: it drops
 * zeros the image writer wrote on purpose (a GPT's empty partition entries), and a
 * target with old bytes there then has a broken partition table (seen in
 * test/media/flash.int.test.ts). Without FIEMAP (tmpfs) it falls back to a scan that maps
 * non-zero blocks and the whole first and last MiB. The images stackboot assembles are
 * sparse where their filesystems are zero (src/media/disk.ts copySparse).
 */
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { StackbootError, run } from '../sys/index.js';

export const BMAP_BLOCK = 4096;

export interface BmapRange {
  /** first block */
  first: number;
  /** last block (inclusive) */
  last: number;
  /** sha256 of the range's bytes (the last block may be short when the image is) */
  sha256: string;
}

export interface Bmap {
  imageSize: number;
  blockSize: number;
  blocksCount: number;
  mappedBlocks: number;
  ranges: BmapRange[];
}

/** Bytes covered by the mapped ranges (the last range clipped to the image size). */
export function mappedBytes(b: Bmap): number {
  return b.ranges.reduce((n, r) => n + rangeLength(b, r), 0);
}

export function rangeOffset(b: Bmap, r: BmapRange): number {
  return r.first * b.blockSize;
}

export function rangeLength(b: Bmap, r: BmapRange): number {
  return Math.min((r.last + 1) * b.blockSize, b.imageSize) - r.first * b.blockSize;
}

const ZERO64 = '0'.repeat(64);

function render(b: Bmap, fileChecksum: string): string {
  const lines = [
    '<?xml version="1.0" ?>',
    '<!-- stackboot block map: the mapped block ranges of the image, each with its sha256 -->',
    '<bmap version="2.0">',
    `    <ImageSize> ${b.imageSize} </ImageSize>`,
    `    <BlockSize> ${b.blockSize} </BlockSize>`,
    `    <BlocksCount> ${b.blocksCount} </BlocksCount>`,
    `    <MappedBlocksCount> ${b.mappedBlocks} </MappedBlocksCount>`,
    '    <ChecksumType> sha256 </ChecksumType>',
    `    <BmapFileChecksum> ${fileChecksum} </BmapFileChecksum>`,
    '    <BlockMap>',
    ...b.ranges.map((r) => `        <Range chksum="${r.sha256}"> ${r.first === r.last ? r.first : `${r.first}-${r.last}`} </Range>`),
    '    </BlockMap>',
    '</bmap>',
    '',
  ];
  return lines.join('\n');
}

/** The bmap XML. BmapFileChecksum is the sha256 of the file with that field zeroed, as bmaptool does. */
export function serializeBmap(b: Bmap): string {
  const sum = createHash('sha256').update(render(b, ZERO64)).digest('hex');
  return render(b, sum);
}

function tag(text: string, name: string): string {
  const m = new RegExp(`<${name}>\\s*([^<]*?)\\s*</${name}>`).exec(text);
  if (!m) throw new StackbootError('VERIFY', `block map: no <${name}>`);
  return m[1];
}

function int(text: string, name: string): number {
  const v = tag(text, name);
  if (!/^\d+$/.test(v)) throw new StackbootError('VERIFY', `block map: <${name}> is not a number: ${v}`);
  return Number(v);
}

/** Parses a bmap (version 2.x, sha256) and checks its own checksum and its consistency. */
export function parseBmap(text: string): Bmap {
  const ver = /<bmap version="(\d+)\.(\d+)"/.exec(text);
  if (!ver) throw new StackbootError('VERIFY', 'not a block map (no <bmap version=...>)');
  if (ver[1] !== '2') throw new StackbootError('VERIFY', `block map version ${ver[1]}.${ver[2]} is not supported (2.x only)`);
  const ct = tag(text, 'ChecksumType');
  if (ct !== 'sha256') throw new StackbootError('VERIFY', `block map checksum type ${ct} is not supported (sha256 only)`);
  const fileSum = tag(text, 'BmapFileChecksum');
  const zeroed = text.replace(/(<BmapFileChecksum>\s*)[0-9a-f]+(\s*<\/BmapFileChecksum>)/, `$1${ZERO64}$2`);
  if (createHash('sha256').update(zeroed).digest('hex') !== fileSum) throw new StackbootError('VERIFY', 'block map checksum mismatch: the .bmap file is damaged or was edited');
  const b: Bmap = {
    imageSize: int(text, 'ImageSize'),
    blockSize: int(text, 'BlockSize'),
    blocksCount: int(text, 'BlocksCount'),
    mappedBlocks: int(text, 'MappedBlocksCount'),
    ranges: [],
  };
  if (b.blockSize <= 0 || b.blockSize % 512 !== 0) throw new StackbootError('VERIFY', `block map: bad block size ${b.blockSize}`);
  if (b.blocksCount !== Math.ceil(b.imageSize / b.blockSize)) throw new StackbootError('VERIFY', `block map: BlocksCount ${b.blocksCount} does not match ImageSize ${b.imageSize}`);
  const re = /<Range\s+chksum="([0-9a-f]{64})"\s*>\s*(\d+)(?:\s*-\s*(\d+))?\s*<\/Range>/g;
  let m: RegExpExecArray | null;
  let n = 0;
  let prev = -1;
  while ((m = re.exec(text))) {
    const first = Number(m[2]);
    const last = m[3] === undefined ? first : Number(m[3]);
    if (last < first || first <= prev || last >= b.blocksCount) throw new StackbootError('VERIFY', `block map: bad range ${first}-${last}`);
    prev = last;
    n += last - first + 1;
    b.ranges.push({ first, last, sha256: m[1] });
  }
  if (n !== b.mappedBlocks) throw new StackbootError('VERIFY', `block map: MappedBlocksCount ${b.mappedBlocks}, ranges hold ${n}`);
  return b;
}

const ZEROS = Buffer.alloc(1 << 20);

/**
 * True when `buf` holds only zero bytes: a native compare against zeros (memcmp), one
 * call per MiB. A JS loop over 8-byte words was 9× slower under bin/stackboot's V8 lite
 * mode (no optimizing compiler): `image` took 15 s instead of 5.
 */
export function isZero(buf: Buffer): boolean {
  for (let o = 0; o < buf.length; o += ZEROS.length) {
    const n = Math.min(ZEROS.length, buf.length - o);
    if (!buf.subarray(o, o + n).equals(n === ZEROS.length ? ZEROS : ZEROS.subarray(0, n))) return false;
  }
  return true;
}

/**
 * The allocated block ranges of a file (FIEMAP, through `filefrag` from e2fsprogs; Node
 * has no SEEK_DATA/SEEK_HOLE), or null when the filesystem cannot tell (tmpfs, no tool).
 */
export async function allocatedExtents(file: string, bs: number): Promise<[number, number][] | null> {
  const r = await run('filefrag', ['-s', '-v', '-e', `-b${bs}`, file], { reject: false }).catch(() => null);
  if (!r || r.exitCode !== 0 || /FIEMAP.*not supported|ioctl/i.test(r.stderr)) return null;
  const out: [number, number][] = [];
  for (const l of r.stdout.split('\n')) {
    const m = /^\s*\d+:\s*(\d+)\.\.\s*(\d+):/.exec(l);
    if (!m) continue;
    const a = Number(m[1]);
    const b = Number(m[2]);
    const prev = out[out.length - 1];
    if (prev && a <= prev[1] + 1) prev[1] = Math.max(prev[1], b);
    else out.push([a, b]);
  }
  if (!/extents? found/.test(r.stdout)) return null;
  return out;
}

/**
 * Maps a file. The mapped blocks are its allocated extents (FIEMAP via filefrag), so a
 * zero block the image writer wrote on purpose (a GPT's empty partition entries, a
 * zeroed inode table) is written to the target too, as bmaptool does. Where FIEMAP is not
 * available, every non-zero block is mapped, plus every block of the first and last MiB
 * (partition tables) even when zero. Ranges are cut at `maxRangeBytes` (default 4 MiB)
 * so that each verify unit is small and a bad one names a narrow place.
 */
export async function buildBmap(file: string, o: { blockSize?: number; maxRangeBytes?: number; scan?: boolean } = {}): Promise<Bmap> {
  const bs = o.blockSize ?? BMAP_BLOCK;
  const maxBlocks = Math.max(1, Math.floor((o.maxRangeBytes ?? 4 * 1024 * 1024) / bs));
  const fh = await fs.open(file, 'r');
  try {
    const size = (await fh.stat()).size;
    const blocks = Math.ceil(size / bs);
    const extents = o.scan ? null : await allocatedExtents(file, bs);
    const edge = Math.ceil((1024 * 1024) / bs);
    const keepZero = (n: number): boolean => extents !== null || n < edge || n >= blocks - edge;
    const todo: [number, number][] = (extents ?? [[0, blocks - 1]]).map(([a, b]) => [a, Math.min(b, blocks - 1)] as [number, number]).filter(([a, b]) => a <= b);
    const chunk = Buffer.alloc(bs * 256);
    const ranges: BmapRange[] = [];
    let cur: { first: number; last: number; hash: ReturnType<typeof createHash> } | null = null;
    const close = (): void => {
      if (cur) ranges.push({ first: cur.first, last: cur.last, sha256: cur.hash.digest('hex') });
      cur = null;
    };
    for (const [a, b] of todo) {
      const endByte = Math.min((b + 1) * bs, size);
      for (let pos = a * bs; pos < endByte; ) {
        const { bytesRead } = await fh.read(chunk, 0, Math.min(chunk.length, endByte - pos), pos);
        if (bytesRead === 0) break;
        for (let o2 = 0; o2 < bytesRead; o2 += bs) {
          const blk = chunk.subarray(o2, Math.min(o2 + bs, bytesRead));
          const n = (pos + o2) / bs;
          if (!keepZero(n) && isZero(blk)) {
            close();
            continue;
          }
          if (cur && (cur.first + maxBlocks <= n || cur.last !== n - 1)) close();
          if (!cur) cur = { first: n, last: n, hash: createHash('sha256') };
          cur.last = n;
          cur.hash.update(blk);
        }
        pos += bytesRead;
      }
    }
    close();
    return { imageSize: size, blockSize: bs, blocksCount: blocks, mappedBlocks: ranges.reduce((n, r) => n + r.last - r.first + 1, 0), ranges };
  } finally {
    await fh.close();
  }
}

/** Builds the map of `image` and writes it to `<image>.bmap` (or `out`). */
export async function writeBmapFor(image: string, out = `${image}.bmap`): Promise<Bmap> {
  const b = await buildBmap(image);
  await fs.writeFile(out, serializeBmap(b));
  return b;
}

/** Reads `<image>.bmap` when present and it matches the image's size; null otherwise. */
export async function readBmapFor(image: string, file = `${image}.bmap`): Promise<Bmap | null> {
  const t = await fs.readFile(file, 'utf8').catch(() => null);
  if (t === null) return null;
  const b = parseBmap(t);
  const size = (await fs.stat(image)).size;
  if (b.imageSize !== size) throw new StackbootError('VERIFY', `${file} is for an image of ${b.imageSize} bytes, ${image} has ${size}`);
  return b;
}
