/**
 * A real Debian 12 root with systemd as init, booted by the standalone initrd (amd64,
 * QEMU TCG, 1 GiB): slot b holds the images/debian stack as pending, slot a the demo as
 * good. systemd must reach multi-user.target, stackboot-health.service must run
 * `stackboot-node health` and mark the stack good; the host then reads the store.
 *
 * A small test-only layer on top adds stackboot-e2e-report.service (after the health
 * unit): it prints `E2E:` lines (health result, mounts, store state, status, the watchdog)
 * and powers off. That first boot has QEMU's i6300esb watchdog and WATCHDOG=120: the hook
 * arms it for the pending stack, systemd takes it over (RuntimeWatchdogSec=60 in the
 * layer), and mark-good leaves it to systemd. The console also shows what systemd says about the store and the loop devices at
 * shutdown (DESIGN.md, hard lessons); the test logs those lines. systemd cannot release
 * them itself; it hands the last unmounts back to the initramfs's shutdown.sh
 * (/run/initramfs/shutdown), which must report everything released.
 *
 * The same root booted by initramfs-tools instead (the real mkinitramfs in a Debian chroot,
 * with the stackboot hook installed from its INSTALL file): there /run is noexec, so the
 * hook puts a tmpfs of its own on /run/initramfs and ships a dynamic busybox with its
 * libraries; the hand-back must still run at poweroff and release everything.
 *
 * And booted by a dracut initrd (the real dracut in a Debian chroot, the stackboot module
 * installed from its INSTALL file): systemd reaches the report with every layer a
 * dm-verity device, the store read-only, and the hand-back takes them down at poweroff
 * (images/debian has no dracut, so no dracut-shutdown.service would ever fill
 * /run/initramfs).
 *
 * The Debian base comes from images/debian/prepare.sh (mmdebstrap; cached after the first
 * run). The test is skipped only when that script says the Debian mirror is unreachable
 * (exit code 3); any other failure fails the test.
 */
import { describe, expect, beforeAll, afterAll, afterEach } from 'vitest';
import { itConcurrent } from './concurrent.js';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { run } from '../../src/sys/exec.js';
import { loadRecipe } from '../../src/build/recipe.js';
import { buildStack, type BuildResult } from '../../src/build/stack.js';
import { REPO, WORK, demoStack, storeDisk, initrd, target, scratch } from './fixtures.js';
import { bootOnce, useVmCleanup, type BootResult } from './qemu.js';
import { readStore, tailOf } from './inspect.js';
import { chroot, chrootKernel, inChroot, prefetchChroots } from './chroot.js';
import { HOOK_CHROOTS, mkinitramfs, renderAndInstall } from './hookinstall.js';

useVmCleanup(afterEach);

const REPORT_UNIT = `[Unit]
Description=stackboot e2e: report the boot state, then power off
After=stackboot-health.service multi-user.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/stackboot-e2e-report
StandardOutput=journal+console
StandardError=journal+console
`;

const REPORT_SCRIPT = `#!/bin/sh
# test only: what the host cannot see after poweroff
say() { echo "E2E: $*"; }
say "health result=$(systemctl show -p Result --value stackboot-health.service) state=$(systemctl is-active stackboot-health.service)"
say "pid1=$(cat /proc/1/comm) root=$(findmnt -n -o FSTYPE /)"
store=$(sed -n 's/^store_mnt=//p' /run/stackboot/booted)
say "store=$store options=$(findmnt -n -o OPTIONS "$store")"
say "curl=$(curl --version | head -n 1 | cut -d' ' -f1-2)"
say "uptime=$(cut -d' ' -f1 /proc/uptime)"
say "watchdog state=$(cat /sys/class/watchdog/watchdog0/state 2>/dev/null || echo none) timeout=$(cat /sys/class/watchdog/watchdog0/timeout 2>/dev/null || echo none) booted=$(sed -n 's/^watchdog=//p' /run/stackboot/booted)"
while IFS= read -r l; do say "state $l"; done <"$store/state"
stackboot-node status | while IFS= read -r l; do say "status $l"; done
losetup -n -l -O NAME,BACK-FILE 2>/dev/null | while IFS= read -r l; do say "loop $l"; done
failed=$(systemctl list-units --state=failed --plain --no-legend --no-pager | cut -d' ' -f1 | tr '\\n' ' ')
say "failed units: \${failed:-none}"
say "report done"
systemctl poweroff --no-block
`;

