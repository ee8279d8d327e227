/**
 * Directory sources. A fast lstat walk gives the cache key (paths, types, modes, owners,
 * sizes, mtimes, link targets, device numbers) and the guards; gensquashfs -D then packs
 * the tree (xattrs kept with -x). gensquashfs 1.2 turns hard links into copies, so a
 * tree with hard links is packed through GNU tar | tar2sqfs instead, which keeps them.
 */
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { StackbootError } from '../errors.js';

export interface DirScan {
  /** sha256 over the tree's metadata */
  key: string;
  files: number;
  entries: number;
  bytes: number;
  hardlinks: number;
}

export async function scanDir(root: string, o: { devices: boolean }): Promise<DirScan> {
  const st = await fs.lstat(root).catch((e) => {
    throw new StackbootError('SOURCE', `source directory ${root} does not exist`, { cause: e });
  });
  if (!st.isDirectory()) throw new StackbootError('SOURCE', `source ${root} is not a directory`);
  const h = createHash('sha256');
  const inodes = new Map<string, string>();
  let files = 0;
  let entries = 0;
  let bytes = 0;
  let hardlinks = 0;
  const walk = async (rel: string): Promise<void> => {
    const abs = rel ? path.join(root, rel) : root;
    let names: string[];
    try {
      names = await fs.readdir(abs);
    } catch (e) {
      throw new StackbootError('SOURCE', `cannot read directory ${abs}`, { cause: e });
    }
    names.sort();
    const stats = await Promise.all(names.map((n) => fs.lstat(path.join(abs, n), { bigint: true })));
    for (let i = 0; i < names.length; i++) {
      const n = names[i];
      const s = stats[i];
      const r = rel ? `${rel}/${n}` : n;
      entries++;
      let extra = '';
      if (s.isSymbolicLink()) extra = await fs.readlink(path.join(abs, n));
      else if (s.isCharacterDevice() || s.isBlockDevice()) {
        const whiteout = s.isCharacterDevice() && s.rdev === 0n;
        if (!whiteout && !o.devices) throw new StackbootError('UNSAFE_ENTRY', `${path.join(abs, n)}: device node in a layer that does not allow devices (set "devices": true)`);
        extra = String(s.rdev);
      } else if (s.isFile()) {
        files++;
        bytes += Number(s.size);
        if (s.nlink > 1n) {
          const id = `${s.dev}:${s.ino}`;
          const first = inodes.get(id);
          if (first) {
            hardlinks++;
            extra = `=${first}`;
          } else inodes.set(id, r);
        }
      }
      h.update(`${r}\0${s.mode}\0${s.uid}\0${s.gid}\0${s.size}\0${s.mtimeNs}\0${s.ctimeNs}\0${s.dev}:${s.ino}\0${extra}\n`);
      if (s.isDirectory()) await walk(r);
    }
  };
  h.update(`.\0${st.mode}\0${st.uid}\0${st.gid}\0${st.dev}:${st.ino}\n`);
  await walk('');
  return { key: h.digest('hex'), files, entries, bytes, hardlinks };
}
