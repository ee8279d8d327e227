/**
 * Directory sources. A fast lstat walk gives the cache key (paths, types, modes, owners,
 * sizes, mtimes, link targets, device numbers) and the guards; gensquashfs -D then packs
 * the tree (xattrs kept with -x). gensquashfs 1.2 turns hard links into copies with -D,
 * so a tree with hard links (or placed under a prefix) is described by a pack file from
 * the same walk (gensquashfs -F keeps links, owners and devices) when it has no xattrs,
 * and else goes through GNU tar | tar2sqfs (1.2 ignores xattrs with -F).
 *
 * The three give the same layer for the same tree: the folder's contents (the layer root,
 * and the folders of an `into` prefix, are 0755 0:0 whatever the source folder's mode),
 * and no sockets. A socket is the live end of a process that is not in the image, tar
 * and OCI layers cannot hold one (GNU tar skips them), so no builder keeps them: a tree
 * with sockets is never given to gensquashfs -D, which would.
 */
import { createHash } from 'node:crypto';
import { closeSync, lstatSync, openSync, readdirSync, readlinkSync, unlinkSync, writeSync, type Stats } from 'node:fs';
import path from 'node:path';
import { StackbootError } from '../../sys/index.js';

export interface DirScan {
  /** sha256 over the tree's metadata */
  key: string;
  files: number;
  entries: number;
  bytes: number;
  hardlinks: number;
  /** sockets, which no layer keeps (see above) */
  sockets: number;
  /**
   * The gensquashfs pack file the walk wrote (ScanOptions.packTo) and its size, or null
   * when none was asked for, or a name cannot be written in one (see ScanOptions.packTo).
   */
  pack: { path: string; bytes: number } | null;
}

export interface ScanOptions {
  /** allow device nodes (0/0 character devices, overlay whiteouts, always are) */
  devices: boolean;
  /** owners in the pack file: as in the tree, or all 0:0 */
  owner?: 'keep' | 'root';
  /** the pack file places the tree under this path (e.g. usr/lib/app) */
  into?: string;
  /**
   * Write the tree's gensquashfs pack file here during the walk: the prefix's folders, the
   * entries in walk order, hard links last (after their targets); owners and prefix as
   * above, file data read from the tree. It is written as the walk goes, through one
   * 64 KiB buffer: rendering the lines in a second pass over per-entry objects cost ~50 ms
   * and ~5 MiB on a 10k-entry root, and holding them ~1 MiB more while gensquashfs ran.
   * No file is left when a name, data path or link target has a newline or edge
   * whitespace, which a pack line cannot hold (DirScan.pack is then null).
   */
  packTo?: string;
}

function q(p: string): string {
  return p.includes('"') || p.includes('\\') ? `"${p.replace(/(["\\])/g, '\\$1')}"` : `"${p}"`;
}

/** a pack file is line-based, and its last field runs to the end of the line */
const odd = (x: string): boolean => x.includes('\n') || x !== x.trim();

const octal = (mode: number): string => (mode & 0o7777).toString(8).padStart(4, '0');

/** Lines written as UTF-8 through one buffer, to a file descriptor or kept in memory. */
class LineSink {
  private static readonly SIZE = 64 * 1024;
  private buf = Buffer.alloc(0);
  private len = 0;
  private kept: Buffer[] = [];
  /** bytes flushed so far */
  written = 0;
  /** `fd`: flush full buffers there; null: keep them (a few lines, e.g. hard links) */
  constructor(private readonly fd: number | null) {}
  push(line: string): void {
    const most = line.length * 3 + 1;
    if (this.len + most > this.buf.length) {
      this.flush();
      if (this.buf.length < most || this.fd === null) this.buf = Buffer.allocUnsafe(Math.max(most, LineSink.SIZE));
    }
    this.len += this.buf.write(line, this.len, 'utf8');
    this.buf[this.len++] = 0x0a;
  }
  flush(): void {
    if (this.len === 0) return;
    if (this.fd === null) this.kept.push(this.buf.subarray(0, this.len));
    else writeAll(this.fd, this.buf.subarray(0, this.len));
    this.written += this.len;
    this.len = 0;
  }
  /** the kept lines (fd null) */
  chunks(): Buffer[] {
    this.flush();
    return this.kept;
  }
}

function writeAll(fd: number, b: Buffer): void {
  for (let off = 0; off < b.length; ) off += writeSync(fd, b, off, b.length - off);
}

/**
 * Walks the tree once, for the cache key and the pack file. The walk is synchronous on
 * purpose: one lstat per entry through the promise API costs ~4× more (a promise, a
 * thread-pool hop and a microtask each), and for a 10k-entry root that was 0.3 s of every
 * build and of every no-change rebuild. Number stats, not bigint ones: a BigIntStats is
 * ~20 heap objects, garbage that cost ~35 ms of GC and ~5 MiB of peak heap on a 10k-entry
 * root; the times keep the sub-microsecond a double holds, which the key needs.
 */
