/**
 * Building one layer: cache lookup by a key over the layer's inputs and options, then
 * compression into a temporary file, sha256, and a rename to `layers/<sha256>.sqfs`.
 * A failed build leaves nothing under a final name.
 */
import { createHash, randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { sha256File, StackbootError, wrap, type ProgressSink, RateMeter, makeDir, onInterrupt } from '../sys/index.js';
import { checkSquashfs, gensquashfsDir, gensquashfsPack, tar2sqfs, tarDirToSquashfs, treeHasXattrs, type SquashOptions } from './squashfs.js';
import { scanDir, type DirScan } from './sources/dir.js';
import type { FolderAttrs } from './sources/tar.js';

/** Part of every cache key: changed when a builder's output for the same input changes (2: roots 0755 0:0 and no sockets on every path). */
export const BUILDER_VERSION = 'stackboot-layer-2';

export interface LayerContext {
  /** output folder: layers go to <outDir>/layers */
  outDir: string;
  /** cache folder, or null for no cache */
  cacheDir: string | null;
  squash: SquashOptions;
  /** squashfs-tools-ng version (part of the key; a promise, so it is asked while a source is walked) */
  toolVersion: string | Promise<string>;
  progress: ProgressSink;
}

export interface BuiltLayer {
  name: string;
  digest: string;
  size: number;
  cached: boolean;
  builder: 'gensquashfs' | 'tar2sqfs' | 'cache';
  file: string;
  /** the cache key */
  key: string;
}

export function layerKey(parts: Record<string, unknown>): string {
  return createHash('sha256').update(JSON.stringify(parts)).digest('hex');
}

/** Places `src` at `dst` by hard link, or by copy across filesystems. */
async function linkOrCopy(src: string, dst: string): Promise<void> {
  const tmp = `${dst}.tmp-${randomBytes(4).toString('hex')}`;
  try {
    await fs.link(src, tmp);
  } catch {
    await fs.copyFile(src, tmp);
  }
  await fs.rename(tmp, dst);
}

/**
 * What a cache entry records of its layer file besides the digest: size, mtime and inode
 * as they were when it was stored. Output layers are hard links to the cache's files, so
 * a write into one (a user's `>>`, a flash onto it) changes the cached file too: the stat
 * no longer matches, and the file is hashed before it is served again.
 */
function statLine(st: { size: number; mtimeMs: number; ino: number }): string {
  return `${st.size} ${st.mtimeMs} ${st.ino}`;
}

async function cacheLookup(ctx: LayerContext, key: string): Promise<{ digest: string; file: string } | null> {
  if (!ctx.cacheDir) return null;
  const keyFile = path.join(ctx.cacheDir, 'keys', key);
  const [digest = '', recorded = ''] = (await fs.readFile(keyFile, 'utf8').catch(() => '')).trim().split('\n');
  if (!/^[0-9a-f]{64}$/.test(digest)) return null;
  const file = path.join(ctx.cacheDir, 'layers', `${digest}.sqfs`);
  const st = await fs.stat(file).catch(() => null);
  if (!st) return null;
  if (statLine(st) !== recorded) {
    // changed since it was stored (or an entry from before the stat was recorded)
    if ((await sha256File(file)) !== digest) {
      await fs.rm(file, { force: true });
      await fs.rm(keyFile, { force: true });
      return null;
    }
    await writeKeyFile(ctx.cacheDir, key, digest, statLine(await fs.stat(file)));
  } else {
    // its last use, for `stackboot cache prune` (src/cache.ts)
    const now = new Date();
    await fs.utimes(keyFile, now, now).catch(() => {});
  }
  return { digest, file };
}

async function writeKeyFile(cacheDir: string, key: string, digest: string, stat: string): Promise<void> {
  const tmp = path.join(cacheDir, 'keys', `.${key}.tmp-${randomBytes(4).toString('hex')}`);
  await fs.writeFile(tmp, `${digest}\n${stat}\n`);
  await fs.rename(tmp, path.join(cacheDir, 'keys', key));
}

async function cacheStore(ctx: LayerContext, key: string, digest: string, file: string): Promise<void> {
  if (!ctx.cacheDir) return;
  await makeDir(path.join(ctx.cacheDir, 'keys'));
  await makeDir(path.join(ctx.cacheDir, 'layers'));
  const target = path.join(ctx.cacheDir, 'layers', `${digest}.sqfs`);
  // always the file just built and hashed: one found under that name may have been
  // written into since (it is not trusted without its key's stat)
  await linkOrCopy(file, target);
  await writeKeyFile(ctx.cacheDir, key, digest, statLine(await fs.stat(target)));
}

/** A cache hit placed in the output folder (a fresh link: never a stale file found there). */
async function placeHit(ctx: LayerContext, name: string, key: string, hit: { digest: string; file: string }): Promise<BuiltLayer> {
  const dst = path.join(ctx.outDir, 'layers', `${hit.digest}.sqfs`);
  const [a, b] = await Promise.all([fs.stat(dst).catch(() => null), fs.stat(hit.file)]);
  if (!a || a.ino !== b.ino || a.dev !== b.dev) await linkOrCopy(hit.file, dst);
  ctx.progress({ task: `layer ${name}`, done: 1, total: 1, unit: 'items', note: 'cached', final: true });
  return { name, digest: hit.digest, size: b.size, cached: true, builder: 'cache', file: dst, key };
}

/**
 * The shared frame of every layer build: cache, temp file, digest, final rename.
 * `make` writes a squashfs to the temp path and says which builder it used.
 */
async function fullKey(ctx: LayerContext, keyParts: Record<string, unknown>): Promise<string> {
  return layerKey({ v: BUILDER_VERSION, tool: await ctx.toolVersion, squash: { ...ctx.squash, jobs: undefined }, ...keyParts });
}

/** The cached layer for these inputs, placed in the output folder; null on a miss. */
export async function cachedLayer(ctx: LayerContext, name: string, keyParts: Record<string, unknown>): Promise<BuiltLayer | null> {
  const key = await fullKey(ctx, keyParts);
  const layersDir = path.join(ctx.outDir, 'layers');
  await makeDir(layersDir);
  const hit = await cacheLookup(ctx, key);
  return hit ? placeHit(ctx, name, key, hit) : null;
}

/** Files an already built layer under another key (e.g. a run source's command). */
export async function rememberLayer(ctx: LayerContext, keyParts: Record<string, unknown>, layer: BuiltLayer): Promise<void> {
  await cacheStore(ctx, await fullKey(ctx, keyParts), layer.digest, layer.file);
}

export async function produceLayer(
  ctx: LayerContext,
  name: string,
  keyParts: Record<string, unknown>,
  make: (tmpFile: string) => Promise<'gensquashfs' | 'tar2sqfs'>,
): Promise<BuiltLayer> {
  const key = await fullKey(ctx, keyParts);
  const layersDir = path.join(ctx.outDir, 'layers');
  await makeDir(layersDir);
  const hit = await cacheLookup(ctx, key);
  if (hit) return placeHit(ctx, name, key, hit);
  const tmp = path.join(layersDir, `.tmp-${name}-${randomBytes(6).toString('hex')}.sqfs`);
  const off = onInterrupt(() => fs.rm(tmp, { force: true }));
  try {
    const builder = await make(tmp);
    await checkSquashfs(tmp);
    const digest = await sha256File(tmp);
    const size = (await fs.stat(tmp)).size;
    const dst = path.join(layersDir, `${digest}.sqfs`);
    await fs.rename(tmp, dst);
    await cacheStore(ctx, key, digest, dst);
    return { name, digest, size, cached: false, builder, file: dst, key };
  } catch (e) {
    await fs.rm(tmp, { force: true });
    throw wrap('SOURCE', `layer ${name}: build failed`, e);
  } finally {
    off();
  }
}

export interface DirLayerSpec {
  name: string;
  dir: string;
  owner: 'keep' | 'root';
  devices: boolean;
  /** place the tree's contents under this path of the layer (e.g. usr/lib/app) */
  into?: string;
}

export async function buildDirLayer(ctx: LayerContext, given: DirLayerSpec): Promise<BuiltLayer> {
  // a source that is a symlink to a folder is that folder (the walk, getfattr -h and the
  // tools all take the root as given)
  const spec = { ...given, dir: await fs.realpath(given.dir).catch(() => given.dir) };
  // getfattr (another process, so another core) runs while this process walks the tree;
  // only the pack-file path needs its answer, so it is stopped as soon as it is not needed
  const stop = new AbortController();
  let xattrs: Promise<boolean> | undefined = treeHasXattrs(spec.dir, stop.signal);
  xattrs.catch(() => {});
  const hasXattrs = () => (xattrs ??= treeHasXattrs(spec.dir));
  // the walk writes the pack file as it goes (a few ms; removed when not needed)
  const layersDir = path.join(ctx.outDir, 'layers');
  const packTo = path.join(layersDir, `.tmp-${spec.name}-${randomBytes(6).toString('hex')}.pack`);
  const off = onInterrupt(() => fs.rm(packTo, { force: true }));
  try {
    await makeDir(layersDir);
    const scan = await scanDir(spec.dir, { devices: spec.devices, owner: spec.owner, into: spec.into, packTo });
    if (direct(spec, scan)) {
      stop.abort();
      xattrs = undefined;
    }
    return await dirLayer(ctx, spec, scan, hasXattrs);
  } finally {
    stop.abort();
    await fs.rm(packTo, { force: true });
    off();
  }
}

/** gensquashfs -D takes the tree as it is: no hard links (it copies them), no prefix, no sockets (it keeps them). */
const direct = (spec: DirLayerSpec, scan: DirScan): boolean => scan.hardlinks === 0 && scan.sockets === 0 && !spec.into;

function dirLayer(ctx: LayerContext, spec: DirLayerSpec, scan: DirScan, hasXattrs: () => Promise<boolean>): Promise<BuiltLayer> {
  return produceLayer(ctx, spec.name, { source: 'dir', tree: scan.key, owner: spec.owner, devices: spec.devices, into: spec.into ?? '' }, async (tmp) => {
    // progress: the bytes the tools have read of the tree's scan.bytes
    const meter = new RateMeter(ctx.progress, `compress ${spec.name}`, scan.bytes, 'bytes');
    const onRead = (n: number) => meter.update(Math.min(n, scan.bytes));
    const done = <T>(builder: T): T => {
      meter.update(scan.bytes, true);
      return builder;
    };
    if (scan.sockets > 0) ctx.progress({ task: `compress ${spec.name}`, done: 0, note: `${scan.sockets} socket(s) left out (a layer holds no sockets)` });
    if (direct(spec, scan)) {
      try {
        await gensquashfsDir(tmp, spec.dir, { ...ctx.squash, allRoot: spec.owner === 'root' }, onRead);
        return done('gensquashfs');
      } catch (e) {
        // gensquashfs -x stops at xattrs squashfs cannot hold (system.* POSIX ACLs,
        // e.g. on /var/log/journal); the tar path leaves those out and goes on
        if (!/xattr/i.test(String((e as Error).message) + JSON.stringify((e as StackbootError).details ?? {}))) throw e;
        ctx.progress({ task: `compress ${spec.name}`, done: 0, note: 'system.* xattrs dropped (squashfs cannot hold them)' });
      }
    }
    // gensquashfs -D turns hard links into copies and cannot place a tree under a
    // prefix: a pack file from the walk keeps both, as fast, when the tree has no xattrs
    // (gensquashfs 1.2 ignores xattrs with -F); else GNU tar | tar2sqfs keeps everything.
    if (scan.pack && !(await hasXattrs())) {
      await gensquashfsPack(tmp, scan.pack, ctx.squash, onRead);
      return done('gensquashfs');
    }
    await tarDirToSquashfs(tmp, spec.dir, { ...ctx.squash, owner: spec.owner, into: spec.into }, onRead);
    return done('tar2sqfs');
  });
}

export interface TarLayerSpec {
  name: string;
  file: string;
  whiteouts: 'oci' | 'none';
  owner: 'keep' | 'root';
  devices: boolean;
  /** content digest of the tar file, when known (OCI blobs); else it is hashed */
  contentDigest?: string;
  /** OCI: the keys of the image's layers below (the layer's implicit folders take their modes) */
  lowerKeys?: string[];
  /** OCI: the folders those layers make, asked only when the layer is built */
  lowerFolders?: () => Promise<FolderAttrs>;
}

export async function buildTarLayer(ctx: LayerContext, spec: TarLayerSpec): Promise<BuiltLayer> {
  const st = await fs.stat(spec.file).catch((e) => {
    throw new StackbootError('SOURCE', `layer ${spec.name}: cannot read ${spec.file}`, { cause: e });
  });
  if (!st.isFile()) throw new StackbootError('SOURCE', `layer ${spec.name}: ${spec.file} is not a file`);
  const content = spec.contentDigest ?? (await sha256File(spec.file));
  // reader 2: our own tar reader (GNU device numbers, sparse files) and the OCI changeset
  // rules; a layer cached by the first reader from the same tar may be wrong
  return produceLayer(ctx, spec.name, { source: 'tar', reader: 2, content, whiteouts: spec.whiteouts, owner: spec.owner, devices: spec.devices, lowers: spec.lowerKeys ?? [] }, async (tmp) => {
    // an OCI blob is named by its digest, which is also its cache key: it must hash to it
    // (else a swapped blob would be built, and cached under the genuine one's name)
    if (spec.contentDigest) {
      const got = `sha256:${await sha256File(spec.file)}`;
      if (got !== spec.contentDigest) throw new StackbootError('VERIFY', `layer ${spec.name}: ${spec.file} hashes to ${got}, not to its digest ${spec.contentDigest}`);
    }
    const [{ emitTar, planTar }, { TarWriter }] = await Promise.all([import('./sources/tar.js'), import('../format/index.js')]);
    const plan = await planTar(spec.file, { whiteouts: spec.whiteouts, devices: spec.devices, owner: spec.owner, epoch: ctx.squash.epoch, lowerFolders: await spec.lowerFolders?.() });
    const meter = new RateMeter(ctx.progress, `compress ${spec.name}`, plan.dataBytes, 'bytes');
    await tar2sqfs(tmp, ctx.squash, async (stdin) => {
      const w = new TarWriter(stdin);
      await emitTar(plan, w, (n) => meter.update(n));
      await w.finish();
    });
    meter.update(plan.dataBytes, true);
    return 'tar2sqfs';
  });
}
