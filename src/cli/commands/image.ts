/** `stackboot image <build-output> -o node.img`: a GPT node disk image (boot, store, data), no root. */
import path from 'node:path';
import type { CommandModule } from 'yargs';
import { type ImageOptions, IMAGE_LAYOUTS, type ImageLayout } from '../../media/index.js';
import { archFromNode, type Arch } from '../../sys/index.js';
import { fmtBytes, makeOut, type Out } from '../output.js';
import { sourceDateEpoch, wholeNumber } from '../args.js';

export const imageCommand: CommandModule<any, any> = {
  command: 'image <build>',
  describe: 'assemble a node disk image (GPT: boot vfat, store ext4 with slot a, data ext4) from a build output',
  builder: (y) =>
    y
      .positional('build', { type: 'string', describe: 'build output folder (manifest + layers/)', demandOption: true })
      .option('out', { alias: 'o', type: 'string', demandOption: true, describe: 'image file (a block map is written to <out>.bmap)' })
      .option('layout', { choices: IMAGE_LAYOUTS as ImageLayout[], describe: 'sd (power-of-two size), nvme, or custom (default: recipe image.json, else sd)' })
      .option('recipe', { type: 'string', describe: 'recipe folder: its `boot` settings go into the initrd, its image.json gives layout and sizes' })
      .option('boot-size', { type: 'number', coerce: wholeNumber('boot-size', 1), describe: 'boot partition MiB' })
      .option('store-size', { type: 'number', coerce: wholeNumber('store-size', 1), describe: 'store partition MiB (default: twice the stack, for an update)' })
      .option('data-size', { type: 'number', coerce: wholeNumber('data-size', 1), describe: 'data partition MiB' })
      .option('size', { type: 'number', coerce: wholeNumber('size', 1), describe: 'whole image MiB (the data partition takes the rest)' })
      .option('arch', { choices: ['amd64', 'arm64'], describe: 'target arch (default: this machine)' })
      .option('kernel', { type: 'string', describe: 'kernel image (default: the setup target)' })
      .option('fdt', { type: 'string', describe: 'device tree blob for extlinux.conf' })
      .option('initrd', { type: 'string', describe: 'use this initrd instead of building the standalone stackboot initrd' })
      .option('efi-boot', { type: 'string', describe: "a UEFI boot program for the boot partition's EFI/BOOT/ (JetPack 5/6: Linux_for_Tegra/bootloader/BOOTAA64.efi, L4TLauncher)" })
      .option('pub', { type: 'string', array: true, describe: 'an ed25519 public key built into the initrd: the stacks it boots must be signed by one (repeatable)' })
      .option('verity-root', { type: 'string', describe: 'sysroot with dmsetup and signify-openbsd for the initrd (default for a stack with verity data or with --pub: the setup target)' })
      .option('kexec-root', { type: 'string', describe: 'sysroot with sbin/kexec for the initrd (default for a stack with its own kernel: the setup target)' })
      .option('append', { type: 'string', describe: 'kernel command line in extlinux.conf' })
      .option('reset-entry', { type: 'boolean', describe: "a second boot menu entry, 'factory-reset': the same kernel with stackboot.reset (wipes the data partition at that boot)" })
      .option('set', { type: 'string', array: true, describe: 'initrd boot config KEY=VALUE (repeatable)' })
      .option('store-id', { type: 'string', describe: 'store id, 32 hex (default: derived from the stack id)' })
      .option('seed', { type: 'string', describe: 'seed for all UUIDs (default: the stack id)' })
      .option('bmap', { type: 'boolean', default: true, describe: 'write <out>.bmap (--no-bmap: do not)' })
      .option('dry-run', { type: 'boolean', describe: 'print the plan (layout, sizes, ids) and write nothing' })
      .option('cache-root', { type: 'string', describe: 'where `npm run setup` put the targets (default: the package\'s .cache)' })
      .example('$0 image out/demo -o node.img --layout sd', 'an SD card image of the demo stack')
      .example('$0 image out/jetson -o sd.img --arch arm64 --kernel Image --efi-boot Linux_for_Tegra/bootloader/BOOTAA64.efi', 'for JetPack 5/6 (UEFI, L4TLauncher)'),
  handler: async (a) => {
    const [{ buildImage, loadImageSpec, planImage }, { makeBootConfig }, { loadRecipe }] = await Promise.all([import('../../media/index.js'), import('../../boot/index.js'), import('../../build/index.js')]);
    const out = makeOut(a);
    const spec = a.recipe ? await loadImageSpec(path.resolve(a.recipe)) : {};
    const arch = (a.arch as Arch | undefined) ?? archFromNode(process.arch) ?? 'amd64';
    const recipe = a.recipe ? await loadRecipe(a.recipe, { arch }) : undefined;
    const o: ImageOptions = {
      buildDir: a.build,
      out: a.out,
      layout: a.layout ?? spec.layout,
      bootMiB: a.bootSize ?? spec.bootMiB,
      storeMiB: a.storeSize ?? spec.storeMiB,
      dataMiB: a.dataSize ?? spec.dataMiB,
      sizeMiB: a.size ?? spec.sizeMiB,
      arch,
      kernel: a.kernel,
      fdt: a.fdt,
      initrd: a.initrd,
      kexecRoot: a.kexecRoot,
      verityRoot: a.verityRoot,
      pubKeys: a.pub ?? [],
      append: a.append ?? spec.append,
      efiBoot: a.efiBoot ?? spec.efiBoot,
      resetEntry: a.resetEntry ?? spec.resetEntry,
      bootConfig: makeBootConfig({ set: [...Object.entries(recipe?.boot ?? {}), ...((a.set as string[] | undefined) ?? [])] }),
      storeId: a.storeId,
      seed: a.seed,
      epoch: sourceDateEpoch(),
      bmap: a.bmap !== false,
      cacheRoot: a.cacheRoot,
      progress: out.progress,
    };
    if (a.dryRun) {
      const p = await planImage(o);
      out.result(p);
      out.line(`would write ${p.out}: ${p.layout} layout, ${p.totalMiB} MiB, stack ${p.stackId.slice(0, 12)} (${p.name} ${p.version}), store id ${p.storeId}`);
      for (const part of p.parts) out.line(`  ${part.name.padEnd(9)} ${part.fs.padEnd(5)} ${part.sizeMiB} MiB${part.label !== part.name ? `, label ${part.label}` : ''}`);
      out.line(`  boot files: ${p.bootConf}${p.efiBoot ? `, ${p.efiBoot}` : ''}`);
      out.line(`  boot menu: ${p.bootEntries.join(', ')} (the first the default)`);
      warnBootRoom(out, p);
      return;
    }
    const r = await buildImage(o);
    out.result(r);
    out.line(`${r.out}: ${r.layout} image, ${fmtBytes(r.bytes)} (${fmtBytes(r.mappedBytes ?? 0)} mapped), stack ${r.stackId.slice(0, 12)}, store id ${r.storeId}`);
    for (const p of r.partitions) out.line(`  p${p.index} ${p.name.padEnd(9)} ${fmtBytes(p.size).padStart(9)} at ${p.start} uuid ${p.uuid}`);
    if (r.bmapFile) out.line(`block map: ${r.bmapFile}`);
    warnBootRoom(out, r);
  },
};

/** A --boot-size below what a boot-update of this kernel needs (the next kernel and initrd beside the current ones). */
function warnBootRoom(out: Out, p: { parts: { sizeMiB: number }[]; bootRoomMiB: number }): void {
  const boot = p.parts[0]!.sizeMiB;
  if (boot < p.bootRoomMiB) out.line(`warning: the ${boot} MiB boot partition has no room for a boot-update of this kernel (the next kernel and initrd go beside the current ones: ${p.bootRoomMiB} MiB)`);
}
