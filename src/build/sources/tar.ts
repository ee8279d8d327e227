/**
 * Tar (and OCI layer) sources: a guarded, normalised, deduplicated re-emission of a tar
 * archive, ready for tar2sqfs. Two passes over the file keep memory small: the first
 * reads only headers and decides what is kept, the second streams the data.
 *
 * Guards (each refuses the whole layer with StackbootError('UNSAFE_ENTRY')):
 * absolute paths, `..` components, paths through a symlink of the same archive, hard
 * links to a path outside the tree or not in it, names longer than 255 bytes (or paths
 * longer than 4095), unsupported entry types, and device nodes unless the layer allows
 * them (0/0 character devices, the overlay whiteouts, are always allowed).
 *
 * With whiteouts 'oci', `.wh.<name>` becomes a 0/0 character device `<name>` and
 * `.wh..wh..opq` makes its directory opaque (xattr trusted.overlay.opaque=y). A whiteout
 * hides only the lower layers' file (OCI image spec, "Whiteouts"): an entry of the same
 * name in the same layer stays, whatever their order, and a folder there becomes opaque
 * (the lower one is deleted, this layer's contents replace it).
 *
 * OCI layers are applied as the image spec's changeset rules say, entry after entry, as
 * umoci and container runtimes unpack them: a later entry replaces an earlier one of the
 * same path, and a file, symlink or device that replaces a folder of the same layer
 * takes the folder's earlier contents with it (a folder made again after that is
 * opaque: the lower one was deleted). Whiteouts and opaque markers below a path that is
 * not a folder at the end of the layer (`umoci repack` writes `usr` as a file and
 * whiteouts under it) are dropped: the file already hides everything below it.
 *
 * A folder an OCI layer needs but does not hold (`umoci repack` writes `srv/data/b`
 * without `srv/`) takes the mode and owner the image's lower layers give it
 * (`lowerFolders`), as umoci and containerd make missing parents; else 0755 0:0. Without
 * it the layer's implicit folder, on top in the overlay, would hide the lower one's.
 *
 * Entries must make one tree: a kept entry whose parent is, in the same archive, a file,
 * a symlink or a device (in a plain tar a later entry replaced the folder; in any tar
 * an entry that goes through a file) is refused, naming both.
 */
import type { Readable } from 'node:stream';
import { StackbootError } from '../../sys/index.js';
import { walkTar, type EntryType, type OutEntry, type TarEntryMeta, type TarWriter } from '../../format/index.js';

export interface TarPlanOptions {
  whiteouts: 'oci' | 'none';
  devices: boolean;
  owner: 'keep' | 'root';
  /** mtime of every entry (SOURCE_DATE_EPOCH or 0) */
  epoch: number;
  /** OCI: the folders the image's lower layers make, for the folders this layer needs but lacks */
  lowerFolders?: FolderAttrs;
}

/** Mode and owner of each folder of a merged image so far, by normalised path. */
export type FolderAttrs = Map<string, { mode: number; uid: number; gid: number }>;

interface Kept {
  entry: OutEntry;
}

export interface TarPlan {
  file: string;
  /** archive index -> entry to emit in its place */
  keep: Map<number, Kept>;
  /** archive index -> synthesized entries emitted before it (opaque dirs with no entry) */
  before: Map<number, OutEntry[]>;
  /** entries to emit at the end */
  tail: OutEntry[];
  count: number;
  dataBytes: number;
}

const OPAQUE = 'trusted.overlay.opaque';
const WH = '.wh.';
const OPQ = '.wh..wh..opq';

function unsafe(file: string, path: string, why: string): never {
  throw new StackbootError('UNSAFE_ENTRY', `${file}: entry ${JSON.stringify(path)}: ${why}`);
}

/** Normalises a tar path: strips "./" and trailing "/", refuses escapes. "" is the root. */
export function normalizeTarPath(raw: string, file = 'tar'): string {
  if (raw.includes('\0')) unsafe(file, raw, 'NUL in name');
  if (raw.startsWith('/')) unsafe(file, raw, 'absolute path');
  const parts = raw.split('/').filter((p) => p !== '' && p !== '.');
  for (const p of parts) {
    if (p === '..') unsafe(file, raw, 'path escapes the layer root ("..")');
    if (Buffer.byteLength(p) > 255) unsafe(file, raw, 'a name is longer than 255 bytes');
  }
  const out = parts.join('/');
  if (Buffer.byteLength(out) > 4095) unsafe(file, raw, 'path longer than 4095 bytes');
  return out;
}

