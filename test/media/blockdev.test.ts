// Block-device knowledge as pure logic: partition names, the sfdisk scripts and command
// lines that disk images and migrate run, mkfs command lines, and the mount/holder/size
// guards on a device's facts (mountinfo from a fake /proc).
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { deviceProblems, GPT_TYPES, gptScript, mkfsCommand, parseMountinfo, partitionCommand, partitionDevice, vfatLabel, type DeviceInfo } from '../../src/media/blockdev.js';

describe('partition device names', () => {
  it('adds p before the number when the disk name ends in a digit', () => {
    expect(partitionDevice('/dev/nvme0n1', 2)).toBe('/dev/nvme0n1p2');
    expect(partitionDevice('/dev/mmcblk0', 1)).toBe('/dev/mmcblk0p1');
    expect(partitionDevice('/dev/loop3', 2)).toBe('/dev/loop3p2');
  });

  it('appends the number to a disk name ending in a letter', () => {
    expect(partitionDevice('/dev/sdb', 2)).toBe('/dev/sdb2');
    expect(partitionDevice('/dev/vda', 10)).toBe('/dev/vda10');
    expect(partitionDevice('sdb', 1)).toBe('sdb1');
  });
});

describe('GPT scripts', () => {
  it("writes migrate's table: sizes in MiB, the last partition taking the rest", () => {
    const s = gptScript({ parts: [{ size: '256MiB', type: 'esp', name: 'sb-boot' }, { size: '1000MiB', type: 'linux', name: 'sb-store' }, { type: 'linux', name: 'sb-data' }] });
    expect(s).toBe(
      [
        'label: gpt',
        `size=256MiB, type=${GPT_TYPES.esp}, name="sb-boot"`,
        `size=1000MiB, type=${GPT_TYPES.linux}, name="sb-store"`,
        `type=${GPT_TYPES.linux}, name="sb-data"`,
        '',
      ].join('\n'),
    );
  });

  it("writes an image's table: a label id, sectors, start and uuid on every line", () => {
    const s = gptScript({
      labelId: 'D1',
      unit: 'sectors',
      firstLba: 2048,
      parts: [
        { start: 2048, size: 131072, type: 'esp', uuid: 'U1', name: 'sb-boot' },
        { start: 133120, size: 65536, type: 'msdata', uuid: 'U2', name: 'x' },
      ],
    });
    expect(s).toBe(
      [
        'label: gpt',
        'label-id: D1',
        'unit: sectors',
        'first-lba: 2048',
        `start=2048, size=131072, type=${GPT_TYPES.esp}, uuid=U1, name="sb-boot"`,
        `start=133120, size=65536, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7, uuid=U2, name="x"`,
        '',
      ].join('\n'),
    );
  });

  it('wipes old signatures on a device, and tells no kernel about an image file', () => {
    expect(partitionCommand('/dev/nvme0n1', 'device')).toEqual(['sfdisk', '--quiet', '--wipe', 'always', '/dev/nvme0n1']);
    expect(partitionCommand('/tmp/x.img', 'image')).toEqual(['sfdisk', '--quiet', '--no-reread', '--no-tell-kernel', '/tmp/x.img']);
  });
});

describe('mkfs command lines', () => {
  it('makes FAT32 with an upper-case label of 11 characters at most', () => {
    expect(vfatLabel('sb-boot')).toBe('SB-BOOT');
    expect(vfatLabel('a-very-long-label')).toBe('A-VERY-LONG');
    expect(mkfsCommand('vfat', '/dev/nvme0n1p1', 'sb-boot')).toEqual(['mkfs.vfat', '-F', '32', '-n', 'SB-BOOT', '/dev/nvme0n1p1']);
  });

  it('makes a quiet, forced ext4 with a label', () => {
    expect(mkfsCommand('ext4', '/dev/nvme0n1p2', 'sb-store')).toEqual(['mkfs.ext4', '-q', '-F', '-L', 'sb-store', '/dev/nvme0n1p2']);
  });

  it('puts options before the target and a file size in KiB after it (ext4 with a k)', () => {
    expect(mkfsCommand('ext4', 'p.img', 'l', { options: ['-U', 'u', '-d', 'dir'], sizeBytes: 8 * 1024 * 1024 + 100 })).toEqual(['mkfs.ext4', '-q', '-F', '-L', 'l', '-U', 'u', '-d', 'dir', 'p.img', '8192k']);
    expect(mkfsCommand('vfat', 'b.img', 'boot', { options: ['--invariant', '-C'], sizeBytes: 64 * 1024 * 1024 })).toEqual(['mkfs.vfat', '-F', '32', '-n', 'BOOT', '--invariant', '-C', 'b.img', '65536']);
  });
});

describe('device guards', () => {
  let proc: string;
  const disk: DeviceInfo = {
    name: 'sdb',
    major: 8,
    minor: 16,
    size: 1024 * 1024 * 1024,
    partitions: [
      { name: 'sdb1', major: 8, minor: 17 },
      { name: 'sdb2', major: 8, minor: 18 },
    ],
    holders: [],
  };
  const mountinfo = [
    '21 26 0:20 / /proc rw,relatime - proc proc rw',
    '30 26 8:17 / /media/my\\040card rw,relatime - vfat /dev/sdb1 rw',
    '31 26 8:33 / /srv rw,relatime - ext4 /dev/sdc1 rw',
    '',
  ].join('\n');

  beforeAll(async () => {
    proc = await mkdtemp(path.join(tmpdir(), 'sb-blockdev-test-'));
    await mkdir(path.join(proc, 'self'));
    await writeFile(path.join(proc, 'self', 'mountinfo'), mountinfo);
  });
  afterAll(async () => {
    await rm(proc, { recursive: true, force: true });
  });

  it('reads major:minor, the mount point (with its escaped spaces) and the source from mountinfo', () => {
    expect(parseMountinfo(mountinfo)).toEqual([
      { devt: '0:20', mountPoint: '/proc', source: 'proc' },
      { devt: '8:17', mountPoint: '/media/my card', source: '/dev/sdb1' },
      { devt: '8:33', mountPoint: '/srv', source: '/dev/sdc1' },
    ]);
  });

  it("names a mounted partition of the disk, not another disk's", async () => {
    expect(await deviceProblems(disk, 0, { procRoot: proc })).toEqual(['sdb1 is mounted at /media/my card']);
  });

  it('names holders and a disk smaller than the image', async () => {
    const p = await deviceProblems({ ...disk, partitions: [], holders: ['dm-0'] }, disk.size + 1, { procRoot: proc });
    expect(p).toEqual(['sdb is in use by dm-0 (holders: LVM, dm-crypt, RAID…)', `sdb is too small: ${disk.size} bytes, the image needs ${disk.size + 1}`]);
  });

  it('finds nothing wrong with an unmounted, unheld disk that is big enough', async () => {
    expect(await deviceProblems({ ...disk, partitions: [] }, disk.size, { procRoot: proc })).toEqual([]);
  });
});
