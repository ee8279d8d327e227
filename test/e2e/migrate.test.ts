/**
 * SD → NVMe in QEMU: boot from the SD image (demo-tools stack: sfdisk and mkfs in the
 * root) with an empty NVMe, run `stackboot-node migrate`, reboot: the node is on the NVMe
 * (pending, then good after health), whose boot partition holds the SD's boot files. Then a layer of the NVMe store is removed from the
 * host: the node is back on the SD, and the NVMe store's events say why.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { buildImage } from '../../src/media/image.js';
import { makeBootConfig } from '../../src/boot/initramfs.js';
import { run } from '../../src/sys/exec.js';
import { loadRecipe } from '../../src/build/recipe.js';
import { buildStack } from '../../src/build/stack.js';
import { bootOnce, useVmCleanup, Vm } from './qemu.js';
import { CACHE, REPO, WORK, scratch, target } from './fixtures.js';
import { withPartition } from './media-util.js';

useVmCleanup(afterEach);

describe('migrate SD → NVMe', () => {
  it('moves the node to the NVMe, and falls back to the SD when the NVMe store breaks', async () => {
    const work = await scratch('migrate');
    await run('sh', [path.join(REPO, 'images', 'demo-tools', 'prepare.sh'), 'amd64']);
    const recipe = await loadRecipe(path.join(REPO, 'images', 'demo-tools'), { arch: 'amd64' });
    const stack = await buildStack(recipe, { outDir: path.join(WORK, 'stacks', 'demo-tools-amd64'), cacheDir: path.join(WORK, 'layer-cache'), epoch: 0, arch: 'amd64', uid: 0, progress: () => {} });
    const sd = path.join(work, 'sd.img');
    const r = await buildImage({ buildDir: stack.outDir, out: sd, layout: 'sd', cacheRoot: CACHE, bootConfig: makeBootConfig({ set: [['DEVICE_SETTLE', '2']] }) });
    const nvme = path.join(work, 'nvme.img');
    const fh = await fs.open(nvme, 'w');
    await fh.truncate(1024 * 1024 * 1024);
    await fh.close();
    const kernel = path.join(work, 'vmlinuz');
    const initrd = path.join(work, 'initrd.img');
    const env = { MTOOLS_SKIP_CHECK: '1' };
    await run('mcopy', ['-n', '-i', `${sd}@@${r.partitions[0].start}`, '::/vmlinuz', kernel], { env });
    await run('mcopy', ['-n', '-i', `${sd}@@${r.partitions[0].start}`, '::/initrd.img', initrd], { env });
    const t = await target('amd64');
    const disks = [{ file: sd, bus: 'sd' as const }, { file: nvme, bus: 'nvme' as const }];
    const log = path.join(work, 'console.log');

    // 1: on the SD, run migrate from the shell
    const vm = Vm.start({ target: t, kernel, initrd, disks, append: 'demo.then=shell', timeoutMs: 300_000, logFile: log });
    await vm.waitFor(/DEMO: booted store_dev=\/dev\/mmcblk0p2/, 120_000);
    await vm.waitFor(/DEMO: then shell/, 120_000);
    vm.send('stackboot-node migrate --to /dev/nvme0n1; echo MIGRATE-EXIT=$?; sync; reboot -f\n');
    await vm.waitFor(/MIGRATE-EXIT=\d+/, 200_000);
    const ex = await vm.waitExit(60_000);
    expect(ex.output, vm.failMessage('migrate')).toMatch(/MIGRATE-EXIT=0/);
    expect(ex.output).toMatch(/migrated: \/dev\/nvme0n1 holds store [0-9a-f]{32}/);
    // the boot partition came along (read on the host with mtools): the NVMe boots without the SD
    expect(ex.output).toMatch(/migrate: boot files copied from \/dev\/mmcblk0p1/);
    const nvPart = JSON.parse((await run('sfdisk', ['--json', nvme])).stdout).partitiontable.partitions[0];
    expect(nvPart.name).toBe('APP');
    const nvBoot = `${nvme}@@${nvPart.start * 512}`;
    for (const f of ['vmlinuz', 'initrd.img', 'boot/extlinux/extlinux.conf']) {
      const [a, b] = [path.join(work, 'sd-file'), path.join(work, 'nvme-file')];
      await run('mcopy', ['-n', '-i', `${sd}@@${r.partitions[0].start}`, `::/${f}`, a], { env });
      await run('mcopy', ['-n', '-i', nvBoot, `::/${f}`, b], { env });
      expect((await fs.readFile(b)).equals(await fs.readFile(a)), `${f} on the NVMe`).toBe(true);
    }

    // 2: the node boots from the NVMe store, pending, and health marks it good
    let b = await bootOnce({ target: t, kernel, initrd, disks, timeoutMs: 240_000, logFile: log });
    expect(b.output, 'boot from nvme').toMatch(/DEMO: booted store_dev=\/dev\/nvme0n1p2/);
    expect(b.output).toMatch(/DEMO: booted status=pending/);
    expect(b.output).toMatch(/DEMO: health exit 0/);
    const sdId = /DEMO: booted store_id=(\w+)/.exec(ex.output)![1];
    const nvId = /DEMO: booted store_id=(\w+)/.exec(b.output)![1];
    expect(nvId).not.toBe(sdId);
    // after the first good NVMe boot, status shows the NVMe store good and the SD as the fallback
    expect(b.output).toMatch(/DEMO: status: slot a: +good /);
    expect(b.output).toMatch(new RegExp(`DEMO: status: store: +/dev/nvme0n1p2 ${nvId} \\(booted\\)`));
    expect(b.output).toMatch(new RegExp(`DEMO: status: store: +/dev/mmcblk0p2 ${sdId} \\(fallback\\): current a, a good:`));

    // 3: break the NVMe store (remove a layer from the host): back on the SD
    const parts = JSON.parse((await run('sfdisk', ['--json', nvme])).stdout).partitiontable.partitions as { start: number; size: number; name: string }[];
    const sp = parts.find((p) => p.name === 'sb-store')!;
    const storePart = { start: sp.start * 512, size: sp.size * 512 };
    await withPartition(nvme, storePart, path.join(work, 'mnt'), async (m) => {
      const layers = (await fs.readdir(path.join(m, 'layers'))).sort();
      await fs.rm(path.join(m, 'layers', layers[0]));
    });
    b = await bootOnce({ target: t, kernel, initrd, disks, timeoutMs: 240_000, logFile: log });
    expect(b.output, 'fallback to sd').toMatch(/DEMO: booted store_dev=\/dev\/mmcblk0p2/);
    const events = await withPartition(nvme, storePart, path.join(work, 'mnt'), (m) => fs.readFile(path.join(m, 'events'), 'utf8'));
    expect(events).toMatch(/ install slot=a .*migrated from store/);
    expect(events).toMatch(/ good slot=a /);
    expect(events).toMatch(/ fail slot=a .*reason=.*missing/);
  }, 1_200_000);
});
