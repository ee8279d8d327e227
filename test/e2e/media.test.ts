/**
 * Boots the assembled node.img in QEMU: the kernel and initrd are taken out of its boot
 * partition with mtools, the whole image is the virtio disk. It reaches the demo stack;
 * an update (slot b written into the image's store from the host) and a fallback (a
 * broken stack that marks itself bad) leave the data partition's files in place.
 */
import { describe, it, expect, afterEach, beforeAll } from 'vitest';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { buildImage, type ImageResult } from '../../src/media/image.js';
import { makeBootConfig } from '../../src/boot/initramfs.js';
import { run } from '../../src/sys/exec.js';
import { markPending } from '../../src/format/state.js';
import { Store } from '../../src/format/store.js';
import { withPartition } from './media-util.js';
import { stackId } from '../../src/format/manifest.js';
import { bootOnce, useVmCleanup } from './qemu.js';
import { CACHE, demoStack, scratch, target } from './fixtures.js';

useVmCleanup(afterEach);

/** Installs a build output into `slot` of the store in the image, pending with tries. */
export async function installInto(img: string, storePart: { start: number; size: number }, mnt: string, buildDir: string, slot: 'a' | 'b', tries = 3): Promise<void> {
  await withPartition(img, storePart, mnt, async (m) => {
    const store = await Store.open(m);
    const text = await fs.readFile(path.join(buildDir, 'manifest'), 'utf8');
    const digests = [...text.matchAll(/^layer sha256:([0-9a-f]{64}) /gm)].map((x) => x[1]);
    for (const d of digests) {
      if (!(await fs.stat(store.layerPath(d)).then(() => true, () => false))) await fs.copyFile(path.join(buildDir, 'layers', `${d}.sqfs`), store.layerPath(d));
    }
    await fs.writeFile(path.join(store.slotDir(slot), 'manifest'), text);
    const st = markPending(await store.readState(), slot, stackId(text), tries);
    await store.writeState(st);
    await run('sync', []);
  });
}

describe('node.img in QEMU', () => {
  let work: string;
  let img: string;
  let r: ImageResult;
  let kernel: string;
  let initrd: string;
  beforeAll(async () => {
    work = await scratch('media');
    img = path.join(work, 'node.img');
    const demo = await demoStack('demo');
    r = await buildImage({
      buildDir: demo.outDir,
      out: img,
      layout: 'sd',
      cacheRoot: CACHE,
      bootConfig: makeBootConfig({ set: [['PERSIST', '/var/lib/demo'], ['DEVICE_SETTLE', '1']] }),
    });
    const boot = r.partitions[0];
    kernel = path.join(work, 'vmlinuz');
    initrd = path.join(work, 'initrd.img');
    const env = { MTOOLS_SKIP_CHECK: '1' };
    await run('mcopy', ['-n', '-i', `${img}@@${boot.start}`, '::/vmlinuz', kernel], { env });
    await run('mcopy', ['-n', '-i', `${img}@@${boot.start}`, '::/initrd.img', initrd], { env });
  }, 300_000);

  it('boots the demo stack, keeps the data partition across an update and a fallback', async () => {
    const t = await target('amd64');
    const disks = [{ file: img, bus: 'virtio' as const }];
    const boot = (append: string) => bootOnce({ target: t, kernel, initrd, disks, append, timeoutMs: 240_000, logFile: path.join(work, 'console.log') });
    const store = r.partitions[1];
    const data = r.partitions[2];

    // 1: the image as built
    let b = await boot('demo.write=/var/lib/demo/first');
    expect(b.output, 'boot 1').toMatch(/DEMO: running .*version 1\)/);
    expect(b.output).toMatch(/DEMO: booted slot=a/);
    expect(b.output).toMatch(/DEMO: wrote \/var\/lib\/demo\/first/);

    // 2: an update written into slot b from the host
    await installInto(img, store, path.join(work, 'mnt'), (await demoStack('demo-update')).outDir, 'b');
    b = await boot('demo.write=/var/lib/demo/second');
    expect(b.output, 'boot 2').toMatch(/DEMO: running .*version 2\)/);
    expect(b.output).toMatch(/DEMO: booted slot=b/);
    expect(b.output).toMatch(/DEMO: health exit 0/);

    // 3: a broken stack in slot a: it marks itself bad; 4: the node is back on slot b
    await installInto(img, store, path.join(work, 'mnt'), (await demoStack('demo-broken')).outDir, 'a', 1);
    b = await boot('demo.write=/var/lib/demo/third');
    expect(b.output, 'boot 3').toMatch(/DEMO: booted slot=a/);
    expect(b.output).not.toMatch(/DEMO: health exit 0/);
    b = await boot('');
    expect(b.output, 'boot 4').toMatch(/DEMO: booted slot=b/);

    // the data partition kept every file
    const files = await withPartition(img, data, path.join(work, 'mnt'), async (m) => (await fs.readdir(path.join(m, 'var', 'lib', 'demo'))).sort());
    expect(files).toEqual(expect.arrayContaining(['first', 'second', 'third']));
  }, 900_000);
});
