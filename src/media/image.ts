/**
 * Node disk images: a GPT image with a boot partition (vfat, an ESP named APP: kernel, the
 * stackboot standalone initrd, boot/extlinux/extlinux.conf, and with `efiBoot` a UEFI boot
 * program such as JetPack's L4TLauncher at EFI/BOOT/BOOTAA64.EFI), a store partition (ext4: slot a filled
 * with the build output, `current a`) and a data partition (ext4, empty). Built without
 * root by src/media/disk.ts (mkfs -d / mcopy into files, sfdisk on the image, sparse copy).
 *
 * Reproducible: the partition and filesystem UUIDs and the store id are derived from the
 * stack id (unless given), every timestamp is SOURCE_DATE_EPOCH, so one build output and
 * one set of options give the same bytes. A block map (src/media/bmap.ts) is written beside.
 *
 * Plan, then steps: `planImage` computes the layout and sizes (used by --dry-run), and
 * `buildImage` carries it out.
 */
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { assembleDisk, MiB, type AssembledPart, type PartSpec } from './disk.js';
import { vfatLabel } from './blockdev.js';
import { StackbootError, checkEpoch, type ProgressSink, type Arch, makeDir, onInterrupt } from '../sys/index.js';
import { makeBootConfig, type BootConfig, buildInitramfs, loadTarget, checkPe, EFI_BOOT_PATH } from '../boot/index.js';
import { renderBootConf, checkBootValue, resetEntryOf, EXTLINUX_CONF, BOOT_PART_NAME, DEFAULT_LABEL, RESET_LABEL } from './bootpart.js';
import { parseManifest, stackId, type Manifest, DATA_LABEL, STORE_LABEL, stageStore } from '../format/index.js';
import { writeBmapFor, type Bmap } from './bmap.js';
import { IMAGE_LAYOUTS, LAYOUT_DEFAULTS, bootRoomMiB, type ImageLayout } from './layout.js';

export { IMAGE_LAYOUTS, LAYOUT_DEFAULTS, type ImageLayout };

export const BOOT_LABEL = 'sb-boot';

/** Optional `image.json` beside a recipe: layout and sizes for `stackboot image --recipe`. */
export interface ImageSpec {
  layout?: ImageLayout;
  bootMiB?: number;
  storeMiB?: number;
  dataMiB?: number;
  /** total image size in MiB (the data partition takes what is left) */
  sizeMiB?: number;
  /** extra kernel command line */
  append?: string;
  /** a UEFI boot program (e.g. JetPack's L4TLauncher, BOOTAA64.efi), relative to the recipe folder */
  efiBoot?: string;
  /** a factory reset entry in the boot menu (`--reset-entry`) */
  resetEntry?: boolean;
}

export interface ImageOptions {
  /** build output folder: manifest, manifest.sig?, layers/ */
  buildDir: string;
  out: string;
  layout?: ImageLayout;
  bootMiB?: number;
  storeMiB?: number;
  dataMiB?: number;
  sizeMiB?: number;
  arch?: Arch;
  /** kernel image (default: the setup target's) */
  kernel?: string;
  /** a device tree to put beside the kernel (`fdt` in extlinux.conf) */
  fdt?: string;
  /** an initrd to use instead of building the standalone stackboot initrd */
  initrd?: string;
  /** boot config for the initrd (the recipe's `boot` + --set) */
  bootConfig?: BootConfig;
  /** kernel command line in extlinux.conf */
  append?: string;
  /** a second boot menu entry that boots with stackboot.reset: a factory reset picked at the firmware's menu */
  resetEntry?: boolean;
  /**
   * a UEFI boot program put on the boot partition (an ESP) at EFI/BOOT/BOOTAA64.EFI
   * (BOOTX64.EFI on amd64): JetPack 5/6's L4TLauncher (Linux_for_Tegra/bootloader/BOOTAA64.efi),
   * which reads boot/extlinux/extlinux.conf from the partition named APP
   */
  efiBoot?: string;
  /** store id (32 hex); default derived from the stack id */
  storeId?: string;
  /** seed for every UUID; default the stack id */
  seed?: string;
  /** SOURCE_DATE_EPOCH */
  epoch?: number;
  /** write `<out>.bmap` (default true) */
  bmap?: boolean;
  /** the repo's .cache (default target kernel/busybox) */
  cacheRoot?: string;
  /**
   * a sysroot with sbin/kexec for the initrd (default, for a stack that carries its own
   * kernel: the setup target's kexec-root)
   */
  kexecRoot?: string;
  /**
   * a sysroot with dmsetup and signify-openbsd for the initrd (verified boot; default, for a stack
   * with verity data or when keys are given: the setup target's verity-root)
   */
  verityRoot?: string;
  /** ed25519 public keys built into the initrd: the manifests it boots must be signed by one */
  pubKeys?: readonly string[];
  /** scratch folder (default os.tmpdir()) */
  tmpDir?: string;
  progress?: ProgressSink;
}