/** squashfs stores only user., trusted. and security. xattrs (system.* ACLs are dropped). */
export function storableXattrs(x: Record<string, Buffer>): Record<string, Buffer> {
  const out: Record<string, Buffer> = {};
  for (const [k, v] of Object.entries(x)) if (/^(user|trusted|security)\./.test(k)) out[k] = v;
  return out;
}

function parentOf(p: string): string {
  const i = p.lastIndexOf('/');
  return i < 0 ? '' : p.slice(0, i);
}

/** First pass: guards, whiteout conversion, last-entry-wins deduplication. */
export async function planTar(file: string, o: TarPlanOptions): Promise<TarPlan> {
  const byPath = new Map<string, { index: number; entry: OutEntry }>();
  const symlinks = new Set<string>();
  const opaqueDirs = new Map<string, number>(); // dir -> index of the .wh..wh..opq marker
  const whiteouts = new Set<string>(); // paths a .wh. entry deletes in the lower layers
  const hardlinks: { index: number; path: string; target: string }[] = [];
  const placeholders = new Set<string>(); // paths whose entry is a whiteout's 0/0 device
  const parents = new Set<string>(); // every folder some entry was seen under
  const replaced = new Set<string>(); // OCI: paths a non-folder took in this layer
  let count = 0;
  const oci = o.whiteouts === 'oci';

  const noteParents = (p: string) => {
    for (let cur = parentOf(p); cur !== '' && !parents.has(cur); cur = parentOf(cur)) parents.add(cur);
  };
  /** OCI: a non-folder at `p` removes what this layer put below it so far. */
  const dropBelow = (p: string) => {
    if (!parents.has(p)) return;
    const under = (x: string) => x.startsWith(`${p}/`);
    for (const k of [...byPath.keys()]) if (under(k)) byPath.delete(k);
    for (const set of [symlinks, whiteouts, placeholders, parents, replaced]) for (const k of [...set]) if (under(k)) set.delete(k);
    for (const k of [...opaqueDirs.keys()]) if (k === p || under(k)) opaqueDirs.delete(k);
    parents.delete(p);
  };

  const checkNoSymlinkPrefix = (p: string, raw: string) => {
    let cur = parentOf(p);
    while (cur !== '') {
      if (symlinks.has(cur)) unsafe(file, raw, `path goes through the symlink ${cur}`);
      cur = parentOf(cur);
    }
  };

  await walkTar(file, {
    onEntry(m: TarEntryMeta) {
      count++;
      if (m.type.startsWith('unsupported:')) unsafe(file, m.rawPath, `unsupported entry type ${m.type.slice(12)}`);
      const type = m.type as EntryType;
      let p = normalizeTarPath(m.rawPath, file);
      checkNoSymlinkPrefix(p, m.rawPath);
      const base = p.slice(p.lastIndexOf('/') + 1);
      const uid = o.owner === 'root' ? 0 : m.uid;
      const gid = o.owner === 'root' ? 0 : m.gid;
      if (o.whiteouts === 'oci' && base.startsWith(WH)) {
        if (base === OPQ) {
          opaqueDirs.set(parentOf(p), m.index);
          noteParents(p);
          return;
        }
        if (base.startsWith(`${WH}${WH}`)) return; // reserved OCI names: dropped
        const name = base.slice(WH.length);
        if (name === '' || name === '.' || name === '..') unsafe(file, m.rawPath, 'a whiteout must name a file (.wh.<name>)');
        const target = (parentOf(p) ? parentOf(p) + '/' : '') + name;
        normalizeTarPath(target, file);
        whiteouts.add(target);
        noteParents(target);
        // this layer's own entry of that name, seen before, stays (see above)
        if (!byPath.has(target)) {
          byPath.set(target, { index: m.index, entry: { path: target, type: 'char', mode: 0, uid: 0, gid: 0, mtime: o.epoch, devmajor: 0, devminor: 0 } });
          placeholders.add(target);
        }
        return;
      }
      if (p === '') {
        if (type !== 'dir') unsafe(file, m.rawPath, 'the root must be a directory');
        p = '.';
      }
      if ((type === 'char' || type === 'block') && !(type === 'char' && m.devmajor === 0 && m.devminor === 0) && !o.devices) {
        unsafe(file, m.rawPath, `device node (${type} ${m.devmajor}:${m.devminor}) in a layer that does not allow devices (set "devices": true)`);
      }
      const entry: OutEntry = {
        path: p,
        type,
        mode: m.mode,
        uid,
        gid,
        mtime: o.epoch,
        size: type === 'file' ? m.size : 0,
        devmajor: m.devmajor,
        devminor: m.devminor,
        xattrs: storableXattrs(m.xattrs),
      };
      if (type === 'symlink') {
        if (!m.linkpath) unsafe(file, m.rawPath, 'symlink without a target');
        entry.linkpath = m.linkpath;
        symlinks.add(p);
      } else symlinks.delete(p);
      if (type === 'hardlink') {
        if (!m.linkpath) unsafe(file, m.rawPath, 'hard link without a target');
        if (m.linkpath.startsWith('/')) unsafe(file, m.rawPath, `hard link to an absolute path ${m.linkpath} (outside the tree)`);
        let t: string;
        try {
          t = normalizeTarPath(m.linkpath, file);
        } catch (e) {
          // the error is the entry's: name it, and its target
          unsafe(file, m.rawPath, `hard link to ${JSON.stringify(m.linkpath)}: ${String((e as Error).message).replace(/^.*: entry ".*?": /, '')}`);
        }
        entry.linkpath = t;
        hardlinks.push({ index: m.index, path: p, target: t });
      }
      if (oci && type !== 'dir') {
        dropBelow(p);
        replaced.add(p);
      }
      byPath.set(p, { index: m.index, entry });
      placeholders.delete(p);
      noteParents(p);
    },
  });

  if (oci) {
    const belowNonFolder = (p: string): boolean => {
      for (let cur = parentOf(p); cur !== ''; cur = parentOf(cur)) {
        const e = byPath.get(cur);
        if (e && e.entry.type !== 'dir' && !placeholders.has(cur)) return true;
      }
      return false;
    };
    // whiteouts and opaque markers under a file, symlink or device of this layer: dropped
    for (const w of [...whiteouts]) {
      if (!belowNonFolder(w)) continue;
      whiteouts.delete(w);
      if (placeholders.delete(w)) byPath.delete(w);
    }
    for (const [dir] of [...opaqueDirs]) {
      const e = byPath.get(dir === '' ? '.' : dir);
      if (belowNonFolder(dir) || (e && e.entry.type !== 'dir' && !placeholders.has(dir))) opaqueDirs.delete(dir);
    }
    // a folder made again after a non-folder took its path replaces the lower one
    for (const p of replaced) {
      const e = byPath.get(p);
      if (e && e.entry.type === 'dir') opaqueDirs.set(p, opaqueDirs.get(p) ?? e.index);
    }
  }

  // Hard links must point at a regular file that the archive keeps.
  for (const h of hardlinks) {
    const kept = byPath.get(h.path);
    if (!kept || kept.index !== h.index) continue;
    const t = byPath.get(h.target);
    if (!t) unsafe(file, h.path, `hard link to ${h.target}, which is not in the archive`);
    if (t.entry.type !== 'file') unsafe(file, h.path, `hard link to ${h.target}, which is a ${t.entry.type}, not a file`);
    if (t.index > h.index) unsafe(file, h.path, `hard link to ${h.target}, which comes later in the archive`);
  }
  // A whiteout with entries of this layer below it: the folder is deleted in the lower
  // layers and made again here, an opaque folder (emitted where the whiteout was).
  const remake = (dir: string): void => {
    for (let cur = dir; cur !== ''; cur = parentOf(cur)) {
      const e = byPath.get(cur);
      if (e && whiteouts.has(cur) && e.entry.type === 'char' && e.entry.mode === 0) e.entry = { path: cur, type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: o.epoch };
    }
  };
  for (const [p] of byPath) remake(parentOf(p));
  for (const [dir] of opaqueDirs) remake(dir);
  // Every kept entry's parents are folders: not a symlink (a symlink that replaced a dir
  // later), nor a file or device (a later entry replaced the folder, or an entry under a
  // file).
  for (const [p] of byPath) {
    for (let cur = parentOf(p); cur !== ''; cur = parentOf(cur)) {
      const e = byPath.get(cur);
      if (!e || e.entry.type === 'dir') continue;
      if (e.entry.type === 'symlink') unsafe(file, p, `path goes through the symlink ${cur}`);
      unsafe(file, p, `its parent ${cur} is a ${e.entry.type === 'char' || e.entry.type === 'block' ? 'device' : e.entry.type} in the same archive, not a folder`);
    }
  }
  // A folder of this layer that a whiteout of the same layer names is opaque.
  for (const w of whiteouts) {
    const e = byPath.get(w);
    if (e && e.entry.type === 'dir') opaqueDirs.set(w, opaqueDirs.get(w) ?? e.index);
  }

  const keep = new Map<number, Kept>();
  let dataBytes = 0;
  for (const [, v] of byPath) {
    keep.set(v.index, { entry: v.entry });
    if (v.entry.type === 'file') dataBytes += v.entry.size ?? 0;
  }
  const before = new Map<number, OutEntry[]>();
  const tail: OutEntry[] = [];
  // a folder this layer needs and lacks: as the lower layers have it (0755 0:0 if they do not)
  const lower = (dir: string) => {
    const l = o.lowerFolders?.get(dir);
    return l ? { mode: l.mode, uid: o.owner === 'root' ? 0 : l.uid, gid: o.owner === 'root' ? 0 : l.gid } : { mode: 0o755, uid: 0, gid: 0 };
  };
  for (const [dir, markerIndex] of opaqueDirs) {
    const key = dir === '' ? '.' : dir;
    const e = byPath.get(key);
    if (e) {
      if (e.entry.type !== 'dir') unsafe(file, `${dir}/${OPQ}`, `opaque marker inside ${dir}, which is not a directory`);
      e.entry.xattrs = { ...(e.entry.xattrs ?? {}), [OPAQUE]: Buffer.from('y') };
    } else {
      const synth: OutEntry = { path: key, type: 'dir', ...lower(dir), mtime: o.epoch, xattrs: { [OPAQUE]: Buffer.from('y') } };
      // emit it where its marker was, so it precedes anything inside it that follows
      const list = before.get(markerIndex) ?? [];
      list.push(synth);
      before.set(markerIndex, list);
    }
  }
  if (o.lowerFolders?.size) {
    const made = new Set([...opaqueDirs.keys()].filter((d) => !byPath.has(d === '' ? '.' : d)));
    const implicit = new Set<string>();
    for (const [p] of byPath) for (let cur = parentOf(p); cur !== '' && !byPath.has(cur) && !made.has(cur) && !implicit.has(cur); cur = parentOf(cur)) implicit.add(cur);
    // ahead of everything (parents first), so they precede what is inside them
    const first = [...implicit].filter((d) => o.lowerFolders!.has(d)).sort().map((d): OutEntry => ({ path: d, type: 'dir', ...lower(d), mtime: o.epoch }));
    if (first.length) before.set(0, [...first, ...(before.get(0) ?? [])]);
  }
  return { file, keep, before, tail, count, dataBytes };
}