/** The console without terminal escapes (systemd colours some lines, e.g. "Welcome to"). */
const plain = (s: string): string => s.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '');

/** The test-only layer: the report unit, enabled. */
async function reportLayer(dir: string): Promise<string> {
  const root = path.join(dir, 'e2e-layer');
  await fs.rm(root, { recursive: true, force: true });
  await fs.mkdir(path.join(root, 'usr/local/sbin'), { recursive: true });
  await fs.mkdir(path.join(root, 'etc/systemd/system/multi-user.target.wants'), { recursive: true });
  await fs.writeFile(path.join(root, 'usr/local/sbin/stackboot-e2e-report'), REPORT_SCRIPT, { mode: 0o755 });
  await fs.writeFile(path.join(root, 'etc/systemd/system/stackboot-e2e-report.service'), REPORT_UNIT, { mode: 0o644 });
  // systemd feeds the hardware watchdog once it runs (the boot with WATCHDOG= below: the hook's watchdog becomes systemd's)
  await fs.mkdir(path.join(root, 'etc/systemd/system.conf.d'), { recursive: true });
  await fs.writeFile(path.join(root, 'etc/systemd/system.conf.d/stackboot-e2e-watchdog.conf'), '[Manager]\nRuntimeWatchdogSec=60\n', { mode: 0o644 });
  await fs.symlink('../stackboot-e2e-report.service', path.join(root, 'etc/systemd/system/multi-user.target.wants/stackboot-e2e-report.service'));
  // stable mtimes, so the layer's cache key does not change between runs
  for (const p of ['usr/local/sbin/stackboot-e2e-report', 'etc/systemd/system/stackboot-e2e-report.service', 'etc/systemd/system.conf.d/stackboot-e2e-watchdog.conf']) await fs.utimes(path.join(root, p), 0, 0);
  return root;
}

/** Runs images/debian/prepare.sh; null when ready, else the reason the mirror cannot be used. */
async function prepareDebian(): Promise<string | null> {
  const r = await run('bash', [path.join(REPO, 'images/debian/prepare.sh'), '--arch', 'amd64'], { reject: false });
  if (r.exitCode === 3) return `the Debian mirror is unreachable, so the Debian base cannot be built: ${r.stderr.trim().split('\n').pop()}`;
  if (r.exitCode !== 0) throw new Error(`images/debian/prepare.sh failed (exit ${r.exitCode}):\n${(r.stdout + r.stderr).trim().split('\n').slice(-20).join('\n')}`);
  return null;
}

/** One boot of the Debian root on its store disk (1 GiB, systemd's status lines on), until it powers off. */
function bootDebian(o: { target: Awaited<ReturnType<typeof target>>; kernel?: string; initrd: string; img: string; append: string; name: string; qemuArgs?: string[] }): Promise<BootResult> {
  return bootOnce({
    qemuArgs: o.qemuArgs,
    target: o.target,
    kernel: o.kernel,
    initrd: o.initrd,
    disks: [{ file: o.img, bus: 'virtio' }],
    memoryMiB: 1024,
    // kernel messages at warning and above; systemd's status lines stay on
    append: `${o.append} loglevel=4 systemd.show_status=1`.trim(),
    timeoutMs: 300_000,
    name: o.name,
  });
}

/**
 * The hand-back at poweroff (handback.sh): prepared by the hook, run by systemd-shutdown
 * (pivoted into /run/initramfs, shutdown.sh took the old root down, loops and store
 * included), and systemd left the /run/sb mounts to it (x-initrd.mount in utab): no
 * failed unmounts, no busy loop devices.
 */
