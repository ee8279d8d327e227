/** `stackboot initramfs`: build the boot hook (standalone initrd, initramfs-tools or dracut files). */
import type { CommandModule } from 'yargs';
import { readFile } from 'node:fs/promises';
import { StackbootError, type Arch } from '../../sys/index.js';
import { COMPRESSIONS, FLAVORS, type Compression, type Flavor } from '../../boot/index.js';
import type { GlobalArgs } from '../main.js';
import { makeOut } from '../output.js';
import { sourceDateEpoch } from '../args.js';

interface Args extends GlobalArgs {
  flavor: Flavor;
  out: string;
  arch?: Arch;
  'modules-dir'?: string;
  busybox?: string;
  'kexec-root'?: string;
  'verity-root'?: string;
  pub?: string[];
  config?: string;
  set?: string[];
  module?: string[];
  compress: Compression;
}

export const initramfsCommand: CommandModule<GlobalArgs, Args> = {
  command: 'initramfs',
  describe: 'build the boot hook: a standalone initrd, or initramfs-tools / dracut files',
  builder: (y) =>
    y
      .option('flavor', { choices: FLAVORS as Flavor[], demandOption: true, describe: 'standalone initrd, initramfs-tools hook+script, or dracut module' })
      .option('out', { type: 'string', demandOption: true, describe: 'initrd file (standalone) or output directory' })
      .option('arch', { choices: ['amd64', 'arm64'] as Arch[], describe: 'target arch (standalone; default: the host)' })
      .option('modules-dir', { type: 'string', describe: 'kernel modules dir, lib/modules/<kver> (default: the setup target)' })
      .option('busybox', { type: 'string', describe: 'busybox-static for the target (default: the setup target)' })
      .option('kexec-root', { type: 'string', describe: 'standalone: a sysroot with sbin/kexec and its libraries, for stacks with their own kernel (setup: .cache/targets/<arch>/kexec-root)' })
      .option('verity-root', { type: 'string', describe: 'standalone: a sysroot with sbin/dmsetup and bin/signify-openbsd and their libraries, for verified boot (setup: .cache/targets/<arch>/verity-root)' })
      .option('pub', { type: 'string', array: true, describe: 'standalone: an ed25519 public key manifests must be signed by (repeatable; needs --verity-root)' })
      .option('config', { type: 'string', describe: 'boot.conf to start from (KEY=value)' })
      .option('set', { type: 'string', array: true, describe: 'boot config KEY=VALUE (repeatable)' })
      .option('module', { alias: 'm', type: 'string', array: true, describe: 'extra kernel module (repeatable)' })
      .option('compress', { choices: COMPRESSIONS as Compression[], default: 'gzip' as Compression, describe: 'initrd compression (standalone)' }) as never,
  handler: async (argv) => {
    const { buildInitramfs, makeBootConfig } = await import('../../boot/index.js');
    const out = makeOut(argv);
    let text: string | undefined;
    if (argv.config) {
      try {
        text = await readFile(argv.config, 'utf8');
      } catch (e) {
        throw new StackbootError('CONFIG', `cannot read ${argv.config}`, { cause: e });
      }
    }
    const config = makeBootConfig({ text, origin: argv.config, set: argv.set ?? [] });
    const r = await buildInitramfs({
      flavor: argv.flavor,
      out: argv.out,
      arch: argv.arch,
      modulesDir: argv['modules-dir'],
      busybox: argv.busybox,
      kexecRoot: argv['kexec-root'],
      verityRoot: argv['verity-root'],
      pubKeys: argv.pub ?? [],
      config,
      modules: (argv.module ?? []).flatMap((m) => m.split(/[\s,]+/)).filter((m) => m !== ''),
      compress: argv.compress,
      mtime: sourceDateEpoch(),
      progress: out.progress,
    });
    out.result(r);
    if (r.flavor === 'standalone') {
      out.line(`${r.out}: ${r.arch} initrd for ${r.kver}, ${r.compress}, ${r.bytes} bytes, ${r.modules.length} modules${r.builtin.length ? ` (built in: ${r.builtin.join(' ')})` : ''}${r.kexec ? `, kexec with ${r.kexec.length - 1} libraries` : ''}${r.verity ? `, dmsetup and signify with ${r.verity.length - 2} libraries` : ''}${r.keys ? `, ${r.keys.length} key(s)` : ''}`);
    } else {
      out.line(`${r.out}: ${r.flavor} files (${r.files.length}); see ${r.out}/INSTALL`);
    }
  },
};
