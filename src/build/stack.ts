/**
 * Building a stack: every layer of a recipe in order (bottom first), then the manifest.
 * Output folder: layers/<sha256>.sqfs and manifest. Layers whose inputs did not change
 * come from the cache without being compressed again.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { StackbootError, type ProgressSink, makeDir, checkEpoch, writeDurable } from '../sys/index.js';
import { buildDirLayer, buildTarLayer, cachedLayer, rememberLayer, type BuiltLayer, type LayerContext } from './layer.js';
import { NAME_RE, chunkIndexLine, serializeManifest, stackId, type Manifest } from '../format/index.js';
import type { Recipe } from './recipe.js';
import { toolVersion } from './squashfs.js';
import { writeChunkIndex } from '../format/index.js';
import { frameDeltaLines } from './frame-deltas.js';
import { readVerity } from './verity.js';
import { INITRD_LAYER, prepareStackKernel } from './stack-kernel.js';
import type { FolderAttrs } from './sources/tar.js';

export interface BuildOptions {
  outDir: string;
  cacheDir: string | null;
  /** SOURCE_DATE_EPOCH (or 0): every mtime and the manifest's created */
  epoch: number;
  /** target architecture (for OCI image indexes) */
  arch: string;
  jobs?: number;
  /** the caller's uid (run sources need 0) */
  uid: number | undefined;
  /** host variables a run source's command gets (its proxies; see sources/run.ts PASSED_THROUGH) */
  runEnv?: Record<string, string>;
  /** a recipe with a kernel: busybox-static for its initrd (default: the setup target's) */
  busybox?: string;
  /** a recipe with a kernel: a sysroot with sbin/kexec for its initrd (default: the setup target's, if any) */
  kexecRoot?: string;
  /** a recipe with a kernel: a sysroot with dmsetup and signify-openbsd for its initrd (default: the setup target's, if any) */
  verityRoot?: string;
  /** a recipe with a kernel: public keys its initrd checks manifests against */
  pubKeys?: readonly string[];
  /** write a chunk index beside each layer, named in the manifest (chunk deltas: build/chunker.ts) */
  chunks?: boolean;
  progress: ProgressSink;
}

export interface BuildResult {
  stackId: string;
  manifestFile: string;
  manifest: Manifest;
  layers: BuiltLayer[];
  outDir: string;
}

/**
 * The output folder must be new, empty, or an earlier build output: a build writes
 * `manifest` and removes `manifest.sig` there, which in any other folder would be a
 * user's files.
 */
async function checkOutDir(outDir: string): Promise<void> {
  if (outDir.trim() === '') throw new StackbootError('USAGE', 'the output folder is an empty name');
  const names = await fs.readdir(outDir).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return [] as string[];
    if (e.code === 'ENOTDIR') throw new StackbootError('USAGE', `${outDir} exists and is not a folder`);
    throw new StackbootError('IO', `cannot read ${outDir}`, { cause: e });
  });
  if (names.length === 0) return;
  const head = await fs.readFile(path.join(outDir, 'manifest'), 'utf8').then((t) => t.slice(0, 32), () => '');
  if (head.startsWith('stackboot-manifest') || (names.length === 1 && names[0] === 'layers')) return;
  throw new StackbootError('USAGE', `${outDir} is a folder of other files, not a build output (its manifest would be overwritten): give a new or empty folder`);
}

/**
 * The names an OCI source's layers will have, checked before any of them is compressed:
 * each a valid manifest name (`<name>-<n>` may pass 64 characters) not used by another
 * layer (the recipe refuses `<name>-<n>` for other layers, and earlier images may have
 * taken one).
 */
function checkImageNames(recipe: Recipe, source: string, names: string[], built: BuiltLayer[]): void {
  const taken = new Set([...recipe.layers.filter((l) => l.name !== source).map((l) => l.name), ...built.map((l) => l.name)]);
  const field = `${recipe.file}: layers[${recipe.layers.findIndex((l) => l.name === source)}].name`;
  for (const n of names) {
    if (!NAME_RE.test(n)) throw new StackbootError('RECIPE', `${field}: its image has ${names.length} layers, and the name ${n} of one is not a layer name (at most 64 letters, digits, ".", "_" or "-"): give the layer a shorter name`);
    if (taken.has(n)) throw new StackbootError('RECIPE', `${field}: its image has ${names.length} layers, and the name ${n} of one is taken by another layer: rename one of them`);
  }
}

