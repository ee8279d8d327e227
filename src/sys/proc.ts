/**
 * Linux /proc facts about running processes (the tools stackboot starts), read the
 * cheap way: a process tree is followed through /proc/<pid>/task/<tid>/children, a few
 * reads per process, not a scan of /proc. The reads go through one small buffer: these
 * files report a size of 0, for which readFile allocates 64 KiB each time, and a
 * progress poll every 250 ms through a 25 s compression left ~30 MiB of dead buffers
 * for the garbage collector to find.
 */
import { closeSync, openSync, readdirSync, readSync } from 'node:fs';

const scratch = Buffer.allocUnsafe(8192);

/** The text of a /proc file ('' when it is gone). A /proc read does not block. */
function readProc(file: string): string {
  let fd: number;
  try {
    fd = openSync(file, 'r');
  } catch {
    return '';
  }
  try {
    let text = '';
    for (;;) {
      const n = readSync(fd, scratch, 0, scratch.length, null);
      if (n <= 0) return text;
      text += scratch.toString('latin1', 0, n);
    }
  } catch {
    return '';
  } finally {
    closeSync(fd);
  }
}

/** `pid` and every process below it, parents first; gone processes are skipped. */
export async function processTree(pid: number): Promise<number[]> {
  const out: number[] = [];
  const visit = (p: number): void => {
    if (out.includes(p)) return;
    out.push(p);
    let tasks: string[];
    try {
      tasks = readdirSync(`/proc/${p}/task`);
    } catch {
      return;
    }
    for (const t of tasks) {
      for (const k of readProc(`/proc/${p}/task/${t}/children`).split(' ')) if (k) visit(Number(k));
    }
  };
  visit(pid);
  return out;
}

/** One `Key: value` field of /proc/<pid>/<file> as a number (status: kB), or null. */
export async function procField(pid: number, file: 'io' | 'status', key: string): Promise<number | null> {
  const m = new RegExp(`^${key}:\\s+(\\d+)`, 'm').exec(readProc(`/proc/${pid}/${file}`));
  return m ? Number(m[1]) : null;
}

/**
 * Bytes read so far (`rchar` of /proc/<pid>/io) by the process named `name` (its comm)
 * at or below `root`: the largest, if there are several; null when none is running.
 * Only the named reader counts: Linux adds a child's counters to its parent's when the
 * parent reaps it, so a shell that ran `tar | tar2sqfs` reports the bytes of both (twice
 * the input) between reaping them and exiting.
 */
export async function bytesReadBy(root: number, name: string): Promise<number | null> {
  let best: number | null = null;
  for (const p of await processTree(root)) {
    if (readProc(`/proc/${p}/comm`).trim() !== name) continue;
    const n = await procField(p, 'io', 'rchar');
    if (n !== null) best = Math.max(best ?? 0, n);
  }
  return best;
}

/** This process's pid. */
export function selfPid(): number {
  return process.pid;
}

/** Whether a process with this pid exists (EPERM: it does, owned by someone else). */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}
