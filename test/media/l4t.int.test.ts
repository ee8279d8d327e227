/**
 * JetPack 5/6 (UEFI): what NVIDIA's L4TLauncher makes of the boot partition `image` and
 * `boot-update` write. Its own extlinux reader (edk2-nvidia r36.5.1, verbatim, compiled
 * for the host: test/support/l4t.ts) runs on the GPT names of the real image and on the
 * files of its real vfat partition (copied out with mtools): it must find the partition
 * named APP, read boot/extlinux/extlinux.conf, and name files that are there. The
 * launcher binary itself is NVIDIA's (BOOTAA64.efi of the BSP, not in Debian): a PE
 * program for arm64 stands in for it on the ESP (the arm64 kernel, an EFI-stub Image).
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { buildImage, planImage, bootUpdate, EXTLINUX_CONF, LEGACY_EXTLINUX_CONF, renderExtlinux } from '../../src/media/index.js';
import { loadTarget, type Target } from '../../src/boot/target.js';
import { run } from '../../src/sys/exec.js';
import { CACHE, demoStack } from '../e2e/fixtures.js';
import { tmpdir } from '../build/sources/tarfixture.js';
import { l4tPath, l4tRead, type L4tEntry } from '../support/l4t.js';

const MTOOLS = { MTOOLS_SKIP_CHECK: '1' };
let tmp: string;
let buildDir: string;
let T: Target;
beforeAll(async () => {
  tmp = await tmpdir('sb-l4t-');
  buildDir = (await demoStack('demo', 'arm64')).outDir;
  T = await loadTarget('arm64', CACHE);
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

/** The GPT names of an image and a copy of its first partition's files. */
async function readImage(img: string, start: number): Promise<{ names: string[]; types: string[]; dir: string }> {
  const pt = JSON.parse((await run('sfdisk', ['--json', img])).stdout).partitiontable;
  const dir = path.join(tmp, `${path.basename(img)}.boot`);
  await fs.rm(dir, { recursive: true, force: true });
  await fs.mkdir(dir);
  await run('mcopy', ['-s', '-n', '-i', `${img}@@${start}`, '::/*', dir], { env: MTOOLS });
  return { names: pt.partitions.map((p: { name: string }) => p.name), types: pt.partitions.map((p: { type: string }) => p.type), dir };
}

const sha256 = async (f: string): Promise<string> => createHash('sha256').update(await fs.readFile(f)).digest('hex');

/** Every file an entry names is on the partition. */
async function expectFiles(dir: string, e: L4tEntry): Promise<void> {
  for (const p of [e.linux, e.initrd, e.fdt]) if (p) expect(await fs.stat(path.join(dir, l4tPath(p))).then((s) => s.isFile(), () => false), `${p} on the partition`).toBe(true);
}