/**
 * A dir source must not hold the output or cache folder: the layer would take in the
 * stack's own layers (those of earlier builds, and the one being written), grow with
 * every build and never be the same twice.
 */
async function checkSourcesOutside(recipe: Recipe, dirs: { what: string; dir: string }[]): Promise<void> {
  // a folder not made yet: the real path of the nearest one that exists, and the rest
  const real = async (p: string): Promise<string> => {
    const abs = path.resolve(p);
    return fs.realpath(abs).catch(async () => (path.dirname(abs) === abs ? abs : path.join(await real(path.dirname(abs)), path.basename(abs))));
  };
  const inside = (a: string, b: string) => a === b || a.startsWith(b.endsWith('/') ? b : `${b}/`);
  const targets = await Promise.all(dirs.map(async (d) => ({ ...d, real: await real(d.dir) })));
  for (const [i, l] of recipe.layers.entries()) {
    if (l.source.type !== 'dir') continue;
    const src = await real(l.source.path);
    for (const t of targets) {
      if (inside(t.real, src)) throw new StackbootError('USAGE', `${recipe.file}: layers[${i}] (${l.name}): the ${t.what} ${t.dir} is inside its source folder ${l.source.path}: the layer would take in the stack's own files; give a folder outside it`);
    }
  }
}

/** The stack's own kernel: its initrd made from the built layers, as a layer on top (pushed onto BUILT). */
async function stackKernelLayer(ctx: LayerContext, recipe: Recipe, built: BuiltLayer[], o: BuildOptions) {
  const sk = await prepareStackKernel({
    layers: built.map((l) => l.file),
    spec: recipe.kernel!,
    arch: o.arch,
    epoch: o.epoch,
    boot: recipe.boot,
    compression: recipe.compression.algorithm,
    busybox: o.busybox,
    kexecRoot: o.kexecRoot,
    verityRoot: o.verityRoot,
    pubKeys: o.pubKeys,
    progress: o.progress,
  });
  try {
    built.push(await buildDirLayer(ctx, { name: INITRD_LAYER, dir: sk.layerDir, owner: 'root', devices: false }));
  } finally {
    await sk.cleanup();
  }
  return sk;
}

export async function buildStack(recipe: Recipe, o: BuildOptions): Promise<BuildResult> {
  checkEpoch(o.epoch);
  await checkOutDir(o.outDir);
  await checkSourcesOutside(recipe, [{ what: 'output folder', dir: o.outDir }, ...(o.cacheDir ? [{ what: 'cache folder', dir: o.cacheDir }] : [])]);
  const layersDir = path.join(o.outDir, 'layers');
  const existed = { out: await isThere(o.outDir), layers: await isThere(layersDir) };
  try {
    return await buildLayersAndManifest(recipe, o);
  } catch (e) {
    // a failed build leaves no empty folders it made (the layers it did build stay)
    if (!existed.layers) await fs.rmdir(layersDir).catch(() => {});
    if (!existed.out) await fs.rmdir(o.outDir).catch(() => {});
    throw e;
  }
}

const isThere = (p: string): Promise<boolean> => fs.lstat(p).then(() => true, () => false);