export async function scanDir(root: string, o: ScanOptions): Promise<DirScan> {
  let st: Stats;
  try {
    st = lstatSync(root);
  } catch (e) {
    throw new StackbootError('SOURCE', `source directory ${root} does not exist`, { cause: e });
  }
  if (!st.isDirectory()) throw new StackbootError('SOURCE', `source ${root} is not a directory`);
  const top = root.endsWith('/') ? root : `${root}/`;
  const h = createHash('sha256');
  const inodes = new Map<string, string>();
  let files = 0;
  let entries = 0;
  let bytes = 0;
  let hardlinks = 0;
  let sockets = 0;
  // pack lines: paths under the prefix, data read from the root as given (absolute)
  const pre = o.into ? `/${o.into}` : '';
  const abs = path.resolve(root);
  const base = abs === '/' ? '/' : `${abs}/`;
  const rootOwner = o.owner === 'root';
  let packable = o.packTo !== undefined && !odd(abs);
  let fd: number | null = null;
  if (o.packTo !== undefined) {
    try {
      fd = openSync(o.packTo, 'w', 0o600);
    } catch (e) {
      throw new StackbootError('IO', `cannot write ${o.packTo}`, { cause: e });
    }
  }
  const lines = new LineSink(fd);
  const links = new LineSink(null);
  if (o.into && packable) {
    const parts = o.into.split('/');
    for (let i = 1; i < parts.length; i++) lines.push(`dir ${q('/' + parts.slice(0, i).join('/'))} 0755 0 0`);
    lines.push(`dir ${q(pre)} 0755 0 0`);
  }
  const walk = (rel: string): void => {
    // plain concatenation: path.join normalises every string, garbage that costs memory
    const dir = rel ? `${top}${rel}` : root;
    let names: string[];
    try {
      names = readdirSync(dir);
    } catch (e) {
      throw new StackbootError('SOURCE', `cannot read directory ${dir}`, { cause: e });
    }
    names.sort();
    for (const n of names) {
      const full = `${top}${rel ? `${rel}/` : ''}${n}`;
      let s: Stats;
      try {
        s = lstatSync(full);
      } catch (e) {
        throw new StackbootError('SOURCE', `cannot read ${full}`, { cause: e });
      }
      const r = rel ? `${rel}/${n}` : n;
      entries++;
      if (packable && odd(r)) packable = false;
      // the pack line's path and fields (only rendered while a pack file is being written)
      const p = packable ? q(`${pre}/${r}`) : '';
      const head = packable ? `${p} ${octal(s.mode)} ${rootOwner ? '0 0' : `${s.uid} ${s.gid}`}` : '';
      let extra = '';
      if (s.isSymbolicLink()) {
        extra = readlinkSync(full);
        if (packable && odd(extra)) packable = false;
        if (packable) lines.push(`slink ${head} ${extra}`);
      } else if (s.isCharacterDevice() || s.isBlockDevice()) {
        const whiteout = s.isCharacterDevice() && s.rdev === 0;
        if (!whiteout && !o.devices) throw new StackbootError('UNSAFE_ENTRY', `${full}: device node in a layer that does not allow devices (set "devices": true)`);
        extra = String(s.rdev);
        const major = (s.rdev >> 8) & 0xfff;
        const minor = (s.rdev & 0xff) | ((s.rdev >> 12) & 0xfff00);
        if (packable) lines.push(`nod ${head} ${s.isCharacterDevice() ? 'c' : 'b'} ${major} ${minor}`);
      } else if (s.isFile()) {
        files++;
        bytes += s.size;
        let first: string | undefined;
        if (s.nlink > 1) {
          const id = `${s.dev}:${s.ino}`;
          first = inodes.get(id);
          if (first) {
            hardlinks++;
            extra = `=${first}`;
          } else inodes.set(id, r);
        }
        if (packable) {
          if (first) links.push(`link ${p} 0777 0 0 ${pre}/${first}`);
          else lines.push(`file ${head} ${base}${r}`);
        }
      } else if (packable) {
        if (s.isDirectory()) lines.push(`dir ${head}`);
        else if (s.isFIFO()) lines.push(`pipe ${head}`);
      }
      if (s.isSocket()) sockets++;
      h.update(`${r}\0${s.mode}\0${s.uid}\0${s.gid}\0${s.size}\0${s.mtimeMs}\0${s.ctimeMs}\0${s.dev}:${s.ino}\0${extra}\n`);
      if (s.isDirectory()) walk(r);
    }
  };
  h.update(`.\0${st.mode}\0${st.uid}\0${st.gid}\0${st.dev}:${st.ino}\n`);
  let pack: DirScan['pack'] = null;
  try {
    walk('');
    if (fd !== null && packable) {
      lines.flush();
      for (const b of links.chunks()) writeAll(fd, b);
      pack = { path: o.packTo!, bytes: lines.written + links.written };
    }
  } catch (e) {
    if (e instanceof StackbootError) throw e;
    throw new StackbootError('IO', `cannot write ${o.packTo}`, { cause: e });
  } finally {
    if (fd !== null) {
      closeSync(fd);
      if (!pack) unlinkSync(o.packTo!);
    }
  }
  return { key: h.digest('hex'), files, entries, bytes, hardlinks, sockets, pack };
}
