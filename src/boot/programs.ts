/**
 * A program and the shared libraries it needs, from a sysroot (an unpacked Debian system:
 * `dpkg -x` of a package and its library packages, or a stack's root): what the
 * standalone initrd copies to run a dynamically linked tool such as kexec (kexec-tools),
 * as initramfs-tools' copy_exec and dracut's inst_binary do on a host. binutils' readelf
 * reads the NEEDED entries and the program interpreter; each soname is looked up in the
 * sysroot's library folders, links followed inside the sysroot.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { StackbootError, run } from '../sys/index.js';

/** Folders searched for a soname, in order (Debian's multiarch paths first). */
const LIB_DIRS = ['lib/x86_64-linux-gnu', 'usr/lib/x86_64-linux-gnu', 'lib/aarch64-linux-gnu', 'usr/lib/aarch64-linux-gnu', 'lib64', 'lib', 'usr/lib'];

export interface ElfDeps {
  /** sonames from the dynamic section, in order */
  needed: string[];
  /** the program interpreter (ld.so), absolute, when it has one */
  interp?: string;
}

/** Parses `readelf -d -l -W` output (pure). */
export function parseReadelf(text: string): ElfDeps {
  const needed = [...text.matchAll(/\(NEEDED\)\s+Shared library: \[([^\]]+)\]/g)].map((m) => m[1]!);
  const interp = /\[Requesting program interpreter: ([^\]]+)\]/.exec(text)?.[1];
  return interp ? { needed, interp } : { needed };
}

export async function elfDeps(file: string): Promise<ElfDeps> {
  const r = await run('readelf', ['-d', '-l', '-W', file], { reject: false });
  if (r.exitCode !== 0) throw new StackbootError('TOOL', `readelf cannot read ${file}: ${r.stderr.trim().split('\n')[0] ?? ''}`);
  return parseReadelf(r.stdout);
}

/** The host path of ROOT's PATH, with links followed inside ROOT (an absolute target is taken in ROOT). */
async function resolveIn(root: string, p: string): Promise<string | null> {
  let cur = p;
  for (let hops = 0; hops < 16; hops++) {
    const host = path.join(root, cur);
    const st = await fs.lstat(host).catch(() => null);
    if (!st) return null;
    if (!st.isSymbolicLink()) return st.isFile() ? host : null;
    const t = await fs.readlink(host);
    cur = t.startsWith('/') ? t : path.posix.join(path.posix.dirname(cur), t);
  }
  return null;
}

export interface ElfFile {
  /** absolute path inside the sysroot (and inside the initrd) */
  path: string;
  /** the file on the host to copy (links resolved) */
  source: string;
}

/**
 * PROGRAM (absolute, inside ROOT) and every library it needs, transitively, with the
 * interpreter. A soname that is not in ROOT is an error naming it and who needs it.
 */
export async function programClosure(root: string, program: string): Promise<ElfFile[]> {
  const out = new Map<string, ElfFile>();
  const queue: { path: string; by: string }[] = [{ path: program, by: '' }];
  while (queue.length) {
    const { path: p, by } = queue.shift()!;
    if (out.has(p)) continue;
    const source = await resolveIn(root, p);
    if (!source) throw new StackbootError('SOURCE', `${p}${by ? ` (needed by ${by})` : ''} is not in ${root}`);
    out.set(p, { path: p, source });
    const deps = await elfDeps(source);
    if (deps.interp && !out.has(deps.interp)) queue.push({ path: deps.interp, by: p });
    for (const so of deps.needed) {
      let found: string | undefined;
      for (const d of LIB_DIRS) {
        const cand = `/${d}/${so}`;
        if (await resolveIn(root, cand)) {
          found = cand;
          break;
        }
      }
      if (!found) throw new StackbootError('SOURCE', `${so} (needed by ${p}) is not in ${root} (looked in ${LIB_DIRS.join(', ')})`);
      queue.push({ path: found, by: p });
    }
  }
  return [...out.values()].sort((a, b) => a.path.localeCompare(b.path));
}
