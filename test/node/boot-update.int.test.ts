/**
 * boot-update without --boot finds the boot partition itself: the vfat labelled SB-BOOT,
 * read from each partition's FAT boot sector (a node's busybox has no blkid), and after a
 * migrate (the SD card and the NVMe both have one) the one on the booted store's disk.
 * Real GPT disks on loop devices, real mkfs.vfat and mkfs.ext4; the partition is then
 * mounted by boot-update itself only where the kernel has vfat (not on this host), so the
 * finding is tested here and the whole path in test/e2e/firmware.test.ts.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fatLabel, mkfsCommand, partitionDevice, waitBlock } from '../../src/media/index.js';
import { findBootPartition } from '../../src/node/boot-update.js';
import { doctor } from '../../src/node/doctor.js';
import { parseNodeConfig } from '../../src/node/config.js';
import { run } from '../../src/sys/exec.js';
import { attachLoop, detachLoop } from '../../src/sys/mount.js';
import { tmpdir } from '../build/sources/tarfixture.js';

let work: string;
const loops: string[] = [];

/** A 96 MiB GPT disk on a loop device: p1 (GPT name `gptName`) vfat labelled `boot` (when given), p2 ext4 sb-store. */
async function disk(name: string, boot?: string, gptName = 'APP'): Promise<string> {
  const img = path.join(work, `${name}.img`);
  await run('truncate', ['-s', '96M', img]);
  await run('sh', ['-c', `printf 'label: gpt\\nsize=48MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="${gptName}"\\ntype=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="sb-store"\\n' | sfdisk --quiet '${img}'`]);
  const dev = await attachLoop(img, { partscan: true });
  loops.push(dev);
  for (const n of [1, 2]) await waitBlock(partitionDevice(dev, n));
  if (boot) {
    const [cmd, ...args] = mkfsCommand('vfat', `${dev}p1`, boot);
    await run(cmd!, args);
  }
  await run('mkfs.ext4', ['-q', '-F', '-L', 'sb-store', `${dev}p2`]);
  return dev;
}

beforeAll(async () => {
  work = await tmpdir('sb-bootfind-');
});
afterAll(async () => {
  for (const l of loops) await detachLoop(l);
  await fs.rm(work, { recursive: true, force: true });
});

describe('the boot partition, found', () => {
  it('reads the label from FAT32 and FAT16 boot sectors as mkfs.vfat wrote them; ext4 and zeros are not FAT', async () => {
    const sector = async (f: string) => (await fs.readFile(f)).subarray(0, 512);
    for (const [fat, mib] of [['32', 40], ['16', 16]] as const) {
      const f = path.join(work, `fat${fat}.img`);
      await run('truncate', ['-s', `${mib}M`, f]);
      await run('mkfs.vfat', ['-F', fat, '-n', 'SB-BOOT', f]);
      expect(fatLabel(await sector(f)), `FAT${fat}`).toBe('SB-BOOT');
      await run('mkfs.vfat', ['-F', fat, f]);
      expect(fatLabel(await sector(f)), `FAT${fat} without a label`).toBeUndefined();
    }
    const e = path.join(work, 'ext4.img');
    await run('truncate', ['-s', '16M', e]);
    await run('mkfs.ext4', ['-q', '-F', '-L', 'SB-BOOT', e]);
    expect(fatLabel(await sector(e))).toBeUndefined();
    expect(fatLabel(Buffer.alloc(512))).toBeUndefined();
  });

  it('after a migrate (two disks with SB-BOOT), the one on the booted store\'s disk; none there: refused with both named', async () => {
    const sd = await disk('sd', 'sb-boot');
    const nvme = await disk('nvme', 'sb-boot');
    const other = await disk('other');
    const booted = path.join(work, 'booted');
    for (const [store, want] of [[`${nvme}p2`, `${nvme}p1`], [`${sd}p2`, `${sd}p1`]]) {
      await fs.writeFile(booted, `store_dev=${store}\nstore_id=${'a'.repeat(32)}\nstore_mnt=/run/sb/s0\nslot=a\n`);
      expect(await findBootPartition({ bootedFile: booted })).toBe(want);
    }
    // booted from a disk without one: which to update is the user's call
    await fs.writeFile(booted, `store_dev=${other}p2\n`);
    const e = await findBootPartition({ bootedFile: booted }).then(() => null, (x: unknown) => x as Error & { code: string });
    expect(e?.code).toBe('DEVICE');
    expect(e?.message).toMatch(/partitions are labelled SB-BOOT \(.*\), 0 on the booted store's disk .*: give the mounted one to update with --boot/);
    expect(e?.message).toContain(`${sd}p1`);
    expect(e?.message).toContain(`${nvme}p1`);
  });

  it("doctor names the boot partition, and warns when JetPack 5/6's L4TLauncher would not find it (a GPT name other than APP)", async () => {
    const nvme = await disk('doc-nvme', 'sb-boot');
    const old = await disk('doc-old', 'sb-boot', 'sb-boot');
    const runDir = path.join(work, 'run');
    await fs.mkdir(path.join(runDir, 'stackboot'), { recursive: true });
    const config = parseNodeConfig(`KEYS_DIR=${path.join(work, 'nokeys')}\n`);
    const boot = async (storeDev: string) => {
      await fs.writeFile(path.join(runDir, 'stackboot', 'booted'), `store_dev=${storeDev}\n`);
      const r = await doctor({ ctx: null, config, runDir });
      return r.findings.filter((x) => x.check === 'boot').map((x) => `${x.level} ${x.message}`);
    };
    expect(await boot(`${nvme}p2`)).toEqual([`ok ${nvme}p1 (GPT name APP): the boot partition, read by U-Boot and by JetPack 5/6's L4TLauncher`]);
    expect(await boot(`${old}p2`)).toEqual([`warn ${old}p1 is the boot partition, but its GPT name is "sb-boot": U-Boot boots it, JetPack 5/6's L4TLauncher reads only a partition named APP (and boot/extlinux/extlinux.conf on it): docs/boot.md, "Jetson"`]);
  });
});
