/**
 * Installing a stack into the inactive slot of a store: a plan, then checks, then steps.
 *
 *   plan    read the bundle head (manifest, signature, contents); choose the slot
 *           (never the booted one, never the current good one); list the layers the store
 *           lacks.
 *   checks  signature against the keys dir; compatible; the boot kernel reads its layers (when known:
 *           node/kernel-support.ts); every missing layer is carried by
 *           the bundle or can be rebuilt from chunks (a delta needs its base: else MISSING_LAYERS, listing them, and
 *           nothing changes); free space (statfs).
 *   steps   1. each missing layer streamed into the store (Store.putLayer: a temp file
 *              beside `layers/<sha>.sqfs`, fsync, sha256 and size checked, rename, fsync
 *              the dir; new files only: no slot changes); a layer with a chunk index that
 *              the bundle does not carry whole is rebuilt the same way from the store's
 *              chunks and the missing ones (the bundle's chunk delta, or a chunk source:
 *              chunk-install.ts);
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
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { chunkIndexRefs, framesRefs, compareVersions, readBundle, type BundleHead, type LayerRef, verifyWithKeyDir, installTarget, type BootState, type SlotName, type Store } from '../format/index.js';
import { StackbootError, remount, RateMeter, noProgress, type ProgressSink } from '../sys/index.js';
import { withStoreLock, type NodeContext } from './context.js';
import { bundleChunkSource, installChunked, planChunks, type ChunkPlan } from './chunk-install.js';
import type { ChunkSource } from './chunk-source.js';
import { bootKernelReads, type KernelLookup } from './kernel-support.js';
import { describeUnmet } from '../boot/index.js';

export interface InstallOptions {
  ctx: NodeContext;
  /** the bundle as a stream (file, pipe, HTTP body, build output) */
  stream: Readable;
  /** names the source in messages and the install event */
  label: string;
  keysDir: string;
  allowUnsigned?: boolean;
  /** install a stack older (by version) than the store's newest good one of the same compatible */
  allowDowngrade?: boolean;
  /** the compatible string the node accepts (default: the booted or current stack's) */
  compatible?: string | null;
  tries: number;
  /** bytes to keep free on the store after the install */
  minFree?: number;
  dryRun?: boolean;
  progress?: ProgressSink;
  onEvent?(ev: InstallEvent): void;
  /** chunk deltas: where the chunks of a layer the bundle does not carry come from (chunk-install.ts) */
  chunkSource?: ChunkSource;
  /** test hook: free bytes instead of statfs */
  freeBytes?: () => Promise<number>;
  /** where the running kernel's config is read (default /proc/config.gz, /boot/config-<uname -r>) */
  kernelLookup?: KernelLookup;
}

export type InstallEvent =
  | { event: 'plan'; stack: string; name: string; version: string; slot: SlotName; write: string[]; have: string[]; bytes: number; free: number; downgradeFrom?: string }
  | { event: 'step'; step: string }
  | { event: 'layer'; name: string; digest: string; size: number }
  | { event: 'chunks'; name: string; digest: string; size: number; had: number; fetch: number; computed?: number; rebuilt?: number; framesOff?: string; fetched?: number; fallback?: string }
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
  /** of `write`, the layers rebuilt from chunks (the store's and fetched ones) */
  chunked: ChunkPlan[];
  bytes: number;
  free: number;
  signedBy: string | null;
  /** an allowed downgrade: the newer good stack it goes below */
  downgradeFrom?: { slot: SlotName; version: string };
}

export interface InstallResult {
  plan: InstallPlan | null;
  /** the stack was installed already (nothing done) */
  already?: { slot: SlotName; status: string };
  dryRun: boolean;
  installed: boolean;
}

/** Thrown from the bundle reader's head callback to stop after the plan (a dry run, or the stack is installed already). */
class PlanOnly extends Error {}

