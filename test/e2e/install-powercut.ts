/**
 * Power cuts during the real `stackboot install` inside a QEMU node (used by
 * install-powercut.test.ts and scripts/soak-install.ts): of a delta bundle whose new
 * layers come whole, and of a chunk delta whose new layer the node rebuilds from the
 * chunks of its store's layers (makeChunkInstallSetup).
 *
 * The node image (slot a good = demo-node v1) boots once with the big delta bundle on
 * /dev/vdb and `demo.install=/dev/vdb`, and is saved (snapshot.ts: RAM, devices and disk)
 * at the install's `plan` event, after everything that comes before the writes (the
 * boot, Node.js starting under TCG, reading and checking the bundle's head, for a chunk
 * delta the cutting of the store's layers: 15 to 80 s a boot). Each trial starts QEMU
 * from that instant on its own copy of the disk and SIGKILLs it at a random instant in
 * the install's write window (a bit past its end, so some trials cut after it finished).
 * The host then reads the store (a copy, journal replayed by the mount) and checks:
 *  - every `layers/<sha256>.sqfs` hashes to its name (no corrupt layer, ever);
 *  - slot a is still good and current (never touched);
 *  - slot b is either empty (the install had not finished: the node boots a), or pending
 *    with the full tries, its manifest hashing to the stack id and every layer present
 *    (the install finished: the node boots b as pending). Nothing else.
 * Some trials also boot the cut image undisturbed and check the node booted what the
 * check predicted.
 *
 * QEMU cache mode: the harness default, cache=writeback. A SIGKILL of QEMU loses what the
 * guest had not yet written to its disk (its page cache, the write-back of the ext4
 * journal and of un-fsynced data), and keeps what QEMU had already handed to the host
 * (it sits in the host page cache, which outlives QEMU). That is a power cut for a disk
 * whose own cache is non-volatile, and it is exactly what the install's ordering (write,
 * fsync, rename, fsync dir; state last) must survive. A disk that reorders or drops
 * acknowledged writes (a volatile cache ignoring flushes) is not modelled: cache=unsafe
 * would not model it either under a QEMU kill, since the host page cache survives.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { parseManifest, stackId } from '../../src/format/manifest.js';
import { candidates, parseState } from '../../src/format/state.js';
import type { Target } from '../../src/boot/target.js';
import { copyImage, prng } from './inspect.js';
import { chunkedBigStacks, nodeStack, withStoreMounted } from './node-fixtures.js';
import { chunkDelta } from '../../src/format/chunker.js';
import { chunkIndexName, chunkIndexRefs } from '../../src/format/chunks.js';
import { baseLayers, writeBundleFile } from '../../src/format/bundle.js';
import { initrd, storeDisk, target } from './fixtures.js';
import { Vm, type BootOptions } from './qemu.js';
import { restore, snapshotAt, type VmSnapshot } from './snapshot.js';
import { isTempName } from '../../src/sys/durable.js';

export interface InstallCutSetup {
  target: Target;
  initrd: string;
  /** pristine node image: slot a good (v1) */
  base: string;
  /** the bundle disk (raw tar) */
  bundle: string;
  v1: string;
  /** the stack the bundle installs */
  next: string;
  tries: number;
  work: string;
}

/**
 * The chunk-delta variant: a store with the big node stack (v1, chunk indexes) good in
 * slot a, and `bundle --base v1 --chunks` of v2 (its app layer a chunk delta: the few
 * chunks v1 lacks): the install rebuilds the 12 MiB app layer from v1's chunks.
 */
