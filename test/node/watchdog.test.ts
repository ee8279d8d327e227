/**
 * Stopping the watchdog the boot hook armed for a pending stack's try (src/node/watchdog.ts):
 * the booted record's `watchdog=DEV:SECS`, and the magic close on a real character device
 * (/dev/null stands in for /dev/watchdog; the sysfs state is a folder of the test's own).
 * mark-good calling it on a booted store: test/node/rollback.int.test.ts; on a real
 * i6300esb under QEMU: test/e2e/watchdog.test.ts.
 */
import { promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { armedWatchdog, stopWatchdog } from '../../src/node/watchdog.js';

let sys: string;
beforeAll(async () => {
  sys = await fs.mkdtemp(path.join(tmpdir(), 'sb-wd-'));
});
afterAll(async () => {
  await fs.rm(sys, { recursive: true, force: true });
});

describe('the watchdog of the booted record', () => {
  it('reads watchdog=DEV:SECS; an empty or malformed value is none', () => {
    expect(armedWatchdog('/dev/watchdog:30')).toEqual({ dev: '/dev/watchdog', seconds: 30 });
    expect(armedWatchdog('/dev/watchdog1:255')).toEqual({ dev: '/dev/watchdog1', seconds: 255 });
    for (const v of [undefined, '', 'watchdog:30', '/dev/watchdog', '/dev/watchdog:', '/dev/watchdog:x']) expect(armedWatchdog(v), String(v)).toBeNull();
  });

  it('the magic close on a character device: stopped when sysfs says inactive (or says nothing), running when it stays active', async () => {
    expect(await stopWatchdog('/dev/null', sys)).toBe('stopped');
    await fs.mkdir(path.join(sys, 'null'), { recursive: true });
    await fs.writeFile(path.join(sys, 'null', 'state'), 'inactive\n');
    expect(await stopWatchdog('/dev/null', sys)).toBe('stopped');
    await fs.writeFile(path.join(sys, 'null', 'state'), 'active\n');
    expect(await stopWatchdog('/dev/null', sys)).toBe('running');
  });

  it('a device that is gone, or a path that is no character device, is never written', async () => {
    expect(await stopWatchdog(path.join(sys, 'no-such-device'), sys)).toBe('gone');
    const f = path.join(sys, 'plain-file');
    await fs.writeFile(f, '');
    expect(await stopWatchdog(f, sys)).toBe('gone');
    expect(await fs.readFile(f, 'utf8')).toBe('');
  });
});
