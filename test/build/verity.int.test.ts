/**
 * The dm-verity tree stackboot appends to a layer (src/build/verity.ts), checked against
 * the real tools: Debian's `veritysetup verify` (cryptsetup-bin) finds the same root and
 * names the block of a byte flipped in a file's data. The kernel's dm-verity reading it
 * is proved under QEMU (test/e2e/verity.test.ts): this host's kernel has no device-mapper.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { gensquashfsDir, type SquashOptions } from '../../src/build/squashfs.js';
import { appendVerity, readVerity, verityLevels, verityTreeBytes, VERITY_BLOCK } from '../../src/build/verity.js';
import { run } from '../../src/sys/exec.js';
import { tmpdir } from './sources/tarfixture.js';

const opts: SquashOptions = { compression: { algorithm: 'gzip', level: 1 }, blockSize: 131072, epoch: 0 };
let work: string;
let tree: string;
const payload = randomBytes(3 << 20);

async function squash(name: string, dir = tree): Promise<string> {
  const f = path.join(work, name);
  await gensquashfsDir(f, dir, { ...opts, allRoot: true });
  return f;
}

/** `veritysetup verify` of FILE against ROOT (the tree in the same file, no superblock). */
async function veritysetupVerify(file: string, v: { root: string; salt: string; dataBytes: number; hashOffset: number }) {
  return run('veritysetup', ['verify', '--no-superblock', `--hash-offset=${v.hashOffset}`, `--data-blocks=${v.dataBytes / VERITY_BLOCK}`, `--salt=${v.salt}`, file, file, v.root], { reject: false });
}

beforeAll(async () => {
  work = await tmpdir('sb-verity-');
  tree = path.join(work, 'tree');
  await fs.mkdir(path.join(tree, 'data'), { recursive: true });
  // random bytes: squashfs stores them as they are, so the test can find them in the file
  await fs.writeFile(path.join(tree, 'data', 'blob'), payload);
  await fs.writeFile(path.join(tree, 'small'), 'x\n');
});
afterAll(async () => {
  await fs.rm(work, { recursive: true, force: true });
});

describe('verity tree geometry', () => {
  it('has the kernel levels: none for one block, one up to 128 blocks, then one more per 128x', () => {
    expect(verityLevels(VERITY_BLOCK)).toEqual([]);
    expect(verityLevels(2 * VERITY_BLOCK)).toEqual([1]);
    expect(verityLevels(128 * VERITY_BLOCK)).toEqual([1]);
    expect(verityLevels(129 * VERITY_BLOCK)).toEqual([2, 1]);
    expect(verityLevels(128 * 128 * VERITY_BLOCK + VERITY_BLOCK)).toEqual([129, 2, 1]);
    expect(verityTreeBytes(129 * VERITY_BLOCK)).toBe(3 * VERITY_BLOCK);
    expect(() => verityLevels(4000)).toThrow(/not a positive multiple of 4096/);
  });
});

