/**
 * Installing a stack into the inactive slot of a store: a plan, then checks, then steps.
 *
 *   plan    read the bundle head (manifest, signature, contents); choose the slot
 *           (never the booted one, never the current good one); list the layers the store
 *           lacks.
 *   checks  signature against the keys dir; compatible; every missing layer is carried by
 *           the bundle (a delta needs its base: else MISSING_LAYERS, listing them, and
 *           nothing changes); free space (statfs).
 *   steps   1. each missing layer: `layers/<sha>.sqfs.part`, fsync, sha256 and size
 *              checked, rename, fsync the dir (new files only: no slot changes);
 *           2. once every layer is in and verified: state with the target slot cleared
 *              (durable), its old manifest removed;
 *           3. the manifest (+ sig) into the slot, durably;
 *           4. LAST: the slot pending with tries (durable), event `install`.
 *
 * A power cut at any point leaves the booted and the good slot as they were. A bundle
 * that turns out tampered, truncated or too big while its layers stream in fails before
 * step 2, so whatever the target slot held (often the previous good stack, the second
 * fallback) is still there. Between steps 2 and 4 the target slot is simply empty (not
 * bootable); after step 4 the new stack is pending.
 */
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { readBundle, type BundleHead, type LayerRef, verifyWithKeyDir, clearSlot, installTarget, markPending, type BootState, type SlotName, fsyncPath, writeDurable } from '../format/index.js';
import { StackbootError, remount, RateMeter, noProgress, type ProgressSink, makeDir } from '../sys/index.js';
import { withStoreLock, type NodeContext } from './context.js';

export interface InstallOptions {
  ctx: NodeContext;
  /** the bundle as a stream (file, pipe, HTTP body, build output) */
  stream: Readable;
  /** names the source in messages and the install event */
  label: string;
  keysDir: string;
  allowUnsigned?: boolean;
  /** the compatible string the node accepts (default: the booted or current stack's) */
  compatible?: string | null;
  tries: number;
  /** bytes to keep free on the store after the install */
  minFree?: number;
  dryRun?: boolean;
  progress?: ProgressSink;
  onEvent?(ev: InstallEvent): void;
  /** test hook: free bytes instead of statfs */
  freeBytes?: () => Promise<number>;
}

export type InstallEvent =
  | { event: 'plan'; stack: string; name: string; version: string; slot: SlotName; write: string[]; have: string[]; bytes: number; free: number }
  | { event: 'step'; step: string }
  | { event: 'layer'; name: string; digest: string; size: number }
  | { event: 'done'; stack: string; slot: SlotName; tries: number };

export interface InstallPlan {
  stack: string;
  name: string;
  version: string;
  compatible: string;
  slot: SlotName;
  /** layers to write (missing from the store) */
  write: LayerRef[];
  /** layers the store has */
  have: LayerRef[];
  bytes: number;
  free: number;
  signedBy: string | null;
}

export interface InstallResult {
  plan: InstallPlan | null;
  /** the stack was installed already (nothing done) */
  already?: { slot: SlotName; status: string };
  dryRun: boolean;
  installed: boolean;
}

class DryRunStop extends Error {}

async function freeBytesOf(dir: string): Promise<number> {
  const s = await fs.statfs(dir);
  return Number(s.bavail) * Number(s.bsize);
}

async function expectedCompatible(ctx: NodeContext, st: BootState, configured: string | null | undefined): Promise<string | null> {
  if (configured) return configured;
  for (const s of [ctx.bootedSlot, st.current]) {
    if (!s) continue;
    const m = await ctx.store.slotManifest(s).catch(() => null);
    if (m) return m.manifest.compatible;
  }
  return null;
}

/**
 * Installs a bundle into the inactive slot (checks, then the steps). The steps run under
 * the store lock (src/lock.ts), taken before the state is read; a dry run only reads.
 */
export async function install(o: InstallOptions): Promise<InstallResult> {
  // the source can fail (HTTP 404, a build without manifest.sig) while the lock is being
  // taken, before the reader listens: the error stays in stream.errored, where the reader
  // finds it (walkTarStream); an 'error' event with no listener would crash the process
  o.stream.on('error', () => {});
  return o.dryRun ? installUnlocked(o) : withStoreLock(o.ctx, 'install', () => installUnlocked(o));
}

