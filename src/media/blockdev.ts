/**
 * Block devices and partition tables, in one place: probing a whole disk (sysfs: name,
 * size, partitions, holders; mounts from mountinfo) and why it must not be written,
 * partition device names, waiting for partition nodes, writing and reading GPTs with
 * sfdisk (on a device or an image file), and the mkfs command lines. Used by flash,
 * disk/image and the node's migrate.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { StackbootError, run } from '../sys/index.js';

// ---------------------------------------------------------------------------------------
// Probing

export interface DeviceInfo {
  /** kernel name, e.g. sdb, loop3, nvme0n1 */
  name: string;
  major: number;
  minor: number;
  size: number;
  /** partitions: name and major:minor */
  partitions: { name: string; major: number; minor: number }[];
  /** holders of the disk and of its partitions */
  holders: string[];
}

/** Facts about a whole-disk block device from sysfs. */
export async function deviceInfo(dev: string, sysRoot = '/sys'): Promise<DeviceInfo> {
  const st = await fs.stat(dev);
  if (!st.isBlockDevice()) throw new StackbootError('DEVICE', `${dev} is not a block device`);
  const major = Number(BigInt(st.rdev) >> 8n) & 0xfff;
  const minor = (st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00);
  const link = await fs.readlink(path.join(sysRoot, 'dev', 'block', `${major}:${minor}`)).catch(() => null);
  if (!link) throw new StackbootError('DEVICE', `${dev} (${major}:${minor}) is not in ${sysRoot}/dev/block`);
  const name = path.basename(link);
  const base = path.join(sysRoot, 'class', 'block', name);
  if (await fs.stat(path.join(base, 'partition')).then(() => true, () => false)) {
    throw new StackbootError('DEVICE', `${dev} is a partition (${name}); flash a whole disk`);
  }
  const size = Number((await fs.readFile(path.join(base, 'size'), 'utf8')).trim()) * 512;
  const partitions: DeviceInfo['partitions'] = [];
  const holders: string[] = [];
  const readHolders = async (dir: string): Promise<void> => {
    for (const h of await fs.readdir(path.join(dir, 'holders')).catch(() => [] as string[])) holders.push(h);
  };
  await readHolders(base);
  for (const e of await fs.readdir(base).catch(() => [] as string[])) {
    if (!e.startsWith(name)) continue;
    const pdir = path.join(base, e);
    const devt = await fs.readFile(path.join(pdir, 'dev'), 'utf8').catch(() => null);
    if (!devt) continue;
    const [ma, mi] = devt.trim().split(':').map(Number);
    partitions.push({ name: e, major: ma, minor: mi });
    await readHolders(pdir);
  }
  return { name, major, minor, size, partitions, holders };
}

/**
 * The volume label in a FAT boot sector (what `mkfs.vfat -n` writes; blkid reports the
 * same), or undefined when the sector is not FAT's. Read directly: a node's busybox has
 * no blkid (initramfs/sys.sh reads ext4's superblock the same way).
 */
export function fatLabel(sector: Buffer): string | undefined {
  if (sector.length < 512 || sector.readUInt16LE(510) !== 0xaa55) return undefined;
  const at = sector.toString('latin1', 0x52, 0x5a) === 'FAT32   ' ? 0x47 : /^FAT1[26] {3}$/.test(sector.toString('latin1', 0x36, 0x3e)) ? 0x2b : -1;
  if (at < 0) return undefined;
  const label = sector.toString('latin1', at, at + 11).trimEnd();
  return label === '' || label === 'NO NAME' ? undefined : label;
}

