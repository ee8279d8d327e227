/**
 * src/sys/proc.ts on real processes: a shell with a child, followed through /proc.
 */
import { describe, expect, it } from 'vitest';
import { spawn } from '../../src/sys/exec.js';
import { bytesReadBy, processTree, procField } from '../../src/sys/proc.js';

/** SIGKILLs each pid; one that is gone already (a child seen before it exited) is fine. */
function killAll(pids: number[]): void {
  for (const p of pids) {
    try {
      process.kill(p, 'SIGKILL');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ESRCH') throw e;
    }
  }
}

describe('processTree / procField', () => {
  it('finds a process and the ones below it, and reads their /proc fields', async () => {
    const sh = spawn('sh', ['-c', 'sleep 30 & echo started; wait']);
    let tree: number[] = [];
    try {
      await new Promise<void>((resolve) => sh.stdout.once('data', () => resolve()));
      tree = await processTree(sh.pid!);
      expect(tree[0]).toBe(sh.pid);
      expect(tree).toHaveLength(2); // the shell and its sleep
      const rss = await procField(tree[1], 'status', 'VmRSS');
      expect(rss).toBeGreaterThan(0);
      expect(await procField(process.pid, 'io', 'rchar')).toBeGreaterThan(0);
      expect(await procField(process.pid, 'status', 'NoSuchField')).toBeNull();
    } finally {
      // the sleep too: it holds the shell's stdout open
      killAll(tree.slice(1));
      sh.kill('SIGKILL');
      await sh.done;
    }
    // a process that is gone: just itself, no fields
    expect(await processTree(sh.pid!)).toEqual([sh.pid]);
    expect(await procField(sh.pid!, 'status', 'VmRSS')).toBeNull();
  });

  it("counts the named reader's bytes, not its parent's (which gains a reaped child's)", async () => {
    const n = 4 << 20;
    // head and cat read 4 MiB each and are reaped; then a cat that has read nothing yet
    // (not exec'd: exec would keep the shell's counters)
    const sh = spawn('sh', ['-c', `head -c ${n} /dev/zero | cat >/dev/null; echo half; sleep 30 | cat`]);
    let tree: number[] = [];
    try {
      await new Promise<void>((resolve) => sh.stdout.once('data', () => resolve()));
      // the shell forks sleep and cat after it printed: wait for the cat (a loaded machine)
      for (let i = 0; i < 500 && (tree.length < 3 || (await bytesReadBy(sh.pid!, 'cat')) === null); i++) {
        await new Promise((r) => setTimeout(r, 20));
        tree = await processTree(sh.pid!);
      }
      // the shell has reaped head and cat: their bytes are the shell's now
      expect(await procField(sh.pid!, 'io', 'rchar')).toBeGreaterThanOrEqual(2 * n);
      const byCat = await bytesReadBy(sh.pid!, 'cat');
      expect(byCat).not.toBeNull();
      expect(byCat!).toBeLessThan(n);
      expect(await bytesReadBy(sh.pid!, 'nosuchtool')).toBeNull();
    } finally {
      killAll(tree.slice(1));
      sh.kill('SIGKILL');
      await sh.done;
    }
  });
});
