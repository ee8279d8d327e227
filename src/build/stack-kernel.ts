/**
 * The stack's own kernel (recipe `kernel`): found in the built layers by its path in the
 * merged root, its release taken from the recipe or the file name, its initrd made with
 * `stackboot initramfs` (standalone) from the stack's own modules, reproducibly, and put
 * in a layer of its own on top (`initrd`, at /boot/stackboot/initrd-<release>.img). The
 * manifest records the kernel, the initrd and the device tree with their digests; the
 * hook checks them before it kexecs (initramfs/kexec.sh, docs/PROTOCOL.md "Stack
 * kernels"). Nothing here needs root: the layers are read with rdsquashfs and sqfs2tar.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { StackbootError, run, isArch, type Arch, type ProgressSink } from '../sys/index.js';
import type { BootFile, KernelRef } from '../format/index.js';
import { buildInitramfs, describeUnmet, loadTarget, makeBootConfig, parseKernelConfig, stackKernelNeeds, unmetNeeds } from '../boot/index.js';
import { extractFromImage, hashInImage, readTextInImage, statInImage, xattrNamesInImage, type ImageEntry } from './squashfs-read.js';
import type { KernelSpec } from './recipe.js';

/** The name of the layer that carries the stack kernel's initrd. */
export const INITRD_LAYER = 'initrd';

const isWhiteout = (e: ImageEntry) => e.type === 'char' && e.device === '0:0';

/**
 * Where PATH is in the merged root of LAYERS (files, bottom first), as overlayfs shows it:
 * the top-most layer that has it, unless a layer above deletes it (a whiteout on it or on
 * a parent folder), hides it (an opaque parent folder) or replaces a parent by a file.
 */
export async function findInStack(layers: readonly string[], p: string): Promise<{ image: string; entry: ImageEntry } | null> {
  const parts = p.split('/').filter(Boolean);
  for (let i = layers.length - 1; i >= 0; i--) {
    const image = layers[i]!;
    let opaque = false;
    for (let d = 1; d < parts.length; d++) {
      const anc = '/' + parts.slice(0, d).join('/');
      const e = await statInImage(image, anc);
      if (!e) continue;
      if (e.type !== 'dir') return null; // deleted (whiteout) or replaced by a file here
      if ((await xattrNamesInImage(image, anc)).includes('trusted.overlay.opaque')) opaque = true;
    }
    const e = await statInImage(image, p);
    if (e) return isWhiteout(e) ? null : { image, entry: e };
    if (opaque) return null;
  }
  return null;
}

/** A regular file of the merged root: its layer, digest and size. */
async function stackFile(layers: readonly string[], what: string, p: string): Promise<BootFile & { image: string }> {
  const f = await findInStack(layers, p);
  if (!f) throw new StackbootError('RECIPE', `kernel: the stack has no ${what} ${p}`);
  if (f.entry.type !== 'file') throw new StackbootError('RECIPE', `kernel: ${what} ${p} is a ${f.entry.type} in the stack, not a file: name the file itself`);
  const { digest, size } = await hashInImage(f.image, p);
  if (size === 0) throw new StackbootError('RECIPE', `kernel: ${what} ${p} is empty`);
  return { path: p, digest, size, image: f.image };
}

/** The release of a kernel file: from the recipe, else vmlinuz-<release> or …/modules/<release>/vmlinuz. */
export function kernelRelease(spec: KernelSpec): string | null {
  if (spec.release) return spec.release;
  const base = path.posix.basename(spec.path);
  const m = /^(?:vmlinuz|vmlinux|Image|zImage|bzImage)-(.+)$/.exec(base);
  if (m) return m[1]!;
  const mm = /\/modules\/([^/]+)\/(?:vmlinuz|Image)$/.exec(spec.path);
  return mm ? mm[1]! : null;
}

export interface StackKernelOptions {
  /** the built layers, bottom first */
  layers: readonly string[];
  spec: KernelSpec;
  arch: string;
  /** SOURCE_DATE_EPOCH: the initrd's mtimes */
  epoch: number;
  /** the recipe's boot settings (the initrd's boot.conf) */
  boot: Record<string, string>;
  /** the layers' squashfs compressor (the kernel must read it) */
  compression: string;
  /** busybox-static for the arch (default: the setup target's) */
  busybox?: string;
  /** a sysroot with sbin/kexec (default: the setup target's, when it has one) */
  kexecRoot?: string;
  /** a sysroot with dmsetup and signify-openbsd (default: the setup target's, when it has one) */
  verityRoot?: string;
  /** ed25519 public keys the initrd checks the manifest against (see stackboot initramfs --pub) */
  pubKeys?: readonly string[];
  progress: ProgressSink;
}

export interface StackKernel {
  kernel: KernelRef;
  initrd: BootFile;
  fdt?: BootFile;
  /** a folder holding boot/stackboot/initrd-<release>.img: the initrd layer's tree */
  layerDir: string;
  cleanup(): Promise<void>;
}

