/**
 * Guarded, sparse, verified writes of a disk image to a block device or a file.
 *
 * 1. Guards (unless `force`; the probing is blockdev.ts's): a block device that is mounted (itself or a partition, read
 *    from /proc/self/mountinfo by major:minor), that has holders (/sys/block/<dev>/holders,
 *    e.g. LVM, dm-crypt, RAID, on the disk or a partition), that holds the running root,
 *    or that is smaller than the image, is refused with the reason. The image itself as
 *    the target is always refused.
 * 2. The target is opened with O_EXCL for block devices (as bmaptool does): Linux then
 *    refuses it (EBUSY) while anything has it open exclusively, a mount included.
 * 3. Only the mapped ranges of the block map are written (`<image>.bmap` when present,
 *    else a map built by reading the image, see src/media/bmap.ts). A file target is first
 *    truncated to zero and to the image size, so it ends up sparse and equal.
 * 4. fsync, then the target's cached pages are dropped (`blockdev --flushbufs` for a
 *    device, posix_fadvise DONTNEED through `dd iflag=nocache` for a file), so the
 *    read-back comes from the medium, and every range's sha256 is checked.
 *
 * Flashing a build output (a folder with a manifest) assembles the image into a
 * temporary sparse file first (src/media/image.ts; holes cost nothing) and flashes that: the
 * same code path, guards and verify, no image file left behind.
 */
import { createHash } from 'node:crypto';
import { constants as C, promises as fs, type Stats } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { buildBmap, mappedBytes, rangeLength, rangeOffset, readBmapFor, type Bmap } from './bmap.js';
import { StackbootError, run, RateMeter, type ProgressSink } from '../sys/index.js';
import { buildImage, planImage, type ImageOptions } from './image.js';
import { MiB } from './disk.js';
import { deviceInfo, deviceProblems, flushBuffers } from './blockdev.js';

export interface FlashHooks {
  /** called after the write and fsync, before the read-back (tests corrupt the target here) */
  beforeVerify?: (target: string) => Promise<void>;
}

export interface FlashOptions {
  image: string;
  target: string;
  force?: boolean;
  /** skip the read-back (not recommended) */
  noVerify?: boolean;
  /** a .bmap file (default `<image>.bmap` when present, else built) */
  bmapFile?: string;
  progress?: ProgressSink;
  hooks?: FlashHooks;
  /** test seams: where /proc and /sys are */
  procRoot?: string;
  sysRoot?: string;
}

export interface FlashResult {
  image: string;
  target: string;
  kind: 'block' | 'file';
  imageSize: number;
  mappedBytes: number;
  bytesWritten: number;
  ranges: number;
  verified: boolean;
  writeMs: number;
  verifyMs: number;
  forced: string[];
}

async function dropCache(target: string, kind: 'block' | 'file'): Promise<void> {
  if (kind === 'block') await flushBuffers(target);
  else await run('dd', [`if=${target}`, 'iflag=nocache', 'count=0', 'status=none'], { reject: false });
}