/** The partitions (kernel names, e.g. mmcblk0p1) whose FAT volume label is `label`. */
export async function partitionsWithFatLabel(label: string, o: { sysRoot?: string; devDir?: string } = {}): Promise<string[]> {
  const sys = path.join(o.sysRoot ?? '/sys', 'class', 'block');
  const out: string[] = [];
  for (const name of (await fs.readdir(sys).catch(() => [] as string[])).sort()) {
    if (!(await fs.stat(path.join(sys, name, 'partition')).then(() => true, () => false))) continue;
    const h = await fs.open(path.join(o.devDir ?? '/dev', name), 'r').catch(() => null);
    if (!h) continue;
    try {
      const b = Buffer.alloc(512);
      const { bytesRead } = await h.read(b, 0, 512, 0).catch(() => ({ bytesRead: 0 }));
      if (bytesRead === 512 && fatLabel(b)?.toUpperCase() === label.toUpperCase()) out.push(name);
    } finally {
      await h.close();
    }
  }
  return out;
}

/**
 * The name of GPT entry `n` (1-based) from a disk's first sectors (protective MBR, header,
 * entries), or undefined when there is no GPT: pure, for partitionName.
 */
export function gptEntryName(head: Buffer, n: number, sectorSize = 512): string | undefined {
  const h = sectorSize;
  if (head.length < h + 92 || head.toString('latin1', h, h + 8) !== 'EFI PART') return undefined;
  const entriesLba = Number(head.readBigUInt64LE(h + 72));
  const count = head.readUInt32LE(h + 80);
  const size = head.readUInt32LE(h + 84);
  if (n < 1 || n > count || size < 128) return undefined;
  const at = entriesLba * sectorSize + (n - 1) * size;
  if (at + 128 > head.length) return undefined;
  return head.toString('utf16le', at + 56, at + 128).replace(/\0.*$/s, '');
}

/**
 * A partition's GPT name (the kernel name, e.g. mmcblk0p1), or '' when it has none: sysfs
 * PARTNAME when the kernel read the table, else the table itself (partitions added with
 * partx carry no name in sysfs).
 */
export async function partitionName(name: string, o: { sysRoot?: string; devDir?: string } = {}): Promise<string> {
  const dir = path.join(o.sysRoot ?? '/sys', 'class', 'block', name);
  const t = await fs.readFile(path.join(dir, 'uevent'), 'utf8').catch(() => '');
  const named = /^PARTNAME=(.*)$/m.exec(t)?.[1];
  if (named !== undefined) return named;
  const n = Number(/^PARTN=(\d+)$/m.exec(t)?.[1] ?? 0);
  if (!n) return '';
  const disk = await diskOf(name, o.sysRoot);
  const sector = Number((await fs.readFile(path.join(o.sysRoot ?? '/sys', 'class', 'block', disk, 'queue', 'logical_block_size'), 'utf8').catch(() => '512')).trim()) || 512;
  const h = await fs.open(path.join(o.devDir ?? '/dev', disk), 'r').catch(() => null);
  if (!h) return '';
  try {
    // the header and the usual 128 entries of 128 bytes from LBA 2
    const b = Buffer.alloc(sector * 2 + 128 * 128);
    const { bytesRead } = await h.read(b, 0, b.length, 0);
    return gptEntryName(b.subarray(0, bytesRead), n, sector) ?? '';
  } finally {
    await h.close();
  }
}

/** The whole disk a partition device belongs to (its kernel name), or the device's own name when it is a disk. */
export async function diskOf(dev: string, sysRoot = '/sys'): Promise<string> {
  const name = path.basename(dev);
  const real = await fs.realpath(path.join(sysRoot, 'class', 'block', name)).catch(() => null);
  if (!real) return name;
  const isPart = await fs.stat(path.join(real, 'partition')).then(() => true, () => false);
  return isPart ? path.basename(path.dirname(real)) : name;
}

/** Mounts from mountinfo: device major:minor and mount point. */
export function parseMountinfo(text: string): { devt: string; mountPoint: string; source: string }[] {
  const out: { devt: string; mountPoint: string; source: string }[] = [];
  for (const l of text.split('\n')) {
    const f = l.split(' ');
    if (f.length < 10) continue;
    const sep = f.indexOf('-');
    out.push({ devt: f[2], mountPoint: f[4].replace(/\\040/g, ' '), source: sep > 0 ? f[sep + 2] : '' });
  }
  return out;
}

