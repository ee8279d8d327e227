/**
 * The shared boot-protocol vectors (test/protocol/vectors/, format in README.md): the
 * loader both readers use, the TypeScript one (test/protocol/protocol.test.ts) and the
 * shell one (test/initramfs/protocol.test.ts).
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const VECTORS_DIR = fileURLToPath(new URL('./vectors', import.meta.url));

export type VectorKind = 'state' | 'manifest' | 'events' | 'event-line' | 'transition';
export type Side = 'ts' | 'sh';

/** The stack ids that stand for "the stack in slot a / slot b" in state and transition vectors. */
export const STACK_A = 'a'.repeat(64);
export const STACK_B = 'b'.repeat(64);

export interface Vector {
  kind: VectorKind;
  name: string;
  dir: string;
  /** the bytes a reader is given */
  input: Buffer;
  /** the reading both sides must give, or null when the sides disagree (see `split`) */
  expected: string | null;
  /** a recorded disagreement: each side's reading and why */
  split: { ts: string; sh: string; why: string } | null;
  /** transition vectors: the operation, e.g. "mark-bad b" */
  op?: string;
  /** transition vectors of a boot: the slot booted, or "none" */
  booted?: string;
}

function text(dir: string, file: string): string | null {
  const p = join(dir, file);
  return existsSync(p) ? readFileSync(p, 'utf8') : null;
}

export function loadVectors(kind: VectorKind): Vector[] {
  const base = join(VECTORS_DIR, kind);
  return readdirSync(base)
    .sort()
    .map((name) => {
      const dir = join(base, name);
      const ts = text(dir, 'expected.ts');
      const sh = text(dir, 'expected.sh');
      const why = text(dir, 'disagreement');
      const v: Vector = {
        kind,
        name,
        dir,
        input: readFileSync(join(dir, 'input')),
        expected: text(dir, 'expected'),
        split: ts !== null && sh !== null && why !== null ? { ts, sh, why: why.trim() } : null,
      };
      const op = text(dir, 'op');
      if (op !== null) v.op = op.trim();
      const booted = text(dir, 'booted');
      if (booted !== null) v.booted = booted.trim();
      return v;
    });
}

/** One vector by kind and name. */
export function loadVector(kind: VectorKind, name: string): Vector {
  const v = loadVectors(kind).find((x) => x.name === name);
  if (!v) throw new Error(`no vector ${kind}/${name} in ${VECTORS_DIR}`);
  return v;
}

/** The reading SIDE must give for V. */
export function expectedFor(v: Vector, side: Side): string {
  const e = v.expected ?? v.split?.[side];
  if (e === undefined || e === null) throw new Error(`vector ${v.kind}/${v.name}: no expected (nor expected.ts, expected.sh and disagreement)`);
  return e;
}

/** The fields of an event-line vector's input (`key value` lines; \n \r \t \\ escapes in values). */
export interface EventFields {
  now: number;
  event: string;
  slot?: string;
  stack?: string;
  tries?: number;
  reason: string;
}

export function eventFields(v: Vector): EventFields {
  const kv = new Map<string, string>();
  for (const line of v.input.toString('utf8').split('\n')) {
    if (line === '') continue;
    const sp = line.indexOf(' ');
    const key = sp < 0 ? line : line.slice(0, sp);
    const raw = sp < 0 ? '' : line.slice(sp + 1);
    kv.set(key, raw.replace(/\\(.)/g, (_m, c: string) => ({ n: '\n', r: '\r', t: '\t' })[c as 'n'] ?? c));
  }
  const now = kv.get('now');
  const event = kv.get('event');
  const reason = kv.get('reason');
  if (now === undefined || event === undefined || reason === undefined) throw new Error(`vector ${v.name}: now, event and reason are required`);
  const tries = kv.get('tries');
  return { now: Number(now), event, slot: kv.get('slot'), stack: kv.get('stack'), tries: tries === undefined ? undefined : Number(tries), reason };
}

/** Replaces the stand-in stack ids with a real store's ones (or back, with `reverse`). */
export function withStacks(t: string, stack: Partial<Record<'a' | 'b', string>>, reverse = false): string {
  let out = t;
  for (const [standIn, real] of [
    [STACK_A, stack.a],
    [STACK_B, stack.b],
  ] as const) {
    if (!real) continue;
    out = reverse ? out.split(real).join(standIn) : out.split(standIn).join(real);
  }
  return out;
}

/** Compares readings without caring for the final newline(s). */
export function reading(t: string): string {
  return t.replace(/\n+$/, '');
}
