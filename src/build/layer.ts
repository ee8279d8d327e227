/**
 * Building one layer: cache lookup (cache.ts) by a key over the layer's inputs and options,
 * then compression into a temporary file, sha256, and a durable rename to
 * `layers/<sha256>.sqfs` (sys/durable.ts). A failed build leaves nothing under a final name.
 */
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { sha256File, StackbootError, wrap, type ProgressSink, RateMeter, makeDir, onInterrupt, placeDurable, tempPathFor, writeDurableFrom } from '../sys/index.js';
import { cacheLookup, cacheStore } from './cache.js';
import { checkSquashfs, gensquashfsDir, gensquashfsPack, tar2sqfs, tarDirToSquashfs, treeHasXattrs, type SquashOptions } from './squashfs.js';
import { appendVerity, type VerityInfo } from './verity.js';
import { scanDir, type DirScan } from './sources/dir.js';
import type { FolderAttrs } from './sources/tar.js';

/** Part of every cache key: changed when a builder's output for the same input changes (2: roots 0755 0:0 and no sockets on every path; 3: a dm-verity tree appended). */
export const BUILDER_VERSION = 'stackboot-layer-4';

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
  /** the appended dm-verity tree (a fresh build; a cached layer's is read from its file) */
  verity?: VerityInfo;
}

export function layerKey(parts: Record<string, unknown>): string {
  return createHash('sha256').update(JSON.stringify(parts)).digest('hex');
}

/** A cache hit placed in the output folder (a fresh link: never a stale file found there). */
async function placeHit(ctx: LayerContext, name: string, key: string, hit: { digest: string; file: string }): Promise<BuiltLayer> {
  const dst = path.join(ctx.outDir, 'layers', `${hit.digest}.sqfs`);
  const [a, b] = await Promise.all([fs.stat(dst).catch(() => null), fs.stat(hit.file)]);
  if (!a || a.ino !== b.ino || a.dev !== b.dev) await placeDurable(hit.file, dst);
  ctx.progress({ task: `layer ${name}`, done: 1, total: 1, unit: 'items', note: 'cached', final: true });
  return { name, digest: hit.digest, size: b.size, cached: true, builder: 'cache', file: dst, key };
}

/** The cache key of a layer's inputs: the builder's version, the tool's, the squash options (not the jobs). */
async function fullKey(ctx: LayerContext, keyParts: Record<string, unknown>): Promise<string> {
  return layerKey({ v: BUILDER_VERSION, tool: await ctx.toolVersion, squash: { ...ctx.squash, jobs: undefined }, ...keyParts });
}

/** The cached layer for these inputs, placed in the output folder; null on a miss. */
export async function cachedLayer(ctx: LayerContext, name: string, keyParts: Record<string, unknown>): Promise<BuiltLayer | null> {
  const key = await fullKey(ctx, keyParts);
  const layersDir = path.join(ctx.outDir, 'layers');
  await makeDir(layersDir);
  const hit = ctx.cacheDir ? await cacheLookup(ctx.cacheDir, key) : null;
  return hit ? placeHit(ctx, name, key, hit) : null;
}

/** Files an already built layer under another key (e.g. a run source's command). */
export async function rememberLayer(ctx: LayerContext, keyParts: Record<string, unknown>, layer: BuiltLayer): Promise<void> {
  if (ctx.cacheDir) await cacheStore(ctx.cacheDir, await fullKey(ctx, keyParts), layer.digest, layer.file);
}

/**
 * The shared frame of every layer build: cache, temp file, digest, final rename.
 * `make` writes a squashfs to the temp path and says which builder it used.
 */
export async function produceLayer(
  ctx: LayerContext,
  name: string,
  keyParts: Record<string, unknown>,
  make: (tmpFile: string) => Promise<'gensquashfs' | 'tar2sqfs'>,
): Promise<BuiltLayer> {
  const key = await fullKey(ctx, keyParts);
  const layersDir = path.join(ctx.outDir, 'layers');
  await makeDir(layersDir);
  const hit = ctx.cacheDir ? await cacheLookup(ctx.cacheDir, key) : null;
  if (hit) return placeHit(ctx, name, key, hit);
  const fileOf = (digest: string) => path.join(layersDir, `${digest}.sqfs`);
  try {
    // the temp is named after the layer; the squashfs it becomes names the final file
    const built = await writeDurableFrom(
      path.join(layersDir, `${name}.sqfs`),
      async (tmp) => {
        const builder = await make(tmp);
        await checkSquashfs(tmp);
        const verity = await appendVerity(tmp);
        return { builder, verity, digest: await sha256File(tmp), size: (await fs.stat(tmp)).size };
      },
      { target: (b) => fileOf(b.digest) },
    );
    const dst = fileOf(built.digest);
    if (ctx.cacheDir) await cacheStore(ctx.cacheDir, key, built.digest, dst);
    return { name, digest: built.digest, size: built.size, cached: false, builder: built.builder, file: dst, key, verity: built.verity };
  } catch (e) {
    throw wrap('SOURCE', `layer ${name}: build failed`, e);
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
  const packTo = tempPathFor(path.join(layersDir, `${spec.name}.pack`));
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
