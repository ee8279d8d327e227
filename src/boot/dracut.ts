/**
 * The `dracut` flavor (Fedora, RHEL, Arch, …): `templates/dracut/` rendered into a
 * `modules.d/90stackboot` module (module-setup.sh, the cmdline and mount hooks, the shell
 * core, boot.conf), a dracut.conf.d snippet and INSTALL, for the host's dracut to build.
 */
import { hookInputs, pubKeyFiles, writeTree, type InitramfsOptions, type InitramfsResult, type OutFile } from './hook.js';
import { BOOT_CONF, SB_LIB, renderBootConfig, renderTemplate } from './render.js';
import { VERITY_HASH_MODULES } from './modules.js';

/** Tools the dracut module installs: the ones the core runs (required; dracut's base module brings only a few) and nice-to-have ones. */
export const DRACUT_REQUIRED_TOOLS: readonly string[] = ['tail', 'losetup', 'sha256sum', 'sync', 'dd', 'od', 'tr', 'wc', 'cat', 'cp', 'mv', 'rm', 'mkdir', 'readlink', 'date', 'sleep', 'mount', 'umount', 'modprobe'];
// kexec (kexec-tools): for stacks that carry their own kernel (initramfs/kexec.sh)
/** kexec: stack kernels; dmsetup, signify-openbsd (or openssl), base64: verified boot (initramfs/verity.sh). */
const DRACUT_OPTIONAL_TOOLS = ['blkid', 'reboot', 'stat', 'sed', 'grep', 'awk', 'setsid', 'kexec', 'dmsetup', 'signify-openbsd', 'openssl', 'base64'];

/** dracut: modules.d/90stackboot/ (module-setup.sh, the hooks, the core, boot.conf), dracut.conf.d/stackboot.conf, INSTALL. */
export async function buildDracut(opts: InitramfsOptions): Promise<InitramfsResult> {
  const { hostBusybox, templatesDir, cfg, mods, core } = await hookInputs(opts);
  const ctx = {
    sbLib: SB_LIB,
    bootConf: BOOT_CONF,
    modules: mods.modules,
    hashModules: VERITY_HASH_MODULES,
    requiredTools: DRACUT_REQUIRED_TOOLS,
    optionalTools: DRACUT_OPTIONAL_TOOLS,
    fallbackDelay: Math.max(cfg.ON_FAIL_DELAY, 1),
  };
  const m = 'modules.d/90stackboot';
  const files: OutFile[] = [
    { rel: `${m}/module-setup.sh`, data: await renderTemplate('dracut/module-setup.sh.hbs', ctx, templatesDir), mode: 0o755, shell: true },
    { rel: `${m}/parse-stackboot.sh`, data: await renderTemplate('dracut/parse-stackboot.sh.hbs', ctx, templatesDir), mode: 0o755, shell: true },
    { rel: `${m}/mount-stackboot.sh`, data: await renderTemplate('dracut/mount-stackboot.sh.hbs', ctx, templatesDir), mode: 0o755, shell: true },
    { rel: `${m}/boot.conf`, data: await renderBootConfig(cfg, templatesDir), mode: 0o644 },
    ...core.map((f) => ({ rel: `${m}/lib/${f.name}`, data: f.data, mode: 0o644 })),
    ...(await pubKeyFiles(opts.pubKeys ?? [], `${m}/keys`)),
    { rel: 'dracut.conf.d/stackboot.conf', data: await renderTemplate('dracut/dracut.conf.hbs', ctx, templatesDir), mode: 0o644, shell: true },
    { rel: 'INSTALL', data: await renderTemplate('dracut/INSTALL.hbs', ctx, templatesDir), mode: 0o644 },
  ];
  const written = await writeTree(opts.out, files, hostBusybox);
  return { flavor: 'dracut', out: opts.out, files: written, modules: mods.modules, builtin: mods.builtin, skipped: mods.skipped, kver: mods.kver };
}
