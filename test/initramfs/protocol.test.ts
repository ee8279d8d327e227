/**
 * The shell reader of the shared protocol vectors (test/protocol/vectors, see its
 * README.md): the boot core (initramfs/*.sh) under busybox sh must give each vector's
 * expected reading, the same one the TypeScript reader (test/protocol/protocol.test.ts)
 * checks, unless the vector records a disagreement.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { stackId } from '../../src/format/index.js';
import { eventFields, expectedFor, loadVectors, reading, type Vector } from '../protocol/vectors.js';
import { FakeRoot, fakeRoots, vectorState, vectorStore } from './harness.js';

const CONF = 'STORES=vda\nSTORE_LABEL=sb-store\nDATA_LABEL=sb-data\nDEVICE_TIMEOUT=1\nDEVICE_SETTLE=0\nON_FAIL_DELAY=0\n';

/** one fake root for the pure readings (each vector gets its own folder in it) */
const shared = new FakeRoot();
afterAll(() => shared.cleanup());

/** a folder of the shared root holding FILE = the vector's input */
function vectorDir(v: Vector, file: string): string {
  const d = join(shared.dir, 'v', v.kind, v.name);
  mkdirSync(d, { recursive: true });
  writeFileSync(join(d, file), v.input);
  return d;
}

/** fresh fake roots for the boots */
const root = fakeRoots();

describe('protocol vectors: shell reading (busybox sh)', () => {
  it.each(loadVectors('state').map((v) => [v.name, v] as const))('state %s', async (_n, v) => {
    const r = await shared.sh(`if sb_state_read "$V"; then sb_state_format; else echo invalid; fi`, { V: vectorDir(v, 'state') });
    expect(r.code).toBe(0);
    expect(reading(r.out)).toBe(reading(expectedFor(v, 'sh')));
  });

  it.each(loadVectors('manifest').map((v) => [v.name, v] as const))('manifest %s', async (_n, v) => {
    const r = await shared.sh(
      `if sb_manifest_layers "$V/manifest" >"$V/layers"; then sed 's/^/layer /' "$V/layers"; echo "id $(sb_stack_id "$V/manifest")"; else echo invalid; fi`,
      { V: vectorDir(v, 'manifest') },
    );
    expect(r.code).toBe(0);
    const want = reading(expectedFor(v, 'sh'));
    if (want === 'invalid') {
      expect(reading(r.out)).toBe('invalid');
    } else {
      // the layers, then the stack id: the sha256 of the bytes, as the TypeScript side computes it
      expect(reading(r.out)).toBe(`${want}\nid ${stackId(v.input)}`);
    }
  });

  it.each(loadVectors('events').map((v) => [v.name, v] as const))('events file %s: the lines a reader keeps', async (_n, v) => {
    const r = await shared.sh(`sb_events_valid <"$V/events"`, { V: vectorDir(v, 'events') });
    expect(r.code).toBe(0);
    expect(reading(r.out)).toBe(reading(expectedFor(v, 'sh')));
  });

  it.each(loadVectors('event-line').map((v) => [v.name, v] as const))('event line %s: what the hook appends', async (_n, v) => {
    const d = vectorDir(v, 'fields');
    writeFileSync(join(d, 'events'), '');
    const f = eventFields(v);
    const r = await shared.sh(`sb_sys_now() { echo "$V_NOW"; }\nsb_event "$V" "$V_EVENT" "$V_SLOT" "$V_STACK" "$V_TRIES" "$V_REASON"`, {
      V: d,
      V_NOW: String(f.now),
      V_EVENT: f.event,
      V_SLOT: f.slot ?? '',
      V_STACK: f.stack ?? '',
      V_TRIES: f.tries === undefined ? '' : String(f.tries),
      V_REASON: f.reason,
    });
    expect(r.code).toBe(0);
    expect(readFileSync(join(d, 'events'), 'utf8')).toBe(expectedFor(v, 'sh'));
  });

  const transitions = loadVectors('transition');
  const op = (v: Vector) => v.op!.split(' ')[0]!;

  it.each(transitions.filter((v) => ['mark-good', 'mark-bad'].includes(op(v))).map((v) => [v.name, v] as const))('transition %s (in memory)', async (_n, v) => {
    const [name, slot] = v.op!.split(' ');
    const fn = name === 'mark-good' ? 'sb_slot_mark_good' : 'sb_slot_mark_bad';
    const r = await shared.sh(`sb_state_read "$V" && ${fn} ${slot} && sb_state_format`, { V: vectorDir(v, 'state') });
    expect(r.code).toBe(0);
    expect(reading(r.out)).toBe(reading(expectedFor(v, 'sh')));
  });

  it.each(transitions.filter((v) => op(v) === 'candidates').map((v) => [v.name, v] as const))('transition %s: the slots a boot tries, in order', async (_n, v) => {
    const r = root();
    vectorStore(r, v.input);
    // every overlay mount fails, so the hook goes through all its candidates
    const res = await r.boot(CONF, { FAKE_FAIL_OVERLAY: '1' });
    expect(res.out).toContain('BOOT=1');
    const tried = [...readFileSync(join(r.dir, 'kmsg'), 'utf8').matchAll(/stackboot: trying slot ([ab]) /g)].map((m) => `${m[1]}\n`);
    expect(reading(tried.join(''))).toBe(reading(expectedFor(v, 'sh')));
  });

  it.each(transitions.filter((v) => op(v) === 'boot' || op(v) === 'boot-failing').map((v) => [v.name, v] as const))('transition %s: the state after the boot', async (_n, v) => {
    const r = root();
    const s = vectorStore(r, v.input);
    const res = await r.boot(CONF, op(v) === 'boot-failing' ? { FAKE_FAIL_OVERLAY: '1' } : {});
    expect(res.out).toContain(v.booted === 'none' ? 'BOOT=1' : 'BOOT=0');
    expect(r.booted().slot ?? 'none').toBe(v.booted);
    const after = expectedFor(v, 'sh');
    expect(reading(vectorState(s))).toBe(reading(after));
    // the booted record's tries: the booted slot's count left after this boot's decrement, empty when not pending
    if (v.booted !== 'none') expect(r.booted().tries).toBe(new RegExp(`^${v.booted} pending \\S+ (\\d+)$`, 'm').exec(after)?.[1] ?? '');
  });
});
