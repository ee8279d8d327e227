/** The public module of src/format/: what the other parts may use. */
export * from './bundle.js';
export * from './chunks.js';
export * from './manifest.js';
export * from './signature.js';
export * from './state.js';
export * from './reset.js';
export * from './oneline.js';
export * from './store.js';
export * from './tarfile.js';
export * from './version.js';
export * from './chunker.js';
export * from './frames.js';
export * from './verity-tree.js';
