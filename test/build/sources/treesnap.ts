/**
 * Entry-by-entry pictures of a file tree (a source tree, a mounted layer, a merged
 * overlay, an unpacked image) for the conformance tests: type, mode bits, owner, size,
 * content hash, symlink target, device numbers, user.* xattrs and hard-link groups.
 * mtimes are left out: a layer sets every mtime to SOURCE_DATE_EPOCH.
 */
import { createHash } from 'node:crypto';
import { createReadStream, promises as fs } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { execFile } from 'node:child_process';
import { parseRecipe } from '../../../src/build/recipe.js';
import { buildStack, type BuildResult } from '../../../src/build/stack.js';

export interface EntryPicture {
  type: string;
  mode: string;
  owner: string;
  size?: number;
  sha256?: string;
  link?: string;
  rdev?: string;
  xattrs?: string;
  /** the first path (in sorted order) of the hard-link group this file belongs to */
  linkedTo?: string;
}

const kind = (st: import('node:fs').Stats): string =>
  st.isFile() ? 'file' : st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'symlink' : st.isCharacterDevice() ? 'char' : st.isBlockDevice() ? 'block' : st.isFIFO() ? 'fifo' : st.isSocket() ? 'socket' : '?';

async function sha(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const c of createReadStream(file)) h.update(c as Buffer);
  return h.digest('hex');
}

/** user.* xattrs of many files in one getfattr call: path -> "name=0xhex;…" */
async function userXattrs(files: string[]): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (let i = 0; i < files.length; i += 200) {
    const r = await promisify(execFile)('getfattr', ['--absolute-names', '-h', '-d', '-e', 'hex', '-m', '^user\\.', ...files.slice(i, i + 200)], { maxBuffer: 64 << 20 }).catch((e: { stdout?: string }) => ({ stdout: e.stdout ?? '' }));
    for (const block of r.stdout.split('\n\n')) {
      const lines = block.split('\n').filter(Boolean);
      if (!lines[0]?.startsWith('# file: ')) continue;
      out.set(lines[0].slice(8), lines.slice(1).sort().join(';'));
    }
  }
  return out;
}

/** The picture of every entry under `root` (the root itself left out), by relative path. */
export async function pictureTree(root: string, o: { skip?: (rel: string) => boolean } = {}): Promise<Map<string, EntryPicture>> {
  const rels: string[] = [];
  const walk = async (rel: string): Promise<void> => {
    for (const name of (await fs.readdir(path.join(root, rel))).sort()) {
      const r = rel ? `${rel}/${name}` : name;
      if (o.skip?.(r)) continue;
      rels.push(r);
      const st = await fs.lstat(path.join(root, r));
      if (st.isDirectory()) await walk(r);
    }
  };
  await walk('');
  rels.sort();
  const xattrs = await userXattrs(rels.map((r) => path.join(root, r)));
  const groups = new Map<string, string>();
  const pics = new Map<string, EntryPicture>();
  for (const r of rels) {
    const abs = path.join(root, r);
    const st = await fs.lstat(abs);
    const p: EntryPicture = { type: kind(st), mode: (st.mode & 0o7777).toString(8), owner: `${st.uid}:${st.gid}` };
    if (st.isFile()) {
      p.size = st.size;
      p.sha256 = await sha(abs);
      if (st.nlink > 1) {
        const key = `${st.dev}:${st.ino}`;
        if (!groups.has(key)) groups.set(key, r);
        p.linkedTo = groups.get(key);
      }
    }
    if (st.isSymbolicLink()) p.link = await fs.readlink(abs);
    if (st.isCharacterDevice() || st.isBlockDevice()) p.rdev = `${Math.floor(st.rdev / 256) & 0xfff}:${(st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00)}`;
    const x = xattrs.get(abs);
    if (x) p.xattrs = x;
    pics.set(r, p);
  }
  return pics;
}

/** The differences between two pictures, as readable lines (none when they are equal). */
export function differences(want: Map<string, EntryPicture>, got: Map<string, EntryPicture>, o: { ignore?: (keyof EntryPicture)[] } = {}): string[] {
  const out: string[] = [];
  const clean = (p: EntryPicture) => {
    const c: Record<string, unknown> = { ...p };
    for (const k of o.ignore ?? []) delete c[k];
    return JSON.stringify(c, Object.keys(c).sort());
  };
  for (const [k, w] of want) {
    const g = got.get(k);
    if (!g) out.push(`missing ${k}`);
    else if (clean(w) !== clean(g)) out.push(`${k}: want ${clean(w)} got ${clean(g)}`);
  }
  for (const k of got.keys()) if (!want.has(k)) out.push(`extra ${k}`);
  return out;
}

/** Builds a stack of the given layers with the real build code (no cache, epoch 0, amd64). */
export async function buildLayers(dir: string, layers: unknown[], out = path.join(dir, 'out')): Promise<BuildResult> {
  const f = path.join(dir, 'recipe.json');
  await fs.writeFile(f, JSON.stringify({ name: 'conformance', version: '1', compatible: 'conformance', layers }));
  const r = parseRecipe(await fs.readFile(f, 'utf8'), f, { arch: 'amd64' });
  return buildStack(r, { outDir: out, cacheDir: null, epoch: 0, arch: 'amd64', uid: process.getuid?.(), progress: () => {} });
}
