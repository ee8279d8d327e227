/**
 * Updates on a real node (amd64, QEMU TCG): the demo-node stack (busybox demo + Node.js +
 * the real stackboot CLI) receives a bundle on a second virtual disk (/dev/vdb holds the
 * bundle tar as raw bytes), runs `stackboot install /dev/vdb` inside the guest, reboots
 * into the new stack (pending), passes its health check and is marked good. A bad bundle
 * (health fails) is marked bad and the node falls back to the good stack.
 */
import { describe, it, expect, beforeAll, afterEach } from 'vitest';
import path from 'node:path';
import { writeBundleFile, baseLayers } from '../../src/format/bundle.js';
import type { BuildResult } from '../../src/build/stack.js';
import type { Target } from '../../src/boot/target.js';
import { initrd, scratch, storeDisk, target } from './fixtures.js';
import { bootDemo, expectOnConsole, expectPendingThenGood, readStore, tailOf, type DemoBoot } from './inspect.js';
import { nodeStack } from './node-fixtures.js';
import { useVmCleanup, type Disk } from './qemu.js';

useVmCleanup(afterEach);

let T: Target;
let dir: string;
let rd: string;
let v1: BuildResult, v2: BuildResult, v3: BuildResult;

beforeAll(async () => {
  T = await target('amd64');
  dir = await scratch('update');
  [v1, v2, v3] = await Promise.all([nodeStack('recipe'), nodeStack('update'), nodeStack('broken')]);
  rd = await initrd(path.join(dir, 'initrd.img'), { STORES: 'vda', DEVICE_TIMEOUT: '5', TRIES: '3' });
});

function boot(disks: Disk[], append: string): Promise<DemoBoot> {
  return bootDemo({ target: T, initrd: rd, disks, append: `quiet ${append}`, memoryMiB: 768, timeoutMs: 240_000 });
}

const check = expectOnConsole;

describe('update on a QEMU node with the real stackboot install', () => {
  it('installs a delta bundle from a second disk, boots it pending, marks it good; a bad bundle rolls back', async () => {
    const img = path.join(dir, 'node.img');
    await storeDisk({ file: img, slots: { a: { buildDir: v1.outDir, status: 'good' } }, storeMiB: 256 });
    const delta2 = path.join(dir, 'v2.stackbundle');
    const r2 = await writeBundleFile({ buildDir: v2.outDir, file: delta2, baseDigests: (await baseLayers(v1.outDir)).digests });
    expect(r2.carried.map((l) => l.name)).toEqual(['app']);
    const store: Disk = { file: img, bus: 'virtio' };

    // 1: v1 (good) installs the v2 delta from /dev/vdb, then reboots
    const b1 = await boot([store, { file: delta2, bus: 'virtio', readonly: true }], 'demo.install=/dev/vdb demo.then=reboot');
    check(b1, /DEMO: booted slot=a/, 'v1 should boot from slot a');
    check(b1, /DEMO: install: \{"event":"plan".*"slot":"b","write":\["app"\]/, 'install should plan slot b with the app layer only');
    check(b1, /DEMO: install: \{"event":"done".*"slot":"b","tries":3\}/, 'install should finish');
    check(b1, /DEMO: install from \/dev\/vdb: exit 0/, 'install should exit 0');
    expect(b1.how, tailOf(b1, 'reboot')).toBe('reboot');
    let s = await readStore(img);
    expect(s.state?.slots.b).toEqual({ status: 'pending', stack: v2.stackId, tries: 3 });
    expect(s.state?.current).toBe('a');
    expect(s.events.map((e) => e.event)).toContain('install');

    // 2: the node boots v2 (pending), its health check passes: marked good
    const b2 = await boot([store], 'demo.then=poweroff');
    await expectPendingThenGood(b2, img, { version: '2', old: v1.stackId, now: v2.stackId });

    // 3: a bad bundle (delta against v2) goes into slot a (the old good, neither booted nor current)
    const delta3 = path.join(dir, 'v3.stackbundle');
    await writeBundleFile({ buildDir: v3.outDir, file: delta3, baseDigests: (await baseLayers(v2.outDir)).digests });
    const b3 = await boot([store, { file: delta3, bus: 'virtio', readonly: true }], 'demo.install=/dev/vdb demo.then=reboot');
    check(b3, /DEMO: install: \{"event":"done".*"slot":"a"/, 'v3 should be installed into slot a');
    // 4: v3 boots pending, its health check fails: marked bad
    const b4 = await boot([store], 'demo.then=poweroff');
    expect(b4.version, tailOf(b4, 'v3 should run')).toBe('3');
    expect(b4.booted.slot).toBe('a');
    check(b4, /DEMO: health exit [1-9]/, 'health should fail');
    s = await readStore(img);
    expect(s.state?.slots.a?.status).toBe('bad');
    expect(s.state?.current).toBe('b');
    // 5: back on v2
    const b5 = await boot([store], 'demo.then=poweroff demo.nohealth');
    expect(b5.version, tailOf(b5, 'v2 should run again')).toBe('2');
    expect(b5.booted.slot).toBe('b');
    expect(b5.booted.status).toBe('good');
  });
});
