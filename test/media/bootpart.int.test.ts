/**
 * boot-update on a boot partition without room (real small filesystems: tmpfs mounts,
 * as root): refused before a byte is written when the new files do not fit beside the
 * ones that boot now; and when a write fails anyway (here: the filesystem runs out of
 * inodes, which the free-space check cannot see), the files written before it are taken
 * away again and the old configuration is whole. The QEMU test (test/e2e/firmware.test.ts)
 * runs boot-update on a real vfat and boots the result through U-Boot.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run } from '../../src/sys/exec.js';
import { bootUpdate, planBootUpdate, renderExtlinux } from '../../src/media/index.js';
import { tmpdir } from '../build/sources/tarfixture.js';

let work: string;
const mounts: string[] = [];

beforeAll(async () => {
  work = await tmpdir('sb-bootpart-int-');
});
afterAll(async () => {
  for (const m of mounts) await run('umount', [m], { reject: false });
});

/** A boot partition as `stackboot image` writes it, on a tmpfs of its own with these options. */
async function partition(name: string, opts: string): Promise<string> {
  const mnt = path.join(work, name);
  await fs.mkdir(mnt);
  await run('mount', ['-t', 'tmpfs', '-o', opts, `sb-${name}`, mnt]);
  mounts.push(mnt);
  await fs.mkdir(path.join(mnt, 'extlinux'));
  await fs.writeFile(path.join(mnt, 'vmlinuz'), Buffer.alloc(256 << 10, 1));
  await fs.writeFile(path.join(mnt, 'initrd.img'), Buffer.alloc(64 << 10, 2));
  await fs.writeFile(path.join(mnt, 'extlinux/extlinux.conf'), await renderExtlinux({ name: 'demo', version: '1', stackId: 'a'.repeat(64), kernel: 'vmlinuz', initrd: 'initrd.img', append: 'panic=10' }));
  return mnt;
}

async function listing(dir: string): Promise<string[]> {
  return (await fs.readdir(dir, { recursive: true })).map(String).sort();
}

describe('boot-update without room', () => {
  it('refuses new files that do not fit beside the current ones (NO_SPACE, with both sizes), and writes nothing', async () => {
    const mnt = await partition('small', 'size=1m');
    const kernel = path.join(work, 'big-kernel');
    const initrd = path.join(work, 'initrd-new');
    await fs.writeFile(kernel, Buffer.alloc(900 << 10, 3));
    await fs.writeFile(initrd, Buffer.alloc(64 << 10, 4));
    const conf = await fs.readFile(path.join(mnt, 'extlinux/extlinux.conf'), 'utf8');
    const before = await listing(mnt);
    const o = { bootDir: mnt, kernel, initrd, describe: 'kernel big' };
    await expect(planBootUpdate(o)).rejects.toMatchObject({ code: 'NO_SPACE', message: expect.stringMatching(/has 0\.\d MiB free, and the new files need 0\.9 MiB beside the ones that boot now/) });
    await expect(bootUpdate(o)).rejects.toMatchObject({ code: 'NO_SPACE' });
    expect(await listing(mnt)).toEqual(before);
    expect(await fs.readFile(path.join(mnt, 'extlinux/extlinux.conf'), 'utf8')).toBe(conf);
    // a dry run says what it would take and what is free
    const small = path.join(work, 'small-kernel');
    await fs.writeFile(small, Buffer.alloc(100 << 10, 5));
    const plan = await bootUpdate({ ...o, kernel: small, dryRun: true });
    expect(plan.bytes).toBeGreaterThanOrEqual((100 << 10) + (64 << 10));
    expect(plan.free).toBeGreaterThan(plan.bytes);
    expect(await listing(mnt)).toEqual(before);
  });

  it('a write that fails midway (no inode left) takes the new files away again: the old configuration is whole', async () => {
    // the root, extlinux/, extlinux.conf, vmlinuz, initrd.img and one more: the new
    // kernel's file fits, the initrd's does not
    const mnt = await partition('inodes', 'size=8m,nr_inodes=6');
    const kernel = path.join(work, 'kernel-2');
    const initrd = path.join(work, 'initrd-2');
    await fs.writeFile(kernel, Buffer.alloc(100 << 10, 6));
    await fs.writeFile(initrd, Buffer.alloc(50 << 10, 7));
    const conf = await fs.readFile(path.join(mnt, 'extlinux/extlinux.conf'), 'utf8');
    const before = await listing(mnt);
    await expect(bootUpdate({ bootDir: mnt, kernel, initrd, describe: 'kernel 2' })).rejects.toMatchObject({ code: 'NO_SPACE', message: expect.stringMatching(/is full .*nothing was changed/) });
    expect(await listing(mnt)).toEqual(before);
    expect(await fs.readFile(path.join(mnt, 'extlinux/extlinux.conf'), 'utf8')).toBe(conf);
  });
});