/** One install as it goes: the plan, then what the steps have done so far (for errors and cleanup). */
interface InstallRun {
  o: InstallOptions;
  store: Store;
  emit(ev: InstallEvent): void;
  plan: InstallPlan | null;
  already?: InstallResult['already'];
  remounted: boolean;
  slotCleared: boolean;
  written: Set<string>;
  meter: RateMeter | null;
  doneBytes: number;
  /** the bundle's chunk deltas (its head's) */
  bundleChunks?: BundleHead['chunks'];
}

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
 * the store lock (src/node/lock.ts), taken before the state is read; a dry run only reads.
 */
export async function install(o: InstallOptions): Promise<InstallResult> {
  // the source can fail (HTTP 404, a build without manifest.sig) while the lock is being
  // taken, before the reader listens: the error stays in stream.errored, where the reader
  // finds it (walkTarStream); an 'error' event with no listener would crash the process
  o.stream.on('error', () => {});
  return o.dryRun ? installUnlocked(o) : withStoreLock(o.ctx, 'install', () => installUnlocked(o));
}

async function installUnlocked(o: InstallOptions): Promise<InstallResult> {
  const run: InstallRun = { o, store: o.ctx.store, emit: o.onEvent ?? (() => {}), plan: null, remounted: false, slotCleared: false, written: new Set(), meter: null, doneBytes: 0 };
  try {
    let head: BundleHead;
    try {
      // plan and checks on the bundle's head, then step 1 as its layers stream in
      head = await readBundle(
        o.stream,
        { onHead: (h) => planAndCheck(run, h), onLayer: (digest, size, body) => receiveLayer(run, digest, size, body), onChunkData: (digest, _size, body) => receiveChunkData(run, digest, body) },
        o.label,
      );
    } catch (e) {
      if (e instanceof PlanOnly || (e as { cause?: unknown }).cause instanceof PlanOnly) return { plan: run.plan, already: run.already, dryRun: !run.already, installed: false };
      throw e;
    }
    if (!run.plan) throw new StackbootError('INTERNAL', 'bundle read without a plan');
    for (const c of run.plan.chunked) if (!run.written.has(c.layer.digest)) await receiveChunked(run, c, o.chunkSource);
    await checkLayersIn(run, run.plan, head);
    await commitSlot(run, run.plan, head);
    return { plan: run.plan, dryRun: false, installed: true };
  } catch (e) {
    throw installError(run, e);
  } finally {
    if (run.remounted) await remount(run.store.dir, 'ro').catch(() => {});
  }
}

// ---------------------------------------------------------------- plan and checks

/** The bundle head's callback: checks, the plan, and the store made writable; returns the layers to deliver. */
async function planAndCheck(run: InstallRun, h: BundleHead): Promise<Set<string>> {
  const signedBy = await checkSignature(run.o, h);
  run.bundleChunks = h.chunks;
  const state = await run.store.readState();
  await checkCompatible(run.o, state, h);
  await checkKernelReads(run.o, h);
  run.already = await installedAlready(run.store, state, h);
  if (run.already) throw new PlanOnly();
  const downgradeFrom = await checkDowngrade(run.o, run.store, state, h);
  run.plan = { ...(await planInstall(run.o, state, h, signedBy)), ...(downgradeFrom ? { downgradeFrom } : {}) };
  const p = run.plan;
  run.emit({ event: 'plan', stack: p.stack, name: p.name, version: p.version, slot: p.slot, write: p.write.map((l) => l.name), have: p.have.map((l) => l.name), bytes: p.bytes, free: p.free, ...(p.downgradeFrom ? { downgradeFrom: p.downgradeFrom.version } : {}) });
  for (const c of p.chunked) run.emit({ event: 'chunks', name: c.layer.name, digest: c.layer.digest, size: c.layer.size, had: c.have + c.computed + (c.rebuilt ?? 0), fetch: c.fetch + c.indexBytes, ...(c.computed ? { computed: c.computed } : {}), ...(c.rebuilt ? { rebuilt: c.rebuilt } : {}), ...(c.framesOff ? { framesOff: c.framesOff } : {}) });
  checkSpace(run.o, run.store, p);
  if (run.o.dryRun) throw new PlanOnly();
  if (run.o.ctx.remount) {
    await remount(run.store.dir, 'rw');
    run.remounted = true;
  }
  run.meter = new RateMeter(run.o.progress ?? noProgress, `install ${p.name} ${p.version}`, p.bytes);
  return new Set(p.write.map((l) => l.digest));
}

