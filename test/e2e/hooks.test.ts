/**
 * Scenario 9: the initramfs-tools and dracut flavors, built by the real tools and booted.
 *
 * For each flavor: a Debian 12 chroot made by mmdebstrap (cached under .cache/chroots,
 * see chroot.ts) with linux-image-amd64, busybox and initramfs-tools or dracut; the hook
 * rendered by `buildInitramfs`, installed with the commands of its own INSTALL file; the
 * initrd made by the real `mkinitramfs` / `dracut` in the chroot for the chroot's kernel;
 * then that kernel and initrd booted in QEMU (TCG) with a store disk holding the demo
 * stack, which must come up (`DEMO: running stackboot demo 1`) and power off. Verified
 * boot in both: the chroots have dmsetup and signify-openbsd, the hooks copy them in with
 * the release key (`--pub`), and the signed demo stack boots with its signature checked
 * and its layers opened through dm-verity. Stack kernels in both: the chroots have
 * kexec-tools, the hooks copy `kexec` in, and the same initrd, booted with a store whose
 * stack carries Debian 12's 6.12 kernel, kexecs into it (the stack's own initrd is the
 * second stage: the chroot's 6.1 is the first).
 *
 * Speed: mkinitramfs runs with MODULES=list (only what the hooks ask for, so the boot also
 * proves that the stackboot hook adds every module it needs); dracut with its default
 * module selection and --no-hostonly (a chroot is not the machine it builds for), its
 * image compressed with `gzip -1`: dracut's own choice in this chroot is `gzip -9`, which
 * took about 40 s of the 55 s dracut run on the ~115 MiB cpio (no zstd or pigz in the
 * chroot); the kernel still unpacks a gzip initrd, and the image is ~10 % bigger.
 */
import { describe, expect, beforeAll, afterAll, afterEach } from 'vitest';
import { itConcurrent } from './concurrent.js';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { Vm, useVmCleanup } from './qemu.js';
import { demoStack, storeDisk, scratch, target } from './fixtures.js';
import { kexecFixture } from './kernel-fixtures.js';
import { escapeRe } from './inspect.js';
import { signBytes, writeKeyPair } from '../../src/format/signature.js';
import { chroot, chrootKernel, inChroot, prefetchChroots } from './chroot.js';
import { HOOK_CHROOTS, mkinitramfs, renderAndInstall } from './hookinstall.js';

useVmCleanup(afterEach);

/** The boot config baked into both hooks: one virtio disk, no settle wait, quick fallback. */
const SETTINGS: Array<[string, string]> = [
  ['STORES', 'vda'],
  ['DEVICE_SETTLE', '0'],
  ['ON_FAIL_DELAY', '1'],
];

/** A copy of a build output signed with PRIVATE_KEY (the shared build stays unsigned), as slot a of a new store disk. */
async function signedDisk(work: string, name: string, outDir: string, privateKey: string, storeMiB?: number): Promise<string> {
  const build = path.join(work, `${name}-signed`);
  await fs.rm(build, { recursive: true, force: true });
  await fs.cp(outDir, build, { recursive: true });
  await fs.writeFile(path.join(build, 'manifest.sig'), await signBytes(await fs.readFile(path.join(build, 'manifest')), privateKey));
  const file = path.join(work, `${name}.img`);
  await storeDisk({ file, slots: { a: { buildDir: build, status: 'good' } }, current: 'a', storeMiB });
  return file;
}

type Flavour = 'initramfs-tools' | 'dracut';
interface FlavourDisks {
  file: string;
  kexecFile: string;
}

/**
 * The demo stack, signed with a new release key, on a store disk; and the demo with
 * Debian 12's 6.12 kernel as its own (kernel-fixtures.ts), signed with the same key, on
 * another. A pair for each flavour: their tests boot at the same time (itConcurrent), and
 * a boot writes its store.
 */
async function demoDisks(work: string): Promise<{ disks: Record<Flavour, FlavourDisks>; kver2: string; pub: string }> {
  const [demo, kx] = await Promise.all([demoStack('demo', 'amd64'), kexecFixture('amd64')]);
  const keys = await writeKeyPair(path.join(work, 'keys', 'release'));
  const pair = async (f: Flavour): Promise<FlavourDisks> => ({
    file: await signedDisk(work, `${f}-store`, demo.outDir, keys.privateKey),
    kexecFile: await signedDisk(work, `${f}-kexec-store`, kx.v2.outDir, keys.privateKey, 320),
  });
  const disks = { 'initramfs-tools': await pair('initramfs-tools'), dracut: await pair('dracut') };
  return { disks, kver2: kx.T.kernel2!.kver, pub: keys.publicKey };
}

