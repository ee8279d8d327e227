/**
 * A store on disk (one per medium): layers/, slots/{a,b}/manifest(.sig), state, events,
 * store-id. This module works on a store folder: a mounted ext4 store on a node, or a
 * staging folder that becomes an ext4 image with `mkfs.ext4 -d` (no root needed). It owns
 * the layout: every file under a store is written here, durably (sys/durable.ts).
 */
import { createHash, randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { sha256File, parsing, StackbootError, makeDir, writeDurable, writeDurableFrom, placeDurable, fsyncPath } from '../sys/index.js';
import { parseManifest, stackId, type LayerRef, type Manifest } from './manifest.js';
import { formatResetRequest, parseResetRequest, type ResetRequest } from './reset.js';
import { oneLine } from './oneline.js';
import { clearSlot, emptyState, markPending, parseState, serializeState, type BootState, type SlotName } from './state.js';

export const STORE_LABEL = 'sb-store';
export const DATA_LABEL = 'sb-data';

export function newStoreId(): string {
  return randomBytes(16).toString('hex');
}

export class Store {
  constructor(readonly dir: string) {}

  layerPath(digest: string): string {
    return path.join(this.dir, 'layers', `${digest}.sqfs`);
  }
  slotDir(slot: SlotName): string {
    return path.join(this.dir, 'slots', slot);
  }

  /** Creates an empty store (store-id, layers/, slots/, state, events). */
  static async create(dir: string, id = newStoreId()): Promise<Store> {
    if (!/^[0-9a-f]{32}$/.test(id)) throw new StackbootError('STORE', `store id must be 32 hex chars`);
    await makeDir(path.join(dir, 'layers'));
    await makeDir(path.join(dir, 'slots', 'a'));
    await makeDir(path.join(dir, 'slots', 'b'));
    await makeDir(path.join(dir, 'upper'));
    const s = new Store(dir);
    await writeDurable(path.join(dir, 'store-id'), id + '\n');
    await writeDurable(path.join(dir, 'events'), '');
    await s.writeState(emptyState());
    return s;
  }

  static async open(dir: string): Promise<Store> {
    const id = await fs.readFile(path.join(dir, 'store-id'), 'utf8').catch(() => '');
    if (!/^[0-9a-f]{32}$/.test(id.trim())) throw new StackbootError('STORE', `${dir} is not a stackboot store (no valid store-id)`);
    return new Store(dir);
  }

  async id(): Promise<string> {
    return (await fs.readFile(path.join(this.dir, 'store-id'), 'utf8')).trim();
  }

  /** The boot state as the hook reads it; the lines it skips go to `problems` (parseState). */
  async readState(problems?: string[]): Promise<BootState> {
    const t = await fs.readFile(path.join(this.dir, 'state'), 'utf8').catch(() => null);
    return t === null ? emptyState() : parsing(path.join(this.dir, 'state'), () => parseState(t, problems));
  }

  /** The factory reset request the next boot carries out, or null (none, or not a request: format/reset.ts). */
  async resetRequest(): Promise<ResetRequest | null> {
    const t = await fs.readFile(path.join(this.dir, 'reset'), 'utf8').catch(() => null);
    return t === null ? null : parseResetRequest(t);
  }

  /** Writes a factory reset request (durable), or removes it (null). */
  async setResetRequest(r: ResetRequest | null): Promise<void> {
    const f = path.join(this.dir, 'reset');
    if (r) await writeDurable(f, formatResetRequest(r));
    else {
      await fs.rm(f, { force: true });
      await fsyncPath(this.dir);
    }
  }

  async writeState(st: BootState): Promise<void> {
    await writeDurable(path.join(this.dir, 'state'), serializeState(st));
  }

  /** The state with `slot` emptied (durable), then its manifest and signature removed. */
  async clearSlot(slot: SlotName): Promise<void> {
    await this.writeState(clearSlot(await this.readState(), slot));
    for (const f of ['manifest', 'manifest.sig']) await fs.rm(path.join(this.slotDir(slot), f), { force: true });
    await makeDir(this.slotDir(slot));
    await fsyncPath(this.slotDir(slot));
  }

  /** The stack of `slot` pending with `tries` (durable). */
  async markPending(slot: SlotName, stack: string, tries: number): Promise<void> {
    await this.writeState(markPending(await this.readState(), slot, stack, tries));
  }

  /** A slot's manifest and its signature (when there is one), each durably: the signature first, so a manifest never lands without it. */
  async writeSlot(slot: SlotName, manifestText: string, sig: string | Buffer | null): Promise<void> {
    if (sig !== null) await writeDurable(path.join(this.slotDir(slot), 'manifest.sig'), sig);
    await writeDurable(path.join(this.slotDir(slot), 'manifest'), manifestText);
  }

  /** The signature file of a slot, or null. */
  async slotSignature(slot: SlotName): Promise<Buffer | null> {
    return fs.readFile(path.join(this.slotDir(slot), 'manifest.sig')).catch(() => null);
  }

  /**
   * Streams a layer into `layers/<sha256>.sqfs`: its size and sha256 are checked against
   * the manifest's entry before the rename, so no wrong bytes ever carry a layer's name.
   * `source` names where the bytes come from (for errors); `what` what that is.
   */
  async putLayer(l: LayerRef, body: AsyncIterable<Buffer>, o: { source: string; what: string; onBytes?(n: number): void }): Promise<void> {
    const verify = (_tmp: string, got: { n: number; digest: string }): void => {
      if (got.n === l.size && got.digest === l.digest) return;
      const why = got.n !== l.size ? `${got.n} bytes, expected ${l.size}` : `sha256 ${got.digest.slice(0, 12)}, expected ${l.digest.slice(0, 12)}`;
      throw new StackbootError('VERIFY', `${o.source}: layer ${l.name} does not match the signed manifest (${why}): tampered or corrupt ${o.what}`);
    };
    try {
      await writeDurableFrom(this.layerPath(l.digest), (tmp) => streamHashed(body, tmp, o.onBytes), { check: verify });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOSPC') throw new StackbootError('NO_SPACE', `the store ${this.dir} is full (writing layer ${l.name})`, { cause: e });
      throw e;
    }
  }

  /** Places a layer file (a build output's) by hard link or copy, durably; unchecked: the build hashed it. */
  async addLayerFile(digest: string, src: string): Promise<void> {
    await placeDurable(src, this.layerPath(digest));
  }

  /** Appends one event line; the reason on one line as the hook writes it (`oneLine`). */
  async appendEvent(event: string, fields: { slot?: string; stack?: string; tries?: number; reason: string }, now = Math.floor(Date.now() / 1000)): Promise<void> {
    const line = `${now} ${event} slot=${fields.slot ?? '-'} stack=${fields.stack ? fields.stack.slice(0, 12) : '-'}${fields.tries !== undefined ? ` tries=${fields.tries}` : ''} reason=${oneLine(fields.reason)}\n`;
    const fh = await fs.open(path.join(this.dir, 'events'), 'a');
    try {
      await fh.write(line);
      await fh.sync();
    } finally {
      await fh.close();
    }
  }

  async events(): Promise<string[]> {
    const t = await fs.readFile(path.join(this.dir, 'events'), 'utf8').catch(() => '');
    // as the hook reads them (sb_events_valid): a time, a lowercase event, slot, stack and
    // reason; a line cut by a power cut is skipped
    return t.split('\n').filter((l) => /^\d+ [a-z]+(?: .*)? slot=.* stack=.* reason=/.test(l));
  }

  /** The manifest of a slot and its stack id, or null when the slot has none. */
  async slotManifest(slot: SlotName): Promise<{ text: string; manifest: Manifest; id: string } | null> {
    const t = await fs.readFile(path.join(this.slotDir(slot), 'manifest'), 'utf8').catch(() => null);
    if (t === null) return null;
    return { text: t, manifest: parseManifest(t), id: stackId(t) };
  }

  async layerDigests(): Promise<string[]> {
    const names = await fs.readdir(path.join(this.dir, 'layers')).catch(() => [] as string[]);
    return names.filter((n) => /^[0-9a-f]{64}\.sqfs$/.test(n)).map((n) => n.slice(0, 64));
  }

  /** Layers of a manifest that are missing or have the wrong size (and sha256 when full). */
  async checkLayers(m: Manifest, full = false): Promise<{ name: string; digest: string; problem: string }[]> {
    const bad: { name: string; digest: string; problem: string }[] = [];
    for (const l of m.layers) {
      const st = await fs.stat(this.layerPath(l.digest)).catch(() => null);
      if (!st) bad.push({ name: l.name, digest: l.digest, problem: 'missing' });
      else if (st.size !== l.size) bad.push({ name: l.name, digest: l.digest, problem: `size ${st.size}, expected ${l.size}` });
      else if (full && (await sha256File(this.layerPath(l.digest))) !== l.digest) bad.push({ name: l.name, digest: l.digest, problem: 'sha256 mismatch' });
    }
    return bad;
  }
}

export interface StageSlot {
  /** build output folder (manifest, manifest.sig?, layers/) */
  buildDir: string;
  status: 'good' | 'pending' | 'bad';
  tries?: number;
}

/**
 * Stages a store folder from build outputs: copies the layers (hard links when
 * possible), the manifests and signatures, and writes the state.
 */
export async function stageStore(dir: string, o: { id?: string; slots: Partial<Record<SlotName, StageSlot>>; current?: SlotName | null; skipLayers?: string[] }): Promise<Store> {
  const store = await Store.create(dir, o.id);
  const st: BootState = emptyState();
  for (const slot of ['a', 'b'] as SlotName[]) {
    const s = o.slots[slot];
    if (!s) continue;
    const text = await fs.readFile(path.join(s.buildDir, 'manifest'), 'utf8').catch((e) => {
      throw new StackbootError('STORE', `${s.buildDir} has no manifest (is it a build output?)`, { cause: e });
    });
    const m = parseManifest(text);
    for (const l of m.layers) {
      if (o.skipLayers?.includes(l.digest)) continue;
      const dst = store.layerPath(l.digest);
      if (await fs.stat(dst).then(() => true, () => false)) continue;
      await store.addLayerFile(l.digest, path.join(s.buildDir, 'layers', `${l.digest}.sqfs`)).catch((e) => {
        throw new StackbootError('STORE', `layer ${l.name} (${l.digest.slice(0, 12)}) is missing from ${s.buildDir}`, { cause: e });
      });
    }
    await store.writeSlot(slot, text, await fs.readFile(path.join(s.buildDir, 'manifest.sig')).catch(() => null));
    st.slots[slot] = s.status === 'pending' ? { status: 'pending', stack: stackId(text), tries: s.tries ?? 3 } : { status: s.status, stack: stackId(text) };
  }
  st.current = o.current !== undefined ? o.current : (['a', 'b'] as SlotName[]).find((s) => st.slots[s]?.status === 'good') ?? null;
  await store.writeState(st);
  return store;
}

export interface StoreInitPlan {
  dir: string;
  id: string;
  /** what is made in `dir` */
  creates: string[];
}

/**
 * Plans an empty store in `dir` (for `init-store`: a new medium, a rescue): the folder
 * must be new or empty (a fresh ext4's lost+found is fine), and is never one that
 * already holds a store.
 */
export async function planStoreInit(dir: string, id = newStoreId()): Promise<StoreInitPlan> {
  if (!/^[0-9a-f]{32}$/.test(id)) throw new StackbootError('USAGE', `a store id is 32 lowercase hex characters, got ${JSON.stringify(id)}`);
  const names = await fs.readdir(dir).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return [] as string[];
    if (e.code === 'ENOTDIR') throw new StackbootError('USAGE', `${dir} is not a folder`);
    throw new StackbootError('IO', `cannot read ${dir}`, { cause: e });
  });
  if (names.includes('store-id')) {
    const old = (await fs.readFile(path.join(dir, 'store-id'), 'utf8').catch(() => '?')).trim();
    throw new StackbootError('STORE', `${dir} is already a store (id ${old}): nothing was changed`);
  }
  const others = names.filter((n) => n !== 'lost+found').sort();
  if (others.length) throw new StackbootError('USAGE', `${dir} is not empty (${others.slice(0, 3).join(', ')}${others.length > 3 ? ', …' : ''}): a store goes into a new or empty folder`);
  return { dir, id, creates: ['store-id', 'state (no stack)', 'events', 'layers/', 'slots/a/', 'slots/b/', 'upper/'] };
}

/** Makes the planned empty store, written to disk before it returns (Store.create writes durably; its folders too). */
export async function initStore(plan: StoreInitPlan): Promise<Store> {
  const s = await Store.create(plan.dir, plan.id);
  for (const d of ['slots', '.']) await fsyncPath(path.join(plan.dir, d));
  return s;
}

/** Writes a stream into a new file, returning its byte count and sha256. */
async function streamHashed(body: AsyncIterable<Buffer>, file: string, onBytes?: (n: number) => void): Promise<{ n: number; digest: string }> {
  const fh = await fs.open(file, 'wx');
  const hash = createHash('sha256');
  let n = 0;
  try {
    for await (const c of body) {
      hash.update(c);
      n += c.length;
      await fh.write(c);
      onBytes?.(c.length);
    }
  } finally {
    await fh.close();
  }
  return { n, digest: hash.digest('hex') };
}