/** Why a device must not be written over (empty when it is safe): mounted, held, or smaller than `imageSize`. */
export async function deviceProblems(info: DeviceInfo, imageSize: number, o: { procRoot?: string } = {}): Promise<string[]> {
  const problems: string[] = [];
  const mounts = parseMountinfo(await fs.readFile(path.join(o.procRoot ?? '/proc', 'self', 'mountinfo'), 'utf8').catch(() => ''));
  const mine = new Map<string, string>([[`${info.major}:${info.minor}`, info.name], ...info.partitions.map((p) => [`${p.major}:${p.minor}`, p.name] as [string, string])]);
  for (const m of mounts) {
    const n = mine.get(m.devt);
    if (!n) continue;
    if (m.mountPoint === '/') problems.push(`${n} holds the running root filesystem`);
    else problems.push(`${n} is mounted at ${m.mountPoint}`);
  }
  if (info.holders.length) problems.push(`${info.name} is in use by ${info.holders.join(', ')} (holders: LVM, dm-crypt, RAID…)`);
  if (info.size < imageSize) problems.push(`${info.name} is too small: ${info.size} bytes, the image needs ${imageSize}`);
  return problems;
}

// ---------------------------------------------------------------------------------------
// Device nodes

/** Partition device name: nvme0n1 → nvme0n1p2, sdb → sdb2, loop3 → loop3p2. */
export function partitionDevice(disk: string, n: number): string {
  return /\d$/.test(disk) ? `${disk}p${n}` : `${disk}${n}`;
}