describe('appendVerity', () => {
  it('appends the tree veritysetup checks, leaves the squashfs data as it was, and is reproducible', async () => {
    const a = await squash('a.sqfs');
    const before = await fs.readFile(a);
    const v = await appendVerity(a);
    const after = await fs.readFile(a);
    expect(v.dataBytes).toBe(before.length);
    expect(v.hashOffset).toBe(before.length);
    expect(after.length).toBe(before.length + verityTreeBytes(before.length));
    expect(after.subarray(0, before.length).equals(before)).toBe(true);
    expect(v.salt).toBe((await import('node:crypto')).createHash('sha256').update('stackboot dm-verity salt 1').digest('hex'));
    const r = await veritysetupVerify(a, v);
    expect(r.exitCode, r.stderr).toBe(0);
    // the same tree again: the same file, byte for byte
    const b = await squash('b.sqfs');
    expect(await appendVerity(b)).toEqual(v);
    expect((await fs.readFile(b)).equals(after)).toBe(true);
    expect(await readVerity(a)).toEqual(v);
    // the squashfs is still readable with the tree behind it
    const ls = await run('rdsquashfs', ['-l', '/data', a]);
    expect(ls.stdout).toMatch(/blob/);
  });

  it('makes a one-block layer whose root is the hash of its only block (veritysetup agrees)', async () => {
    const empty = path.join(work, 'empty');
    await fs.mkdir(empty);
    const f = await squash('one.sqfs', empty);
    const v = await appendVerity(f);
    expect(v.dataBytes).toBe(VERITY_BLOCK);
    expect((await fs.stat(f)).size).toBe(VERITY_BLOCK);
    const r = await veritysetupVerify(f, v);
    expect(r.exitCode, r.stderr).toBe(0);
  });

  it('refuses a file that has a tree already, and readVerity refuses a tree that does not fit the data', async () => {
    const f = await squash('twice.sqfs');
    await appendVerity(f);
    await expect(appendVerity(f)).rejects.toThrow(/bytes past its squashfs data/);
    const buf = await fs.readFile(f);
    buf[buf.length - 1] ^= 0xff;
    await fs.writeFile(f, buf);
    await expect(readVerity(f)).rejects.toThrow(/hash tree does not match its data/);
    await fs.truncate(f, buf.length - VERITY_BLOCK);
    await expect(readVerity(f)).rejects.toThrow(/squashfs data .* and hash tree make/);
  });
});

describe('a flipped byte', () => {
  it("in a file's data (the layer keeps its size) fails veritysetup verify at that block", async () => {
    const f = await squash('k.sqfs');
    const v = await appendVerity(f);
    const buf = await fs.readFile(f);
    const at = buf.indexOf(payload.subarray(1 << 20, (1 << 20) + 64));
    expect(at).toBeGreaterThan(0);
    buf[at] ^= 0x01;
    await fs.writeFile(f, buf);
    const r = await veritysetupVerify(f, v);
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toMatch(new RegExp(`Verification failed at position ${Math.floor(at / VERITY_BLOCK) * VERITY_BLOCK}`));
  });
});

describe('build', () => {
  it('writes a verity line per layer, the same from the cache, and a layer file veritysetup checks', async () => {
    const d = path.join(work, 'stack');
    await fs.mkdir(path.join(d, 'big'), { recursive: true });
    await fs.cp(tree, path.join(d, 'big'), { recursive: true });
    const recipe = path.join(d, 'recipe.json');
    await fs.writeFile(recipe, JSON.stringify({ name: 'vt', version: '1', compatible: 'vt', layers: [{ name: 'big', source: { type: 'dir', path: 'big' } }] }));
    const { parseRecipe } = await import('../../src/build/recipe.js');
    const { buildStack } = await import('../../src/build/stack.js');
    const r = parseRecipe(await fs.readFile(recipe, 'utf8'), recipe, { arch: 'amd64' });
    const once = (out: string) => buildStack(r, { outDir: path.join(d, out), cacheDir: path.join(d, 'cache'), epoch: 0, arch: 'amd64', uid: 0, progress: () => {} });
    const a = await once('o1');
    const b = await once('o2');
    expect(b.layers[0]!.cached).toBe(true);
    const text = await fs.readFile(a.manifestFile, 'utf8');
    expect(await fs.readFile(b.manifestFile, 'utf8')).toBe(text);
    const l = a.manifest.layers[0]!;
    expect(text).toContain(`verity ${l.digest} ${l.verity!.root} ${l.verity!.salt} ${l.verity!.dataBytes} ${l.verity!.hashOffset}\n`);
    expect(l.size).toBe(l.verity!.dataBytes + verityTreeBytes(l.verity!.dataBytes));
    const res = await veritysetupVerify(b.layers[0]!.file, l.verity!);
    expect(res.exitCode, res.stderr).toBe(0);
  });
});
