/**
 * Mounts on the host (root only): squashfs layers on loop devices, overlays, tmpfs and
 * binds. Used by the run source, the integration tests and the node-side tools.
 */
import { promises as fs } from 'node:fs';
import { run } from './exec.js';
import { StackbootError } from './errors.js';
import { makeDir } from './dirs.js';

export function isRoot(uid: number | undefined): boolean {
  return uid === 0;
}

export async function mountSquashfs(file: string, dir: string): Promise<void> {
  await makeDir(dir);
  await run('mount', ['-t', 'squashfs', '-o', 'loop,ro', file, dir]);
}

/** Overlay with `lowers` given top first (as overlayfs wants). Read-only when no upper. */
export async function mountOverlay(target: string, lowers: string[], upper?: { upper: string; work: string }, extra: string[] = []): Promise<void> {
  if (lowers.length === 0) throw new StackbootError('INTERNAL', 'overlay needs at least one lower');
  await makeDir(target);
  const opts = [`lowerdir=${lowers.join(':')}`];
  if (upper) opts.push(`upperdir=${upper.upper}`, `workdir=${upper.work}`);
  opts.push(...extra);
  const o = opts.join(',');
  if (o.length >= 4000) throw new StackbootError('INTERNAL', `overlay options too long (${o.length} bytes): use shorter mount points`);
  // a single lower and no upper is not valid for overlayfs: use a bind
  if (!upper && lowers.length === 1) {
    await run('mount', ['--bind', '-o', 'ro', lowers[0], target]);
    return;
  }
  await run('mount', ['-t', 'overlay', 'overlay', '-o', o, target]);
}

export async function mountTmpfs(dir: string, size = '50%'): Promise<void> {
  await makeDir(dir);
  await run('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=0755`, 'tmpfs', dir]);
}

export async function bindMount(src: string, dst: string, readonly = false): Promise<void> {
  if (!(await fs.lstat(dst).catch(() => null))) await makeDir(dst);
  await run('mount', ['--bind', src, dst]);
  if (readonly) await run('mount', ['-o', 'remount,bind,ro', dst]);
}

export async function mountDevice(dev: string, dir: string, opts: string[] = []): Promise<void> {
  await makeDir(dir);
  await run('mount', [...(opts.length ? ['-o', opts.join(',')] : []), dev, dir]);
}

export async function remount(dir: string, mode: 'ro' | 'rw'): Promise<void> {
  await run('mount', ['-o', `remount,${mode}`, dir]);
}

/** Unmounts, retrying a few times and then lazily, so cleanup never leaves mounts behind. */
export async function umount(dir: string): Promise<void> {
  for (let i = 0; i < 5; i++) {
    const r = await run('umount', [dir], { reject: false });
    if (r.exitCode === 0) return;
    if (/not mounted|no mount point|not found/i.test(r.stderr)) return;
    await new Promise((res) => setTimeout(res, 100 * (i + 1)));
  }
  await run('umount', ['-l', dir], { reject: false });
}

/**
 * The mount points at or below `dir` (from /proc/self/mounts, in mount order), so a
 * caller can make sure nothing is mounted there before it removes the folder: rm -rf
 * through a bind of the host's /dev deletes the host's device nodes.
 */
export async function mountsUnder(dir: string, mountsFile = '/proc/self/mounts'): Promise<string[]> {
  const text = await fs.readFile(mountsFile, 'utf8').catch(() => '');
  const base = dir.replace(/\/+$/, '');
  const out: string[] = [];
  for (const line of text.split('\n')) {
    const field = line.split(' ')[1];
    if (!field) continue;
    // /proc/self/mounts escapes space, tab, newline and backslash as \ooo
    const mp = field.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(Number.parseInt(o, 8)));
    if (mp === base || mp.startsWith(`${base}/`)) out.push(mp);
  }
  return out;
}

/** Unmounts a list in reverse order, ignoring what is not mounted. */
export async function umountAll(dirs: string[]): Promise<void> {
  for (const d of [...dirs].reverse()) await umount(d);
}

/** A loop device for a file (read-write unless ro), e.g. for a test store. */
export async function attachLoop(file: string, opts: { readonly?: boolean; partscan?: boolean; offset?: number; sizelimit?: number } = {}): Promise<string> {
  const args = ['--find', '--show'];
  if (opts.readonly) args.push('--read-only');
  if (opts.partscan) args.push('--partscan');
  if (opts.offset !== undefined) args.push('--offset', String(opts.offset));
  if (opts.sizelimit !== undefined) args.push('--sizelimit', String(opts.sizelimit));
  args.push(file);
  const r = await run('losetup', args);
  return r.stdout.trim();
}

export async function detachLoop(dev: string): Promise<void> {
  await run('losetup', ['-d', dev], { reject: false });
}

/**
 * Mounts one partition of a disk image file (a loop device at the partition's offset),
 * runs fn on the mount point, then unmounts and detaches whatever happens.
 */
export async function withPartitionMounted<T>(image: string, part: { start: number; size: number }, dir: string, fn: (dir: string) => Promise<T>, readonly = false): Promise<T> {
  const dev = await attachLoop(image, { offset: part.start, sizelimit: part.size, readonly });
  try {
    return await withDeviceMounted(dev, dir, fn, readonly);
  } finally {
    await detachLoop(dev);
  }
}

/** Mounts a block device on `dir`, runs fn on it, then syncs and unmounts whatever happens. */
export async function withDeviceMounted<T>(dev: string, dir: string, fn: (dir: string) => Promise<T>, readonly = false): Promise<T> {
  await mountDevice(dev, dir, readonly ? ['ro'] : []);
  try {
    return await fn(dir);
  } finally {
    await run('sync', []);
    await umount(dir);
  }
}
