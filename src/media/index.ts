/** The public module of src/media/: what the other parts may use. */
export * from './blockdev.js';
export * from './bmap.js';
export * from './disk.js';
export * from './flash.js';
export * from './image.js';
export * from './layout.js';
export * from './bootpart.js';
