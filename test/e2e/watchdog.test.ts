/**
 * The board's watchdog over a pending stack's try (initramfs/watchdog.sh, WATCHDOG= in
 * the boot config), on real QEMU nodes (amd64) with QEMU's i6300esb watchdog, whose
 * expiry resets the machine (`-action watchdog=reset`; the harness's -no-reboot turns
 * that reset into QEMU's exit, with no kernel reboot line on the console, since the guest
 * kernel never learns of it):
 * - a pending stack whose userspace hangs before it is marked good: the watchdog resets
 *   the node (here QEMU restarts the guest, as a board does, and the next boot reads the
 *   reset from the driver's bootstatus into the `exhausted` event), that try is used up,
 *   and the node falls back to the good stack, which runs past the timeout (the hook arms
 *   nothing for a good stack);
 * - a pending stack that its health checks mark good: mark-good stops the watchdog, and
 *   the node runs past the timeout;
 * - a stack whose own kernel hangs after the kexec (it panics with `panic=0`): the
 *   watchdog armed before the jump (kept through it by `watchdog.stop_on_reboot=0`)
 *   resets the node, and the node falls back to the good stack and its kernel;
 * - a stack with its own kernel that boots: the second stage (the driver in its initrd)
 *   arms the watchdog again, and mark-good stops it.
 */
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, beforeAll, describe, expect } from 'vitest';
import { buildInitramfs, makeBootConfig } from '../../src/boot/initramfs.js';
import type { Target } from '../../src/boot/target.js';
import { CACHE, demoStack, scratch, storeDisk, target } from './fixtures.js';
import { itConcurrent } from './concurrent.js';
import { kernelStack, kexecFixture, panicStack, KEXEC_BOOT } from './kernel-fixtures.js';
import { readStore } from './inspect.js';
import { Vm, useVmCleanup, type BootOptions } from './qemu.js';

useVmCleanup(afterEach);

/** The watchdog's timeout (s): long enough for the demo to boot and mark good under TCG. */
const SECS = 20;
const WATCHDOG_QEMU = ['-device', 'i6300esb', '-action', 'watchdog=reset'];
const ARMED = new RegExp(`watchdog /dev/watchdog armed: slot b has ${SECS} s to be marked good`);
/** What the guest kernel prints when it powers off or reboots itself. */
const KERNEL_EXIT = /reboot: (Power down|Restarting system)/;

let T: Target;
let dir: string;
let rd: string;

beforeAll(async () => {
  T = await target('amd64');
  dir = await scratch('watchdog');
  rd = path.join(dir, 'initrd.img');
  await Promise.all([
    buildInitramfs({ flavor: 'standalone', out: rd, arch: 'amd64', cacheRoot: CACHE, modules: ['i6300esb'], config: makeBootConfig({ set: [['STORES', 'vda'], ['DEVICE_TIMEOUT', '5'], ['WATCHDOG', String(SECS)]] }) }),
    demoStack('demo'),
    demoStack('demo-update'),
  ]);
}, 600_000);

function start(img: string, append: string, o: Partial<BootOptions> = {}): Vm {
  return Vm.start({ target: T, initrd: rd, disks: [{ file: img, bus: 'virtio' }], append: `quiet ${append}`, qemuArgs: WATCHDOG_QEMU, timeoutMs: 300_000, ...o });
}

/** The VM is still running `secs` seconds after now (nothing reset it). */
async function staysUp(vm: Vm, secs: number, what: string): Promise<void> {
  await sleep(secs * 1000);
  expect(vm.exited, vm.failMessage(`${what}: the VM should still run ${secs} s later`)).toBe(false);
  vm.kill();
}

/** The VM exits by itself without the guest kernel powering off or rebooting: the watchdog's reset. */
async function resetByWatchdog(vm: Vm, armedAt: number, secs: number, what: string): Promise<void> {
  const exit = await vm.waitExit(secs * 1000 + 120_000);
  expect(exit.how, vm.failMessage(`${what}: QEMU should exit by itself`)).not.toBe('killed');
  expect(exit.code, vm.failMessage(`${what}: QEMU's exit code`)).toBe(0);
  expect(exit.output.slice(armedAt), vm.failMessage(`${what}: no power-off or reboot by the guest kernel`)).not.toMatch(KERNEL_EXIT);
}

