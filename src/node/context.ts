/**
 * Where the node-side commands find their store. On a booted node the hook wrote
 * `/run/stackboot/booted` (docs/PROTOCOL.md): the store is mounted (read-only) at
 * `store_mnt` and `slot` is booted. For tests and rescue work, a store folder can be
 * named directly (`--store DIR`, with `--booted-slot a|b|none`).
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { StackbootError, remount, writeDurable } from '../sys/index.js';
import { withLock } from './lock.js';
import { isSlot, type SlotName, Store } from '../format/index.js';

export interface Booted {
  store_dev: string;
  store_id: string;
  store_mnt: string;
  slot: SlotName;
  stack: string;
  status: string;
  tries: string;
  fallback: string;
  upper: string;
  data_dev: string;
  [k: string]: string;
}

export interface NodeContext {
  store: Store;
  /** the booted slot on this store, or null (not booted from it) */
  bootedSlot: SlotName | null;
  /** the booted record, when the store came from it */
  booted: Booted | null;
  /** the booted record's file (null with --store) */
  bootedFile: string | null;
  /** remount the store rw around writes (a real booted store that is kept read-only) */
  remount: boolean;
  /** the store lock (src/node/lock.ts): in /run on a booted node, in the folder for --store */
  lockDir: string;
}

export function parseBooted(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const eq = line.indexOf('=');
    if (eq > 0) out[line.slice(0, eq)] = line.slice(eq + 1);
  }
  return out;
}

export async function readBooted(runDir = '/run'): Promise<{ file: string; booted: Booted } | null> {
  const file = path.join(runDir, 'stackboot', 'booted');
  const t = await fs.readFile(file, 'utf8').catch(() => null);
  if (t === null) return null;
  const b = parseBooted(t);
  if (!isSlot(b.slot ?? '')) throw new StackbootError('STORE', `${file}: bad slot ${JSON.stringify(b.slot)}`);
  return { file, booted: b as Booted };
}

export interface NodeOptions {
  /** a store folder (instead of the booted one) */
  store?: string;
  /** with `store`: the slot to treat as booted ('none' or undefined: none) */
  bootedSlot?: string;
  /** default /run */
  runDir?: string;
}

export async function nodeContext(o: NodeOptions = {}): Promise<NodeContext> {
  if (o.store) {
    const store = await Store.open(o.store);
    let bootedSlot: SlotName | null = null;
    if (o.bootedSlot && o.bootedSlot !== 'none') {
      if (!isSlot(o.bootedSlot)) throw new StackbootError('USAGE', `--booted-slot must be a, b or none`);
      bootedSlot = o.bootedSlot;
    }
    return { store, bootedSlot, booted: null, bootedFile: null, remount: false, lockDir: path.join(store.dir, '.stackboot.lock') };
  }
  const r = await readBooted(o.runDir);
  if (!r) throw new StackbootError('STORE', `not booted by stackboot (no ${path.join(o.runDir ?? '/run', 'stackboot', 'booted')}); name a store with --store DIR`);
  const store = await Store.open(r.booted.store_mnt);
  return { store, bootedSlot: r.booted.slot, booted: r.booted, bootedFile: r.file, remount: r.booted.upper !== 'disk', lockDir: path.join(path.dirname(r.file), 'store.lock') };
}

/**
 * Runs fn holding the store lock (src/node/lock.ts) for `what`. Commands that read the state
 * and then write it take it around both, so no other writer comes in between.
 */
export function withStoreLock<T>(ctx: NodeContext, what: string, fn: () => Promise<T>): Promise<T> {
  return withLock(ctx.lockDir, what, fn);
}

/**
 * Runs fn with the store writable (remount rw, and back to ro after, on a booted node),
 * holding the store lock: another writer's remount ro must not come in the middle.
 */
export async function withWritableStore<T>(ctx: NodeContext, what: string, fn: () => Promise<T>): Promise<T> {
  return withStoreLock(ctx, what, async () => {
    if (!ctx.remount) return fn();
    await remount(ctx.store.dir, 'rw');
    try {
      return await fn();
    } finally {
      await remount(ctx.store.dir, 'ro').catch(() => {});
    }
  });
}

/** Updates keys of the booted record (as stackboot-node does), atomically. */
export async function updateBooted(ctx: NodeContext, set: Record<string, string>): Promise<void> {
  if (!ctx.bootedFile) return;
  const t = await fs.readFile(ctx.bootedFile, 'utf8');
  const lines = t.split('\n').filter((l) => l !== '');
  const out = lines.map((l) => {
    const k = l.slice(0, l.indexOf('='));
    return k in set ? `${k}=${set[k]}` : l;
  });
  await writeDurable(ctx.bootedFile, out.join('\n') + '\n');
}
