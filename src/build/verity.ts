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
import { promises as fs } from 'node:fs';
import { StackbootError } from '../sys/index.js';
import { VERITY_BLOCK, VERITY_SALT, VerityTreeBuilder, verityTreeBytes } from '../format/index.js';
import { checkSquashfs } from './squashfs.js';

export { VERITY_BLOCK, VERITY_SALT, verityLevels, verityTreeBytes } from '../format/index.js';

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

/** The salt, the tree (top level first) and the root hash over the first DATA_BYTES of FH (format/verity-tree.ts). */
async function computeTree(fh: fs.FileHandle, dataBytes: number): Promise<{ salt: Buffer; tree: Buffer; root: Buffer }> {
  const t = new VerityTreeBuilder(dataBytes);
  const buf = Buffer.alloc(CHUNK);
  for (let pos = 0; pos < dataBytes; ) {
    const want = Math.min(CHUNK, dataBytes - pos);
    const { bytesRead } = await fh.read(buf, 0, want, pos);
    if (bytesRead !== want) throw new StackbootError('IO', `short read at ${pos}`);
    t.push(buf.subarray(0, want));
    pos += want;
  }
  const { tree, root } = t.finish();
  return { salt: VERITY_SALT, tree, root };
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