/** Flashes an image (or a build output, assembled on the fly) to a device or file. */
export async function flash(o: FlashOptions & { imageOptions?: Omit<ImageOptions, 'buildDir' | 'out'>; tmpDir?: string }): Promise<FlashResult> {
  const st = await fs.stat(o.image).catch((e) => {
    throw new StackbootError('USAGE', `${o.image} does not exist`, { cause: e });
  });
  if (st.isDirectory()) {
    // a build output: assemble to a temporary sparse image, flash it, delete it; the
    // target is checked first, with the planned image size (assembling takes a while)
    const dir = await fs.mkdtemp(path.join(o.tmpDir ?? os.tmpdir(), 'sb-flash-'));
    try {
      const img = path.join(dir, 'node.img');
      const plan = await planImage({ ...(o.imageOptions ?? {}), buildDir: o.image, out: img });
      await checkTarget(o, plan.totalMiB * MiB);
      await buildImage({ ...(o.imageOptions ?? {}), buildDir: o.image, out: img, progress: o.progress });
      const r = await flashImage({ ...o, image: img, bmapFile: `${img}.bmap` });
      return { ...r, image: o.image };
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  }
  return flashImage(o);
}

/**
 * What kind of target this is, and the problems --force overrode; throws when it must not
 * be written: not a block device or a regular file, the image itself, or a device that is
 * mounted, held, or smaller than `imageSize` (unless forced).
 */
async function checkTarget(o: FlashOptions, imageSize: number, imgStat?: Stats): Promise<{ kind: 'block' | 'file'; forced: string[] }> {
  const tst = await fs.stat(o.target).catch(() => null);
  const kind: 'block' | 'file' = tst?.isBlockDevice() ? 'block' : 'file';
  // a device that is not there (a typo, a card not inserted, partitions not yet scanned)
  // would become a regular file in /dev, a tmpfs: the write "succeeds" into RAM
  if (!tst && path.resolve(o.target).startsWith('/dev/')) {
    throw new StackbootError('DEVICE', `${o.target} does not exist: no such device (is the card inserted? lsblk lists the disks)`);
  }
  if (tst && !tst.isBlockDevice() && !tst.isFile()) throw new StackbootError('DEVICE', `${o.target} is neither a block device nor a regular file`);
  if (tst && imgStat && tst.ino === imgStat.ino && tst.dev === imgStat.dev) throw new StackbootError('DEVICE', `${o.target} is the image itself`);
  const bst = tst && (await fs.stat(o.bmapFile ?? `${o.image}.bmap`).catch(() => null));
  if (tst && bst && tst.ino === bst.ino && tst.dev === bst.dev) throw new StackbootError('DEVICE', `${o.target} is the image's block map`);
  const forced: string[] = [];
  if (kind === 'block') {
    const info = await deviceInfo(o.target, o.sysRoot);
    const problems = await deviceProblems(info, imageSize, { procRoot: o.procRoot });
    if (problems.length && !o.force) {
      throw new StackbootError('DEVICE', `refusing to flash ${o.target}: ${problems.join('; ')} (use --force to override)`, { details: { problems } });
    }
    forced.push(...problems);
  }
  return { kind, forced };
}

export async function flashImage(o: FlashOptions): Promise<FlashResult> {
  const progress = o.progress ?? (() => {});
  const imgStat = await fs.stat(o.image);
  const bmap: Bmap = (o.bmapFile ? await readBmapFor(o.image, o.bmapFile) : await readBmapFor(o.image)) ?? (await buildBmap(o.image));
  if (bmap.imageSize !== imgStat.size) throw new StackbootError('VERIFY', `block map is for ${bmap.imageSize} bytes, the image has ${imgStat.size}`);
  const { kind, forced } = await checkTarget(o, bmap.imageSize, imgStat);
  let fh: fs.FileHandle;
  try {
    fh = kind === 'block' ? await fs.open(o.target, C.O_WRONLY | C.O_EXCL) : await fs.open(o.target, C.O_WRONLY | C.O_CREAT, 0o644);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new StackbootError('DEVICE', code === 'EBUSY' ? `${o.target} is busy (mounted or opened exclusively by something else)` : `cannot open ${o.target}: ${(e as Error).message}`, { cause: e });
  }
  const total = mappedBytes(bmap);
  let written = 0;
  const t0 = Date.now();
  const img = await fs.open(o.image, 'r');
  try {
    if (kind === 'file') {
      await fh.truncate(0);
      await fh.truncate(bmap.imageSize);
    }
    const meter = new RateMeter(progress, 'flash', total);
    const buf = Buffer.alloc(4 * 1024 * 1024);
    for (const r of bmap.ranges) {
      let off = rangeOffset(bmap, r);
      let left = rangeLength(bmap, r);
      while (left > 0) {
        const n = Math.min(left, buf.length);
        const { bytesRead } = await img.read(buf, 0, n, off);
        if (bytesRead !== n) throw new StackbootError('IO', `short read from ${o.image} at ${off}`);
        let w = 0;
        while (w < n) w += (await fh.write(buf, w, n - w, off + w)).bytesWritten;
        written += n;
        off += n;
        left -= n;
        meter.update(written);
      }
    }
    meter.update(written, true, 'syncing');
    await fh.sync();
  } finally {
    await fh.close();
    await img.close();
  }
  const writeMs = Date.now() - t0;
  let verifyMs = 0;
  if (!o.noVerify) {
    await o.hooks?.beforeVerify?.(o.target);
    const t1 = Date.now();
    await dropCache(o.target, kind);
    const rd = await fs.open(o.target, 'r');
    try {
      const meter = new RateMeter(progress, 'verify', total);
      const buf = Buffer.alloc(4 * 1024 * 1024);
      let done = 0;
      for (const r of bmap.ranges) {
        const h = createHash('sha256');
        let off = rangeOffset(bmap, r);
        let left = rangeLength(bmap, r);
        while (left > 0) {
          const n = Math.min(left, buf.length);
          const { bytesRead } = await rd.read(buf, 0, n, off);
          if (bytesRead !== n) throw new StackbootError('VERIFY', `short read-back from ${o.target} at ${off}`);
          h.update(buf.subarray(0, n));
          off += n;
          left -= n;
          done += n;
          meter.update(done);
        }
        if (h.digest('hex') !== r.sha256) {
          throw new StackbootError('VERIFY', `read-back of ${o.target} does not match the image in blocks ${r.first}-${r.last} (bytes ${rangeOffset(bmap, r)}+${rangeLength(bmap, r)}): the medium is faulty or was changed`, { details: { first: r.first, last: r.last } });
        }
      }
      meter.update(done, true);
    } finally {
      await rd.close();
    }
    verifyMs = Date.now() - t1;
  }
  return { image: o.image, target: o.target, kind, imageSize: bmap.imageSize, mappedBytes: total, bytesWritten: written, ranges: bmap.ranges.length, verified: !o.noVerify, writeMs, verifyMs, forced };
}
