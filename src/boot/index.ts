/** The public module of src/boot/: what the other parts may use. */
export * from './bootconfig.js';
export * from './cpio.js';
export * from './flavor.js';
export * from './initramfs.js';
export * from './kernel.js';
export * from './kconfig.js';
export * from './target.js';
export { TEMPLATES_DIR, CORE_DIR, SB_LIB, BOOT_CONF, shellQuote, renderTemplate, renderBootConfig, checkShellSyntax, readCore } from './render.js';
export { DEFAULT_MODULES, OPTIONAL_MODULES } from './modules.js';
export { checkStaticElf } from './elf.js';
export { PE_MACHINE, EFI_BOOT_PATH, peMachine, checkPe } from './pe.js';
export { TEMPLATE_APPLETS, busyboxApplets, compressArchive, buildStandalone } from './standalone.js';
export { buildInitramfsTools } from './initramfs-tools.js';
export { DRACUT_REQUIRED_TOOLS, buildDracut } from './dracut.js';
export * from './programs.js';
