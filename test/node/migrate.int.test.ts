/**
 * migrate (src/node/migrate.ts) onto a real disk (a partitioned loop device, root): the
 * new store holds the good stack's layers (each checked), its manifest and signature in
 * slot a, and the state the shell's `stackboot-node migrate` writes (a pending with tries,
 * no current); a layer that does not verify leaves no file under its name.
 */
import { describe, it, expect, beforeAll, afterAll, afterEach } from 'vitest';
import { promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { planMigrate, migrate } from '../../src/node/migrate.js';
import { fatLabel, mkfsCommand, partitionDevice, waitBlock } from '../../src/media/blockdev.js';
import { run } from '../../src/sys/exec.js';
import { stageStore, Store } from '../../src/format/store.js';
import { parseState } from '../../src/format/state.js';
import { attachLoop, detachLoop, mountDevice, umount } from '../../src/sys/mount.js';
import { isTempName } from '../../src/sys/durable.js';
import { sha256File } from '../../src/sys/digest.js';
import { fakeBuild, keys, layerBytes, type FakeBuild } from '../support/update-fixtures.js';

const MTOOLS = { MTOOLS_SKIP_CHECK: '1' };
let tmp: string;
let v1: FakeBuild;
const undo: (() => Promise<unknown>)[] = [];

beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(tmpdir(), 'sb-migrate-'));
  const k = await keys(tmp);
  v1 = await fakeBuild(path.join(tmp, 'v1'), { version: '1', key: k.key, layers: [{ name: 'base', data: layerBytes(300_000, 'base') }, { name: 'app', data: layerBytes(9000, 'app') }] });
});
afterEach(async () => {
  while (undo.length) await undo.pop()!().catch(() => {});
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

/** The booted SD store (a folder: v1 good in slot a), its booted record, and an empty disk. */
async function setup(name: string): Promise<{ sd: Store; bootedFile: string; disk: string }> {
  const sd = await stageStore(path.join(tmp, `${name}-sd`), { slots: { a: { buildDir: v1.dir, status: 'good' } } });
  const bootedFile = path.join(tmp, `${name}-booted`);
  await fs.writeFile(bootedFile, `store_dev=/dev/mmcblk0p2\nstore_id=${await sd.id()}\nstore_mnt=${sd.dir}\nslot=a\nstack=${v1.id}\nstatus=good\ntries=-\nfallback=-\nupper=tmpfs\ndata_dev=-\n`);
  const img = path.join(tmp, `${name}.img`);
  const fh = await fs.open(img, 'w');
  await fh.truncate(96 << 20);
  await fh.close();
  const disk = await attachLoop(img, { partscan: true });
  undo.push(() => detachLoop(disk));
  return { sd, bootedFile, disk };
}

/** Runs fn on the new store partition, mounted. */
async function onNewStore<T>(disk: string, name: string, fn: (dir: string) => Promise<T>): Promise<T> {
  const mnt = path.join(tmp, `${name}.mnt`);
  await mountDevice(partitionDevice(disk, 2), mnt);
  try {
    return await fn(mnt);
  } finally {
    await umount(mnt);
  }
}

const plan = (bootedFile: string, disk: string) => planMigrate({ to: disk, bootedFile, bootMiB: 40, dataMiB: 8, tries: 3, force: true });

/** Every file name under dir, recursively, relative. */
async function files(dir: string): Promise<string[]> {
  return (await fs.readdir(dir, { recursive: true })).map(String).sort();
}

describe('migrate (loop device)', () => {
  it('copies the good stack into slot a of a new store, pending with tries, as the shell side does', async () => {
    const { sd, bootedFile, disk } = await setup('ok');
    const p = await plan(bootedFile, disk);
    expect(p.layers.map((l) => l.name)).toEqual(['base', 'app']);
    const r = await migrate(p, { tmpDir: tmp });
    expect(r.copiedBytes).toBe(p.layersBytes);
    await onNewStore(disk, 'ok', async (dir) => {
      expect((await fs.readFile(path.join(dir, 'store-id'), 'utf8')).trim()).toBe(p.newStoreId);
      expect(p.newStoreId).not.toBe(await sd.id());
      // the very text stackboot-node migrate writes
      const state = await fs.readFile(path.join(dir, 'state'), 'utf8');
      expect(state).toBe(`stackboot-state 1\ncurrent -\na pending ${v1.id} 3\n`);
      expect(parseState(state)).toEqual({ current: null, slots: { a: { status: 'pending', stack: v1.id, tries: 3 } } });
      expect(await fs.readFile(path.join(dir, 'slots', 'a', 'manifest'), 'utf8')).toBe(await fs.readFile(path.join(v1.dir, 'manifest'), 'utf8'));
      expect(await fs.readFile(path.join(dir, 'slots', 'a', 'manifest.sig'), 'utf8')).toBe(await fs.readFile(path.join(v1.dir, 'manifest.sig'), 'utf8'));
      const store = new Store(dir);
      expect((await store.layerDigests()).sort()).toEqual(v1.manifest.layers.map((l) => l.digest).sort());
      for (const l of v1.manifest.layers) expect(await sha256File(store.layerPath(l.digest))).toBe(l.digest);
      expect(await store.events()).toEqual([expect.stringMatching(new RegExp(`^\\d+ install slot=a stack=${v1.id.slice(0, 12)} tries=3 reason=migrated from store ${await sd.id()} \\(/dev/mmcblk0p2\\)$`))]);
      expect((await files(dir)).filter((f) => isTempName(path.basename(f)))).toEqual([]);
    });
    // the boot partition: named APP (what JetPack 5/6's L4TLauncher looks for), FAT
    // labelled SB-BOOT (what boot-update looks for)
    const pt = JSON.parse((await run('sfdisk', ['--json', disk])).stdout).partitiontable;
    expect(pt.partitions.map((x: { name: string }) => x.name)).toEqual(['APP', 'sb-store', 'sb-data']);
    const h = await fs.open(partitionDevice(disk, 1), 'r');
    const sector = Buffer.alloc(512);
    await h.read(sector, 0, 512, 0);
    await h.close();
    expect(fatLabel(sector)).toBe('SB-BOOT');
  });

  it("copies the boot partition the node booted from (read with mtools, no mount): the NVMe boots without the SD card", async () => {
    const { bootedFile, disk } = await setup('boot');
    // the SD card: p1 the boot partition as `image` makes it, p2 the booted store's device
    const sdImg = path.join(tmp, 'boot-sd.img');
    const fh = await fs.open(sdImg, 'w');
    await fh.truncate(96 << 20);
    await fh.close();
    await run('sh', ['-c', `printf 'label: gpt\\nsize=40MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="APP"\\ntype=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="sb-store"\\n' | sfdisk --quiet '${sdImg}'`]);
    const sdDisk = await attachLoop(sdImg, { partscan: true });
    undo.push(() => detachLoop(sdDisk));
    for (const n of [1, 2]) await waitBlock(partitionDevice(sdDisk, n));
    const [cmd, ...args] = mkfsCommand('vfat', partitionDevice(sdDisk, 1), 'sb-boot');
    await run(cmd!, args);
    const files = path.join(tmp, 'boot-files');
    await fs.mkdir(path.join(files, 'boot/extlinux'), { recursive: true });
    await fs.mkdir(path.join(files, 'EFI/BOOT'), { recursive: true });
    const want: Record<string, string> = { vmlinuz: 'the kernel', 'initrd.img': 'the initrd', 'boot/extlinux/extlinux.conf': 'DEFAULT stackboot\n', 'EFI/BOOT/BOOTAA64.EFI': 'the launcher' };
    for (const [f, t] of Object.entries(want)) await fs.writeFile(path.join(files, f), t);
    await run('mcopy', ['-s', '-i', partitionDevice(sdDisk, 1), ...['vmlinuz', 'initrd.img', 'boot', 'EFI'].map((f) => path.join(files, f)), '::/'], { env: MTOOLS });
    await fs.writeFile(bootedFile, (await fs.readFile(bootedFile, 'utf8')).replace('store_dev=/dev/mmcblk0p2', `store_dev=${partitionDevice(sdDisk, 2)}`));

    const p = await plan(bootedFile, disk);
    expect(p.bootFrom).toEqual({ dev: partitionDevice(sdDisk, 1) });
    expect(p.steps.at(-1)!.what).toBe(`copy the boot partition ${partitionDevice(sdDisk, 1)} (kernel, initrd, boot/extlinux/, EFI/) to ${partitionDevice(disk, 1)}`);
    await migrate(p, { tmpDir: tmp });
    const back = path.join(tmp, 'boot-back');
    await fs.mkdir(back);
    await run('mcopy', ['-s', '-n', '-i', partitionDevice(disk, 1), '::/*', back], { env: MTOOLS });
    for (const [f, t] of Object.entries(want)) expect(await fs.readFile(path.join(back, f), 'utf8'), f).toBe(t);
    // the NVMe's boot partition, made and filled here, is clean to dosfstools' checker
    const fat = await run('fsck.fat', ['-n', partitionDevice(disk, 1)], { reject: false });
    expect(fat.exitCode, fat.stdout + fat.stderr).toBe(0);

    // a node whose only boot partition is on the disk to be wiped: nothing to copy, said so
    await fs.writeFile(bootedFile, (await fs.readFile(bootedFile, 'utf8')).replace(`store_dev=${partitionDevice(sdDisk, 2)}`, 'store_dev=/dev/mmcblk0p2'));
    await detachLoop(sdDisk);
    const again = await planMigrate({ to: disk, bootedFile, bootMiB: 40, dataMiB: 8, force: true });
    expect('none' in again.bootFrom && again.bootFrom.none).toMatch(new RegExp(`only boot partition found, ${partitionDevice(disk, 1)}, is on ${disk}|no vfat partition labelled SB-BOOT|partitions are labelled SB-BOOT`));
    expect(again.steps.at(-1)!.what).toMatch(/^leave .* empty \(.*\): the NVMe then boots only through the SD card's boot partition$/);
  });

  it('a boot-file copy that fails (the files do not fit) is reported, and the store is migrated all the same', async () => {
    const { bootedFile, disk } = await setup('bootfail');
    const files = path.join(tmp, 'too-big');
    await fs.mkdir(files, { recursive: true });
    const fh = await fs.open(path.join(files, 'vmlinuz'), 'w');
    await fh.truncate(64 << 20);
    await fh.close();
    const p = await planMigrate({ to: disk, bootedFile, bootMiB: 40, dataMiB: 8, tries: 3, force: true, bootFilesDir: files });
    expect(p.bootFrom).toEqual({ dir: files });
    const r = await migrate(p, { tmpDir: tmp });
    expect(r.bootCopyError).toMatch(/mcopy failed/);
    await onNewStore(disk, 'bootfail', async (dir) => {
      expect(await fs.readFile(path.join(dir, 'state'), 'utf8')).toBe(`stackboot-state 1\ncurrent -\na pending ${v1.id} 3\n`);
    });
  });

  it('a layer that does not verify stops the migration: no file under its name, no temp file, the SD untouched', async () => {
    const { sd, bootedFile, disk } = await setup('bad');
    const app = v1.manifest.layers[1];
    // same size, other bytes: a rotten SD block
    const f = sd.layerPath(app.digest);
    const bytes = await fs.readFile(f);
    bytes[100] ^= 0xff;
    await fs.rm(f);
    await fs.writeFile(f, bytes);
    const before = await files(sd.dir);
    const p = await plan(bootedFile, disk);
    await expect(migrate(p, { tmpDir: tmp })).rejects.toMatchObject({ code: 'VERIFY', message: expect.stringMatching(/layer app does not match the signed manifest \(sha256 /) });
    expect(await files(sd.dir)).toEqual(before);
    await onNewStore(disk, 'bad', async (dir) => {
      const names = await fs.readdir(path.join(dir, 'layers'));
      expect(names).toEqual([`${v1.manifest.layers[0].digest}.sqfs`]);
      expect(parseState(await fs.readFile(path.join(dir, 'state'), 'utf8'))).toEqual({ current: null, slots: {} });
    });
  });
});
