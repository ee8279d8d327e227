import { describe, expect, it } from 'vitest';
import { chmodSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { run } from '../../src/sys/exec.js';
import { fakeRoots, NODE_TOOL, readEvents, readState, type FakeRoot, type Store, type StoreSpec } from './harness.js';

/** a fresh fake root, cleaned up after the test */
const newRoot = fakeRoots();

/** Boots a store through the real sb_boot, then returns a runner for stackboot-node. */
async function booted(spec: StoreSpec, conf = 'STORES=vda\nDEVICE_TIMEOUT=1\n') {
  const r = newRoot();
  const store = r.makeStore('sd', spec);
  r.addDisk('vda', [{ name: 'vda2', label: 'sb-store', store: store.dir }]);
  const res = await r.boot(conf);
  expect(res.out).toContain('BOOT=0');
  writeFileSync(join(r.dir, 'overrides.sh'), r.fakes());
  writeFileSync(join(r.dir, 'node.conf'), conf);
  const node = async (...args: string[]) => {
    const out = await run('busybox', ['sh', NODE_TOOL, ...args], {
      env: r.env({ SB_TEST_OVERRIDES: join(r.dir, 'overrides.sh'), SB_CONFIG: join(r.dir, 'node.conf'), SB_HEALTH_DIR: join(r.dir, 'health.d'), SB_KMSG: '' }),
      reject: false,
    });
    return { code: out.exitCode, out: out.stdout, err: out.stderr };
  };
  return { r, store, node };
}

function check(r: FakeRoot, kind: 'required' | 'wanted', name: string, body: string): void {
  const d = join(r.dir, 'health.d', kind);
  mkdirSync(d, { recursive: true });
  writeFileSync(join(d, name), `#!/bin/sh\n${body}\n`);
  chmodSync(join(d, name), 0o755);
}

const stateLine = (s: Store, slot: 'a' | 'b') => readState(s).split('\n').find((l) => l.startsWith(`${slot} `));

describe('stackboot-node', () => {
  it('mark-good: pending -> good, current moves, store rw only for the write; idempotent', async () => {
    const { r, store, node } = await booted({ current: 'a', a: { status: 'good' }, b: { status: 'pending', tries: 3 } });
    const before = r.calls().length;
    const res = await node('mark-good');
    expect(res.code).toBe(0);
    expect(readState(store)).toBe(`stackboot-state 1\ncurrent b\na good ${store.stack.a}\nb good ${store.stack.b}\n`);
    const calls = r.calls().slice(before);
    expect(calls.filter((c) => c.includes('remount'))).toEqual([
      `mount -o remount,rw ${r.dir}/run/sb/s0`,
      `mount -o remount,ro ${r.dir}/run/sb/s0`,
    ]);
    expect(readEvents(store).at(-1)).toMatchObject({ event: 'good', slot: 'b' });
    expect(r.booted().status).toBe('good');
    const again = await node('mark-good');
    expect(again.code).toBe(0);
    expect(again.err).toMatch(/already good/);
    expect(readEvents(store).filter((e) => e.event === 'good').length).toBe(1);
  });

  it('mark-good tells the firmware-slot backend of the node config after the state is good (FIRMWARE=jetson, uboot)', async () => {
    for (const fw of ['jetson', 'uboot'] as const) {
      const { r, store } = await booted({ current: 'a', a: { status: 'good' }, b: { status: 'pending', tries: 3 } });
      const bin = join(r.dir, 'bin');
      mkdirSync(bin);
      const log = join(r.dir, 'fw.log');
      // fakes that record what they were asked, and the state file as it was then
      writeFileSync(join(bin, 'nvbootctrl'), `#!/bin/sh\necho "nvbootctrl $*" >> ${log}\ngrep '^b ' ${store.dir}/state >> ${log}\n`);
      writeFileSync(join(bin, 'fw_setenv'), `#!/bin/sh\necho "fw_setenv $1 $(tr '\\n' ';' < $2)" >> ${log}\ngrep '^b ' ${store.dir}/state >> ${log}\n`);
      for (const t of ['nvbootctrl', 'fw_setenv']) chmodSync(join(bin, t), 0o755);
      writeFileSync(join(r.dir, 'node.conf'), `STORES=vda\nFIRMWARE=${fw}\n`);
      writeFileSync(join(r.dir, 'cmdline'), 'console=ttyS0 rauc.slot=B\n');
      const out = await run('busybox', ['sh', NODE_TOOL, 'mark-good'], {
        env: r.env({ PATH: `${bin}:${process.env.PATH}`, SB_TEST_OVERRIDES: join(r.dir, 'overrides.sh'), SB_CONFIG: join(r.dir, 'node.conf'), SB_CMDLINE_FILE: join(r.dir, 'cmdline'), SB_KMSG: '' }),
        reject: false,
      });
      expect(out.exitCode, out.stderr).toBe(0);
      const told = readFileSync(log, 'utf8').trim().split('\n');
      expect(told[0]).toEqual(fw === 'jetson' ? 'nvbootctrl -t rootfs verify' : expect.stringMatching(/^fw_setenv --script BOOT_B_LEFT 3;bootcount 0;upgrade_available 0;$/));
      expect(told[1]).toBe(`b good ${store.stack.b}`);
      expect(out.stderr).toMatch(new RegExp(`the ${fw} firmware was told this boot was good`));
    }
  });

  it('factory-reset: writes the request the hook reads (temp file, fsync, rename, fsync dir), status shows it, --cancel removes it; the next boot carries it out', async () => {
    const { r, store, node } = await booted({ current: 'a', a: { status: 'good' } }, 'STORES=vda\nDEVICE_TIMEOUT=1\nUPPER=disk\n');
    const upper = join(store.dir, 'upper', store.stack.a!, 'data');
    writeFileSync(join(upper, 'changed-at-runtime'), 'x');
    const before = r.calls().length;
    const res = await node('factory-reset');
    expect(res.code, res.err).toBe(0);
    expect(res.out).toMatch(/^factory reset requested: at the next boot the hook wipes every disk upper of .* and the data partition \(label sb-data\) but lost\+found; the stacks stay/);
    expect(readFileSync(join(store.dir, 'reset'), 'utf8')).toMatch(/^stackboot-reset 1\nrequested \d+ stackboot-node factory-reset\n$/);
    const calls = r.calls().slice(before);
    const mnt = `${r.dir}/run/sb/s0`;
    expect(calls.indexOf(`fsync ${mnt}/reset.new`)).toBeLessThan(calls.indexOf(`mv -f ${mnt}/reset.new ${mnt}/reset`));
    expect(calls.indexOf(`fsync ${mnt}`)).toBeGreaterThan(calls.indexOf(`mv -f ${mnt}/reset.new ${mnt}/reset`));
    expect(readEvents(store).at(-1)).toMatchObject({ event: 'reset', slot: '-', stack: '-', reason: 'requested by stackboot-node factory-reset: the next boot wipes the disk uppers and the data partition' });
    expect((await node('status')).out).toMatch(/^factory reset requested \(\d+ stackboot-node factory-reset\): the next boot wipes/m);
    expect(JSON.parse((await node('status', '--json')).out).reset_requested).toBe(true);
    // cancel, and a cancel with nothing to cancel
    expect((await node('factory-reset', '--cancel')).out).toBe('cancelled the factory reset request\n');
    expect((await node('factory-reset', '--cancel')).out).toBe('no factory reset was requested\n');
    expect(JSON.parse((await node('status', '--json')).out).reset_requested).toBe(false);
    expect((await node('factory-reset', '--now')).code).toBe(2);
    // asked again, then the next boot (nothing mounted, a fresh /run) carries it out
    expect((await node('factory-reset')).code).toBe(0);
    rmSync(join(r.runDir, 'sb'), { recursive: true, force: true });
    writeFileSync(join(r.dir, 'mounts'), '');
    const boot = await r.boot('STORES=vda\nDEVICE_TIMEOUT=1\nUPPER=disk\n');
    expect(boot.out).toContain('BOOT=0');
    expect(existsSync(join(store.dir, 'reset'))).toBe(false);
    expect(existsSync(join(upper, 'changed-at-runtime'))).toBe(false);
    expect(readEvents(store).filter((e) => e.event === 'reset').map((e) => e.reason).at(-1)).toMatch(/^factory reset \(\d+ stackboot-node factory-reset\): disk uppers wiped, no data partition \(label sb-data\)$/);
  });

  it('mark-bad: booted current good -> bad, current moves to the other good', async () => {
    const { store, node } = await booted({ current: 'a', a: { status: 'good' }, b: { status: 'good' } });
    const res = await node('mark-bad');
    expect(res.code).toBe(0);
    expect(readState(store)).toContain('current b\n');
    expect(stateLine(store, 'a')).toBe(`a bad ${store.stack.a}`);
    expect(readEvents(store).at(-1)).toMatchObject({ event: 'bad', slot: 'a' });
    expect(res.err).not.toMatch(/no stack of this store/);
  });

  it("mark-bad of the store's only good stack: done, with a warning that nothing here boots now", async () => {
    const { store, node } = await booted({ current: 'a', a: { status: 'good' } });
    const res = await node('mark-bad');
    expect(res.code).toBe(0);
    expect(readState(store)).toContain('current -\n');
    expect(res.err).toMatch(/no stack of this store is good or pending now: the next boot tries the other stores, then ON_FAIL/);
  });

  it('status names the fallback stores the hook found at boot', async () => {
    const { node, r } = await booted({ current: 'a', a: { status: 'good' } });
    const f = join(r.runDir, 'stackboot/stores');
    writeFileSync(f, readFileSync(f, 'utf8') + `dev=/dev/mmcblk0p2 id=${'5'.repeat(32)} booted=0 current=a a=good:0123456789ab b=-:-\n`);
    const j = JSON.parse((await node('status', '--json')).out);
    expect(j.stores).toHaveLength(2);
    expect(j.stores[1]).toEqual({ dev: '/dev/mmcblk0p2', id: '5'.repeat(32), role: 'fallback', current: 'a', a: 'good:0123456789ab', b: '-:-' });
    expect((await node('status')).out).toMatch(/store: +\/dev\/mmcblk0p2 5+ \(fallback\): current a, a good:0123456789ab/);
  });

  it('mark-good refuses when the booted slot was rewritten since boot', async () => {
    const { store, node } = await booted({ current: 'a', a: { status: 'good' }, b: { status: 'pending', tries: 3 } });
    writeFileSync(join(store.dir, 'state'), readState(store).replace(store.stack.b!, 'e'.repeat(64)));
    const res = await node('mark-good');
    expect(res.code).toBe(1);
    expect(res.err.trim().split('\n')).toHaveLength(1);
    expect(res.err).toMatch(/no longer holds the booted stack/);
  });

  it('status --json: valid JSON with booted, slots, lists and the last fallback (escaped)', async () => {
    const { store, node } = await booted(
      { current: 'a', a: { status: 'good' }, b: { status: 'pending', tries: 2, layers: [{ name: 'base', size: 10, missing: true }] } },
    );
    // a reason with characters that need escaping
    writeFileSync(join(store.dir, 'events'), readFileSync(join(store.dir, 'events'), 'utf8') + '1700000000 fail slot=b stack=abc reason=quote " back \\ tab\there\n12 trunc');
    const res = await node('status', '--json');
    expect(res.code).toBe(0);
    const j = JSON.parse(res.out);
    expect(j.booted).toMatchObject({ slot: 'a', stack: store.stack.a, status: 'good', tries: null, store_dev: expect.stringMatching(/vda2$/) });
    expect(j.booted.fallback).toMatch(/slot b .*missing/);
    expect(j.current).toBe('a');
    expect(j.slots.a).toMatchObject({ status: 'good', manifest_ok: true });
    expect(j.slots.b).toMatchObject({ status: 'bad', stack: store.stack.b });
    expect(j.good).toEqual([{ slot: 'a', stack: store.stack.a }]);
    expect(j.pending).toEqual([]);
    expect(j.bad).toEqual([{ slot: 'b', stack: store.stack.b }]);
    expect(j.last_fallback).toEqual({ time: 1700000000, event: 'fail', slot: 'b', stack: 'abc', reason: 'quote " back \\ tab\there' });
    // the booted store and the fallback store (the SD after a migration), as the hook recorded them
    expect(j.stores.map((x: { role: string }) => x.role)).toEqual(['booted']);
    const human = await node('status');
    expect(human.out).toMatch(/booted: +slot a/);
    expect(human.out).toMatch(/last fallback: fail slot b/);
  });

  it('status --json lists a pending stack with its tries', async () => {
    const { store, node } = await booted({ current: 'a', a: { status: 'good' }, b: { status: 'pending', tries: 3 } });
    const j = JSON.parse((await node('status', '--json')).out);
    expect(j.booted).toMatchObject({ slot: 'b', status: 'pending', tries: 2 });
    expect(j.pending).toEqual([{ slot: 'b', stack: store.stack.b, tries: 2 }]);
    expect(j.last_fallback).toBeNull();
  });

  it('health: required pass, wanted fail -> mark-good', async () => {
    const { r, store, node } = await booted({ current: 'a', a: { status: 'good' }, b: { status: 'pending', tries: 3 } });
    check(r, 'required', '10-ok', 'exit 0');
    check(r, 'wanted', '20-meh', 'exit 3');
    const res = await node('health');
    expect(res.code).toBe(0);
    expect(res.err).toMatch(/wanted.*20-meh failed \(exit 3\)/);
    expect(stateLine(store, 'b')).toBe(`b good ${store.stack.b}`);
    expect(r.calls()).not.toContain('reboot');
  });

  it('health: a required failure -> mark-bad and reboot after the delay; --no-reboot', async () => {
    const conf = 'STORES=vda\nDEVICE_TIMEOUT=1\nHEALTH_REBOOT_DELAY=4\nHEALTH_TIMEOUT=1\n';
    const { r, store, node } = await booted({ current: 'a', a: { status: 'good' }, b: { status: 'pending', tries: 3 } }, conf);
    check(r, 'required', '10-ok', 'exit 0');
    check(r, 'required', '20-hang', 'exec sleep 5');
    const res = await node('health');
    expect(res.code).toBe(1);
    expect(res.err).toMatch(/20-hang timed out after 1s/);
    expect(stateLine(store, 'b')).toBe(`b bad ${store.stack.b}`);
    expect(readState(store)).toContain('current a\n');
    const calls = r.calls();
    expect(calls.indexOf('sleep 4')).toBeGreaterThan(-1);
    expect(calls.indexOf('sleep 4')).toBeLessThan(calls.lastIndexOf('reboot'));
    const before = r.calls().filter((c) => c === 'reboot').length;
    const res2 = await node('health', '--no-reboot');
    expect(res2.code).toBe(1);
    expect(r.calls().filter((c) => c === 'reboot').length).toBe(before);
  });

  it('migrate: a bad or missing option value is a usage error (exit 2), before any disk is looked at', async () => {
    const { node } = await booted({ current: 'a', a: { status: 'good' } });
    for (const [args, msg] of [
      [['--to', '/dev/nonexistent', '--data-mib', 'abc'], 'migrate: --data-mib wants a whole number of MiB, 1 or more'],
      [['--to', '/dev/nonexistent', '--data-mib', '0'], 'migrate: --data-mib wants a whole number of MiB, 1 or more'],
      [['--to', '/dev/nonexistent', '--tries', 'x'], 'migrate: --tries wants a whole number of 1 or more'],
      [['--tries'], 'migrate: --tries needs a value'],
      [['--to'], 'migrate: --to needs a value'],
    ] as const) {
      const res = await node('migrate', ...args);
      expect([res.code, res.err.split('\n')[0]], args.join(' ')).toEqual([2, `stackboot-node: ${msg}`]);
    }
    // 08 is a number here (not octal, not a shell error): the check goes on to the disk
    const res = await node('migrate', '--to', '/dev/nonexistent', '--data-mib', '08', '--tries', '09');
    expect([res.code, res.err.trim().split('\n').at(-1)]).toEqual([1, expect.stringMatching(/migrate: \/dev\/nonexistent is not a block device/)]);
  });

  it('events -n, usage errors exit 2', async () => {
    const { node } = await booted({ current: 'a', a: { status: 'good' }, b: { status: 'pending', tries: 3 } });
    const all = await node('events');
    expect(all.out.trim().split('\n').map((l) => l.split(' ')[1])).toEqual(['try', 'boot']);
    const one = await node('events', '-n', '1');
    expect(one.out.trim().split('\n')).toHaveLength(1);
    expect(one.out).toMatch(/ boot slot=b /);
    expect((await node('events', '-n', 'x')).code).toBe(2);
    expect((await node('bogus')).code).toBe(2);
    expect((await node()).code).toBe(2);
    expect((await node('status', '--yaml')).code).toBe(2);
  });

  it('a lock left without an owner (its taker died right after the mkdir) is stale after 10 s', async () => {
    const { r, store, node } = await booted({ current: 'a', a: { status: 'good' }, b: { status: 'pending', tries: 3 } });
    mkdirSync(join(r.runDir, 'stackboot/store.lock'), { recursive: true });
    const res = await node('mark-good');
    expect(res.code).toBe(0);
    expect(stateLine(store, 'b')).toBe(`b good ${store.stack.b}`);
    const sleeps = r.calls().filter((c) => c.startsWith('sleep'));
    expect(sleeps.length).toBeGreaterThanOrEqual(10);
    expect(sleeps.length).toBeLessThan(15);
  });

  it('not booted by stackboot: status fails with one line', async () => {
    const r = newRoot();
    const out = await run('busybox', ['sh', NODE_TOOL, 'status'], { env: r.env({ SB_CONFIG: '/nonexistent' }), reject: false });
    expect(out.exitCode).toBe(1);
    expect(out.stderr.trim().split('\n')).toHaveLength(1);
  });
});
