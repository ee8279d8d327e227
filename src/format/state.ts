/**
 * The boot state machine, as the hook reads it (pure). Format (docs/PROTOCOL.md):
 *
 *   stackboot-state 1
 *   current a
 *   a good <stack-id>
 *   b pending <stack-id> 2
 */
import { StackbootError } from '../sys/index.js';

export type SlotName = 'a' | 'b';
export const SLOTS: SlotName[] = ['a', 'b'];
export type SlotStatus = 'good' | 'pending' | 'bad';

export interface SlotState {
  status: SlotStatus;
  stack: string;
  /** tries left (pending only) */
  tries?: number;
}

export interface BootState {
  current: SlotName | null;
  slots: Partial<Record<SlotName, SlotState>>;
}

export const STATE_MAGIC = 'stackboot-state 1';
const ID = /^[0-9a-f]{64}$/;

export function emptyState(): BootState {
  return { current: null, slots: {} };
}

export function otherSlot(s: SlotName): SlotName {
  return s === 'a' ? 'b' : 'a';
}

export function isSlot(s: string): s is SlotName {
  return s === 'a' || s === 'b';
}

/**
 * Reads a state file as the hook does (initramfs/state.sh sb_state_read; the shared
 * vectors in test/protocol/vectors/state hold both to it): blank lines and lines whose
 * first word starts with `#` are skipped anywhere, a CR before the newline is ignored,
 * the first line left must be the magic's two words, and a malformed slot line is
 * skipped (the slot reads as empty) with its reason pushed to `problems`. A file
 * without the magic throws (STATE): the hook boots no stack from it.
 */
export function parseState(text: string, problems?: string[]): BootState {
  const lines = text.split('\n').filter((l) => l.trim() !== '' && !l.trimStart().startsWith('#'));
  const magic = (lines[0] ?? '').trim().split(/\s+/);
  if (magic.length !== 2 || magic.join(' ') !== STATE_MAGIC) throw new StackbootError('STATE', `not a stackboot state file (first line must be "${STATE_MAGIC}")`);
  const st = emptyState();
  const skip = (why: string) => problems?.push(`${why}: line skipped (the slot reads as empty, as the hook reads it)`);
  for (const line of lines.slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f[0] === 'current') {
      st.current = f[1] && isSlot(f[1]) ? f[1] : null;
    } else if (isSlot(f[0])) {
      const status = f[1];
      if (!ID.test(f[2] ?? '')) {
        skip(`slot ${f[0]}: bad stack id`);
        continue;
      }
      if (status !== 'good' && status !== 'pending' && status !== 'bad') {
        skip(`slot ${f[0]}: unknown status ${JSON.stringify(status)}`);
        continue;
      }
      const s: SlotState = { status, stack: f[2] };
      if (status === 'pending') {
        // as the hook reads it (initramfs/util.sh sb_uint_norm): decimal digits only, at
        // most 9 after leading zeros, else 0; Number() took 0x10 as 16 and 1e1 as 10
        const t = /^\d+$/.test(f[3] ?? '') ? Number(f[3]) : NaN;
        s.tries = Number.isInteger(t) && t <= 999_999_999 ? t : 0;
      }
      st.slots[f[0]] = s;
    }
  }
  return st;
}

export function serializeState(st: BootState): string {
  const lines = [STATE_MAGIC, `current ${st.current ?? '-'}`];
  for (const s of SLOTS) {
    const v = st.slots[s];
    if (!v) continue;
    lines.push(v.status === 'pending' ? `${s} pending ${v.stack} ${v.tries ?? 0}` : `${s} ${v.status} ${v.stack}`);
  }
  return lines.join('\n') + '\n';
}

/** The slot an install may write: never the booted one, never the current good one. */
export function installTarget(st: BootState, booted: SlotName | null): SlotName {
  // a second pending stack would wait behind the booted one (pending slots boot in slot
  // order) or be tried first: the booted one is judged before anything else is installed
  if (booted && st.slots[booted]?.status === 'pending') {
    throw new StackbootError('STATE', `the booted stack (slot ${booted}) is still pending: run mark-good (or mark-bad, or rollback) before installing another`);
  }
  const forbidden = new Set<SlotName>();
  if (booted) forbidden.add(booted);
  if (st.current) forbidden.add(st.current);
  const free = SLOTS.filter((s) => !forbidden.has(s));
  if (free.length === 0) {
    throw new StackbootError('STATE', `no slot can take an install: slot ${booted} is booted and slot ${st.current} holds the good stack; run mark-good (or rollback) first`);
  }
  // prefer an empty or bad slot, then a pending one, then an old good one
  const rank = (s: SlotName) => ({ undefined: 0, bad: 1, pending: 2, good: 3 })[String(st.slots[s]?.status) as 'undefined'];
  return free.sort((x, y) => rank(x) - rank(y))[0];
}