export interface ImagePlan {
  out: string;
  layout: ImageLayout;
  stackId: string;
  name: string;
  version: string;
  storeId: string;
  seed: string;
  epoch: number;
  layersBytes: number;
  /** the stack's own kernel release, when it carries one (the boot initrd gets kexec) */
  kernel?: string;
  /** the stack's layers carry dm-verity data (the boot initrd gets dmsetup) */
  verity?: boolean;
  parts: { name: string; fs: 'vfat' | 'ext4'; label: string; sizeMiB: number }[];
  /** the extlinux.conf on the boot partition */
  bootConf: string;
  /** its entries' labels, the default first (`factory-reset` with resetEntry) */
  bootEntries: string[];
  /** where the UEFI boot program goes on the boot partition, when one is given */
  efiBoot?: string;
  totalMiB: number;
  /** the boot partition a boot-update of this kernel needs (layout.ts bootRoomMiB); a smaller --boot-size is allowed */
  bootRoomMiB: number;
}

export interface ImageResult extends ImagePlan {
  partitions: AssembledPart[];
  bytes: number;
  bmapFile?: string;
  mappedBytes?: number;
}

const isPow2 = (n: number): boolean => n > 0 && (n & (n - 1)) === 0;

/** The store id derived from a seed (32 hex), for reproducible images. */
export function seededStoreId(seed: string): string {
  return createHash('sha256').update(`${seed}\0store-id`).digest('hex').slice(0, 32);
}

async function readBuild(buildDir: string): Promise<{ text: string; manifest: Manifest }> {
  const text = await fs.readFile(path.join(buildDir, 'manifest'), 'utf8').catch((e) => {
    throw new StackbootError('USAGE', `${buildDir} is not a build output (no manifest)`, { cause: e });
  });
  return { text, manifest: parseManifest(text) };
}

