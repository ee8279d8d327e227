/**
 * The initramfs-tools and dracut flavors in a Debian chroot, as an admin installs them:
 * the chroots (with a kernel and the flavor's tools), the hook rendered by
 * `buildInitramfs` and installed with the commands of its own INSTALL file, and
 * initramfs-tools' real mkinitramfs. Shared by hooks.test.ts and debian.test.ts.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { buildInitramfs, makeBootConfig, type Flavor } from '../../src/boot/initramfs.js';
import { inChroot, type Chroot, type ChrootSpec } from './chroot.js';

export type HookFlavor = Exclude<Flavor, 'standalone'>;

export const HOOK_CHROOTS: Record<HookFlavor, ChrootSpec> = {
  // dmsetup and signify-openbsd: the hooks copy them in for verified boot (dm-verity
  // layers, the manifest's signature); kexec-tools: for stacks with a kernel of their own
  'initramfs-tools': { name: 'bookworm-initramfs-tools', include: ['linux-image-amd64', 'initramfs-tools', 'busybox', 'dmsetup', 'signify-openbsd', 'kexec-tools'] },
  dracut: { name: 'bookworm-dracut', include: ['linux-image-amd64', 'dracut', 'busybox', 'mount', 'dmsetup', 'signify-openbsd', 'kexec-tools'] },
};

/**
 * The shell commands of the INSTALL file's "Install and rebuild:" block (its indented
 * lines), split into the install steps and the final rebuild command.
 */
export function installCommands(install: string): { steps: string[]; rebuild: string } {
  const lines = install.split('\n');
  const start = lines.findIndex((l) => l.trim() === 'Install and rebuild:');
  if (start < 0) throw new Error('INSTALL has no "Install and rebuild:" block');
  const cmds: string[] = [];
  for (const l of lines.slice(start + 1)) {
    if (l.trim() === '') {
      if (cmds.length) break;
      continue;
    }
    if (!l.startsWith('  ')) break;
    cmds.push(l.replace(/\s+#.*$/, '').trim());
  }
  const rebuild = cmds.pop();
  if (!rebuild) throw new Error('INSTALL lists no commands');
  return { steps: cmds, rebuild };
}

/** Renders the hook, copies it into the chroot and runs INSTALL's install steps there. */
export async function renderAndInstall(flavor: HookFlavor, c: Chroot, work: string, settings: Array<[string, string]>, pubKeys: string[] = []): Promise<{ rebuild: string; files: string[] }> {
  const out = path.join(work, `hook-${flavor}`);
  const r = await buildInitramfs({ flavor, out, config: makeBootConfig({ set: settings }), pubKeys });
  const { steps, rebuild } = installCommands(await fs.readFile(path.join(out, 'INSTALL'), 'utf8'));
  // the rendered folder as the admin would have it on the build machine
  const inside = `/tmp/stackboot-${flavor}`;
  await fs.rm(path.join(c.root, inside), { recursive: true, force: true });
  await fs.cp(out, path.join(c.root, inside), { recursive: true });
  // drop what an earlier run installed, so nothing stale is picked up
  const stale = flavor === 'dracut' ? ['/usr/lib/dracut/modules.d/90stackboot', '/etc/dracut.conf.d/stackboot.conf'] : ['/usr/share/stackboot', '/etc/initramfs-tools/hooks/stackboot', '/etc/initramfs-tools/scripts/stackboot'];
  for (const s of stale) await fs.rm(path.join(c.root, s), { recursive: true, force: true });
  await inChroot(c, ['sh', '-ec', `cd ${inside}\n${steps.join('\n')}`]);
  return { rebuild, files: r.files };
}

/**
 * The real mkinitramfs in the chroot for its kernel `kver`, with the chroot's own config
 * but MODULES=list (only what the hooks ask for: the boot also proves that the stackboot
 * hook adds every module it needs). Returns the initrd's path inside the chroot.
 */
export async function mkinitramfs(c: Chroot, kver: string): Promise<string> {
  await inChroot(c, [
    'sh',
    '-ec',
    [
      'rm -rf /tmp/sb-conf && cp -a /etc/initramfs-tools /tmp/sb-conf',
      'sed -i "s/^MODULES=.*/MODULES=list/" /tmp/sb-conf/initramfs.conf',
      `mkinitramfs -d /tmp/sb-conf -o /tmp/sb-initrd.img ${kver}`,
    ].join('\n'),
  ]);
  return '/tmp/sb-initrd.img';
}