function expectHandback(r: BootResult, out: string): void {
  expect(out, tailOf(r, 'no hand-back prepared')).toMatch(/stackboot: shutdown hand-back ready \(\/run\/initramfs\/shutdown\)/);
  expect(out, tailOf(r, 'the hand-back did not run')).toMatch(/stackboot: shutdown: old root detached/);
  expect(out, tailOf(r, 'the hand-back left mounts or loops held')).toMatch(/stackboot: shutdown: clean: every mount released, \d+ loop device\(s\) detached here; poweroff/);
  expect(out.slice(out.indexOf('E2E: report done'))).not.toMatch(/Failed unmounting .*run-sb|Failed to unmount \/run\/sb|Could not detach loopback/);
  expect(out).not.toMatch(/Kernel panic/);
  expect(r.how, tailOf(r, `VM ended by ${r.how}`)).toBe('poweroff');
}

/** boot.conf for the initramfs-tools and dracut boots (renderAndInstall). */
const HOOK_SETTINGS: [string, string][] = [
  ['STORES', 'vda'],
  ['DEVICE_SETTLE', '0'],
  ['ON_FAIL_DELAY', '1'],
  ['INIT', '/sbin/init'],
];

let unreachable: string | null = null;
let debian: BuildResult;
let demo: BuildResult;
let dir: string;
let prefetched: (() => Promise<void>) | undefined;

beforeAll(async () => {
  // the initramfs-tools and dracut chroots (for the second and third tests), in the
  // background: when cold, they are made while the stacks are built and the first test boots
  prefetched = prefetchChroots([HOOK_CHROOTS['initramfs-tools'], HOOK_CHROOTS.dracut]);
  dir = await scratch('debian');
  unreachable = await prepareDebian();
  if (unreachable) return;
  const recipe = await loadRecipe(path.join(REPO, 'images/debian'), { arch: 'amd64' });
  recipe.layers.push({ name: 'e2e', source: { type: 'dir', path: await reportLayer(dir) }, owner: 'root', devices: false });
  [debian, demo] = await Promise.all([
    buildStack(recipe, {
      outDir: path.join(WORK, 'stacks', 'debian-e2e-amd64'),
      cacheDir: path.join(WORK, 'layer-cache'),
      epoch: 0,
      arch: 'amd64',
      uid: process.getuid?.(),
      progress: () => {},
    }),
    demoStack('demo'),
  ]);
});

afterAll(async () => {
  await prefetched?.();
});