/** Works out the partitions and sizes (no writes). */
export async function planImage(o: ImageOptions): Promise<ImagePlan> {
  // the files given for the boot partition, before anything is made (a dry run says it too)
  for (const [flag, p] of [['--kernel', o.kernel], ['--initrd', o.initrd], ['--fdt', o.fdt], ['--efi-boot', o.efiBoot]] as const) {
    if (p === undefined) continue;
    const st = await fs.stat(p).catch(() => null);
    if (!st) throw new StackbootError('USAGE', `${flag} ${p}: no such file`);
    if (!st.isFile()) throw new StackbootError('USAGE', `${flag} ${p}: not a file`);
  }
  if (o.append !== undefined) checkBootValue('--append', o.append);
  const { text, manifest } = await readBuild(o.buildDir);
  const id = stackId(text);
  const layout = o.layout ?? 'sd';
  const d = LAYOUT_DEFAULTS[layout];
  const layersBytes = manifest.layers.reduce((n, l) => n + l.size, 0);
  for (const [k, v] of Object.entries({ bootMiB: o.bootMiB, storeMiB: o.storeMiB, dataMiB: o.dataMiB, sizeMiB: o.sizeMiB })) {
    if (v !== undefined && (!Number.isInteger(v) || v <= 0)) throw new StackbootError('USAGE', `${k} must be a positive whole number of MiB, got ${v}`);
  }
  // room for two kernels and initrds (boot-update), at least the layout's size
  const kernelFile = o.kernel ?? (await loadTarget(o.arch ?? 'amd64', o.cacheRoot).then((t) => t.kernel, () => undefined));
  if (o.efiBoot) {
    // the firmware starts the program, and the program (L4TLauncher) hands the kernel to
    // the firmware's LoadImage: both must be PE images for this arch
    const arch = o.arch ?? 'amd64';
    checkPe(await headOf(o.efiBoot), arch, `--efi-boot ${o.efiBoot}`, `the firmware starts it as ${EFI_BOOT_PATH[arch]}`);
    if (kernelFile) checkPe(await headOf(kernelFile), arch, `the kernel ${kernelFile}`, 'a UEFI launcher (L4TLauncher) starts it through the firmware: an EFI-stub Image');
  }
  const sizeOf = async (f?: string) => (f ? ((await fs.stat(f).catch(() => null))?.size ?? 0) : 0);
  const kernelBytes = Math.max(await sizeOf(kernelFile), manifest.kernel?.size ?? 0);
  const room = bootRoomMiB(kernelBytes, await sizeOf(o.fdt), await sizeOf(o.efiBoot));
  const bootMiB = o.bootMiB ?? Math.max(d.bootMiB, room);
  if (bootMiB < 40) throw new StackbootError('USAGE', `the boot partition needs at least 40 MiB (FAT32), got ${bootMiB}`);
  // room for slot a, an update of the same size in slot b, and ext4's own overhead
  const fitStore = Math.ceil((layersBytes * 2.2) / MiB) + 32;
  const storeMiB = o.storeMiB ?? (d.storeMiB || fitStore);
  if (storeMiB * MiB < layersBytes * 1.05 + 8 * MiB) throw new StackbootError('USAGE', `a ${storeMiB} MiB store cannot hold the stack's layers (${Math.ceil(layersBytes / MiB)} MiB)`);
  let dataMiB = o.dataMiB ?? d.dataMiB;
  // 1 MiB before the first partition, 1 MiB for the backup GPT
  let total = 1 + bootMiB + storeMiB + dataMiB + 1;
  if (o.sizeMiB !== undefined) {
    if (o.sizeMiB < total - dataMiB + 8) throw new StackbootError('USAGE', `--size ${o.sizeMiB} MiB is too small: boot and store alone need ${total - dataMiB} MiB`);
    if (o.dataMiB !== undefined && o.sizeMiB < total) throw new StackbootError('USAGE', `--size ${o.sizeMiB} MiB is smaller than the partitions (${total} MiB)`);
    dataMiB = o.sizeMiB - (total - dataMiB);
    total = o.sizeMiB;
  } else if (d.pow2 && !isPow2(total)) {
    const p = 2 ** Math.ceil(Math.log2(total));
    dataMiB += p - total;
    total = p;
  }
  const seed = o.seed ?? id;
  const storeId = o.storeId ?? seededStoreId(seed);
  if (!/^[0-9a-f]{32}$/.test(storeId)) throw new StackbootError('USAGE', `store id must be 32 lowercase hex chars`);
  return {
    out: o.out,
    layout,
    stackId: id,
    name: manifest.name,
    version: manifest.version,
    storeId,
    seed,
    epoch: checkEpoch(o.epoch ?? 0),
    layersBytes,
    ...(manifest.kernel ? { kernel: manifest.kernel.release } : {}),
    ...(manifest.layers.some((l) => l.verity) ? { verity: true } : {}),
    parts: [
      { name: BOOT_PART_NAME, fs: 'vfat', label: vfatLabel(BOOT_LABEL), sizeMiB: bootMiB },
      { name: STORE_LABEL, fs: 'ext4', label: STORE_LABEL, sizeMiB: storeMiB },
      { name: DATA_LABEL, fs: 'ext4', label: DATA_LABEL, sizeMiB: dataMiB },
    ],
    bootConf: EXTLINUX_CONF,
    bootEntries: [DEFAULT_LABEL, ...(o.resetEntry ? [RESET_LABEL] : [])],
    ...(o.efiBoot ? { efiBoot: EFI_BOOT_PATH[o.arch ?? 'amd64'] } : {}),
    totalMiB: total,
    bootRoomMiB: room,
  };
}

