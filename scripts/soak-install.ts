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
import { scratch } from '../test/e2e/fixtures.js';
import { calibrateInstall, cutInstants, makeInstallSetup, runCuts, summarizeCuts } from '../test/e2e/install-powercut.js';
import { killAllVms } from '../test/e2e/qemu.js';
import { discard } from '../test/e2e/snapshot.js';

const trials = Number(process.argv[2] ?? 200);
const seed = Number(process.argv[3] ?? Date.now() % 1e9);
const dir = await scratch('soak-install');
const setup = await makeInstallSetup(dir);
process.on('SIGINT', () => void killAllVms().then(() => process.exit(130)));
const jobs = Number(process.env.SB_INSTALL_JOBS ?? 2);
const cal = await calibrateInstall(setup, jobs);
console.log(`work ${dir}, seed ${seed}, ${jobs} VMs at a time; calibration: plan at ${cal.plan} ms, install done at ${cal.done} ms`);
const results = await runCuts(setup, cal, cutInstants(cal, trials, seed), jobs, 10, (r) =>
  console.log(`trial ${r.trial} +${r.killAfterMs} ms: ${r.outcome}${r.booted ? `, booted ${r.booted}` : ''}${r.partials ? `, ${r.partials} .part` : ''}${r.problems.length ? `  PROBLEMS: ${r.problems.join('; ')}` : ''}`),
);
console.log(summarizeCuts(results));
await killAllVms();
await discard(cal.snapshot);
process.exit(results.some((r) => r.problems.length) ? 1 : 0);
