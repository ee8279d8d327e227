/**
 * Power cuts during the real `stackboot install` (amd64, QEMU TCG): QEMU is SIGKILLed at
 * spread-out random instants of the install (SB_INSTALL_CUTS, default 20), each trial
 * started from one saved instant of one boot, the install's plan event (snapshot.ts), so
 * a trial costs its few seconds of install, not a boot; after each the
 * store holds only intact layers, slot a stays good, and slot b is either empty (the node
 * boots the old stack) or the new stack pending with every layer (the node boots it).
 * Every 7th trial (and the first) also boots the cut image to prove it. SB_INSTALL_JOBS
 * VMs run at once (default 2). Then the same for a chunk delta (SB_INSTALL_CHUNK_CUTS,
 * default 10): the node rebuilds a 12 MiB layer from its store's chunks and the few the
 * bundle carries, and a cut in the middle of that leaves the old stack bootable and no
 * corrupt layer. See
 * install-powercut.ts for the checks and the QEMU cache mode. Soak: scripts/soak-install.ts.
 */
import { describe, it, expect, beforeAll, afterEach } from 'vitest';
import { scratch } from './fixtures.js';
import { calibrateInstall, cutInstants, makeChunkInstallSetup, makeInstallSetup, runCuts, summarizeCuts, type InstallCutSetup } from './install-powercut.js';
import { useVmCleanup } from './qemu.js';
import { discard } from './snapshot.js';

useVmCleanup(afterEach);

const CUTS = Number(process.env.SB_INSTALL_CUTS ?? 20);
const CHUNK_CUTS = Number(process.env.SB_INSTALL_CHUNK_CUTS ?? 10);
const SEED = Number(process.env.SB_INSTALL_SEED ?? 20261122);
// two VMs at a time: a trial is ~25 s of boot (Node.js starting under TCG) for a ~2 s install
const JOBS = Number(process.env.SB_INSTALL_JOBS ?? 2);
let setup: InstallCutSetup;

beforeAll(async () => {
  const dir = await scratch('install-powercut');
  setup = await makeInstallSetup(dir);
});

describe('power cuts during stackboot install (QEMU)', () => {
  it(`${CUTS} cuts: no corrupt layer, the node boots the old stack or the new one as pending`, async () => {
    const cal = await calibrateInstall(setup, JOBS);
    expect(cal.done).toBeGreaterThan(cal.plan);
    const results = await runCuts(setup, cal, cutInstants(cal, CUTS, SEED), JOBS, 7).finally(() => discard(cal.snapshot));
    const summary = summarizeCuts(results);
    console.log(`install power cuts (calibration: plan at ${cal.plan} ms, done at ${cal.done} ms): ${summary}`);
    const bad = results.filter((r) => r.problems.length);
    expect(bad.map((r) => `trial ${r.trial} (+${r.killAfterMs} ms): ${r.problems.join('; ')}`), summary).toEqual([]);
    // the cuts covered both sides of the install's last step
    expect(results.some((r) => r.outcome === 'old'), summary).toBe(true);
    expect(results.some((r) => r.outcome === 'new'), summary).toBe(true);
  });
});

describe('power cuts during a chunk-delta install (QEMU)', () => {
  it(`${CHUNK_CUTS} cuts while the node rebuilds a layer from its chunks: no corrupt layer, the old stack or the new one as pending`, async () => {
    const dir = await scratch('install-powercut-chunks');
    const cs = await makeChunkInstallSetup(dir);
    // the bundle carries a small part of the layer the node rebuilds
    expect(cs.carried).toBeLessThan(cs.layerBytes / 4);
    const cal = await calibrateInstall(cs, JOBS);
    expect(cal.done).toBeGreaterThan(cal.plan);
    const results = await runCuts(cs, cal, cutInstants(cal, CHUNK_CUTS, SEED + 1), JOBS, 4).finally(() => discard(cal.snapshot));
    const summary = summarizeCuts(results);
    console.log(`chunk install power cuts (bundle ${cs.carried} bytes for ${cs.layerBytes} of new layers; plan at ${cal.plan} ms, done at ${cal.done} ms): ${summary}`);
    const bad = results.filter((r) => r.problems.length);
    expect(bad.map((r) => `trial ${r.trial} (+${r.killAfterMs} ms): ${r.problems.join('; ')}`), summary).toEqual([]);
    expect(results.some((r) => r.outcome === 'old'), summary).toBe(true);
    expect(results.some((r) => r.outcome === 'new'), summary).toBe(true);
  });
});
