/**
 * The layer cache's pruning, on a cache filled by real builds (gensquashfs): least
 * recently used first, by age, stray files, and what a build does after.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { cacheUsage, planPrune, prune } from '../../src/build/cache.js';
import { parseRecipe } from '../../src/build/recipe.js';
import { buildStack, type BuildResult } from '../../src/build/stack.js';
import { tmpdir } from './sources/tarfixture.js';

const DAY = 86_400_000;

/** Builds a one-layer stack of `bytes` bytes of `name`'s content into `out` with the cache `cache`. */
async function buildOne(d: string, name: string, bytes: number, cache: string, out = path.join(d, `out-${name}`)): Promise<BuildResult> {
  const tree = path.join(d, `tree-${name}`);
  // made once: a rewritten file is a changed input (its ctime), never a cache hit
  if (!(await fs.stat(tree).catch(() => null))) {
    await fs.mkdir(tree, { recursive: true });
    await fs.writeFile(path.join(tree, 'f'), Buffer.from(Array.from({ length: bytes }, (_, i) => (i * 7919 + name.charCodeAt(0) * 31) % 251)));
  }
  const f = path.join(d, `${name}.json`);
  await fs.writeFile(f, JSON.stringify({ name, version: '1', compatible: 'c', layers: [{ name: 'l', source: { type: 'dir', path: tree } }] }));
  return buildStack(parseRecipe(await fs.readFile(f, 'utf8'), f, { arch: 'amd64' }), { outDir: out, cacheDir: cache, epoch: 0, arch: 'amd64', uid: 0, progress: () => {} });
}

/** Sets the last use of a cached layer (its key files' mtime) to `daysAgo`. */
async function lastUsed(cache: string, r: BuildResult, daysAgo: number): Promise<void> {
  const t = new Date(Date.now() - daysAgo * DAY);
  await fs.utimes(path.join(cache, 'keys', r.layers[0].key), t, t);
}

describe('cache prune', () => {
  it('removes by age, then least recently used until it fits; a build after compresses only what went, outputs keep theirs', async () => {
    const d = await tmpdir('sb-cache-');
    const cache = path.join(d, 'cache');
    const a = await buildOne(d, 'a', 200_000, cache);
    const b = await buildOne(d, 'b', 300_000, cache);
    const c = await buildOne(d, 'c', 100_000, cache);
    await lastUsed(cache, a, 40);
    await lastUsed(cache, b, 10);
    await lastUsed(cache, c, 1);
    const u = await cacheUsage(cache);
    expect(u.layers.map((l) => l.digest)).toEqual([c, b, a].map((r) => r.layers[0].digest));
    expect(u.bytes).toBe(a.layers[0].size + b.layers[0].size + c.layers[0].size);

    // a: unused for 40 days; then b, the least recently used left, until c fits
    const plan = await planPrune(cache, { olderThanDays: 30, maxBytes: c.layers[0].size });
    expect(plan.remove.map((l) => [l.digest, l.why])).toEqual([
      [a.layers[0].digest, 'unused for 40 days'],
      [b.layers[0].digest, 'least recently used, over the size'],
    ]);
    expect(plan.left).toBe(c.layers[0].size);
    await prune(plan);
    expect((await cacheUsage(cache)).layers.map((l) => l.digest)).toEqual([c.layers[0].digest]);
    // the outputs still hold their layers (hard links), and a hit touches the key
    expect((await fs.stat(a.layers[0].file)).size).toBe(a.layers[0].size);
    await lastUsed(cache, c, 5);
    const c2 = await buildOne(d, 'c', 100_000, cache, path.join(d, 'out-c2'));
    expect(c2.layers[0].cached).toBe(true);
    expect(Date.now() - (await cacheUsage(cache)).layers[0].used).toBeLessThan(60_000);
    // a pruned layer is built again, to the same digest
    const a2 = await buildOne(d, 'a', 200_000, cache, path.join(d, 'out-a2'));
    expect([a2.layers[0].cached, a2.layers[0].digest]).toEqual([false, a.layers[0].digest]);
  });

  it('removes stray files (a key of a missing layer, an old temporary file), never a young one a running build may own', async () => {
    const d = await tmpdir('sb-cache-stray-');
    const cache = path.join(d, 'cache');
    const a = await buildOne(d, 'a', 50_000, cache);
    const orphanKey = path.join(cache, 'keys', 'f'.repeat(64));
    await fs.writeFile(orphanKey, `${'e'.repeat(64)}\n1 2 3\n`);
    const oldTmp = path.join(cache, 'layers', 'x.sqfs.tmp-0001');
    const youngTmp = path.join(cache, 'layers', 'y.sqfs.tmp-0002');
    await fs.writeFile(oldTmp, 'half');
    await fs.writeFile(youngTmp, 'half');
    const old = new Date(Date.now() - 2 * 60 * 60 * 1000);
    await fs.utimes(oldTmp, old, old);
    const plan = await planPrune(cache, { olderThanDays: 1000 });
    expect(plan.remove).toEqual([]);
    expect(plan.stray.map((s) => s.file).sort()).toEqual([orphanKey, oldTmp].sort());
    await prune(plan);
    await expect(fs.stat(orphanKey)).rejects.toThrow(/ENOENT/);
    await expect(fs.stat(oldTmp)).rejects.toThrow(/ENOENT/);
    expect((await fs.stat(youngTmp)).size).toBe(4);
    expect((await cacheUsage(cache)).layers.map((l) => l.digest)).toEqual([a.layers[0].digest]);
  });

  it('an empty or missing cache is zero, a file is refused', async () => {
    const d = await tmpdir('sb-cache-none-');
    expect(await cacheUsage(path.join(d, 'none'))).toEqual({ dir: path.join(d, 'none'), layers: [], bytes: 0, stray: [] });
    await fs.writeFile(path.join(d, 'file'), 'x');
    await expect(cacheUsage(path.join(d, 'file'))).rejects.toMatchObject({ code: 'USAGE' });
  });
});
