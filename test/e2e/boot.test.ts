/**
 * The boot protocol, proved by real boots (amd64 and arm64, QEMU TCG): the standalone initrd finds
 * the store, chooses a candidate, counts tries, falls back, and the demo root's init
 * reports what it runs (DEMO lines) and runs the health checks (mark-good/mark-bad).
 * Every scenario builds its own disk images; the host reads the store afterwards with
 * debugfs (inspect.ts). Issue 3, scenarios 1–6 and 8 (7, power cuts: powercut.test.ts).
 */
import { describe, expect, beforeAll, afterAll, afterEach } from 'vitest';
import { itConcurrent } from './concurrent.js';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { demoStack, storeDisk, initrd, target, scratch } from './fixtures.js';
import { useVmCleanup, Vm, type Disk } from './qemu.js';
import { bootDemo, readStore, upperFiles, readData, corruptLayer, copyImage, writeStoreFile, tailOf, withPart, type DemoBoot } from './inspect.js';
import type { BuildResult } from '../../src/build/stack.js';
import type { Target } from '../../src/boot/target.js';
import type { Arch } from '../../src/sys/arch.js';
import { serializeState } from '../../src/format/state.js';

useVmCleanup(afterEach);

// every scenario on both architectures: amd64 (q35) and arm64 (virt, cortex-a57), the
// users' nodes being arm64
describe.concurrent.each([{ arch: 'amd64' as Arch }, { arch: 'arm64' as Arch }])('$arch', ({ arch }) => {
  let T: Target;
  let demo: BuildResult, upd: BuildResult, broken: BuildResult;
  let dir: string;
  const initrds = new Map<string, Promise<string>>();

  /** One initrd per distinct config (shared by the scenarios that use it). */
  function rd(settings: Record<string, string>): Promise<string> {
    const all = { DEVICE_TIMEOUT: arch === 'arm64' ? '8' : '5', ...settings };
    const key = JSON.stringify(Object.entries(all).sort());
    let p = initrds.get(key);
    if (!p) {
      p = initrd(path.join(dir, `initrd-${initrds.size}.img`), all, arch);
      initrds.set(key, p);
    }
    return p;
  }

  const virtio = (file: string): Disk[] => [{ file, bus: 'virtio' }];

  async function boot(initrdFile: string, disks: Disk[], append = ''): Promise<DemoBoot> {
    return bootDemo({ target: T, initrd: initrdFile, disks, append: `quiet ${append}`.trim(), name: arch, timeoutMs: 240_000 });
  }

  /** The boot reached the demo init and powered off normally. */
  function ran(b: DemoBoot, version: string, slot: string): void {
    expect(b.version, tailOf(b, `expected version ${version}`)).toBe(version);
    expect(b.booted.slot, tailOf(b, `expected slot ${slot}`)).toBe(slot);
    expect(b.how, tailOf(b, `VM ended by ${b.how}`)).toBe('poweroff');
  }

  const appLayer = (r: BuildResult): string => r.layers.find((l) => l.name === 'app')!.digest;

  beforeAll(async () => {
    T = await target(arch);
    [demo, upd, broken] = await Promise.all([demoStack('demo', arch), demoStack('demo-update', arch), demoStack('demo-broken', arch)]);
    dir = await scratch(`boot-${arch}`);
  });

  // the images are sparse but add up: removed unless SB_KEEP_E2E is set (to look at them)
  afterAll(async () => {
    if (dir && !process.env.SB_KEEP_E2E) await rm(dir, { recursive: true, force: true });
  });

  describe(`boot protocol on ${arch} (QEMU)`, () => {
    itConcurrent('1: boots the demo stack with a writable root and a fresh tmpfs upper on every boot', async () => {
      const img = path.join(dir, 's1.img');
      await storeDisk({ file: img, slots: { a: { buildDir: demo.outDir, status: 'good' } } });
      const ird = await rd({ STORES: 'vda' });

      const b1 = await boot(ird, virtio(img), 'demo.write=/upper-marker');
      ran(b1, '1', 'a');
      expect(b1.booted.stack).toBe(demo.stackId);
      expect(b1.booted.status).toBe('good');
      expect(b1.booted.upper).toBe('tmpfs');
      expect(b1.output, tailOf(b1, 'root not writable')).toMatch(/^DEMO: root is writable$/m);
      expect(b1.output).toMatch(/^DEMO: upper is fresh$/m);
      expect(b1.output, tailOf(b1, 'marker not written')).toMatch(/^DEMO: wrote \/upper-marker$/m);

      const b2 = await boot(ird, virtio(img));
      ran(b2, '1', 'a');
      expect(b2.booted.upper).toBe('tmpfs');
      expect(b2.output, tailOf(b2, 'the tmpfs upper kept a file across a reboot')).toMatch(/^DEMO: upper is fresh$/m);
      expect(b2.output).not.toMatch(/upper still holds/);

      const s = await readStore(img);
      expect(s.state).toEqual({ current: 'a', slots: { a: { status: 'good', stack: demo.stackId } } });
      expect(s.events.filter((e) => e.event === 'boot').length).toBe(2);
      expect(s.uppers).toEqual([]);
    });

    itConcurrent('2: a pending update that passes its health check becomes good, the old stack stays as the fallback', async () => {
      const img = path.join(dir, 's2.img');
      await storeDisk({ file: img, slots: { a: { buildDir: demo.outDir, status: 'good' }, b: { buildDir: upd.outDir, status: 'pending', tries: 3 } } });
      const ird = await rd({ STORES: 'vda' });

      const b1 = await boot(ird, virtio(img));
      ran(b1, '2', 'b');
      expect(b1.booted.status).toBe('pending');
      expect(b1.booted.tries).toBe('2');
      expect(b1.output, tailOf(b1, 'health did not pass')).toMatch(/^DEMO: health exit 0$/m);
      expect(b1.output).toMatch(/slot b \(\w{12}\) is good and current/);

      const b2 = await boot(ird, virtio(img));
      ran(b2, '2', 'b');
      expect(b2.booted.status).toBe('good');
      expect(b2.booted.tries).toBe('');
      expect(b2.status).toContain('current:  b');

      const s = await readStore(img);
      expect(s.state).toEqual({ current: 'b', slots: { a: { status: 'good', stack: demo.stackId }, b: { status: 'good', stack: upd.stackId } } });
      const ev = s.events.map((e) => `${e.event} ${e.slot}${e.tries !== undefined ? ` ${e.tries}` : ''}`);
      expect(ev).toEqual(['try b 2', 'boot b 2', 'good b', 'boot b']);
    });

    itConcurrent('3a: a pending update that fails its health check is marked bad, the old stack boots next and the update is never retried', async () => {
      const img = path.join(dir, 's3a.img');
      await storeDisk({ file: img, slots: { a: { buildDir: demo.outDir, status: 'good' }, b: { buildDir: broken.outDir, status: 'pending', tries: 3 } } });
      const ird = await rd({ STORES: 'vda' });

      const b1 = await boot(ird, virtio(img));
      ran(b1, '3', 'b');
      expect(b1.output, tailOf(b1, 'health should fail')).toMatch(/^DEMO: health exit 1$/m);
      expect(b1.output).toMatch(/slot b \(\w{12}\) is bad; current is a/);

      for (const n of [2, 3]) {
        const b = await boot(ird, virtio(img));
        ran(b, '1', 'a');
        expect(b.booted.status, `boot ${n}`).toBe('good');
        expect(b.output, tailOf(b, `boot ${n}: slot b tried again`)).not.toMatch(/trying slot b/);
      }

      const s = await readStore(img);
      expect(s.state).toEqual({ current: 'a', slots: { a: { status: 'good', stack: demo.stackId }, b: { status: 'bad', stack: broken.stackId } } });
      const bad = s.events.filter((e) => e.event === 'bad');
      expect(bad.length, s.eventsText).toBe(1);
      expect(bad[0].slot).toBe('b');
      expect(bad[0].reason).toMatch(/health: required checks failed: 10-demo/);
      expect(s.events.filter((e) => e.event === 'try').length, s.eventsText).toBe(1);
      expect(s.events.filter((e) => e.event === 'boot' && e.slot === 'a').length).toBe(2);
    });

    itConcurrent('3b: an update that never marks itself good runs exactly TRIES boots, then the old stack with an exhausted event', async () => {
      const img = path.join(dir, 's3b.img');
      await storeDisk({ file: img, slots: { a: { buildDir: demo.outDir, status: 'good' }, b: { buildDir: upd.outDir, status: 'pending', tries: 2 } } });
      const ird = await rd({ STORES: 'vda', TRIES: '2' });

      const versions: string[] = [];
      const tries: string[] = [];
      let last: DemoBoot | undefined;
      for (let n = 0; n < 5; n++) {
        last = await boot(ird, virtio(img), 'demo.nohealth');
        expect(last.how, tailOf(last, `boot ${n + 1} ended by ${last.how}`)).toBe('poweroff');
        versions.push(last.version ?? '?');
        tries.push(last.booted.tries ?? '?');
        if (last.version === '1') break;
      }
      expect(versions, tailOf(last!, `versions ${versions}`)).toEqual(['2', '2', '1']);
      expect(tries.slice(0, 2)).toEqual(['1', '0']);
      expect(last!.output).toMatch(/slot b \(\w{12}\) ran out of tries: bad/);
      expect(last!.booted.fallback ?? '(none)', tailOf(last!, 'no fallback reason')).toMatch(/no tries left/);

      const s = await readStore(img);
      expect(s.state?.slots.b).toEqual({ status: 'bad', stack: upd.stackId });
      expect(s.state?.current).toBe('a');
      const ex = s.events.filter((e) => e.event === 'exhausted');
      expect(ex.length, s.eventsText).toBe(1);
      expect(ex[0]).toMatchObject({ slot: 'b', tries: 0 });
      expect(s.events.filter((e) => e.event === 'try').map((e) => e.tries)).toEqual([1, 0]);
    });

    itConcurrent('4a: a corrupt layer (same size, VERIFY=sha256) falls back to the other good slot on the same boot', async () => {
      const img = path.join(dir, 's4a.img');
      await storeDisk({ file: img, current: 'b', slots: { a: { buildDir: demo.outDir, status: 'good' }, b: { buildDir: upd.outDir, status: 'good' } } });
      await corruptLayer(img, appLayer(upd));
      const ird = await rd({ STORES: 'vda', VERIFY: 'sha256' });

      const b = await boot(ird, virtio(img));
      ran(b, '1', 'a');
      expect(b.output, tailOf(b, 'slot b was not tried first')).toMatch(/trying slot b \(good/);
      expect(b.booted.fallback ?? '(none)', tailOf(b, 'no fallback reason')).toMatch(/slot b \w{12}: .*app.*sha256|sha256.*app/);

      const s = await readStore(img);
      expect(s.state).toEqual({ current: 'a', slots: { a: { status: 'good', stack: demo.stackId }, b: { status: 'bad', stack: upd.stackId } } });
      const fail = s.events.filter((e) => e.event === 'fail');
      expect(fail.length, s.eventsText).toBe(1);
      expect(fail[0].slot).toBe('b');
      expect(fail[0].reason).toMatch(/sha256/);
      expect(s.events.at(-1)).toMatchObject({ event: 'boot', slot: 'a' });
    });

    itConcurrent('4b: a missing layer falls back to the other good slot on the same boot', async () => {
      const img = path.join(dir, 's4b.img');
      await storeDisk({ file: img, current: 'b', skipLayers: [appLayer(upd)], slots: { a: { buildDir: demo.outDir, status: 'good' }, b: { buildDir: upd.outDir, status: 'good' } } });
      const ird = await rd({ STORES: 'vda' });

      const b = await boot(ird, virtio(img));
      ran(b, '1', 'a');
      expect(b.booted.fallback ?? '(none)', tailOf(b, 'no fallback reason')).toMatch(/slot b .*missing/);
      const s = await readStore(img);
      expect(s.state?.slots.b?.status).toBe('bad');
      expect(s.state?.current).toBe('a');
      const fail = s.events.filter((e) => e.event === 'fail');
      expect(fail.length, s.eventsText).toBe(1);
      expect(fail[0]).toMatchObject({ slot: 'b', stack: upd.stackId.slice(0, 12) });
      expect(fail[0].reason).toMatch(/missing/);
    });

    itConcurrent('5: UPPER=disk: the upper of a failed update is wiped, files under PERSIST survive on the data partition', async () => {
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

    itConcurrent('10: factory reset: stackboot-node factory-reset on the node, and the next boot wipes every disk upper and the data partition (lost+found kept) before the stack mounts; PERSIST seeded again', async () => {
      const img = path.join(dir, 's10.img');
      await storeDisk({ file: img, slots: { a: { buildDir: demo.outDir, status: 'good' } }, data: { 'var/lib/demo/user.db': 'user data\n', 'home/u/.profile': 'x\n' } });
      const ird = await rd({ STORES: 'vda', UPPER: 'disk', PERSIST: '/var/lib/demo' });

      const b1 = await boot(ird, virtio(img), 'demo.nohealth demo.write=/upper-marker demo.write=/var/lib/demo/keep demo.node=factory-reset');
      ran(b1, '1', 'a');
      expect(b1.output, tailOf(b1, 'no request')).toMatch(/^DEMO: node: factory reset requested: at the next boot the hook wipes/m);
      expect(await upperFiles(img, demo.stackId)).toContain('upper-marker');
      expect(await readData(img, '/var/lib/demo/keep')).toBe('written by 1\n');
      const req = await withPart(img, 'sb-store', (v) => v.read('/reset'));
      expect(req).toMatch(/^stackboot-reset 1\nrequested \d+ stackboot-node factory-reset\n$/);

      const b2 = await boot(ird, virtio(img));
      ran(b2, '1', 'a');
      expect(b2.output, tailOf(b2, 'no reset')).toMatch(/stackboot: factory reset done: disk uppers wiped, the data partition \/dev\/vda2 emptied \(2 entries\)/);
      expect(b2.output).toMatch(/^DEMO: upper is fresh$/m);
      expect(await upperFiles(img, demo.stackId)).not.toContain('upper-marker');
      const data = await withPart(img, 'sb-data', async (v) => ({ top: (await v.ls('/'))!.sort(), demo: await v.ls('/var/lib/demo'), lost: await v.exists('/lost+found') }));
      // everything gone but lost+found and the PERSIST path, seeded again from the stack
      expect(data.top).toEqual(['lost+found', 'var']);
      expect(data.demo).toEqual(['.keep']);
      const s = await readStore(img);
      expect(await withPart(img, 'sb-store', (v) => v.exists('/reset'))).toBe(false);
      expect(s.state?.slots.a?.status).toBe('good');
      expect(s.events.filter((e) => e.event === 'reset').map((e) => e.reason), s.eventsText).toEqual([
        'requested by stackboot-node factory-reset: the next boot wipes the disk uppers and the data partition',
        expect.stringMatching(/^factory reset \(\d+ stackboot-node factory-reset\): disk uppers wiped, the data partition \/dev\/vda2 emptied \(2 entries\)$/),
      ]);
    });

    describe('6: two stores, NVMe first, SD card as rescue', () => {
      const cfg = { STORES: 'nvme0n1 mmcblk0' };
      const nvme = (file: string): Disk => ({ file, bus: 'nvme' });
      const sd = (file: string): Disk => ({ file, bus: 'sd' });

      itConcurrent('boots the NVMe store when it is good', async () => {
        const n = path.join(dir, 's6a-nvme.img');
        const c = path.join(dir, 's6a-sd.img');
        await storeDisk({ file: n, slots: { a: { buildDir: upd.outDir, status: 'good' } } });
        await storeDisk({ file: c, diskMiB: 128, slots: { a: { buildDir: demo.outDir, status: 'good' } } });
        const b = await boot(await rd(cfg), [nvme(n), sd(c)]);
        ran(b, '2', 'a');
        expect(b.booted.store_dev).toBe('/dev/nvme0n1p1');
        expect((await readStore(n)).events.filter((e) => e.event === 'boot').length).toBe(1);
        expect((await readStore(c)).events).toEqual([]);
      });

      itConcurrent('boots the SD store when every layer of the NVMe store is missing, and the NVMe events say why', async () => {
        const n = path.join(dir, 's6b-nvme.img');
        const c = path.join(dir, 's6b-sd.img');
        await storeDisk({ file: n, skipLayers: upd.layers.map((l) => l.digest), slots: { a: { buildDir: upd.outDir, status: 'good' } } });
        await storeDisk({ file: c, diskMiB: 128, slots: { a: { buildDir: demo.outDir, status: 'good' } } });
        const b = await boot(await rd(cfg), [nvme(n), sd(c)]);
        ran(b, '1', 'a');
        expect(b.booted.store_dev).toBe('/dev/mmcblk0p1');
        const ns = await readStore(n);
        expect(ns.state?.slots.a?.status).toBe('bad');
        const fail = ns.events.filter((e) => e.event === 'fail');
        expect(fail.length, ns.eventsText).toBe(1);
        expect(fail[0].reason).toMatch(/missing/);
        const cs = await readStore(c);
        expect(cs.events.map((e) => e.event)).toEqual(['boot']);
      });

      itConcurrent('boots the SD store when the NVMe disk is absent', async () => {
        const c = path.join(dir, 's6c-sd.img');
        await storeDisk({ file: c, diskMiB: 128, slots: { a: { buildDir: demo.outDir, status: 'good' } } });
        const b = await boot(await rd(cfg), [sd(c)]);
        ran(b, '1', 'a');
        expect(b.booted.store_dev).toBe('/dev/mmcblk0p1');
        expect(b.output).toMatch(/not waiting longer for: nvme0n1|gave up .* nvme0n1/);
      });

      itConcurrent('a clone (the SD image copied to the NVMe, same store-id and UUIDs): boots by device order, warns, events on the right disk', async () => {
        const c = path.join(dir, 's6d-sd.img');
        const n = path.join(dir, 's6d-nvme.img');
        await storeDisk({ file: c, diskMiB: 128, current: 'a', slots: { a: { buildDir: demo.outDir, status: 'good' }, b: { buildDir: upd.outDir, status: 'good' } } });
        await copyImage(c, n);
        // the NVMe's own state: current b (version 2); the SD's says a (version 1)
        await writeStoreFile(n, '/state', serializeState({ current: 'b', slots: { a: { status: 'good', stack: demo.stackId }, b: { status: 'good', stack: upd.stackId } } }));
        const before = await readStore(c);
        expect((await readStore(n)).storeId).toBe(before.storeId);

        const b = await boot(await rd(cfg), [nvme(n), sd(c)]);
        ran(b, '2', 'b');
        expect(b.booted.store_dev).toBe('/dev/nvme0n1p1');
        expect(b.booted.store_id).toBe(before.storeId);
        expect(b.output, tailOf(b, 'no duplicate store-id warning')).toMatch(new RegExp(`store-id ${before.storeId} is on both /dev/nvme0n1p1 and /dev/mmcblk0p1`));
        const ns = await readStore(n);
        const cs = await readStore(c);
        expect(ns.events.map((e) => `${e.event} ${e.slot}`)).toEqual(['boot b']);
        expect(cs.events, 'an event landed on the SD clone').toEqual([]);
        expect(cs.state?.current).toBe('a');
      });
    });

    describe('8: every candidate bad', () => {
      itConcurrent('ON_FAIL=reboot: says every candidate failed, records allfailed, reboots', async () => {
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

      itConcurrent('ON_FAIL=shell: a shell prompt on the console that runs commands', async () => {
        const img = path.join(dir, 's8b.img');
        await storeDisk({ file: img, skipLayers: [appLayer(upd)], slots: { a: { buildDir: upd.outDir, status: 'good' } } });
        const vm = Vm.start({ target: T, initrd: await rd({ STORES: 'vda', ON_FAIL: 'shell' }), disks: virtio(img), append: 'quiet', timeoutMs: 180_000, name: arch });
        await vm.waitFor(/every candidate failed/, 120_000);
        await vm.waitFor(/ON_FAIL=shell: starting an emergency shell/, 30_000);
        // the prompt has no newline: look at the unfinished line; busybox's line editing
        // may follow it with a cursor-position query (ESC [6n) in the same write
        await vm.waitFor(/[#$] (?:\x1b\[[0-9;]*[A-Za-z])*$/, { timeoutMs: 30_000, partial: true });
        const from = vm.mark();
        vm.send('echo SHELL-$((40+2))-OK\n');
        await vm.waitFor(/^SHELL-42-OK$/m, { timeoutMs: 30_000, from });
        vm.kill();
        await vm.waitExit(10_000);
      });
    });
  });
});
