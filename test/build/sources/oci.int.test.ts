/**
 * OCI images written by umoci (and copied by skopeo into an oci-archive and a
 * docker-archive): several layers with whiteouts, an opaque folder and a folder replaced
 * by a file (as `umoci repack` writes it: `usr` a file, whiteouts under it), a file put
 * in a lower folder of mode 0750 and owner 1000:1001 by a layer that does not hold the
 * folder (umoci writes `srv/data/b` alone: the folder keeps the lower mode). The built
 * stack, its layers mounted as an overlay by the real kernel, equals `umoci unpack` of the
 * same image entry by entry. A layout with several images (tags) needs a choice.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run } from '../../../src/sys/exec.js';
import { mountOverlay, mountSquashfs, umountAll } from '../../../src/sys/mount.js';
import type { BuildResult } from '../../../src/build/stack.js';
import { tmpdir } from './tarfixture.js';
import { buildLayers, differences, pictureTree, type EntryPicture } from './treesnap.js';

let work: string;
let layout: string;
const mounted: string[] = [];
const unpacked = new Map<string, Map<string, EntryPicture>>();

async function sh(script: string, cwd: string): Promise<void> {
  await run('sh', ['-euc', script], { cwd });
}

/** The merged view of a built stack: its layers as overlay lowers, the top one first. */
async function merged(r: BuildResult, where: string): Promise<string> {
  const lowers: string[] = [];
  for (const [i, l] of r.layers.entries()) {
    const d = path.join(where, `l${i}`);
    await mountSquashfs(l.file, d);
    mounted.push(d);
    lowers.push(d);
  }
  const m = path.join(where, 'merged');
  await fs.mkdir(m, { recursive: true });
  await mountOverlay(m, lowers.reverse());
  mounted.push(m);
  return m;
}

beforeAll(async () => {
  work = await tmpdir('sb-oci-conf-');
  layout = path.join(work, 'L');
  // image "base": three layers; "v1" a second tag of it; "other" a second image
  await sh(
    `umoci init --layout L
umoci new --image L:base
umoci unpack --image L:base B >/dev/null
R=B/rootfs
mkdir -p $R/usr/bin $R/usr/lib/x $R/etc $R/var/opq $R/opt/app
echo a > $R/usr/bin/a; echo y > $R/usr/lib/x/y
echo k > $R/etc/keep; echo g > $R/etc/gone
echo 1 > $R/var/opq/old1; echo 2 > $R/var/opq/old2
echo tool > $R/opt/app/tool; chmod 4755 $R/opt/app/tool; chown 1000:1001 $R/opt/app/tool
ln $R/opt/app/tool $R/opt/app/tool.hard
ln -s app/tool $R/opt/link
setfattr -n user.oci -v layered $R/etc/keep
mkdir -p $R/srv/data; chmod 0750 $R/srv; chown 1000:1001 $R/srv; echo a > $R/srv/data/a
umoci repack --refresh-bundle --image L:base B
echo b > $R/srv/data/b
rm -rf $R/usr; echo 'now a file' > $R/usr
rm $R/etc/gone
rm -rf $R/var/opq; mkdir $R/var/opq; echo n > $R/var/opq/new
umoci repack --image L:base B
mkdir -p L3/var/opq L3/etc
touch L3/var/opq/.wh..wh..opq L3/etc/.wh.keep
echo only > L3/var/opq/only
tar --numeric-owner -C L3 -cf l3.tar .
umoci raw add-layer --image L:base l3.tar
umoci tag --image L:base v1
umoci new --image L:other
umoci unpack --image L:other O >/dev/null
echo other > O/rootfs/other
umoci repack --image L:other O
umoci unpack --image L:base UB >/dev/null
umoci unpack --image L:other UO >/dev/null
skopeo --insecure-policy copy -q oci:L:base oci-archive:base.oci.tar
skopeo --insecure-policy copy -q oci:L:base docker-archive:base.docker.tar:stackboot/base:1
`,
    work,
  );
  unpacked.set('base', await pictureTree(path.join(work, 'UB/rootfs')));
  unpacked.set('other', await pictureTree(path.join(work, 'UO/rootfs')));
});

