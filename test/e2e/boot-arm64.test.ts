/**
 * The boot protocol on aarch64 (`qemu-system-aarch64 -M virt -cpu cortex-a57`, TCG):
 * the same standalone initrd and demo stacks built for arm64, scenarios 1-6 and 8 of
 * issue 3 (7, the power cuts, is powercut.test.ts, for both arches). Fewer boots per scenario than
 * on amd64: a TCG arm64 boot is slower.
 */
import { describe, it, expect, beforeAll, afterAll, afterEach } from 'vitest';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { demoStack, storeDisk, initrd, target, scratch } from './fixtures.js';
import { useVmCleanup, Vm, type Disk } from './qemu.js';
import { bootDemo, readStore, corruptLayer, copyImage, writeStoreFile, tailOf, upperFiles, readData, type DemoBoot } from './inspect.js';
import type { BuildResult } from '../../src/stack.js';
import type { Target } from '../../src/target.js';
import { serializeState } from '../../src/state.js';

useVmCleanup(afterEach);

let T: Target;
let demo: BuildResult, upd: BuildResult, broken: BuildResult;
let dir: string;
const initrds = new Map<string, Promise<string>>();

function rd(settings: Record<string, string>): Promise<string> {
  const all = { DEVICE_TIMEOUT: '8', ...settings };
  const key = JSON.stringify(Object.entries(all).sort());
  let p = initrds.get(key);
  if (!p) {
    p = initrd(path.join(dir, `initrd-${initrds.size}.img`), all, 'arm64');
    initrds.set(key, p);
  }
  return p;
}

const virtio = (file: string): Disk[] => [{ file, bus: 'virtio' }];

function boot(initrdFile: string, disks: Disk[], append = ''): Promise<DemoBoot> {
  return bootDemo({ target: T, initrd: initrdFile, disks, append: `quiet ${append}`.trim(), name: 'arm64', timeoutMs: 240_000 });
}

function ran(b: DemoBoot, version: string, slot: string): void {
  expect(b.version, tailOf(b, `expected version ${version}`)).toBe(version);
  expect(b.booted.slot, tailOf(b, `expected slot ${slot}`)).toBe(slot);
  expect(b.how, tailOf(b, `VM ended by ${b.how}`)).toBe('poweroff');
}

const appLayer = (r: BuildResult): string => r.layers.find((l) => l.name === 'app')!.digest;

beforeAll(async () => {
  T = await target('arm64');
  [demo, upd, broken] = await Promise.all([demoStack('demo', 'arm64'), demoStack('demo-update', 'arm64'), demoStack('demo-broken', 'arm64')]);
  dir = await scratch('boot-arm64');
});

// the images are sparse but add up: removed unless SB_KEEP_E2E is set (to look at them)
afterAll(async () => {
  if (dir && !process.env.SB_KEEP_E2E) await rm(dir, { recursive: true, force: true });
});