/**
 * Boots the flavour's kernel and initrd with a store whose stack carries the 6.12 kernel:
 * the hook must kexec into it (the stack's own initrd goes on as the second stage, without
 * counting a try) and the stack must run on it, its modules loaded.
 */
async function expectKexec(o: { name: string; kernel: string; initrd: string; disk: string; append: string; logFile: string; kver: string; kver2: string }): Promise<void> {
  const t = await target('amd64');
  const vm = Vm.start({ target: t, kernel: o.kernel, initrd: o.initrd, disks: [{ file: o.disk, bus: 'virtio' }], append: o.append, memoryMiB: 768, timeoutMs: 240_000, logFile: o.logFile, name: o.name });
  let out: string;
  try {
    await vm.waitFor(/^DEMO: module squashfs loaded/m, { timeoutMs: 230_000 });
    out = (await vm.waitExit(60_000)).output;
  } catch (e) {
    throw new Error(`${o.name}: the stack's kernel did not come up: ${(e as Error).message}`);
  }
  const esc = escapeRe;
  expect(out, 'the first stage did not load the stack kernel' + tail(out)).toMatch(new RegExp(`slot a runs kernel ${esc(o.kver2)}, not ${esc(o.kver)}: loading it for kexec`));
  expect(out, 'no second stage' + tail(out)).toMatch(/second stage of slot a \(kexec\): not counting another try/);
  expect(out, 'uname -r in the stack' + tail(out)).toMatch(new RegExp(`^DEMO: kernel ${esc(o.kver2)}$`, 'm'));
  expect(out).not.toMatch(/Kernel panic|ALERT!|Dropping to a shell|dracut: FATAL/);
}

/** The boot checked the signature and opened every layer through dm-verity. */
function expectVerified(out: string): void {
  expect(out, 'no signature check' + tail(out)).toMatch(/stackboot: manifest signature verified with release\.pub/);
  expect(out, 'layers not opened through dm-verity' + tail(out)).toMatch(/stackboot: layers opened through dm-verity: sbv-a0-[0-9a-f]{12} sbv-a1-[0-9a-f]{12}/);
}

/** Boots kernel + initrd with the store disk until the demo powers off; returns the console. */
async function bootDemo(o: { name: string; kernel: string; initrd: string; disk: string; append: string; logFile: string }): Promise<{ out: string; how: string; ms: number }> {
  const t = await target('amd64');
  const vm = Vm.start({
    target: t,
    kernel: o.kernel,
    initrd: o.initrd,
    disks: [{ file: o.disk, bus: 'virtio' }],
    append: o.append,
    memoryMiB: 768,
    timeoutMs: 150_000,
    logFile: o.logFile,
    name: o.name,
  });
  try {
    await vm.waitFor(/DEMO: running stackboot demo 1/, { timeoutMs: 140_000 });
  } catch (e) {
    throw new Error(`${o.name}: the demo stack did not come up: ${(e as Error).message}`);
  }
  const exit = await vm.waitExit(60_000);
  return { out: exit.output, how: exit.how, ms: exit.durationMs };
}

function tail(out: string, n = 60): string {
  return `\n----- console -----\n${out.split('\n').slice(-n).join('\n')}`;
}

