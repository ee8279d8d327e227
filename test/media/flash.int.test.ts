/**
 * stackboot flash on real loop devices and files (root): only mapped ranges are written,
 * the read-back catches corruption, and the guards refuse a mounted or too small device.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, open, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { assembleDisk, MiB } from '../../src/media/disk.js';
import { writeBmapFor, mappedBytes, type Bmap } from '../../src/media/bmap.js';
import { flash } from '../../src/media/flash.js';
import { run } from '../../src/sys/exec.js';
import { attachLoop, detachLoop, mountDevice, umount } from '../../src/sys/mount.js';
import { fakeBuild, layerBytes } from '../support/update-fixtures.js';

let tmp: string;
let img: string;
let bmap: Bmap;
const loops: string[] = [];
const mounts: string[] = [];

async function loopOf(file: string): Promise<string> {
  const d = await attachLoop(file, { partscan: true });
  loops.push(d);
  return d;
}

/** sectors written to a block device so far (/sys/block/<dev>/stat field 7) */
async function sectorsWritten(dev: string): Promise<number> {
  const s = (await readFile(`/sys/block/${path.basename(dev)}/stat`, 'utf8')).trim().split(/\s+/);
  return Number(s[6]);
}

async function junkFile(file: string, size: number): Promise<void> {
  const fh = await open(file, 'w');
  const chunk = randomBytes(MiB);
  for (let o = 0; o < size; o += MiB) await fh.write(chunk, 0, MiB, o);
  await fh.close();
}

beforeAll(async () => {
  tmp = await mkdtemp(path.join(tmpdir(), 'sb-flash-int-'));
  const dir = path.join(tmp, 'content');
  await mkdir(path.join(dir, 'sub'), { recursive: true });
  await writeFile(path.join(dir, 'random.bin'), randomBytes(3 * MiB));
  await writeFile(path.join(dir, 'sub', 'hello.txt'), 'hello\n');
  img = path.join(tmp, 'disk.img');
  await assembleDisk(img, { seed: 'flash-test', epoch: 0, parts: [
    { name: 'one', type: 'linux', size: 32 * MiB, content: { kind: 'ext4', dir, label: 'sb-one' } },
    { name: 'two', type: 'linux', size: 16 * MiB, content: { kind: 'empty' } },
  ] });
  bmap = await writeBmapFor(img);
});

afterAll(async () => {
  for (const m of mounts.reverse()) await umount(m);
  for (const l of loops) await detachLoop(l);
  await rm(tmp, { recursive: true, force: true });
});

describe('flash to a file', () => {
  it('writes only the mapped ranges, leaves the holes sparse, and the result equals the image', async () => {
    const out = path.join(tmp, 'out.img');
    await writeFile(out, Buffer.alloc(4096, 0x55)); // an old file is replaced, not merged
    const r = await flash({ image: img, target: out });
    const size = (await stat(img)).size;
    expect(r.kind).toBe('file');
    expect(r.verified).toBe(true);
    expect(r.bytesWritten).toBe(mappedBytes(bmap));
    expect(r.bytesWritten).toBeLessThan(size / 4);
    const st = await stat(out);
    expect(st.size).toBe(size);
    expect(st.blocks * 512).toBeLessThanOrEqual(r.mappedBytes + 64 * 1024);
    await run('cmp', [img, out]);
  });

  it('catches a corrupted read-back', async () => {
    const out = path.join(tmp, 'out2.img');
    const at = bmap.ranges[Math.floor(bmap.ranges.length / 2)].first * bmap.blockSize + 100;
    const p = flash({
      image: img,
      target: out,
      hooks: {
        beforeVerify: async (t) => {
          const fh = await open(t, 'r+');
          const b = Buffer.alloc(1);
          await fh.read(b, 0, 1, at);
          b[0] ^= 0xff;
          await fh.write(b, 0, 1, at);
          await fh.sync();
          await fh.close();
        },
      },
    });
    await expect(p).rejects.toMatchObject({ code: 'VERIFY', message: expect.stringMatching(/does not match the image in blocks/) });
  });
});

describe('flash to a loop device', () => {
  it('writes no more than the mapped bytes (holes skipped) onto a medium full of junk, and the filesystem is clean', async () => {
    const back = path.join(tmp, 'loop-ok.img');
    await junkFile(back, 64 * MiB);
    const dev = await loopOf(back);
    const before = await sectorsWritten(dev);
    const r = await flash({ image: img, target: dev });
    const after = await sectorsWritten(dev);
    expect(r.kind).toBe('block');
    expect(r.verified).toBe(true);
    expect((after - before) * 512).toBeLessThanOrEqual(r.mappedBytes + 64 * 1024);
    expect(r.mappedBytes).toBeLessThan((await stat(img)).size / 4);
    // the junk in the holes does not matter: the GPT and the ext4 partition check clean
    await run('partx', ['-u', dev], { reject: false });
    const pt = JSON.parse((await run('sfdisk', ['--json', dev])).stdout);
    expect(pt.partitiontable.partitions.map((p: { name: string }) => p.name)).toEqual(['one', 'two']);
    const part = `${dev}p1`;
    for (let i = 0; i < 50 && !(await stat(part).then(() => true, () => false)); i++) await new Promise((res) => setTimeout(res, 100));
    await run('e2fsck', ['-fn', part]);
    const m = path.join(tmp, 'm-ok');
    await mountDevice(part, m, ['ro']);
    mounts.push(m);
    expect(await readFile(path.join(m, 'sub', 'hello.txt'), 'utf8')).toBe('hello\n');
    await umount(m);
    mounts.pop();
  });

  it('refuses a mounted device with the reason, and --force still meets O_EXCL', async () => {
    const back = path.join(tmp, 'loop-mounted.img');
    const fh = await open(back, 'w');
    await fh.truncate(64 * MiB);
    await fh.close();
    const dev = await loopOf(back);
    await run('mkfs.ext4', ['-q', '-F', dev]);
    const m = path.join(tmp, 'm-busy');
    await mountDevice(dev, m);
    mounts.push(m);
    await expect(flash({ image: img, target: dev })).rejects.toMatchObject({ code: 'DEVICE', message: expect.stringMatching(/is mounted at .*m-busy/) });
    await expect(flash({ image: img, target: dev, force: true })).rejects.toMatchObject({ code: 'DEVICE', message: expect.stringMatching(/busy/) });
    await umount(m);
    mounts.pop();
  });

  it('refuses a device smaller than the image, and a partition', async () => {
    const back = path.join(tmp, 'loop-small.img');
    const fh = await open(back, 'w');
    await fh.truncate(16 * MiB);
    await fh.close();
    const dev = await loopOf(back);
    await expect(flash({ image: img, target: dev })).rejects.toMatchObject({ code: 'DEVICE', message: expect.stringMatching(/too small: 16777216 bytes, the image needs/) });
    // a build output: the target is refused before any image is assembled
    const build = await fakeBuild(path.join(tmp, 'build'), { version: '1', layers: [{ name: 'base', data: layerBytes(4096, 'b') }] });
    const events: unknown[] = [];
    await expect(flash({ image: build.dir, target: dev, progress: (e) => events.push(e) })).rejects.toMatchObject({ code: 'DEVICE', message: expect.stringMatching(/too small: 16777216 bytes, the image needs \d+/) });
    expect(events).toEqual([]);
    await expect(flash({ image: build.dir, target: tmp })).rejects.toMatchObject({ code: 'DEVICE', message: expect.stringMatching(/neither a block device nor a regular file/) });
  });
});
