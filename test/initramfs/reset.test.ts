/**
 * Factory reset in the hook (initramfs/reset.sh): a request in the store, or
 * stackboot.reset on the command line, wipes every disk upper of the store and the data
 * partition (but lost+found) before any stack of the store is mounted; the request goes
 * only when all of it is done.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { fakeRoots, readEvents, readState } from './harness.js';

const CONF = 'STORES=vda\nSTORE_LABEL=sb-store\nDATA_LABEL=sb-data\nDEVICE_TIMEOUT=1\nDEVICE_SETTLE=0\nUPPER=disk\nPERSIST=/var/lib/app\n';
const REQUEST = 'stackboot-reset 1\nrequested 1796600000 stackboot factory-reset\n';

const newRoot = fakeRoots();

/** A store with a good stack and its disk upper, a data partition with user data. */
function node() {
  const r = newRoot();
  const s = r.makeStore('sd', { current: 'a', a: { status: 'good' }, b: { status: 'pending', tries: 2 } });
  const data = r.dataDir('data');
  r.addDisk('vda', [{ name: 'vda2', label: 'sb-store', store: s.dir }, { name: 'vda3', label: 'sb-data', store: data }]);
  for (const id of [s.stack.a!, s.stack.b!]) {
    mkdirSync(join(s.dir, 'upper', id, 'data', 'etc'), { recursive: true });
    mkdirSync(join(s.dir, 'upper', id, 'work'), { recursive: true });
    writeFileSync(join(s.dir, 'upper', id, 'data', 'etc', 'changed'), 'x');
  }
  mkdirSync(join(data, 'var/lib/app'), { recursive: true });
  writeFileSync(join(data, 'var/lib/app/db'), 'user data');
  writeFileSync(join(data, '.hidden'), 'h');
  writeFileSync(join(data, '..dots'), 'd');
  symlinkSync('/nowhere', join(data, 'dangling'));
  mkdirSync(join(data, 'lost+found'));
  writeFileSync(join(data, 'lost+found', '#1234'), 'fsck kept this');
  return { r, s, data };
}

