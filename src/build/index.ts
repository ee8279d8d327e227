/** The public module of src/build/: what the other parts may use. */
export * from './cache.js';
export * from './layer.js';
export * from './recipe.js';
export * from './sources/dir.js';
export * from './sources/oci.js';
export * from './sources/run.js';
export * from './sources/tar.js';
export * from './squashfs.js';
export * from './stack.js';
export * from './stack-kernel.js';
export * from './squashfs-read.js';
export * from './verity.js';
