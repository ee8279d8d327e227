/**
 * The SD image through real firmware: U-Boot (Debian's u-boot-qemu, QEMU aarch64 virt)
 * boots `stackboot image`'s output the way a board's distro boot does: it finds
 * boot/extlinux/extlinux.conf on the vfat boot partition (the path JetPack 5/6's
 * L4TLauncher reads too: test/media/l4t.int.test.ts), loads the kernel and the initrd that
 * file names, and the initrd boots the stack. Every other e2e test hands QEMU the kernel
 * (-kernel), which skips the boot partition altogether. And UEFI (EDK2, Debian's
 * qemu-efi-aarch64) starts the program `image --efi-boot` put at EFI/BOOT/BOOTAA64.EFI, the
 * way JetPack 5/6's firmware starts L4TLauncher (whose reading of the partition is
 * test/media/l4t.int.test.ts).
 *
 * And `boot-update` on that partition: a running node (the amd64 demo-node guest, with
 * Node.js and the real CLI) runs `stackboot boot-update`, which finds the image's vfat
 * boot partition by its label and mounts it itself, with the arm64 6.12 kernel and a stackboot initrd for it; the host reads the
 * result with mtools (the new entry the default, the old one kept as `previous`), and
 * U-Boot then boots the 6.12 kernel from it. The updater being amd64 changes nothing on
 * the partition (files and one extlinux.conf); it is the guest that has Node.js.
 */
import { describe, expect, beforeAll, afterEach } from 'vitest';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { run } from '../../src/sys/exec.js';
import { buildImage, type ImageResult } from '../../src/media/image.js';
import { buildInitramfs, makeBootConfig } from '../../src/boot/initramfs.js';
import { EXTLINUX_CONF, parseBootConf } from '../../src/media/bootpart.js';
import type { Target } from '../../src/boot/target.js';
import { CACHE, demoStack, scratch, storeDisk, target } from './fixtures.js';
import { nodeStack } from './node-fixtures.js';
import { bootOnce, useVmCleanup, Vm, type BootResult } from './qemu.js';
import { readStore, tailOf, withPart } from './inspect.js';
import { itConcurrent } from './concurrent.js';

useVmCleanup(afterEach);

/** Debian's u-boot-qemu (scripts/setup.sh installs it). */
const UBOOT_ARM64 = '/usr/lib/u-boot/qemu_arm64/u-boot.bin';
/** Debian's qemu-efi-aarch64: EDK2's UEFI for QEMU's virt, the code JetPack 5/6's firmware is built on. */
const UEFI_ARM64 = '/usr/share/qemu-efi-aarch64/QEMU_EFI.fd';
const MTOOLS_ENV = { MTOOLS_SKIP_CHECK: '1' };

let T: Target;
let dir: string;
let img: string;
let image: ImageResult;

beforeAll(async () => {
  for (const [f, pkg] of [[UBOOT_ARM64, 'u-boot-qemu'], [UEFI_ARM64, 'qemu-efi-aarch64']]) {
    if (!(await fs.stat(f).then(() => true, () => false))) throw new Error(`${f} is missing: scripts/setup.sh installs ${pkg}`);
  }
  T = await target('arm64');
  dir = await scratch('firmware');
  const demo = await demoStack('demo', 'arm64');
  img = path.join(dir, 'sd-arm64.img');
  image = await buildImage({ buildDir: demo.outDir, out: img, layout: 'sd', arch: 'arm64', cacheRoot: CACHE, append: 'console=ttyAMA0 panic=-1', bmap: false });
});

/** A copy of the image, booted by U-Boot until the demo powers off. */
async function bootUboot(file: string, name: string): Promise<BootResult> {
  return bootOnce({ target: T, firmware: UBOOT_ARM64, initrd: '', disks: [{ file, bus: 'virtio' }], timeoutMs: 240_000, name });
}

