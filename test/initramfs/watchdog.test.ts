/**
 * The watchdog over a pending stack's try (initramfs/watchdog.sh) under busybox sh with a
 * fake root: when the hook arms it (WATCHDOG > 0, a pending stack, at the switch_root or
 * before the kexec jump), what the booted record keeps for mark-good, what it says when
 * it cannot; stackboot-node's mark-good stopping it; and the real sb_sys_watchdog_arm
 * against a stand-in busybox (the QEMU boots in test/e2e/watchdog.test.ts arm the real
 * i6300esb).
 */
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { run } from '../../src/sys/exec.js';
import { fakeRoots, LIB, NODE_TOOL, sha256, type FakeRoot } from './harness.js';

const roots = fakeRoots();

function node(r: FakeRoot, conf: string): { dev: string; store: ReturnType<FakeRoot['makeStore']> } {
  const store = r.makeStore('s1', { current: 'a', a: { status: 'good' }, b: { status: 'pending', tries: 2 } });
  r.addDisk('vda', [{ name: 'vda2', label: 'sb-store', store: store.dir }]);
  writeFileSync(join(r.dir, 'node.conf'), conf);
  const dev = join(r.dir, 'dev', 'watchdog');
  writeFileSync(dev, '');
  return { dev, store };
}

describe('the hook arms the watchdog for a pending stack', () => {
  it('WATCHDOG=30 and a pending stack: armed at the switch_root, after its try is persisted; the booted record names it', async () => {
    const r = roots();
    const { dev } = node(r, '');
    const res = await r.boot('STORES=vda\nWATCHDOG=30\n');
    expect(res.out).toContain('BOOT=0');
    expect(r.booted().slot).toBe('b');
    expect(r.booted().watchdog).toBe(`${dev}:30`);
    expect(res.err).toMatch(new RegExp(`watchdog ${dev} armed: slot b has 30 s to be marked good`));
    const calls = r.calls();
    const arm = calls.indexOf(`watchdog-arm ${dev} 30`);
    expect(arm).toBeGreaterThan(-1);
    // the try was written before (the state's rename), the stack was mounted before
    expect(calls.slice(0, arm).some((c) => c.startsWith('mv ') && c.includes('state.new'))).toBe(true);
    expect(calls.slice(0, arm).some((c) => c.startsWith('mount') && c.includes('overlay'))).toBe(true);
  });

  it('a good stack, WATCHDOG=0 (the default) and a pending stack without WATCHDOG: nothing is armed', async () => {
    for (const [conf, spec] of [
      ['STORES=vda\nWATCHDOG=30\n', { current: 'a' as const, a: { status: 'good' as const } }],
      ['STORES=vda\n', { current: 'a' as const, a: { status: 'good' as const }, b: { status: 'pending' as const, tries: 2 } }],
      ['STORES=vda\nWATCHDOG=0\n', { current: 'a' as const, a: { status: 'good' as const }, b: { status: 'pending' as const, tries: 2 } }],
    ] as const) {
      const r = roots();
      const store = r.makeStore('s1', spec);
      r.addDisk('vda', [{ name: 'vda2', label: 'sb-store', store: store.dir }]);
      writeFileSync(join(r.dir, 'dev', 'watchdog'), '');
      const res = await r.boot(conf);
      expect(res.out).toContain('BOOT=0');
      expect(r.calls().filter((c) => c.startsWith('watchdog'))).toEqual([]);
      expect(r.booted().watchdog).toBe('');
      expect(res.err).not.toMatch(/watchdog/);
    }
  });

  it('stackboot.watchdog= on the kernel command line sets it; a bad value is ignored with a warning', async () => {
    let r = roots();
    let { dev } = node(r, '');
    let res = await r.boot('STORES=vda\n', { SB_CMDLINE: 'console=ttyS0 stackboot.watchdog=45' });
    expect(r.calls()).toContain(`watchdog-arm ${dev} 45`);
    r = roots();
    ({ dev } = node(r, ''));
    res = await r.boot('STORES=vda\nWATCHDOG=30\n', { SB_CMDLINE: 'stackboot.watchdog=soon' });
    expect(res.err).toMatch(/invalid value for WATCHDOG ignored: soon/);
    expect(r.calls()).toContain(`watchdog-arm ${dev} 30`);
  });

  it('no watchdog device, or one that cannot be armed: said, and the stack boots all the same', async () => {
    let r = roots();
    const store = r.makeStore('s1', { current: 'a', a: { status: 'good' }, b: { status: 'pending', tries: 2 } });
    r.addDisk('vda', [{ name: 'vda2', label: 'sb-store', store: store.dir }]);
    let res = await r.boot('STORES=vda\nWATCHDOG=30\n');
    expect(res.out).toContain('BOOT=0');
    expect(r.booted().slot).toBe('b');
    expect(res.err).toMatch(/WATCHDOG=30 but no \S+\/dev\/watchdog \(the board's watchdog driver is not in this initrd\): a hang of slot b is not reset/);
    expect(r.booted().watchdog).toBe('');
    r = roots();
    node(r, '');
    res = await r.boot('STORES=vda\nWATCHDOG=30\n', { SB_T_WD_FAIL: '1' });
    expect(res.out).toContain('BOOT=0');
    expect(r.booted().slot).toBe('b');
    expect(res.err).toMatch(/cannot arm the watchdog \S+: a hang of slot b is not reset/);
    expect(r.booted().watchdog).toBe('');
  });

  it('a driver that takes another timeout: the record keeps the one it took, and the log says so', async () => {
    const r = roots();
    const { dev } = node(r, '');
    const res = await r.boot('STORES=vda\nWATCHDOG=300\n', { SB_T_WD_TOOK: '255' });
    expect(res.err).toMatch(/took a timeout of 255 s, not WATCHDOG=300/);
    expect(r.booted().watchdog).toBe(`${dev}:255`);
  });

  /** Gives slot b of R a kernel other than the running one (6.1). */
  function kernelForB(r: FakeRoot, store: ReturnType<FakeRoot['makeStore']>): void {
    const files: [string, string, Buffer][] = [
      ['kernel', '/boot/vmlinuz-9.9', Buffer.from('kernel')],
      ['initrd', '/boot/initrd-9.9.img', Buffer.from('initrd')],
    ];
    for (const [, p, b] of files) {
      mkdirSync(join(r.newRoot, 'boot'), { recursive: true });
      writeFileSync(join(r.newRoot, p), b);
    }
    const mf = join(store.dir, 'slots', 'b', 'manifest');
    const text = readFileSync(mf, 'utf8').replace('\nlayer ', `\nkernel 9.9 /boot/vmlinuz-9.9 sha256:${sha256(files[0]![2])} 6\ninitrd /boot/initrd-9.9.img sha256:${sha256(files[1]![2])} 6\nlayer `);
    writeFileSync(mf, text);
    const st = join(store.dir, 'state');
    writeFileSync(st, readFileSync(st, 'utf8').replace(store.stack.b!, sha256(text)));
  }
  const kexecFakes = (jumpFails = false) => `sb_sys_kernel_release() { echo 6.1; }
sb_sys_has_kexec() { return 0; }
sb_sys_kexec_load() { sb__rec "kexec-load $4"; return 0; }
sb_sys_kexec_exec() { sb__rec "kexec-exec"; ${jumpFails ? 'return 1' : 'echo JUMPED; exit 0'}; }
sb_config_load "$SB_T/boot.conf"
sb_boot "$SB_T/root"; echo "BOOT=$?"`;

  it('a failed kexec jump after the arming: the watchdog is stopped again, so the stack booted instead is not reset', async () => {
    const r = roots();
    const { dev, store } = node(r, '');
    kernelForB(r, store);
    writeFileSync(join(r.dir, 'boot.conf'), 'STORES=vda\nWATCHDOG=30\n');
    const res = await r.sh(kexecFakes(true));
    expect(res.out).toContain('BOOT=0');
    expect(r.booted().slot).toBe('a');
    const calls = r.calls();
    expect(calls.indexOf(`watchdog-stop ${dev}`)).toBeGreaterThan(calls.indexOf('kexec-exec'));
    expect(r.booted().watchdog).toBe('');
  });

  it('a pending stack with its own kernel: armed before the kexec jump, stackboot.watchdog= passed on to the second stage, a warning when the kernel would stop the watchdog on the way', async () => {
    for (const sor of ['0', '-1']) {
      const r = roots();
      const { dev, store } = node(r, '');
      kernelForB(r, store);
      writeFileSync(join(r.dir, 'boot.conf'), 'STORES=vda\nWATCHDOG=30\n');
      const res = await r.sh(kexecFakes(), { SB_T_WD_SOR: sor, SB_CMDLINE: 'console=ttyS0 stackboot.watchdog=5' });
      expect(res.out).toContain('JUMPED');
      const calls = r.calls();
      // the command line's stackboot.watchdog=5 wins over WATCHDOG=30, and is what the second stage gets
      const load = calls.findIndex((c) => c.startsWith('kexec-load'));
      expect(calls[load]).toMatch(/^kexec-load console=ttyS0 stackboot\.kexec=\S+ stackboot\.watchdog=5$/);
      const arm = calls.indexOf(`watchdog-arm ${dev} 5`);
      expect(arm).toBeGreaterThan(load);
      expect(arm).toBeLessThan(calls.indexOf('kexec-exec'));
      if (sor === '0') expect(res.err).not.toMatch(/stop_on_reboot/);
      else expect(res.err).toMatch(/may be stopped by the jump into the new kernel \(watchdog.stop_on_reboot=-1\): put watchdog.stop_on_reboot=0 on the kernel command line/);
    }
  });
});

describe('a boot after a watchdog reset', () => {
  it("the pending stack's try and exhausted events say the last boot was reset by the watchdog (bootstatus WDIOF_CARDRESET); other flags and other boots say nothing", async () => {
    for (const [bootstatus, said] of [['32', true], ['0', false], ['1', false], ['', false]] as const) {
      const r = roots();
      const store = r.makeStore('s1', { current: 'a', a: { status: 'good' }, b: { status: 'pending', tries: 1 } });
      r.addDisk('vda', [{ name: 'vda2', label: 'sb-store', store: store.dir }]);
      const res = await r.boot('STORES=vda\n', { SB_T_WD_BOOTSTATUS: bootstatus });
      expect(res.out).toContain('BOOT=0');
      const ev = readFileSync(join(store.dir, 'events'), 'utf8');
      expect(ev, bootstatus).toMatch(/try/);
      if (said) {
        expect(ev).toMatch(/pending, 0 tries left after this one \(the last boot was reset by the watchdog\)/);
        expect(res.err).toMatch(/the board's last reset came from its watchdog/);
      } else expect(ev).not.toMatch(/watchdog/);
    }
    // the next boot: no tries left, and the reset named again
    const r = roots();
    const store = r.makeStore('s1', { current: 'a', a: { status: 'good' }, b: { status: 'pending', tries: 0 } });
    r.addDisk('vda', [{ name: 'vda2', label: 'sb-store', store: store.dir }]);
    await r.boot('STORES=vda\n', { SB_T_WD_BOOTSTATUS: '32' });
    expect(readFileSync(join(store.dir, 'events'), 'utf8')).toMatch(/no tries left \(the last boot was reset by the watchdog\)/);
  });
});

describe("stackboot-node mark-good stops the hook's watchdog", () => {
  async function markGood(env: Record<string, string> = {}) {
    const r = roots();
    const { dev } = node(r, 'STORES=vda\n');
    await r.boot('STORES=vda\nWATCHDOG=30\n');
    expect(r.booted().watchdog).toBe(`${dev}:30`);
    writeFileSync(join(r.dir, 'overrides.sh'), r.fakes());
    const out = await run('busybox', ['sh', NODE_TOOL, 'mark-good'], {
      env: r.env({ SB_TEST_OVERRIDES: join(r.dir, 'overrides.sh'), SB_CONFIG: join(r.dir, 'node.conf'), SB_KMSG: '', ...env }),
      reject: false,
    });
    return { r, dev, code: out.exitCode, err: out.stderr };
  }

  it('stopped by its magic close after the state is good; the booted record forgets it', async () => {
    const { r, dev, code, err } = await markGood();
    expect(code, err).toBe(0);
    expect(r.calls()).toContain(`watchdog-stop ${dev}`);
    expect(err).toMatch(new RegExp(`watchdog ${dev} stopped \\(the stack is good\\)`));
    expect(r.booted().status).toBe('good');
    expect(r.booted().watchdog).toBe('');
  });

  it('held open by another process (systemd): left to it; still running after the close (nowayout): a warning, and the record keeps it', async () => {
    let m = await markGood({ SB_T_WD_BUSY: '1' });
    expect(m.code, m.err).toBe(0);
    expect(m.err).toMatch(/is held by another process \(systemd's RuntimeWatchdogSec\?\), which feeds it/);
    expect(m.r.booted().watchdog).toBe('');
    m = await markGood({ SB_T_WD_STATE: 'active' });
    expect(m.code, m.err).toBe(0);
    expect(m.err).toMatch(/did not stop \(a kernel or driver with nowayout\): feed it, or the board resets/);
    expect(m.r.booted().watchdog).toBe(`${m.dev}:30`);
    expect(m.r.booted().status).toBe('good');
  });
});

describe('sb_sys_watchdog_arm (the real one, with a stand-in busybox)', () => {
  it('runs busybox watchdog with the timeout, waits for sysfs to show it, kills it with SIGKILL (no magic close) and prints the timeout taken', async () => {
    const r = roots();
    const bin = join(r.dir, 'bin');
    const sys = join(r.dir, 'sys/class/watchdog/watchdog0');
    mkdirSync(bin);
    mkdirSync(sys, { recursive: true });
    const log = join(r.dir, 'bb.log');
    // a busybox whose watchdog applet arms sysfs after a moment, feeds, and writes V on TERM
    // as the real one does; at $SB_LIB/busybox, where the flavours put theirs, so that no
    // real busybox (and no real watchdog) is ever run by this test
    writeFileSync(
      join(bin, 'busybox'),
      `#!/bin/sh
echo "$*" >> ${log}
trap 'echo V >> ${log}; echo inactive > ${sys}/state; exit 0' TERM
sleep 0.3
echo "$4" > ${sys}/timeout
echo active > ${sys}/state
while :; do sleep 0.1; done
`,
    );
    chmodSync(join(bin, 'busybox'), 0o755);
    const bb = (await run('sh', ['-c', 'command -v busybox'])).stdout.trim();
    const res = await run(bb, ['sh', '-c', `for f in log util sys watchdog; do . "${LIB}/$f.sh"; done; sb_sys_watchdog_arm "$SB_T_DEV" 20; echo "rc=$?"`], {
      env: { SB_LIB: bin, SB_T_DEV: join(r.dir, 'dev/watchdog'), SB_SYS_WATCHDOG: join(r.dir, 'sys/class/watchdog'), PATH: '/usr/bin:/bin', SB_KMSG: '' },
      reject: false,
    });
    expect(res.stdout, res.stderr).toBe('20\nrc=0\n');
    const calls = readFileSync(log, 'utf8').trim().split('\n');
    expect(calls).toEqual([`watchdog -F -T 20 -t 10 ${join(r.dir, 'dev/watchdog')}`]);
    // killed with SIGKILL: its TERM handler (the magic close) never ran
    expect(readFileSync(join(sys, 'state'), 'utf8').trim()).toBe('active');
  });
});
