/**
 * The `initramfs-tools` flavor (Debian, Ubuntu): `templates/initramfs-tools/` rendered into
 * a hook (hooks/stackboot), a `boot=stackboot` script (scripts/stackboot) and a conf hook,
 * beside the shell core, boot.conf and INSTALL, for the host's update-initramfs to build.
 */
import { hookInputs, pubKeyFiles, writeTree, type InitramfsOptions, type InitramfsResult, type OutFile } from './hook.js';
import { BOOT_CONF, SB_LIB, renderBootConfig, renderTemplate } from './render.js';
import { VERITY_HASH_MODULES } from './modules.js';

/** Tools the initramfs-tools hook copies when the build host has them (util-linux versions). */
// kexec (kexec-tools): for stacks that carry their own kernel (initramfs/kexec.sh)
/** kexec: stack kernels; dmsetup, signify-openbsd (or openssl), base64: verified boot (initramfs/verity.sh). */
const ITOOLS_COPY_EXEC = ['blkid', 'losetup', 'kexec', 'dmsetup', 'signify-openbsd', 'openssl', 'base64'];

const SHARE_DIR = '/usr/share/stackboot';

/** initramfs-tools: hooks/stackboot, scripts/stackboot, conf-hooks.d/stackboot, the core and boot.conf, INSTALL. */
export async function buildInitramfsTools(opts: InitramfsOptions): Promise<InitramfsResult> {
  const { hostBusybox, templatesDir, cfg, mods, core } = await hookInputs(opts);
  const ctx = {
    sbLib: SB_LIB,
    bootConf: BOOT_CONF,
    shareDir: SHARE_DIR,
    hostConf: '/etc/stackboot/boot.conf',
    modules: mods.modules,
    hashModules: VERITY_HASH_MODULES,
    copyExec: ITOOLS_COPY_EXEC,
    fallbackDelay: Math.max(cfg.ON_FAIL_DELAY, 1),
    keys: (opts.pubKeys ?? []).length > 0,
  };
  const files: OutFile[] = [
    { rel: 'hooks/stackboot', data: await renderTemplate('initramfs-tools/hook.hbs', ctx, templatesDir), mode: 0o755, shell: true },
    { rel: 'scripts/stackboot', data: await renderTemplate('initramfs-tools/script.hbs', ctx, templatesDir), mode: 0o755, shell: true },
    { rel: 'conf-hooks.d/stackboot', data: await renderTemplate('initramfs-tools/conf-hook.hbs', ctx, templatesDir), mode: 0o644, shell: true },
    { rel: 'boot.conf', data: await renderBootConfig(cfg, templatesDir), mode: 0o644 },
    ...core.map((f) => ({ rel: `lib/${f.name}`, data: f.data, mode: 0o644 })),
    ...(await pubKeyFiles(opts.pubKeys ?? [], 'keys')),
    { rel: 'INSTALL', data: await renderTemplate('initramfs-tools/INSTALL.hbs', ctx, templatesDir), mode: 0o644 },
  ];
  const written = await writeTree(opts.out, files, hostBusybox);
  return { flavor: 'initramfs-tools', out: opts.out, files: written, modules: mods.modules, builtin: mods.builtin, skipped: mods.skipped, kver: mods.kver };
}