/** U-Boot read extlinux.conf from the boot partition and started what it names; the stack booted. */
function expectFirmwareBoot(r: BootResult): void {
  expect(r.output, tailOf(r, 'U-Boot did not start')).toMatch(/U-Boot 20\d\d\./);
  expect(r.output, tailOf(r, 'U-Boot did not find extlinux.conf')).toMatch(/Found \/boot\/extlinux\/extlinux\.conf/);
  expect(r.output, tailOf(r, 'the kernel did not start')).toMatch(/Starting kernel \.\.\./);
  expect(r.output, tailOf(r, 'the stack did not boot')).toMatch(/stackboot: booting slot a \(/);
  expect(r.output, tailOf(r, 'the demo did not run')).toMatch(/DEMO: running stackboot demo 1/);
  expect(r.how, tailOf(r, `VM ended by ${r.how}`)).toBe('poweroff');
}

/** A file of the image's boot partition (mtools, no mount). */
async function bootFile(file: string, name: string): Promise<string> {
  return (await run('mtype', ['-i', `${file}@@${image.partitions[0]!.start}`, `::/${name}`], { env: MTOOLS_ENV })).stdout;
}

async function bootFiles(file: string): Promise<string[]> {
  const r = await run('mdir', ['-b', '-i', `${file}@@${image.partitions[0]!.start}`, '::/'], { env: MTOOLS_ENV });
  return r.stdout.split('\n').map((l) => l.trim().replace(/^::\//, '').replace(/\/$/, '')).filter(Boolean).sort();
}

describe('the SD image through real firmware (aarch64 virt)', () => {
  itConcurrent('U-Boot boots the image: extlinux.conf from the vfat boot partition, its kernel and initrd, the stack', async () => {
    const copy = path.join(dir, 'sd-plain.img');
    await fs.copyFile(img, copy);
    const r = await bootUboot(copy, 'uboot-arm64');
    expectFirmwareBoot(r);
    // the entry `stackboot image` wrote, with its command line
    expect(r.output).toMatch(/Retrieving file: \/initrd\.img/);
    expect(r.output).toMatch(/Retrieving file: \/vmlinuz/);
    expect(r.output).toMatch(new RegExp(`Linux version ${T.kver.replace(/[.+]/g, '\\$&')} `));
  });

  itConcurrent('boot-update on a running node writes the vfat partition; U-Boot then boots the new kernel, the old entry kept as previous', async () => {
    const k2 = T.kernel2;
    if (!k2) throw new Error('scripts/setup.sh prepares KERNEL2 for arm64');
    const copy = path.join(dir, 'sd-update.img');
    await fs.copyFile(img, copy);
    const before = parseBootConf(await bootFile(copy, EXTLINUX_CONF));

    // the new boot files: the 6.12 kernel and a stackboot initrd with its modules, carried
    // to the guest on a disk that is a tar
    const files = path.join(dir, 'k2');
    await fs.rm(files, { recursive: true, force: true });
    await fs.mkdir(files);
    await fs.copyFile(k2.kernel, path.join(files, 'vmlinuz'));
    await buildInitramfs({ flavor: 'standalone', out: path.join(files, 'initrd.img'), arch: 'arm64', cacheRoot: CACHE, modulesDir: k2.modules, config: makeBootConfig(), verityRoot: T.verityRoot });
    const tarDisk = path.join(dir, 'k2.tar');
    await run('tar', ['-cf', tarDisk, '-C', files, 'vmlinuz', 'initrd.img']);

    // the updater: the amd64 demo-node (Node.js + the CLI); vfat comes with its initrd's modules
    const A = await target('amd64');
    const node = await nodeStack('recipe');
    const store = path.join(dir, 'node-store.img');
    await storeDisk({ file: store, slots: { a: { buildDir: node.outDir, status: 'good' } }, storeMiB: 256 });
    const rd = path.join(dir, 'node-initrd.img');
    await buildInitramfs({ flavor: 'standalone', out: rd, arch: 'amd64', cacheRoot: CACHE, config: makeBootConfig({ set: [['STORES', 'vda'], ['DEVICE_TIMEOUT', '5']] }) });
    const vm = Vm.start({
      target: A,
      initrd: rd,
      disks: [{ file: store, bus: 'virtio' }, { file: copy, bus: 'virtio' }, { file: tarDisk, bus: 'virtio', readonly: true }],
      memoryMiB: 768,
      append: 'quiet demo.nohealth demo.then=shell',
      timeoutMs: 400_000,
      name: 'boot-update-amd64',
    });
    await vm.waitFor(/DEMO: then shell/, 240_000);
    vm.send(
      // no --boot: boot-update finds the vfat labelled SB-BOOT (blkid) and mounts it itself
      'mkdir -p /tmp/k && cd /tmp/k && tar -xf /dev/vdc && ' +
        'stackboot boot-update --kernel /tmp/k/vmlinuz --initrd /tmp/k/initrd.img --json; echo BOOT-UPDATE-EXIT=$?; ' +
        'grep -c " vfat " /proc/mounts; sync; poweroff -f\n',
    );
    await vm.waitFor(/BOOT-UPDATE-EXIT=\d+/, 300_000);
    const ex = await vm.waitExit(60_000);
    expect(ex.output, vm.failMessage('boot-update failed')).toMatch(/BOOT-UPDATE-EXIT=0/);
    // and unmounted it again
    expect(ex.output, vm.failMessage('the boot partition stayed mounted')).toMatch(/BOOT-UPDATE-EXIT=0\s+0\s/);

    // the host's view: the new entry is the default, the old one `previous`, files by content
    const sha12 = async (f: string) => (await run('sha256sum', [f])).stdout.slice(0, 12);
    const [hk, hi] = [await sha12(path.join(files, 'vmlinuz')), await sha12(path.join(files, 'initrd.img'))];
    const after = parseBootConf(await bootFile(copy, EXTLINUX_CONF));
    expect(after.entries.map((e) => [e.label, e.kernel, e.initrd, e.append])).toEqual([
      ['stackboot', `vmlinuz-${hk}`, `initrd-${hi}.img`, before.entries[0]!.append],
      ['previous', before.entries[0]!.kernel, before.entries[0]!.initrd, before.entries[0]!.append],
    ]);
    expect(await bootFiles(copy)).toEqual(['boot', `initrd-${hi}.img`, 'initrd.img', `vmlinuz-${hk}`, 'vmlinuz'].sort());
    // what was written is what was given
    const env = MTOOLS_ENV;
    const back = path.join(dir, 'k2-back');
    await run('mcopy', ['-n', '-i', `${copy}@@${image.partitions[0]!.start}`, `::/vmlinuz-${hk}`, back], { env });
    expect(await sha12(back)).toBe(hk);
    // the guest kernel's vfat writes left a filesystem its own checker finds clean
    const part = path.join(dir, 'boot-after.part');
    const p0 = image.partitions[0]!;
    await run('dd', [`if=${copy}`, `of=${part}`, 'bs=1M', `skip=${p0.start / 1048576}`, `count=${p0.size / 1048576}`, 'status=none']);
    const fat = await run('fsck.fat', ['-n', part], { reject: false });
    expect(fat.exitCode, fat.stdout + fat.stderr).toBe(0);

    // U-Boot boots the new default: the 6.12 kernel, the same stack
    const r = await bootUboot(copy, 'uboot-arm64-updated');
    expectFirmwareBoot(r);
    expect(r.output).toMatch(new RegExp(`Retrieving file: /vmlinuz-${hk}`));
    expect(r.output, tailOf(r, 'not the new kernel')).toMatch(new RegExp(`Linux version ${k2.kver.replace(/[.+]/g, '\\$&')} `));

    // the fallback to the old entry, as a board's altbootcmd does it after bootlimit
    // failed boots (docs/boot.md): pxe_label_override=previous, then the distro boot;
    // typed here at U-Boot's prompt (this U-Boot build counts no boots)
    const vmPrev = Vm.start({ target: T, firmware: UBOOT_ARM64, initrd: '', disks: [{ file: copy, bus: 'virtio' }], timeoutMs: 240_000, name: 'uboot-previous' });
    await vmPrev.waitFor(/Hit any key to stop autoboot/, { timeoutMs: 120_000, partial: true });
    vmPrev.send('\n');
    await vmPrev.waitFor(/=> $/m, { timeoutMs: 30_000, partial: true });
    vmPrev.send('setenv pxe_label_override previous; run bootcmd\n');
    const rp = await vmPrev.waitExit(200_000);
    expect(rp.output, vmPrev.failMessage('not the old kernel')).toMatch(new RegExp(`Linux version ${T.kver.replace(/[.+]/g, '\\$&')} `));
    expect(rp.output).toMatch(/Retrieving file: \/vmlinuz\r?\n/);
    expect(rp.output, vmPrev.failMessage('the stack did not boot')).toMatch(/DEMO: running stackboot demo 1/);
    expect(rp.how).toBe('poweroff');
  });
  itConcurrent("image --reset-entry: U-Boot's menu (PROMPT 1) offers the factory reset entry; picked with a key, the stack boots with stackboot.reset and the hook wipes the data partition", async () => {
    const demo = await demoStack('demo', 'arm64');
    const resetImg = path.join(dir, 'sd-arm64-reset.img');
    const ri = await buildImage({ buildDir: demo.outDir, out: resetImg, layout: 'sd', arch: 'arm64', cacheRoot: CACHE, append: 'console=ttyAMA0 panic=-1', resetEntry: true, bmap: false });
    // something of the user's on the data partition: a file written with debugfs
    const data = ri.partitions.find((p) => p.name === 'sb-data')!;
    const note = path.join(dir, 'user-note');
    await fs.writeFile(note, 'user data\n');
    await run('debugfs', ['-w', '-R', `write ${note} user-note`, `${resetImg}?offset=${data.start}`]);
    const vm = Vm.start({ target: T, firmware: UBOOT_ARM64, initrd: '', disks: [{ file: resetImg, bus: 'virtio' }], timeoutMs: 240_000, name: 'uboot-reset' });
    // the prompt has no newline yet: match the unfinished line (U-Boot waits TIMEOUT, 1 s)
    await vm.waitFor(/Enter choice: /, { timeoutMs: 120_000, partial: true });
    vm.send('2\n');
    const r = await vm.waitExit(200_000);
    expect(r.output, vm.failMessage('the menu did not list the reset entry')).toMatch(/2:\s+factory reset \(wipes the data partition\)/);
    expect(r.output, vm.failMessage('not booted with stackboot.reset')).toMatch(/Kernel command line: .*stackboot\.reset/);
    expect(r.output, vm.failMessage('no reset')).toMatch(/stackboot: factory reset done: disk uppers wiped, the data partition \/dev\/vda3 emptied \(1 entries\)/);
    expect(r.output).toMatch(/DEMO: running stackboot demo 1/);
    expect(r.how).toBe('poweroff');
    const s = await readStore(resetImg);
    expect(s.events.filter((e) => e.event === 'reset').map((e) => e.reason)).toEqual([expect.stringMatching(/^factory reset \(stackboot\.reset on the kernel command line\): disk uppers wiped/)]);
    expect(await withPart(resetImg, 'sb-data', (v) => v.exists('/user-note'))).toBe(false);
  });

  itConcurrent('UEFI (EDK2) finds the ESP and starts the program `image --efi-boot` put at EFI/BOOT/BOOTAA64.EFI, as JetPack 5/6 starts L4TLauncher', async () => {
    // NVIDIA's launcher is not in Debian: the arm64 6.12 kernel (an EFI-stub PE program)
    // stands in for it, told apart from the partition's own 6.1 kernel by its version
    const k2 = T.kernel2;
    if (!k2) throw new Error('scripts/setup.sh prepares KERNEL2 for arm64');
    const demo = await demoStack('demo', 'arm64');
    const uefiImg = path.join(dir, 'sd-arm64-uefi.img');
    const r = await buildImage({ buildDir: demo.outDir, out: uefiImg, layout: 'sd', arch: 'arm64', cacheRoot: CACHE, efiBoot: k2.kernel, append: 'console=ttyAMA0', bmap: false });
    expect(r.efiBoot).toBe('EFI/BOOT/BOOTAA64.EFI');
    const vm = Vm.start({ target: T, firmware: UEFI_ARM64, initrd: '', disks: [{ file: uefiImg, bus: 'virtio' }], timeoutMs: 300_000, name: 'uefi-arm64' });
    // the program started by the firmware's boot manager, from the removable-media path
    await vm.waitFor(new RegExp(`Linux version ${k2.kver.replace(/[.+]/g, '\\$&')} `), 240_000);
    vm.kill();
    const out = (await vm.waitExit(10_000)).output;
    expect(out, vm.failMessage('not started by UEFI')).toMatch(/EFI stub: /);
    expect(out).not.toMatch(new RegExp(`Linux version ${T.kver.replace(/[.+]/g, '\\$&')} `));
  });
});
