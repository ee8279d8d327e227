/**
 * The dm-verity hash tree of a layer, written by stackboot itself (docs/design.md
 * "Verity: who writes the hash tree"): appended to the squashfs file at the end of its
 * data (squashfs ignores bytes past its own size), no verity superblock (the signed
 * manifest carries root hash, salt, data size and hash offset). Format 1 as the kernel
 * and `veritysetup format --no-superblock --hash-offset=<data bytes>` write it: sha256,
 * 4096-byte data and hash blocks, each digest sha256(salt || block), the top level first.
 * The salt is one constant (VERITY_SALT), so the same squashfs gives the same file and root,
 * and a block that did not change between two versions of a layer keeps its leaf hash:
 * the tree of an update differs only where the data did (chunk deltas carry little of it).
 * The salt is public in the manifest in any case; what it would add against precomputed
 * collisions does not apply to sha256.
 */
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { StackbootError } from '../sys/index.js';
import { checkSquashfs } from './squashfs.js';

export const VERITY_BLOCK = 4096;
const DIGEST = 32;
const PER_BLOCK = VERITY_BLOCK / DIGEST;
const CHUNK = 256 * VERITY_BLOCK;

export interface VerityInfo {
  /** lowercase hex sha256 root hash */
  root: string;
  /** lowercase hex salt (VERITY_SALT) */
  salt: string;
  /** bytes of squashfs data, a multiple of VERITY_BLOCK */
  dataBytes: number;
  /** where the hash tree starts in the file (= dataBytes) */
  hashOffset: number;
}

/** The number of hash blocks at each level for DATA_BYTES, level 0 (over the data) first; [] for one data block. */
export function verityLevels(dataBytes: number): number[] {
  if (dataBytes <= 0 || dataBytes % VERITY_BLOCK !== 0) throw new StackbootError('VERIFY', `verity data size ${dataBytes} is not a positive multiple of ${VERITY_BLOCK}`);
  const levels: number[] = [];
  let n = dataBytes / VERITY_BLOCK;
  while (n > 1) {
    n = Math.ceil(n / PER_BLOCK);
    levels.push(n);
  }
  return levels;
}

/** Bytes the hash tree adds after DATA_BYTES of data. */
export function verityTreeBytes(dataBytes: number): number {
  return verityLevels(dataBytes).reduce((a, b) => a + b, 0) * VERITY_BLOCK;
}

/** The salt of every stackboot hash tree: sha256("stackboot dm-verity salt 1"). */
export const VERITY_SALT = createHash('sha256').update('stackboot dm-verity salt 1').digest();

const saltedHash = (salt: Buffer, block: Buffer): Buffer => createHash('sha256').update(salt).update(block).digest();

/** Reads [0, bytes) of an open file in CHUNK pieces. */
async function eachChunk(fh: fs.FileHandle, bytes: number, f: (b: Buffer) => void): Promise<void> {
  const buf = Buffer.alloc(CHUNK);
  for (let pos = 0; pos < bytes; ) {
    const want = Math.min(CHUNK, bytes - pos);
    const { bytesRead } = await fh.read(buf, 0, want, pos);
    if (bytesRead !== want) throw new StackbootError('IO', `short read at ${pos}`);
    f(buf.subarray(0, want));
    pos += want;
  }
}

/** The salt, the tree (top level first) and the root hash over the first DATA_BYTES of FH. */
async function computeTree(fh: fs.FileHandle, dataBytes: number): Promise<{ salt: Buffer; tree: Buffer; root: Buffer }> {
  const levels = verityLevels(dataBytes);
  const salt = VERITY_SALT;
  const digests: Buffer[] = [];
  await eachChunk(fh, dataBytes, (b) => {
    for (let o = 0; o < b.length; o += VERITY_BLOCK) digests.push(saltedHash(salt, b.subarray(o, o + VERITY_BLOCK)));
  });
  if (levels.length === 0) return { salt, tree: Buffer.alloc(0), root: digests[0]! };
  const built: Buffer[] = [];
  let below = digests;
  for (const blocks of levels) {
    const level = Buffer.alloc(blocks * VERITY_BLOCK);
    below.forEach((d, i) => d.copy(level, i * DIGEST));
    built.push(level);
    below = [];
    for (let o = 0; o < level.length; o += VERITY_BLOCK) below.push(saltedHash(salt, level.subarray(o, o + VERITY_BLOCK)));
  }
  return { salt, tree: Buffer.concat(built.reverse()), root: below[0]! };
}

/** The data size of a layer file: its squashfs's bytes used, rounded up to a verity block. */
async function dataBytesOf(file: string): Promise<number> {
  const { bytesUsed } = await checkSquashfs(file);
  return Math.ceil(bytesUsed / VERITY_BLOCK) * VERITY_BLOCK;
}

/**
 * Appends the hash tree to a freshly built squashfs FILE (zero-padded to a whole block
 * first when the tool did not pad it). Refuses a file with bytes past its padded data.
 */
export async function appendVerity(file: string): Promise<VerityInfo> {
  const dataBytes = await dataBytesOf(file);
  const fh = await fs.open(file, 'r+');
  try {
    const { size } = await fh.stat();
    if (size > dataBytes) throw new StackbootError('VERIFY', `${file}: ${size - dataBytes} bytes past its squashfs data (${dataBytes} bytes): already has a hash tree?`);
    if (size < dataBytes) await fh.truncate(dataBytes);
    const { salt, tree, root } = await computeTree(fh, dataBytes);
    await fh.write(tree, 0, tree.length, dataBytes);
    return { root: root.toString('hex'), salt: salt.toString('hex'), dataBytes, hashOffset: dataBytes };
  } finally {
    await fh.close();
  }
}

/**
 * The verity facts of a layer file that has its tree (a cache hit, a layer from another
 * build): recomputed from the data and checked against the stored tree, so a file whose
 * size does not fit its squashfs, or whose tree was not made from its data, is refused.
 */
export async function readVerity(file: string): Promise<VerityInfo> {
  const dataBytes = await dataBytesOf(file);
  const fh = await fs.open(file, 'r');
  try {
    const { size } = await fh.stat();
    const want = dataBytes + verityTreeBytes(dataBytes);
    if (size !== want) throw new StackbootError('VERIFY', `${file} has ${size} bytes; its squashfs data (${dataBytes}) and hash tree make ${want}`);
    const { salt, tree, root } = await computeTree(fh, dataBytes);
    const stored = Buffer.alloc(tree.length);
    if (tree.length) await fh.read(stored, 0, tree.length, dataBytes);
    if (!stored.equals(tree)) throw new StackbootError('VERIFY', `${file}: its hash tree does not match its data`);
    return { root: root.toString('hex'), salt: salt.toString('hex'), dataBytes, hashOffset: dataBytes };
  } finally {
    await fh.close();
  }
}
