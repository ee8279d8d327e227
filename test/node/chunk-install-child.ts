/** A chunk install in its own process (chunk-install.int.test.ts kills it in the middle of the reassembly). */
import { createReadStream } from 'node:fs';
import path from 'node:path';
import { Store } from '../../src/format/store.js';
import { install } from '../../src/node/install.js';
import { httpChunkSource } from '../../src/node/chunk-source.js';

const [dir, bundle, url, keysDir] = process.argv.slice(2);
const store = await Store.open(dir);
await install({ ctx: { store, bootedSlot: 'a', booted: null, bootedFile: null, remount: false, lockDir: path.join(dir, '.stackboot.lock') }, stream: createReadStream(bundle), label: 'delta', keysDir, tries: 3, chunkSource: httpChunkSource(url) });
