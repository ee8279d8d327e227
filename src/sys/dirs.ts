/**
 * `mkdir -p` that always ends. Node's own recursive mkdir spins forever, at 100 % CPU,
 * when a parent exists but cannot hold children and says ENOENT (a path under /proc: it
 * steps back to the parent on ENOENT and forward on EEXIST, with no end); for an output
 * folder a user names, that was a build that never returned. This one walks up to the
 * first folder that exists, then creates the rest, and fails on the first refusal.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { StackbootError } from './errors.js';

const errno = (e: unknown): string | undefined => (e as NodeJS.ErrnoException).code;

async function isDir(p: string): Promise<boolean> {
  return (await fs.stat(p).catch(() => null))?.isDirectory() ?? false;
}

/** Creates `dir` and its missing parents (mode 0777 less the umask, as mkdir -p). */
export async function makeDir(dir: string): Promise<void> {
  const abs = path.resolve(dir);
  const fail = (e: unknown) => new StackbootError('IO', `cannot create folder ${abs}`, { cause: e });
  const missing: string[] = [];
  for (let p = abs; ; p = path.dirname(p)) {
    try {
      await fs.mkdir(p);
      break;
    } catch (e) {
      if (errno(e) === 'EEXIST' && (await isDir(p))) break;
      if (errno(e) !== 'ENOENT' || path.dirname(p) === p) throw fail(e);
      missing.push(p);
    }
  }
  for (const p of missing.reverse()) {
    try {
      await fs.mkdir(p);
    } catch (e) {
      // made by someone else meanwhile: fine; anything else, ENOENT under a parent that
      // exists included, is final
      if (!(errno(e) === 'EEXIST' && (await isDir(p)))) throw fail(e);
    }
  }
}
