/**
 * The TypeScript reader of the shared protocol vectors (test/protocol/vectors, see
 * README.md): src/format's state and manifest parsers, the state transitions, the
 * events reader and writer must give each vector's expected reading. The shell reader of
 * the same vectors is test/initramfs/protocol.test.ts.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { candidates, markBad, markGood, parseManifest, parseState, rollback, serializeState, Store, type BootState, type SlotName } from '../../src/format/index.js';
import { eventFields, expectedFor, loadVectors, reading, type Vector, type VectorKind } from './vectors.js';

/** The reading of a state file: the file as the writer would write it back, or "invalid". */
function readState(input: Buffer): string {
  try {
    return serializeState(parseState(input.toString('utf8')));
  } catch {
    return 'invalid';
  }
}

/** The reading of a manifest: one "layer <sha256> <bytes> <name>" line per layer, or "invalid". */
function readManifest(input: Buffer): string {
  try {
    return parseManifest(input.toString('utf8'))
      .layers.map((l) => `layer ${l.digest} ${l.size} ${l.name}\n`)
      .join('');
  } catch {
    return 'invalid';
  }
}

/** The transitions src/format/state.ts implements (boot and boot-failing are the hook's alone). */
const TS_OPS = ['mark-good', 'mark-bad', 'candidates', 'rollback'];

function transition(v: Vector): string {
  const st: BootState = parseState(v.input.toString('utf8'));
  const [op, arg] = v.op!.split(' ') as [string, SlotName];
  try {
    switch (op) {
      case 'mark-good':
        return serializeState(markGood(st, arg, st.slots[arg]?.stack ?? ''));
      case 'mark-bad':
        return serializeState(markBad(st, arg, st.slots[arg]?.stack ?? ''));
      case 'rollback':
        return serializeState(rollback(st).state);
      case 'candidates':
        return candidates(st)
          .map((c) => `${c.slot}\n`)
          .join('');
    }
  } catch {
    return 'refused';
  }
  throw new Error(`vector ${v.name}: op ${op} is not a TypeScript transition`);
}

describe('protocol vectors: the files themselves', () => {
  it.each<VectorKind>(['state', 'manifest', 'events', 'event-line', 'transition'])('every %s vector has an expected reading, or both readings and the reason they differ', (kind) => {
    const vs = loadVectors(kind);
    expect(vs.length).toBeGreaterThan(3);
    for (const v of vs) {
      // exactly one of: an agreed `expected`, or a recorded disagreement
      expect({ name: v.name, agreed: v.expected !== null, split: v.split !== null }).toEqual({ name: v.name, agreed: v.split === null, split: v.expected === null });
      if (v.split) expect(reading(v.split.ts)).not.toBe(reading(v.split.sh));
    }
  });
});

describe('protocol vectors: TypeScript reading', () => {
  it.each(loadVectors('state').map((v) => [v.name, v] as const))('state %s', (_n, v) => {
    expect(reading(readState(v.input))).toBe(reading(expectedFor(v, 'ts')));
  });

  it.each(loadVectors('manifest').map((v) => [v.name, v] as const))('manifest %s', (_n, v) => {
    expect(reading(readManifest(v.input))).toBe(reading(expectedFor(v, 'ts')));
  });

  const transitions = loadVectors('transition').filter((v) => TS_OPS.includes(v.op!.split(' ')[0]!));
  it.each(transitions.map((v) => [v.name, v] as const))('transition %s', (_n, v) => {
    expect(reading(transition(v))).toBe(reading(expectedFor(v, 'ts')));
  });

  describe('events', () => {
    let dir = '';
    beforeAll(async () => {
      dir = await mkdtemp(join(tmpdir(), 'sb-protocol-'));
    });
    afterAll(async () => {
      await rm(dir, { recursive: true, force: true });
    });

    it.each(loadVectors('events').map((v) => [v.name, v] as const))('events file %s: the lines a reader keeps', async (_n, v) => {
      await writeFile(join(dir, 'events'), v.input);
      const kept = await new Store(dir).events();
      expect(reading(kept.map((l) => `${l}\n`).join(''))).toBe(reading(expectedFor(v, 'ts')));
    });

    it.each(loadVectors('event-line').map((v) => [v.name, v] as const))('event line %s: what the writer appends', async (_n, v) => {
      await writeFile(join(dir, 'events'), '');
      const f = eventFields(v);
      await new Store(dir).appendEvent(f.event, { slot: f.slot, stack: f.stack, tries: f.tries, reason: f.reason }, f.now);
      expect(await readFile(join(dir, 'events'), 'utf8')).toBe(expectedFor(v, 'ts'));
    });
  });
});
