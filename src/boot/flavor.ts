/** The boot-hook flavors `stackboot initramfs` renders, and the standalone initrd's compressions. */
export type Flavor = 'standalone' | 'initramfs-tools' | 'dracut';
export const FLAVORS: readonly Flavor[] = ['standalone', 'initramfs-tools', 'dracut'];
export type Compression = 'gzip' | 'zstd';
export const COMPRESSIONS: readonly Compression[] = ['gzip', 'zstd'];
