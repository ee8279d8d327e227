/** `stackboot init-store <dir>`: an empty store on a new medium (e.g. a rescue card made by hand). */
import type { CommandModule } from 'yargs';
import { makeOut } from '../output.js';

export const initStoreCommand: CommandModule<any, any> = {
  command: 'init-store <dir>',
  describe: 'make an empty store in a new or empty folder (e.g. a mounted ext4 labelled sb-store)',
  builder: (y) =>
    y
      .positional('dir', { type: 'string', demandOption: true, describe: 'the folder (made when missing)' })
      .option('id', { type: 'string', describe: 'the store id (32 hex characters; default: a random one)' })
      .option('dry-run', { type: 'boolean', describe: 'print the plan and change nothing' })
      .example('$0 init-store /mnt/sb-store', 'then: stackboot install node-2.stackbundle --store /mnt/sb-store --booted-slot none'),
  handler: async (a) => {
    const { initStore, planStoreInit, STORE_LABEL } = await import('../../format/index.js');
    const out = makeOut(a);
    const plan = await planStoreInit(a.dir, a.id);
    if (a.dryRun) {
      out.result({ dryRun: true, plan });
      out.line(`plan: store ${plan.id} in ${plan.dir}: ${plan.creates.join(', ')}`);
      return;
    }
    await initStore(plan);
    out.result({ dryRun: false, plan });
    out.line(`store ${plan.id} made in ${plan.dir}. The boot finds a store by its filesystem label (${STORE_LABEL}, or STORE_LABEL of the boot config). Next: stackboot install <bundle> --store ${plan.dir} --booted-slot none`);
  },
};