describe('a real Debian 12 root with systemd (amd64, QEMU)', () => {
  itConcurrent('boots the pending Debian stack, reaches multi-user.target, and the health unit marks it good', async (ctx) => {
    if (unreachable) ctx.skip(unreachable);
    const T = await target('amd64');
    const img = path.join(dir, 'store.img');
    await storeDisk({
      file: img,
      storeMiB: 192,
      slots: { a: { buildDir: demo.outDir, status: 'good' }, b: { buildDir: debian.outDir, status: 'pending', tries: 3 } },
      current: 'a',
    });
    // with the board's watchdog (QEMU's i6300esb): the hook arms it for the pending stack, systemd (RuntimeWatchdogSec) takes it over
    const ird = await initrd(path.join(dir, 'initrd.img'), { STORES: 'vda', INIT: '/sbin/init', DEVICE_TIMEOUT: '5', WATCHDOG: '120' }, 'amd64', ['i6300esb']);

    const r = await bootDebian({ target: T, initrd: ird, img, append: '', name: 'debian', qemuArgs: ['-device', 'i6300esb', '-action', 'watchdog=reset'] });
    const out = plain(r.output);
    const t = (re: RegExp): string => {
      const m = re.exec(out);
      return m ? `${m[1]} s` : 'n/a';
    };

    // the hook chose slot b (pending, one try used) and handed over to systemd
    expect(out, tailOf(r, 'the hook did not boot slot b')).toMatch(/stackboot: booting slot b /);
    expect(out, tailOf(r, 'systemd did not start')).toMatch(/Welcome to Debian GNU\/Linux 12 \(bookworm\)/);
    expect(out, tailOf(r, 'multi-user.target not reached')).toMatch(/Reached target .*multi-user\.target|Reached target .*Multi-User System/);
    // the health unit ran and succeeded (required checks: overlay root, store mounted ro)
    expect(out, tailOf(r, 'no health checks ran')).toMatch(/health: required checks passed/);
    expect(out, tailOf(r, 'health unit did not succeed')).toMatch(/E2E: health result=success state=active$/m);
    expect(out).toMatch(/E2E: pid1=systemd root=overlay$/m);
    // the store is read-only after the hook's last write and after mark-good
    expect(out, tailOf(r, 'store not read-only')).toMatch(/E2E: store=\/run\/sb\/s0 options=ro[,\n]/m);
    // the app layer (installed with apt over the base) is there
    expect(out).toMatch(/E2E: curl=curl \d/m);
    expect(out).toMatch(/E2E: state b good /m);
    expect(out).toMatch(/E2E: status booted: +slot b, stack \w+ \(good\)/m);
    expect(out).toMatch(/E2E: report done$/m);
    expect(r.how, tailOf(r, `VM ended by ${r.how}`)).toBe('poweroff');
    // the watchdog: armed by the hook for the pending stack, held and fed by systemd (its
    // RuntimeWatchdogSec=60), so mark-good left it to systemd and the record forgot it
    expect(out, tailOf(r, 'the hook arms the watchdog')).toMatch(/stackboot: watchdog \/dev\/watchdog armed: slot b has 120 s to be marked good/);
    expect(out, tailOf(r, 'mark-good leaves it to systemd')).toMatch(/watchdog \/dev\/watchdog is held by another process \(systemd's RuntimeWatchdogSec\?\), which feeds it/);
    expect(out, tailOf(r, "systemd's timeout")).toMatch(/E2E: watchdog state=active timeout=60 booted=$/m);

    // what systemd says at shutdown about the store, the layers' loop devices and the overlay
    // (the report unit writes through the journal to the console: its lines carry a
    // "[ uptime] stackboot-e2e-report[pid]: " prefix)
    const shutdown = out.slice(out.indexOf('E2E: report done'));
    const notes = shutdown.split('\n').filter((l) => /unmount|loop|detach|\/run\/sb|remount|Failed/i.test(l));
    const failedUnits = /E2E: failed units: (.*)$/m.exec(out)?.[1];
    console.log(
      [
        `debian boot: ${Math.round(r.durationMs / 1000)} s in all; health checks started at guest uptime ${t(/\[\s*(\d+\.\d+)\] stackboot-node\[\d+\]: stackboot-node: health \(/)}` +
          `, report at ${/E2E: uptime=(\S+)/m.exec(out)?.[1] ?? '?'} s; failed units: ${failedUnits}`,
        'loop devices:',
        ...out.split('\n').filter((l) => l.includes('E2E: loop ')),
        'shutdown lines about the store/loops/overlay:',
        ...(notes.length ? notes : ['(none)']),
        'the hand-back:',
        ...out.split('\n').filter((l) => l.includes('stackboot: shutdown')),
      ].join('\n'),
    );
    // a clean poweroff through the hand-back, and the node kept the state consistent
    expectHandback(r, out);

    // the host's view: slot b is good and current, slot a is kept as the fallback
    const s = await readStore(img);
    expect(s.state, s.stateError).toEqual({
      current: 'b',
      slots: { a: { status: 'good', stack: demo.stackId }, b: { status: 'good', stack: debian.stackId } },
    });
    const ev = s.events.map((e) => e.event);
    expect(ev).toEqual(expect.arrayContaining(['try', 'boot', 'good']));
    expect(s.events.find((e) => e.event === 'good')?.slot).toBe('b');
    expect(s.stateNew).toBe(false);
  });

  itConcurrent('initramfs-tools: the root booted by mkinitramfs\'s initrd; the hand-back runs at poweroff though /run is noexec', async (ctx) => {
    if (unreachable) ctx.skip(unreachable);
    const T = await target('amd64');
    const c = await chroot(HOOK_CHROOTS['initramfs-tools']);
    const k = await chrootKernel(c);
    await renderAndInstall('initramfs-tools', c, dir, HOOK_SETTINGS);
    const ird = path.join(c.root, await mkinitramfs(c, k.kver));
    const img = path.join(dir, 'store-itools.img');
    await storeDisk({ file: img, storeMiB: 192, slots: { a: { buildDir: debian.outDir, status: 'good' } }, current: 'a' });

    const r = await bootDebian({ target: T, kernel: k.vmlinuz, initrd: ird, img, append: 'boot=stackboot', name: 'debian-initramfs-tools' });
    const out = plain(r.output);
    console.log(['initramfs-tools boot, the hand-back:', ...out.split('\n').filter((l) => /stackboot: (shutdown|.*hand-back|.*noexec)/.test(l))].join('\n'));
    expect(out, tailOf(r, 'the hook did not boot slot a')).toMatch(/stackboot: booting slot a /);
    expect(out, tailOf(r, 'systemd did not start')).toMatch(/E2E: pid1=systemd root=overlay$/m);
    expect(out, tailOf(r, 'the report did not run')).toMatch(/E2E: report done$/m);
    // initramfs-tools' /run is noexec: the hook gave /run/initramfs a tmpfs of its own
    expect(out, tailOf(r, 'no tmpfs for /run/initramfs')).toMatch(/stackboot: \/run is noexec: \/run\/initramfs is a tmpfs of its own/);
    // the chroot has dmsetup: the layers are dm-verity devices, and the hand-back still
    // frees everything (each device goes at its last close: handback.sh)
    expect(out, tailOf(r, 'the layers were not opened through dm-verity')).toMatch(/stackboot: layers opened through dm-verity: sbv-a0-/);
    // systemd-shutdown ran it (Debian's dynamic busybox, with the libraries the hook listed)
    expectHandback(r, out);
  });

  itConcurrent('dracut: the root booted by dracut\'s initrd, every layer a dm-verity device, the store read-only; the hand-back runs at poweroff', async (ctx) => {
    if (unreachable) ctx.skip(unreachable);
    const T = await target('amd64');
    const c = await chroot(HOOK_CHROOTS.dracut);
    const k = await chrootKernel(c);
    await renderAndInstall('dracut', c, dir, HOOK_SETTINGS);
    // dracut's default modules plus dracut.conf.d/stackboot.conf; a fast gzip
    await inChroot(c, ['dracut', '--force', '--no-hostonly', '--no-early-microcode', '--kver', k.kver, '--compress=gzip -1', '/tmp/sb-initrd-debian.img'], { timeout: 300_000 });
    const ird = path.join(c.root, 'tmp/sb-initrd-debian.img');
    const img = path.join(dir, 'store-dracut.img');
    await storeDisk({ file: img, storeMiB: 192, slots: { a: { buildDir: debian.outDir, status: 'good' } }, current: 'a' });
    try {
      const r = await bootDebian({ target: T, kernel: k.vmlinuz, initrd: ird, img, append: 'root=stackboot rd.shell=0 rd.emergency=reboot', name: 'debian-dracut' });
      const out = plain(r.output);
      console.log(['dracut boot, the hand-back:', ...out.split('\n').filter((l) => /stackboot: (shutdown|.*hand-back|.*noexec)|run\/sb|loopback|detach DM/.test(l))].join('\n'));
      expect(out, tailOf(r, 'the hook did not boot slot a')).toMatch(/stackboot: booting slot a /);
      expect(out, tailOf(r, 'the layers were not opened through dm-verity')).toMatch(/stackboot: layers opened through dm-verity: sbv-a0-/);
      expect(out, tailOf(r, 'systemd did not start')).toMatch(/E2E: pid1=systemd root=overlay$/m);
      expect(out, tailOf(r, 'the store is not read-only while the root runs')).toMatch(/E2E: store=\/run\/sb\/s0 options=ro[,\n]/);
      expect(out, tailOf(r, 'the report did not run')).toMatch(/E2E: report done$/m);
      // systemd-shutdown ran it (Debian's dynamic busybox, with the libraries the module listed)
      expectHandback(r, out);
      expect(out, tailOf(r, 'no poweroff')).toMatch(/reboot: Power down/);
      const s = await readStore(img);
      expect(s.state?.slots.a).toEqual({ status: 'good', stack: debian.stackId });
    } finally {
      await fs.rm(ird, { force: true });
    }
  });
});
