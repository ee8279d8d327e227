/**
 * The layer cache, its one owner: lookup and store (for layer.ts), size and pruning. It is
 *
 *   keys/<key>            the digest of the layer built from those inputs, and the
 *                         layer file's size/mtime/inode when stored; its mtime is the
 *                         last time a build used it (a hit touches it)
 *   layers/<digest>.sqfs  the layer files (build outputs are hard links to them)
 *
 * Nothing else reads it, so any entry can go: a build just compresses that layer again.
 * Pruning removes the least recently used layers first, with their keys, then what no
 * longer belongs to anything (keys of a missing layer, layers no key names, temporary
 * files a killed build left). Output folders keep their hard links.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { StackbootError, sha256File, makeDir, writeDurable, placeDurable } from '../sys/index.js';

export interface CacheLayer {
  digest: string;
  bytes: number;
  /** keys that name it */
  keys: string[];
  /** last use: the newest mtime of its keys (ms) */
  used: number;
}

export interface CacheUsage {
  dir: string;
  layers: CacheLayer[];
  bytes: number;
  /** keys/<key> whose layer file is gone, layers/ files no key names, temporary files */
  stray: { file: string; bytes: number }[];
}

const KEY = /^[0-9a-f]{64}$/;
const LAYER = /^([0-9a-f]{64})\.sqfs$/;
/** a temporary file younger than this may be a running build's */
const TMP_AGE_MS = 60 * 60 * 1000;

const keyFile = (dir: string, key: string): string => path.join(dir, 'keys', key);
const layerFile = (dir: string, digest: string): string => path.join(dir, 'layers', `${digest}.sqfs`);

/**
 * What a cache entry records of its layer file besides the digest: size, mtime and inode
 * as they were when it was stored. Output layers are hard links to the cache's files, so
 * a write into one (a user's `>>`, a flash onto it) changes the cached file too: the stat
 * no longer matches, and the file is hashed before it is served again.
 */
function statLine(st: { size: number; mtimeMs: number; ino: number }): string {
  return `${st.size} ${st.mtimeMs} ${st.ino}`;
}

async function writeKey(dir: string, key: string, digest: string, file: string): Promise<void> {
  await writeDurable(keyFile(dir, key), `${digest}\n${statLine(await fs.stat(file))}\n`);
}

/** The cached layer built from `key`'s inputs, or null; a hit is marked used (for prune). */
export async function cacheLookup(dir: string, key: string): Promise<{ digest: string; file: string } | null> {
  const kf = keyFile(dir, key);
  const [digest = '', recorded = ''] = (await fs.readFile(kf, 'utf8').catch(() => '')).trim().split('\n');
  if (!KEY.test(digest)) return null;
  const file = layerFile(dir, digest);
  const st = await fs.stat(file).catch(() => null);
  if (!st) return null;
  if (statLine(st) !== recorded) {
    // changed since it was stored (or an entry from before the stat was recorded)
    if ((await sha256File(file)) !== digest) {
      await fs.rm(file, { force: true });
      await fs.rm(kf, { force: true });
      return null;
    }
    await writeKey(dir, key, digest, file);
  } else {
    // its last use, for prune
    const now = new Date();
    await fs.utimes(kf, now, now).catch(() => {});
  }
  return { digest, file };
}

/** Files a layer just built and hashed under `key`. */
export async function cacheStore(dir: string, key: string, digest: string, file: string): Promise<void> {
  await makeDir(path.join(dir, 'keys'));
  await makeDir(path.join(dir, 'layers'));
  const target = layerFile(dir, digest);
  // always the file just built and hashed: one found under that name may have been
  // written into since (it is not trusted without its key's stat)
  await placeDurable(file, target);
  await writeKey(dir, key, digest, target);
}

async function list(dir: string): Promise<string[]> {
  return fs.readdir(dir).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return [] as string[];
    throw new StackbootError('IO', `cannot read ${dir}`, { cause: e });
  });
}