describe('scenario 9: initramfs-tools and dracut hooks, built by the real tools, boot the stack', () => {
  let disks: Record<Flavour, FlavourDisks>;
  let kver2: string;
  let pub: string;
  let work: string;
  let prefetched: (() => Promise<void>) | undefined;
  beforeAll(async () => {
    // both chroots, in the background: when cold, the dracut one is made while the
    // initramfs-tools test builds and boots
    prefetched = prefetchChroots([HOOK_CHROOTS['initramfs-tools'], HOOK_CHROOTS.dracut]);
    work = await scratch('hooks');
    ({ disks, kver2, pub } = await demoDisks(work));
  });
  afterAll(async () => {
    await prefetched?.();
    // keep the console logs (*.log) for a look after a failure; drop the disk and hooks
    if (!work) return;
    for (const f of await fs.readdir(work)) if (!f.endsWith('.log')) await fs.rm(path.join(work, f), { recursive: true, force: true });
  });

  itConcurrent('initramfs-tools: mkinitramfs with the installed hook; boot=stackboot boots the demo stack, and kexecs into a stack kernel', async () => {
    const c = await chroot(HOOK_CHROOTS['initramfs-tools']);
    const k = await chrootKernel(c);
    const { rebuild } = await renderAndInstall('initramfs-tools', c, work, SETTINGS, [pub]);
    expect(rebuild).toMatch(/^update-initramfs /);

    await mkinitramfs(c, k.kver);
    const initrd = path.join(c.root, 'tmp/sb-initrd.img');
    // what went in: the boot script, the core, the config, busybox, the modules; and the
    // stack is mounted from mountroot, never from init-bottom (after udev moved /dev)
    const list = (await inChroot(c, ['lsinitramfs', '/tmp/sb-initrd.img'])).stdout.split('\n');
    // (merged /usr: the initrd's /lib and /bin are symlinks into usr/)
    const has = (re: RegExp) => list.some((l) => re.test(l));
    for (const re of [/^scripts\/stackboot$/, /^(usr\/)?lib\/stackboot\/stackboot\.sh$/, /^(usr\/)?lib\/stackboot\/store\.sh$/, /^etc\/stackboot\/boot\.conf$/, /^(usr\/)?bin\/busybox$/, /^(usr\/)?s?bin\/dmsetup$/, /^(usr\/)?bin\/signify-openbsd$/, /^etc\/stackboot\/keys\/release\.signify$/]) {
      expect(has(re), `${re} missing from the initrd`).toBe(true);
    }
    for (const m of ['overlay', 'squashfs', 'loop', 'virtio_blk', 'ext4', 'dm-verity']) {
      expect(has(new RegExp(`/${m}\\.ko`)), `module ${m} missing`).toBe(true);
    }
    expect(list.filter((l) => /scripts\/init-bottom\/.*stackboot/.test(l))).toEqual([]);
    expect(await fs.readFile(path.join(c.root, 'etc/initramfs-tools/scripts/stackboot'), 'utf8')).toMatch(/^mountroot\(\)/m);

    const r = await bootDemo({
      name: 'initramfs-tools',
      kernel: k.vmlinuz,
      initrd,
      disk: disks['initramfs-tools'].file,
      append: 'boot=stackboot',
      logFile: path.join(work, 'initramfs-tools.log'),
    });
    const out = r.out;
    expect(out, 'stackboot did not boot slot a' + tail(out)).toMatch(/stackboot: booting slot a /);
    expect(out).toMatch(/DEMO: running stackboot demo 1/);
    expectVerified(out);
    // order on the console: mount phase -> stackboot -> init-bottom -> the stack's init
    const iMount = out.indexOf('Mounting root file system');
    const iBoot = out.indexOf('stackboot: booting slot a');
    const iBottom = out.indexOf('Running /scripts/init-bottom');
    const iDemo = out.indexOf('DEMO: running stackboot demo 1');
    expect(iMount, 'no "Mounting root file system" from initramfs-tools' + tail(out)).toBeGreaterThanOrEqual(0);
    expect(iBottom, 'no init-bottom phase' + tail(out)).toBeGreaterThan(0);
    expect(iMount).toBeLessThan(iBoot);
    expect(iBoot, 'the stack was mounted after init-bottom').toBeLessThan(iBottom);
    expect(iBottom).toBeLessThan(iDemo);
    expect(out).not.toMatch(/Kernel panic|ALERT!|Dropping to a shell/);
    expect(r.how, `VM ended by ${r.how}` + tail(out)).toBe('poweroff');
    expect(list.some((l) => /^(usr\/)?s?bin\/kexec$/.test(l)), 'kexec missing from the initrd').toBe(true);
    await expectKexec({ name: 'initramfs-tools-kexec', kernel: k.vmlinuz, initrd, disk: disks['initramfs-tools'].kexecFile, append: 'boot=stackboot', logFile: path.join(work, 'initramfs-tools-kexec.log'), kver: k.kver, kver2 });
  });

  itConcurrent('dracut: dracut with modules.d/90stackboot; root=stackboot boots the demo stack, the mount hook is safe twice, and kexecs into a stack kernel', async () => {
    const c = await chroot(HOOK_CHROOTS.dracut);
    const k = await chrootKernel(c);
    const { rebuild } = await renderAndInstall('dracut', c, work, SETTINGS, [pub]);
    expect(rebuild).toMatch(/^dracut /);

    // a test probe (not part of stackboot): a pre-pivot hook that sources the stackboot
    // mount hook a second time after it mounted the root, and reports whether that
    // changed anything (it must not: no new mounts, $NEWROOT unchanged)
    const probe = path.join(c.root, 'usr/lib/dracut/modules.d/99sbtwice');
    await fs.rm(probe, { recursive: true, force: true });
    await fs.mkdir(probe, { recursive: true });
    await fs.writeFile(
      path.join(probe, 'module-setup.sh'),
      '#!/bin/bash\ncheck() { return 255; }\ndepends() { echo stackboot; }\ninstall() { inst_hook pre-pivot 50 "$moddir/twice.sh"; }\n',
      { mode: 0o755 },
    );
    await fs.writeFile(
      path.join(probe, 'twice.sh'),
      [
        '#!/bin/sh',
        'sbt_before=$(wc -l </proc/mounts)',
        'for sbt_f in "$hookdir"/mount/*stackboot*.sh; do . "$sbt_f"; done',
        'sbt_after=$(wc -l </proc/mounts)',
        'if [ "$sbt_before" = "$sbt_after" ] && ismounted "$NEWROOT"; then',
        '  echo "SBTWICE: ok mounts=$sbt_after" >/dev/console',
        'else',
        '  echo "SBTWICE: changed mounts $sbt_before -> $sbt_after" >/dev/console',
        'fi',
        '',
      ].join('\n'),
      { mode: 0o755 },
    );

    await inChroot(c, [
      'dracut',
      '--force',
      '--no-hostonly',
      '--no-early-microcode',
      '--kver',
      k.kver,
      // dracut's default module selection plus dracut.conf.d/stackboot.conf (adds
      // stackboot, omits systemd), and the test probe
      '--add',
      'sbtwice',
      // fast gzip instead of dracut's gzip -9 (see the top of this file)
      '--compress=gzip -1',
      '/tmp/sb-initrd.img',
    ], { timeout: 300_000 });
    const initrd = path.join(c.root, 'tmp/sb-initrd.img');
    const list = (await inChroot(c, ['lsinitrd', '/tmp/sb-initrd.img'])).stdout;
    expect(list).toMatch(/lib\/dracut\/hooks\/mount\/99-mount-stackboot\.sh/);
    expect(list).toMatch(/lib\/dracut\/hooks\/cmdline\/30-parse-stackboot\.sh/);
    expect(list).toMatch(/lib\/stackboot\/stackboot\.sh/);
    expect(list).toMatch(/etc\/stackboot\/boot\.conf/);
    expect(list).toMatch(/etc\/stackboot\/keys\/release\.signify/);
    expect(list).toMatch(/bin\/signify-openbsd/);
    expect(list).toMatch(/bin\/dmsetup/);

    const r = await bootDemo({
      name: 'dracut',
      kernel: k.vmlinuz,
      initrd,
      disk: disks.dracut.file,
      append: 'root=stackboot rd.shell=0 rd.emergency=reboot',
      logFile: path.join(work, 'dracut.log'),
    });
    const out = r.out;
    expect(out, 'stackboot did not boot slot a' + tail(out)).toMatch(/stackboot: booting slot a /);
    expect(out).toMatch(/DEMO: running stackboot demo 1/);
    expectVerified(out);
    expect(out, 'the mount hook run twice changed something' + tail(out)).toMatch(/SBTWICE: ok/);
    // each log line shows twice (stderr, and the kernel log with a timestamp): count one kind
    expect(out.match(/^stackboot: booting slot a /gm)?.length, 'the stack was mounted twice').toBe(1);
    expect(out.match(/^stackboot: trying slot /gm)?.length, 'the stack was chosen twice').toBe(1);
    expect(out).not.toMatch(/Kernel panic|Could not boot|Don't know how to handle|dracut: FATAL|Can't mount root/);
    expect(r.how, `VM ended by ${r.how}` + tail(out)).toBe('poweroff');
    expect(list).toMatch(/bin\/kexec\b/);
    await expectKexec({ name: 'dracut-kexec', kernel: k.vmlinuz, initrd, disk: disks.dracut.kexecFile, append: 'root=stackboot rd.shell=0 rd.emergency=reboot', logFile: path.join(work, 'dracut-kexec.log'), kver: k.kver, kver2 });
  });
});
