/**
 * The dm-verity hash tree (pure), as the kernel and `veritysetup format --no-superblock`
 * make it: format 1, sha256, 4096-byte data and hash blocks, each digest
 * sha256(salt || block), levels stored top first. Built by the build (build/verity.ts
 * appends it to a layer) and by a node that rebuilds a layer from chunks (the tree of the
 * data it reassembled: node/chunk-install.ts; its bytes are checked against the chunk
 * index like any chunk, so fetching them is never needed).
 */
import { createHash } from 'node:crypto';
import { StackbootError } from '../sys/index.js';

export const VERITY_BLOCK = 4096;
const DIGEST = 32;
const PER_BLOCK = VERITY_BLOCK / DIGEST;

/** The salt of every stackboot hash tree: sha256("stackboot dm-verity salt 1"). */
export const VERITY_SALT = createHash('sha256').update('stackboot dm-verity salt 1').digest();

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

/**
 * Builds the tree over a layer's data as it streams by: push() the data bytes in order
 * (any piece sizes; exactly dataBytes in all), then finish(). Holds one digest per data
 * block (8 MiB for 1 GiB of data).
 */
export class VerityTreeBuilder {
  private readonly leaves: Buffer;
  private n = 0;
  private readonly part = Buffer.alloc(VERITY_BLOCK);
  private partLen = 0;
  private seen = 0;

  constructor(
    readonly dataBytes: number,
    private readonly salt: Buffer = VERITY_SALT,
  ) {
    verityLevels(dataBytes);
    this.leaves = Buffer.alloc((dataBytes / VERITY_BLOCK) * DIGEST);
  }

  private leaf(block: Buffer): void {
    createHash('sha256').update(this.salt).update(block).digest().copy(this.leaves, this.n * DIGEST);
    this.n++;
  }

  push(b: Buffer): void {
    if (this.seen + b.length > this.dataBytes) throw new StackbootError('VERIFY', `verity tree: more than the ${this.dataBytes} bytes of data`);
    this.seen += b.length;
    let i = 0;
    if (this.partLen) {
      const k = Math.min(VERITY_BLOCK - this.partLen, b.length);
      b.copy(this.part, this.partLen, 0, k);
      this.partLen += k;
      i = k;
      if (this.partLen === VERITY_BLOCK) {
        this.leaf(this.part);
        this.partLen = 0;
      }
    }
    for (; i + VERITY_BLOCK <= b.length; i += VERITY_BLOCK) this.leaf(b.subarray(i, i + VERITY_BLOCK));
    if (i < b.length) {
      b.copy(this.part, 0, i);
      this.partLen = b.length - i;
    }
  }

  /** The tree (top level first) and the root hash. */
  finish(): { tree: Buffer; root: Buffer } {
    if (this.seen !== this.dataBytes) throw new StackbootError('VERIFY', `verity tree: ${this.seen} of ${this.dataBytes} bytes of data`);
    const levels = verityLevels(this.dataBytes);
    if (levels.length === 0) return { tree: Buffer.alloc(0), root: this.leaves.subarray(0, DIGEST) };
    const built: Buffer[] = [];
    let below = this.leaves;
    for (const blocks of levels) {
      const level = Buffer.alloc(blocks * VERITY_BLOCK);
      below.copy(level, 0);
      built.push(level);
      below = Buffer.alloc(blocks * DIGEST);
      for (let k = 0; k < blocks; k++) createHash('sha256').update(this.salt).update(level.subarray(k * VERITY_BLOCK, (k + 1) * VERITY_BLOCK)).digest().copy(below, k * DIGEST);
    }
    return { tree: Buffer.concat(built.reverse()), root: below.subarray(0, DIGEST) };
  }
}
