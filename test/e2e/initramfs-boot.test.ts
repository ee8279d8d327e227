/**
 * Boots the standalone initrd (src/initramfs.ts) on amd64 with no disks: /init runs,
 * loads its modules, finds no store, logs the all-failed path and reboots after
 * ON_FAIL_DELAY; -no-reboot turns that reboot into QEMU's exit.
 */
import { describe, it, expect, beforeAll, afterAll, afterEach } from 'vitest';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildInitramfs, makeBootConfig } from '../../src/boot/initramfs.js';
import { loadTarget } from '../../src/boot/target.js';
import { bootOnce, useVmCleanup } from './qemu.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const CACHE = path.join(REPO, '.cache');

useVmCleanup(afterEach);

let tmp: string;
beforeAll(async () => {
  tmp = await mkdtemp(path.join(tmpdir(), 'sb-initramfs-boot-'));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

describe('standalone initrd boots (amd64, no disks)', () => {
  it('runs /init, loads modules, reaches the all-failed path and reboots', async () => {
    const target = await loadTarget('amd64', CACHE);
    const initrd = path.join(tmp, 'initrd.img');
    await buildInitramfs({
      flavor: 'standalone',
      out: initrd,
      arch: 'amd64',
      modulesDir: target.modules,
      busybox: target.busybox,
      config: makeBootConfig({ set: ['ON_FAIL=reboot', 'ON_FAIL_DELAY=1', 'DEVICE_TIMEOUT=1', 'DEVICE_SETTLE=0'] }),
    });
    const r = await bootOnce({ target, initrd, timeoutMs: 180_000 });
    const out = r.output;
    const fail = (what: string) => `${what}\n----- console -----\n${out.split('\n').slice(-40).join('\n')}`;
    expect(out, fail('init did not start')).toMatch(/stackboot init: loading modules/);
    // modules from the initrd were loaded (squashfs and loop print when they load)
    expect(out, fail('squashfs not loaded')).toMatch(/squashfs: version/);
    expect(out, fail('loop not loaded')).toMatch(/loop: module loaded/);
    expect(out, fail('no all-failed log line')).toMatch(/stackboot: .*every candidate failed/);
    expect(out, fail('no reboot announced')).toMatch(/stackboot: .*reboot/i);
    expect(out).not.toMatch(/Kernel panic/);
    expect(r.how, fail(`VM ended by ${r.how}`)).toBe('reboot');
  });
});