/** What the cache in `dir` holds. */
export async function cacheUsage(dir: string, now = Date.now()): Promise<CacheUsage> {
  const st = await fs.stat(dir).catch(() => null);
  if (st && !st.isDirectory()) throw new StackbootError('USAGE', `${dir} is not a folder`);
  const layers = new Map<string, CacheLayer>();
  const born = new Map<string, number>();
  const stray: CacheUsage['stray'] = [];
  for (const n of await list(path.join(dir, 'layers'))) {
    const file = path.join(dir, 'layers', n);
    const s = await fs.lstat(file).catch(() => null);
    if (!s) continue;
    const m = LAYER.exec(n);
    if (m && s.isFile()) {
      layers.set(m[1], { digest: m[1], bytes: s.size, keys: [], used: 0 });
      born.set(m[1], s.ctimeMs);
    }
    else if (now - s.mtimeMs > TMP_AGE_MS) stray.push({ file, bytes: s.size });
  }
  for (const n of await list(path.join(dir, 'keys'))) {
    const file = path.join(dir, 'keys', n);
    const s = await fs.lstat(file).catch(() => null);
    if (!s) continue;
    if (!KEY.test(n)) {
      if (now - s.mtimeMs > TMP_AGE_MS) stray.push({ file, bytes: s.size });
      continue;
    }
    const digest = (await fs.readFile(file, 'utf8').catch(() => '')).split('\n')[0];
    const l = layers.get(digest);
    if (!l) {
      stray.push({ file, bytes: s.size });
      continue;
    }
    l.keys.push(n);
    l.used = Math.max(l.used, s.mtimeMs);
  }
  for (const l of layers.values()) {
    // a layer no key names yet may be a running build's, between its link and its key
    if (l.keys.length === 0 && now - born.get(l.digest)! > TMP_AGE_MS) {
      stray.push({ file: layerFile(dir, l.digest), bytes: l.bytes });
      layers.delete(l.digest);
    }
  }
  const kept = [...layers.values()].filter((l) => l.keys.length > 0).sort((a, b) => b.used - a.used || a.digest.localeCompare(b.digest));
  return { dir, layers: kept, bytes: kept.reduce((n, l) => n + l.bytes, 0), stray };
}

export interface PrunePlan {
  dir: string;
  /** layers removed, least recently used first, with why */
  remove: (CacheLayer & { why: string })[];
  stray: CacheUsage['stray'];
  /** bytes freed, and left */
  freed: number;
  left: number;
}

/**
 * Which layers go: every one unused for more than `olderThanDays`, then the least
 * recently used until the rest fits in `maxBytes`; always the stray files.
 */
export async function planPrune(dir: string, o: { maxBytes?: number; olderThanDays?: number; now?: number }): Promise<PrunePlan> {
  const now = o.now ?? Date.now();
  const u = await cacheUsage(dir, now);
  const remove: PrunePlan['remove'] = [];
  let left = u.bytes;
  // least recently used first
  for (const l of [...u.layers].reverse()) {
    const days = (now - l.used) / 86_400_000;
    let why = '';
    if (o.olderThanDays !== undefined && days > o.olderThanDays) why = `unused for ${Math.floor(days)} days`;
    else if (o.maxBytes !== undefined && left > o.maxBytes) why = 'least recently used, over the size';
    if (!why) continue;
    remove.push({ ...l, why });
    left -= l.bytes;
  }
  const freed = remove.reduce((n, l) => n + l.bytes, 0) + u.stray.reduce((n, s) => n + s.bytes, 0);
  return { dir, remove, stray: u.stray, freed, left };
}

/** Carries out a plan: each layer's keys first (a build that finds no key builds again), then the file. */
export async function prune(plan: PrunePlan): Promise<void> {
  for (const l of plan.remove) {
    for (const k of l.keys) await fs.rm(keyFile(plan.dir, k), { force: true });
    await fs.rm(layerFile(plan.dir, l.digest), { force: true });
  }
  for (const s of plan.stray) await fs.rm(s.file, { force: true });
}
