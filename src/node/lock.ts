/**
 * The store lock: one writer at a time (install, gc, rollback, mark-good, mark-bad, and
 * stackboot-node's mark-good/mark-bad/health). Without it `gc` removed the `.part` file
 * an install was writing, and remounted the store read-only under it.
 *
 * The lock is a directory, made with mkdir (atomic on every filesystem, and the only
 * primitive busybox sh shares with Node: Node has no flock(2), and `flock` is not in
 * every busybox). In it, `owner` holds "<pid> <command>". A lock whose owner process is
 * gone is stale: it is renamed away (only one of two racing takers can) and removed. On a
 * booted node it lives in /run (`/run/stackboot/store.lock`, gone at reboot, writable
 * while the store is read-only); for a store folder (`--store DIR`) in the folder
 * (`DIR/.stackboot.lock`). docs/PROTOCOL.md, "Store lock", has the shell side.
 *
 * Why not a library: proper-lockfile (the well-kept one) decides staleness by an mtime
 * its holder refreshes on a timer, for network filesystems; here every taker is on the
 * same machine, where "is that pid alive" is exact and needs no timer, and the shell
 * side must speak the same protocol.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { StackbootError, makeDir, pidAlive, selfPid } from '../sys/index.js';

export interface LockOptions {
  /** how long to wait for a busy lock (default 10 s) */
  waitMs?: number;
  /** poll interval (default 100 ms) */
  pollMs?: number;
}

/**
 * The locks held by the current async call chain (withLock): a holder may take its own
 * lock again (gc's remount inside gc's lock), while another chain of the same process
 * (an install and a gc started side by side) waits like any other taker.
 */
const held = new AsyncLocalStorage<ReadonlySet<string>>();

/** The holder of a lock: pid and command, or null when the owner file is not (yet) there. */
async function owner(dir: string): Promise<{ pid: number; what: string } | null> {
  const t = await fs.readFile(path.join(dir, 'owner'), 'utf8').catch(() => null);
  const m = t === null ? null : /^(\d+) ?(.*)$/.exec(t.trim());
  return m ? { pid: Number(m[1]), what: m[2] || '?' } : null;
}

/** When this machine booted (ms since the epoch), from /proc/uptime; 0 if unknown. */
async function bootTimeMs(): Promise<number> {
  const up = Number.parseFloat((await fs.readFile('/proc/uptime', 'utf8').catch(() => '')).split(' ')[0]);
  return Number.isFinite(up) ? Date.now() - up * 1000 : 0;
}

/**
 * True when the lock at `dir` was left by a process that is gone (and was cleared): its
 * owner pid is not running, or the lock is older than this boot (a store folder's lock
 * outlives a reboot, and its pid may belong to another process by now).
 */
async function clearStale(dir: string): Promise<boolean> {
  const o = await owner(dir);
  const st = await fs.stat(dir).catch(() => null);
  if (!st) return false;
  const beforeBoot = st.mtimeMs < (await bootTimeMs()) - 1000;
  if (o === null) {
    // a taker between its mkdir and its owner file; or one that died right there
    if (!beforeBoot && Date.now() - st.mtimeMs < 10_000) return false;
  } else if (!beforeBoot && pidAlive(o.pid)) return false;
  const away = `${dir}.stale-${selfPid()}-${Date.now()}`;
  try {
    await fs.rename(dir, away);
  } catch {
    return false; // another taker cleared it first
  }
  await fs.rm(away, { recursive: true, force: true });
  return true;
}

/**
 * Takes the lock at `dir` for `what` (e.g. "install"), waiting up to `waitMs` for a
 * holder to finish; not re-entrant (withLock is). Returns the release function
 * (idempotent).
 */
export async function takeLock(dir: string, what: string, o: LockOptions = {}): Promise<() => Promise<void>> {
  let released = false;
  const release = async (): Promise<void> => {
    if (released) return;
    released = true;
    await fs.rm(dir, { recursive: true, force: true }).catch(() => {});
  };
  await makeDir(path.dirname(dir));
  const deadline = Date.now() + (o.waitMs ?? 10_000);
  for (;;) {
    let made = false;
    try {
      await fs.mkdir(dir);
      made = true;
      await fs.writeFile(path.join(dir, 'owner'), `${selfPid()} ${what}\n`);
      return release;
    } catch (e) {
      if (made) await fs.rm(dir, { recursive: true, force: true }).catch(() => {});
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST' || made) throw new StackbootError('IO', `cannot take the store lock ${dir}`, { cause: e });
    }
    if (await clearStale(dir)) continue;
    if (Date.now() >= deadline) {
      const h = await owner(dir);
      throw new StackbootError('STATE', `the store is busy: ${h ? `${h.what} (pid ${h.pid})` : 'another command'} holds ${dir}; try again when it ends`, {
        details: { lock: dir, holder: h },
      });
    }
    await new Promise((r) => setTimeout(r, o.pollMs ?? 100));
  }
}

/** Runs fn holding the lock at `dir` (at once if this call chain holds it already). */
export async function withLock<T>(dir: string, what: string, fn: () => Promise<T>, o: LockOptions = {}): Promise<T> {
  const mine = held.getStore();
  if (mine?.has(dir)) return fn();
  const release = await takeLock(dir, what, o);
  try {
    return await held.run(new Set([...(mine ?? []), dir]), fn);
  } finally {
    await release();
  }
}
