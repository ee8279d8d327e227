/**
 * SD → NVMe migration on a running node (Debian-based nodes with Node.js; busybox nodes
 * use `stackboot-node migrate`, the same steps in POSIX sh).
 *
 * Plan, then steps. The target gets the nvme layout (APP: vfat SB-BOOT, sb-store ext4, sb-data
 * ext4), NEW partition and filesystem UUIDs (sfdisk and mkfs pick random ones) and a NEW
 * store id: never a clone of the SD's, so the boot hook can tell the two stores apart.
 * Only the layers of the booted store's good stack are copied, each checked by sha256,
 * then that stack goes into slot a as `pending` with tries. The SD store is not touched:
 * it stays the rescue store, and the boot hook (NVMe first in STORES) falls back to it
 * when the NVMe stack fails its tries or the NVMe is broken or gone.
 */
import { createReadStream, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { StackbootError, run, mountDevice, umount, type ProgressSink } from '../sys/index.js';
import { deviceInfo, deviceProblems, gptScript, makeFilesystem, mkfsCommand, partitionCommand, partitionDevice, waitBlock, writePartitionTable, MiB, BOOT_LABEL, BOOT_PART_NAME, vfatLabel, diskOf } from '../media/index.js';
import { newStoreId, Store, DATA_LABEL, STORE_LABEL, type SlotName } from '../format/index.js';
import { parseBooted } from './context.js';
import { findBootPartition } from './boot-update.js';

export interface MigrateOptions {
  /** the NVMe (whole disk) */
  to: string;
  /** /run/stackboot/booted (default) */
  bootedFile?: string;
  tries?: number;
  bootMiB?: number;
  /** data partition MiB (default a quarter of the disk) */
  dataMiB?: number;
  /**
   * copy these files (kernel, initrd, boot/extlinux/, EFI/) into the new boot partition;
   * default: those of the boot partition the node booted from (boot-update's
   * findBootPartition), so that the NVMe boots without the SD card
   */
  bootFilesDir?: string;
  force?: boolean;
  progress?: ProgressSink;
  /** test seams */
  procRoot?: string;
  sysRoot?: string;
  devDir?: string;
  tmpDir?: string;
}

export interface MigrateStep {
  what: string;
  cmd?: string[];
}

export interface MigratePlan {
  to: string;
  diskBytes: number;
  fromStore: { dev: string; id: string; mnt: string };
  slot: SlotName;
  stack: string;
  layers: { digest: string; size: number; name: string }[];
  layersBytes: number;
  newStoreId: string;
  tries: number;
  parts: { name: string; /** the filesystem label, when not the name */ label?: string; dev: string; sizeMiB: number | null; fs: 'vfat' | 'ext4' }[];
  /** where the new boot partition's files come from: a folder, the booted boot partition, or nowhere (why) */
  bootFrom: { dir: string } | { dev: string } | { none: string };
  steps: MigrateStep[];
}

export async function planMigrate(o: MigrateOptions): Promise<MigratePlan> {
  const bootedFile = o.bootedFile ?? '/run/stackboot/booted';
  const bt = await fs.readFile(bootedFile, 'utf8').catch((e) => {
    throw new StackbootError('STORE', `not booted by stackboot (no ${bootedFile})`, { cause: e });
  });
  const b = parseBooted(bt);
  const store = await Store.open(b.store_mnt);
  const st = await store.readState();
  const slot = st.current;
  if (!slot || st.slots[slot]?.status !== 'good') throw new StackbootError('STATE', `the booted store has no good stack (current=${slot ?? '-'}); mark one good first`);
  const sm = await store.slotManifest(slot);
  if (!sm || sm.id !== st.slots[slot]!.stack) throw new StackbootError('STATE', `slot ${slot}'s manifest does not match its state`);
  const info = await deviceInfo(o.to, o.sysRoot);
  if (b.store_dev && (b.store_dev === o.to || b.store_dev.startsWith(o.to))) throw new StackbootError('DEVICE', `${o.to} holds the booted store (${b.store_dev})`);
  const layersBytes = sm.manifest.layers.reduce((n, l) => n + l.size, 0);
  const problems = await deviceProblems(info, 0, { procRoot: o.procRoot });
  if (problems.length && !o.force) throw new StackbootError('DEVICE', `refusing to migrate to ${o.to}: ${problems.join('; ')} (use --force to override)`);
  const diskMiB = Math.floor(info.size / MiB);
  const bootMiB = o.bootMiB ?? 256;
  const dataMiB = o.dataMiB ?? Math.floor(diskMiB / 4);
  const storeMiB = diskMiB - bootMiB - dataMiB - 2;
  if (storeMiB * MiB < layersBytes * 2) throw new StackbootError('NO_SPACE', `${o.to} (${diskMiB} MiB) is too small: the store needs ${Math.ceil((layersBytes * 2) / MiB)} MiB besides ${bootMiB} MiB boot and ${dataMiB} MiB data`);
  const p = (n: number): string => partitionDevice(o.to, n);
  const sfdisk = gptScript({ parts: [{ size: `${bootMiB}MiB`, type: 'esp', name: BOOT_PART_NAME }, { size: `${storeMiB}MiB`, type: 'linux', name: STORE_LABEL }, { type: 'linux', name: DATA_LABEL }] }).trimEnd();
  const tries = o.tries ?? 3;
  const nid = newStoreId();
  const steps: MigrateStep[] = [
    { what: `partition ${o.to} (GPT, new random UUIDs):\n${sfdisk}`, cmd: partitionCommand(o.to, 'device') },
    { what: `format ${p(1)} vfat (${vfatLabel(BOOT_LABEL)})`, cmd: mkfsCommand('vfat', p(1), BOOT_LABEL) },
    { what: `format ${p(2)} ext4 (${STORE_LABEL}, new UUID)`, cmd: mkfsCommand('ext4', p(2), STORE_LABEL) },
    { what: `format ${p(3)} ext4 (${DATA_LABEL}, new UUID)`, cmd: mkfsCommand('ext4', p(3), DATA_LABEL) },
    { what: `create store ${nid} on ${p(2)}` },
    ...sm.manifest.layers.map((l) => ({ what: `copy and verify layer ${l.name} (${l.digest.slice(0, 12)}, ${l.size} bytes)` })),
    { what: `install stack ${sm.id.slice(0, 12)} in slot a as pending with ${tries} tries` },
  ];
  let bootFrom: MigratePlan['bootFrom'] = o.bootFilesDir
    ? { dir: o.bootFilesDir }
    : await findBootPartition({ bootedFile, sysRoot: o.sysRoot, devDir: o.devDir }).then(
        (dev) => ({ dev }),
        (e: unknown) => ({ none: (e as Error).message }),
      );
  // the one found is on the disk about to be wiped: nothing to copy from
  if ('dev' in bootFrom && (await diskOf(bootFrom.dev, o.sysRoot)) === info.name) bootFrom = { none: `the only boot partition found, ${bootFrom.dev}, is on ${o.to}` };
  if ('dir' in bootFrom) steps.push({ what: `copy boot files from ${bootFrom.dir} to ${p(1)}` });
  else if ('dev' in bootFrom) steps.push({ what: `copy the boot partition ${bootFrom.dev} (kernel, initrd, boot/extlinux/, EFI/) to ${p(1)}` });
  else steps.push({ what: `leave ${p(1)} empty (${bootFrom.none}): the NVMe then boots only through the SD card's boot partition` });
  return {
    to: o.to,
    diskBytes: info.size,
    fromStore: { dev: b.store_dev ?? '', id: await store.id(), mnt: b.store_mnt },
    slot,
    stack: sm.id,
    layers: sm.manifest.layers.map((l) => ({ digest: l.digest, size: l.size, name: l.name })),
    layersBytes,
    newStoreId: nid,
    tries,
    bootFrom,
    parts: [
      { name: BOOT_PART_NAME, label: BOOT_LABEL, dev: p(1), sizeMiB: bootMiB, fs: 'vfat' },
      { name: STORE_LABEL, dev: p(2), sizeMiB: storeMiB, fs: 'ext4' },
      { name: DATA_LABEL, dev: p(3), sizeMiB: dataMiB, fs: 'ext4' },
    ],
    steps,
  };
}

/** Carries out a plan (see planMigrate). */
export async function migrate(plan: MigratePlan, o: Pick<MigrateOptions, 'progress' | 'tmpDir'> = {}): Promise<{ storeId: string; copiedBytes: number; bootCopyError?: string }> {
  const say = (task: string): void => o.progress?.({ task, done: 0 });
  const [boot, storeP] = plan.parts;
  say('partition');
  await writePartitionTable(plan.to, plan.steps[0].what.split('\n').slice(1).join('\n') + '\n', 'device');
  for (const p of plan.parts) await waitBlock(p.dev);
  say('format');
  for (const p of plan.parts) await makeFilesystem(p.fs, p.dev, p.label ?? p.name);
  const mnt = await fs.mkdtemp(path.join(o.tmpDir ?? os.tmpdir(), 'sb-migrate-'));
  let copied = 0;
  try {
    await mountDevice(storeP.dev, mnt);
    const store = await Store.create(mnt, plan.newStoreId);
    const src = new Store(plan.fromStore.mnt);
    for (const l of plan.layers) {
      say(`layer ${l.name}`);
      await store.putLayer(l, createReadStream(src.layerPath(l.digest), { highWaterMark: 1 << 20 }), { source: `store ${plan.fromStore.id} (${plan.fromStore.dev})`, what: 'layer file' });
      copied += l.size;
    }
    const sm = await src.slotManifest(plan.slot);
    if (!sm) throw new StackbootError('STORE', `slot ${plan.slot} of store ${plan.fromStore.id} has no manifest`);
    await store.writeSlot('a', sm.text, await src.slotSignature(plan.slot));
    await store.markPending('a', plan.stack, plan.tries);
    await store.appendEvent('install', { slot: 'a', stack: plan.stack, tries: plan.tries, reason: `migrated from store ${plan.fromStore.id} (${plan.fromStore.dev})` });
  } finally {
    await umount(mnt);
    await fs.rm(mnt, { recursive: true, force: true });
  }
  // the boot files last: the store is whole without them (the SD card's boot partition
  // boots it), so a failed copy is reported, not thrown
  let bootCopyError: string | undefined;
  if (!('none' in plan.bootFrom)) {
    say('boot files');
    await copyBootFiles(plan.bootFrom, boot.dev, o.tmpDir).catch((e: Error) => {
      bootCopyError = e.message;
    });
  }
  return { storeId: plan.newStoreId, copiedBytes: copied, ...(bootCopyError ? { bootCopyError } : {}) };
}

const MTOOLS_ENV = { MTOOLS_SKIP_CHECK: '1' };

/** The files of a folder, or of a vfat partition (read with mtools: no mount), into the new vfat partition `to`. */
async function copyBootFiles(from: { dir: string } | { dev: string }, to: string, tmpDir?: string): Promise<void> {
  let dir: string;
  let tmp: string | undefined;
  if ('dev' in from) {
    tmp = await fs.mkdtemp(path.join(tmpDir ?? os.tmpdir(), 'sb-migrate-boot-'));
    dir = tmp;
  } else dir = from.dir;
  try {
    if ('dev' in from) await run('mcopy', ['-s', '-p', '-n', '-i', from.dev, '::/*', dir], { env: MTOOLS_ENV });
    const entries = await fs.readdir(dir);
    if (entries.length) await run('mcopy', ['-s', '-p', '-i', to, ...entries.map((e) => path.join(dir, e)), '::/'], { env: MTOOLS_ENV });
  } finally {
    if (tmp) await fs.rm(tmp, { recursive: true, force: true });
  }
}
