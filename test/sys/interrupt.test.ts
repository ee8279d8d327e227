/**
 * src/sys/interrupt.ts: what an interrupt (Ctrl-C) does in the library: the running tools are
 * stopped, the registered undo steps run newest first, and the tools the undo steps start
 * (an unmount) are not stopped. (Its own module state: vitest isolates each test file.)
 * The CLI end to end: test/cli/main.int.test.ts, a run source interrupted.
 */
import { describe, expect, it } from 'vitest';
import { run } from '../../src/sys/exec.js';
import { interrupted, onInterrupt, undoOnInterrupt } from '../../src/sys/interrupt.js';

describe('interrupt', () => {
  it('stops running tools, runs the undo steps newest first, and lets the undo steps run tools', async () => {
    const order: string[] = [];
    onInterrupt(() => {
      order.push('first');
    });
    const off = onInterrupt(() => {
      order.push('unregistered');
    });
    off();
    let afterAbort = '';
    onInterrupt(async () => {
      // started after the abort: runs to its end
      afterAbort = (await run('sh', ['-c', 'sleep 0.2; echo done'])).stdout.trim();
      order.push('second');
    });
    const inFlight = undoOnInterrupt(
      () => {
        order.push('third');
      },
      () => run('sleep', ['30']),
    );
    inFlight.catch(() => {});
    await new Promise((r) => setTimeout(r, 200));
    const t0 = Date.now();
    await interrupted();
    await expect(inFlight).rejects.toMatchObject({ code: 'TOOL' });
    expect(Date.now() - t0).toBeLessThan(10_000);
    // newest first; the one still registered by undoOnInterrupt ran too
    expect(order).toEqual(['third', 'second', 'first']);
    expect(afterAbort).toBe('done');
  });
});