describe('boot protocol on arm64 (QEMU virt, cortex-a57)', () => {
  it('1: boots the demo stack, writable root, the tmpfs upper is fresh on the next boot', async () => {
    const img = path.join(dir, 's1.img');
    await storeDisk({ file: img, slots: { a: { buildDir: demo.outDir, status: 'good' } } });
    const ird = await rd({ STORES: 'vda' });
    const b1 = await boot(ird, virtio(img), 'demo.write=/upper-marker');
    ran(b1, '1', 'a');
    expect(b1.booted.stack).toBe(demo.stackId);
    expect(b1.output, tailOf(b1, 'root not writable')).toMatch(/^DEMO: root is writable$/m);
    expect(b1.output).toMatch(/^DEMO: wrote \/upper-marker$/m);
    const b2 = await boot(ird, virtio(img));
    ran(b2, '1', 'a');
    expect(b2.booted.upper).toBe('tmpfs');
    expect(b2.output, tailOf(b2, 'upper kept a file')).toMatch(/^DEMO: upper is fresh$/m);
  });

  it('2: a pending update that passes its health check becomes good and stays; a is the fallback', async () => {
    const img = path.join(dir, 's2.img');
    await storeDisk({ file: img, slots: { a: { buildDir: demo.outDir, status: 'good' }, b: { buildDir: upd.outDir, status: 'pending', tries: 3 } } });
    const ird = await rd({ STORES: 'vda' });
    const b1 = await boot(ird, virtio(img));
    ran(b1, '2', 'b');
    expect(b1.booted).toMatchObject({ status: 'pending', tries: '2' });
    expect(b1.output, tailOf(b1, 'health did not pass')).toMatch(/^DEMO: health exit 0$/m);
    const b2 = await boot(ird, virtio(img));
    ran(b2, '2', 'b');
    expect(b2.booted.status).toBe('good');
    const s = await readStore(img);
    expect(s.state).toEqual({ current: 'b', slots: { a: { status: 'good', stack: demo.stackId }, b: { status: 'good', stack: upd.stackId } } });
  });

  it('3a: a pending update failing its health check is marked bad and the old stack boots next', async () => {
    const img = path.join(dir, 's3a.img');
    await storeDisk({ file: img, slots: { a: { buildDir: demo.outDir, status: 'good' }, b: { buildDir: broken.outDir, status: 'pending', tries: 3 } } });
    const ird = await rd({ STORES: 'vda' });
    const b1 = await boot(ird, virtio(img));
    ran(b1, '3', 'b');
    expect(b1.output, tailOf(b1, 'health should fail')).toMatch(/^DEMO: health exit 1$/m);
    const b2 = await boot(ird, virtio(img));
    ran(b2, '1', 'a');
    expect(b2.output).not.toMatch(/trying slot b/);
    const s = await readStore(img);
    expect(s.state).toEqual({ current: 'a', slots: { a: { status: 'good', stack: demo.stackId }, b: { status: 'bad', stack: broken.stackId } } });
    expect(s.events.find((e) => e.event === 'bad')?.reason).toMatch(/health: required checks failed/);
  });

  it('3b: an update that never marks itself good gets exactly TRIES=2 boots, then exhausted', async () => {
    const img = path.join(dir, 's3b.img');
    await storeDisk({ file: img, slots: { a: { buildDir: demo.outDir, status: 'good' }, b: { buildDir: upd.outDir, status: 'pending', tries: 2 } } });
    const ird = await rd({ STORES: 'vda', TRIES: '2' });
    const versions: string[] = [];
    for (let n = 0; n < 4; n++) {
      const b = await boot(ird, virtio(img), 'demo.nohealth');
      expect(b.how, tailOf(b, `boot ${n + 1}`)).toBe('poweroff');
      versions.push(b.version ?? '?');
      if (b.version === '1') break;
    }
    expect(versions).toEqual(['2', '2', '1']);
    const s = await readStore(img);
    expect(s.state?.slots.b?.status).toBe('bad');
    expect(s.events.filter((e) => e.event === 'exhausted').length, s.eventsText).toBe(1);
  });

  it('4: a corrupt layer (VERIFY=sha256) falls back to the other good slot on the same boot', async () => {
    const img = path.join(dir, 's4.img');
    await storeDisk({ file: img, current: 'b', slots: { a: { buildDir: demo.outDir, status: 'good' }, b: { buildDir: upd.outDir, status: 'good' } } });
    await corruptLayer(img, appLayer(upd));
    const b = await boot(await rd({ STORES: 'vda', VERIFY: 'sha256' }), virtio(img));
    ran(b, '1', 'a');
    expect(b.booted.fallback, tailOf(b, 'no fallback reason')).toMatch(/sha256/);
    const s = await readStore(img);
    expect(s.state?.slots.b?.status).toBe('bad');
    expect(s.events.filter((e) => e.event === 'fail').map((e) => e.slot)).toEqual(['b']);
  });

  it('4b: a missing layer falls back on the same boot', async () => {
    const img = path.join(dir, 's4b.img');
    await storeDisk({ file: img, current: 'b', skipLayers: [appLayer(upd)], slots: { a: { buildDir: demo.outDir, status: 'good' }, b: { buildDir: upd.outDir, status: 'good' } } });
    const b = await boot(await rd({ STORES: 'vda' }), virtio(img));
    ran(b, '1', 'a');
    expect(b.booted.fallback, tailOf(b, 'no fallback reason')).toMatch(/missing/);
    const s = await readStore(img);
    expect(s.events.filter((e) => e.event === 'fail').map((e) => e.slot)).toEqual(['b']);
  });

  describe('6: NVMe and SD stores', () => {
    const cfg = { STORES: 'nvme0n1 mmcblk0' };

    it('the NVMe store missing every layer: boots the SD store, the NVMe events say why', async () => {
      const n = path.join(dir, 's6a-nvme.img');
      const c = path.join(dir, 's6a-sd.img');
      await storeDisk({ file: n, skipLayers: upd.layers.map((l) => l.digest), slots: { a: { buildDir: upd.outDir, status: 'good' } } });
      await storeDisk({ file: c, diskMiB: 128, slots: { a: { buildDir: demo.outDir, status: 'good' } } });
      const b = await boot(await rd(cfg), [{ file: n, bus: 'nvme' }, { file: c, bus: 'sd' }]);
      ran(b, '1', 'a');
      expect(b.booted.store_dev).toBe('/dev/mmcblk0p1');
      const ns = await readStore(n);
      expect(ns.events.filter((e) => e.event === 'fail').map((e) => e.reason).join('\n')).toMatch(/missing/);
      expect((await readStore(c)).events.map((e) => e.event)).toEqual(['boot']);
    });

    it('a clone of the SD on the NVMe with its own state: the NVMe boots, duplicate store-id warned, events on the NVMe', async () => {
      const c = path.join(dir, 's6b-sd.img');
      const n = path.join(dir, 's6b-nvme.img');
      await storeDisk({ file: c, diskMiB: 128, current: 'a', slots: { a: { buildDir: demo.outDir, status: 'good' }, b: { buildDir: upd.outDir, status: 'good' } } });
      await copyImage(c, n);
      await writeStoreFile(n, '/state', serializeState({ current: 'b', slots: { a: { status: 'good', stack: demo.stackId }, b: { status: 'good', stack: upd.stackId } } }));
      const b = await boot(await rd(cfg), [{ file: n, bus: 'nvme' }, { file: c, bus: 'sd' }]);
      ran(b, '2', 'b');
      expect(b.booted.store_dev).toBe('/dev/nvme0n1p1');
      expect(b.output, tailOf(b, 'no duplicate warning')).toMatch(/store-id [0-9a-f]{32} is on both \/dev\/nvme0n1p1 and \/dev\/mmcblk0p1/);
      expect((await readStore(n)).events.map((e) => e.event)).toEqual(['boot']);
      expect((await readStore(c)).events).toEqual([]);
    });
  });

  it('5: UPPER=disk: the upper of a failed update is wiped, files under PERSIST survive on the data partition', async () => {
    const img = path.join(dir, 's5.img');
    await storeDisk({ file: img, slots: { a: { buildDir: demo.outDir, status: 'good' }, b: { buildDir: upd.outDir, status: 'pending', tries: 1 } } });
    const ird = await rd({ STORES: 'vda', UPPER: 'disk', PERSIST: '/var/lib/demo' });

    const b1 = await boot(ird, virtio(img), 'demo.nohealth demo.write=/upper-marker demo.write=/var/lib/demo/keep');
    ran(b1, '2', 'b');
    expect(b1.booted.upper).toBe('disk');
    expect(b1.output, tailOf(b1, 'writes failed')).toMatch(/^DEMO: wrote \/upper-marker$/m);
    expect(b1.output).toMatch(/^DEMO: wrote \/var\/lib\/demo\/keep$/m);
    expect(b1.output).toMatch(/persistent \/var\/lib\/demo bound from the data partition/);
    // the upper lives on the store, the persistent file on the data partition
    expect(await upperFiles(img, upd.stackId)).toContain('upper-marker');
    expect(await upperFiles(img, upd.stackId)).not.toContain('var/lib/demo/keep');
    expect(await readData(img, '/var/lib/demo/keep')).toBe('written by 2\n');

    // the update never marked itself good and has no tries left: the old stack boots
    const b2 = await boot(ird, virtio(img));
    ran(b2, '1', 'a');
    expect(b2.output, tailOf(b2, 'upper not fresh')).toMatch(/^DEMO: upper is fresh$/m);
    expect(b2.output).not.toMatch(/upper still holds/);
    const s = await readStore(img);
    expect(s.state?.slots.b?.status).toBe('bad');
    expect(await upperFiles(img, upd.stackId), 'the failed stack upper was not wiped').not.toContain('upper-marker');
    expect(s.events.some((e) => e.event === 'wipe' && e.slot === 'b'), s.eventsText).toBe(true);
    expect(await readData(img, '/var/lib/demo/keep')).toBe('written by 2\n');
  });

  describe('8: every candidate bad', () => {
    it('ON_FAIL=reboot: says every candidate failed, records allfailed, reboots', async () => {
      const img = path.join(dir, 's8a.img');
      await storeDisk({ file: img, skipLayers: [appLayer(upd)], slots: { a: { buildDir: upd.outDir, status: 'good' }, b: { buildDir: broken.outDir, status: 'bad' } } });
      const b = await boot(await rd({ STORES: 'vda', ON_FAIL: 'reboot', ON_FAIL_DELAY: '1' }), virtio(img));
      expect(b.version).toBeUndefined();
      expect(b.output, tailOf(b, 'no all-failed line')).toMatch(/stackboot: .*every candidate failed/);
      expect(b.output).toMatch(/ON_FAIL=reboot: rebooting in 1s/);
      expect(b.how, tailOf(b, `VM ended by ${b.how}`)).toBe('reboot');
      const s = await readStore(img);
      expect(s.events.map((e) => e.event)).toEqual(['fail', 'allfailed']);
      expect(s.state?.slots.a?.status).toBe('bad');
      expect(s.state?.current).toBeNull();
    });

    it('ON_FAIL=shell: a shell prompt on the console that runs commands', async () => {
      const img = path.join(dir, 's8b.img');
      await storeDisk({ file: img, skipLayers: [appLayer(upd)], slots: { a: { buildDir: upd.outDir, status: 'good' } } });
      const vm = Vm.start({ target: T, initrd: await rd({ STORES: 'vda', ON_FAIL: 'shell' }), disks: virtio(img), append: 'quiet', timeoutMs: 180_000, name: 'arm64' });
      await vm.waitFor(/every candidate failed/, 120_000);
      await vm.waitFor(/ON_FAIL=shell: starting an emergency shell/, 30_000);
      // the prompt has no newline: look at the unfinished line
      await vm.waitFor(/[#$] $/, { timeoutMs: 30_000, partial: true });
      const from = vm.mark();
      vm.send('echo SHELL-$((40+2))-OK\n');
      await vm.waitFor(/^SHELL-42-OK$/m, { timeoutMs: 30_000, from });
      vm.kill();
      await vm.waitExit(10_000);
    });
  });
});
