/**
 * The watchdog the boot hook armed for a pending stack's try (initramfs/watchdog.sh,
 * WATCHDOG= in the boot config; the booted record names it as `watchdog=DEV:SECS`).
 * Once the stack is good it is stopped by its magic close (open, 'V', close), as
 * stackboot-node's mark-good does. A device another process holds open (systemd's
 * RuntimeWatchdogSec) is fed by that process and left to it.
 */
import { constants, promises as fs } from 'node:fs';
import path from 'node:path';

export type WatchdogStop =
  /** the magic close stopped it */
  | 'stopped'
  /** another process holds it open and feeds it */
  | 'held'
  /** it runs on after the magic close (a kernel or driver with nowayout): something must feed it */
  | 'running'
  /** the device is no longer there */
  | 'gone';

/** The device of a booted record's `watchdog=DEV:SECS`, or null when none was armed. */
export function armedWatchdog(value: string | undefined): { dev: string; seconds: number } | null {
  const m = /^(\/\S+):(\d+)$/.exec(value ?? '');
  return m ? { dev: m[1]!, seconds: Number(m[2]) } : null;
}

/** sysfs folder of a watchdog device (`/dev/watchdog` is watchdog0's old name). */
function sysfsOf(dev: string, sysDir: string): string {
  const b = path.basename(dev);
  return path.join(sysDir, b === 'watchdog' ? 'watchdog0' : b);
}

/** Stops the watchdog at `dev` by its magic close; says what became of it. */
export async function stopWatchdog(dev: string, sysDir = '/sys/class/watchdog'): Promise<WatchdogStop> {
  const st = await fs.stat(dev).catch(() => null);
  if (!st?.isCharacterDevice()) return 'gone';
  let fh: fs.FileHandle;
  try {
    fh = await fs.open(dev, constants.O_WRONLY);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EBUSY') return 'held';
    throw e;
  }
  try {
    await fh.write('V');
  } finally {
    await fh.close();
  }
  const state = await fs.readFile(path.join(sysfsOf(dev, sysDir), 'state'), 'utf8').catch(() => '');
  return state.trim() === 'active' ? 'running' : 'stopped';
}
