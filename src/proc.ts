/**
 * Linux /proc facts about running processes (the tools stackboot starts), read the
 * cheap way: a process tree is followed through /proc/<pid>/task/<tid>/children, a few
 * reads per process, not a scan of /proc.
 */
import { promises as fs } from 'node:fs';

/** `pid` and every process below it, parents first; gone processes are skipped. */
export async function processTree(pid: number): Promise<number[]> {
  const out: number[] = [];
  const visit = async (p: number): Promise<void> => {
    if (out.includes(p)) return;
    out.push(p);
    for (const t of await fs.readdir(`/proc/${p}/task`).catch(() => [] as string[])) {
      const kids = await fs.readFile(`/proc/${p}/task/${t}/children`, 'utf8').catch(() => '');
      for (const k of kids.split(' ').filter(Boolean)) await visit(Number(k));
    }
  };
  await visit(pid);
  return out;
}

/** One `Key: value` field of /proc/<pid>/<file> as a number (status: kB), or null. */
export async function procField(pid: number, file: 'io' | 'status', key: string): Promise<number | null> {
  const text = await fs.readFile(`/proc/${pid}/${file}`, 'utf8').catch(() => '');
  const m = new RegExp(`^${key}:\\s+(\\d+)`, 'm').exec(text);
  return m ? Number(m[1]) : null;
}
