/**
 * squashfs-tools-ng, run through exec: tar2sqfs (from a normalised tar stream on stdin)
 * and gensquashfs (from a directory). Both give identical bytes for identical input.
 */
import { promises as fs } from 'node:fs';
import type { Writable } from 'node:stream';
import { run, spawn, bytesReadBy, StackbootError } from '../sys/index.js';
import type { Compression } from './recipe.js';

export interface SquashOptions {
  compression: Compression;
  blockSize: number;
  /** all timestamps (SOURCE_DATE_EPOCH or 0) */
  epoch: number;
  /** worker threads; output does not depend on it */
  jobs?: number;
}

/** Progress of a compression: bytes of input the tools have read so far. */
export type OnRead = (bytes: number) => void;

/**
 * Runs a tool, reporting every 250 ms to `onRead` the bytes that `reader` (the process
 * at or below it that reads the whole input: gensquashfs reads the files itself, in a
 * tar | tar2sqfs pipe tar2sqfs reads the whole stream) has read. Linux counts every
 * read(), so this is the input side of the compression, where the size of the growing
 * output says little (it is compressed).
 */
async function runWatched(cmd: string, args: string[], env: Record<string, string>, reader: string, onRead?: OnRead): Promise<void> {
  if (!onRead) {
    await run(cmd, args, { env });
    return;
  }
  let timer: NodeJS.Timeout | undefined;
  let busy = false;
  let most = 0;
  try {
    await run(cmd, args, {
      env,
      onSpawn: (pid) => {
        timer = setInterval(() => {
          if (busy) return; // a slow /proc read: skip a tick rather than overlap
          busy = true;
          bytesReadBy(pid, reader)
            .then((n) => {
              // a counter only grows (a pipe's reader can briefly lag its writer)
              if (n !== null && n > most) onRead((most = n));
            })
            .catch(() => {})
            .finally(() => (busy = false));
        }, 250);
      },
    });
  } finally {
    clearInterval(timer);
  }
}

function compArgs(o: SquashOptions): string[] {
  const a = ['-c', o.compression.algorithm, '-b', String(o.blockSize)];
  if (o.compression.level !== undefined) a.push('-X', `level=${o.compression.level}`);
  if (o.jobs) a.push('-j', String(o.jobs));
  return a;
}

function env(o: SquashOptions): Record<string, string> {
  return { SOURCE_DATE_EPOCH: String(o.epoch) };
}

/** Version line of squashfs-tools-ng (part of the cache key). */
export async function toolVersion(): Promise<string> {
  const r = await run('gensquashfs', ['--version']);
  return r.stdout.split('\n')[0].trim();
}

/** Builds `out` from a tar stream written by `feed`. */
export async function tar2sqfs(out: string, o: SquashOptions, feed: (stdin: Writable) => Promise<void>): Promise<void> {
  const args = [...compArgs(o), '-d', `mode=0755,uid=0,gid=0,mtime=${o.epoch}`, '-s', '-f', '-q', out];
  const child = spawn('tar2sqfs', args, { env: env(o), stdin: 'pipe' });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  child.stdout.resume();
  const stdin = child.stdin as Writable;
  let feedErr: unknown;
  stdin.on('error', () => {}); // EPIPE when tar2sqfs dies; reported below
  try {
    await feed(stdin);
  } catch (e) {
    feedErr = e;
    child.kill('SIGKILL');
  }
  const r = await child.done;
  if (feedErr) throw feedErr;
  if (r.exitCode !== 0) {
    throw new StackbootError('TOOL', `tar2sqfs failed (exit ${r.exitCode ?? r.signal}): ${stderr.trim().split('\n').slice(-3).join(' | ') || 'no output'}`);
  }
}

/** Builds `out` from a directory with gensquashfs -D. */
export async function gensquashfsDir(out: string, dir: string, o: SquashOptions & { allRoot: boolean }, onRead?: OnRead): Promise<void> {
  const args = [...compArgs(o), '-D', dir, '-x', '-d', `mode=0755,uid=0,gid=0,mtime=${o.epoch}`, '-f', '-q', out];
  if (o.allRoot) args.splice(args.length - 1, 0, '--all-root');
  await runWatched('gensquashfs', args, env(o), 'gensquashfs', onRead);
}

