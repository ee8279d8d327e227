/** The public module of src/boot/: what the other parts may use. */
export * from './bootconfig.js';
export * from './cpio.js';
export * from './flavor.js';
export * from './initramfs.js';
export * from './kernel.js';
export * from './target.js';
export * from './programs.js';
