/** `stackboot migrate --to <nvme>`: move a node booted from SD onto an NVMe (the SD stays the rescue store). */
import type { CommandModule } from 'yargs';
import { fmtBytes, makeOut } from '../output.js';
import { wholeNumber } from '../args.js';

export const migrateCommand: CommandModule<any, any> = {
  command: 'migrate',
  describe: 'partition and format an NVMe, copy the good stack there and install it as pending (SD stays the rescue store)',
  builder: (y) =>
    y
      .option('to', { type: 'string', demandOption: true, describe: 'the NVMe disk, e.g. /dev/nvme0n1 (whole disk; it is wiped)' })
      .option('tries', { type: 'number', default: 3, coerce: wholeNumber('tries', 1, 1000), describe: 'boot tries for the stack on the NVMe' })
      .option('data-size', { type: 'number', coerce: wholeNumber('data-size', 1), describe: 'data partition MiB (default: a quarter of the disk)' })
      .option('boot-files', { type: 'string', describe: "folder whose files (kernel, initrd, boot/extlinux/, EFI/) go into the new boot partition (default: the booted boot partition's)" })
      .option('force', { type: 'boolean', describe: 'migrate even to a mounted or busy disk' })
      .option('dry-run', { type: 'boolean', describe: 'print the plan and change nothing' })
      .example('$0 migrate --to /dev/nvme0n1 --dry-run', 'show the plan'),
  handler: async (a) => {
    const { migrate, planMigrate } = await import('../../node/index.js');
    const out = makeOut(a);
    const plan = await planMigrate({ to: a.to, tries: a.tries, dataMiB: a.dataSize, bootFilesDir: a.bootFiles, force: a.force, progress: out.progress });
    if (a.dryRun) {
      out.result({ dryRun: true, plan });
      out.line(`plan: ${plan.to} (${fmtBytes(plan.diskBytes)}) gets store ${plan.newStoreId} with stack ${plan.stack.slice(0, 12)} (slot ${plan.slot} of store ${plan.fromStore.id}), pending with ${plan.tries} tries`);
      for (const s of plan.steps) out.line(`  - ${s.what.replace(/\n/g, '\n      ')}`);
      return;
    }
    const r = await migrate(plan, { progress: out.progress });
    out.result({ plan, ...r });
    out.line(`migrated: ${plan.to} holds store ${r.storeId} with stack ${plan.stack.slice(0, 12)} in slot a (pending, ${plan.tries} tries; ${fmtBytes(r.copiedBytes)} copied and verified). Reboot to try it; the SD store ${plan.fromStore.id} stays the fallback.`);
    const bf = plan.bootFrom;
    const why = 'none' in bf ? bf.none : r.bootCopyError;
    out.line(why ? `warning: the new boot partition is empty or incomplete (${why}): copy the kernel, initrd, boot/extlinux/ and EFI/ into it, or the NVMe boots only through the SD card` : `boot files: copied from ${'dev' in bf ? bf.dev : 'dir' in bf ? bf.dir : ''}`);
  },
};
