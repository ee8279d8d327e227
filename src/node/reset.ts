/**
 * Factory reset, asked for on a running node: the request goes into the store (its
 * `reset` file, format/reset.ts), and the hook carries it out at the next boot, before it
 * mounts any stack of the store (initramfs/reset.sh): every disk upper of the store and
 * everything on the data partition but lost+found are wiped. Nothing is wiped while the
 * node runs: the data partition's paths are bound into the running root and in use, as
 * the uppers are. The stacks, the state and the events stay.
 */
import type { ResetRequest } from '../format/index.js';
import { withStoreLock, withWritableStore, type NodeContext } from './context.js';

export interface FactoryResetOptions {
  /** remove a pending request instead */
  cancel?: boolean;
  dryRun?: boolean;
  /** the data partition's label, for the plan's words (DATA_LABEL; default sb-data) */
  dataLabel?: string;
  /** who asks (default "stackboot factory-reset") */
  by?: string;
  /** epoch seconds (default now) */
  now?: number;
}

export interface FactoryResetResult {
  store: string;
  action: 'request' | 'cancel';
  /** the request in the store after the command (null: none) */
  request: ResetRequest | null;
  /** the request that was there before */
  previous: ResetRequest | null;
  /** what the next boot wipes (empty after a cancel) */
  wipes: string[];
  dryRun: boolean;
}

/** What the next boot wipes, in words; on a booted node, as this boot has it (the booted record). */
function whatGoes(ctx: NodeContext, label: string): string[] {
  const b = ctx.booted;
  const uppers = `every disk upper of the store (${ctx.store.dir}/upper)${b && b.upper !== 'disk' ? ': this boot has none in use (UPPER=tmpfs)' : ''}`;
  const data = b?.data_dev ? `everything on the data partition ${b.data_dev} (label ${label}) but lost+found` : `everything on the data partition (label ${label}) but lost+found${b ? ': the hook bound none at this boot (no PERSIST); the next boot wipes the one it finds' : ''}`;
  return [uppers, data];
}

/** Plans, then (unless dryRun) writes or removes the store's factory reset request. */
export async function factoryReset(ctx: NodeContext, o: FactoryResetOptions = {}): Promise<FactoryResetResult> {
  const plan = async (): Promise<FactoryResetResult> => {
    const previous = await ctx.store.resetRequest();
    const request = o.cancel ? null : { requested: o.now ?? Math.floor(Date.now() / 1000), by: o.by ?? 'stackboot factory-reset' };
    const wipes = o.cancel ? [] : whatGoes(ctx, o.dataLabel ?? 'sb-data');
    return { store: ctx.store.dir, action: o.cancel ? 'cancel' : 'request', request, previous, wipes, dryRun: !!o.dryRun };
  };
  if (o.dryRun) return plan();
  return withStoreLock(ctx, 'factory-reset', async () => {
    const r = await plan();
    // a cancel with nothing to cancel writes nothing
    if (r.action === 'cancel' && !r.previous) return r;
    await withWritableStore(ctx, 'factory-reset', async () => {
      await ctx.store.setResetRequest(r.request);
      await ctx.store.appendEvent('reset', { reason: r.request ? `requested by ${r.request.by}: the next boot wipes the disk uppers and the data partition` : 'request cancelled' });
    });
    return r;
  });
}
