/**
 * The long power-cut soak (issue 3, scenario 7): N trials (default 200) of "boot a node
 * whose slot b is pending, SIGKILL QEMU at a random instant while the hook and mark-good
 * write the state, boot again undisturbed, check the protocol" on amd64, then a summary
 * table by phase of the cut, state it left and what the next boot ran.
 *
 *   npx tsx scripts/soak-powercut.ts [--trials 200] [--seed N] [--jobs 2] [--tries 1]
 *
 * Needs root-free tools only (QEMU, e2fsprogs) and the setup targets (npm run setup).
 * Failing trials keep their image and both consoles under .cache/e2e/runs/soak-*
 * (a clean run removes its folder).
 * Exit code 1 when any trial broke a rule. See test/e2e/powercut.test.ts for the cache
 * mode and what a SIGKILL does and does not model.
 */
import path from 'node:path';
import { rm } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { demoStack, storeDisk, initrd, target, scratch } from '../test/e2e/fixtures.js';
import { killAllVms } from '../test/e2e/qemu.js';
import { calibrate, killInstants, powercutTrials, summarize, type TrialResult } from '../test/e2e/inspect.js';

const BATCH = 20;

const { values } = parseArgs({
  options: {
    trials: { type: 'string', default: '200' },
    seed: { type: 'string', default: String(Date.now() % 1_000_000) },
    jobs: { type: 'string', default: '2' },
    tries: { type: 'string', default: '1' },
  },
});
const trials = Number(values.trials);
const seed = Number(values.seed);
const jobs = Number(values.jobs);
const tries = Number(values.tries);

async function main(): Promise<number> {
  const t0 = Date.now();
  const [T, demo, upd] = await Promise.all([target('amd64'), demoStack('demo'), demoStack('demo-update')]);
  const work = await scratch('soak-powercut');
  const base = path.join(work, 'base.img');
  await storeDisk({ file: base, slots: { a: { buildDir: demo.outDir, status: 'good' }, b: { buildDir: upd.outDir, status: 'pending', tries } } });
  const ird = await initrd(path.join(work, 'initrd.img'), { STORES: 'vda', DEVICE_TIMEOUT: '5' });
  const setup = { target: T, initrd: ird, base, tries, good: demo.stackId, pending: upd.stackId, append: 'quiet', work };
  console.log(`soak: ${trials} trials, seed ${seed}, ${jobs} at a time, pending tries ${tries}; work ${work}`);
  let done = 0;
  let failed = 0;
  const results: TrialResult[] = [];
  // the host's load drifts over a long soak: calibrate again before every batch
  for (let first = 0; first < trials; first += BATCH) {
    const n = Math.min(BATCH, trials - first);
    const cal = await calibrate(setup, jobs);
    console.log(`calibration (ms from QEMU start): init ${cal.anchor}, store ${cal.storeFound}, trying b ${cal.trying}, demo ${cal.demo}, good ${cal.good}, end ${cal.end}`);
    const instants = killInstants(cal, n, seed + first);
    const batch = await powercutTrials(setup, instants, jobs, (r) => {
      done++;
      if (r.problems.length) failed++;
      const line = `[${String(done).padStart(String(trials).length)}/${trials}] trial ${r.trial} kill ${r.killMs} ms after init: ${r.phase}; ${r.cutState} -> ${r.recovered}`;
      console.log(r.problems.length ? `${line}  FAIL (trial-${r.trial}.img): ${r.problems.join('; ')}` : line);
    }, first);
    results.push(...batch);
  }
  console.log(`\n${summarize(results)}\n`);
  console.log(`${trials - failed}/${trials} trials kept every rule (${Math.round((Date.now() - t0) / 1000)} s)`);
  if (!failed) await rm(work, { recursive: true, force: true });
  return failed ? 1 : 0;
}

main()
  .then((code) => {
    process.exitCode = code;
  })
  .catch(async (e) => {
    console.error(e);
    await killAllVms();
    process.exitCode = 1;
  });
