/**
 * Test targets: the Debian kernels and busybox-static binaries that `npm run setup`
 * (scripts/setup.sh) downloads and unpacks under `<cacheRoot>/targets/<arch>/`, described
 * by `<cacheRoot>/targets/<arch>/target.env`:
 *
 *     KERNEL=/abs/path/.cache/targets/amd64/kernel/boot/vmlinuz-6.1.0-NN-amd64
 *     MODULES=/abs/path/.cache/targets/amd64/kernel/lib/modules/6.1.0-NN-amd64
 *     KVER=6.1.0-NN-amd64
 *     BUSYBOX=/abs/path/.cache/targets/amd64/busybox/bin/busybox
 *     ARCH=amd64
 *     QEMU=qemu-system-x86_64
 *     VMLINUX=/abs/path/.cache/targets/amd64/kernel/vmlinux-6.1.0-NN-amd64   (amd64 only)
 *
 *     KERNEL2=… MODULES2=… KVER2=…   the second kernel (6.12) test stacks carry (kexec)
 *     KEXEC_ROOT=/abs/path/.cache/targets/amd64/kexec-root   kexec-tools and its libraries
 *     VERITY_ROOT=/abs/path/.cache/targets/amd64/verity-root dmsetup, signify-openbsd and their libraries
 *
 * MODULES holds a modules.dep made by depmod at setup time (the .deb has none).
 */
import { readFile, access } from 'node:fs/promises';
import { constants } from 'node:fs';
import path from 'node:path';
import { StackbootError, isArch, type Arch, packageRoot } from '../sys/index.js';

/**
 * The package's `.cache` (next to src/ and dist/, as templates/ is), where
 * scripts/setup.sh puts the targets: the default wherever the CLI is started from.
 */
export const DEFAULT_CACHE_ROOT = path.join(packageRoot(), '.cache');

export interface Target {
  arch: Arch;
  /** Absolute path of the kernel image (bzImage on amd64, uncompressed Image on arm64). */
  kernel: string;
  /** Absolute path of `lib/modules/<kver>` (with modules.dep). */
  modules: string;
  /** Kernel release, e.g. `6.1.0-41-amd64`. */
  kver: string;
  /** Absolute path of a static busybox for this arch. */
  busybox: string;
  /** QEMU system emulator for this arch: `qemu-system-x86_64` or `qemu-system-aarch64`. */
  qemu: string;
  /**
   * amd64 only, when setup could make it: the bzImage's payload as an uncompressed ELF
   * vmlinux. QEMU boots it via PVH and skips the XZ decompressor (about 3.5 s under TCG).
   */
  vmlinux?: string;
  /** A second kernel (Debian 12's 6.12) that test stacks carry as their own (kexec). */
  kernel2?: { kernel: string; modules: string; kver: string };
  /** A sysroot with kexec-tools' sbin/kexec and the libraries it needs (for the standalone initrd). */
  kexecRoot?: string;
  /** A sysroot with sbin/dmsetup and bin/signify-openbsd and their libraries (verified boot, standalone initrd). */
  verityRoot?: string;
}

/** Parses `KEY=value` lines (no quoting, `#` comments, blank lines ignored). */
export function parseEnvFile(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const eq = line.indexOf('=');
    if (eq <= 0) continue;
    out[line.slice(0, eq).trim()] = line.slice(eq + 1).trim();
  }
  return out;
}

/** Path of the target.env file for an arch under a cache root (the repo's `.cache`). */
export function targetEnvPath(arch: Arch, cacheRoot: string): string {
  return path.join(cacheRoot, 'targets', arch, 'target.env');
}

async function exists(p: string, mode = constants.F_OK): Promise<boolean> {
  try {
    await access(p, mode);
    return true;
  } catch {
    return false;
  }
}

/**
 * Loads the test target for `arch` from `<cacheRoot>/targets/<arch>/target.env`, where
 * `cacheRoot` is the repo's `.cache` directory (DEFAULT_CACHE_ROOT). Throws StackbootError('TOOL') when setup
 * has not been run or its files are gone.
 */
export async function loadTarget(arch: Arch, cacheRoot: string = DEFAULT_CACHE_ROOT): Promise<Target> {
  if (!isArch(arch)) throw new StackbootError('USAGE', `unknown target arch ${String(arch)} (amd64 or arm64)`);
  const file = targetEnvPath(arch, cacheRoot);
  const missing = (what: string, cause?: unknown) =>
    new StackbootError('TOOL', `test kernel for ${arch} is missing: run npm run setup (${what})`, {
      cause,
      details: { arch, file },
    });
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    throw missing(`no ${file}`, e);
  }
  const env = parseEnvFile(text);
  for (const k of ['KERNEL', 'MODULES', 'KVER', 'BUSYBOX', 'QEMU'] as const) {
    if (!env[k]) throw missing(`${file} has no ${k}`);
  }
  if (env.ARCH && env.ARCH !== arch) throw missing(`${file} says ARCH=${env.ARCH}`);
  const t: Target = {
    arch,
    kernel: env.KERNEL!,
    modules: env.MODULES!,
    kver: env.KVER!,
    busybox: env.BUSYBOX!,
    qemu: env.QEMU!,
  };
  if (!(await exists(t.kernel))) throw missing(`no kernel at ${t.kernel}`);
  if (!(await exists(path.join(t.modules, 'modules.dep')))) throw missing(`no modules.dep in ${t.modules}`);
  if (!(await exists(t.busybox, constants.X_OK))) throw missing(`no busybox at ${t.busybox}`);
  if (env.VMLINUX && (await exists(env.VMLINUX))) t.vmlinux = env.VMLINUX;
  if (env.KERNEL2 && env.MODULES2 && env.KVER2 && (await exists(env.KERNEL2))) t.kernel2 = { kernel: env.KERNEL2, modules: env.MODULES2, kver: env.KVER2 };
  if (env.KEXEC_ROOT && (await exists(path.join(env.KEXEC_ROOT, 'sbin', 'kexec'), constants.X_OK))) t.kexecRoot = env.KEXEC_ROOT;
  if (env.VERITY_ROOT && (await exists(path.join(env.VERITY_ROOT, 'sbin', 'dmsetup'), constants.X_OK))) t.verityRoot = env.VERITY_ROOT;
  return t;
}
