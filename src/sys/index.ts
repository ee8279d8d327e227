/** The public module of src/sys/: what the other parts may use. */
export * from './arch.js';
export * from './digest.js';
export * from './dirs.js';
export * from './durable.js';
export * from './epoch.js';
export * from './errors.js';
export * from './exec.js';
export * from './interrupt.js';
export * from './mount.js';
export * from './package.js';
export * from './proc.js';
export * from './progress.js';
export * from './zstd.js';