/** Renders extlinux.conf (templates/boot/extlinux.conf.hbs) for a new image: one entry, and the factory reset one with `resetEntry`. */
export async function renderExtlinux(c: { name: string; version: string; stackId: string; kernel: string; initrd: string; fdt?: string; append: string; timeout?: number; resetEntry?: boolean }): Promise<string> {
  const main = { label: DEFAULT_LABEL, menu: `stackboot (${c.name} ${c.version}, stack ${c.stackId.slice(0, 12)})`, kernel: c.kernel, initrd: c.initrd, fdt: c.fdt, append: c.append };
  return renderBootConf({
    timeout: c.timeout ?? 10,
    title: `${c.name} ${c.version}`,
    entries: [main, ...(c.resetEntry ? [resetEntryOf(main)] : [])],
  });
}

/** Builds the image: stage the boot files and the store, assemble the disk, write the block map. */
export async function buildImage(o: ImageOptions): Promise<ImageResult> {
  const plan = await planImage(o);
  const work = await fs.mkdtemp(path.join(o.tmpDir ?? os.tmpdir(), 'sb-image-'));
  const off = onInterrupt(() => fs.rm(work, { recursive: true, force: true }));
  try {
    // boot partition contents
    const boot = path.join(work, 'boot');
    await makeDir(path.join(boot, path.dirname(EXTLINUX_CONF)));
    if (o.efiBoot && plan.efiBoot) {
      await makeDir(path.join(boot, path.dirname(plan.efiBoot)));
      await fs.copyFile(o.efiBoot, path.join(boot, plan.efiBoot));
    }
    let kernel = o.kernel;
    if (!kernel) {
      const t = await loadTarget(o.arch ?? 'amd64', o.cacheRoot);
      kernel = t.kernel;
    }
    await fs.copyFile(kernel, path.join(boot, 'vmlinuz'));
    if (o.fdt) await fs.copyFile(o.fdt, path.join(boot, path.basename(o.fdt)));
    if (o.initrd) await fs.copyFile(o.initrd, path.join(boot, 'initrd.img'));
    else {
      o.progress?.({ task: 'initrd', done: 0 });
      const kexecRoot = o.kexecRoot ?? (plan.kernel ? await loadTarget(o.arch ?? 'amd64', o.cacheRoot).then((t) => t.kexecRoot, () => undefined) : undefined);
      if (plan.kernel && !kexecRoot) throw new StackbootError('USAGE', `the stack carries its own kernel (${plan.kernel}): its boot initrd needs kexec: give --kexec-root (a sysroot with sbin/kexec and its libraries)`);
      const wantVerity = plan.verity || (o.pubKeys?.length ?? 0) > 0;
      const verityRoot = o.verityRoot ?? (wantVerity ? await loadTarget(o.arch ?? 'amd64', o.cacheRoot).then((t) => t.verityRoot, () => undefined) : undefined);
      if ((o.pubKeys?.length ?? 0) > 0 && !verityRoot) throw new StackbootError('USAGE', 'keys for the initrd (--pub) need its verifier: give --verity-root (a sysroot with sbin/dmsetup and bin/signify-openbsd)');
      await buildInitramfs({ flavor: 'standalone', out: path.join(boot, 'initrd.img'), arch: o.arch, cacheRoot: o.cacheRoot, config: o.bootConfig ?? makeBootConfig(), mtime: plan.epoch, kexecRoot, verityRoot, pubKeys: o.pubKeys ?? [] });
    }
    await fs.writeFile(
      path.join(boot, EXTLINUX_CONF),
      await renderExtlinux({ name: plan.name, version: plan.version, stackId: plan.stackId, kernel: 'vmlinuz', initrd: 'initrd.img', fdt: o.fdt ? path.basename(o.fdt) : undefined, append: o.append ?? '', resetEntry: o.resetEntry }),
    );
    // mcopy -m keeps the files' mtimes: make them SOURCE_DATE_EPOCH
    await clampTree(boot, plan.epoch);
    // store and data
    const storeDir = path.join(work, 'store');
    await stageStore(storeDir, { id: plan.storeId, slots: { a: { buildDir: o.buildDir, status: 'good' } }, current: 'a' });
    // staged layers are hard links to the build output: copy instead, so that the mtime
    // clamp of mkfs does not touch the build output's files
    for (const f of await fs.readdir(path.join(storeDir, 'layers'))) {
      const p = path.join(storeDir, 'layers', f);
      await fs.copyFile(p, `${p}.c`);
      await fs.rename(`${p}.c`, p);
    }
    const dataDir = path.join(work, 'data');
    await fs.mkdir(dataDir);
    const [bp, sp, dp] = plan.parts;
    const parts: PartSpec[] = [
      { name: bp.name, type: 'esp', size: bp.sizeMiB * MiB, content: { kind: 'vfat', dir: boot, label: bp.label } },
      { name: sp.name, type: 'linux', size: sp.sizeMiB * MiB, content: { kind: 'ext4', dir: storeDir, label: sp.label } },
      { name: dp.name, type: 'linux', size: dp.sizeMiB * MiB, content: { kind: 'ext4', dir: dataDir, label: dp.label } },
    ];
    await makeDir(path.dirname(path.resolve(o.out)));
    const partitions = await assembleDisk(o.out, { seed: plan.seed, epoch: plan.epoch, parts }, o.progress);
    const bytes = (await fs.stat(o.out)).size;
    if (bytes !== plan.totalMiB * MiB) throw new StackbootError('INTERNAL', `image is ${bytes} bytes, planned ${plan.totalMiB} MiB`);
    const r: ImageResult = { ...plan, partitions, bytes };
    if (o.bmap !== false) {
      const b: Bmap = await writeBmapFor(o.out);
      r.bmapFile = `${o.out}.bmap`;
      r.mappedBytes = b.mappedBlocks * b.blockSize;
    }
    return r;
  } finally {
    await fs.rm(work, { recursive: true, force: true });
    off();
  }
}

