/** Node disk layouts (sd, nvme, custom) and their default partition sizes. */
export type ImageLayout = 'sd' | 'nvme' | 'custom';
export const IMAGE_LAYOUTS: readonly ImageLayout[] = ['sd', 'nvme', 'custom'];

/** Sizes per layout (MiB). `store: 0` means: fit the stack with room for an update. */
export const LAYOUT_DEFAULTS: Record<ImageLayout, { bootMiB: number; storeMiB: number; dataMiB: number; pow2: boolean }> = {
  // SD: small, and the whole image rounded up to a power of two (SD cards are, and QEMU's
  // sd-card model insists); the data partition takes the rounding.
  sd: { bootMiB: 64, storeMiB: 0, dataMiB: 64, pow2: true },
  // NVMe: a roomier boot partition (several kernels on Jetson) and store.
  nvme: { bootMiB: 256, storeMiB: 0, dataMiB: 256, pow2: false },
  custom: { bootMiB: 64, storeMiB: 0, dataMiB: 64, pow2: false },
};

const MiB = 1 << 20;
/** What an initrd may take on the boot partition (the standalone one: 4–6 MiB; with kexec, dm-verity and keys, or a distribution's, more). */
const INITRD_ROOM = 16 * MiB;

/**
 * The boot partition a kernel of `kernelBytes` (plus a device tree) needs, in MiB: a
 * `boot-update` writes the next kernel and initrd beside the ones that boot now (they stay
 * as `previous`), so two such sets, a quarter more for a larger next kernel, in 16 MiB
 * steps. An arm64 Debian kernel (33 MiB) needs 128 MiB; an amd64 one (8 MiB) 64.
 * `onceBytes`: what the partition holds once, whatever the updates (the UEFI boot
 * program of `--efi-boot`).
 */
export function bootRoomMiB(kernelBytes: number, fdtBytes = 0, onceBytes = 0): number {
  const need = 2 * (kernelBytes + fdtBytes + INITRD_ROOM) * 1.25 + onceBytes;
  return Math.ceil(need / (16 * MiB)) * 16;
}
