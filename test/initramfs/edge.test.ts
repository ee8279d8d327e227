/**
 * Edge cases of the boot shell core found in a bug hunt: odd but legal inputs, power cuts,
 * real sysfs shapes. Each test failed before its fix.
 */
import { existsSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { run } from '../../src/sys/exec.js';
import { DRACUT_REQUIRED_TOOLS } from '../../src/boot/dracut.js';
import { expectedFor, loadVector, reading } from '../protocol/vectors.js';
import { fakeRoots, readEvents, readState, sha256 } from './harness.js';

const CONF = 'STORES=nvme0n1 vda\nSTORE_LABEL=sb-store\nDATA_LABEL=sb-data\nDEVICE_TIMEOUT=1\nDEVICE_SETTLE=0\nON_FAIL_DELAY=7\n';

/** a fresh fake root, cleaned up after the test */
const root = fakeRoots();

describe('boot core edge cases', () => {
  it('a manifest without a final newline keeps its last (top) layer', async () => {
    const r = root();
    const s = r.makeStore('s1', { current: 'a', a: { status: 'good' } });
    // the shared vector: two layers, the top one on a last line without a newline
    const v = loadVector('manifest', 'last-line-without-newline');
    expect(v.input.at(-1)).not.toBe(0x0a);
    writeFileSync(join(s.dir, 'slots/a/manifest'), v.input);
    for (const line of reading(expectedFor(v, 'sh')).split('\n')) {
      const [, h, size] = line.split(' ');
      writeFileSync(join(s.dir, 'layers', `${h}.sqfs`), Buffer.alloc(Number(size)));
    }
    writeFileSync(join(s.dir, 'state'), `stackboot-state 1\ncurrent a\na good ${sha256(v.input)}\n`);
    r.addDisk('vda', [{ name: 'vda2', label: 'sb-store', store: s.dir }]);
    const res = await r.boot(CONF);
    expect(res.out).toContain('BOOT=0');
    expect(r.calls().filter((c) => c.startsWith('layer ')).length).toBe(2);
    expect(r.calls().find((c) => c.includes('-t overlay'))).toMatch(/lowerdir=[^,]*\/run\/sb\/l1:[^,]*\/run\/sb\/l0,/);
  });

  // "a state without a final newline keeps its last slot line" is the shared vector
  // transition/boot-last-line-without-newline (boots slot a; read in ./protocol.test.ts).
});

describe('PERSIST', () => {
  it('PERSIST=/ (a hand-edited boot.conf) is refused: the data partition is never bound over the root', async () => {
    const r = root();
    const s = r.makeStore('s1', { current: 'a', a: { status: 'good' } });
    const data = r.dataDir('data');
    r.addDisk('vda', [{ name: 'vda2', label: 'sb-store', store: s.dir }, { name: 'vda3', label: 'sb-data', store: data }]);
    const res = await r.boot(CONF + 'PERSIST=/ // /home\n');
    expect(res.out).toContain('BOOT=0');
    const binds = r.calls().filter((c) => c.startsWith('mount -o bind'));
    expect(binds).toEqual([`mount -o bind ${r.dir}/run/sb/data/home ${r.dir}/root/home`]);
    expect(res.err).toMatch(/persistent path \/ refused/);
  });

  it('a power cut while a persistent path is first seeded: seeded whole on the next boot', async () => {
    const r = root();
    const s = r.makeStore('s1', { current: 'a', a: { status: 'good' } });
    const data = r.dataDir('data');
    r.addDisk('vda', [{ name: 'vda2', label: 'sb-store', store: s.dir }, { name: 'vda3', label: 'sb-data', store: data }]);
    const conf = CONF + 'PERSIST=/etc\n';
    writeFileSync(join(r.dir, 'boot.conf'), conf);
    // the first boot dies (power cut) in the middle of the copy
    const cut = await r.sh(`cp() { [ "$1" = -a ] || { command cp "$@"; return; }; mkdir -p "$3"; : >"$3/half"; exit 99; }
sb_config_load "$SB_T/boot.conf"; sb_boot "$SB_T/root"; echo "BOOT=$?"`);
    expect(cut.out).not.toContain('BOOT=');
    rmSync(join(r.runDir, 'sb'), { recursive: true, force: true });
    writeFileSync(join(r.dir, 'mounts'), '');
    const res = await r.boot(conf);
    expect(res.out).toContain('BOOT=0');
    expect(existsSync(join(data, 'etc/os-release'))).toBe(true);
    expect(existsSync(join(data, 'etc/half'))).toBe(false);
    expect(r.calls()).toContain(`mount -o bind ${r.dir}/run/sb/data/etc ${r.dir}/root/etc`);
  });

  it('a seed that cannot be copied (data partition full) is not bound half made, and is retried', async () => {
    const r = root();
    const s = r.makeStore('s1', { current: 'a', a: { status: 'good' } });
    const data = r.dataDir('data');
    r.addDisk('vda', [{ name: 'vda2', label: 'sb-store', store: s.dir }, { name: 'vda3', label: 'sb-data', store: data }]);
    writeFileSync(join(r.dir, 'boot.conf'), CONF + 'PERSIST=/etc\n');
    const res = await r.sh(`cp() { [ "$1" = -a ] || { command cp "$@"; return; }; mkdir -p "$3"; : >"$3/half"; return 1; }
sb_config_load "$SB_T/boot.conf"; sb_boot "$SB_T/root"; echo "BOOT=$?"`);
    expect(res.out).toContain('BOOT=0');
    expect(res.err).toMatch(/\/etc not bound on this boot/);
    expect(existsSync(join(data, 'etc'))).toBe(false);
    expect(r.calls().some((c) => c.startsWith('mount -o bind'))).toBe(false);
  });
});

describe('waiting for the disks', () => {
  it('a partition in sysfs whose /dev node devtmpfs has not made yet is waited for', async () => {
    const r = root();
    const s = r.makeStore('s1', { current: 'a', a: { status: 'good' } });
    r.addDisk('vda', [{ name: 'vda2', label: 'sb-store', store: s.dir }]);
    rmSync(join(r.dir, 'dev/vda2'));
    writeFileSync(join(r.dir, 'boot.conf'), 'STORES=vda\nDEVICE_TIMEOUT=5\nDEVICE_SETTLE=0\n');
    // the node appears during the first wait
    const res = await r.sh(`sb_sys_sleep() { sb__rec "sleep $1"; : >"$SB_DEV/vda2"; }
sb_config_load "$SB_T/boot.conf"; sb_boot "$SB_T/root"; echo "BOOT=$?"`);
    expect(res.out).toContain('BOOT=0');
    expect(r.calls().filter((c) => c.startsWith('sleep'))).toHaveLength(1);
  });

  it('every disk there but no partition yet (the kernel still reads the table): keeps looking', async () => {
    const r = root();
    const s = r.makeStore('s1', { current: 'a', a: { status: 'good' } });
    r.addDisk('nvme0n1', []);
    writeFileSync(join(r.dir, 'boot.conf'), 'STORES=nvme0n1\nDEVICE_TIMEOUT=5\nDEVICE_SETTLE=0\n');
    const part = join(r.dir, 'sys/class/block/nvme0n1/nvme0n1p2');
    const res = await r.sh(`sb_sys_sleep() {
	sb__rec "sleep $1"
	mkdir -p '${part}' && echo 2 >'${part}/partition' && : >"$SB_DEV/nvme0n1p2"
	echo "nvme0n1p2 sb-store" >>"$SB_T/labels"; echo "nvme0n1p2 ${s.dir}" >>"$SB_T/devmap"
}
sb_config_load "$SB_T/boot.conf"; sb_boot "$SB_T/root"; echo "BOOT=$?"`);
    expect(res.out).toContain('BOOT=0');
    expect(r.booted().store_dev).toBe(join(r.dir, 'dev/nvme0n1p2'));
  });

  it('every disk there and no store at all: bounded wait, then ON_FAIL', async () => {
    const r = root();
    r.addDisk('vda', [{ name: 'vda1' }]);
    const res = await r.boot('STORES=vda\nDEVICE_TIMEOUT=1\nON_FAIL=shell\n');
    expect(res.out).toContain('BOOT=1');
    expect(res.err).toMatch(/gave up after 1s waiting for: a store \(label sb-store\)/);
    expect(r.calls().filter((c) => c.startsWith('sleep')).length).toBe(4);
  });
});

describe('a dracut initrd (dash, only the tools the module installs)', () => {
  // dracut's base module installs these; the module adds DRACUT_REQUIRED_TOOLS; rmdir and ls
  // are the harness fakes' own.
  const BASE = 'mount mknod mkdir sleep chown sed ls flock cp mv dmesg rm ln rmmod mkfifo umount readlink setsid modprobe chmod tr'.split(' ');
  it('tries a pending stack, falls back, writes its events, with no missing tool', async () => {
    const r = root();
    const s = r.makeStore('s1', { current: 'a', a: { status: 'good' }, b: { status: 'pending', tries: 2, layers: [{ name: 'base', size: 100, missing: true }] } });
    r.addDisk('vda', [{ name: 'vda2', label: 'sb-store', store: s.dir }]);
    const bin = join(r.dir, 'bin');
    mkdirSync(bin);
    const which = async (t: string) => (await run('sh', ['-c', `command -v ${t}`])).stdout.trim();
    const bb = await which('busybox');
    for (const t of new Set([...BASE, ...DRACUT_REQUIRED_TOOLS, 'rmdir'])) symlinkSync(bb, join(bin, t));
    writeFileSync(join(r.dir, 'boot.conf'), CONF);
    const res = await r.sh('sb_config_load "$SB_T/boot.conf"; sb_boot "$SB_T/root"; echo "BOOT=$?"', { PATH: bin }, [await which('dash')]);
    expect(res.err).not.toMatch(/not found/);
    expect(res.out).toContain('BOOT=0');
    const events = readFileSync(join(s.dir, 'events'), 'utf8');
    expect(events).not.toContain('\n\n');
    expect(readEvents(s).map((e) => e.event)).toEqual(['try', 'fail', 'boot']);
  });
});

describe('numbers with leading zeros (shell arithmetic: 010 is octal, 08 stops the script)', () => {
  // "a state with tries 08 boots the pending stack with 7 left (the hook did not die)" is
  // the shared vector transition/boot-pending-tries-08 (read in ./protocol.test.ts: boots
  // slot b, the state and the booted record say 7 tries left).

  it('config numbers with leading zeros are read as decimal', async () => {
    const r = root();
    writeFileSync(join(r.dir, 'c.conf'), 'DEVICE_TIMEOUT=010\nDEVICE_SETTLE=08\nTRIES=0009\nON_FAIL_DELAY=0\n');
    const res = await r.sh('sb_config_load "$SB_T/c.conf"; echo "T=$SB_DEVICE_TIMEOUT S=$SB_DEVICE_SETTLE N=$SB_TRIES D=$SB_ON_FAIL_DELAY"; echo "X=$((SB_DEVICE_SETTLE * 4))"');
    expect(res.out).toContain('T=10 S=8 N=9 D=0');
    expect(res.out).toContain('X=32');
  });
});

describe("the machine's failure is not the stack's", () => {
  it('a kernel without squashfs: every layer mount fails, but no stack is marked bad (it boots once the kernel is fixed)', async () => {
    const r = root();
    const s = r.makeStore('s1', { current: 'a', a: { status: 'good' }, b: { status: 'good' } });
    r.addDisk('vda', [{ name: 'vda2', label: 'sb-store', store: s.dir }]);
    const before = readState(s);
    writeFileSync(join(r.dir, 'filesystems'), 'nodev\ttmpfs\n\text4\nnodev\toverlay\n');
    const res = await r.boot(CONF + 'ON_FAIL=shell\n', { FAKE_FAIL_LAYER: '.sqfs' });
    expect(res.out).toContain('BOOT=1');
    expect(res.err).toMatch(/this kernel has no squashfs/);
    expect(readState(s)).toBe(before);
    expect(readEvents(s).map((e) => `${e.event} ${e.slot}`)).toEqual(['fail a', 'fail b', 'allfailed -']);
    // the next boot, with squashfs
    writeFileSync(join(r.dir, 'filesystems'), 'nodev\ttmpfs\n\text4\n\tsquashfs\nnodev\toverlay\n');
    rmSync(join(r.runDir, 'sb'), { recursive: true, force: true });
    writeFileSync(join(r.dir, 'mounts'), '');
    const ok = await r.boot(CONF);
    expect(ok.out).toContain('BOOT=0');
    expect(r.booted().slot).toBe('a');
  });

  it('no loop devices (no loop module): not marked bad either', async () => {
    const r = root();
    const s = r.makeStore('s1', { current: 'a', a: { status: 'good' } });
    r.addDisk('vda', [{ name: 'vda2', label: 'sb-store', store: s.dir }]);
    rmSync(join(r.dir, 'dev/loop-control'));
    const before = readState(s);
    const res = await r.boot(CONF + 'ON_FAIL=shell\n', { FAKE_FAIL_LAYER: '.sqfs' });
    expect(res.out).toContain('BOOT=1');
    expect(res.err).toMatch(/no loop devices/);
    expect(readState(s)).toBe(before);
  });

  it('a layer that does not mount on a kernel with squashfs still marks the stack bad', async () => {
    const r = root();
    const s = r.makeStore('s1', { current: 'a', a: { status: 'good' }, b: { status: 'good' } });
    r.addDisk('vda', [{ name: 'vda2', label: 'sb-store', store: s.dir }]);
    const res = await r.boot(CONF, { FAKE_FAIL_LAYER: s.layerHashes.a![0]! });
    expect(res.out).toContain('BOOT=0');
    expect(readState(s)).toMatch(/^a bad /m);
    expect(r.booted().slot).toBe('b');
  });
});
