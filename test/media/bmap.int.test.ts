/**
 * The block map against the real bmaptool (Debian's bmap-tools 3.6: the tool whose format
 * `node.img.bmap` is): bmaptool copies an image with the map stackboot wrote, checking the
 * map's own checksum and every range's sha256 (a flipped image byte and an edited map are
 * both refused, so it did check them); and `stackboot flash` takes a map bmaptool
 * created, with its comments and padding.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, open, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { assembleDisk, MiB } from '../../src/media/disk.js';
import { parseBmap, writeBmapFor, type Bmap } from '../../src/media/bmap.js';
import { flash } from '../../src/media/flash.js';
import { run } from '../../src/sys/exec.js';

let tmp: string;
let img: string;
let ours: Bmap;

beforeAll(async () => {
  tmp = await mkdtemp(path.join(tmpdir(), 'sb-bmap-int-'));
  const dir = path.join(tmp, 'content');
  await mkdir(dir, { recursive: true });
  await writeFile(path.join(dir, 'random.bin'), randomBytes(3 * MiB));
  img = path.join(tmp, 'disk.img');
  await assembleDisk(img, {
    seed: 'bmap-test',
    epoch: 0,
    parts: [
      { name: 'one', type: 'linux', size: 32 * MiB, content: { kind: 'ext4', dir, label: 'sb-one' } },
      { name: 'two', type: 'linux', size: 16 * MiB, content: { kind: 'empty' } },
    ],
  });
  ours = await writeBmapFor(img);
});

afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

/** bmaptool copy; its exit code and its messages */
async function bmaptoolCopy(bmap: string, image: string, out: string): Promise<{ code: number; text: string }> {
  await rm(out, { force: true });
  const r = await run('bmaptool', ['copy', '--bmap', bmap, image, out], { reject: false });
  return { code: r.exitCode ?? -1, text: `${r.stdout}\n${r.stderr}` };
}

describe('node.img.bmap and bmaptool', () => {
  it("bmaptool copies the image with stackboot's map, and refuses a flipped image byte and an edited map", async () => {
    const out = path.join(tmp, 'copy.img');
    const ok = await bmaptoolCopy(`${img}.bmap`, img, out);
    expect(ok.code, ok.text).toBe(0);
    expect(ok.text).toMatch(/block map format version 2\.0/);
    await run('cmp', [img, out]);
    // a byte flipped inside a mapped range: bmaptool computes that range's sha256 and
    // finds it differs from the one stackboot wrote
    const last = ours.ranges[ours.ranges.length - 2]!;
    const bad = path.join(tmp, 'bad.img');
    await run('cp', ['--sparse=always', img, bad]);
    const fh = await open(bad, 'r+');
    try {
      const at = last.first * ours.blockSize + 100;
      const b = Buffer.alloc(1);
      await fh.read(b, 0, 1, at);
      b[0] ^= 0xff;
      await fh.write(b, 0, 1, at);
    } finally {
      await fh.close();
    }
    const flipped = await bmaptoolCopy(`${img}.bmap`, bad, path.join(tmp, 'copy2.img'));
    expect(flipped.code).not.toBe(0);
    expect(flipped.text).toMatch(new RegExp(`checksum mismatch for blocks range ${last.first}-${last.last}`));
    // the map edited (one range one block longer): its BmapFileChecksum, computed as
    // bmaptool does, no longer matches
    const text = await readFile(`${img}.bmap`, 'utf8');
    const first = ours.ranges[0]!;
    const edited = path.join(tmp, 'edited.bmap');
    await writeFile(edited, text.replace(`> ${first.first}-${first.last} <`, `> ${first.first}-${first.last + 1} <`));
    const e = await bmaptoolCopy(edited, img, path.join(tmp, 'copy3.img'));
    expect(e.code).not.toBe(0);
    expect(e.text).toMatch(/checksum mismatch for bmap file/);
  });

  it('stackboot flash takes the map bmaptool create wrote (the same ranges as its own)', async () => {
    const theirs = path.join(tmp, 'theirs.bmap');
    await run('bmaptool', ['create', '-o', theirs, img]);
    const parsed = parseBmap(await readFile(theirs, 'utf8'));
    expect(parsed.imageSize).toBe((await stat(img)).size);
    expect(parsed.ranges.map((r) => [r.first, r.last])).toEqual(ours.ranges.map((r) => [r.first, r.last]));
    const out = path.join(tmp, 'flashed.img');
    const r = await flash({ image: img, target: out, bmapFile: theirs });
    expect(r.verified).toBe(true);
    await run('cmp', [img, out]);
  });
});