afterAll(async () => {
  await umountAll(mounted);
  if (work) await fs.rm(work, { recursive: true, force: true });
});

describe('OCI images from umoci and skopeo: the merged stack equals umoci unpack', () => {
  it('the image holds what the test is about (umoci applied the folder replaced by a file)', async () => {
    const want = unpacked.get('base')!;
    expect(want.get('usr')).toMatchObject({ type: 'file' });
    expect([...want.keys()].filter((k) => k.startsWith('var/opq/'))).toEqual(['var/opq/only']);
    expect(want.has('etc/gone')).toBe(false);
    expect(want.has('etc/keep')).toBe(false);
    expect(want.get('opt/app/tool.hard')?.linkedTo).toBe('opt/app/tool');
    expect(want.get('srv')).toMatchObject({ mode: '750', owner: '1000:1001' });
    expect(want.has('srv/data/b')).toBe(true);
  });

  it.each([
    ['the OCI layout, by tag', () => ({ type: 'oci', path: layout, ref: 'base' })],
    ['the OCI layout, by the second tag of the same image', () => ({ type: 'oci', path: layout, ref: 'v1' })],
    ['the oci-archive skopeo wrote', () => ({ type: 'oci', path: path.join(work, 'base.oci.tar') })],
    ['the docker-archive skopeo wrote', () => ({ type: 'oci', path: path.join(work, 'base.docker.tar') })],
  ])('%s', async (_n, source) => {
    const d = await tmpdir('sb-oci-case-');
    try {
      const r = await buildLayers(d, [{ name: 'img', source: source() }]);
      expect(r.layers.map((l) => l.name)).toEqual(['img-1', 'img-2', 'img-3']);
      const m = await merged(r, path.join(d, 'mnt'));
      expect(differences(unpacked.get('base')!, await pictureTree(m))).toEqual([]);
    } finally {
      await umountAll(mounted.splice(0));
      await fs.rm(d, { recursive: true, force: true });
    }
  });
});

describe('OCI layouts with several images', () => {
  it('without a ref: refused, listing the tags and digests', async () => {
    const d = await tmpdir('sb-oci-tags-');
    const index = JSON.parse(await fs.readFile(path.join(layout, 'index.json'), 'utf8'));
    const digestOf = (tag: string) => index.manifests.find((m: any) => m.annotations['org.opencontainers.image.ref.name'] === tag).digest as string;
    await expect(buildLayers(d, [{ name: 'img', source: { type: 'oci', path: layout } }])).rejects.toMatchObject({
      code: 'SOURCE',
      message: expect.stringContaining(`the layout holds 2 images: base (${digestOf('base')}), v1 (${digestOf('base')}), other (${digestOf('other')}); choose one with "ref"`),
    });
    await expect(buildLayers(d, [{ name: 'img', source: { type: 'oci', path: layout, ref: 'nope' } }])).rejects.toThrow(/no image "nope" in the layout \(it has base \(sha256:/);
    await fs.rm(d, { recursive: true, force: true });
  });

  it.each([['other'], ['digest']])('each image can be chosen: %s', async (how) => {
    const d = await tmpdir('sb-oci-tags-');
    try {
      const index = JSON.parse(await fs.readFile(path.join(layout, 'index.json'), 'utf8'));
      const ref = how === 'digest' ? index.manifests.find((m: any) => m.annotations['org.opencontainers.image.ref.name'] === 'other').digest : 'other';
      const r = await buildLayers(d, [{ name: 'img', source: { type: 'oci', path: layout, ref } }]);
      const m = await merged(r, path.join(d, 'mnt'));
      expect(differences(unpacked.get('other')!, await pictureTree(m))).toEqual([]);
    } finally {
      await umountAll(mounted.splice(0));
      await fs.rm(d, { recursive: true, force: true });
    }
  });
});