/** Waits (10 s at most) for a partition's device node after partitioning; after 1 s, asks the kernel (partx -u) to add it. */
export async function waitBlock(dev: string): Promise<void> {
  for (let i = 0; i < 100; i++) {
    if ((await fs.stat(dev).catch(() => null))?.isBlockDevice()) return;
    if (i === 10) await run('partx', ['-u', dev.replace(/p?\d+$/, '')], { reject: false });
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new StackbootError('DEVICE', `${dev} did not appear after partitioning`);
}

/** Drops a device's cached pages (`blockdev --flushbufs`), so that reads come from the medium. */
export async function flushBuffers(dev: string): Promise<void> {
  await run('blockdev', ['--flushbufs', dev], { reject: false });
}

// ---------------------------------------------------------------------------------------
// Partition tables

export const GPT_TYPES = {
  linux: '0FC63DAF-8483-4772-8E79-3D69D8477DE4',
  esp: 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B',
  msdata: 'EBD0A0A2-B9E5-4433-87C0-68B6B72699C7',
} as const;

export type GptType = keyof typeof GPT_TYPES;

/** One partition line of an sfdisk script; `size` a number of units or a string such as `256MiB`; no size: the rest of the disk. */
export interface GptEntry {
  start?: number;
  size?: number | string;
  type: GptType;
  uuid?: string;
  name: string;
}

/** An sfdisk script for a GPT (header lines only when given), ending in a newline. */
export function gptScript(t: { labelId?: string; unit?: 'sectors'; firstLba?: number; parts: readonly GptEntry[] }): string {
  const head = ['label: gpt'];
  if (t.labelId !== undefined) head.push(`label-id: ${t.labelId}`);
  if (t.unit !== undefined) head.push(`unit: ${t.unit}`);
  if (t.firstLba !== undefined) head.push(`first-lba: ${t.firstLba}`);
  const line = (p: GptEntry): string =>
    [p.start !== undefined && `start=${p.start}`, p.size !== undefined && `size=${p.size}`, `type=${GPT_TYPES[p.type]}`, p.uuid !== undefined && `uuid=${p.uuid}`, `name="${p.name}"`]
      .filter((f): f is string => typeof f === 'string')
      .join(', ');
  return [...head, ...t.parts.map(line), ''].join('\n');
}

/**
 * The sfdisk command that writes a partition table: on a `device`, wiping the old table's
 * signatures (the kernel re-reads it); on an `image` file, telling no kernel anything.
 */
export function partitionCommand(target: string, on: 'device' | 'image'): string[] {
  return on === 'device' ? ['sfdisk', '--quiet', '--wipe', 'always', target] : ['sfdisk', '--quiet', '--no-reread', '--no-tell-kernel', target];
}

/** Writes a partition table (an sfdisk script); on a device, then asks the kernel to re-read it. */
export async function writePartitionTable(target: string, script: string, on: 'device' | 'image'): Promise<void> {
  const [cmd, ...args] = partitionCommand(target, on);
  await run(cmd, args, { input: script });
  if (on === 'device') await run('blockdev', ['--rereadpt', target], { reject: false });
}

export interface PartitionInfo {
  index: number;
  name: string;
  /** byte offset */
  start: number;
  /** bytes */
  size: number;
  type: string;
  uuid: string;
}

/** Reads the partition table of an image file or a block device (sfdisk -J). */
export async function readPartitions(file: string): Promise<PartitionInfo[]> {
  const r = await run('sfdisk', ['-J', file]);
  let j: { partitiontable?: { sectorsize?: number; partitions?: { node: string; start: number; size: number; type: string; uuid?: string; name?: string }[] } };
  try {
    j = JSON.parse(r.stdout);
  } catch (e) {
    throw new StackbootError('TOOL', `sfdisk -J ${file}: unreadable output`, { cause: e });
  }
  const ss = j.partitiontable?.sectorsize ?? 512;
  return (j.partitiontable?.partitions ?? []).map((p, i) => ({
    index: i + 1,
    name: p.name ?? '',
    start: p.start * ss,
    size: p.size * ss,
    type: p.type,
    uuid: p.uuid ?? '',
  }));
}

/** The partition with a GPT name, or an error naming the ones there are. */
export async function findPartition(file: string, name: string): Promise<PartitionInfo> {
  const parts = await readPartitions(file);
  const p = parts.find((x) => x.name === name);
  if (!p) throw new StackbootError('STORE', `${file} has no partition named ${name} (has: ${parts.map((x) => x.name || `#${x.index}`).join(', ') || 'none'})`);
  return p;
}

// ---------------------------------------------------------------------------------------
// Filesystems

export type FsKind = 'ext4' | 'vfat';

/** A FAT volume label: upper case, 11 characters at most. */
export function vfatLabel(label: string): string {
  return label.toUpperCase().slice(0, 11);
}

/**
 * The mkfs command line for a new filesystem on a device or a file: vfat is FAT32, ext4
 * is quiet and forced; `options` go before the target, `sizeBytes` (a file to create or
 * fill) after it, in KiB.
 */
export function mkfsCommand(kind: FsKind, target: string, label: string, extra: { options?: readonly string[]; sizeBytes?: number } = {}): string[] {
  const head = kind === 'vfat' ? ['mkfs.vfat', '-F', '32', '-n', vfatLabel(label)] : ['mkfs.ext4', '-q', '-F', '-L', label];
  const kib = extra.sizeBytes === undefined ? [] : [`${Math.floor(extra.sizeBytes / 1024)}${kind === 'ext4' ? 'k' : ''}`];
  return [...head, ...(extra.options ?? []), target, ...kib];
}

/** Makes a filesystem (see mkfsCommand); `env` for the reproducible builds of disk.ts. */
export async function makeFilesystem(kind: FsKind, target: string, label: string, extra: { options?: readonly string[]; sizeBytes?: number; env?: Record<string, string> } = {}): Promise<void> {
  const [cmd, ...args] = mkfsCommand(kind, target, label, extra);
  await run(cmd, args, { env: extra.env });
}