describe('JetPack 5/6: L4TLauncher reads the boot partition', () => {
  it('finds the partition named APP, its boot/extlinux/extlinux.conf, and the files of the default entry; the launcher sits at EFI/BOOT/BOOTAA64.EFI', async () => {
    const img = path.join(tmp, 'jetson.img');
    const launcher = T.kernel;
    const fdt = path.join(tmp, 'tegra234-p3768-0000+p3767-0005-nv.dtb');
    await fs.writeFile(fdt, Buffer.from('d00dfeed', 'hex'));
    const r = await buildImage({ buildDir, out: img, layout: 'sd', arch: 'arm64', cacheRoot: CACHE, efiBoot: launcher, fdt, append: 'console=ttyTCU0,115200 panic=10', bmap: false });
    expect(r.efiBoot).toBe('EFI/BOOT/BOOTAA64.EFI');
    expect(r.bootConf).toBe(EXTLINUX_CONF);
    const { names, types, dir } = await readImage(img, r.partitions[0]!.start);
    expect(names).toEqual(['APP', 'sb-store', 'sb-data']);
    // the ESP type: UEFI's boot manager looks there for EFI/BOOT/BOOTAA64.EFI
    expect(types[0]).toBe('C12A7328-F81F-11D2-BA4B-00A0C93EC93B');
    expect(await sha256(path.join(dir, 'EFI/BOOT/BOOTAA64.EFI'))).toBe(await sha256(launcher));

    const l = await l4tRead({ dir, names, filesPart: 1, launcher: 1 });
    if (!l.ok) throw new Error('L4TLauncher found no APP partition or no extlinux.conf');
    expect(l.partition).toBe(1);
    expect(l.timeout).toBe(10);
    expect(l.entries).toHaveLength(1);
    const e = l.entries[l.default]!;
    expect(e).toMatchObject({ label: 'stackboot', linux: '\\vmlinuz', initrd: '\\initrd.img', fdt: `\\${path.basename(fdt)}`, append: 'console=ttyTCU0,115200 panic=10' });
    expect(e.menu).toContain('stackboot (demo');
    await expectFiles(dir, e);
    expect(await sha256(path.join(dir, 'vmlinuz'))).toBe(await sha256(T.kernel));

    // boot-update on that partition: the launcher boots the new files, the old entry is
    // the second (chosen with a key during TIMEOUT: it tries no other entry by itself)
    const k2 = path.join(tmp, 'Image-2');
    const i2 = path.join(tmp, 'initrd-2.img');
    await fs.copyFile(T.kernel2?.kernel ?? T.kernel, k2);
    await fs.writeFile(i2, 'the next initrd');
    const u = await bootUpdate({ bootDir: dir, kernel: k2, initrd: i2, fdt, describe: 'demo 2, kernel 6.12' });
    expect(u.conf).toBe(EXTLINUX_CONF);
    const l2 = await l4tRead({ dir, names, filesPart: 1, launcher: 1 });
    if (!l2.ok) throw new Error('L4TLauncher cannot read the updated extlinux.conf');
    expect(l2.entries.map((x) => x.label)).toEqual(['stackboot', 'previous']);
    expect(l2.entries[l2.default]).toMatchObject({ label: 'stackboot', linux: `\\${u.entry.kernel}`, initrd: `\\${u.entry.initrd}`, append: 'console=ttyTCU0,115200 panic=10' });
    expect(l2.entries[1]).toMatchObject({ linux: '\\vmlinuz', initrd: '\\initrd.img', fdt: `\\${path.basename(fdt)}` });
    for (const x of l2.entries) await expectFiles(dir, x);
  });

  it('--reset-entry: the launcher lists the factory reset entry after the default (the same files, stackboot.reset added); boot-update keeps it, on the new files', async () => {
    const img = path.join(tmp, 'jetson-reset.img');
    const r = await buildImage({ buildDir, out: img, layout: 'sd', arch: 'arm64', cacheRoot: CACHE, efiBoot: T.kernel, append: 'console=ttyTCU0,115200', resetEntry: true, bmap: false });
    const { names, dir } = await readImage(img, r.partitions[0]!.start);
    const l = await l4tRead({ dir, names, filesPart: 1, launcher: 1 });
    if (!l.ok) throw new Error('L4TLauncher found no extlinux.conf');
    expect(l.entries.map((x) => x.label)).toEqual(['stackboot', 'factory-reset']);
    expect(l.entries[l.default]!.label).toBe('stackboot');
    expect(l.entries[1]).toMatchObject({ linux: '\\vmlinuz', initrd: '\\initrd.img', append: 'console=ttyTCU0,115200 stackboot.reset' });
    expect(l.entries[1]!.menu).toMatch(/^factory reset \(wipes the data partition\): stackboot \(demo/);
    await expectFiles(dir, l.entries[1]!);

    const k2 = path.join(tmp, 'Image-r2');
    const i2 = path.join(tmp, 'initrd-r2.img');
    await fs.copyFile(T.kernel2?.kernel ?? T.kernel, k2);
    await fs.writeFile(i2, 'the next initrd, with the reset entry');
    const u = await bootUpdate({ bootDir: dir, kernel: k2, initrd: i2, describe: 'demo 2' });
    const l2 = await l4tRead({ dir, names, filesPart: 1, launcher: 1 });
    if (!l2.ok) throw new Error('L4TLauncher cannot read the updated extlinux.conf');
    expect(l2.entries.map((x) => x.label)).toEqual(['stackboot', 'previous', 'factory-reset']);
    expect(l2.entries[2]).toMatchObject({ linux: `\\${u.entry.kernel}`, initrd: `\\${u.entry.initrd}`, append: 'console=ttyTCU0,115200 stackboot.reset' });
    for (const x of l2.entries) await expectFiles(dir, x);
  });

  it('with rootfs A/B the launcher falls back to the plain APP name; an image of the old layout (sb-boot, extlinux/) is not found at all', async () => {
    const dir = path.join(tmp, 'legacy');
    await fs.mkdir(path.join(dir, 'extlinux'), { recursive: true });
    await fs.writeFile(path.join(dir, 'vmlinuz'), 'k');
    await fs.writeFile(path.join(dir, 'initrd.img'), 'i');
    const conf = await renderExtlinux({ name: 'demo', version: '1', stackId: 'a'.repeat(64), kernel: 'vmlinuz', initrd: 'initrd.img', append: 'quiet' });
    await fs.writeFile(path.join(dir, LEGACY_EXTLINUX_CONF), conf);
    // what stackboot wrote before: the partition named sb-boot, the file at extlinux/
    expect(await l4tRead({ dir, names: ['sb-boot', 'sb-store', 'sb-data'], filesPart: 1, launcher: 1 })).toEqual({ ok: false, partition: 0 });
    // named APP but the file still at extlinux/: not read either
    expect((await l4tRead({ dir, names: ['APP', 'sb-store', 'sb-data'], filesPart: 1, launcher: 1 })).ok).toBe(false);
    // the file where it belongs: read, on chain B too (no APP_b: the plain APP)
    await fs.mkdir(path.join(dir, 'boot/extlinux'), { recursive: true });
    await fs.rename(path.join(dir, LEGACY_EXTLINUX_CONF), path.join(dir, EXTLINUX_CONF));
    for (const chain of ['A', 'B'] as const) {
      const l = await l4tRead({ dir, names: ['APP', 'sb-store', 'sb-data'], filesPart: 1, launcher: 1, chain });
      expect(l.ok && l.entries[l.default]!.append).toBe('quiet');
    }
  });

  it('refuses, before anything is made, what the launcher could not start: a program or kernel that is not an arm64 PE image', async () => {
    const o = { buildDir, out: path.join(tmp, 'x.img'), arch: 'arm64' as const, cacheRoot: CACHE };
    await expect(planImage({ ...o, efiBoot: T.busybox })).rejects.toMatchObject({ code: 'USAGE', message: expect.stringMatching(/^--efi-boot .* is not a PE \(UEFI\) image: the firmware starts it as EFI\/BOOT\/BOOTAA64\.EFI$/) });
    const amd = await loadTarget('amd64', CACHE);
    await expect(planImage({ ...o, efiBoot: amd.kernel })).rejects.toMatchObject({ code: 'USAGE', message: expect.stringMatching(/is a PE image for machine 0x8664, not arm64 \(0xaa64\)/) });
    // an Image.gz: U-Boot's booti takes it, L4TLauncher hands the kernel to UEFI's LoadImage
    const gz = path.join(tmp, 'Image.gz');
    await run('sh', ['-c', `gzip -c < '${T.kernel}' > '${gz}'`]);
    await expect(planImage({ ...o, efiBoot: T.kernel, kernel: gz })).rejects.toMatchObject({ code: 'USAGE', message: expect.stringMatching(/Image\.gz is not a PE \(UEFI\) image but gzip-compressed/) });
    await planImage({ ...o, kernel: gz });
    // a '#' in the command line: the launcher would cut it there
    await expect(planImage({ ...o, append: 'console=ttyTCU0 #quiet' })).rejects.toMatchObject({ code: 'USAGE', message: expect.stringContaining("--append has a '#'") });
  });
});
