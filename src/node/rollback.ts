/**
 * Node-side state changes in TypeScript, with the same durable writes as stackboot-node
 * (state.new, fsync, rename, fsync dir; then an event): rollback, mark-good, mark-bad,
 * and the status they all read.
 */
import { StackbootError } from '../sys/index.js';
import { updateBooted, withStoreLock, withWritableStore, type NodeContext } from './context.js';
import type { FirmwareSlots } from './firmware.js';
import { armedWatchdog, stopWatchdog, type WatchdogStop } from './watchdog.js';
import { candidates, markBad, markGood, rollback as rollbackState, SLOTS, type BootState, type ResetRequest, type SlotName } from '../format/index.js';

/** What mark-good did with the watchdog the hook armed: stopWatchdog's answer, or the error that kept it from stopping it. */
export interface BootWatchdogStop {
  dev: string;
  result: WatchdogStop | 'error';
  error?: string;
}

export interface RollbackResult {
  to: SlotName;
  dropped?: SlotName;
  state: BootState;
  dryRun: boolean;
}

/** The previous good stack boots next (a pending stack is dropped as bad). */
export async function rollback(ctx: NodeContext, o: { dryRun?: boolean } = {}): Promise<RollbackResult> {
  if (o.dryRun) return { ...rollbackState(await ctx.store.readState()), dryRun: true };
  // the state is read under the lock that covers its write
  return withStoreLock(ctx, 'rollback', async () => {
    const st = await ctx.store.readState();
    const r = rollbackState(st);
    await withWritableStore(ctx, 'rollback', async () => {
      await ctx.store.writeState(r.state);
      const to = r.state.slots[r.to]!;
      await ctx.store.appendEvent('rollback', { slot: r.to, stack: to.stack, reason: r.dropped ? `pending slot ${r.dropped} dropped` : `current was ${st.current}` });
    });
    return { ...r, dryRun: false };
  });
}

function bootedOrThrow(ctx: NodeContext): { slot: SlotName; stack: string } {
  if (!ctx.bootedSlot) throw new StackbootError('USAGE', 'no booted slot (on a test store pass --booted-slot)');
  const stack = ctx.booted?.stack;
  return { slot: ctx.bootedSlot, stack: stack ?? '' };
}

/**
 * The booted stack becomes good; then, with a firmware-slot backend (FIRMWARE= in the node
 * config), the firmware is told this boot was good too: only after stackboot's own state
 * says so, so a failure there leaves the stack good and says the firmware was not told.
 */
export async function markBootedGood(
  ctx: NodeContext,
  firmware: FirmwareSlots | null = null,
): Promise<{ slot: SlotName; stack: string; was: string; firmware?: string; watchdog?: BootWatchdogStop }> {
  const r: { slot: SlotName; stack: string; was: string; watchdog?: BootWatchdogStop } = await markGoodInStore(ctx);
  // the watchdog the hook armed for this stack's try (initramfs/watchdog.sh) has done its
  // work; a failure to stop it is reported, and the firmware is still told
  const wd = armedWatchdog(ctx.booted?.watchdog);
  if (wd) {
    r.watchdog = await stopWatchdog(wd.dev).then(
      (result): BootWatchdogStop => ({ dev: wd.dev, result }),
      (e: unknown): BootWatchdogStop => ({ dev: wd.dev, result: 'error', error: (e as Error).message }),
    );
    if (r.watchdog.result !== 'running' && r.watchdog.result !== 'error') await updateBooted(ctx, { watchdog: '' });
  }
  if (!firmware) return r;
  await firmware.markGood().catch((e: unknown) => {
    throw new StackbootError('TOOL', `slot ${r.slot} is good, but the ${firmware.kind} firmware was not told (it may switch its boot slot): ${(e as Error).message}`, { cause: e });
  });
  return { ...r, firmware: firmware.kind };
}