/**
 * The kernel's own config (`/boot/config-<release>` in the stack, as distribution kernel
 * packages ship it) must have what mounting this stack takes (boot/kconfig.ts): a kernel
 * that cannot read its own layers would spend every try of the stack after the kexec.
 * Without the file nothing is checked (said in the progress note).
 */
async function checkKernelConfig(o: StackKernelOptions, release: string): Promise<void> {
  const p = `/boot/config-${release}`;
  const f = await findInStack(o.layers, p);
  if (!f || f.entry.type !== 'file') {
    o.progress({ task: 'kernel', done: 0, note: `no ${p} in the stack: not checked that kernel ${release} reads ${o.compression} squashfs, overlayfs and loop devices` });
    return;
  }
  const unmet = unmetNeeds(parseKernelConfig(await readTextInImage(f.image, p)), stackKernelNeeds(o.compression));
  if (unmet.length) {
    throw new StackbootError('RECIPE', `kernel: ${release} cannot boot this stack: its config ${p} lacks ${describeUnmet(unmet)}; build the layers with a compression it reads (compression.algorithm) or use a kernel with them`, {
      details: { release, missing: unmet.map((n) => n.option) },
    });
  }
}

/** Finds the kernel, makes its initrd. The caller builds `layerDir` as the INITRD_LAYER. */
export async function prepareStackKernel(o: StackKernelOptions): Promise<StackKernel> {
  const release = kernelRelease(o.spec);
  if (!release) throw new StackbootError('RECIPE', `kernel: cannot tell the release of ${o.spec.path} from its name: give kernel.release`);
  if (!isArch(o.arch)) throw new StackbootError('USAGE', `a stack kernel needs a target arch amd64 or arm64, not ${o.arch}`);
  const arch: Arch = o.arch;
  o.progress({ task: 'kernel', done: 0, note: `stack kernel ${release}` });
  const k = await stackFile(o.layers, 'kernel', o.spec.path);
  const fdt = o.spec.fdt ? await stackFile(o.layers, 'device tree', o.spec.fdt) : undefined;
  await checkKernelConfig(o, release);
  const work = await fs.mkdtemp(path.join(os.tmpdir(), 'sb-kernel-'));
  const cleanup = () => fs.rm(work, { recursive: true, force: true });
  try {
    // its modules, from every layer that has the folder (bottom first: upper files win)
    let modulesPath: string | null = null;
    for (const cand of [`/usr/lib/modules/${release}`, `/lib/modules/${release}`]) {
      const f = await findInStack(o.layers, cand);
      if (f?.entry.type === 'dir') {
        modulesPath = cand;
        break;
      }
    }
    if (!modulesPath) throw new StackbootError('RECIPE', `kernel: the stack has no /lib/modules/${release} (or /usr/lib/modules/${release}) for kernel ${release}`);
    const root = path.join(work, 'root');
    for (const image of o.layers) {
      const e = await statInImage(image, modulesPath);
      if (e?.type === 'dir') await extractFromImage(image, modulesPath, root);
    }
    const modulesDir = path.join(root, modulesPath);
    if (!(await fs.stat(path.join(modulesDir, 'modules.dep')).catch(() => null))) {
      // a root unpacked from packages whose postinst never ran: make the index as it would
      await run('depmod', ['-b', root, release]).catch((e: unknown) => {
        throw new StackbootError('TOOL', `kernel: depmod for ${release} failed`, { cause: e });
      });
    }
    const layerDir = path.join(work, 'layer');
    const rel = `boot/stackboot/initrd-${release}.img`;
    await fs.mkdir(path.dirname(path.join(layerDir, rel)), { recursive: true });
    const cfg = makeBootConfig({ set: Object.entries(o.boot) });
    // its initrd can kexec too (a fallback from it to a stack with another kernel)
    const target = await loadTarget(arch).catch(() => null);
    const kexecRoot = o.kexecRoot ?? target?.kexecRoot;
    // the second stage opens the layers through dm-verity too, and checks the signature
    const verityRoot = o.verityRoot ?? target?.verityRoot;
    const r = await buildInitramfs({
      flavor: 'standalone',
      out: path.join(layerDir, rel),
      arch,
      modulesDir,
      busybox: o.busybox,
      config: cfg,
      modules: o.spec.modules,
      mtime: o.epoch,
      kexecRoot,
      verityRoot,
      pubKeys: verityRoot ? (o.pubKeys ?? []) : [],
      progress: o.progress,
    });
    const data = await fs.readFile(r.out);
    const { createHash } = await import('node:crypto');
    const initrd: BootFile = { path: `/${rel}`, digest: createHash('sha256').update(data).digest('hex'), size: data.length };
    const kernel: KernelRef = { release, path: k.path, digest: k.digest, size: k.size };
    return { kernel, initrd, fdt: fdt && { path: fdt.path, digest: fdt.digest, size: fdt.size }, layerDir, cleanup };
  } catch (e) {
    await cleanup();
    throw e;
  }
}
