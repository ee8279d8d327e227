// buildInitramfs: each flavor goes to its own builder; a bad module name or an unknown
// flavor is refused before anything is written.
import { describe, it, expect } from 'vitest';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { buildInitramfs, FLAVORS, type Flavor } from '../../src/boot/initramfs.js';
import { ARCH, hostBusybox, makeFakeCore, makeFakeKernel, testTmp } from '../support/boot-fixtures.js';

const tmp = testTmp('sb-initramfs-test-');

describe('buildInitramfs', () => {
  it('builds each flavor with its own builder', async () => {
    const coreDir = await makeFakeCore(path.join(tmp(), 'core'), true);
    const modulesDir = await makeFakeKernel(path.join(tmp(), 'k'));
    const busybox = await hostBusybox();
    const marks: Record<Flavor, string> = { standalone: 'init', 'initramfs-tools': 'hooks/stackboot', dracut: 'modules.d/90stackboot/module-setup.sh' };
    for (const flavor of FLAVORS) {
      const out = path.join(tmp(), `out-${flavor}`);
      const r = await buildInitramfs({ flavor, out, coreDir, modulesDir, busybox, arch: ARCH });
      expect(r.flavor).toBe(flavor);
      expect(r.out).toBe(out);
      expect(r.files, flavor).toContain(marks[flavor]);
      expect(existsSync(out), flavor).toBe(true);
    }
  });

  it('refuses a module name that is not a plain name, before anything is written', async () => {
    const out = path.join(tmp(), 'bad-module');
    await expect(buildInitramfs({ flavor: 'dracut', out, modules: ['ok_mod', 'evil; reboot'] })).rejects.toMatchObject({ code: 'CONFIG', message: 'bad kernel module name "evil; reboot"' });
    expect(existsSync(out)).toBe(false);
  });

  it('refuses an unknown flavor, naming the ones there are', async () => {
    const out = path.join(tmp(), 'bad-flavor');
    await expect(buildInitramfs({ flavor: 'mkinitcpio' as Flavor, out })).rejects.toMatchObject({ code: 'USAGE', message: 'unknown initramfs flavor mkinitcpio (standalone, initramfs-tools, dracut)' });
    expect(existsSync(out)).toBe(false);
  });
});
