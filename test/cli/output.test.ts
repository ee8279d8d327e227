/**
 * The CLI's progress drawing on a terminal: a bar redrawn in place on stderr, finished by
 * a final event, and erased before a result line or an error is printed, so nothing is
 * printed after an unfinished bar. stderr's isTTY and the two streams' write are
 * replaced for the test (pure drawing logic; the CLI test runs the real thing).
 */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { endProgressLine, makeOut } from '../../src/cli/output.js';

let err: string;
let out: string;
let tty: boolean | undefined;

beforeEach(() => {
  err = '';
  out = '';
  tty = process.stderr.isTTY;
  (process.stderr as { isTTY?: boolean }).isTTY = true;
  vi.spyOn(process.stderr, 'write').mockImplementation((s: string | Uint8Array) => ((err += String(s)), true));
  vi.spyOn(process.stdout, 'write').mockImplementation((s: string | Uint8Array) => ((out += String(s)), true));
});
afterEach(() => {
  vi.restoreAllMocks();
  (process.stderr as { isTTY?: boolean }).isTTY = tty;
  endProgressLine();
});

describe('progress on a terminal', () => {
  it('draws a bar in place, and a final event ends its line', () => {
    const o = makeOut({});
    o.progress({ task: 'compress base', done: 50, total: 100, unit: 'bytes' });
    expect(err).toMatch(/^\r\[#{12}\.{12}\] compress base 50% 50 B\/100 B$/);
    o.progress({ task: 'compress base', done: 100, total: 100, unit: 'bytes', final: true });
    expect(err.endsWith('100% 100 B/100 B\n')).toBe(true);
    err = '';
    o.line('stack abc');
    expect(err).toBe(''); // nothing left to erase
    expect(out).toBe('stack abc\n');
  });

  it('keeps a note on a line of its own: the next bar does not draw over it', () => {
    const o = makeOut({});
    o.progress({ task: 'compress up', done: 0, note: '1 socket(s) left out (a layer holds no sockets)' });
    expect(err).toBe('\rcompress up 1 socket(s) left out (a layer holds no sockets)\n');
    o.progress({ task: 'compress up', done: 5, total: 10, unit: 'bytes' });
    expect(err.split('\n')).toHaveLength(2);
  });

  it('prints a note at once without a terminal too (plain lines are otherwise 2 s apart)', () => {
    (process.stderr as { isTTY?: boolean }).isTTY = false;
    const o = makeOut({});
    o.progress({ task: 'compress up', done: 1, total: 10, unit: 'bytes' });
    o.progress({ task: 'compress up', done: 0, note: 'system.* xattrs dropped' });
    expect(err).toBe('compress up 10% 1 B/10 B\ncompress up system.* xattrs dropped\n');
  });

  it('erases an unfinished bar before a result line', () => {
    const o = makeOut({});
    o.progress({ task: 'write boot', done: 10, total: 100, unit: 'bytes' });
    const drawn = err.length;
    o.line('image: node.img');
    // carriage return, blanks over the whole bar, carriage return: the line is clean
    expect(err.slice(drawn)).toBe('\r' + ' '.repeat(drawn) + '\r');
    expect(out).toBe('image: node.img\n');
  });

  it('erases it before an error message too (the CLI calls endProgressLine)', () => {
    const o = makeOut({});
    o.progress({ task: 'mkfs.ext4 data', done: 0 });
    const drawn = err.length;
    endProgressLine();
    expect(err.slice(drawn)).toBe('\r' + ' '.repeat(drawn) + '\r');
    endProgressLine(); // once only
    expect(err.length).toBe(drawn * 2 + 2);
  });

  it('draws nothing with --quiet, and JSON lines with --json', () => {
    makeOut({ quiet: true }).progress({ task: 't', done: 1, total: 2 });
    expect(err).toBe('');
    makeOut({ json: true }).progress({ task: 't', done: 1, total: 2 });
    expect(JSON.parse(err)).toEqual({ progress: { task: 't', done: 1, total: 2 } });
  });
});
