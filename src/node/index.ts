/** The public module of src/node/: what the other parts may use. */
export * from './config.js';
export * from './context.js';
export * from './doctor.js';
export * from './download.js';
export * from './gc.js';
export * from './install.js';
export * from './lock.js';
export * from './migrate.js';
export * from './paths.js';
export * from './rollback.js';
export * from './reset.js';
export * from './watchdog.js';
export * from './kernel-support.js';
export * from './boot-update.js';
export * from './firmware.js';
export * from './chunk-install.js';
export * from './chunk-source.js';
