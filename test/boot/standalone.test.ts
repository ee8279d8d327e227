// The standalone initrd against a fake kernel: modules resolved with their dependencies
// and decompressed, busybox and its applets, the core, boot.conf and /init, the same bytes
// twice, zstd; a missing module, a dynamic or foreign busybox, a broken core refused.
import { describe, it, expect } from 'vitest';
import { existsSync } from 'node:fs';
import { mkdir, writeFile, readFile } from 'node:fs/promises';
import path from 'node:path';
import zlib from 'node:zlib';
import { run } from '../../src/sys/exec.js';
import { makeBootConfig } from '../../src/boot/bootconfig.js';
import { checkStaticElf } from '../../src/boot/elf.js';
import { buildStandalone } from '../../src/boot/standalone.js';
import { ARCH, KVER, fakeKo, hostBusybox, makeFakeCore, makeFakeKernel, testTmp } from '../support/boot-fixtures.js';

const tmp = testTmp('sb-standalone-test-');

describe('standalone initrd (fake kernel)', () => {
  it('writes a complete, listable, reproducible initrd', async () => {
    const modulesDir = await makeFakeKernel(path.join(tmp(), 'k1'));
    const coreDir = await makeFakeCore(path.join(tmp(), 'core-ok'), true);
    const out = path.join(tmp(), 'initrd.img');
    const opts = {
      flavor: 'standalone' as const,
      out,
      arch: ARCH,
      modulesDir: path.dirname(modulesDir), // lib/modules: its only kernel is found
      busybox: await hostBusybox(),
      coreDir,
      modules: ['btrfs'],
      config: makeBootConfig({ set: ['ON_FAIL_DELAY=2'] }),
      mtime: 0,
    };
    const r = await buildStandalone(opts);
    expect(r.kver).toBe(KVER);
    expect(r.builtin).toEqual(['mmc_block']);
    const order = r.modules;
    expect(order.indexOf('jbd2')).toBeLessThan(order.indexOf('ext4'));
    expect(order.indexOf('crc32c_generic')).toBeLessThan(order.indexOf('ext4'));
    expect(order.indexOf('nvme_core')).toBeLessThan(order.indexOf('nvme'));
    expect(order).toContain('btrfs');
    expect(r.applets).toContain('switch_root');

    const cpio = zlib.gunzipSync(await readFile(out));
    await writeFile(path.join(tmp(), 'initrd.cpio'), cpio);
    const list = (await run('cpio', ['-it', '--quiet'], { inputFile: path.join(tmp(), 'initrd.cpio') })).stdout.trim().split('\n');
    for (const p of [
      'init',
      'bin/busybox',
      'bin/sh',
      'bin/mount',
      'bin/switch_root',
      'bin/modprobe',
      'sbin',
      'dev/console',
      'dev/null',
      'etc/stackboot/boot.conf',
      'lib/stackboot/stackboot.sh',
      'lib/stackboot/util.sh',
      `lib/modules/${KVER}/modules.dep`,
      `lib/modules/${KVER}/kernel/fs/squashfs/squashfs.ko`, // decompressed from .ko.xz
      `lib/modules/${KVER}/kernel/drivers/block/loop.ko`, // from .ko.zst
      `lib/modules/${KVER}/kernel/fs/ext4/ext4.ko`, // from .ko.gz
      `lib/modules/${KVER}/kernel/fs/jbd2/jbd2.ko`,
    ]) {
      expect(list, p).toContain(p);
    }
    const ex = path.join(tmp(), 'initrd-x');
    await mkdir(ex);
    await run('cpio', ['-idm', '--quiet', '--no-absolute-filenames'], { inputFile: path.join(tmp(), 'initrd.cpio'), cwd: ex });
    const dep = await readFile(path.join(ex, 'lib/modules', KVER, 'modules.dep'), 'utf8');
    expect(dep).toContain('kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko\n');
    expect(dep).not.toMatch(/\.ko\.(xz|zst|gz)/);
    expect(await readFile(path.join(ex, 'lib/modules', KVER, 'kernel/fs/squashfs/squashfs.ko'))).toEqual(fakeKo('kernel/fs/squashfs/squashfs.ko.xz'));
    const init = await readFile(path.join(ex, 'init'), 'utf8');
    expect(init).toContain('sb_boot /root');
    expect(init).toContain('exec switch_root');
    expect(init).toMatch(/sb_load_modules .*jbd2 .*ext4/);
    expect(init).not.toMatch(/sb_load_modules .*mmc_block/);
    expect(await readFile(path.join(ex, 'etc/stackboot/boot.conf'), 'utf8')).toMatch(/^ON_FAIL_DELAY=2$/m);

    // same inputs, same bytes
    const again = path.join(tmp(), 'initrd2.img');
    await buildStandalone({ ...opts, out: again });
    expect((await readFile(again)).equals(await readFile(out))).toBe(true);

    // zstd
    const z = await buildStandalone({ ...opts, out: path.join(tmp(), 'initrd.zst'), compress: 'zstd' });
    expect(z.compress).toBe('zstd');
    const dz = await run('zstd', ['-dc', path.join(tmp(), 'initrd.zst')], { binary: true });
    expect(dz.stdoutBuffer!.equals(cpio)).toBe(true);
  });

  it('names a module that does not exist', async () => {
    const modulesDir = await makeFakeKernel(path.join(tmp(), 'k2'));
    await expect(
      buildStandalone({ flavor: 'standalone', out: path.join(tmp(), 'no.img'), arch: ARCH, modulesDir, busybox: await hostBusybox(), coreDir: await makeFakeCore(path.join(tmp(), 'c2'), true), modules: ['wireguard'] }),
    ).rejects.toThrow(/wireguard/);
    expect(existsSync(path.join(tmp(), 'no.img'))).toBe(false);
  });

  it('refuses a busybox that is not static or not for the arch', () => {
    const dyn = Buffer.alloc(64 + 56);
    dyn.writeUInt32BE(0x7f454c46, 0);
    dyn[4] = 2;
    dyn[5] = 1;
    dyn.writeUInt16LE(62, 18);
    dyn.writeBigUInt64LE(64n, 32); // phoff
    dyn.writeUInt16LE(56, 54);
    dyn.writeUInt16LE(1, 56);
    dyn.writeUInt32LE(3, 64); // PT_INTERP
    expect(() => checkStaticElf(dyn, 'amd64', 'bb')).toThrow(/dynamically linked/);
    expect(() => checkStaticElf(dyn, 'arm64', 'bb')).toThrow(/not arm64/);
    expect(() => checkStaticElf(Buffer.from('#!/bin/sh\n'.padEnd(80)), 'amd64', 'bb')).toThrow(/not an ELF/);
  });

  it('fails when the core does not parse', async () => {
    const coreDir = await makeFakeCore(path.join(tmp(), 'core-bad'), true);
    await writeFile(path.join(coreDir, 'util.sh'), 'sb_util() {\n');
    const modulesDir = await makeFakeKernel(path.join(tmp(), 'k3'));
    await expect(buildStandalone({ flavor: 'standalone', out: path.join(tmp(), 'bad.img'), arch: ARCH, modulesDir, busybox: await hostBusybox(), coreDir })).rejects.toThrow(
      /core util.sh does not parse/,
    );
  });
});
