// The initramfs-tools flavor: the files it writes, the hook run with stand-in
// hook-functions (and refusing a share folder without the hand-back), the boot script's
// mountroot with stand-ins for /scripts/functions.
import { describe, it, expect } from 'vitest';
import { mkdir, writeFile, readFile, stat, copyFile } from 'node:fs/promises';
import path from 'node:path';
import { run } from '../../src/sys/exec.js';
import { buildInitramfsTools } from '../../src/boot/initramfs-tools.js';
import { DEFAULT_MODULES } from '../../src/boot/modules.js';
import { KVER, REPO, hostBusybox, makeFakeCore, testTmp } from '../support/boot-fixtures.js';

const tmp = testTmp('sb-itools-test-');

describe('initramfs-tools flavor', () => {
  it('writes hook, boot script, conf hook, core, boot.conf and INSTALL; the hook runs', async () => {
    const coreDir = await makeFakeCore(path.join(tmp(), 'core-it'), true);
    // the hook sources the real handback.sh at mkinitramfs time (sb_handback_libs)
    await copyFile(path.join(REPO, 'initramfs', 'handback.sh'), path.join(coreDir, 'handback.sh'));
    const out = path.join(tmp(), 'it');
    const r = await buildInitramfsTools({ flavor: 'initramfs-tools', out, coreDir, modules: ['btrfs'] });
    expect(r.files).toEqual(expect.arrayContaining(['hooks/stackboot', 'scripts/stackboot', 'conf-hooks.d/stackboot', 'boot.conf', 'lib/stackboot.sh', 'INSTALL']));
    expect((await stat(path.join(out, 'hooks/stackboot'))).mode & 0o111).not.toBe(0);
    const hook = await readFile(path.join(out, 'hooks/stackboot'), 'utf8');
    expect(hook).toMatch(/^PREREQ=""$/m);
    expect(hook).toContain('. /usr/share/initramfs-tools/hook-functions');
    expect(hook).toMatch(new RegExp(`manual_add_modules ${DEFAULT_MODULES.join(' ')} btrfs`));
    const script = await readFile(path.join(out, 'scripts/stackboot'), 'utf8');
    expect(script).toMatch(/^mountroot\(\) \{$/m);
    expect(script).toContain('sb_boot "${rootmnt}"');
    expect(script).toContain('maybe_break stackboot');
    expect(await readFile(path.join(out, 'INSTALL'), 'utf8')).toContain('/etc/initramfs-tools/hooks/stackboot');

    // run the hook under the host's sh (mkinitramfs runs hooks with /bin/sh: dash on
    // Debian; busybox sh would answer `command -v` with its own applets) with stand-in
    // hook-functions
    const fns = path.join(tmp(), 'hook-functions');
    await writeFile(fns, 'manual_add_modules() { echo "mods $*" >>"$DESTDIR/.trace"; }\ncopy_exec() { echo "exec $1" >>"$DESTDIR/.trace"; }\n');
    const hookTest = path.join(tmp(), 'hook.sh');
    await writeFile(hookTest, hook.replace('/usr/share/initramfs-tools/hook-functions', fns));
    expect((await run('busybox', ['sh', hookTest, 'prereqs'])).stdout).toBe('\n');
    const dest = path.join(tmp(), 'destdir');
    await mkdir(dest);
    await run('sh', [hookTest], { env: { DESTDIR: dest, STACKBOOT_SHARE: out, version: KVER } });
    expect(await readFile(path.join(dest, 'lib/stackboot/stackboot.sh'), 'utf8')).toContain('sb_boot');
    expect(await readFile(path.join(dest, 'etc/stackboot/boot.conf'), 'utf8')).toMatch(/^STORES=/m);
    expect(await readFile(path.join(dest, '.trace'), 'utf8')).toMatch(/^mods overlay squashfs loop ext4 /m);
    // busybox for the shutdown hand-back, and its libraries (none: the host's is static)
    expect(await readFile(path.join(dest, '.trace'), 'utf8')).toContain(`exec ${await hostBusybox()}`);
    expect(await readFile(path.join(dest, 'etc/stackboot/handback.libs'), 'utf8')).toBe('');
    // a share folder without the hand-back part is refused by name
    const partial = path.join(tmp(), 'it-partial');
    await mkdir(path.join(partial, 'lib'), { recursive: true });
    await copyFile(path.join(out, 'lib/stackboot.sh'), path.join(partial, 'lib/stackboot.sh'));
    const refused = await run('sh', [hookTest], { env: { DESTDIR: dest, STACKBOOT_SHARE: partial, version: KVER }, reject: false });
    expect(refused.exitCode).toBe(1);
    expect(refused.stderr).toMatch(/E: stackboot: .*it-partial\/lib\/handback\.sh is missing/);

    // the boot script's mountroot with stand-ins for /scripts/functions
    const trace = path.join(tmp(), 'it-trace');
    const sh = `panic() { echo "panic $*" >>${trace}; }; maybe_break() { :; }; rootmnt=/root
${script.replace("SB_LIB='/lib/stackboot'", `SB_LIB=${coreDir}`).replace('SB_LIB=/lib/stackboot', `SB_LIB=${coreDir}`)}
SB_TRACE=${trace}; mountroot; echo "rc=$? init=$init"`;
    const m = await run('busybox', ['sh', '-c', sh], { env: { SB_TRACE: trace } });
    expect(m.stdout).toContain('rc=0 init=/sbin/init');
    expect(await readFile(trace, 'utf8')).toMatch(/boot \/root/);
    // the shutdown hand-back, for the root and the init it hands over to (handback.sh)
    expect(await readFile(trace, 'utf8')).toMatch(/^handback_hook \/root \/sbin\/init$/m);
  });
});
