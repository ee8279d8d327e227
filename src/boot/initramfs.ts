/**
 * `stackboot initramfs`: builds the boot hook in the chosen flavor, one module each,
 * matching `templates/` (DESIGN.md, "Hook, three ways"):
 *
 * - `standalone` (standalone.ts): a complete busybox initrd, a reproducible newc cpio;
 * - `initramfs-tools` (initramfs-tools.ts): a hook, a `boot=stackboot` script and a conf
 *   hook, plus the core;
 * - `dracut` (dracut.ts): a `modules.d/90stackboot` module, plus the core.
 *
 * What they share: render.ts (templates, boot.conf, the shell core), modules.ts (the
 * kernel modules shipped), hook.ts (options, result, atomic writes).
 */
import { StackbootError } from '../sys/index.js';
import { buildDracut } from './dracut.js';
import { FLAVORS } from './flavor.js';
import type { InitramfsOptions, InitramfsResult } from './hook.js';
import { buildInitramfsTools } from './initramfs-tools.js';
import { buildStandalone } from './standalone.js';

// the boot config's API and the option types, for the callers of buildInitramfs
export { BOOT_CONFIG_KEYS, defaultBootConfig, makeBootConfig, parseBootConfigText, parseSetting, setBootConfigValue, validateBootConfig } from './bootconfig.js';
export type { BootConfig, BootConfigKey, OnFail, UpperKind, VerifyMode } from './bootconfig.js';
export { FLAVORS, type Flavor, type Compression } from './flavor.js';
export type { InitramfsOptions, InitramfsResult } from './hook.js';

/** Builds the hook in the chosen flavor. */
export async function buildInitramfs(opts: InitramfsOptions): Promise<InitramfsResult> {
  for (const m of opts.modules ?? []) {
    if (!/^[A-Za-z0-9_-]+$/.test(m)) throw new StackbootError('CONFIG', `bad kernel module name ${JSON.stringify(m)}`);
  }
  switch (opts.flavor) {
    case 'standalone':
      return buildStandalone(opts);
    case 'initramfs-tools':
      return buildInitramfsTools(opts);
    case 'dracut':
      return buildDracut(opts);
    default:
      throw new StackbootError('USAGE', `unknown initramfs flavor ${String(opts.flavor)} (${FLAVORS.join(', ')})`);
  }
}
