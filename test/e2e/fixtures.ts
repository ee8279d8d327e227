/**
 * Shared fixtures for the boot tests: real demo stacks built from images/, stores staged
 * from them, GPT disks assembled without root, and standalone initrds, all cached per
 * test run under .cache/e2e so each scenario only pays for its own boots.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildStack, type BuildResult } from '../../src/build/stack.js';
import { loadRecipe } from '../../src/build/recipe.js';
import { stageStore, type StageSlot } from '../../src/format/store.js';
import { assembleDisk, type PartSpec } from '../../src/media/disk.js';
import { buildInitramfs, makeBootConfig } from '../../src/boot/initramfs.js';
import { loadTarget, type Target } from '../../src/boot/target.js';
import { type Arch } from '../../src/sys/arch.js';
import { run } from '../../src/sys/exec.js';
import type { SlotName } from '../../src/format/state.js';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const CACHE = path.join(REPO, '.cache');
export const WORK = path.join(CACHE, 'e2e');

export type DemoName = 'demo' | 'demo-update' | 'demo-broken';

const built = new Map<string, Promise<BuildResult>>();

/** Builds images/<name> for an arch (once per process; layers cached across runs). */
export function demoStack(name: DemoName, arch: Arch = 'amd64'): Promise<BuildResult> {
  const key = `${name}-${arch}`;
  let p = built.get(key);
  if (!p) {
    p = (async () => {
      const recipe = await loadRecipe(path.join(REPO, 'images', name), { arch });
      return buildStack(recipe, {
        outDir: path.join(WORK, 'stacks', key),
        cacheDir: path.join(WORK, 'layer-cache'),
        epoch: 0,
        arch,
        uid: process.getuid?.(),
        progress: () => {},
      });
    })();
    built.set(key, p);
  }
  return p;
}

export async function target(arch: Arch = 'amd64'): Promise<Target> {
  return loadTarget(arch, CACHE);
}

/** A fresh scratch folder for one test. */
export async function scratch(name: string): Promise<string> {
  const d = path.join(WORK, 'runs', `${name}-${process.pid}-${Date.now()}`);
  await fs.mkdir(d, { recursive: true });
  return d;
}

export interface StoreDiskOptions {
  /** where to write the image */
  file: string;
  slots: Partial<Record<SlotName, StageSlot>>;
  current?: SlotName | null;
  /** store id (32 hex); random by default */
  id?: string;
  /** seed for the partition and fs UUIDs (same seed = same UUIDs, as a clone) */
  seed?: string;
  /** files to put in the data partition (path -> content) */
  data?: Record<string, string>;
  storeMiB?: number;
  dataMiB?: number;
  /** skip copying these layer digests (to make a store with a missing layer) */
  skipLayers?: string[];
  /** no data partition */
  noData?: boolean;
  /**
   * Total image size in MiB (the backup GPT is moved to the new end). An SD card image
   * (bus 'sd') must be a power of two: 128 fits the default partitions.
   */
  diskMiB?: number;
}

/** A GPT disk with a store partition (label sb-store) and a data partition (sb-data). */
export async function storeDisk(o: StoreDiskOptions): Promise<{ storeDir: string; file: string }> {
  const base = `${o.file}.d`;
  await fs.rm(base, { recursive: true, force: true });
  const storeDir = path.join(base, 'store');
  const dataDir = path.join(base, 'data');
  await stageStore(storeDir, { id: o.id, slots: o.slots, current: o.current, skipLayers: o.skipLayers });
  await fs.mkdir(dataDir, { recursive: true });
  for (const [p, c] of Object.entries(o.data ?? {})) {
    await fs.mkdir(path.dirname(path.join(dataDir, p)), { recursive: true });
    await fs.writeFile(path.join(dataDir, p), c);
  }
  const parts: PartSpec[] = [{ name: 'sb-store', type: 'linux', size: (o.storeMiB ?? 64) << 20, content: { kind: 'ext4', dir: storeDir, label: 'sb-store' } }];
  if (!o.noData) parts.push({ name: 'sb-data', type: 'linux', size: (o.dataMiB ?? 16) << 20, content: { kind: 'ext4', dir: dataDir, label: 'sb-data' } });
  await assembleDisk(o.file, { seed: o.seed ?? path.basename(o.file) + Date.now(), epoch: 0, parts });
  if (o.diskMiB !== undefined) {
    const want = o.diskMiB * 1024 * 1024;
    const st = await fs.stat(o.file);
    if (st.size > want) throw new Error(`storeDisk: the partitions need ${st.size} bytes, more than diskMiB=${o.diskMiB}`);
    await fs.truncate(o.file, want);
    await run('sfdisk', ['--quiet', '--no-reread', '--no-tell-kernel', '--relocate', 'gpt-bak-std', o.file]);
  }
  await fs.rm(base, { recursive: true, force: true });
  return { storeDir, file: o.file };
}

/** A standalone initrd with the given boot config settings (and modules beyond the defaults). */
export async function initrd(file: string, settings: Record<string, string>, arch: Arch = 'amd64', modules: string[] = []): Promise<string> {
  await buildInitramfs({
    flavor: 'standalone',
    out: file,
    arch,
    cacheRoot: CACHE,
    modules,
    config: makeBootConfig({ set: Object.entries(settings) }),
  });
  return file;
}
