/**
 * Disk images without root: each partition's filesystem is made in a file
 * (mkfs.ext4 -d, mkfs.vfat + mcopy), the GPT is written with sfdisk on the image file,
 * and the partitions are copied in at their offsets, skipping zero blocks so the image
 * stays sparse. UUIDs are derived from a seed, so the same inputs give the same image.
 * The mkfs and sfdisk command lines themselves are blockdev.ts's.
 */
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { isZero } from './bmap.js';
import { StackbootError, run, type ProgressSink, onInterrupt, writeDurableFrom } from '../sys/index.js';
import { gptScript, makeFilesystem, writePartitionTable, type GptType } from './blockdev.js';

export const MiB = 1024 * 1024;
const ALIGN = MiB;

export type PartContent =
  | { kind: 'ext4'; dir: string; label: string; uuid?: string }
  | { kind: 'vfat'; dir: string; label: string }
  | { kind: 'raw'; file: string }
  | { kind: 'empty' };

export interface PartSpec {
  /** GPT partition name */
  name: string;
  type: GptType;
  /** size in bytes (rounded up to MiB) */
  size: number;
  content: PartContent;
  /** partition UUID (default: derived from the seed and the name) */
  uuid?: string;
}

export interface DiskLayout {
  /** seed for every UUID: the stack id, usually */
  seed: string;
  parts: PartSpec[];
  /** SOURCE_DATE_EPOCH for filesystem timestamps */
  epoch: number;
}

export interface AssembledPart {
  name: string;
  index: number;
  start: number;
  size: number;
  uuid: string;
  fsUuid?: string;
  label?: string;
}

/** A UUID (v4 layout) derived from a seed, for reproducible images. */
export function seededUuid(seed: string, what: string): string {
  const h = createHash('sha256').update(`${seed}\0${what}`).digest();
  h[6] = (h[6] & 0x0f) | 0x40;
  h[8] = (h[8] & 0x3f) | 0x80;
  const x = h.subarray(0, 16).toString('hex');
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20, 32)}`;
}

function roundUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

/** Sets every mtime/atime in a tree to `epoch` (mkfs -d copies them). */
async function clampTimes(dir: string, epoch: number): Promise<void> {
  const t = new Date(epoch * 1000);
  const walk = async (d: string): Promise<void> => {
    for (const e of await fs.readdir(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) await walk(p);
      if (!e.isSymbolicLink()) await fs.utimes(p, t, t);
      else await fs.lutimes(p, t, t).catch(() => {});
    }
  };
  await walk(dir);
  await fs.utimes(dir, t, t);
}

/** Size in bytes of a tree (for sizing a filesystem). */
export async function treeBytes(dir: string): Promise<number> {
  let n = 0;
  const walk = async (d: string): Promise<void> => {
    for (const e of await fs.readdir(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) {
        n += 4096;
        await walk(p);
      } else if (e.isFile()) n += roundUp((await fs.stat(p)).size, 4096);
      else n += 4096;
    }
  };
  await walk(dir);
  return n;
}

export async function makeExt4(file: string, size: number, c: { dir: string; label: string; uuid: string; epoch: number }): Promise<void> {
  await clampTimes(c.dir, c.epoch);
  await fs.rm(file, { force: true });
  await makeFilesystem('ext4', file, c.label, {
    options: ['-t', 'ext4', '-b', '4096', '-U', c.uuid, '-E', `root_owner=0:0,hash_seed=${c.uuid},lazy_itable_init=0,nodiscard`, '-d', c.dir],
    sizeBytes: size,
    env: { E2FSPROGS_FAKE_TIME: String(c.epoch || 1) },
  });
  // mkfs -d copies each file's ctime, which no one can set on the host: set every inode's
  // times to the epoch with debugfs, so the same tree gives the same bytes
  await fixExt4Times(file, c.dir, c.epoch);
}

async function fixExt4Times(file: string, dir: string, epoch: number): Promise<void> {
  const paths: string[] = ['/'];
  const walk = async (rel: string): Promise<void> => {
    for (const e of await fs.readdir(path.join(dir, rel), { withFileTypes: true })) {
      const r = `${rel}/${e.name}`;
      paths.push(r);
      if (e.isDirectory()) await walk(r);
    }
  };
  await walk('');
  const q = (p: string) => `"${p.replace(/(["\\])/g, '\\$1')}"`;
  const script = paths.flatMap((p) => ['ctime', 'atime', 'mtime'].map((f) => `sif ${q(p)} ${f} ${epoch}`)).join('\n') + '\n';
  const scriptFile = `${file}.debugfs`;
  await fs.writeFile(scriptFile, script);
  try {
    await run('debugfs', ['-w', '-f', scriptFile, file]);
  } finally {
    await fs.rm(scriptFile, { force: true });
  }
}