/** Step 1 of an install: the slot is emptied before its manifest is replaced. */
export function clearSlot(st: BootState, slot: SlotName): BootState {
  const n = structuredClone(st);
  delete n.slots[slot];
  if (n.current === slot) n.current = null;
  return n;
}

/** Last step of an install: the new stack is pending with tries. */
export function markPending(st: BootState, slot: SlotName, stack: string, tries: number): BootState {
  const n = structuredClone(st);
  n.slots[slot] = { status: 'pending', stack, tries };
  return n;
}

/** mark-good: the booted stack becomes the good one; the old good stays as the fallback. */
export function markGood(st: BootState, slot: SlotName, stack: string): BootState {
  const cur = st.slots[slot];
  if (!cur) throw new StackbootError('STATE', `slot ${slot} is empty: there is no stack to mark good`);
  if (cur.stack !== stack) throw new StackbootError('STATE', `slot ${slot} does not hold stack ${stack.slice(0, 12) || '(none)'} (was it reinstalled?)`);
  const n = structuredClone(st);
  n.slots[slot] = { status: 'good', stack };
  n.current = slot;
  return n;
}

export function markBad(st: BootState, slot: SlotName, stack: string): BootState {
  const cur = st.slots[slot];
  if (!cur) throw new StackbootError('STATE', `slot ${slot} is empty: there is no stack to mark bad`);
  if (cur.stack !== stack) throw new StackbootError('STATE', `slot ${slot} does not hold stack ${stack.slice(0, 12) || '(none)'}`);
  const n = structuredClone(st);
  n.slots[slot] = { status: 'bad', stack };
  if (n.current === slot) {
    const o = otherSlot(slot);
    n.current = n.slots[o]?.status === 'good' ? o : null;
  }
  return n;
}

/**
 * rollback: the previous good stack boots next. A pending stack is dropped (marked bad);
 * otherwise current moves to the other slot, which must be good.
 */
export function rollback(st: BootState): { state: BootState; to: SlotName; dropped?: SlotName } {
  const n = structuredClone(st);
  const pending = SLOTS.find((s) => n.slots[s]?.status === 'pending');
  if (pending) {
    n.slots[pending] = { status: 'bad', stack: n.slots[pending]!.stack };
    const to = n.current && n.slots[n.current]?.status === 'good' ? n.current : SLOTS.find((s) => n.slots[s]?.status === 'good');
    if (!to) throw new StackbootError('STATE', 'no good stack to roll back to');
    n.current = to;
    return { state: n, to, dropped: pending };
  }
  if (!n.current) throw new StackbootError('STATE', 'no current stack: nothing to roll back from');
  const o = otherSlot(n.current);
  if (n.slots[o]?.status !== 'good') throw new StackbootError('STATE', `no previous good stack: slot ${o} is ${n.slots[o]?.status ?? 'empty'}`);
  n.current = o;
  return { state: n, to: o };
}

/** The order in which the hook will try this store's slots (without side effects). */
export function candidates(st: BootState): { slot: SlotName; why: 'pending' | 'current' | 'previous' }[] {
  const out: { slot: SlotName; why: 'pending' | 'current' | 'previous' }[] = [];
  // every pending slot with tries, in slot order: the hook tries b after a failed pending a
  for (const s of SLOTS) if (st.slots[s]?.status === 'pending' && (st.slots[s]!.tries ?? 0) > 0) out.push({ slot: s, why: 'pending' });
  if (st.current && st.slots[st.current]?.status === 'good') out.push({ slot: st.current, why: 'current' });
  for (const s of SLOTS) if (st.slots[s]?.status === 'good' && s !== st.current) out.push({ slot: s, why: 'previous' });
  return out;
}