export async function makeChunkInstallSetup(dir: string): Promise<InstallCutSetup & { carried: number; layerBytes: number }> {
  const { v1, v2 } = await chunkedBigStacks();
  const base = path.join(dir, 'base.img');
  await storeDisk({ file: base, slots: { a: { buildDir: v1.outDir, status: 'good' } }, storeMiB: 256 });
  const bundle = path.join(dir, 'big-chunks.stackbundle');
  const baseDigests = (await baseLayers(v1.outDir)).digests;
  const deltas = [];
  for (const d of chunkIndexRefs(v2.manifest).keys()) {
    if (baseDigests.has(d)) continue;
    deltas.push(await chunkDelta(d, await fs.readFile(path.join(v2.outDir, 'layers', chunkIndexName(d))), [...baseDigests].map((b) => path.join(v1.outDir, 'layers', `${b}.sqfs`)), v2.manifest.layers.find((l) => l.digest === d)));
  }
  const r = await writeBundleFile({ buildDir: v2.outDir, file: bundle, baseDigests, chunks: deltas });
  const changed = v2.manifest.layers.filter((l) => !baseDigests.has(l.digest));
  return { ...(await cutSetup(dir, base, bundle, v1.stackId, v2.stackId)), carried: r.bytes, layerBytes: changed.reduce((n, l) => n + l.size, 0) };
}

/** A trial setup: the node's pristine image, the bundle disk, the stacks before and after, the initrd every trial boots. */
async function cutSetup(dir: string, base: string, bundle: string, v1: string, next: string): Promise<InstallCutSetup> {
  return {
    target: await target('amd64'),
    initrd: await initrd(path.join(dir, 'initrd.img'), { STORES: 'vda', DEVICE_TIMEOUT: '5', TRIES: '3' }),
    base,
    bundle,
    v1,
    next,
    tries: 3,
    work: dir,
  };
}

/**
 * The trial setup shared by the test and the soak script: a store with the demo-node stack
 * good in slot a, and a delta bundle of the bigger stack to install (in `dir`).
 */
export async function makeInstallSetup(dir: string): Promise<InstallCutSetup> {
  const [v1, big] = await Promise.all([nodeStack('recipe'), nodeStack('big')]);
  const base = path.join(dir, 'base.img');
  await storeDisk({ file: base, slots: { a: { buildDir: v1.outDir, status: 'good' } }, storeMiB: 256 });
  const bundle = path.join(dir, 'big.stackbundle');
  await writeBundleFile({ buildDir: big.outDir, file: bundle, baseDigests: (await baseLayers(v1.outDir)).digests });
  return cutSetup(dir, base, bundle, v1.stackId, big.stackId);
}

export interface InstallCalibration {
  /** ms from QEMU start to the install's plan event (the boot the snapshot was taken from) */
  plan: number;
  /** ms from QEMU start to the done event (state written): plan + an undisturbed run from the snapshot */
  done: number;
  /** the node stopped at the install's plan event: every trial starts from it */
  snapshot: VmSnapshot;
}

