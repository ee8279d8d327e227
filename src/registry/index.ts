/** The public module of src/registry/: OCI registries as a place stacks travel through. */
export * from './artifact.js';
export * from './auth.js';
export * from './blob.js';
export * from './client.js';
export * from './connect.js';
export * from './pull.js';
export * from './push.js';
export * from './reference.js';
export * from './source.js';
