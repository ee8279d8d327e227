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