/**
 * The folders of the merged image once `plan`'s layer is applied over `lower`: its
 * whiteouts and non-folders remove paths (and all below), opaque folders their contents,
 * its folders (own or implicit) are set.
 */
export function foldersAfter(lower: FolderAttrs, plan: TarPlan): FolderAttrs {
  const out: FolderAttrs = new Map(lower);
  // every folder's parents are in the map too: a path not in it has nothing below it
  const dropUnder = (p: string, self: boolean) => {
    if (p !== '' && !out.has(p)) return;
    if (self) out.delete(p);
    const pre = p === '' ? '' : `${p}/`;
    for (const k of [...out.keys()]) if (k.startsWith(pre) && k !== p) out.delete(k);
  };
  const entries = [...plan.keep.values()].map((k) => k.entry).concat([...plan.before.values()].flat());
  for (const e of entries) {
    const p = e.path === '.' ? '' : e.path;
    if (e.type !== 'dir') dropUnder(p, true);
    else if (e.xattrs?.[OPAQUE]) dropUnder(p, false);
  }
  for (const e of entries) {
    const p = e.path === '.' ? '' : e.path;
    if (e.type === 'dir' && p !== '') out.set(p, { mode: e.mode, uid: e.uid, gid: e.gid });
    // the parents the layer makes implicitly exist from now on (0755 0:0 if unknown)
    for (let cur = parentOf(p); cur !== ''; cur = parentOf(cur)) if (!out.has(cur)) out.set(cur, { mode: 0o755, uid: 0, gid: 0 });
  }
  return out;
}

/** Second pass: streams the kept entries into the writer. */
export async function emitTar(plan: TarPlan, w: TarWriter, onBytes?: (n: number) => void): Promise<void> {
  let done = 0;
  await walkTar(plan.file, {
    async onEntry(m: TarEntryMeta, body: Readable) {
      for (const s of plan.before.get(m.index) ?? []) await w.add(s);
      const k = plan.keep.get(m.index);
      if (!k) return;
      if (k.entry.type === 'file') {
        await w.add(k.entry, body);
        done += k.entry.size ?? 0;
        onBytes?.(done);
      } else await w.add(k.entry);
    },
  });
  for (const s of plan.tail) await w.add(s);
}
