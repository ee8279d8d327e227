/**
 * The kernel modules the boot hook ships, in every flavor: the default list (a missing one
 * is an error), the optional ones, and their resolution against a kernel's modules dir
 * (kernel.ts parses and resolves; this file decides what is wanted).
 */
import { loadModuleIndex, resolveModules, normalizeModuleName, type ModuleIndex, type ModuleInfo } from './kernel.js';

/** Modules every flavor ships (each with its dependencies). A missing one is an error. */
export const DEFAULT_MODULES: readonly string[] = [
  'overlay',
  'squashfs',
  'loop',
  'ext4',
  'vfat',
  'virtio_blk',
  'virtio_pci',
  'nvme',
  'sdhci',
  'sdhci_pci',
  'mmc_block',
];

/**
 * Shipped when the kernel has them (ext4's crc32c, vfat's codepages and character sets,
 * virtio-mmio on arm64 virt). Debian's kernels mount vfat with iocharset=ascii by default:
 * without nls_ascii no vfat mounts ("IO charset ascii not found"), so neither a migrate's
 * boot-file copy nor a boot-update could mount the boot partition.
 */
export const OPTIONAL_MODULES: readonly string[] = ['crc32c', 'nls_cp437', 'nls_ascii', 'nls_iso8859_1', 'nls_utf8', 'virtio_mmio'];

/**
 * The CPU's own sha256 drivers (x86 SSSE3/AVX2/SHA-NI; arm64 crypto extensions, NEON),
 * shipped beside dm-verity when the kernel has them as modules. Debian builds the generic
 * C sha256 in, so without them every dm-verity device hashes with it for the life of
 * the boot (several times slower on a Jetson's Cortex-A78AE, which has the SHA-2
 * instructions); the crypto API gives dm-verity the highest-priority driver registered
 * when its table is loaded, so the hook loads these first (sb_sys_hash_accel). Not in
 * the list /init loads at its start: on a CPU without the instructions they refuse to
 * load, which is no fault.
 */
export const VERITY_HASH_MODULES: readonly string[] = ['sha256_ssse3', 'sha2_ce', 'sha256_arm64'];

export interface ResolvedModules {
  dir: string;
  kver: string;
  index: ModuleIndex;
  modules: ModuleInfo[];
  builtin: string[];
  skipped: string[];
}

/** The default modules plus `extra` (and `optional` ones, when the kernel has them), resolved with their dependencies against a modules dir. */
export async function resolveShipped(modulesDir: string, extra: readonly string[], optional: readonly string[] = []): Promise<ResolvedModules> {
  const { dir, kver, index } = await loadModuleIndex(modulesDir);
  const r = resolveModules(index, [...DEFAULT_MODULES, ...extra], [...OPTIONAL_MODULES, ...optional]);
  return { dir, kver, index, ...r };
}

function wantedModules(extra: readonly string[]): string[] {
  return [...new Set([...DEFAULT_MODULES, ...extra].map(normalizeModuleName))];
}

export interface CheckedModules {
  modules: string[];
  builtin: string[];
  skipped: string[];
  kver?: string;
}

/**
 * The module names a hook flavor loads (the host's initramfs builder resolves their
 * dependencies itself): without a modules dir, the wanted ones as given; with one, checked
 * against that kernel, its optional ones added and its built-in ones left out.
 */
export async function checkedModules(modulesDir: string | undefined, extra: readonly string[]): Promise<CheckedModules> {
  const wanted = wantedModules(extra);
  if (!modulesDir) return { modules: wanted, builtin: [], skipped: [] };
  const r = await resolveShipped(modulesDir, extra);
  const optional = OPTIONAL_MODULES.filter((m) => !r.skipped.includes(m));
  return { modules: [...wanted, ...optional].filter((m) => !r.builtin.includes(m)), builtin: r.builtin, skipped: r.skipped, kver: r.kver };
}
