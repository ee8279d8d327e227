/**
 * Delta bundle benchmark: for a change to the app layer, the bytes of the delta bundle
 * (against the previous build) versus the full bundle and versus the whole disk image.
 * Goal: delta ≤ 5 % of the full bundle.
 *
 * benchDelta(oldBuild, newBuild) works on any two build output folders (e.g. two builds of
 * images/debian that differ in their app layer). benchDeltaRows() is what the bench runner
 * calls: it uses SB_BENCH_DELTA_OLD / SB_BENCH_DELTA_NEW when set, else builds of
 * images/debian under .cache/bench/debian-{old,new} when they exist, else builds
 * images/demo and images/demo-update (say so in the row).
 */
import { existsSync, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { baseLayers, writeBundle } from '../src/format/bundle.js';
import { assembleDisk, MiB } from '../src/media/disk.js';
import { loadRecipe } from '../src/build/recipe.js';
import { buildStack } from '../src/build/stack.js';
import { stageStore } from '../src/format/store.js';
import { generateKeyPair } from '../src/format/signature.js';

export interface DeltaBench {
  deltaBytes: number;
  fullBytes: number;
  imageBytes: number;
}

class Counter extends Writable {
  n = 0;
  _write(chunk: Buffer, _enc: string, cb: () => void): void {
    this.n += chunk.length;
    cb();
  }
}

async function bundleBytes(buildDir: string, key: string, base?: Set<string>): Promise<number> {
  const c = new Counter();
  await writeBundle({ buildDir, out: c, key, baseDigests: base });
  return c.n;
}

/** Sizes of the delta (new against old), the full bundle of new, and a disk image of new. */
export async function benchDelta(oldBuild: string, newBuild: string, o: { tmpDir?: string } = {}): Promise<DeltaBench> {
  const work = await fs.mkdtemp(path.join(o.tmpDir ?? os.tmpdir(), 'sb-bench-delta-'));
  try {
    const key = path.join(work, 'bench.key');
    await fs.writeFile(key, generateKeyPair().privatePem, { mode: 0o600 });
    const fullBytes = await bundleBytes(newBuild, key);
    const deltaBytes = await bundleBytes(newBuild, key, (await baseLayers(oldBuild)).digests);
    // the whole disk image: a GPT disk whose store holds the new stack in slot a
    const storeDir = path.join(work, 'store');
    await stageStore(storeDir, { slots: { a: { buildDir: newBuild, status: 'good' } } });
    const img = path.join(work, 'disk.img');
    const storeSize = Math.ceil((fullBytes * 1.3 + 16 * MiB) / MiB) * MiB;
    await assembleDisk(img, { seed: 'bench', epoch: 0, parts: [{ name: 'sb-store', type: 'linux', size: storeSize, content: { kind: 'ext4', dir: storeDir, label: 'sb-store' } }] });
    const imageBytes = (await fs.stat(img)).size;
    return { deltaBytes, fullBytes, imageBytes };
  } finally {
    await fs.rm(work, { recursive: true, force: true });
  }
}

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

async function build(recipeDir: string, out: string): Promise<string> {
  const recipe = await loadRecipe(recipeDir, { arch: 'amd64' });
  await buildStack(recipe, { outDir: out, cacheDir: path.join(REPO, '.cache', 'e2e', 'layer-cache'), epoch: 0, arch: 'amd64', uid: process.getuid?.(), progress: () => {} });
  return out;
}

export async function benchDeltaRows(): Promise<{ metric: string; value: string; goal?: string }[]> {
  let oldB = process.env.SB_BENCH_DELTA_OLD;
  let newB = process.env.SB_BENCH_DELTA_NEW;
  let what = 'given builds';
  if (!oldB || !newB) {
    const d = path.join(REPO, '.cache', 'bench');
    if (existsSync(path.join(d, 'debian-old', 'manifest')) && existsSync(path.join(d, 'debian-new', 'manifest'))) {
      oldB = path.join(d, 'debian-old');
      newB = path.join(d, 'debian-new');
      what = 'images/debian';
    } else {
      oldB = await build(path.join(REPO, 'images', 'demo'), path.join(d, 'delta-demo'));
      newB = await build(path.join(REPO, 'images', 'demo-update'), path.join(d, 'delta-demo-update'));
      what = 'images/demo -> demo-update (images/debian builds not found)';
    }
  }
  const r = await benchDelta(oldB, newB);
  const pct = (a: number, b: number) => `${((a / b) * 100).toFixed(2)} %`;
  return [
    { metric: `delta bundle, app layer change (${what})`, value: `${r.deltaBytes} B` },
    { metric: 'delta / full bundle', value: `${pct(r.deltaBytes, r.fullBytes)} (full ${r.fullBytes} B)`, goal: '≤ 5 %' },
    { metric: 'delta / disk image', value: `${pct(r.deltaBytes, r.imageBytes)} (image ${r.imageBytes} B)` },
  ];
}