async function buildLayersAndManifest(recipe: Recipe, o: BuildOptions): Promise<BuildResult> {
  await makeDir(path.join(o.outDir, 'layers'));
  const ctx: LayerContext = {
    outDir: o.outDir,
    cacheDir: o.cacheDir,
    squash: { compression: recipe.compression, blockSize: recipe.blockSize, epoch: o.epoch, jobs: o.jobs },
    // asked once, while the first layer's source is walked
    toolVersion: toolVersion(),
    progress: o.progress,
  };
  const built: BuiltLayer[] = [];
  for (const spec of recipe.layers) {
    const src = spec.source;
    switch (src.type) {
      case 'dir':
        built.push(await buildDirLayer(ctx, { name: spec.name, dir: src.path, owner: spec.owner, devices: spec.devices, into: src.into }));
        break;
      case 'tar':
        built.push(await buildTarLayer(ctx, { name: spec.name, file: src.path, whiteouts: 'none', owner: spec.owner, devices: spec.devices }));
        break;
      case 'oci': {
        const { openImage } = await import('./sources/oci.js');
        const img = await openImage(src.path, o.arch, src.ref);
        try {
          const names = img.layers.length === 1 ? [spec.name] : img.layers.map((_, i) => `${spec.name}-${i + 1}`);
          checkImageNames(recipe, spec.name, names, built);
          const { foldersAfter, planTar } = await import('./sources/tar.js');
          // the folders the image's layers make, one layer after the other: read (a
          // header pass) only when a layer above is built, not served from the cache
          const folders: FolderAttrs[] = [new Map()];
          const foldersBelow = async (i: number): Promise<FolderAttrs> => {
            for (let k = folders.length - 1; k < i; k++) {
              const plan = await planTar(img.layers[k].file, { whiteouts: 'oci', devices: spec.devices, owner: spec.owner, epoch: o.epoch, lowerFolders: folders[k] });
              folders.push(foldersAfter(folders[k], plan));
            }
            return folders[i];
          };
          const first = built.length;
          for (let i = 0; i < img.layers.length; i++) {
            const b = img.layers[i];
            built.push(
              await buildTarLayer(ctx, {
                name: names[i],
                file: b.file,
                whiteouts: 'oci',
                owner: spec.owner,
                devices: spec.devices,
                contentDigest: b.digest,
                lowerKeys: built.slice(first).map((l) => l.key),
                lowerFolders: () => foldersBelow(i),
              }),
            );
          }
        } finally {
          await img.cleanup();
        }
        break;
      }
      case 'run': {
        // a run layer is a pure function of its lowers, its command and env and the epoch
        // (in every key): try the cache first. The host's proxies are not part of it.
        const runKey = { source: 'run', lowers: built.map((l) => l.digest), command: src.command, env: src.env ?? {}, owner: spec.owner };
        let result = await cachedLayer(ctx, spec.name, runKey);
        if (!result) {
          const { runOverLayers } = await import('./sources/run.js');
          const cap = await runOverLayers({ name: spec.name, lowers: built.map((l) => l.file), command: src.command, env: src.env, passed: o.runEnv, epoch: o.epoch, uid: o.uid });
          try {
            result = await buildDirLayer(ctx, { name: spec.name, dir: cap.upper, owner: spec.owner, devices: true });
            await rememberLayer(ctx, runKey, result);
          } finally {
            await cap.cleanup();
          }
        }
        built.push(result);
        break;
      }
    }
  }
  const boot = recipe.kernel ? await stackKernelLayer(ctx, recipe, built, o) : undefined;
  const manifest: Manifest = {
    name: recipe.name,
    version: recipe.version,
    compatible: recipe.compatible,
    created: o.epoch,
    compression: recipe.compression.algorithm,
    ...(boot ? { kernel: boot.kernel, initrd: boot.initrd, ...(boot.fdt ? { fdt: boot.fdt } : {}) } : {}),
    layers: await Promise.all(built.map(async (l) => ({ digest: l.digest, size: l.size, name: l.name, verity: l.verity ?? (await readVerity(l.file)) }))),
  };
  if (o.chunks) {
    manifest.extra = await Promise.all(built.map(async (l) => chunkIndexLine(await writeChunkIndex(l.file, l.digest))));
    if (recipe.compression.algorithm === 'zstd') manifest.extra.push(...(await frameDeltaLines(built, recipe.compression.level ?? 3, o.progress, o.jobs)));
  }
  const text = serializeManifest(manifest);
  const manifestFile = path.join(o.outDir, 'manifest');
  await writeDurable(manifestFile, text);
  // a signature of an older manifest must not sit next to the new one
  const sig = `${manifestFile}.sig`;
  const oldSig = await fs.stat(sig).then(() => true, () => false);
  if (oldSig) await fs.rm(sig);
  return { stackId: stackId(text), manifestFile, manifest, layers: built, outDir: o.outDir };
}

