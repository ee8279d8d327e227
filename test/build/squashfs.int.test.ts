/**
 * squashfs-tools-ng through src/build/squashfs.ts: the progress of a compression, read from the
 * tools' /proc/<pid>/io while they run. Real gensquashfs, tar and tar2sqfs on a tree made
 * here: 32 MiB of random bytes at zstd level 19 keep the tools busy for about a second.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { gensquashfsDir, gensquashfsPack, tarDirToSquashfs, treeHasXattrs, type SquashOptions } from '../../src/build/squashfs.js';
import { run } from '../../src/sys/exec.js';
import { scanDir } from '../../src/build/sources/dir.js';
import { tmpdir } from './sources/tarfixture.js';

const SIZE = 32 << 20;
const opts: SquashOptions = { compression: { algorithm: 'zstd', level: 19 }, blockSize: 131072, epoch: 0 };
let work: string;
let tree: string;

beforeAll(async () => {
  work = await tmpdir('sb-sqfs-');
  tree = path.join(work, 'tree');
  await fs.mkdir(path.join(tree, 'data'), { recursive: true });
  await fs.writeFile(path.join(tree, 'data', 'random'), randomBytes(SIZE));
  await fs.writeFile(path.join(tree, 'small'), 'x\n');
});
afterAll(async () => {
  await fs.rm(work, { recursive: true, force: true });
});

/** The onRead values of one compression: they climb, and some fall between 0 and the end. */
function expectProgress(seen: number[], total: number): void {
  expect(seen.length, 'progress reported while the tool ran').toBeGreaterThan(0);
  for (let i = 1; i < seen.length; i++) expect(seen[i]).toBeGreaterThanOrEqual(seen[i - 1]);
  expect(seen.some((n) => n > 0 && n < total), `some value between 0 and ${total}: ${seen.join(', ')}`).toBe(true);
  // the bytes read are the input: never far above the tree's data (tar headers at most)
  expect(Math.max(...seen)).toBeLessThan(total + (1 << 20));
}

describe('compression progress (bytes the tools have read)', () => {
  it('gensquashfs -D', async () => {
    const seen: number[] = [];
    await gensquashfsDir(path.join(work, 'd.sqfs'), tree, { ...opts, allRoot: true }, (n) => seen.push(n));
    expectProgress(seen, SIZE + 2);
  });

  it('gensquashfs -F, without the pack file it reads first', async () => {
    const scan = await scanDir(tree, { devices: false, owner: 'root', packTo: path.join(work, 'f.pack') });
    const seen: number[] = [];
    await gensquashfsPack(path.join(work, 'f.sqfs'), scan.pack!, opts, (n) => seen.push(n));
    expectProgress(seen, scan.bytes);
  });

  it('GNU tar | tar2sqfs (the largest reader of the pipe)', async () => {
    const seen: number[] = [];
    await tarDirToSquashfs(path.join(work, 't.sqfs'), tree, { ...opts, owner: 'root' }, (n) => seen.push(n));
    expectProgress(seen, SIZE + 2);
  });

  it('the same bytes with and without a progress watcher', async () => {
    await gensquashfsDir(path.join(work, 'quiet.sqfs'), tree, { ...opts, allRoot: true });
    expect(Buffer.compare(await fs.readFile(path.join(work, 'quiet.sqfs')), await fs.readFile(path.join(work, 'd.sqfs')))).toBe(0);
  });
});

describe('treeHasXattrs', () => {
  it("sees the tree's own xattrs, not those of a symlink's target outside it", async () => {
    const outside = path.join(work, 'host-file');
    await fs.writeFile(outside, 'host\n');
    await run('setfattr', ['-n', 'user.host', '-v', '1', outside]);
    const t = path.join(work, 'xa-tree');
    await fs.mkdir(t);
    await fs.writeFile(path.join(t, 'plain'), 'x');
    await fs.symlink(outside, path.join(t, 'to-host'));
    await fs.symlink('/nonexistent/target', path.join(t, 'dangling'));
    expect(await treeHasXattrs(t)).toBe(false);
    await run('setfattr', ['-n', 'user.mine', '-v', '1', path.join(t, 'plain')]);
    expect(await treeHasXattrs(t)).toBe(true);
  });
});
