/**
 * src/node/lock.ts: the store lock, with real processes (a live holder, a dead one) and the
 * shell side's protocol (stackboot-node's node_lock, run under busybox sh).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { run, spawn } from '../../src/sys/exec.js';
import { takeLock, withLock } from '../../src/node/lock.js';

let tmp: string;
beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(tmpdir(), 'sb-lock-'));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

/** A pid that is certainly gone: a process that ran and was reaped. */
async function deadPid(): Promise<number> {
  const p = spawn('true', []);
  await p.done;
  return p.pid!;
}

describe('store lock', () => {
  it('one holder at a time; the holder may take it again; another chain of the same process waits', async () => {
    const dir = path.join(tmp, 'a', 'store.lock');
    const order: string[] = [];
    let inner = '';
    const first = withLock(dir, 'install', async () => {
      expect((await fs.readFile(path.join(dir, 'owner'), 'utf8')).trim()).toBe(`${process.pid} install`);
      // the same call chain again (gc's remount inside gc's own lock): no deadlock
      inner = await withLock(dir, 'gc', async () => 'inner');
      await new Promise((r) => setTimeout(r, 300));
      order.push('install');
    });
    await new Promise((r) => setTimeout(r, 50));
    // another chain in this process (an install and a gc side by side) waits its turn
    const second = withLock(dir, 'gc', async () => {
      order.push('gc');
    }, { pollMs: 20 });
    await Promise.all([first, second]);
    expect(inner).toBe('inner');
    expect(order).toEqual(['install', 'gc']);
    await expect(fs.stat(dir)).rejects.toThrow();
    const release = await takeLock(dir, 'x');
    await release();
    await release(); // idempotent
  });

  it('waits for a live holder, then names it; a holder that is gone is cleared', async () => {
    const dir = path.join(tmp, 'b.lock');
    const holder = spawn('sleep', ['30']);
    try {
      await fs.mkdir(dir);
      await fs.writeFile(path.join(dir, 'owner'), `${holder.pid} stackboot-node mark-good\n`);
      const t0 = Date.now();
      await expect(takeLock(dir, 'gc', { waitMs: 300, pollMs: 50 })).rejects.toMatchObject({
        code: 'STATE',
        message: expect.stringMatching(new RegExp(`the store is busy: stackboot-node mark-good \\(pid ${holder.pid}\\) holds .*b\\.lock`)),
      });
      expect(Date.now() - t0).toBeGreaterThanOrEqual(300);
      // the holder ends while a taker waits: the taker gets it
      const waiting = takeLock(dir, 'gc', { waitMs: 5000, pollMs: 50 });
      holder.kill('SIGKILL');
      await holder.done.catch(() => {});
      const release = await waiting;
      expect((await fs.readFile(path.join(dir, 'owner'), 'utf8')).trim()).toBe(`${process.pid} gc`);
      await release();
    } finally {
      holder.kill('SIGKILL');
    }
    // left by a process that died (a power cut cannot do this: /run is a tmpfs)
    await fs.mkdir(dir);
    await fs.writeFile(path.join(dir, 'owner'), `${await deadPid()} install\n`);
    const release = await takeLock(dir, 'gc', { waitMs: 0 });
    await release();
    expect((await fs.readdir(tmp)).filter((n) => n.includes('.stale-'))).toEqual([]);
    // a store folder's lock from before this boot: its pid is alive now, but not its owner
    await fs.mkdir(dir);
    await fs.writeFile(path.join(dir, 'owner'), `${process.pid} install\n`);
    await fs.utimes(dir, new Date(2020, 0, 1), new Date(2020, 0, 1));
    const r3 = await takeLock(dir, 'gc', { waitMs: 0 });
    expect((await fs.readFile(path.join(dir, 'owner'), 'utf8')).trim()).toBe(`${process.pid} gc`);
    await r3();
  });

  it('the shell side (stackboot-node) speaks the same protocol', async () => {
    const node = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..', 'initramfs', 'stackboot-node');
    const text = await fs.readFile(node, 'utf8');
    // node_lock and node_unlock as stackboot-node defines them, run under busybox sh
    const fn = (name: string) => {
      const i = text.indexOf(`${name}() {`);
      return text.slice(i, text.indexOf('\n}\n', i) + 3);
    };
    const lib = `SB_RUN=${tmp}/run\nsb_sys_sleep() { sleep 0.1; }\nnode_die() { node_unlock; echo "DIE: $*"; exit 1; }\n${fn('node_lock')}\n${fn('node_unlock')}\n`;
    const dir = path.join(tmp, 'run', 'stackboot', 'store.lock');
    // Node holds it: the shell waits SB_LOCK_WAIT tries, then says who holds it
    const release = await takeLock(dir, 'install');
    const busy = await run('busybox', ['sh', '-c', `${lib}SB_LOCK_WAIT=2; node_lock mark-good; echo GOT`], { reject: false });
    expect(busy.stdout).toMatch(new RegExp(`DIE: the store is busy: ${process.pid} install holds .*store\\.lock`));
    await release();
    // free: the shell takes it, writes its owner line, and Node then waits for it
    const sh = spawn('busybox', ['sh', '-c', `${lib}node_lock mark-good && echo GOT && exec sleep 30`]);
    try {
      await new Promise<void>((resolve) => sh.stdout!.once('data', () => resolve()));
      expect((await fs.readFile(path.join(dir, 'owner'), 'utf8')).trim()).toBe(`${sh.pid} stackboot-node mark-good`);
      await expect(takeLock(dir, 'gc', { waitMs: 200, pollMs: 50 })).rejects.toThrow(/the store is busy: stackboot-node mark-good/);
    } finally {
      sh.kill('SIGKILL');
      await sh.done.catch(() => {});
    }
    // the shell was killed holding it: stale, so Node clears it
    const r2 = await takeLock(dir, 'gc', { waitMs: 0 });
    await r2();
    // and a stale lock left by Node is cleared by the shell
    await fs.mkdir(dir);
    await fs.writeFile(path.join(dir, 'owner'), `${await deadPid()} install\n`);
    const ok = await run('busybox', ['sh', '-c', `${lib}SB_LOCK_WAIT=0; node_lock mark-good && echo GOT && node_unlock`], { reject: false });
    expect(ok.stdout).toContain('GOT');
    await expect(fs.stat(dir)).rejects.toThrow();
  });
});