/** The signer's key file, or null when unsigned stacks are allowed and this one is unsigned or badly signed. */
async function checkSignature(o: InstallOptions, h: BundleHead): Promise<string | null> {
  if (!h.sig) {
    if (!o.allowUnsigned) throw new StackbootError('SIGNATURE', `${o.label}: the bundle has no manifest.sig (unsigned stacks are refused)`);
    return null;
  }
  try {
    return await verifyWithKeyDir(Buffer.from(h.manifestText), h.sig, o.keysDir);
  } catch (e) {
    if (!o.allowUnsigned) throw new StackbootError('SIGNATURE', `${o.label}: ${(e as Error).message}`, { cause: e });
    return null;
  }
}

async function checkCompatible(o: InstallOptions, state: BootState, h: BundleHead): Promise<void> {
  const want = await expectedCompatible(o.ctx, state, o.compatible);
  if (want !== null && h.manifest.compatible !== want) {
    throw new StackbootError('INCOMPATIBLE', `${o.label}: stack ${h.manifest.name} ${h.manifest.version} is for "${h.manifest.compatible}", this node takes "${want}"`);
  }
}

/**
 * The boot partition's kernel mounts every stack's layers first (node/kernel-support.ts):
 * a stack it is known not to read (its config lacks the layers' compressor, overlayfs or
 * loop) would spend its tries and fall back, so it is refused before a byte is written.
 */
async function checkKernelReads(o: InstallOptions, h: BundleHead): Promise<void> {
  const v = await bootKernelReads(o.ctx, h.manifest, o.kernelLookup);
  if (!v.known || v.unmet.length === 0) return;
  throw new StackbootError(
    'INCOMPATIBLE',
    `${o.label}: stack ${h.manifest.name} ${h.manifest.version} cannot boot on this node: its kernel ${v.release} (${v.source}) lacks ${describeUnmet(v.unmet)}; build the stack's layers with a compression that kernel reads, or put a kernel with them on the boot partition (stackboot boot-update)`,
    { details: { release: v.release, missing: v.unmet.map((n) => n.option) } },
  );
}

/**
 * A stack older than the newest good stack of the same compatible in this store is a
 * downgrade: refused (DOWNGRADE), so that an old signed bundle with known holes cannot be
 * replayed onto a node, unless allowed; then it is said in an event. Versions compare as
 * Debian's (format/version.ts). Rolling back to a stack the store holds is `rollback`.
 */
async function checkDowngrade(o: InstallOptions, store: Store, state: BootState, h: BundleHead): Promise<InstallPlan['downgradeFrom']> {
  let newest: { slot: SlotName; version: string; name: string } | undefined;
  for (const s of ['a', 'b'] as SlotName[]) {
    if (state.slots[s]?.status !== 'good') continue;
    const m = await store.slotManifest(s).catch(() => null);
    if (!m || m.id !== state.slots[s]!.stack || m.manifest.compatible !== h.manifest.compatible) continue;
    if (!newest || compareVersions(m.manifest.version, newest.version) > 0) newest = { slot: s, version: m.manifest.version, name: m.manifest.name };
  }
  if (!newest || compareVersions(h.manifest.version, newest.version) >= 0) return undefined;
  if (!o.allowDowngrade) {
    throw new StackbootError(
      'DOWNGRADE',
      `${o.label}: stack ${h.manifest.name} ${h.manifest.version} is older than ${newest.name} ${newest.version}, good in slot ${newest.slot}: a downgrade is refused (give --allow-downgrade to install it anyway, or roll back to a stack the store holds with stackboot rollback)`,
      { details: { version: h.manifest.version, newest: newest.version, slot: newest.slot } },
    );
  }
  return { slot: newest.slot, version: newest.version };
}

