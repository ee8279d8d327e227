/**
 * The 1 GiB reassembly of bench/chunks.ts in a process of its own, so that its memory is
 * its own: plans (cuts the store's layers, fetches the index), then rebuilds the layer and
 * prints one JSON line: the times, the bytes fetched, and the resident memory before the
 * reassembly and at its peak (VmHWM, reset after the plan with clear_refs).
 * Arguments: <store dir> <build output dir> <server URL>.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { chunkIndexRefs } from '../src/format/chunks.js';
import { parseManifest } from '../src/format/manifest.js';
import { Store } from '../src/format/store.js';
import { installChunked, planChunks } from '../src/node/chunk-install.js';
import { httpChunkSource } from '../src/node/chunk-source.js';

const [storeDir, buildDir, url] = process.argv.slice(2);
const vm = async (key: string) => Number(new RegExp(`${key}:\\s+(\\d+) kB`).exec(await fs.readFile('/proc/self/status', 'utf8'))![1]) * 1024;
const store = await Store.open(storeDir);
const m = parseManifest(await fs.readFile(path.join(buildDir, 'manifest'), 'utf8'));
const layer = m.layers[0];
const src = httpChunkSource(url);
const t0 = performance.now();
const plan = await planChunks(store, layer, chunkIndexRefs(m).get(layer.digest)!, src);
await fs.writeFile('/proc/self/clear_refs', '5');
const before = await vm('VmRSS');
const t1 = performance.now();
const r = await installChunked(store, plan, src, () => {});
const t2 = performance.now();
process.stdout.write(JSON.stringify({ planMs: t1 - t0, ms: t2 - t1, fetched: r.fetched, fallback: r.fallback ?? null, before, peak: await vm('VmHWM') }) + '\n');
