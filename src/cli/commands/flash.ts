/** `stackboot flash <image|build-output> <device-or-file>`: guarded, sparse, verified write. */
import type { CommandModule } from 'yargs';
import { archFromNode, type Arch } from '../../sys/index.js';
import { IMAGE_LAYOUTS } from '../../media/index.js';
import { fmtBytes, makeOut } from '../output.js';
import { wholeNumber } from '../args.js';

export const flashCommand: CommandModule<any, any> = {
  command: 'flash <image> <target>',
  describe: 'write an image (or a build output) to a device or file: mapped blocks only, read back and verified',
  builder: (y) =>
    y
      .positional('image', { type: 'string', describe: 'node.img (uses node.img.bmap when present) or a build output folder', demandOption: true })
      .positional('target', { type: 'string', describe: 'whole-disk block device (/dev/sdX, /dev/mmcblk0, /dev/nvme0n1) or a file', demandOption: true })
      .option('force', { type: 'boolean', describe: 'flash even a mounted, busy, root-holding or too small device' })
      .option('bmap', { type: 'string', describe: 'block map file (default <image>.bmap, else one is built)' })
      .option('verify', { type: 'boolean', default: true, describe: 'read back and check what was written (--no-verify: skip it)' })
      .option('layout', { choices: IMAGE_LAYOUTS as string[], describe: 'for a build output: the image layout' })
      .option('size', { type: 'number', coerce: wholeNumber('size', 1), describe: 'for a build output: whole image MiB' })
      .option('arch', { choices: ['amd64', 'arm64'], describe: 'for a build output: target arch' })
      .option('cache-root', { type: 'string', describe: 'where `npm run setup` put the targets (default: the package\'s .cache)' })
      .example('$0 flash node.img /dev/mmcblk0', 'flash an SD card'),
  handler: async (a) => {
    const { flash } = await import('../../media/index.js');
    const out = makeOut(a);
    const r = await flash({
      image: a.image,
      target: a.target,
      force: a.force,
      bmapFile: a.bmap,
      noVerify: a.verify === false,
      progress: out.progress,
      imageOptions: { layout: a.layout, sizeMiB: a.size, arch: (a.arch as Arch | undefined) ?? archFromNode(process.arch) ?? 'amd64', cacheRoot: a.cacheRoot },
    });
    out.result(r);
    for (const f of r.forced) out.line(`warning (forced): ${f}`);
    out.line(`${r.target}: wrote ${fmtBytes(r.bytesWritten)} of a ${fmtBytes(r.imageSize)} image in ${r.ranges} ranges (${(r.writeMs / 1000).toFixed(1)} s)${r.verified ? `, verified (${(r.verifyMs / 1000).toFixed(1)} s)` : ', NOT verified'}, synced`);
  },
};
