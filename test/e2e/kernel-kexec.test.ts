/**
 * Stack kernels on real QEMU nodes (TCG): the firmware boots the boot partition's kernel
 * (Debian 12's 6.1) with the stackboot initrd (kexec-tools inside); a stack that carries
 * Debian 12's 6.12 kernel is booted by kexec into that kernel and the initrd its build
 * made from its own modules, without counting a second try; a kernel that panics uses
 * its tries and the node falls back to the last good stack and its kernel; a kernel file
 * corrupt in the store is refused before kexec; a power cut during the kexec'ed boot
 * counts as a used try.
 */
import path from 'node:path';
import { afterEach, beforeAll, describe, expect } from 'vitest';
import { itConcurrent } from './concurrent.js';
import { stackId } from '../../src/format/manifest.js';
import type { Arch } from '../../src/sys/arch.js';
import { storeDisk } from './fixtures.js';
import { kexecFixture as fixture, panicStack, type KexecFixture as Fixture } from './kernel-fixtures.js';
import { bootDemo, corruptLayer, escapeRe, readStore, tailOf, type DemoBoot } from './inspect.js';
import { bootOnce, useVmCleanup, type Disk } from './qemu.js';

useVmCleanup(afterEach);

function boot(f: Fixture, disks: Disk[], append = ''): Promise<DemoBoot> {
  return bootDemo({ target: f.T, initrd: f.rd, disks, append: `quiet ${append}`.trim(), memoryMiB: 768, timeoutMs: 300_000 });
}

const esc = escapeRe;

async function v1ThenV2(arch: Arch): Promise<void> {
  const f = await fixture(arch);
  const k2 = f.T.kernel2!;
  const img = path.join(f.dir, 'update.img');
  await storeDisk({ file: img, slots: { a: { buildDir: f.v1.outDir, status: 'good' }, b: { buildDir: f.v2.outDir, status: 'pending', tries: 2 } }, current: 'a', storeMiB: 320 });
  const b = await boot(f, [{ file: img, bus: 'virtio' }]);
  expect(b.output, tailOf(b, 'the first stage loads the stack kernel')).toMatch(new RegExp(`slot b runs kernel ${esc(k2.kver)}, not ${esc(f.T.kver)}: loading it for kexec`));
  expect(b.output, tailOf(b, 'the second stage runs without another try')).toMatch(/second stage of slot b \(kexec\): not counting another try/);
  expect(b.output, tailOf(b, 'uname -r in the stack')).toMatch(new RegExp(`^DEMO: kernel ${esc(k2.kver)}$`, 'm'));
  expect(b.output, tailOf(b, 'its modules')).toMatch(/^DEMO: module squashfs loaded$/m);
  expect(b.booted.slot).toBe('b');
  expect(b.output, tailOf(b, 'health')).toMatch(/^DEMO: health exit 0$/m);
  const s = await readStore(img);
  expect(s.state?.current).toBe('b');
  expect(s.state?.slots.b).toEqual({ status: 'good', stack: f.v2.stackId });
  expect(s.events.map((e) => `${e.event} ${e.slot}${e.tries !== undefined ? ` ${e.tries}` : ''}`)).toEqual(['try b 1', 'kexec b 1', 'boot b 1', 'good b']);
  expect(s.events.find((e) => e.event === 'kexec')!.reason).toBe(`kernel ${f.T.kver} -> ${k2.kver}`);
}

