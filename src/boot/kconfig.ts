/**
 * What a kernel needs to boot a stack, read from its build configuration (`/boot/config-<release>`,
 * `/proc/config.gz`): squashfs with the layers' compressor, overlayfs, loop devices. A
 * kernel without them fails every layer mount at boot; the node then falls back, but the
 * try is spent on a stack that could never boot: `build` refuses a stack kernel that
 * cannot read its own stack, `install` one the running kernel cannot read, and `doctor`
 * says it. Pure.
 */

/** A kernel config: option name (without `CONFIG_`) to `y` or `m`; options not set are absent. */
export type KernelConfig = Map<string, string>;

/** Parses `.config` text (`CONFIG_X=y`, `# CONFIG_X is not set`). */
export function parseKernelConfig(text: string): KernelConfig {
  const out: KernelConfig = new Map();
  for (const line of text.split('\n')) {
    const m = /^CONFIG_([A-Za-z0-9_]+)=(.*)$/.exec(line.trim());
    if (m && m[2] !== 'n') out.set(m[1]!, m[2]!.replace(/^"(.*)"$/, '$1'));
  }
  return out;
}

/** The squashfs decompressor option for each compressor gensquashfs writes. */
export const SQUASHFS_DECOMPRESSORS: Readonly<Record<string, string>> = {
  gzip: 'SQUASHFS_ZLIB',
  xz: 'SQUASHFS_XZ',
  lzo: 'SQUASHFS_LZO',
  lz4: 'SQUASHFS_LZ4',
  zstd: 'SQUASHFS_ZSTD',
};

export interface KernelNeed {
  option: string;
  why: string;
}

/** What a kernel needs to mount a stack whose layers are compressed with `compression` (default zstd). */
export function stackKernelNeeds(compression = 'zstd'): KernelNeed[] {
  const needs: KernelNeed[] = [
    { option: 'SQUASHFS', why: 'the layers are squashfs' },
    { option: 'OVERLAY_FS', why: 'the root is an overlay of the layers' },
    { option: 'BLK_DEV_LOOP', why: 'each layer is mounted on a loop device' },
  ];
  const dec = SQUASHFS_DECOMPRESSORS[compression];
  needs.splice(1, 0, dec ? { option: dec, why: `the layers are ${compression}-compressed` } : { option: `SQUASHFS_${compression.toUpperCase()}`, why: `the layers are ${compression}-compressed, which Linux's squashfs does not read` });
  return needs;
}

/** The needs `config` does not meet (neither built in nor a module). */
export function unmetNeeds(config: KernelConfig, needs: readonly KernelNeed[]): KernelNeed[] {
  return needs.filter((n) => {
    const v = config.get(n.option);
    return v !== 'y' && v !== 'm';
  });
}

/** One line for a message: `CONFIG_SQUASHFS_ZSTD (the layers are zstd-compressed), …`. */
export function describeUnmet(unmet: readonly KernelNeed[]): string {
  return unmet.map((n) => `CONFIG_${n.option} (${n.why})`).join(', ');
}
