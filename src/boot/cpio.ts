/**
 * A pure newc ("070701") cpio writer, the format the kernel unpacks as an initramfs.
 *
 * Written here rather than by running `cpio` so that device nodes (/dev/console,
 * /dev/null) can be created without root and the output is reproducible: entries are
 * sorted by path (parents first), missing parent directories are added, every entry is
 * owned by 0:0, has the same mtime (SOURCE_DATE_EPOCH or 0) and a fixed inode number
 * (its position in the sorted list).
 */
import { StackbootError } from '../sys/index.js';

export type CpioEntryType = 'file' | 'dir' | 'symlink' | 'char' | 'block';

export interface CpioEntry {
  /** Path inside the archive, relative ("bin/busybox"); a leading "/" or "./" is dropped. */
  path: string;
  type: CpioEntryType;
  /** Permission bits (e.g. 0o755); defaults: file 0o644, dir 0o755, symlink 0o777, devices 0o600. */
  mode?: number;
  /** Contents of a regular file. */
  data?: Buffer;
  /** Target of a symlink. */
  target?: string;
  /** Device numbers of a char/block node. */
  major?: number;
  minor?: number;
}

export interface CpioOptions {
  /** mtime of every entry, in seconds since the epoch (the caller's SOURCE_DATE_EPOCH); default 0. */
  mtime?: number;
}

const S_IFMT: Record<CpioEntryType, number> = {
  file: 0o100000,
  dir: 0o040000,
  symlink: 0o120000,
  char: 0o020000,
  block: 0o060000,
};

const DEFAULT_MODE: Record<CpioEntryType, number> = {
  file: 0o644,
  dir: 0o755,
  symlink: 0o777,
  char: 0o600,
  block: 0o600,
};

/** Normalizes an archive path: no leading "/" or "./", no empty or "." / ".." parts. */
export function normalizeCpioPath(p: string): string {
  const parts = p.split('/').filter((x) => x !== '' && x !== '.');
  if (parts.length === 0) throw new StackbootError('INTERNAL', `cpio: empty path ${JSON.stringify(p)}`);
  if (parts.includes('..')) throw new StackbootError('UNSAFE_ENTRY', `cpio: path escapes the archive: ${p}`);
  return parts.join('/');
}

/** Compares paths component by component so that a directory sorts right before its contents. */
function comparePaths(a: string, b: string): number {
  const pa = a.split('/');
  const pb = b.split('/');
  const n = Math.min(pa.length, pb.length);
  for (let i = 0; i < n; i++) {
    if (pa[i] !== pb[i]) return pa[i]! < pb[i]! ? -1 : 1;
  }
  return pa.length - pb.length;
}

function hex8(n: number): string {
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new StackbootError('INTERNAL', `cpio: field out of range: ${n}`);
  return n.toString(16).padStart(8, '0');
}

function pad4(n: number): number {
  return (4 - (n % 4)) % 4;
}

function header(f: {
  ino: number;
  mode: number;
  nlink: number;
  mtime: number;
  size: number;
  rmajor: number;
  rminor: number;
  namesize: number;
}): string {
  return (
    '070701' +
    hex8(f.ino) +
    hex8(f.mode) +
    hex8(0) + // uid
    hex8(0) + // gid
    hex8(f.nlink) +
    hex8(f.mtime) +
    hex8(f.size) +
    hex8(0) + // devmajor
    hex8(0) + // devminor
    hex8(f.rmajor) +
    hex8(f.rminor) +
    hex8(f.namesize) +
    hex8(0) // check
  );
}

/**
 * Sorts and completes the entries: normalizes paths, adds missing parent directories,
 * rejects duplicates (a file and a directory of the same name, two different files).
 */
export function prepareEntries(entries: readonly CpioEntry[]): CpioEntry[] {
  const byPath = new Map<string, CpioEntry>();
  for (const e of entries) {
    const p = normalizeCpioPath(e.path);
    const prev = byPath.get(p);
    if (prev) {
      if (prev.type === 'dir' && e.type === 'dir') continue;
      throw new StackbootError('INTERNAL', `cpio: duplicate entry ${p}`);
    }
    if (e.type === 'symlink' && !e.target) throw new StackbootError('INTERNAL', `cpio: symlink ${p} has no target`);
    byPath.set(p, { ...e, path: p });
  }
  for (const p of [...byPath.keys()]) {
    const parts = p.split('/');
    for (let i = 1; i < parts.length; i++) {
      const dir = parts.slice(0, i).join('/');
      const have = byPath.get(dir);
      if (!have) byPath.set(dir, { path: dir, type: 'dir' });
      else if (have.type !== 'dir') throw new StackbootError('INTERNAL', `cpio: ${dir} is not a directory but ${p} is inside it`);
    }
  }
  return [...byPath.values()].sort((a, b) => comparePaths(a.path, b.path));
}

/** Writes a complete newc archive (with its TRAILER!!!) to a Buffer. */
export function writeCpio(entries: readonly CpioEntry[], opts: CpioOptions = {}): Buffer {
  const mtime = opts.mtime ?? 0;
  const list = prepareEntries(entries);
  const chunks: Buffer[] = [];
  const zero = Buffer.alloc(4);
  let ino = 1;
  const push = (name: string, fields: Omit<Parameters<typeof header>[0], 'namesize' | 'size'>, data: Buffer) => {
    const nameBuf = Buffer.from(name + '\0', 'utf8');
    const h = Buffer.from(header({ ...fields, size: data.length, namesize: nameBuf.length }), 'ascii');
    chunks.push(h, nameBuf, zero.subarray(0, pad4(h.length + nameBuf.length)));
    if (data.length > 0) chunks.push(data, zero.subarray(0, pad4(data.length)));
  };
  for (const e of list) {
    const perm = (e.mode ?? DEFAULT_MODE[e.type]) & 0o7777;
    const mode = S_IFMT[e.type] | perm;
    let data: Buffer = Buffer.alloc(0);
    if (e.type === 'file') data = e.data ?? Buffer.alloc(0);
    else if (e.type === 'symlink') data = Buffer.from(e.target!, 'utf8');
    const dev = e.type === 'char' || e.type === 'block';
    push(e.path, { ino: ino++, mode, nlink: e.type === 'dir' ? 2 : 1, mtime, rmajor: dev ? (e.major ?? 0) : 0, rminor: dev ? (e.minor ?? 0) : 0 }, data);
  }
  push('TRAILER!!!', { ino: 0, mode: 0, nlink: 1, mtime: 0, rmajor: 0, rminor: 0 }, Buffer.alloc(0));
  return Buffer.concat(chunks);
}