const PLAN = /^DEMO: install: \{"event":"plan"/m;
const EXIT = /^DEMO: install from \/dev\/vdb: exit (\d+)/m;
const DONE = /^DEMO: install: \{"event":"done"/m;

function bootFor(s: InstallCutSetup, img: string, append: string, name: string): BootOptions {
  return {
    target: s.target,
    initrd: s.initrd,
    disks: [{ file: img, bus: 'virtio' }, { file: s.bundle, bus: 'virtio', readonly: true }],
    // no_timer_check: under a loaded host, TCG can fail the kernel's early IO-APIC timer
    // check ("IO-APIC + timer doesn't work!" panic), which says nothing about the install
    append: `quiet no_timer_check ${append}`,
    memoryMiB: 768,
    timeoutMs: 240_000,
    name,
  };
}

/**
 * Boots the node once with the install, saves the VM at the install's plan event (the
 * instant every trial starts from: the boot, Node.js's start under TCG and, for a chunk
 * delta, the plan's cutting of the store's layers take 15 to 80 s, the install's writes
 * 2 s), then times undisturbed runs from there, as many at once as the trials will run,
 * so the timing matches their load.
 */
export async function calibrateInstall(s: InstallCutSetup, jobs = 1): Promise<InstallCalibration> {
  const img = path.join(s.work, 'snapshot-boot.img');
  await copyImage(s.base, img);
  let snapshot: VmSnapshot;
  try {
    snapshot = await snapshotAt(bootFor(s, img, 'demo.install=/dev/vdb demo.nohealth demo.then=poweroff', 'snapshot'), PLAN, path.join(s.work, 'snapshot'), 180_000);
  } finally {
    await fs.rm(img, { force: true });
  }
  const runs = await Promise.all(Array.from({ length: jobs }, (_, i) => calibrateOne(s, snapshot, i)));
  return { plan: snapshot.atMs, done: snapshot.atMs + Math.round(runs.reduce((t, c) => t + c, 0) / jobs), snapshot };
}

/** One undisturbed run of the install from the snapshot: ms from the resume to the done event. */
async function calibrateOne(s: InstallCutSetup, snap: VmSnapshot, n: number): Promise<number> {
  const img = path.join(s.work, `calibrate-${n}.img`);
  await copyImage(snap.disks[0], img);
  const { vm, resumedAt } = await restore(snap, [img, snap.disks[1]], { name: `calibrate-${n}` });
  try {
    await vm.waitFor(DONE, 180_000);
    const done = vm.elapsed() - resumedAt;
    const m = await vm.waitFor(EXIT, 180_000);
    if (m[1] !== '0') throw new Error(vm.failMessage(`calibration install exited ${m[1]}`));
    return done;
  } finally {
    vm.kill();
    await vm.waitExit(30_000).catch(() => {});
    await fs.rm(img, { force: true });
  }
}

export interface CutResult {
  trial: number;
  /** ms after the plan event */
  killAfterMs: number;
  outcome: 'old' | 'new' | 'broken';
  partials: number;
  problems: string[];
  /** what the verification boot ran (when one was done) */
  booted?: string;
}

function sha(buf: Buffer): string {
  return createHash('sha256').update(buf).digest('hex');
}

/** The host's verdict on a cut image. */
export async function checkCut(s: InstallCutSetup, img: string): Promise<{ outcome: CutResult['outcome']; partials: number; problems: string[] }> {
  return withStoreMounted(img, async (dir) => {
    const problems: string[] = [];
    const names = await fs.readdir(path.join(dir, 'layers'));
    let partials = 0;
    for (const n of names) {
      if (/^[0-9a-f]{64}\.sqfs$/.test(n)) {
        const got = sha(await fs.readFile(path.join(dir, 'layers', n)));
        if (got !== n.slice(0, 64)) problems.push(`layer ${n.slice(0, 12)} is corrupt (sha256 ${got.slice(0, 12)})`);
      } else if (isTempName(n)) partials++;
      else problems.push(`unexpected file layers/${n}`);
    }
    let outcome: CutResult['outcome'] = 'broken';
    try {
      const st = parseState(await fs.readFile(path.join(dir, 'state'), 'utf8'));
      if (st.current !== 'a' || st.slots.a?.status !== 'good' || st.slots.a.stack !== s.v1) problems.push(`slot a changed: ${JSON.stringify(st)}`);
      const b = st.slots.b;
      if (!b) outcome = 'old';
      else if (b.status === 'pending' && b.stack === s.next && b.tries === s.tries) {
        const text = await fs.readFile(path.join(dir, 'slots', 'b', 'manifest'), 'utf8').catch(() => '');
        if (stackId(text) !== s.next) problems.push('slot b is pending but its manifest does not match');
        else {
          for (const l of parseManifest(text).layers) {
            const st2 = await fs.stat(path.join(dir, 'layers', `${l.digest}.sqfs`)).catch(() => null);
            if (!st2 || st2.size !== l.size) problems.push(`slot b is pending but layer ${l.name} is ${st2 ? 'the wrong size' : 'missing'}`);
          }
          outcome = 'new';
        }
      } else problems.push(`slot b is ${JSON.stringify(b)}`);
      const first = candidates(st)[0];
      if (outcome === 'old' && first?.slot !== 'a') problems.push(`the hook would try ${first?.slot} first`);
      if (outcome === 'new' && first?.slot !== 'b') problems.push(`the hook would try ${first?.slot} first`);
    } catch (e) {
      problems.push(`state unreadable: ${(e as Error).message}`);
    }
    if (outcome === 'broken' && problems.length === 0) problems.push('neither the old nor the new stack');
    return { outcome, partials, problems };
  });
}

/** One trial: the node from the snapshot (at the plan event), killed `killAfterMs` after it resumed, checked; optionally booted again. */
export async function installCutTrial(s: InstallCutSetup, snap: VmSnapshot, trial: number, killAfterMs: number, verifyBoot: boolean): Promise<CutResult> {
  const img = path.join(s.work, `trial-${trial}.img`);
  await copyImage(snap.disks[0], img);
  const { vm } = await restore(snap, [img, snap.disks[1]], { name: `cut-${trial}` });
  try {
    await new Promise((r) => setTimeout(r, killAfterMs));
  } finally {
    vm.kill();
    await vm.waitExit(30_000).catch(() => {});
  }
  const c = await checkCut(s, img);
  const r: CutResult = { trial, killAfterMs, ...c };
  if (verifyBoot && c.outcome !== 'broken') {
    const v = Vm.start({ target: s.target, initrd: s.initrd, disks: [{ file: img, bus: 'virtio' }], append: 'quiet no_timer_check demo.nohealth demo.then=poweroff', memoryMiB: 768, timeoutMs: 240_000, name: `verify-${trial}` });
    try {
      const m = await v.waitFor(/^DEMO: booted slot=([ab])$/m, 180_000);
      const st = await v.waitFor(/^DEMO: booted status=(\w+)$/m, 30_000);
      r.booted = `${m[1]} ${st[1]}`;
      const want = c.outcome === 'new' ? 'b pending' : 'a good';
      if (r.booted !== want) r.problems.push(`the node booted ${r.booted}, expected ${want}`);
    } catch (e) {
      r.problems.push(`verification boot: ${(e as Error).message.split('\n')[0]}`);
    } finally {
      v.kill();
      await v.waitExit(30_000).catch(() => {});
    }
  }
  if (r.problems.length) await copyImage(img, path.join(s.work, `failed-${trial}.img`)).catch(() => {});
  await fs.rm(img, { force: true });
  return r;
}

/**
 * Kill instants (ms after the plan event) spread over the write window and past it. The
 * margin is generous: the bundled CLI made the window short (~1.3 s), and a trial's install
 * under TCG can run a few hundred ms longer than the calibration's, which with a 20 %
 * margin once left every cut before the end (20 old, 0 new).
 */
export function cutInstants(c: InstallCalibration, n: number, seed: number): number[] {
  const rnd = prng(seed);
  const span = Math.max(500, c.done - c.plan) * 1.5 + 600;
  return Array.from({ length: n }, (_, i) => Math.round(((i + rnd()) / n) * span));
}

/** Runs the trials, `jobs` VMs at a time (results in trial order). */
export async function runCuts(s: InstallCutSetup, cal: InstallCalibration, instants: number[], jobs: number, verifyEvery: number, onResult?: (r: CutResult) => void): Promise<CutResult[]> {
  const results: CutResult[] = new Array(instants.length);
  let next = 0;
  const worker = async () => {
    while (next < instants.length) {
      const i = next++;
      results[i] = await installCutTrial(s, cal.snapshot, i, instants[i], i % verifyEvery === 0);
      onResult?.(results[i]);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, jobs) }, worker));
  return results;
}

export function summarizeCuts(rs: CutResult[]): string {
  const old = rs.filter((r) => r.outcome === 'old').length;
  const neu = rs.filter((r) => r.outcome === 'new').length;
  const bad = rs.filter((r) => r.problems.length).length;
  return `${rs.length} cuts: ${old} old stack, ${neu} new stack pending, ${bad} with problems; ${rs.reduce((a, r) => a + r.partials, 0)} leftover temp files (gc removes them)`;
}
