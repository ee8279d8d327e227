/**
 * Builds real standalone initrds against the Debian kernels and busybox-static that
 * `npm run setup` unpacks (both arches), and checks what is inside.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtemp, mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { fileURLToPath } from 'node:url';
import { run } from '../../src/sys/exec.js';
import { buildInitramfs, makeBootConfig } from '../../src/boot/initramfs.js';
import { loadModuleIndex } from '../../src/boot/kernel.js';
import { loadTarget } from '../../src/boot/target.js';
import { ARCHES } from '../../src/sys/arch.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const CACHE = path.join(REPO, '.cache');

let tmp: string;
beforeAll(async () => {
  tmp = await mkdtemp(path.join(tmpdir(), 'sb-initramfs-int-'));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

describe.each(ARCHES.map((a) => [a]))('standalone initrd for the Debian %s kernel', (arch) => {
  it('holds /init, busybox, the core, boot.conf and the modules with their dependencies', async () => {
    const t = await loadTarget(arch, CACHE);
    const out = path.join(tmp, `initrd-${arch}.img`);
    const r = await buildInitramfs({
      flavor: 'standalone',
      out,
      arch,
      modulesDir: t.modules,
      busybox: t.busybox,
      config: makeBootConfig({ set: ['ON_FAIL_DELAY=1'] }),
      modules: ['btrfs'],
    });
    expect(r.kver).toBe(t.kver);
    expect((await stat(out)).size).toBe(r.bytes);

    const cpio = path.join(tmp, `initrd-${arch}.cpio`);
    await writeFile(cpio, zlib.gunzipSync(await readFile(out)));
    const list = new Set((await run('cpio', ['-it', '--quiet'], { inputFile: cpio })).stdout.trim().split('\n'));
    for (const p of ['init', 'bin/busybox', 'bin/sh', 'bin/switch_root', 'bin/modprobe', 'dev/console', 'dev/null', 'etc/stackboot/boot.conf', 'lib/stackboot/stackboot.sh']) {
      expect(list.has(p), p).toBe(true);
    }

    // every module of the kernel's own dependency graph is there, dependencies first
    const { index } = await loadModuleIndex(t.modules);
    const shipped = new Set(r.modules);
    for (const want of ['overlay', 'squashfs', 'loop', 'ext4', 'vfat', 'virtio_blk', 'virtio_pci', 'nvme', 'sdhci', 'btrfs']) {
      if (index.builtin.has(want)) {
        expect(r.builtin).toContain(want);
        continue;
      }
      expect(shipped.has(want), want).toBe(true);
    }
    for (const name of r.modules) {
      const info = index.modules.get(name)!;
      expect(list.has(`lib/modules/${t.kver}/${info.path.replace(/\.ko\.(xz|zst|gz)$/, '.ko')}`), info.path).toBe(true);
      for (const d of info.deps) {
        expect(shipped.has(d), `${d} (needed by ${name})`).toBe(true);
        expect(r.modules.indexOf(d), `${d} before ${name}`).toBeLessThan(r.modules.indexOf(name));
      }
    }
    expect(r.modules).toEqual(expect.arrayContaining(['jbd2', 'mbcache', 'crc16']));

    const ex = path.join(tmp, `x-${arch}`);
    await mkdir(ex);
    await run('cpio', ['-idm', '--quiet', '--no-absolute-filenames'], { inputFile: cpio, cwd: ex });
    // the staged modules.dep is the kernel's, pruned to what is shipped
    const dep = await readFile(path.join(ex, 'lib/modules', t.kver, 'modules.dep'), 'utf8');
    expect(dep.trim().split('\n')).toHaveLength(r.modules.length);
    expect(dep).toMatch(/^kernel\/fs\/ext4\/ext4\.ko: .*jbd2\.ko/m);
    // the shipped busybox is the target's, byte for byte
    expect((await readFile(path.join(ex, 'bin/busybox'))).equals(await readFile(t.busybox))).toBe(true);
    const init = await readFile(path.join(ex, 'init'), 'utf8');
    expect(init).toContain('sb_load_modules');
    await run('busybox', ['sh', '-n', path.join(ex, 'init')]);
    if (arch === 'amd64' && process.arch === 'x64') {
      // the amd64 busybox runs here: its applets are the ones linked
      const applets = (await run(path.join(ex, 'bin/busybox'), ['--list'])).stdout.trim().split('\n');
      for (const a of ['mount', 'switch_root', 'modprobe', 'losetup', 'sha256sum']) expect(applets).toContain(a);
    }
  });
});