async function headOf(file: string, n = 4096): Promise<Buffer> {
  const h = await fs.open(file, 'r');
  try {
    const b = Buffer.alloc(n);
    const { bytesRead } = await h.read(b, 0, n, 0);
    return b.subarray(0, bytesRead);
  } finally {
    await h.close();
  }
}

async function clampTree(dir: string, epoch: number): Promise<void> {
  const t = new Date(epoch * 1000);
  for (const e of await fs.readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) await clampTree(p, epoch);
    await fs.utimes(p, t, t);
  }
  await fs.utimes(dir, t, t);
}

/** Reads an `image.json` (ImageSpec) from a recipe folder, or {} when there is none. */
export async function loadImageSpec(recipeDir: string): Promise<ImageSpec> {
  const f = path.join(recipeDir, 'image.json');
  const t = await fs.readFile(f, 'utf8').catch(() => null);
  if (t === null) return {};
  let j: unknown;
  try {
    j = JSON.parse(t);
  } catch (e) {
    throw new StackbootError('RECIPE', `${f}: not valid JSON`, { cause: e });
  }
  if (typeof j !== 'object' || j === null) throw new StackbootError('RECIPE', `${f}: expected an object`);
  const s = j as Record<string, unknown>;
  for (const k of Object.keys(s)) if (!['layout', 'bootMiB', 'storeMiB', 'dataMiB', 'sizeMiB', 'append', 'efiBoot', 'resetEntry', 'description'].includes(k)) throw new StackbootError('RECIPE', `${f}: unknown key ${k}`);
  if (s.layout !== undefined && !IMAGE_LAYOUTS.includes(s.layout as ImageLayout)) throw new StackbootError('RECIPE', `${f}: layout must be one of ${IMAGE_LAYOUTS.join(', ')}`);
  for (const k of ['bootMiB', 'storeMiB', 'dataMiB', 'sizeMiB']) if (s[k] !== undefined && !(Number.isInteger(s[k]) && (s[k] as number) > 0)) throw new StackbootError('RECIPE', `${f}: ${k} must be a positive integer`);
  for (const k of ['append', 'efiBoot']) if (s[k] !== undefined && typeof s[k] !== 'string') throw new StackbootError('RECIPE', `${f}: ${k} must be a string`);
  if (s.resetEntry !== undefined && typeof s.resetEntry !== 'boolean') throw new StackbootError('RECIPE', `${f}: resetEntry must be true or false`);
  if (typeof s.efiBoot === 'string') s.efiBoot = path.resolve(recipeDir, s.efiBoot);
  return s as ImageSpec;
}
