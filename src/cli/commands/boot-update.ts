/** `stackboot boot-update`: replace the boot partition's kernel and initrd safely, the old entry kept as the second extlinux label. */
import path from 'node:path';
import type { CommandModule } from 'yargs';
import { fmtBytes, makeOut } from '../output.js';

export const bootUpdateCommand: CommandModule<any, any> = {
  command: 'boot-update',
  describe: "replace the boot partition's kernel and initrd (the old ones stay as the second extlinux label)",
  builder: (y) =>
    y
      .option('boot', { type: 'string', describe: "the mounted boot partition (default: the vfat labelled SB-BOOT, the booted store's disk's when there are several, mounted for the update)" })
      .option('kernel', { type: 'string', describe: 'the new kernel' })
      .option('initrd', { type: 'string', describe: 'its initrd (a stackboot initrd: stackboot initramfs)' })
      .option('fdt', { type: 'string', describe: 'a device tree' })
      .option('append', { type: 'string', describe: "the kernel command line (default: the current entry's)" })
      .option('from-stack', { type: 'boolean', describe: "the booted stack's own kernel and initrd (checked against its manifest)" })
      .option('root', { type: 'string', describe: 'with --from-stack: the running root (default /)', hidden: true })
      .option('store', { type: 'string', describe: 'with --from-stack: a store folder (default: the booted store)' })
      .option('booted-slot', { type: 'string', choices: ['a', 'b', 'none'], describe: 'with --store: the slot to treat as booted' })
      .option('run-dir', { type: 'string', hidden: true })
      .option('dry-run', { type: 'boolean', describe: 'print what would be written and removed' })
      .example('$0 boot-update --from-stack', 'the firmware starts the booted stack\'s kernel from now on (no kexec)')
      .example('$0 boot-update --boot /mnt --kernel vmlinuz-6.12 --initrd initrd.img', ''),
  handler: async (a) => {
    const { nodeBootUpdate, nodeContext } = await import('../../node/index.js');
    const out = makeOut(a);
    const ctx = a.fromStack ? await nodeContext({ store: a.store, bootedSlot: a.bootedSlot, runDir: a.runDir }) : null;
    const r = await nodeBootUpdate(ctx, { bootDir: a.boot, kernel: a.kernel, initrd: a.initrd, fdt: a.fdt, append: a.append, fromStack: a.fromStack, root: a.root, dryRun: a.dryRun, ...(a.runDir ? { bootedFile: path.join(a.runDir, 'stackboot', 'booted') } : {}) });
    out.result(r);
    if (r.current) return out.line(`the boot partition boots ${r.entry.kernel} already: nothing to do`);
    out.line(`${r.conf}: ${r.dryRun ? 'would write' : 'wrote'} ${r.write.map((w) => w.to).join(', ') || 'nothing new'} (${fmtBytes(r.bytes)}, ${fmtBytes(r.free)} ${r.dryRun ? 'free' : 'were free'}); default ${r.entry.kernel} + ${r.entry.initrd}, previous ${r.previous.kernel} + ${r.previous.initrd}${r.remove.length ? `; ${r.dryRun ? 'would remove' : 'removed'} ${r.remove.join(', ')}` : ''}`);
  },
};
