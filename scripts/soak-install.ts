/**
 * Soak: power cuts during the real `stackboot install` in QEMU, many times (default 200).
 *
 *   npx tsx scripts/soak-install.ts [TRIALS] [SEED]
 *
 * Same setup and checks as test/e2e/install-powercut.test.ts (see
 * test/e2e/install-powercut.ts); every 10th trial also boots the cut image. Prints one
 * line per trial and a summary; exits 1 when any trial found a problem (their images are
 * kept as failed-<n>.img in the work folder).
 */
import path from 'node:path';
import { baseLayers, writeBundleFile } from '../src/bundle.js';
import { initrd, scratch, storeDisk, target } from '../test/e2e/fixtures.js';
import { nodeStack } from '../test/e2e/node-fixtures.js';
import { calibrateInstall, cutInstants, runCuts, summarizeCuts } from '../test/e2e/install-powercut.js';
import { killAllVms } from '../test/e2e/qemu.js';

const trials = Number(process.argv[2] ?? 200);
const seed = Number(process.argv[3] ?? Date.now() % 1e9);
const dir = await scratch('soak-install');
const [v1, big] = await Promise.all([nodeStack('recipe'), nodeStack('big')]);
const base = path.join(dir, 'base.img');
await storeDisk({ file: base, slots: { a: { buildDir: v1.outDir, status: 'good' } }, storeMiB: 256 });
const bundle = path.join(dir, 'big.stackbundle');
await writeBundleFile({ buildDir: big.outDir, file: bundle, baseDigests: (await baseLayers(v1.outDir)).digests });
const setup = {
  target: await target('amd64'),
  initrd: await initrd(path.join(dir, 'initrd.img'), { STORES: 'vda', DEVICE_TIMEOUT: '5', TRIES: '3' }),
  base,
  bundle,
  v1: v1.stackId,
  next: big.stackId,
  tries: 3,
  work: dir,
};
process.on('SIGINT', () => void killAllVms().then(() => process.exit(130)));
const jobs = Number(process.env.SB_INSTALL_JOBS ?? 2);
const cal = await calibrateInstall(setup, jobs);
console.log(`work ${dir}, seed ${seed}, ${jobs} VMs at a time; calibration: plan at ${cal.plan} ms, install done at ${cal.done} ms`);
const results = await runCuts(setup, cutInstants(cal, trials, seed), jobs, 10, (r) =>
  console.log(`trial ${r.trial} +${r.killAfterMs} ms: ${r.outcome}${r.booted ? `, booted ${r.booted}` : ''}${r.partials ? `, ${r.partials} .part` : ''}${r.problems.length ? `  PROBLEMS: ${r.problems.join('; ')}` : ''}`),
);
console.log(summarizeCuts(results));
await killAllVms();
process.exit(results.some((r) => r.problems.length) ? 1 : 0);