function markGoodInStore(ctx: NodeContext): Promise<{ slot: SlotName; stack: string; was: string }> {
  const b = bootedOrThrow(ctx);
  return withStoreLock(ctx, 'mark-good', async () => {
    const st = await ctx.store.readState();
    const stack = b.stack || st.slots[b.slot]?.stack || '';
    const was = st.slots[b.slot]?.status ?? 'empty';
    if (was === 'good' && st.current === b.slot) return { slot: b.slot, stack, was };
    const n = markGood(st, b.slot, stack);
    await withWritableStore(ctx, 'mark-good', async () => {
      await ctx.store.writeState(n);
      await ctx.store.appendEvent('good', { slot: b.slot, stack, reason: `mark-good (was ${was})` });
    });
    await updateBooted(ctx, { status: 'good', tries: '' });
    return { slot: b.slot, stack, was };
  });
}

/**
 * The booted stack becomes bad. `bootable` says whether this store still has a stack to
 * boot: marking its only good stack bad is allowed (the health check does it, so the node
 * falls back to its rescue store), but the caller is told.
 */
export function markBootedBad(ctx: NodeContext, why = 'mark-bad'): Promise<{ slot: SlotName; stack: string; was: string; bootable: boolean }> {
  const b = bootedOrThrow(ctx);
  return withStoreLock(ctx, 'mark-bad', async () => {
    const st = await ctx.store.readState();
    const stack = b.stack || st.slots[b.slot]?.stack || '';
    const was = st.slots[b.slot]?.status ?? 'empty';
    if (was === 'bad') return { slot: b.slot, stack, was, bootable: candidates(st).length > 0 };
    const n = markBad(st, b.slot, stack);
    await withWritableStore(ctx, 'mark-bad', async () => {
      await ctx.store.writeState(n);
      await ctx.store.appendEvent('bad', { slot: b.slot, stack, reason: why });
    });
    await updateBooted(ctx, { status: 'bad', tries: '' });
    return { slot: b.slot, stack, was, bootable: candidates(n).length > 0 };
  });
}

export interface SlotStatus {
  slot: SlotName;
  status: string;
  stack: string | null;
  tries?: number;
  name?: string;
  version?: string;
  /** the stack's own kernel release (it boots by kexec when another kernel runs) */
  kernel?: string;
  /** the manifest hashes to the state's stack id */
  matches: boolean;
  booted: boolean;
  current: boolean;
}

export interface NodeStatus {
  store: string;
  storeId: string;
  booted: { slot: SlotName; stack: string; status: string; tries: string; fallback: string } | null;
  current: SlotName | null;
  slots: SlotStatus[];
  next: { slot: SlotName; why: string }[];
  events: string[];
  /** a factory reset the next boot carries out (factory-reset) */
  reset: ResetRequest | null;
}

/** What `stackboot-node status` shows: booted stack, slots, next candidates, last events. */
export async function nodeStatus(ctx: NodeContext, nEvents = 5): Promise<NodeStatus> {
  const st = await ctx.store.readState();
  const slots: SlotStatus[] = [];
  for (const s of SLOTS) {
    const v = st.slots[s];
    const m = await ctx.store.slotManifest(s).catch(() => null);
    slots.push({
      slot: s,
      status: v?.status ?? 'empty',
      stack: v?.stack ?? null,
      tries: v?.tries,
      name: m?.manifest.name,
      version: m?.manifest.version,
      ...(m?.manifest.kernel ? { kernel: m.manifest.kernel.release } : {}),
      matches: !!v && !!m && m.id === v.stack,
      booted: ctx.bootedSlot === s,
      current: st.current === s,
    });
  }
  const b = ctx.booted;
  return {
    store: ctx.store.dir,
    storeId: await ctx.store.id(),
    booted: b ? { slot: b.slot, stack: b.stack, status: b.status, tries: b.tries, fallback: b.fallback } : ctx.bootedSlot ? { slot: ctx.bootedSlot, stack: st.slots[ctx.bootedSlot]?.stack ?? '', status: st.slots[ctx.bootedSlot]?.status ?? 'empty', tries: '', fallback: '' } : null,
    current: st.current,
    slots,
    next: candidates(st).filter((c) => slots.find((x) => x.slot === c.slot)?.matches),
    events: (await ctx.store.events()).slice(-nEvents),
    reset: await ctx.store.resetRequest(),
  };
}