/** The slot that holds this stack already, whole and not bad (then nothing is done). */
async function installedAlready(store: Store, state: BootState, h: BundleHead): Promise<InstallResult['already']> {
  for (const s of ['a', 'b'] as SlotName[]) {
    const v = state.slots[s];
    if (!v || v.stack !== h.stackId || v.status === 'bad') continue;
    const m = await store.slotManifest(s).catch(() => null);
    if (m?.id === h.stackId && (await store.checkLayers(m.manifest)).length === 0) return { slot: s, status: v.status };
  }
  return undefined;
}

/** The target slot, the layers to write and those the store has; a delta whose base the store lacks is refused. */
async function planInstall(o: InstallOptions, state: BootState, h: BundleHead, signedBy: string | null): Promise<InstallPlan> {
  const store = o.ctx.store;
  const slot = installTarget(state, o.ctx.bootedSlot);
  const write: LayerRef[] = [];
  const have: LayerRef[] = [];
  for (const l of h.manifest.layers) {
    const st = await fs.stat(store.layerPath(l.digest)).catch(() => null);
    if (st && st.size === l.size) have.push(l);
    else if (!write.some((w) => w.digest === l.digest)) write.push(l);
  }
  const carried = new Set(h.contents.map((c) => c.digest));
  const chunked = await planChunked(o, h, write.filter((l) => !carried.has(l.digest)));
  const lacking = write.filter((l) => !carried.has(l.digest) && !chunked.some((c) => c.layer.digest === l.digest));
  if (lacking.length) {
    throw new StackbootError(
      'MISSING_LAYERS',
      `${o.label} is a delta whose base layers this store lacks: ${lacking.map((l) => `${l.name} (sha256:${l.digest.slice(0, 12)}, ${l.size} bytes)`).join(', ')}; install a full bundle`,
      { details: { missing: lacking.map((l) => ({ name: l.name, digest: l.digest, size: l.size })) } },
    );
  }
  const bytes = write.reduce((n, l) => n + l.size, 0);
  const free = await (o.freeBytes ? o.freeBytes() : freeBytesOf(path.join(store.dir, 'layers')));
  return { stack: h.stackId, name: h.manifest.name, version: h.manifest.version, compatible: h.manifest.compatible, slot, write, have, chunked, bytes, free, signedBy };
}

/**
 * The layers the bundle does not carry whole that the manifest's chunk index lets the
 * node rebuild: from the bundle's chunk delta of the layer, or from a chunk source.
 */
async function planChunked(o: InstallOptions, h: BundleHead, notCarried: LayerRef[]): Promise<ChunkPlan[]> {
  const refs = chunkIndexRefs(h.manifest);
  const frames = framesRefs(h.manifest);
  const out: ChunkPlan[] = [];
  for (const l of notCarried) {
    const ref = refs.get(l.digest);
    const inBundle = h.chunks.get(l.digest);
    if (ref && inBundle) out.push(await planChunks(o.ctx.store, l, ref, bundleChunkSource(o.label, inBundle.index), new Set(inBundle.carried)));
    else if (ref && o.chunkSource) out.push(await planChunks(o.ctx.store, l, ref, o.chunkSource, undefined, frames.get(l.digest)));
  }
  return out;
}

function checkSpace(o: InstallOptions, store: Store, p: InstallPlan): void {
  const need = p.bytes + (o.minFree ?? 1 << 20) + 64 * 1024;
  if (p.free < need) {
    throw new StackbootError('NO_SPACE', `not enough space on the store ${store.dir}: the install needs ${need} bytes (${p.write.length} layers, ${p.bytes} bytes, plus a reserve), ${p.free} are free; run stackboot gc, or free space`, {
      details: { need, free: p.free },
    });
  }
}

// ---------------------------------------------------------------- steps

/** Step 1, one layer: streamed into the store, checked against the signed manifest. */
async function receiveLayer(run: InstallRun, digest: string, size: number, body: Readable): Promise<void> {
  const l = run.plan!.write.find((x) => x.digest === digest)!;
  if (size !== l.size) throw new StackbootError('VERIFY', `${run.o.label}: layer ${l.name} has ${size} bytes in the bundle, the manifest says ${l.size}`);
  run.emit({ event: 'layer', name: l.name, digest, size });
  await run.store.putLayer(l, body, {
    source: run.o.label,
    what: 'bundle',
    onBytes: (n) => run.meter?.update((run.doneBytes += n)),
  });
  run.written.add(digest);
}

