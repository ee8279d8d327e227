/**
 * The shutdown hand-back (initramfs/handback.sh) on the host, under busybox sh with a fake
 * root: which roots get it, and what /run/initramfs holds (a dynamic binary with the
 * libraries sb_handback_libs lists runs there alone, chrooted). shutdown.sh itself detaches
 * /oldroot and reboots, so it runs only in QEMU (test/e2e/debian.test.ts, systemd
 * shutting a real Debian root down through it).
 */
import { describe, expect, it } from 'vitest';
import { existsSync, lstatSync, mkdirSync, readFileSync, readlinkSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fakeRoots, LIB } from './harness.js';

/** a fresh fake root, cleaned up after the test */
const root = fakeRoots();

/** A new root whose /sbin/init is systemd, as Debian links it. */
function systemdRoot(nr: string): string {
  mkdirSync(join(nr, 'sbin'), { recursive: true });
  mkdirSync(join(nr, 'lib/systemd'), { recursive: true });
  writeFileSync(join(nr, 'lib/systemd/systemd'), '');
  symlinkSync('/lib/systemd/systemd', join(nr, 'sbin/init'));
  return nr;
}

describe('sb_handback_wanted', () => {
  it('is true for a systemd init (Debian links /sbin/init to it), false for others', async () => {
    const r = root();
    const nr = systemdRoot(r.newRoot);
    const want = async (init: string) => (await r.sh(`SB_INIT=${init}; sb_handback_wanted "$SB_T/root" && echo YES || echo NO`)).out.trim();
    expect(await want('/sbin/init')).toBe('YES');
    expect(await want('/lib/systemd/systemd')).toBe('YES');
    // busybox init (the demo) and a plain file
    symlinkSync('../bin/busybox', join(nr, 'sbin/bbinit'));
    writeFileSync(join(nr, 'sbin/myinit'), '#!/bin/sh\n');
    expect(await want('/sbin/bbinit')).toBe('NO');
    expect(await want('/sbin/myinit')).toBe('NO');
    expect(await want('/sbin/missing')).toBe('NO');
  });
});

