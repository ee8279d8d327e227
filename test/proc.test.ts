/**
 * src/proc.ts on real processes: a shell with a child, followed through /proc.
 */
import { describe, expect, it } from 'vitest';
import { spawn } from '../src/exec.js';
import { processTree, procField } from '../src/proc.js';

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
      for (const p of tree.slice(1)) process.kill(p, 'SIGKILL');
      sh.kill('SIGKILL');
      await sh.done;
    }
    // a process that is gone: just itself, no fields
    expect(await processTree(sh.pid!)).toEqual([sh.pid]);
    expect(await procField(sh.pid!, 'status', 'VmRSS')).toBeNull();
  });
});
