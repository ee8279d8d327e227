/**
 * The killed chunk install (chunk-install.int and frame-delta.int): a harness of its own,
 * apart from chunk-fixtures.ts, which the benchmarks import outside vitest.
 */
import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'vitest';
import type { Store } from '../../src/format/store.js';
import { isTempName } from '../../src/sys/durable.js';
import { gc } from '../../src/node/gc.js';
import { snapshot } from './store-loop.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
/**
 * A chunk install of `bundle` into `store` in a process of its own (test/node/
 * chunk-install-child.ts), killed once it writes the layer's temp file (and `ready()`):
 * then the old stack must be whole, no layer under `digest`, and gc must sweep the temp.
 */
export async function killMidReassembly(o: { store: Store; bundle: string; url: string; keysDir: string; digest: string; ready?: () => boolean }): Promise<void> {
  const { store } = o;
  const before = await snapshot(store.dir);
  const script = path.join(REPO, 'test', 'node', 'chunk-install-child.ts');
  const child = spawn('npx', ['tsx', script, store.dir, o.bundle, o.url, o.keysDir], { stdio: ['ignore', 'ignore', 'pipe'], detached: true });
  let err = '';
  child.stderr.on('data', (d) => (err += d));
  try {
    let temp = false;
    for (let i = 0; i < 600 && !(temp && (o.ready?.() ?? true)); i++) {
      await new Promise((r) => setTimeout(r, 100));
      temp = (await fs.readdir(path.join(store.dir, 'layers'))).some(isTempName);
    }
    expect(temp, `the child is reassembling (${err})`).toBe(true);
    process.kill(-child.pid!, 'SIGKILL');
    await new Promise((r) => child.once('exit', r));
    expect(await fs.stat(store.layerPath(o.digest)).catch(() => null)).toBeNull();
    const oldM = (await store.slotManifest('a'))!;
    expect(await store.checkLayers(oldM.manifest, true)).toEqual([]);
    expect((await store.readState()).slots.a?.status).toBe('good');
    const g = await gc({ store, bootedSlot: 'a', booted: null, bootedFile: null, remount: false, lockDir: path.join(store.dir, '.stackboot.lock') });
    expect(g.partials.length).toBe(1);
    expect(await snapshot(store.dir)).toBe(before);
  } finally {
    if (child.exitCode === null && child.signalCode === null) process.kill(-child.pid!, 'SIGKILL');
  }
}