export async function makeVfat(file: string, size: number, c: { dir: string; label: string; volid: string; epoch: number }): Promise<void> {
  await clampTimes(c.dir, c.epoch);
  await fs.rm(file, { force: true });
  // --invariant: no time-based values (the volume label entry's time); mcopy -m keeps the
  // clamped times of the files and folders copied in
  await makeFilesystem('vfat', file, c.label, { options: ['--invariant', '-C', '-i', c.volid], sizeBytes: size, env: { SOURCE_DATE_EPOCH: String(c.epoch) } });
  const entries = await fs.readdir(c.dir);
  if (entries.length) {
    await run('mcopy', ['-s', '-p', '-m', '-i', file, ...entries.map((e) => path.join(c.dir, e)), '::/'], { env: { SOURCE_DATE_EPOCH: String(c.epoch), MTOOLS_SKIP_CHECK: '1' } });
  }
}

/** Copies `src` into `dst` at `offset`, writing only non-zero blocks (keeps dst sparse). */
export async function copySparse(src: string, dst: string, offset: number, onBytes?: (n: number) => void): Promise<number> {
  const inp = await fs.open(src, 'r');
  const out = await fs.open(dst, 'r+');
  const buf = Buffer.alloc(1 << 20);
  let pos = 0;
  let written = 0;
  try {
    for (;;) {
      const { bytesRead } = await inp.read(buf, 0, buf.length, pos);
      if (bytesRead === 0) break;
      // write 64 KiB pieces that hold data
      for (let o = 0; o < bytesRead; o += 65536) {
        const end = Math.min(o + 65536, bytesRead);
        const piece = buf.subarray(o, end);
        if (!isZero(piece)) {
          await out.write(piece, 0, piece.length, offset + pos + o);
          written += piece.length;
        }
      }
      pos += bytesRead;
      onBytes?.(pos);
    }
  } finally {
    await inp.close();
    await out.close();
  }
  return written;
}

/**
 * Writes a GPT disk image at `out` with the given partitions.
 * Returns where each partition landed.
 */
export async function assembleDisk(out: string, layout: DiskLayout, progress?: ProgressSink): Promise<AssembledPart[]> {
  if (layout.parts.length === 0) throw new StackbootError('USAGE', 'a disk needs at least one partition');
  const work = await fs.mkdtemp(path.join(os.tmpdir(), 'sb-disk-'));
  const off = onInterrupt(() => fs.rm(work, { recursive: true, force: true }));
  try {
    let start = ALIGN;
    const placed: (AssembledPart & { spec: PartSpec; file?: string })[] = [];
    for (let i = 0; i < layout.parts.length; i++) {
      const p = layout.parts[i];
      const size = roundUp(p.size, ALIGN);
      const uuid = (p.uuid ?? seededUuid(layout.seed, `part:${p.name}`)).toUpperCase();
      const entry: AssembledPart & { spec: PartSpec; file?: string } = { name: p.name, index: i + 1, start, size, uuid, spec: p };
      const c = p.content;
      if (c.kind === 'ext4') {
        entry.fsUuid = c.uuid ?? seededUuid(layout.seed, `fs:${p.name}`);
        entry.label = c.label;
        entry.file = path.join(work, `p${i + 1}.img`);
        progress?.({ task: `mkfs.ext4 ${p.name}`, done: 0 });
        await makeExt4(entry.file, size, { dir: c.dir, label: c.label, uuid: entry.fsUuid, epoch: layout.epoch });
      } else if (c.kind === 'vfat') {
        entry.label = c.label;
        entry.file = path.join(work, `p${i + 1}.img`);
        const volid = seededUuid(layout.seed, `vfat:${p.name}`).replace(/-/g, '').slice(0, 8);
        entry.fsUuid = `${volid.slice(0, 4)}-${volid.slice(4)}`.toUpperCase();
        await makeVfat(entry.file, size, { dir: c.dir, label: c.label, volid, epoch: layout.epoch });
      } else if (c.kind === 'raw') {
        const st = await fs.stat(c.file);
        if (st.size > size) throw new StackbootError('USAGE', `partition ${p.name}: ${c.file} (${st.size} bytes) does not fit in ${size} bytes`);
        entry.file = c.file;
      }
      placed.push(entry);
      start += size;
    }
    const total = start + ALIGN; // room for the backup GPT
    // the image is assembled in a temp file beside `out` and renamed in place when whole
    await writeDurableFrom(out, async (tmpOut) => {
      const fh = await fs.open(tmpOut, 'wx');
      await fh.truncate(total);
      await fh.close();
      const script = gptScript({
        labelId: seededUuid(layout.seed, 'disk').toUpperCase(),
        unit: 'sectors',
        firstLba: 2048,
        parts: placed.map((p) => ({ start: p.start / 512, size: p.size / 512, type: p.spec.type, uuid: p.uuid, name: p.name })),
      });
      await writePartitionTable(tmpOut, script, 'image');
      for (const p of placed) {
        if (!p.file) continue;
        await copySparse(p.file, tmpOut, p.start, (n) => progress?.({ task: `write ${p.name}`, done: n, total: p.size, unit: 'bytes' }));
      }
    });
    return placed.map(({ spec: _s, file: _f, ...rest }) => rest);
  } finally {
    await fs.rm(work, { recursive: true, force: true });
    off();
  }
}
