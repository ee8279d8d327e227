/**
 * gc: removes the layers that no slot references (and the temp files an interrupted
 * install left in layers/: sys/durable.ts's isTempName). The booted stack's layers are always kept, even if its slot was
 * changed under it. A slot's manifest counts while it exists, state line or not.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { withStoreLock, withWritableStore, type NodeContext } from './context.js';
import { SLOTS } from '../format/index.js';
import { isTempName } from '../sys/index.js';

export interface GcResult {
  removed: { digest: string; bytes: number }[];
  partials: string[];
  kept: number;
  freed: number;
  dryRun: boolean;
}

/**
 * Removes what no slot references. It plans and removes under the store lock: an install
 * that runs meanwhile would otherwise lose its temp files and its new layers (written
 * before the slot's manifest references them), and see the store remounted read-only.
 */
export async function gc(ctx: NodeContext, o: { dryRun?: boolean } = {}): Promise<GcResult> {
  if (o.dryRun) return plan(ctx, true);
  return withStoreLock(ctx, 'gc', async () => {
    const r = await plan(ctx, false);
    if (r.removed.length === 0 && r.partials.length === 0) return r;
    const dir = path.join(ctx.store.dir, 'layers');
    await withWritableStore(ctx, 'gc', async () => {
      for (const x of r.removed) await fs.rm(ctx.store.layerPath(x.digest), { force: true });
      for (const p of r.partials) await fs.rm(path.join(dir, p), { force: true });
      const fh = await fs.open(dir, 'r');
      await fh.sync();
      await fh.close();
    });
    return r;
  });
}

async function plan(ctx: NodeContext, dryRun: boolean): Promise<GcResult> {
  const o = { dryRun };
  const store = ctx.store;
  const keep = new Set<string>();
  for (const s of SLOTS) {
    const m = await store.slotManifest(s).catch(() => null);
    for (const l of m?.manifest.layers ?? []) keep.add(l.digest);
  }
  // the booted stack's layers: from its manifest if the slot still holds it; if not, we
  // cannot know them for sure, so keep everything
  if (ctx.bootedSlot) {
    const m = await store.slotManifest(ctx.bootedSlot).catch(() => null);
    const bootedStack = ctx.booted?.stack;
    if (!m || (bootedStack && m.id !== bootedStack)) {
      return { removed: [], partials: [], kept: (await store.layerDigests()).length, freed: 0, dryRun: !!o.dryRun };
    }
    for (const l of m.manifest.layers) keep.add(l.digest);
  }
  const dir = path.join(store.dir, 'layers');
  const names = await fs.readdir(dir).catch(() => [] as string[]);
  const removed: GcResult['removed'] = [];
  const partials: string[] = [];
  for (const n of names) {
    if (/^[0-9a-f]{64}\.sqfs$/.test(n)) {
      if (keep.has(n.slice(0, 64))) continue;
      const st = await fs.stat(path.join(dir, n));
      removed.push({ digest: n.slice(0, 64), bytes: st.size });
    } else if (isTempName(n)) partials.push(n);
  }
  return { removed, partials, kept: keep.size, freed: removed.reduce((a, x) => a + x.bytes, 0), dryRun: !!o.dryRun };
}
