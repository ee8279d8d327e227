/**
 * `boot-update` on a node: the boot partition's kernel and initrd replaced safely
 * (media/bootpart.ts does the steps). The files come from the command line, or with
 * `fromStack` from the booted stack itself: its manifest's kernel and initrd, read in the
 * running root and checked against the manifest's digests first, so the firmware then
 * starts the stack's own kernel and no kexec is needed. The partition is the mounted
 * folder given, or the vfat labelled SB-BOOT (on the booted store's disk when there are
 * several, as after a migrate), mounted for the update.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { StackbootError, withDeviceMounted, sha256File } from '../sys/index.js';
import { BOOT_LABEL, bootUpdate, diskOf, partitionsWithFatLabel, vfatLabel, type BootUpdateResult } from '../media/index.js';
import { parseBooted, type NodeContext } from './context.js';

export interface NodeBootUpdateOptions {
  /** the mounted boot partition (default: the vfat labelled SB-BOOT, mounted for the update) */
  bootDir?: string;
  /** where the booted store's device is read (default /run/stackboot/booted) */
  bootedFile?: string;
  /** test seams: sysfs and /dev */
  sysRoot?: string;
  devDir?: string;
  kernel?: string;
  initrd?: string;
  fdt?: string;
  append?: string;
  /** the booted stack's own kernel and initrd */
  fromStack?: boolean;
  /** the running root, where the stack's files are read (default /) */
  root?: string;
  dryRun?: boolean;
}


/** The booted stack's boot files in the running root, each checked against the manifest. */
async function stackBootFiles(ctx: NodeContext | null, root: string): Promise<{ kernel: string; initrd: string; fdt?: string; describe: string }> {
  if (!ctx?.bootedSlot) throw new StackbootError('USAGE', '--from-stack needs a booted stack (on a test store pass --booted-slot)');
  const m = await ctx.store.slotManifest(ctx.bootedSlot);
  if (!m) throw new StackbootError('STORE', `slot ${ctx.bootedSlot} has no manifest`);
  const { kernel, initrd, fdt } = m.manifest;
  if (!kernel || !initrd) throw new StackbootError('USAGE', `the booted stack ${m.manifest.name} ${m.manifest.version} carries no kernel of its own: give --kernel and --initrd`);
  const check = async (what: string, f: { path: string; digest: string; size: number }) => {
    const file = path.join(root, f.path);
    const got = await sha256File(file).catch((e) => {
      throw new StackbootError('STORE', `the stack's ${what} ${f.path} cannot be read in ${root}`, { cause: e });
    });
    if (got !== f.digest) throw new StackbootError('VERIFY', `the stack's ${what} ${file} does not match its manifest (sha256 ${got.slice(0, 12)}, the manifest says ${f.digest.slice(0, 12)})`);
    return file;
  };
  return {
    kernel: await check('kernel', kernel),
    initrd: await check('initrd', initrd),
    ...(fdt ? { fdt: await check('device tree', fdt) } : {}),
    describe: `${m.manifest.name} ${m.manifest.version}, kernel ${kernel.release}`,
  };
}

/**
 * The boot partition's device: the vfat labelled SB-BOOT (`image` and `migrate` make it),
 * found by reading each partition's FAT boot sector (no blkid needed). After a migrate the
 * SD card and the NVMe both have one: the one on the booted store's disk is the one the
 * firmware boots from.
 */
export async function findBootPartition(o: { bootedFile?: string; sysRoot?: string; devDir?: string } = {}): Promise<string> {
  const want = vfatLabel(BOOT_LABEL);
  const devDir = o.devDir ?? '/dev';
  const found = (await partitionsWithFatLabel(want, o)).map((n) => path.join(devDir, n));
  if (found.length === 0) throw new StackbootError('DEVICE', `no vfat partition labelled ${want}: give the mounted boot partition with --boot`);
  if (found.length === 1) return found[0]!;
  const booted = await fs.readFile(o.bootedFile ?? '/run/stackboot/booted', 'utf8').then(parseBooted, () => ({}) as Record<string, string>);
  const storeDisk = booted.store_dev ? await diskOf(booted.store_dev, o.sysRoot) : undefined;
  const same: string[] = [];
  for (const d of found) if (storeDisk && (await diskOf(d, o.sysRoot)) === storeDisk) same.push(d);
  if (same.length === 1) return same[0]!;
  throw new StackbootError('DEVICE', `${found.length} partitions are labelled ${want} (${found.join(', ')})${storeDisk ? `, ${same.length} on the booted store's disk ${storeDisk}` : ''}: give the mounted one to update with --boot`);
}

/** The boot partition (findBootPartition), mounted at a temporary folder for FN. */
async function withBootPartition<T>(o: NodeBootUpdateOptions, fn: (dir: string) => Promise<T>): Promise<T> {
  const dev = await findBootPartition(o);
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'sb-boot-'));
  try {
    return await withDeviceMounted(dev, dir, fn);
  } finally {
    await fs.rmdir(dir).catch(() => {});
  }
}

export async function nodeBootUpdate(ctx: NodeContext | null, o: NodeBootUpdateOptions): Promise<BootUpdateResult> {
  let files: { kernel: string; initrd: string; fdt?: string; describe: string };
  if (o.fromStack) {
    if (o.kernel || o.initrd) throw new StackbootError('USAGE', '--from-stack takes the kernel and initrd from the stack: not with --kernel/--initrd');
    files = await stackBootFiles(ctx, o.root ?? '/');
  } else {
    if (!o.kernel || !o.initrd) throw new StackbootError('USAGE', 'give --kernel and --initrd, or --from-stack');
    files = { kernel: o.kernel, initrd: o.initrd, ...(o.fdt ? { fdt: o.fdt } : {}), describe: `kernel ${path.basename(o.kernel)}` };
  }
  const go = (bootDir: string) => bootUpdate({ bootDir, ...files, append: o.append, dryRun: o.dryRun });
  return o.bootDir ? go(o.bootDir) : withBootPartition(o, go);
}
