/**
 * stackboot image on the real demo stack: a reproducible, sparse GPT image with a boot
 * partition (kernel, initrd, extlinux.conf), a store with slot a good, and a data partition.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { buildImage, planImage } from '../../src/media/image.js';
import { bootRoomMiB } from '../../src/media/layout.js';
import { loadTarget } from '../../src/boot/target.js';
import { readBmapFor } from '../../src/media/bmap.js';
import { run } from '../../src/sys/exec.js';
import { CACHE, demoStack } from '../e2e/fixtures.js';

let tmp: string;
let buildDir: string;
let stackId: string;
beforeAll(async () => {
  tmp = await mkdtemp(path.join(tmpdir(), 'sb-image-int-'));
  const b = await demoStack('demo');
  buildDir = b.outDir;
  stackId = b.stackId;
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

describe('stackboot image', () => {
  it('plans layouts: sd is a power of two, --size gives the rest to data, too small is refused', async () => {
    const sd = await planImage({ buildDir, out: 'x', layout: 'sd' });
    expect(Math.log2(sd.totalMiB) % 1).toBe(0);
    const nv = await planImage({ buildDir, out: 'x', layout: 'nvme', sizeMiB: 1024 });
    expect(nv.totalMiB).toBe(1024);
    expect(nv.parts.map((p) => p.sizeMiB).reduce((a, b) => a + b) + 2).toBe(1024);
    await expect(planImage({ buildDir, out: 'x', storeMiB: 1 })).rejects.toThrow(/cannot hold/);
    // a missing boot file is the user's mistake, with its flag, before anything is made
    for (const [k, flag] of [['kernel', '--kernel'], ['initrd', '--initrd'], ['fdt', '--fdt']] as const) {
      await expect(planImage({ buildDir, out: 'x', [k]: '/no/such/file' })).rejects.toMatchObject({ code: 'USAGE', message: `${flag} /no/such/file: no such file` });
    }
    await expect(planImage({ buildDir, out: 'x', kernel: buildDir })).rejects.toMatchObject({ code: 'USAGE', message: `--kernel ${buildDir}: not a file` });
    // the boot partition has room for a boot-update (two kernels and initrds): the sd
    // layout's 64 MiB for the amd64 kernel, more for the arm64 one (33 MiB), and what
    // --boot-size says when given
    const kernelMiB = async (arch: 'amd64' | 'arm64') => (await stat((await loadTarget(arch, CACHE)).kernel)).size / (1 << 20);
    expect(await kernelMiB('amd64')).toBeLessThan(12);
    expect((await planImage({ buildDir, out: 'x', layout: 'sd', cacheRoot: CACHE })).parts[0]!.sizeMiB).toBe(64);
    expect(await kernelMiB('arm64')).toBeGreaterThan(30);
    expect((await planImage({ buildDir, out: 'x', layout: 'sd', arch: 'arm64', cacheRoot: CACHE })).parts[0]!.sizeMiB).toBe(128);
    expect((await planImage({ buildDir, out: 'x', layout: 'sd', arch: 'arm64', cacheRoot: CACHE, bootMiB: 48 })).parts[0]!.sizeMiB).toBe(48);
    expect(bootRoomMiB(44 << 20, 100 << 10)).toBe(160);
    // the UEFI boot program is there once: 60 MiB for the kernels and initrds, 5 more for it
    expect(bootRoomMiB(8 << 20)).toBe(64);
    expect(bootRoomMiB(8 << 20, 0, 5 << 20)).toBe(80);
    // the stack's layers carry dm-verity data: the plan says so (its initrd gets dmsetup)
    expect(sd.verity).toBe(true);
    expect(sd.stackId).toBe(stackId);
  });

  it('assembles with the same UUIDs and store id twice, sparse, with boot, store and data partitions and a block map', async () => {
    const a = path.join(tmp, 'a.img');
    const b = path.join(tmp, 'b.img');
    const ra = await buildImage({ buildDir, out: a, layout: 'sd', cacheRoot: CACHE, append: 'console=ttyS0' });
    const rb = await buildImage({ buildDir, out: b, layout: 'sd', cacheRoot: CACHE, append: 'console=ttyS0' });
    expect(rb.partitions).toEqual(ra.partitions);
    // byte-identical: every partition, and the whole image
    const partHash = async (img: string, p: { start: number; size: number }) =>
      (await run('sh', ['-c', `dd if=${img} bs=1M skip=${p.start / 1048576} count=${p.size / 1048576} status=none | sha256sum`])).stdout.split(' ')[0];
    for (const i of [0, 1, 2]) expect(await partHash(b, rb.partitions[i]), `partition ${i + 1}`).toBe(await partHash(a, ra.partitions[i]));
    const whole = async (img: string) => (await run('sha256sum', [img])).stdout.split(' ')[0];
    expect(await whole(b)).toBe(await whole(a));
    expect(rb.storeId).toBe(ra.storeId);
    expect((await run('sfdisk', ['--dump', a])).stdout).toBe((await run('sfdisk', ['--dump', b])).stdout.replaceAll(b, a));
    const st = await stat(a);
    expect(st.size).toBe(ra.totalMiB * 1024 * 1024);
    expect(st.blocks * 512).toBeLessThan(st.size / 4);
    const bm = await readBmapFor(a);
    expect(bm!.imageSize).toBe(st.size);
    expect(ra.mappedBytes).toBeGreaterThan(ra.layersBytes);

    const pt = JSON.parse((await run('sfdisk', ['--json', a])).stdout).partitiontable;
    expect(pt.label).toBe('gpt');
    expect(pt.partitions.map((p: { name: string }) => p.name)).toEqual(['APP', 'sb-store', 'sb-data']);
    const [boot, store] = ra.partitions;

    // boot partition: kernel, initrd, extlinux.conf (read with mtools, no mount)
    const env = { MTOOLS_SKIP_CHECK: '1' };
    const dir = (await run('mdir', ['-b', '-i', `${a}@@${boot.start}`, '::/'], { env })).stdout;
    expect(dir).toMatch(/VMLINUZ|vmlinuz/i);
    expect(dir).toMatch(/initrd\.img/i);
    const conf = (await run('mtype', ['-i', `${a}@@${boot.start}`, '::/boot/extlinux/extlinux.conf'], { env })).stdout;
    expect(conf).toMatch(/^\s*LINUX \/vmlinuz$/m);
    expect(conf).toMatch(/^\s*INITRD \/initrd\.img$/m);
    expect(conf).toMatch(/^\s*APPEND console=ttyS0$/m);
    expect(conf).toContain(stackId.slice(0, 12));

    // store partition: ext4 sb-store, slot a good, store id derived from the stack id
    const part = path.join(tmp, 'store.part');
    await run('dd', [`if=${a}`, `of=${part}`, 'bs=1M', `skip=${store.start / 1048576}`, `count=${store.size / 1048576}`, 'status=none']);
    const state = (await run('debugfs', ['-R', 'cat /state', part])).stdout;
    expect(state).toContain(`a good ${stackId}`);
    expect(state).toMatch(/^current a$/m);
    const id = (await run('debugfs', ['-R', 'cat /store-id', part])).stdout.trim();
    expect(id).toBe(ra.storeId);
    expect((await run('blkid', ['-o', 'value', '-s', 'LABEL', part])).stdout.trim()).toBe('sb-store');
    const ls = (await run('debugfs', ['-R', 'ls -l /layers', part])).stdout;
    expect(ls.match(/\.sqfs/g)?.length).toBe(3);
    // both filesystems are clean to their own checkers (e2fsprogs, dosfstools): what a
    // firmware (U-Boot, UEFI) or a kernel reads is well-formed, not only what mtools and
    // debugfs could read back
    const fsck = await run('e2fsck', ['-fn', part], { reject: false });
    expect(fsck.exitCode, fsck.stdout + fsck.stderr).toBe(0);
    const bootPart = path.join(tmp, 'boot.part');
    await run('dd', [`if=${a}`, `of=${bootPart}`, 'bs=1M', `skip=${boot.start / 1048576}`, `count=${boot.size / 1048576}`, 'status=none']);
    const fat = await run('fsck.fat', ['-n', '-v', bootPart], { reject: false });
    expect(fat.exitCode, fat.stdout + fat.stderr).toBe(0);
    expect(fat.stdout).toMatch(/32 bit entries/);
  });
});
