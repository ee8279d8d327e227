// Block devices for real (root, loop devices with partscan): a GPT written to a device the
// way migrate does it, the partition nodes waited for, filesystems made on them; the
// facts sysfs gives about the disk; a partition and a mounted disk refused; a GPT on an
// image file read back by name.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  deviceInfo,
  deviceProblems,
  findPartition,
  gptScript,
  makeFilesystem,
  partitionDevice,
  readPartitions,
  waitBlock,
  writePartitionTable,
  GPT_TYPES,
  gptEntryName,
} from '../../src/media/blockdev.js';
import { run } from '../../src/sys/exec.js';
import { attachLoop, detachLoop, mountDevice, umount, umountAll } from '../../src/sys/mount.js';

const MiB = 1024 * 1024;
let tmp: string;
const loops: string[] = [];
const mounts: string[] = [];

async function sparseFile(name: string, size: number): Promise<string> {
  const f = path.join(tmp, name);
  const fh = await open(f, 'w');
  await fh.truncate(size);
  await fh.close();
  return f;
}

beforeAll(async () => {
  tmp = await mkdtemp(path.join(tmpdir(), 'sb-blockdev-int-'));
});

afterAll(async () => {
  await umountAll(mounts);
  for (const l of loops) await detachLoop(l);
  await rm(tmp, { recursive: true, force: true });
});

describe('a loop device as a new disk', () => {
  it('is partitioned, its partition nodes appear, and each gets its filesystem and label', async () => {
    const dev = await attachLoop(await sparseFile('disk.img', 128 * MiB), { partscan: true });
    loops.push(dev);
    const before = await deviceInfo(dev);
    expect(before).toMatchObject({ name: path.basename(dev), size: 128 * MiB, partitions: [], holders: [] });

    const parts = [
      { size: '40MiB', type: 'esp' as const, name: 'sb-boot', fs: 'vfat' as const },
      { size: '48MiB', type: 'linux' as const, name: 'sb-store', fs: 'ext4' as const },
      { type: 'linux' as const, name: 'sb-data', fs: 'ext4' as const },
    ];
    await writePartitionTable(dev, gptScript({ parts }), 'device');
    for (let n = 1; n <= 3; n++) await waitBlock(partitionDevice(dev, n));
    for (const [i, p] of parts.entries()) await makeFilesystem(p.fs, partitionDevice(dev, i + 1), p.name);

    const table = await readPartitions(dev);
    expect(table.map((p) => [p.index, p.name, p.type])).toEqual([
      [1, 'sb-boot', GPT_TYPES.esp],
      [2, 'sb-store', GPT_TYPES.linux],
      [3, 'sb-data', GPT_TYPES.linux],
    ]);
    expect(table[0].size).toBe(40 * MiB);
    expect(table[1].size).toBe(48 * MiB);
    const blkid = async (n: number) => (await run('blkid', ['-o', 'value', '-s', 'TYPE', '-s', 'LABEL', partitionDevice(dev, n)])).stdout.trim().split('\n');
    expect(await blkid(1)).toEqual(['SB-BOOT', 'vfat']);
    expect(await blkid(2)).toEqual(['sb-store', 'ext4']);
    expect(await blkid(3)).toEqual(['sb-data', 'ext4']);

    // sysfs now lists the partitions, each with its node's major:minor
    const after = await deviceInfo(dev);
    expect(after.partitions.map((p) => p.name).sort()).toEqual([1, 2, 3].map((n) => path.basename(partitionDevice(dev, n))));
    for (const p of after.partitions) {
      const [ma, mi] = (await run('stat', ['-c', '%t %T', `/dev/${p.name}`])).stdout.trim().split(' ').map((h) => parseInt(h, 16));
      expect([p.major, p.minor], p.name).toEqual([ma, mi]);
    }

    // a partition is not a disk; a mounted partition is a problem, named with its mount point
    await expect(deviceInfo(partitionDevice(dev, 2))).rejects.toMatchObject({ code: 'DEVICE', message: expect.stringMatching(/is a partition/) });
    const m = path.join(tmp, 'm-store');
    await mountDevice(partitionDevice(dev, 2), m);
    mounts.push(m);
    expect(await deviceProblems(after, 0)).toEqual([`${path.basename(partitionDevice(dev, 2))} is mounted at ${m}`]);
    await umount(m);
    mounts.pop();
    expect(await deviceProblems(after, 0)).toEqual([]);
  });

  it('refuses what is not a block device', async () => {
    await expect(deviceInfo(await sparseFile('plain.img', MiB))).rejects.toMatchObject({ code: 'DEVICE', message: expect.stringMatching(/is not a block device/) });
  });
});

describe('a GPT on an image file', () => {
  it('is written without a kernel and read back by name', async () => {
    const img = await sparseFile('image.img', 16 * MiB);
    const uuid = 'BBBBBBBB-2222-4333-8444-555555555555';
    const parts = [{ start: 2048, size: 8192, type: 'esp' as const, name: 'one' }, { start: 10240, size: 16384, type: 'linux' as const, uuid, name: 'two' }];
    await writePartitionTable(img, gptScript({ labelId: '11111111-2222-4333-8444-555555555555', unit: 'sectors', parts }), 'image');
    expect(await findPartition(img, 'two')).toEqual({ index: 2, name: 'two', start: 10240 * 512, size: 16384 * 512, type: GPT_TYPES.linux, uuid });
    expect((await run('sfdisk', ['--dump', img])).stdout).toMatch(/^label-id: 11111111-2222-4333-8444-555555555555$/m);
    await expect(findPartition(img, 'three')).rejects.toMatchObject({ code: 'STORE', message: expect.stringMatching(/has no partition named three \(has: one, two\)/) });
  });

  it("names GPT entries from the disk's first sectors (512- and 4096-byte sectors), as doctor does where sysfs has no PARTNAME", async () => {
    for (const sector of [512, 4096]) {
      const img = await sparseFile(`names-${sector}.img`, 64 * MiB);
      // sfdisk takes the sector size from the device: a loop device with that logical block size
      const dev = (await run('losetup', ['--find', '--show', '--sector-size', String(sector), img])).stdout.trim();
      loops.push(dev);
      await run('sh', ['-c', `printf 'label: gpt\\nsize=8MiB, name="APP"\\nsize=8MiB, name="sb-store"\\nsize=8MiB, name="données"\\n' | sfdisk --quiet --no-reread '${dev}'`]);
      await run('sync', []);
      const fh = await open(img, 'r');
      const head = Buffer.alloc(sector * 2 + 128 * 128);
      await fh.read(head, 0, head.length, 0);
      await fh.close();
      expect([1, 2, 3, 4].map((n) => gptEntryName(head, n, sector)), `${sector}-byte sectors`).toEqual(['APP', 'sb-store', 'données', '']);
      expect(gptEntryName(head, 129, sector)).toBeUndefined();
    }
    expect(gptEntryName(Buffer.alloc(4096), 1)).toBeUndefined();
  });
});