/** A squashfs file's superblock facts, checked before a layer is accepted. */
export async function checkSquashfs(file: string): Promise<{ bytesUsed: number }> {
  const fh = await fs.open(file, 'r');
  try {
    const sb = Buffer.alloc(96);
    await fh.read(sb, 0, 96, 0);
    if (sb.readUInt32LE(0) !== 0x73717368) throw new StackbootError('VERIFY', `${file} is not a squashfs image`);
    return { bytesUsed: Number(sb.readBigUInt64LE(40)) };
  } finally {
    await fh.close();
  }
}

/**
 * Builds `out` from a directory through GNU tar | tar2sqfs, one shell pipe (no copy
 * through Node): sorted, numeric owners, every mtime the epoch, xattrs kept but
 * `system.*` (POSIX ACLs, which squashfs cannot store). Keeps hard links, and can place
 * the tree under a prefix (`into`).
 *
 * Like gensquashfs -D and the pack file, it takes the folder's contents, not the folder:
 * tar is given its top-level names (`./name`), never `.`, so the layer root and the
 * folders of `into` are tar2sqfs's defaults (0755, 0:0, the epoch) and not the source
 * folder's mode and owner (a 0700 `mktemp -d` would make / unreadable). The `into`
 * rename applies to member names and hard-link targets, never to symlink targets (`S`):
 * a relative link such as `../lib/x` must stay as it is. GNU tar leaves sockets out.
 */
export async function tarDirToSquashfs(out: string, dir: string, o: SquashOptions & { owner: 'keep' | 'root'; into?: string }, onRead?: OnRead): Promise<void> {
  const tarArgs = [
    '-C', dir, '--sort=name', '--format=posix', '--xattrs', '--xattrs-include=*', '--xattrs-exclude=system.*', '--numeric-owner',
    `--mtime=@${o.epoch}`, '--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime',
  ];
  if (o.owner === 'root') tarArgs.push('--owner=0', '--group=0');
  if (o.into) tarArgs.push(`--transform=s,^\\.,./${o.into},rhS`);
  const names = (await fs.readdir(dir)).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
  tarArgs.push('-cf', '-', ...(names.length ? names.map((n) => `./${n}`) : ['--files-from=/dev/null']));
  const sqfsArgs = [...compArgs(o), '-d', `mode=0755,uid=0,gid=0,mtime=${o.epoch}`, '-s', '-f', '-q', out];
  const script = 'set -o pipefail; n=$1; shift; tar "${@:1:$n}" | tar2sqfs "${@:$((n+1))}"';
  await runWatched('bash', ['-c', script, 'stackboot', String(tarArgs.length), ...tarArgs, ...sqfsArgs], env(o), 'tar2sqfs', onRead);
}

/**
 * Builds `out` from a gensquashfs pack file (owners, modes, hard links, devices; no
 * xattrs) of `bytes` bytes, which gensquashfs reads before any layer data.
 */
export async function gensquashfsPack(out: string, pack: { path: string; bytes: number }, o: SquashOptions, onRead?: OnRead): Promise<void> {
  const data = onRead && ((n: number) => onRead(Math.max(0, n - pack.bytes)));
  await runWatched('gensquashfs', [...compArgs(o), '-F', pack.path, '-d', `mode=0755,uid=0,gid=0,mtime=${o.epoch}`, '-f', '-q', out], env(o), 'gensquashfs', data);
}

/**
 * True when any entry of the tree has an xattr that squashfs can store (getfattr, from
 * attr). Symlinks are not followed (-h): a link's target may lie outside the tree, on the
 * build host (an absolute link in a root file system).
 */
export async function treeHasXattrs(dir: string, signal?: AbortSignal): Promise<boolean> {
  const r = await run('getfattr', ['-R', '-P', '-h', '-d', '-m', '^(user|trusted|security)\\.', '--absolute-names', dir], { reject: false, signal }).catch(() => null);
  if (!r) return true; // no getfattr: assume there are
  return /^# file: /m.test(r.stdout);
}
