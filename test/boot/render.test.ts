// Rendering the hook's text: boot.conf (read back by the TypeScript parser and by the
// shell core to the same values), shell quoting, strict templates, the sh -n check.
import { describe, it, expect } from 'vitest';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { run } from '../../src/sys/exec.js';
import { BOOT_CONFIG_KEYS, makeBootConfig, parseBootConfigText } from '../../src/boot/bootconfig.js';
import { checkShellSyntax, renderBootConfig, renderTemplate, shellQuote } from '../../src/boot/render.js';
import { REPO, testTmp } from '../support/boot-fixtures.js';

const tmp = testTmp('sb-render-test-');

describe('boot.conf', () => {
  it('renders boot.conf that parses back to the same config', async () => {
    const c = makeBootConfig({ set: ['STORES=nvme0n1 vd*', 'PERSIST=/home /var/lib/x', 'UPPER=disk', 'ON_FAIL_DELAY=0'] });
    const text = await renderBootConfig(c);
    expect(text).toMatch(/^STORES=nvme0n1 vd\*$/m);
    expect(text).toMatch(/^ON_FAIL_DELAY=0$/m);
    const keys = parseBootConfigText(text).map(([k]) => k);
    expect(keys).toEqual([...BOOT_CONFIG_KEYS]);
    expect(makeBootConfig({ text })).toEqual(c);
  });

  it('renders boot.conf that the shell core reads to the same values', async () => {
    const core = path.join(REPO, 'initramfs');
    expect(existsSync(path.join(core, 'stackboot.sh')), 'the boot core initramfs/stackboot.sh').toBe(true);
    const c = makeBootConfig({ set: ['STORES=mmcblk0 vd*', 'TRIES=7', 'UPPER=disk', 'UPPER_SIZE=256m', 'VERIFY=sha256', 'PERSIST=/home /srv', 'ON_FAIL=shell', 'ON_FAIL_DELAY=3', 'INIT=/lib/systemd/systemd', 'DEVICE_TIMEOUT=4'] });
    const file = path.join(tmp(), 'core-boot.conf');
    await writeFile(file, await renderBootConfig(c));
    const script = `SB_LIB=${core}; SB_CMDLINE=''; . "$SB_LIB/stackboot.sh"; sb_config_load ${file} >/dev/null 2>&1
for k in ${BOOT_CONFIG_KEYS.join(' ')}; do eval "printf '%s=%s\\n' \\"\\$k\\" \\"\\\${SB_$k}\\""; done`;
    const r = await run('busybox', ['sh', '-c', script]);
    const got = Object.fromEntries(parseBootConfigText(r.stdout));
    for (const k of BOOT_CONFIG_KEYS) {
      const v = c[k];
      expect(got[k], k).toBe(Array.isArray(v) ? v.join(' ') : String(v));
    }
  });
});

describe('templates', () => {
  it('quotes for the shell', async () => {
    expect(shellQuote('virtio_blk')).toBe('virtio_blk');
    expect(shellQuote("a b'c")).toBe(`'a b'\\''c'`);
    const r = await run('busybox', ['sh', '-c', `printf %s ${shellQuote("x'; reboot; '")}`]);
    expect(r.stdout).toBe("x'; reboot; '");
  });

  it('refuses a template variable that is not given (strict)', async () => {
    await expect(renderTemplate('standalone/init.hbs', { sbLib: '/lib/stackboot' })).rejects.toThrow(/template standalone\/init.hbs/);
  });

  it('checks shell syntax with busybox sh -n', async () => {
    await checkShellSyntax('if true; then echo ok; fi\n', 'good');
    await expect(checkShellSyntax('if true; then echo broken\n', 'broken.sh')).rejects.toThrow(/broken.sh does not parse/);
  });
});