/** Step 1, a layer rebuilt from the bundle's chunk delta (its carried chunks streamed in order) and the store's chunks. */
async function receiveChunkData(run: InstallRun, digest: string, body: Readable): Promise<void> {
  const c = run.plan!.chunked.find((x) => x.layer.digest === digest);
  const inBundle = run.bundleChunks?.get(digest);
  if (!c || !inBundle) {
    body.resume();
    return;
  }
  await receiveChunked(run, c, bundleChunkSource(run.o.label, inBundle.index, body));
}

/** Step 1, a layer rebuilt from chunks (the store's, and the missing ones fetched); checked like any other. */
async function receiveChunked(run: InstallRun, c: ChunkPlan, source: ChunkSource | undefined): Promise<void> {
  if (!source) throw new StackbootError('SOURCE', `${run.o.label} ended before the chunks of layer ${c.layer.name} (truncated bundle?)`);
  const r = await installChunked(run.store, c, source, (n) => run.meter?.update((run.doneBytes += n)));
  run.emit({ event: 'chunks', name: c.layer.name, digest: c.layer.digest, size: c.layer.size, had: r.had, fetch: c.fetch + c.indexBytes, fetched: r.fetched, ...(r.fallback ? { fallback: r.fallback } : {}), ...(r.framesOff ? { framesOff: r.framesOff } : {}) });
  run.written.add(c.layer.digest);
}

/** After step 1: every planned layer came, and the stack's layers are all in the store. */
async function checkLayersIn(run: InstallRun, p: InstallPlan, head: BundleHead): Promise<void> {
  const notWritten = p.write.filter((l) => !run.written.has(l.digest));
  if (notWritten.length) throw new StackbootError('SOURCE', `${run.o.label} ended before these layers: ${notWritten.map((l) => l.name).join(', ')} (truncated bundle?)`);
  const bad = await run.store.checkLayers(head.manifest);
  if (bad.length) throw new StackbootError('STORE', `after the install, layers are wrong: ${bad.map((b) => `${b.name}: ${b.problem}`).join(', ')}`);
}

/** Steps 2–4: only now, every layer in and verified, does the target slot lose what it held. */
async function commitSlot(run: InstallRun, p: InstallPlan, head: BundleHead): Promise<void> {
  const { store, o } = run;
  run.emit({ event: 'step', step: `clear slot ${p.slot}` });
  run.slotCleared = true;
  await store.clearSlot(p.slot);
  run.emit({ event: 'step', step: `manifest into slot ${p.slot}` });
  await store.writeSlot(p.slot, head.manifestText, head.sig || null);
  run.emit({ event: 'step', step: `slot ${p.slot} pending` });
  if (p.downgradeFrom) await store.appendEvent('downgrade', { slot: p.slot, stack: p.stack, reason: `${p.name} ${p.version} below ${p.downgradeFrom.version} (good in slot ${p.downgradeFrom.slot}), allowed by --allow-downgrade` });
  await store.markPending(p.slot, p.stack, o.tries);
  await store.appendEvent('install', { slot: p.slot, stack: p.stack, tries: o.tries, reason: `${p.name} ${p.version} from ${o.label}` });
  run.meter?.update(run.doneBytes, true);
  run.emit({ event: 'done', stack: p.stack, slot: p.slot, tries: o.tries });
}

/** A failure as the caller sees it: typed, and saying when the target slot was cleared already. */
function installError(run: InstallRun, e: unknown): StackbootError {
  if (!(e instanceof StackbootError)) return new StackbootError('IO', `install from ${run.o.label} failed: ${(e as Error).message}`, { cause: e });
  if (run.slotCleared && e.code !== 'INTERNAL') return new StackbootError(e.code, `${e.message} (slot ${run.plan?.slot} was cleared; the booted and good stacks are untouched)`, { cause: e.cause, details: e.details });
  return e;
}
