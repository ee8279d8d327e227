/**
 * Reading a built layer back without mounting it (no root): squashfs-tools-ng's
 * rdsquashfs (an entry's type, its xattrs, a file's bytes) and sqfs2tar (a folder as a
 * tar stream, unpacked by GNU tar). The stack's own kernel is found this way.
 */
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { run, spawn, StackbootError, makeDir } from '../sys/index.js';

export type ImageEntryType = 'file' | 'dir' | 'symlink' | 'char' | 'block' | 'fifo' | 'socket';

export interface ImageEntry {
  type: ImageEntryType;
  /** regular files */
  size?: number;
  /** character and block devices: "major:minor" */
  device?: string;
}

const TYPES: Record<string, ImageEntryType> = {
  file: 'file',
  directory: 'dir',
  'symbolic link': 'symlink',
  'character device': 'char',
  'block device': 'block',
  'named pipe': 'fifo',
  fifo: 'fifo',
  socket: 'socket',
};

/** Parses `rdsquashfs -s` output (pure). */
export function parseStat(text: string): ImageEntry | null {
  const t = /^Inode type: (.+)$/m.exec(text)?.[1]?.trim().replace(/^extended /, '');
  const type = t ? TYPES[t] : undefined;
  if (!type) return null;
  const e: ImageEntry = { type };
  const size = /^File size: (\d+)$/m.exec(text)?.[1];
  if (type === 'file' && size) e.size = Number(size);
  const dev = /^Device number: (\d+):(\d+)/m.exec(text);
  if (dev) e.device = `${dev[1]}:${dev[2]}`;
  return e;
}

/** The entry at PATH in IMAGE (links not followed), or null when there is none. */
export async function statInImage(image: string, p: string): Promise<ImageEntry | null> {
  const r = await run('rdsquashfs', ['-s', p, image], { reject: false });
  if (r.exitCode !== 0) {
    if (/no such file or directory|not a directory/i.test(r.stderr)) return null;
    throw new StackbootError('TOOL', `rdsquashfs cannot read ${p} in ${image}: ${r.stderr.trim().split('\n').at(-1) ?? ''}`);
  }
  return parseStat(r.stdout);
}

/** The xattr names at PATH in IMAGE (`name=value` lines of rdsquashfs -x, names only). */
export async function xattrNamesInImage(image: string, p: string): Promise<string[]> {
  const r = await run('rdsquashfs', ['-x', p, image], { reject: false });
  if (r.exitCode !== 0) return [];
  return r.stdout.split('\n').filter(Boolean).map((l) => l.split('=')[0]!.trim());
}

/** The sha256 and size of the regular file PATH in IMAGE, streamed (a kernel, an initrd). */
export async function hashInImage(image: string, p: string): Promise<{ digest: string; size: number }> {
  const child = spawn('rdsquashfs', ['-c', p, image]);
  const h = createHash('sha256');
  let size = 0;
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  child.stdout.on('data', (d: Buffer) => {
    h.update(d);
    size += d.length;
  });
  const r = await child.done;
  if (r.exitCode !== 0) throw new StackbootError('TOOL', `rdsquashfs cannot read ${p} in ${image}: ${stderr.trim().split('\n').at(-1) || `exit ${r.exitCode ?? r.signal}`}`);
  return { digest: h.digest('hex'), size };
}

/** The text of the regular file PATH in IMAGE (a small one: a kernel's config). */
export async function readTextInImage(image: string, p: string): Promise<string> {
  const r = await run('rdsquashfs', ['-c', p, image], { reject: false });
  if (r.exitCode !== 0) throw new StackbootError('TOOL', `rdsquashfs cannot read ${p} in ${image}: ${r.stderr.trim().split('\n').at(-1) || `exit ${r.exitCode}`}`);
  return r.stdout;
}

/** Unpacks the folder PATH of IMAGE (with its path) under DEST: sqfs2tar -d PATH -k | tar -x. */
export async function extractFromImage(image: string, p: string, dest: string): Promise<void> {
  await makeDir(dest);
  const sub = p.replace(/^\/+/, '');
  const r = await run('bash', ['-c', 'set -o pipefail; sqfs2tar -d "$1" -k "$2" | tar -x -C "$3" --no-same-owner', 'extract', sub, image, dest], { reject: false });
  if (r.exitCode !== 0) throw new StackbootError('TOOL', `cannot unpack ${p} from ${image}: ${r.stderr.trim().split('\n').at(-1) ?? `exit ${r.exitCode}`}`);
  // tar fails on an empty stream only sometimes: the folder must be there
  await fs.stat(`${dest}/${sub}`).catch((e) => {
    throw new StackbootError('TOOL', `cannot unpack ${p} from ${image}: nothing came out`, { cause: e });
  });
}