describe('factory reset (reset.sh)', () => {
  it('a request in the store: every disk upper and the data partition wiped (lost+found kept), the request removed, a reset event, then the boot as usual', async () => {
    const { r, s, data } = node();
    const stateBefore = readState(s);
    writeFileSync(join(s.dir, 'reset'), REQUEST);
    const res = await r.boot(CONF);
    expect(res.out).toContain('BOOT=0');
    expect(res.err).toMatch(/factory reset \(1796600000 stackboot factory-reset\): wiping the disk uppers and the data partition/);
    expect(existsSync(join(s.dir, 'reset'))).toBe(false);
    // the pending stack booted with a fresh upper; the good one's upper is gone
    expect(readdirSync(join(s.dir, 'upper'))).toEqual([s.stack.b]);
    expect(readdirSync(join(s.dir, 'upper', s.stack.b!, 'data'))).toEqual([]);
    // the data partition: only lost+found and what PERSIST seeded again from the stack
    expect(readdirSync(data).sort()).toEqual(['lost+found', 'var']);
    expect(readFileSync(join(data, 'lost+found', '#1234'), 'utf8')).toBe('fsck kept this');
    expect(existsSync(join(data, 'var/lib/app/db'))).toBe(false);
    const ev = readEvents(s);
    expect(ev.map((e) => e.event)).toEqual(['reset', 'try', 'boot']);
    expect(ev[0]!.reason).toBe(`factory reset (1796600000 stackboot factory-reset): disk uppers wiped, the data partition ${r.dir}/dev/vda3 emptied (4 entries)`);
    // the stacks and their state are not touched (but the try the boot counted)
    expect(readState(s)).toBe(stateBefore.replace(/^(b pending \S+) 2$/m, '$1 1'));
    // the data partition was mounted for the reset and unmounted before the boot went on
    const calls = r.calls();
    const m = calls.indexOf(`mount -t ext4 -o rw ${r.dir}/dev/vda3 ${r.dir}/run/sb/reset`);
    expect(m).toBeGreaterThan(-1);
    expect(calls.indexOf(`umount ${r.dir}/run/sb/reset`)).toBeGreaterThan(m);
    expect(calls.findIndex((c) => c.startsWith('layer '))).toBeGreaterThan(m);
  });

  it('no request, or a reset file without the magic: nothing is wiped', async () => {
    const { r, s, data } = node();
    writeFileSync(join(s.dir, 'reset'), 'please reset\n');
    const res = await r.boot(CONF);
    expect(res.out).toContain('BOOT=0');
    expect(res.err).toMatch(/reset is not a reset request \(no "stackboot-reset 1" line\): ignored/);
    expect(readFileSync(join(data, 'var/lib/app/db'), 'utf8')).toBe('user data');
    expect(readdirSync(join(s.dir, 'upper')).sort()).toEqual([s.stack.a, s.stack.b].sort());
    expect(readEvents(s).map((e) => e.event)).toEqual(['try', 'boot']);
  });

  it('stackboot.reset on the command line: the same, once, with no request file', async () => {
    const { r, s, data } = node();
    const res = await r.boot(CONF, { SB_CMDLINE: 'quiet stackboot.reset' });
    expect(res.out).toContain('BOOT=0');
    expect(existsSync(join(data, 'var/lib/app/db'))).toBe(false);
    expect(readEvents(s)[0]!.reason).toMatch(/^factory reset \(stackboot\.reset on the kernel command line\): disk uppers wiped, the data partition .*vda3 emptied/);
  });

  it('a data partition that does not mount: the request stays for the next boot, which finishes it', async () => {
    const { r, s, data } = node();
    writeFileSync(join(s.dir, 'reset'), REQUEST);
    const res = await r.boot(CONF, { FAKE_FAIL_DEV: 'vda3' });
    expect(res.out).toContain('BOOT=0');
    expect(res.err).toMatch(/cannot mount the data partition .*vda3; the request stays for the next boot/);
    expect(readFileSync(join(s.dir, 'reset'), 'utf8')).toBe(REQUEST);
    expect(readEvents(s)[0]!.reason).toMatch(/not finished: cannot mount the data partition .*vda3; again at the next boot/);
    // an interrupted earlier reset left its trash: gone with the rest
    mkdirSync(join(data, '.sb-reset', 'old'), { recursive: true });
    mkdirSync(join(s.dir, '.wipe-upper-4242', 'x'), { recursive: true });
    // the next boot: nothing mounted, a fresh /run
    rmSync(join(r.runDir, 'sb'), { recursive: true, force: true });
    writeFileSync(join(r.dir, 'mounts'), '');
    const again = await r.boot(CONF);
    expect(again.out, again.err).toContain('BOOT=0');
    expect(existsSync(join(s.dir, 'reset'))).toBe(false);
    expect(readdirSync(data).sort()).toEqual(['lost+found', 'var']);
    expect(readdirSync(s.dir).filter((n) => n.startsWith('.wipe'))).toEqual([]);
    expect(readEvents(s).filter((e) => e.event === 'reset').map((e) => e.reason)).toEqual([
      expect.stringMatching(/not finished/),
      expect.stringMatching(/disk uppers wiped, the data partition .*vda3 emptied \(4 entries\)$/),
    ]);
  });

  it('no data partition: the uppers are wiped and the event says there was none', async () => {
    const r = newRoot();
    const s = r.makeStore('sd', { current: 'a', a: { status: 'good' } });
    r.addDisk('vda', [{ name: 'vda2', label: 'sb-store', store: s.dir }]);
    mkdirSync(join(s.dir, 'upper', s.stack.a!, 'data'), { recursive: true });
    writeFileSync(join(s.dir, 'upper', s.stack.a!, 'data', 'f'), 'x');
    writeFileSync(join(s.dir, 'reset'), REQUEST);
    const res = await r.boot(CONF.replace('PERSIST=/var/lib/app\n', ''));
    expect(res.out).toContain('BOOT=0');
    expect(existsSync(join(s.dir, 'upper', s.stack.a!, 'data', 'f'))).toBe(false);
    expect(readEvents(s)[0]!.reason).toBe('factory reset (1796600000 stackboot factory-reset): disk uppers wiped, no data partition (label sb-data)');
  });

  it('the kexec command line does not carry stackboot.reset into the second stage', async () => {
    const r = newRoot();
    const res = await r.sh('SB_CMDLINE="root=x stackboot.reset quiet stackboot.reset=1"; sb_kexec_cmdline a:b:c');
    expect(res.out.trim()).toBe('root=x quiet stackboot.kexec=a:b:c');
  });
});