describe('sb_handback_prepare', () => {
  it('fills RUN/initramfs: busybox, its applets, log.sh, the mount points, an executable shutdown', async () => {
    const r = root();
    const bb = join(r.dir, 'busybox');
    writeFileSync(bb, 'not really busybox');
    const res = await r.sh(`sb_handback_prepare "$SB_T/run" "$SB_T/busybox"; echo RC=$?`);
    expect(res.out).toContain('RC=0');
    const dir = join(r.runDir, 'initramfs');
    expect(readFileSync(join(dir, 'bin/busybox'), 'utf8')).toBe('not really busybox');
    expect(statSync(join(dir, 'bin/busybox')).mode & 0o111).toBe(0o111);
    for (const a of ['sh', 'umount', 'losetup', 'reboot', 'poweroff', 'halt', 'sync']) expect(readlinkSync(join(dir, 'bin', a))).toBe('busybox');
    for (const d of ['dev', 'proc', 'sys', 'run', 'oldroot']) expect(lstatSync(join(dir, d)).isDirectory()).toBe(true);
    expect(readFileSync(join(dir, 'lib/stackboot/log.sh'), 'utf8')).toBe(readFileSync(join(LIB, 'log.sh'), 'utf8'));
    const shutdown = join(dir, 'shutdown');
    expect(readFileSync(shutdown, 'utf8')).toBe(readFileSync(join(LIB, 'shutdown.sh'), 'utf8'));
    expect(statSync(shutdown).mode & 0o755).toBe(0o755);
    expect(res.err).toMatch(/shutdown hand-back ready/);
  });

  it("marks the stack's verity devices for removal at their last close (one call), so the hand-back, which has no dmsetup, can free their loop devices", async () => {
    const r = root();
    writeFileSync(join(r.dir, 'busybox'), 'bb');
    const res = await r.sh(`sb_sys_verity_release() { echo "release $*" >>"$SB_T/calls"; return 0; }
SB_MOUNTED="M:/x/sb/l1 M:/x/sb/l0 D:sbv-a0-aaaaaaaaaaaa D:sbv-a1-bbbbbbbbbbbb M:/x/sb/up"
sb_handback_prepare "$SB_T/run" "$SB_T/busybox"; echo RC=$?`);
    expect(res.out).toContain('RC=0');
    expect(r.calls().filter((c) => c.startsWith('release'))).toEqual(['release sbv-a0-aaaaaaaaaaaa sbv-a1-bbbbbbbbbbbb']);
    // without verity devices: no dmsetup at all
    const r2 = root();
    writeFileSync(join(r2.dir, 'busybox'), 'bb');
    await r2.sh(`sb_sys_verity_release() { echo "release $*" >>"$SB_T/calls"; return 0; }
SB_MOUNTED="M:/x/sb/l0"
sb_handback_prepare "$SB_T/run" "$SB_T/busybox"`);
    expect(r2.calls().filter((c) => c.startsWith('release'))).toEqual([]);
  });

  it('marks the /run/sb mounts x-initrd.mount in RUN/mount/utab, so systemd leaves them to it', async () => {
    const r = root();
    writeFileSync(join(r.dir, 'busybox'), 'bb');
    writeFileSync(
      join(r.dir, 'mounts'),
      [
        'proc /proc proc rw,nosuid 0 0',
        `/dev/vda1 ${r.runDir}/sb/s0 ext4 ro,relatime 0 0`,
        `/dev/loop0 ${r.runDir}/sb/l0 squashfs ro 0 0`,
        `tmpfs ${r.runDir}/sb/up tmpfs rw 0 0`,
        `overlay ${r.newRoot} overlay rw,lowerdir=x 0 0`,
        '',
      ].join('\n'),
    );
    const res = await r.sh(`sb_handback_prepare "$SB_T/run" "$SB_T/busybox"; echo RC=$?`);
    expect(res.out).toContain('RC=0');
    expect(readFileSync(join(r.runDir, 'mount/utab'), 'utf8').trim().split('\n')).toEqual([
      `SRC=/dev/vda1 TARGET=${r.runDir}/sb/s0 ROOT=/ OPTS=x-initrd.mount`,
      `SRC=/dev/loop0 TARGET=${r.runDir}/sb/l0 ROOT=/ OPTS=x-initrd.mount`,
      `SRC=tmpfs TARGET=${r.runDir}/sb/up ROOT=/ OPTS=x-initrd.mount`,
    ]);
  });

  it("copies a dynamic busybox's libraries and loader (sb_handback_libs' list), so it runs there alone", async () => {
    // dash stands in for a distribution's dynamic busybox: what matters is that the copy
    // runs in RUN/initramfs as its root, with nothing from the host
    const r = root();
    const bin = '/usr/bin/dash';
    const listed = await r.sh(`sb_handback_libs ${bin} >"$SB_T/libs"; sb_handback_libs /bin/busybox >"$SB_T/static-libs"; echo RC=$?`);
    expect(listed.out).toContain('RC=0');
    const libs = readFileSync(join(r.dir, 'libs'), 'utf8').trim().split('\n');
    expect(libs).toEqual(expect.arrayContaining([expect.stringMatching(/\/libc\.so\.6$/), expect.stringMatching(/\/ld-linux[^/]*\.so\.\d$/)]));
    expect(readFileSync(join(r.dir, 'static-libs'), 'utf8')).toBe(''); // the host's busybox-static
    const res = await r.sh(`sb_handback_prepare "$SB_T/run" ${bin} "$SB_T/libs"; echo RC=$?`);
    expect(res.out).toContain('RC=0');
    const dir = join(r.runDir, 'initramfs');
    for (const l of libs) expect(statSync(join(dir, l)).isFile(), l).toBe(true);
    const ran = await r.sh(`chroot "$SB_T/run/initramfs" /bin/busybox -c 'echo ran alone'`);
    expect(ran.out.trim()).toBe('ran alone');
  });

  it('refuses a missing list of libraries, and leaves nothing', async () => {
    const r = root();
    writeFileSync(join(r.dir, 'busybox'), 'bb');
    const res = await r.sh(`sb_handback_prepare "$SB_T/run" "$SB_T/busybox" "$SB_T/no-list"; echo RC=$?`);
    expect(res.out).toContain('RC=1');
    expect(res.err).toMatch(/no shutdown hand-back: the list of busybox's libraries .*no-list is missing/);
    expect(existsSync(join(r.runDir, 'initramfs'))).toBe(false);
  });

  it('leaves nothing half made when it cannot copy (no busybox): a warning, no /run/initramfs', async () => {
    const r = root();
    const res = await r.sh(`sb_handback_prepare "$SB_T/run" "$SB_T/no-busybox"; echo RC=$?`);
    expect(res.out).toContain('RC=1');
    expect(res.err).toMatch(/warning: no shutdown hand-back/);
    expect(existsSync(join(r.runDir, 'initramfs'))).toBe(false);
  });
});

describe('sb_handback_hook', () => {
  it("fills RUN/initramfs when the hook shipped its busybox and the new root's init is systemd; else nothing, and no failure", async () => {
    const r = root();
    const nr = systemdRoot(r.newRoot);
    writeFileSync(join(nr, 'sbin/myinit'), '#!/bin/sh\n');
    // the core as a flavour installs it, with the busybox its hook copied (static: no libraries)
    const lib = join(r.dir, 'lib');
    mkdirSync(lib);
    for (const f of ['log.sh', 'shutdown.sh']) writeFileSync(join(lib, f), readFileSync(join(LIB, f)));
    writeFileSync(join(r.dir, 'libs'), '');
    const hook = (init: string) => r.sh(`SB_LIB="$SB_T/lib" sb_handback_hook "$SB_T/root" ${init} "$SB_T/run" "$SB_T/libs"; echo RC=$?`);
    // no busybox shipped (initramfs-tools or dracut without the busybox package)
    expect((await hook('/sbin/init')).out).toContain('RC=0');
    expect(existsSync(join(r.runDir, 'initramfs'))).toBe(false);
    writeFileSync(join(lib, 'busybox'), 'bb', { mode: 0o755 });
    // an init that is not systemd
    expect((await hook('/sbin/myinit')).out).toContain('RC=0');
    expect(existsSync(join(r.runDir, 'initramfs'))).toBe(false);
    // systemd through /sbin/init
    const res = await hook('/sbin/init');
    expect(res.out).toContain('RC=0');
    expect(res.err).toMatch(/shutdown hand-back ready/);
    expect(readFileSync(join(r.runDir, 'initramfs/bin/busybox'), 'utf8')).toBe('bb');
    expect(statSync(join(r.runDir, 'initramfs/shutdown')).mode & 0o111).toBe(0o111);
  });
});
