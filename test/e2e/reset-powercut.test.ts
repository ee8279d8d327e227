/**
 * Power cuts during a factory reset (initramfs/reset.sh; arm64, QEMU TCG): the node has a
 * reset request and a data partition with SB_RESET_FILES files; QEMU is SIGKILLed at
 * seeded random instants (SB_RESET_CUTS, default 8) from just before the hook starts the
 * reset to just after it is done; then the node boots undisturbed. Every time: it boots
 * its stack, the request is gone, the data partition holds only lost+found and the PERSIST
 * path seeded again from the stack, and the store has the reset's `reset` event (a cut
 * after the wipe but before the request went makes the next boot reset again: two
 * events, never none). A cut in the middle of the wipe leaves the request in place.
 */
import { describe, it, expect, beforeAll, afterAll, afterEach } from 'vitest';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { demoStack, storeDisk, initrd, target, scratch } from './fixtures.js';
import { useVmCleanup, Vm } from './qemu.js';
import { ANCHOR, bootDemo, copyImage, cutBoot, prng, readStore, withPart, writeStoreFile } from './inspect.js';
import type { Target } from '../../src/boot/target.js';

useVmCleanup(afterEach);

const CUTS = Number(process.env.SB_RESET_CUTS ?? 8);
const SEED = Number(process.env.SB_RESET_SEED ?? 20261207);
const JOBS = Number(process.env.SB_RESET_JOBS ?? 2);
// enough files that the wipe takes a while under TCG (the rm of the renamed folder)
const FILES = Number(process.env.SB_RESET_FILES ?? 1500);
const APPEND = 'quiet demo.nohealth';
const STARTED = /stackboot: factory reset \(/;
const DONE = /stackboot: factory reset done: /;

interface Trial {
  trial: number;
  killMs: number;
  phase: 'before' | 'wiping' | 'done';
  requestLeft: boolean;
  problems: string[];
}

describe('power cuts during a factory reset (arm64, QEMU)', () => {
  let T: Target;
  let work = '';
  let base = '';
  let ird = '';
  let stack = '';
  let failed = true;

  beforeAll(async () => {
    T = await target('arm64');
    const demo = await demoStack('demo', 'arm64');
    stack = demo.stackId;
    work = await scratch('reset-powercut');
    base = path.join(work, 'base.img');
    const data: Record<string, string> = { 'var/lib/demo/user.db': 'user data\n' };
    for (let i = 0; i < FILES; i++) data[`home/u/files/f${i}`] = `file ${i}\n`;
    await storeDisk({ file: base, slots: { a: { buildDir: demo.outDir, status: 'good' } }, data, dataMiB: 48 });
    await writeStoreFile(base, '/reset', 'stackboot-reset 1\nrequested 1796600000 the reset power-cut test\n');
    ird = await initrd(path.join(work, 'initrd.img'), { STORES: 'vda', DEVICE_TIMEOUT: '8', UPPER: 'disk', PERSIST: '/var/lib/demo' }, 'arm64');
  });

  afterAll(async () => {
    if (work && !failed && !process.env.SB_KEEP_E2E) await fs.rm(work, { recursive: true, force: true });
  });

  /** ms after ANCHOR at which the reset starts and ends, from one undisturbed boot. */
  async function calibrate(): Promise<{ started: number; done: number }> {
    const img = path.join(work, 'calibrate.img');
    await copyImage(base, img);
    const vm = Vm.start({ target: T, initrd: ird, disks: [{ file: img, bus: 'virtio' }], append: APPEND, timeoutMs: 180_000, name: 'reset-calibrate' });
    try {
      await vm.waitFor(ANCHOR, { timeoutMs: 120_000 });
      const anchor = vm.elapsed();
      await vm.waitFor(STARTED, { timeoutMs: 120_000 });
      const started = vm.elapsed() - anchor;
      await vm.waitFor(DONE, { timeoutMs: 120_000 });
      const done = vm.elapsed() - anchor;
      const exit = await vm.waitExit(120_000);
      if (exit.how !== 'poweroff') throw new Error(vm.failMessage(`calibration boot ended by ${exit.how}`));
      return { started, done };
    } finally {
      vm.kill();
      await fs.rm(img, { force: true });
    }
  }

  async function trial(n: number, killMs: number): Promise<Trial> {
    const img = path.join(work, `trial-${n}.img`);
    await copyImage(base, img);
    const disks = [{ file: img, bus: 'virtio' as const }];
    const cutOut = await cutBoot({ target: T, initrd: ird, disks, append: APPEND, name: `reset-cut-${n}` }, killMs);
    const phase: Trial['phase'] = DONE.test(cutOut) ? 'done' : STARTED.test(cutOut) ? 'wiping' : 'before';
    const problems: string[] = [];
    const cut = await withPart(img, 'sb-store', (v) => v.exists('/reset'));
    const cutEvents = (await readStore(img)).events.filter((e) => e.event === 'reset' && /disk uppers wiped/.test(e.reason));
    // the request goes only after the reset's event
    if (!cut && cutEvents.length === 0) problems.push('the request is gone but no reset event was written');
    if (phase === 'wiping' && !cut) problems.push('a cut before the reset was done removed the request');

    const r = await bootDemo({ target: T, initrd: ird, disks, append: APPEND, name: `reset-recover-${n}` });
    if (r.version !== '1' || r.how !== 'poweroff') problems.push(`the next boot did not run the stack (${r.how}, version ${r.version})`);
    const fin = await withPart(img, 'sb-data', async (v) => ({ top: ((await v.ls('/')) ?? []).sort(), demo: await v.ls('/var/lib/demo') }));
    if (JSON.stringify(fin.top) !== JSON.stringify(['lost+found', 'var'])) problems.push(`data partition after the next boot: ${fin.top.join(' ')}`);
    if (JSON.stringify(fin.demo) !== JSON.stringify(['.keep'])) problems.push(`/var/lib/demo after the next boot: ${fin.demo?.join(' ')}`);
    if (await withPart(img, 'sb-store', (v) => v.exists('/reset'))) problems.push('the request is still there after the next boot');
    const s = await readStore(img);
    const done = s.events.filter((e) => e.event === 'reset' && /^factory reset \(1796600000 the reset power-cut test\): disk uppers wiped, the data partition \/dev\/vda2 emptied/.test(e.reason));
    if (done.length < 1 || done.length > 2) problems.push(`${done.length} reset events: ${s.eventsText}`);
    if (s.state?.slots.a?.status !== 'good' || s.state.slots.a.stack !== stack) problems.push(`slot a after the next boot: ${JSON.stringify(s.state?.slots.a)}`);
    if (problems.length) {
      await fs.writeFile(`${img}.cut.log`, cutOut);
      await fs.writeFile(`${img}.recover.log`, r.output);
    } else await fs.rm(img, { force: true });
    return { trial: n, killMs, phase, requestLeft: cut, problems };
  }

  it(`${CUTS} random cuts during the wipe: the next boot finishes it, nothing of the user's data is left, the stack boots`, async () => {
    const cal = await calibrate();
    expect(cal.done).toBeGreaterThan(cal.started);
    const rnd = prng(SEED);
    const lo = Math.max(0, cal.started - 300);
    const hi = cal.done + 800;
    const instants = Array.from({ length: CUTS }, () => Math.round(lo + rnd() * (hi - lo)));
    const results: Trial[] = new Array(CUTS);
    let next = 0;
    await Promise.all(
      Array.from({ length: JOBS }, async () => {
        while (next < CUTS) {
          const i = next++;
          results[i] = await trial(i, instants[i]!);
        }
      }),
    );
    const table = results.map((r) => `trial ${r.trial}: cut at +${r.killMs} ms, ${r.phase}, request ${r.requestLeft ? 'left' : 'gone'}: ${r.problems.length ? r.problems.join('; ') : 'ok'}`).join('\n');
    console.log(`factory reset power cuts (reset from +${cal.started} to +${cal.done} ms after /init):\n${table}`);
    expect(results.flatMap((r) => r.problems.map((p) => `trial ${r.trial} (+${r.killMs} ms, ${r.phase}): ${p}`)), table).toEqual([]);
    // the cuts did land in the middle of the reset
    expect(results.some((r) => r.phase === 'wiping'), table).toBe(true);
    failed = false;
  });
});