describe('stack kernels: kexec into the stack kernel', () => {
  beforeAll(async () => {
    await Promise.all([fixture('amd64'), fixture('arm64')]);
  }, 900_000);

  itConcurrent('amd64: v1 on the boot partition kernel, v2 pending with its own 6.12 kernel: kexec, uname -r is 6.12, its modules load, health marks it good', async () => {
    await v1ThenV2('amd64');
  });

  itConcurrent('arm64: v1 on the boot partition kernel, v2 pending with its own 6.12 kernel: kexec, uname -r is 6.12, its modules load, health marks it good', async () => {
    await v1ThenV2('arm64');
  });

  for (const arch of ['amd64', 'arm64'] as const) itConcurrent(`${arch}: a v3 whose kernel panics uses its tries, then the node falls back to v2 and v2 kernel, the events saying why`, () => panicFallsBack(arch));

  async function panicFallsBack(arch: Arch): Promise<void> {
    const f = await fixture(arch);
    const k2 = f.T.kernel2!;
    const { dir: v3, text } = await panicStack(f);
    const img = path.join(f.dir, 'panic.img');
    await storeDisk({ file: img, slots: { a: { buildDir: f.v2.outDir, status: 'good' }, b: { buildDir: v3, status: 'pending', tries: 2 } }, current: 'a', storeMiB: 320 });
    // boots 1 and 2: v3's kernel starts and panics (panic=-1: at once; QEMU -no-reboot ends)
    for (let i = 1; i <= 2; i++) {
      const r = await bootOnce({ target: f.T, initrd: f.rd, disks: [{ file: img, bus: 'virtio' }], append: 'quiet', memoryMiB: 768, timeoutMs: 240_000 });
      expect(r.output, `boot ${i}: ${r.output.slice(-3000)}`).toMatch(/loading it for kexec/);
      expect(r.output, `boot ${i}: ${r.output.slice(-3000)}`).toMatch(/Kernel panic/);
      expect(r.output).not.toMatch(/^DEMO: running/m);
    }
    let s = await readStore(img);
    expect(s.state?.slots.b).toEqual({ status: 'pending', stack: stackId(text), tries: 0 });
    // boot 3: no tries left: v3 is bad, v2 (good) boots with its own kernel
    const b = await boot(f, [{ file: img, bus: 'virtio' }]);
    expect(b.output, tailOf(b, 'v3 ran out of tries')).toMatch(/slot b \([0-9a-f]{12}\) ran out of tries: bad/);
    expect(b.booted.slot).toBe('a');
    expect(b.output, tailOf(b, 'v2 on its kernel')).toMatch(new RegExp(`^DEMO: kernel ${esc(k2.kver)}$`, 'm'));
    s = await readStore(img);
    expect(s.state?.slots.b?.status).toBe('bad');
    expect(s.state?.current).toBe('a');
    expect(s.events.map((e) => `${e.event} ${e.slot}`)).toEqual(['try b', 'kexec b', 'try b', 'kexec b', 'exhausted b', 'kexec a', 'boot a']);
  }

  for (const arch of ['amd64', 'arm64'] as const) itConcurrent(`${arch}: a stack whose kernel file is corrupt in the store is refused before kexec and the node falls back on the same boot`, () => corruptKernel(arch));

  async function corruptKernel(arch: Arch): Promise<void> {
    const f = await fixture(arch);
    const img = path.join(f.dir, 'corrupt.img');
    await storeDisk({ file: img, slots: { a: { buildDir: f.v1.outDir, status: 'good' }, b: { buildDir: f.v2.outDir, status: 'pending', tries: 2 } }, current: 'a', storeMiB: 320 });
    await corruptLayer(img, f.v2.manifest.layers.find((l) => l.name === 'vmlinuz')!.digest);
    const b = await boot(f, [{ file: img, bus: 'virtio' }]);
    expect(b.output, tailOf(b, 'refused')).toMatch(/kernel \/boot\/vmlinuz-\S+ (is corrupt|has \d+ bytes|cannot be read)/);
    expect(b.output).not.toMatch(/loading it for kexec/);
    expect(b.booted.slot).toBe('a');
    expect(b.output, tailOf(b, 'v1 on the boot partition kernel')).toMatch(/^DEMO: running .*\(version 1\)$/m);
    const s = await readStore(img);
    expect(s.state?.slots.b?.status).toBe('bad');
    expect(s.events.map((e) => `${e.event} ${e.slot}`)).toEqual(['try b', 'fail b', 'boot a', 'good a'].filter((x) => x !== 'good a' || s.events.some((e) => e.event === 'good')));
  }

  for (const arch of ['amd64', 'arm64'] as const) itConcurrent(`${arch}: a power cut during the kexec boot (after the jump, before the second stage mounts) counts as a used try`, () => powerCut(arch));

  async function powerCut(arch: Arch): Promise<void> {
    const f = await fixture(arch);
    const k2 = f.T.kernel2!;
    const img = path.join(f.dir, 'cut.img');
    await storeDisk({ file: img, slots: { a: { buildDir: f.v1.outDir, status: 'good' }, b: { buildDir: f.v2.outDir, status: 'pending', tries: 2 } }, current: 'a', storeMiB: 320 });
    // the new kernel's banner: it runs, the second stage has not mounted anything yet
    const cut = await bootOnce({ target: f.T, initrd: f.rd, disks: [{ file: img, bus: 'virtio' }], append: '', memoryMiB: 768, timeoutMs: 240_000, until: new RegExp(`Linux version ${esc(k2.kver)}`), killOnMatch: true });
    expect(cut.how).toBe('killed');
    let s = await readStore(img);
    expect(s.state?.slots.b).toEqual({ status: 'pending', stack: f.v2.stackId, tries: 1 });
    // the next boot: the last try, and v2 boots (health marks it good)
    const b = await boot(f, [{ file: img, bus: 'virtio' }]);
    expect(b.booted.slot).toBe('b');
    expect(b.output, tailOf(b, 'v2 kernel')).toMatch(new RegExp(`^DEMO: kernel ${esc(k2.kver)}$`, 'm'));
    s = await readStore(img);
    expect(s.state?.slots.b?.status).toBe('good');
    expect(s.events.map((e) => `${e.event} ${e.slot}${e.tries !== undefined ? ` ${e.tries}` : ''}`)).toEqual(['try b 1', 'kexec b 1', 'try b 0', 'kexec b 0', 'boot b 0', 'good b']);
  }
});
