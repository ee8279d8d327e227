/** Host-side helpers for the media tests: mount a partition of an image file (root). */
import { run } from '../../src/sys/exec.js';
import { withDeviceMounted } from '../../src/sys/mount.js';

/** Mounts partition `p` of an image file on a loop device (offset), runs fn, cleans up. */
export async function withPartition<T>(img: string, p: { start: number; size: number }, dir: string, fn: (mnt: string) => Promise<T>): Promise<T> {
  const dev = (await run('losetup', ['--find', '--show', '-o', String(p.start), '--sizelimit', String(p.size), img])).stdout.trim();
  try {
    return await withDeviceMounted(dev, dir, fn);
  } finally {
    await run('losetup', ['-d', dev], { reject: false });
  }
}