let kexecInitrd: Promise<string> | undefined;
/** The first stage for stack kernels: kexec, the watchdog driver and WATCHDOG= (made once). */
function firstStage(): Promise<string> {
  kexecInitrd ??= (async () => {
    const f = await kexecFixture('amd64');
    const rdK = path.join(dir, 'initrd-kexec.img');
    await buildInitramfs({ flavor: 'standalone', out: rdK, arch: 'amd64', cacheRoot: CACHE, modules: ['i6300esb'], kexecRoot: f.T.kexecRoot, config: makeBootConfig({ set: [...Object.entries(KEXEC_BOOT), ['WATCHDOG', String(SECS)]] }) });
    return rdK;
  })();
  return kexecInitrd;
}

describe('the watchdog over a pending try (amd64, i6300esb)', () => {
  itConcurrent('a pending stack that hangs before mark-good is reset by the watchdog (QEMU restarts the guest, as a board does); its try is used, the next boot says why, and the good stack boots unarmed and runs past the timeout', async () => {
    const [v1, v2] = await Promise.all([demoStack('demo'), demoStack('demo-update')]);
    const img = path.join(dir, 'reset.img');
    await storeDisk({ file: img, slots: { a: { buildDir: v1.outDir, status: 'good' }, b: { buildDir: v2.outDir, status: 'pending', tries: 1 } }, current: 'a' });
    // the stack's userspace never gets to its health checks: a hang as far as stackboot can tell
    const vm = start(img, 'demo.nohealth demo.then=shell', { reboot: true });
    const armed = await vm.waitFor(ARMED, 240_000);
    const armedMs = vm.elapsed();
    await vm.waitFor(new RegExp(`^DEMO: booted watchdog=/dev/watchdog:${SECS}$`, 'm'), 120_000);
    await vm.waitFor(/^DEMO: then shell$/m, 120_000);
    // the second boot, in the same QEMU: b has no tries left, and a boots
    await vm.waitFor(/slot b \([0-9a-f]{12}\) ran out of tries: bad/, { from: armed.index, timeoutMs: 240_000 });
    const second = vm.output().slice(armed.index!);
    // a second boot in the same QEMU, whose hook reads the reset from the driver; the guest kernel never rebooted itself
    expect(second, vm.failMessage('the hook reads the reset from the driver')).toMatch(/stackboot: warning: the board's last reset came from its watchdog/);
    expect(second, vm.failMessage('no power-off or reboot by the guest kernel before it')).not.toMatch(KERNEL_EXIT);
    expect(vm.elapsed() - armedMs, vm.failMessage('the reset comes about the timeout after the arming')).toBeGreaterThan((SECS - 2) * 1000);
    const booted = await vm.waitFor(/^DEMO: booted slot=a$/m, { from: armed.index, timeoutMs: 120_000 });
    await vm.waitFor(/^DEMO: then shell$/m, { from: booted.index, timeoutMs: 120_000 });
    const after = vm.output().slice(booted.index!);
    expect(after, vm.failMessage('a good stack is not armed')).toMatch(/^DEMO: booted watchdog=$/m);
    expect(vm.output().match(new RegExp(ARMED.source, 'g')), vm.failMessage('armed once, for the pending stack')).toHaveLength(1);
    await staysUp(vm, SECS + 5, 'the good stack');
    const s = await readStore(img);
    expect(s.state?.slots.b?.status).toBe('bad');
    expect(s.events.map((e) => `${e.event} ${e.slot}`)).toEqual(['try b', 'boot b', 'exhausted b', 'boot a']);
    const ex = s.events.find((e) => e.event === 'exhausted');
    expect(ex?.reason).toBe('no tries left (the last boot was reset by the watchdog)');
    // the first boot's try was counted before the reset, and said nothing of one
    expect(s.events.find((e) => e.event === 'try')?.reason).toBe('pending, 0 tries left after this one');
  });

  itConcurrent('a pending stack that health marks good: mark-good stops the watchdog and the node runs on past the timeout', async () => {
    const [v1, v2] = await Promise.all([demoStack('demo'), demoStack('demo-update')]);
    const img = path.join(dir, 'good.img');
    await storeDisk({ file: img, slots: { a: { buildDir: v1.outDir, status: 'good' }, b: { buildDir: v2.outDir, status: 'pending', tries: 2 } }, current: 'a' });
    const vm = start(img, 'demo.then=shell');
    await vm.waitFor(ARMED, 240_000);
    await vm.waitFor(/^DEMO: then shell$/m, 120_000);
    const out = vm.output();
    expect(out, vm.failMessage('health exit')).toMatch(/^DEMO: health exit 0$/m);
    expect(out, vm.failMessage('mark-good stops the watchdog')).toMatch(/watchdog \/dev\/watchdog stopped \(the stack is good\)/);
    await staysUp(vm, SECS + 5, 'after mark-good');
    const s = await readStore(img);
    expect(s.state?.slots.b).toEqual({ status: 'good', stack: v2.stackId });
  });

  itConcurrent('a stack kernel that hangs after the kexec (panic=0): the watchdog armed before the jump resets the node, which falls back to the good stack and its kernel', async () => {
    const f = await kexecFixture('amd64');
    const v3 = await panicStack(f);
    const rdK = await firstStage();
    const img = path.join(dir, 'kexec-hang.img');
    await storeDisk({ file: img, slots: { a: { buildDir: f.v2.outDir, status: 'good' }, b: { buildDir: v3.dir, status: 'pending', tries: 1 } }, current: 'a', storeMiB: 320 });
    const o = { initrd: rdK, memoryMiB: 768 };
    // panic=0: a panicking kernel waits forever, as a hung one does
    let vm = start(img, 'panic=0 watchdog.stop_on_reboot=0', o);
    const armed = await vm.waitFor(ARMED, 240_000);
    expect(vm.output(), vm.failMessage('no warning about stop_on_reboot')).not.toMatch(/may be stopped by the jump/);
    await vm.waitFor(/Kernel panic - not syncing/, 240_000);
    await resetByWatchdog(vm, armed.index!, SECS, 'kexec boot');
    let s = await readStore(img);
    expect(s.state?.slots.b?.tries).toBe(0);
    // the next boot: b is out of tries; a boots on its own 6.12 kernel
    vm = start(img, 'demo.then=shell', o);
    await vm.waitFor(/^DEMO: then shell$/m, 300_000);
    expect(vm.output(), vm.failMessage('b ran out of tries')).toMatch(/slot b \([0-9a-f]{12}\) ran out of tries: bad/);
    expect(vm.output(), vm.failMessage('a on its kernel')).toMatch(new RegExp(`^DEMO: kernel ${f.T.kernel2!.kver.replace(/[.+]/g, '\\$&')}$`, 'm'));
    vm.kill();
    s = await readStore(img);
    expect(s.state?.slots.b?.status).toBe('bad');
    expect(s.events.map((e) => `${e.event} ${e.slot}`)).toEqual(['try b', 'kexec b', 'exhausted b', 'kexec a', 'boot a']);
  });

  itConcurrent('a pending stack with its own kernel that is marked good: armed before the jump, taken over by the second stage (the driver in its initrd, stackboot.watchdog= passed on), stopped by mark-good', async () => {
    const f = await kexecFixture('amd64');
    const [rdK, v2wd] = await Promise.all([firstStage(), kernelStack(f.T, dir, 'amd64', { modules: ['i6300esb'], out: 'v2-watchdog' })]);
    const img = path.join(dir, 'kexec-good.img');
    await storeDisk({ file: img, slots: { a: { buildDir: f.v1.outDir, status: 'good' }, b: { buildDir: v2wd.outDir, status: 'pending', tries: 2 } }, current: 'a', storeMiB: 320 });
    const vm = start(img, 'watchdog.stop_on_reboot=0 demo.then=shell', { initrd: rdK, memoryMiB: 768 });
    await vm.waitFor(/^DEMO: then shell$/m, 300_000);
    const out = vm.output();
    expect(out, vm.failMessage('the second stage runs the 6.12 kernel')).toMatch(new RegExp(`^DEMO: kernel ${f.T.kernel2!.kver.replace(/[.+]/g, '\\$&')}$`, 'm'));
    expect(out.match(new RegExp(ARMED.source, 'g')), vm.failMessage('armed by both stages')).toHaveLength(2);
    expect(out, vm.failMessage('health')).toMatch(/^DEMO: health exit 0$/m);
    expect(out, vm.failMessage('mark-good stops it')).toMatch(/watchdog \/dev\/watchdog stopped \(the stack is good\)/);
    await staysUp(vm, SECS + 5, 'after mark-good');
    const s = await readStore(img);
    expect(s.state?.slots.b).toEqual({ status: 'good', stack: v2wd.stackId });
  });
});
