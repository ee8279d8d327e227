import { describe, expect, it } from 'vitest';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Store } from '../../src/format/store.js';
import { candidates, clearSlot, installTarget, markBad, markGood, markPending, parseState, rollback, serializeState, type BootState } from '../../src/format/state.js';

const A = 'a'.repeat(64);
const B = 'b'.repeat(64);
const C = 'c'.repeat(64);

describe('boot state', () => {
  it('round-trips the file format', () => {
    const text = `stackboot-state 1\ncurrent a\na good ${A}\nb pending ${B} 2\n`;
    const st = parseState(text);
    expect(st).toEqual({ current: 'a', slots: { a: { status: 'good', stack: A }, b: { status: 'pending', stack: B, tries: 2 } } });
    expect(serializeState(st)).toBe(text);
  });

  it('refuses a file without the magic; skips a malformed slot line and says why, as the hook does', () => {
    expect(() => parseState('hello')).toThrow(/not a stackboot state/);
    expect(() => parseState('stackboot-state 1 2\ncurrent a')).toThrow(/not a stackboot state/);
    const problems: string[] = [];
    const st = parseState(`stackboot-state 1\ncurrent a\na weird ${A}\nb good ${B.toUpperCase()}\nb pending ${B} 2`, problems);
    expect(st).toEqual({ current: 'a', slots: { b: { status: 'pending', stack: B, tries: 2 } } });
    expect(problems).toEqual([
      'slot a: unknown status "weird": line skipped (the slot reads as empty, as the hook reads it)',
      'slot b: bad stack id: line skipped (the slot reads as empty, as the hook reads it)',
    ]);
  });

  // the table the hook follows: candidate order per state
  const table: [string, BootState, string[]][] = [
    ['only good', { current: 'a', slots: { a: { status: 'good', stack: A } } }, ['a:current']],
    ['pending with tries first', { current: 'a', slots: { a: { status: 'good', stack: A }, b: { status: 'pending', stack: B, tries: 1 } } }, ['b:pending', 'a:current']],
    ['pending without tries is skipped', { current: 'a', slots: { a: { status: 'good', stack: A }, b: { status: 'pending', stack: B, tries: 0 } } }, ['a:current']],
    ['previous good after current', { current: 'b', slots: { a: { status: 'good', stack: A }, b: { status: 'good', stack: B } } }, ['b:current', 'a:previous']],
    ['bad never', { current: 'a', slots: { a: { status: 'good', stack: A }, b: { status: 'bad', stack: B } } }, ['a:current']],
    ['nothing', { current: null, slots: {} }, []],
  ];
  it.each(table)('candidates: %s', (_n, st, want) => {
    expect(candidates(st).map((c) => `${c.slot}:${c.why}`)).toEqual(want);
  });

  it('install goes to the slot that is neither booted nor current good', () => {
    const st: BootState = { current: 'a', slots: { a: { status: 'good', stack: A }, b: { status: 'good', stack: B } } };
    expect(installTarget(st, 'a')).toBe('b');
    expect(() => installTarget({ current: 'a', slots: st.slots }, 'b')).toThrow(/no slot can take an install/);
    expect(installTarget({ current: null, slots: {} }, null)).toBe('a');
  });

  it('no install while the booted stack is pending (a second pending stack would queue behind it)', () => {
    // booted pending with a good fallback: both slots are taken anyway
    expect(() => installTarget({ current: 'b', slots: { a: { status: 'pending', stack: A, tries: 2 }, b: { status: 'good', stack: B } } }, 'a')).toThrow(/still pending: run mark-good/);
    // booted pending with no good stack (after a migration): slot b is free, still refused
    expect(() => installTarget({ current: null, slots: { a: { status: 'pending', stack: A, tries: 2 } } }, 'a')).toThrow(/booted stack \(slot a\) is still pending/);
    // a pending stack that is not booted is replaced
    expect(installTarget({ current: 'a', slots: { a: { status: 'good', stack: A }, b: { status: 'pending', stack: B, tries: 3 } } }, 'a')).toBe('b');
  });

  it("a store's unreadable state names its file", async () => {
    const d = await mkdtemp(path.join(tmpdir(), 'sb-state-'));
    try {
      const store = await Store.create(d);
      await writeFile(path.join(d, 'state'), 'garbage\n');
      await expect(store.readState()).rejects.toMatchObject({ code: 'STATE', message: `${path.join(d, 'state')}: not a stackboot state file (first line must be "stackboot-state 1")` });
    } finally {
      await rm(d, { recursive: true, force: true });
    }
  });

  it('mark-good / mark-bad of an empty slot say so', () => {
    expect(() => markGood({ current: null, slots: {} }, 'a', '')).toThrow(/slot a is empty: there is no stack to mark good/);
    expect(() => markBad({ current: null, slots: {} }, 'b', '')).toThrow(/slot b is empty: there is no stack to mark bad/);
  });

  it('install, mark-good, rollback', () => {
    let st: BootState = { current: 'a', slots: { a: { status: 'good', stack: A }, b: { status: 'good', stack: B } } };
    st = clearSlot(st, 'b');
    expect(st.slots.b).toBeUndefined();
    st = markPending(st, 'b', C, 3);
    expect(candidates(st)[0]).toEqual({ slot: 'b', why: 'pending' });
    st = markGood(st, 'b', C);
    expect(st.current).toBe('b');
    expect(st.slots.a?.status).toBe('good');
    const r = rollback(st);
    expect(r.to).toBe('a');
    expect(r.state.current).toBe('a');
    expect(() => markGood(st, 'b', A)).toThrow(/does not hold stack/);
  });

  it('rollback of a pending stack marks it bad; mark-bad moves current', () => {
    const st: BootState = { current: 'a', slots: { a: { status: 'good', stack: A }, b: { status: 'pending', stack: B, tries: 2 } } };
    const r = rollback(st);
    expect(r.dropped).toBe('b');
    expect(r.state.slots.b?.status).toBe('bad');
    const both: BootState = { current: 'b', slots: { a: { status: 'good', stack: A }, b: { status: 'good', stack: B } } };
    expect(markBad(both, 'b', B).current).toBe('a');
    expect(() => rollback({ current: 'a', slots: { a: { status: 'good', stack: A } } })).toThrow(/no previous good stack/);
  });
});
