import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtemp, mkdir, writeFile, readFile, rm, stat, readlink, lstat, copyFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { fileURLToPath } from 'node:url';
import { run } from '../../src/sys/exec.js';
import { StackbootError } from '../../src/sys/errors.js';
import { writeCpio, prepareEntries } from '../../src/boot/cpio.js';
import { BOOT_CONFIG_KEYS, buildInitramfs, defaultBootConfig, makeBootConfig, parseBootConfigText, validateBootConfig } from '../../src/boot/initramfs.js';
import { checkShellSyntax, renderBootConfig, renderTemplate, shellQuote } from '../../src/boot/render.js';
import { checkStaticElf } from '../../src/boot/elf.js';
import { DEFAULT_MODULES } from '../../src/boot/modules.js';
import { archFromNode } from '../../src/sys/arch.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
let tmp: string;
beforeAll(async () => {
  tmp = await mkdtemp(path.join(tmpdir(), 'sb-initramfs-test-'));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

function expectConfigError(f: () => unknown, field: string) {
  try {
    f();
    expect.unreachable(`no error for ${field}`);
  } catch (e) {
    expect(e).toBeInstanceOf(StackbootError);
    expect((e as StackbootError).code).toBe('CONFIG');
    expect((e as StackbootError).message).toContain(field);
  }
}

// ---------------------------------------------------------------------------------------
describe('boot config', () => {
  it('has the protocol defaults', () => {
    const c = defaultBootConfig();
    expect(c.STORES).toEqual(['nvme0n1', 'mmcblk0', 'vda', 'vdb']);
    expect(c).toMatchObject({ TRIES: 3, UPPER: 'tmpfs', VERIFY: 'size', ON_FAIL: 'reboot', ON_FAIL_DELAY: 10, INIT: '/sbin/init', DEVICE_TIMEOUT: 10 });
  });

  it('parses KEY=value text with comments and quotes, then --set', () => {
    const c = makeBootConfig({
      text: '# a node\nSTORES=vd* mmcblk0   # disks\nTRIES=5\nUPPER="disk"\nPERSIST=/var/lib/app /home\n\nON_FAIL=shell\n',
      set: ['TRIES=2', ['VERIFY', 'sha256']],
    });
    expect(c.STORES).toEqual(['vd*', 'mmcblk0']);
    expect(c.TRIES).toBe(2);
    expect(c.UPPER).toBe('disk');
    expect(c.PERSIST).toEqual(['/var/lib/app', '/home']);
    expect(c.ON_FAIL).toBe('shell');
    expect(c.VERIFY).toBe('sha256');
  });

  it('rejects invalid values, naming the field', () => {
    expectConfigError(() => makeBootConfig({ set: ['TRIES=0'] }), 'TRIES');
    expectConfigError(() => makeBootConfig({ set: ['TRIES=two'] }), 'TRIES');
    expectConfigError(() => makeBootConfig({ set: ['UPPER=zram'] }), 'UPPER');
    expectConfigError(() => makeBootConfig({ set: ['VERIFY=md5'] }), 'VERIFY');
    expectConfigError(() => makeBootConfig({ set: ['ON_FAIL=halt'] }), 'ON_FAIL');
    expectConfigError(() => makeBootConfig({ set: ['STORES='] }), 'STORES');
    expectConfigError(() => makeBootConfig({ set: ['STORES=vda;reboot'] }), 'STORES');
    // partitions (the hook looks at the partitions of each disk, and skips a partition named here)
    for (const p of ['mmcblk0p2', 'nvme0n1p2', 'vda2', 'sda1', 'xvda3']) expectConfigError(() => makeBootConfig({ set: [`STORES=nvme0n1 ${p}`] }), 'STORES');
    expect(makeBootConfig({ set: ['STORES=nvme0n1 mmcblk0 mmcblk1 vda sdb nvme1n1 vd* mmcblk*'] }).STORES).toHaveLength(8);
    expectConfigError(() => makeBootConfig({ set: ['UPPER_SIZE=lots'] }), 'UPPER_SIZE');
    expectConfigError(() => makeBootConfig({ set: ['UPPER_SIZE=150%'] }), 'UPPER_SIZE');
    expectConfigError(() => makeBootConfig({ set: ['PERSIST=relative/path'] }), 'PERSIST');
    expectConfigError(() => makeBootConfig({ set: ['INIT=sbin/init'] }), 'INIT');
    expectConfigError(() => makeBootConfig({ set: ['STORE_LABEL=a label'] }), 'STORE_LABEL');
    expectConfigError(() => makeBootConfig({ set: ['DEVICE_TIMEOUT=0'] }), 'DEVICE_TIMEOUT');
    expectConfigError(() => makeBootConfig({ set: ['TRYS=3'] }), 'TRYS');
    expectConfigError(() => makeBootConfig({ set: ['novalue'] }), 'KEY=VALUE');
    expectConfigError(() => makeBootConfig({ text: 'TRIES=1\nthis is not a pair\n', origin: 'node.conf' }), 'node.conf:2');
    expectConfigError(() => validateBootConfig({ ...defaultBootConfig(), STORES: [] }), 'STORES');
    expectConfigError(() => validateBootConfig({ ...defaultBootConfig(), TRIES: -1 }), 'TRIES');
  });

  it('renders boot.conf that parses back to the same config', async () => {
    const c = makeBootConfig({ set: ['STORES=nvme0n1 vd*', 'PERSIST=/home /var/lib/x', 'UPPER=disk', 'ON_FAIL_DELAY=0'] });
    const text = await renderBootConfig(c);
    expect(text).toMatch(/^STORES=nvme0n1 vd\*$/m);
    expect(text).toMatch(/^ON_FAIL_DELAY=0$/m);
    const keys = parseBootConfigText(text).map(([k]) => k);
    expect(keys).toEqual([...BOOT_CONFIG_KEYS]);
    expect(makeBootConfig({ text })).toEqual(c);
  });

  it('renders boot.conf that the shell core reads to the same values', async () => {
    const core = path.join(REPO, 'initramfs');
    expect(existsSync(path.join(core, 'stackboot.sh')), 'the boot core initramfs/stackboot.sh').toBe(true);
    const c = makeBootConfig({ set: ['STORES=mmcblk0 vd*', 'TRIES=7', 'UPPER=disk', 'UPPER_SIZE=256m', 'VERIFY=sha256', 'PERSIST=/home /srv', 'ON_FAIL=shell', 'ON_FAIL_DELAY=3', 'INIT=/lib/systemd/systemd', 'DEVICE_TIMEOUT=4'] });
    const file = path.join(tmp, 'core-boot.conf');
    await writeFile(file, await renderBootConfig(c));
    const script = `SB_LIB=${core}; SB_CMDLINE=''; . "$SB_LIB/stackboot.sh"; sb_config_load ${file} >/dev/null 2>&1
for k in ${BOOT_CONFIG_KEYS.join(' ')}; do eval "printf '%s=%s\\n' \\"\\$k\\" \\"\\\${SB_$k}\\""; done`;
    const r = await run('busybox', ['sh', '-c', script]);
    const got = Object.fromEntries(parseBootConfigText(r.stdout));
    for (const k of BOOT_CONFIG_KEYS) {
      const v = c[k];
      expect(got[k], k).toBe(Array.isArray(v) ? v.join(' ') : String(v));
    }
  });
});

// ---------------------------------------------------------------------------------------
describe('templates', () => {
  it('quotes for the shell', async () => {
    expect(shellQuote('virtio_blk')).toBe('virtio_blk');
    expect(shellQuote("a b'c")).toBe(`'a b'\\''c'`);
    const r = await run('busybox', ['sh', '-c', `printf %s ${shellQuote("x'; reboot; '")}`]);
    expect(r.stdout).toBe("x'; reboot; '");
  });

  it('refuses a template variable that is not given (strict)', async () => {
    await expect(renderTemplate('standalone/init.hbs', { sbLib: '/lib/stackboot' })).rejects.toThrow(/template standalone\/init.hbs/);
  });

  it('checks shell syntax with busybox sh -n', async () => {
    await checkShellSyntax('if true; then echo ok; fi\n', 'good');
    await expect(checkShellSyntax('if true; then echo broken\n', 'broken.sh')).rejects.toThrow(/broken.sh does not parse/);
  });
});

// ---------------------------------------------------------------------------------------
describe('cpio writer', () => {
  const entries = () => [
    { path: '/init', type: 'file' as const, mode: 0o755, data: Buffer.from('#!/bin/sh\necho hi\n') },
    { path: 'bin/busybox', type: 'file' as const, mode: 0o755, data: Buffer.from('not really busybox') },
    { path: 'bin/sh', type: 'symlink' as const, target: 'busybox' },
    { path: 'dev/console', type: 'char' as const, mode: 0o600, major: 5, minor: 1 },
    { path: 'dev/null', type: 'char' as const, mode: 0o666, major: 1, minor: 3 },
    { path: 'lib/modules/6.1.0-x/kernel/fs/overlay.ko', type: 'file' as const, data: Buffer.alloc(1001, 7) },
    { path: 'empty', type: 'file' as const },
    { path: 'tmp', type: 'dir' as const, mode: 0o1777 },
  ];

  it('sorts, adds parents, rejects duplicates and escapes', () => {
    const list = prepareEntries(entries()).map((e) => e.path);
    expect(list).toEqual([
      'bin',
      'bin/busybox',
      'bin/sh',
      'dev',
      'dev/console',
      'dev/null',
      'empty',
      'init',
      'lib',
      'lib/modules',
      'lib/modules/6.1.0-x',
      'lib/modules/6.1.0-x/kernel',
      'lib/modules/6.1.0-x/kernel/fs',
      'lib/modules/6.1.0-x/kernel/fs/overlay.ko',
      'tmp',
    ]);
    expect(() => prepareEntries([{ path: 'a', type: 'file' }, { path: '/a', type: 'file' }])).toThrow(/duplicate/);
    expect(() => prepareEntries([{ path: '../etc/passwd', type: 'file' }])).toThrow(/escapes/);
  });

  it('is reproducible and gives every entry the mtime it is given (0 by default)', () => {
    expect(writeCpio(entries(), { mtime: 0 }).equals(writeCpio([...entries()].reverse(), { mtime: 0 }))).toBe(true);
    expect(writeCpio(entries()).equals(writeCpio(entries(), { mtime: 0 }))).toBe(true);
    // newc: the mtime is the 6th 8-hex-digit field of each header
    expect(writeCpio(entries(), { mtime: 1700000000 }).subarray(6 + 5 * 8, 6 + 6 * 8).toString()).toBe((1700000000).toString(16).padStart(8, '0'));
  });

  it('lists back with cpio -it and extracts with devices, links and modes', async () => {
    const buf = writeCpio(entries(), { mtime: 1700000000 });
    expect(buf.length % 4).toBe(0);
    const file = path.join(tmp, 'test.cpio');
    await writeFile(file, buf);
    const list = await run('cpio', ['-it', '--quiet'], { inputFile: file });
    expect(list.stdout.trim().split('\n')).toEqual(prepareEntries(entries()).map((e) => e.path));
    const verbose = await run('cpio', ['-itv', '--quiet'], { inputFile: file, env: { TZ: 'UTC' } });
    expect(verbose.stdout).toMatch(/^crw-------\s+1 root\s+root\s+5,\s+1 .* dev\/console$/m);
    expect(verbose.stdout).toMatch(/^lrwxrwxrwx .* bin\/sh -> busybox$/m);
    expect(verbose.stdout).toMatch(/^drwxrwxrwt .* tmp$/m);
    expect(verbose.stdout).toMatch(/Nov 14\s+2023 init$/m);

    const out = path.join(tmp, 'x');
    await mkdir(out);
    await run('cpio', ['-idm', '--quiet', '--no-absolute-filenames'], { inputFile: file, cwd: out });
    expect(await readFile(path.join(out, 'init'), 'utf8')).toBe('#!/bin/sh\necho hi\n');
    expect((await stat(path.join(out, 'init'))).mode & 0o7777).toBe(0o755);
    expect(await readlink(path.join(out, 'bin/sh'))).toBe('busybox');
    expect((await readFile(path.join(out, 'lib/modules/6.1.0-x/kernel/fs/overlay.ko'))).equals(Buffer.alloc(1001, 7))).toBe(true);
    expect((await stat(path.join(out, 'empty'))).size).toBe(0);
    if (process.getuid?.() === 0) {
      const st = await lstat(path.join(out, 'dev/console'));
      expect(st.isCharacterDevice()).toBe(true);
      expect(st.rdev).toBe((5 << 8) | 1);
    }
  });
});

// ---------------------------------------------------------------------------------------
// A fake kernel modules dir and core, for building all three flavors fast.

const ARCH = archFromNode(process.arch) ?? 'amd64';
const MACHINE = ARCH === 'arm64' ? 183 : 62;
const KVER = '6.1.0-99-test';

function fakeKo(name: string): Buffer {
  const b = Buffer.alloc(64);
  b.writeUInt32BE(0x7f454c46, 0);
  b[4] = 2;
  b[5] = 1;
  b.writeUInt16LE(1, 16); // ET_REL
  b.writeUInt16LE(MACHINE, 18);
  return Buffer.concat([b, Buffer.from(`module ${name}\n`)]);
}

const FAKE_DEP: Array<[string, string[]]> = [
  ['kernel/fs/overlayfs/overlay.ko', []],
  ['kernel/fs/squashfs/squashfs.ko.xz', []],
  ['kernel/drivers/block/loop.ko.zst', []],
  ['kernel/fs/ext4/ext4.ko.gz', ['kernel/lib/crc16.ko', 'kernel/fs/mbcache.ko', 'kernel/fs/jbd2/jbd2.ko']],
  ['kernel/lib/crc16.ko', []],
  ['kernel/fs/mbcache.ko', []],
  ['kernel/fs/jbd2/jbd2.ko', []],
  ['kernel/crypto/crc32c_generic.ko', []],
  ['kernel/fs/fat/vfat.ko', ['kernel/fs/fat/fat.ko']],
  ['kernel/fs/fat/fat.ko', []],
  ['kernel/drivers/block/virtio_blk.ko', []],
  ['kernel/drivers/virtio/virtio_pci.ko', []],
  ['kernel/drivers/nvme/host/nvme.ko', ['kernel/drivers/nvme/host/nvme-core.ko']],
  ['kernel/drivers/nvme/host/nvme-core.ko', []],
  ['kernel/drivers/mmc/host/sdhci.ko', []],
  ['kernel/drivers/mmc/host/sdhci-pci.ko', ['kernel/drivers/mmc/host/sdhci.ko']],
  ['kernel/fs/btrfs/btrfs.ko', []],
];

async function makeFakeKernel(root: string): Promise<string> {
  const dir = path.join(root, 'lib', 'modules', KVER);
  for (const [p] of FAKE_DEP) {
    const file = path.join(dir, p);
    await mkdir(path.dirname(file), { recursive: true });
    const raw = fakeKo(p);
    if (p.endsWith('.gz')) await writeFile(file, zlib.gzipSync(raw));
    else if (p.endsWith('.xz') || p.endsWith('.zst')) {
      const tool = p.endsWith('.xz') ? 'xz' : 'zstd';
      const r = await run(tool, ['-c', '-q'], { input: raw, binary: true });
      await writeFile(file, r.stdoutBuffer!);
    } else await writeFile(file, raw);
  }
  await writeFile(path.join(dir, 'modules.dep'), FAKE_DEP.map(([p, d]) => `${p}:${d.length ? ' ' + d.join(' ') : ''}`).join('\n') + '\n');
  await writeFile(path.join(dir, 'modules.builtin'), 'kernel/drivers/mmc/core/mmc_block.ko\n');
  await writeFile(path.join(dir, 'modules.alias'), 'alias crypto-crc32c crc32c_generic\nalias fs-btrfs btrfs\nalias fs-overlay overlay\n');
  await writeFile(path.join(dir, 'modules.softdep'), 'softdep ext4 pre: crypto-crc32c\n');
  await writeFile(path.join(dir, 'modules.order'), FAKE_DEP.map(([p]) => p).join('\n') + '\n');
  return dir;
}

/** A core with the entry points the templates call, recording what they were given. */
async function makeFakeCore(dir: string, bootOk: boolean): Promise<string> {
  await mkdir(dir, { recursive: true });
  await writeFile(
    path.join(dir, 'stackboot.sh'),
    `: "\${SB_TRACE:=/dev/null}"
sb_log() { echo "log: $*" >>"$SB_TRACE"; }
sb_config_load() { echo "config_load $1" >>"$SB_TRACE"; SB_INIT=/sbin/init; }
sb_load_modules() { echo "load_modules $*" >>"$SB_TRACE"; }
sb_boot() { echo "boot $1" >>"$SB_TRACE"; ${bootOk ? 'return 0' : 'return 1'}; }
sb_break_requested() { return 1; }
sb_all_failed() { echo "all_failed" >>"$SB_TRACE"; return 1; }
`,
  );
  await writeFile(path.join(dir, 'util.sh'), 'sb_util() { :; }\n');
  return dir;
}

async function hostBusybox(): Promise<string> {
  const r = await run('sh', ['-c', 'command -v busybox']);
  return r.stdout.trim();
}

describe('standalone initrd (fake kernel)', () => {
  it('writes a complete, listable, reproducible initrd', async () => {
    const modulesDir = await makeFakeKernel(path.join(tmp, 'k1'));
    const coreDir = await makeFakeCore(path.join(tmp, 'core-ok'), true);
    const out = path.join(tmp, 'initrd.img');
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
    const r = await buildInitramfs(opts);
    expect(r.kver).toBe(KVER);
    expect(r.builtin).toEqual(['mmc_block']);
    const order = r.modules;
    expect(order.indexOf('jbd2')).toBeLessThan(order.indexOf('ext4'));
    expect(order.indexOf('crc32c_generic')).toBeLessThan(order.indexOf('ext4'));
    expect(order.indexOf('nvme_core')).toBeLessThan(order.indexOf('nvme'));
    expect(order).toContain('btrfs');
    expect(r.applets).toContain('switch_root');

    const cpio = zlib.gunzipSync(await readFile(out));
    await writeFile(path.join(tmp, 'initrd.cpio'), cpio);
    const list = (await run('cpio', ['-it', '--quiet'], { inputFile: path.join(tmp, 'initrd.cpio') })).stdout.trim().split('\n');
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
    const ex = path.join(tmp, 'initrd-x');
    await mkdir(ex);
    await run('cpio', ['-idm', '--quiet', '--no-absolute-filenames'], { inputFile: path.join(tmp, 'initrd.cpio'), cwd: ex });
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
    const again = path.join(tmp, 'initrd2.img');
    await buildInitramfs({ ...opts, out: again });
    expect((await readFile(again)).equals(await readFile(out))).toBe(true);

    // zstd
    const z = await buildInitramfs({ ...opts, out: path.join(tmp, 'initrd.zst'), compress: 'zstd' });
    expect(z.compress).toBe('zstd');
    const dz = await run('zstd', ['-dc', path.join(tmp, 'initrd.zst')], { binary: true });
    expect(dz.stdoutBuffer!.equals(cpio)).toBe(true);
  });

  it('names a module that does not exist', async () => {
    const modulesDir = await makeFakeKernel(path.join(tmp, 'k2'));
    await expect(
      buildInitramfs({ flavor: 'standalone', out: path.join(tmp, 'no.img'), arch: ARCH, modulesDir, busybox: await hostBusybox(), coreDir: await makeFakeCore(path.join(tmp, 'c2'), true), modules: ['wireguard'] }),
    ).rejects.toThrow(/wireguard/);
    expect(existsSync(path.join(tmp, 'no.img'))).toBe(false);
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
    const coreDir = await makeFakeCore(path.join(tmp, 'core-bad'), true);
    await writeFile(path.join(coreDir, 'util.sh'), 'sb_util() {\n');
    const modulesDir = await makeFakeKernel(path.join(tmp, 'k3'));
    await expect(buildInitramfs({ flavor: 'standalone', out: path.join(tmp, 'bad.img'), arch: ARCH, modulesDir, busybox: await hostBusybox(), coreDir })).rejects.toThrow(
      /core util.sh does not parse/,
    );
  });
});

// ---------------------------------------------------------------------------------------
describe('initramfs-tools flavor', () => {
  it('writes hook, boot script, conf hook, core, boot.conf and INSTALL; the hook runs', async () => {
    const coreDir = await makeFakeCore(path.join(tmp, 'core-it'), true);
    // the hook sources the real handback.sh at mkinitramfs time (sb_handback_libs)
    await copyFile(path.join(REPO, 'initramfs', 'handback.sh'), path.join(coreDir, 'handback.sh'));
    const out = path.join(tmp, 'it');
    const r = await buildInitramfs({ flavor: 'initramfs-tools', out, coreDir, modules: ['btrfs'] });
    expect(r.files).toEqual(expect.arrayContaining(['hooks/stackboot', 'scripts/stackboot', 'conf-hooks.d/stackboot', 'boot.conf', 'lib/stackboot.sh', 'INSTALL']));
    expect((await stat(path.join(out, 'hooks/stackboot'))).mode & 0o111).not.toBe(0);
    const hook = await readFile(path.join(out, 'hooks/stackboot'), 'utf8');
    expect(hook).toMatch(/^PREREQ=""$/m);
    expect(hook).toContain('. /usr/share/initramfs-tools/hook-functions');
    expect(hook).toMatch(new RegExp(`manual_add_modules ${DEFAULT_MODULES.join(' ')} btrfs`));
    const script = await readFile(path.join(out, 'scripts/stackboot'), 'utf8');
    expect(script).toMatch(/^mountroot\(\) \{$/m);
    expect(script).toContain('sb_boot "${rootmnt}"');
    expect(script).toContain('maybe_break stackboot');
    expect(await readFile(path.join(out, 'INSTALL'), 'utf8')).toContain('/etc/initramfs-tools/hooks/stackboot');

    // run the hook under the host's sh (mkinitramfs runs hooks with /bin/sh: dash on
    // Debian; busybox sh would answer `command -v` with its own applets) with stand-in
    // hook-functions
    const fns = path.join(tmp, 'hook-functions');
    await writeFile(fns, 'manual_add_modules() { echo "mods $*" >>"$DESTDIR/.trace"; }\ncopy_exec() { echo "exec $1" >>"$DESTDIR/.trace"; }\n');
    const hookTest = path.join(tmp, 'hook.sh');
    await writeFile(hookTest, hook.replace('/usr/share/initramfs-tools/hook-functions', fns));
    expect((await run('busybox', ['sh', hookTest, 'prereqs'])).stdout).toBe('\n');
    const dest = path.join(tmp, 'destdir');
    await mkdir(dest);
    await run('sh', [hookTest], { env: { DESTDIR: dest, STACKBOOT_SHARE: out, version: KVER } });
    expect(await readFile(path.join(dest, 'lib/stackboot/stackboot.sh'), 'utf8')).toContain('sb_boot');
    expect(await readFile(path.join(dest, 'etc/stackboot/boot.conf'), 'utf8')).toMatch(/^STORES=/m);
    expect(await readFile(path.join(dest, '.trace'), 'utf8')).toMatch(/^mods overlay squashfs loop ext4 /m);
    // busybox for the shutdown hand-back, and its libraries (none: the host's is static)
    expect(await readFile(path.join(dest, '.trace'), 'utf8')).toContain(`exec ${await hostBusybox()}`);
    expect(await readFile(path.join(dest, 'etc/stackboot/handback.libs'), 'utf8')).toBe('');
    // a share folder without the hand-back part is refused by name
    const partial = path.join(tmp, 'it-partial');
    await mkdir(path.join(partial, 'lib'), { recursive: true });
    await copyFile(path.join(out, 'lib/stackboot.sh'), path.join(partial, 'lib/stackboot.sh'));
    const refused = await run('sh', [hookTest], { env: { DESTDIR: dest, STACKBOOT_SHARE: partial, version: KVER }, reject: false });
    expect(refused.exitCode).toBe(1);
    expect(refused.stderr).toMatch(/E: stackboot: .*it-partial\/lib\/handback\.sh is missing/);

    // the boot script's mountroot with stand-ins for /scripts/functions
    const trace = path.join(tmp, 'it-trace');
    const sh = `panic() { echo "panic $*" >>${trace}; }; maybe_break() { :; }; rootmnt=/root
${script.replace("SB_LIB='/lib/stackboot'", `SB_LIB=${coreDir}`).replace('SB_LIB=/lib/stackboot', `SB_LIB=${coreDir}`)}
SB_TRACE=${trace}; mountroot; echo "rc=$? init=$init"`;
    const m = await run('busybox', ['sh', '-c', sh], { env: { SB_TRACE: trace } });
    expect(m.stdout).toContain('rc=0 init=/sbin/init');
    expect(await readFile(trace, 'utf8')).toMatch(/boot \/root/);
  });
});

describe('dracut flavor', () => {
  it('writes the module; the mount hook is safe to source twice', async () => {
    const coreDir = await makeFakeCore(path.join(tmp, 'core-dr'), true);
    const out = path.join(tmp, 'dr');
    const r = await buildInitramfs({ flavor: 'dracut', out, coreDir });
    const m = 'modules.d/90stackboot';
    expect(r.files).toEqual(expect.arrayContaining([`${m}/module-setup.sh`, `${m}/parse-stackboot.sh`, `${m}/mount-stackboot.sh`, `${m}/boot.conf`, `${m}/lib/stackboot.sh`, 'dracut.conf.d/stackboot.conf', 'INSTALL']));
    const setup = await readFile(path.join(out, m, 'module-setup.sh'), 'utf8');
    expect(setup).toMatch(/^check\(\) \{$/m);
    expect(setup).toContain(`hostonly='' instmods ${DEFAULT_MODULES.join(' ')}`);
    expect(setup).toContain('inst_hook cmdline 30 "$moddir/parse-stackboot.sh"');
    expect(setup).toContain('inst_hook mount 99 "$moddir/mount-stackboot.sh"');

    const parse = await readFile(path.join(out, m, 'parse-stackboot.sh'), 'utf8');
    const p = await run('busybox', ['sh', '-c', `getarg() { echo stackboot; }; root=; ${parse}\necho "root=$root rootok=$rootok"`]);
    expect(p.stdout.trim()).toBe('root=stackboot rootok=1');

    const hook = (await readFile(path.join(out, m, 'mount-stackboot.sh'), 'utf8')).replace("SB_LIB='/lib/stackboot'", `SB_LIB=${coreDir}`).replace('SB_LIB=/lib/stackboot', `SB_LIB=${coreDir}`);
    const hookFile = path.join(tmp, 'mount-hook.sh');
    await writeFile(hookFile, hook.replace(/\/run\/stackboot/g, path.join(tmp, 'dr-run')));
    const trace = path.join(tmp, 'dr-trace');
    const sh = `root=stackboot; NEWROOT=/sysroot; SB_TRACE=${trace}; SB_RUN=${path.join(tmp, 'dr-run')}
getarg() { return 1; }; die() { echo "die $*"; }; ismounted() { return 1; }
. ${hookFile}; . ${hookFile}; echo done`;
    const res = await run('busybox', ['sh', '-c', sh]);
    expect(res.stdout).toContain('done');
    expect((await readFile(trace, 'utf8')).match(/^boot \/sysroot$/gm)).toHaveLength(1);
  });
});