async function installUnlocked(o: InstallOptions): Promise<InstallResult> {
  const { ctx } = o;
  const store = ctx.store;
  const emit = o.onEvent ?? (() => {});
  let plan: InstallPlan | null = null;
  let already: InstallResult['already'];
  let state: BootState | null = null;
  let remounted = false;
  let slotCleared = false;
  const written = new Set<string>();
  const meterTotal = { n: 0 };
  let meter: RateMeter | null = null;
  let doneBytes = 0;

  const onHead = async (h: BundleHead): Promise<Set<string>> => {
    // ---- checks that read only
    let signedBy: string | null = null;
    if (!h.sig) {
      if (!o.allowUnsigned) throw new StackbootError('SIGNATURE', `${o.label}: the bundle has no manifest.sig (unsigned stacks are refused)`);
    } else {
      try {
        signedBy = await verifyWithKeyDir(Buffer.from(h.manifestText), h.sig, o.keysDir);
      } catch (e) {
        if (!o.allowUnsigned) throw new StackbootError('SIGNATURE', `${o.label}: ${(e as Error).message}`, { cause: e });
      }
    }
    state = await store.readState();
    const want = await expectedCompatible(ctx, state, o.compatible);
    if (want !== null && h.manifest.compatible !== want) {
      throw new StackbootError('INCOMPATIBLE', `${o.label}: stack ${h.manifest.name} ${h.manifest.version} is for "${h.manifest.compatible}", this node takes "${want}"`);
    }
    for (const s of ['a', 'b'] as SlotName[]) {
      const v = state.slots[s];
      if (v && v.stack === h.stackId && v.status !== 'bad') {
        const m = await store.slotManifest(s).catch(() => null);
        if (m?.id === h.stackId && (await store.checkLayers(m.manifest)).length === 0) {
          already = { slot: s, status: v.status };
          throw new DryRunStop();
        }
      }
    }
    const slot = installTarget(state, ctx.bootedSlot);
    const write: LayerRef[] = [];
    const have: LayerRef[] = [];
    for (const l of h.manifest.layers) {
      const st = await fs.stat(store.layerPath(l.digest)).catch(() => null);
      if (st && st.size === l.size) have.push(l);
      else if (!write.some((w) => w.digest === l.digest)) write.push(l);
    }
    const carried = new Set(h.contents.map((c) => c.digest));
    const lacking = write.filter((l) => !carried.has(l.digest));
    if (lacking.length) {
      throw new StackbootError(
        'MISSING_LAYERS',
        `${o.label} is a delta whose base layers this store lacks: ${lacking.map((l) => `${l.name} (sha256:${l.digest.slice(0, 12)}, ${l.size} bytes)`).join(', ')}; install a full bundle`,
        { details: { missing: lacking.map((l) => ({ name: l.name, digest: l.digest, size: l.size })) } },
      );
    }
    const bytes = write.reduce((n, l) => n + l.size, 0);
    const free = await (o.freeBytes ? o.freeBytes() : freeBytesOf(path.join(store.dir, 'layers')));
    plan = { stack: h.stackId, name: h.manifest.name, version: h.manifest.version, compatible: h.manifest.compatible, slot, write, have, bytes, free, signedBy };
    emit({ event: 'plan', stack: h.stackId, name: h.manifest.name, version: h.manifest.version, slot, write: write.map((l) => l.name), have: have.map((l) => l.name), bytes, free });
    const need = bytes + (o.minFree ?? 1 << 20) + 64 * 1024;
    if (free < need) {
      throw new StackbootError('NO_SPACE', `not enough space on the store ${store.dir}: the install needs ${need} bytes (${write.length} layers, ${bytes} bytes, plus a reserve), ${free} are free; run stackboot gc, or free space`, {
        details: { need, free },
      });
    }
    if (o.dryRun) throw new DryRunStop();
    // ---- steps
    if (ctx.remount) {
      await remount(store.dir, 'rw');
      remounted = true;
    }
    meterTotal.n = bytes;
    meter = new RateMeter(o.progress ?? noProgress, `install ${h.manifest.name} ${h.manifest.version}`, bytes);
    return new Set(write.map((l) => l.digest));
  };

  const onLayer = async (digest: string, size: number, body: Readable): Promise<void> => {
    const l = plan!.write.find((x) => x.digest === digest)!;
    if (size !== l.size) throw new StackbootError('VERIFY', `${o.label}: layer ${l.name} has ${size} bytes in the bundle, the manifest says ${l.size}`);
    emit({ event: 'layer', name: l.name, digest, size });
    const final = store.layerPath(digest);
    const part = `${final}.part`;
    const fh = await fs.open(part, 'w');
    const hash = createHash('sha256');
    let n = 0;
    try {
      for await (const chunk of body) {
        const c = chunk as Buffer;
        hash.update(c);
        n += c.length;
        await fh.write(c);
        doneBytes += c.length;
        meter?.update(doneBytes);
      }
      await fh.sync();
    } catch (e) {
      await fh.close().catch(() => {});
      await fs.rm(part, { force: true });
      if ((e as NodeJS.ErrnoException).code === 'ENOSPC') throw new StackbootError('NO_SPACE', `the store ${store.dir} is full (writing layer ${l.name})`, { cause: e });
      throw e;
    }
    await fh.close();
    const got = hash.digest('hex');
    if (n !== l.size || got !== digest) {
      await fs.rm(part, { force: true });
      throw new StackbootError('VERIFY', `${o.label}: layer ${l.name} does not match the signed manifest (${n !== l.size ? `${n} bytes, expected ${l.size}` : `sha256 ${got.slice(0, 12)}, expected ${digest.slice(0, 12)}`}): tampered or corrupt bundle`);
    }
    await fs.rename(part, final);
    await fsyncPath(path.dirname(final));
    written.add(digest);
  };

  let head: BundleHead;
  try {
    try {
      head = await readBundle(o.stream, { onHead, onLayer }, o.label);
    } catch (e) {
      if (e instanceof DryRunStop || (e as { cause?: unknown }).cause instanceof DryRunStop) {
        return { plan, already, dryRun: !already, installed: false };
      }
      throw e;
    }
    if (!plan) throw new StackbootError('INTERNAL', 'bundle read without a plan');
    const p = plan as InstallPlan;
    const notWritten = p.write.filter((l) => !written.has(l.digest));
    if (notWritten.length) throw new StackbootError('SOURCE', `${o.label} ended before these layers: ${notWritten.map((l) => l.name).join(', ')} (truncated bundle?)`);
    const bad = await store.checkLayers(head.manifest);
    if (bad.length) throw new StackbootError('STORE', `after the install, layers are wrong: ${bad.map((b) => `${b.name}: ${b.problem}`).join(', ')}`);
    // every layer is in and verified: only now does the target slot lose what it held
    emit({ event: 'step', step: `clear slot ${p.slot}` });
    slotCleared = true;
    await store.writeState(clearSlot(await store.readState(), p.slot));
    for (const f of ['manifest', 'manifest.sig']) await fs.rm(path.join(store.slotDir(p.slot), f), { force: true });
    await makeDir(store.slotDir(p.slot));
    await fsyncPath(store.slotDir(p.slot));
    emit({ event: 'step', step: `manifest into slot ${p.slot}` });
    if (head.sig) await writeDurable(path.join(store.slotDir(p.slot), 'manifest.sig'), head.sig);
    await writeDurable(path.join(store.slotDir(p.slot), 'manifest'), head.manifestText);
    emit({ event: 'step', step: `slot ${p.slot} pending` });
    const now = await store.readState();
    await store.writeState(markPending(now, p.slot, p.stack, o.tries));
    await store.appendEvent('install', { slot: p.slot, stack: p.stack, tries: o.tries, reason: `${p.name} ${p.version} from ${o.label}` });
    (meter as RateMeter | null)?.update(doneBytes, true);
    emit({ event: 'done', stack: p.stack, slot: p.slot, tries: o.tries });
    return { plan: p, dryRun: false, installed: true };
  } catch (e) {
    for (const l of plan ? (plan as InstallPlan).write : []) await fs.rm(`${store.layerPath(l.digest)}.part`, { force: true }).catch(() => {});
    if (e instanceof StackbootError) {
      if (slotCleared && e.code !== 'INTERNAL') throw new StackbootError(e.code, `${e.message} (slot ${(plan as InstallPlan | null)?.slot} was cleared; the booted and good stacks are untouched)`, { cause: e.cause, details: e.details });
      throw e;
    }
    throw new StackbootError('IO', `install from ${o.label} failed: ${(e as Error).message}`, { cause: e });
  } finally {
    if (remounted) await remount(store.dir, 'ro').catch(() => {});
  }
}
