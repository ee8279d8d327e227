// The dracut flavor: the module's files, its install() with stand-ins for dracut's
// functions (the busybox of the shutdown hand-back and its library list), the cmdline hook
// claiming root=stackboot, and the mount hook booting once when sourced twice.
import { describe, it, expect } from 'vitest';
import { copyFile, mkdir, writeFile, readFile } from 'node:fs/promises';
import path from 'node:path';
import { run } from '../../src/sys/exec.js';
import { buildDracut } from '../../src/boot/dracut.js';
import { DEFAULT_MODULES } from '../../src/boot/modules.js';
import { REPO, hostBusybox, makeFakeCore, testTmp } from '../support/boot-fixtures.js';

const tmp = testTmp('sb-dracut-test-');

describe('dracut flavor', () => {
  it('writes the module; the mount hook is safe to source twice', async () => {
    const coreDir = await makeFakeCore(path.join(tmp(), 'core-dr'), true);
    // install() sources the real handback.sh at dracut time (sb_handback_libs)
    await copyFile(path.join(REPO, 'initramfs', 'handback.sh'), path.join(coreDir, 'handback.sh'));
    const out = path.join(tmp(), 'dr');
    const r = await buildDracut({ flavor: 'dracut', out, coreDir });
    const m = 'modules.d/90stackboot';
    expect(r.files).toEqual(expect.arrayContaining([`${m}/module-setup.sh`, `${m}/parse-stackboot.sh`, `${m}/mount-stackboot.sh`, `${m}/boot.conf`, `${m}/lib/stackboot.sh`, 'dracut.conf.d/stackboot.conf', 'INSTALL']));
    const setup = await readFile(path.join(out, m, 'module-setup.sh'), 'utf8');
    expect(setup).toMatch(/^check\(\) \{$/m);
    expect(setup).toContain(`hostonly='' instmods ${DEFAULT_MODULES.join(' ')}`);
    expect(setup).toContain('inst_hook cmdline 30 "$moddir/parse-stackboot.sh"');
    expect(setup).toContain('inst_hook mount 99 "$moddir/mount-stackboot.sh"');

    // install() under bash (dracut's shell) with stand-ins for dracut's functions
    const initdir = path.join(tmp(), 'dr-initdir');
    await mkdir(initdir);
    const stand = `inst() { echo "inst $*"; }; inst_simple() { echo "inst_simple $*"; }; inst_multiple() { :; }; inst_dir() { :; }; inst_hook() { echo "hook $*"; }`;
    const inst = await run('bash', ['-c', `${stand}\nmoddir=${path.join(out, m)}; initdir=${initdir}\n. ${path.join(out, m, 'module-setup.sh')}\ninstall; echo "rc=$?"`]);
    expect(inst.stdout).toContain('rc=0');
    // busybox for the shutdown hand-back (dracut's inst brings its libraries into the
    // initrd), and the list of them for /run/initramfs (none: the host's is static)
    expect(inst.stdout).toContain(`inst ${await hostBusybox()} /lib/stackboot/busybox`);
    expect(await readFile(path.join(initdir, 'etc/stackboot/handback.libs'), 'utf8')).toBe('');
    expect(inst.stdout).toMatch(/^hook mount 99 .*mount-stackboot\.sh$/m);

    const parse = await readFile(path.join(out, m, 'parse-stackboot.sh'), 'utf8');
    const p = await run('busybox', ['sh', '-c', `getarg() { echo stackboot; }; root=; ${parse}\necho "root=$root rootok=$rootok"`]);
    expect(p.stdout.trim()).toBe('root=stackboot rootok=1');

    const hook = (await readFile(path.join(out, m, 'mount-stackboot.sh'), 'utf8')).replace("SB_LIB='/lib/stackboot'", `SB_LIB=${coreDir}`).replace('SB_LIB=/lib/stackboot', `SB_LIB=${coreDir}`);
    const hookFile = path.join(tmp(), 'mount-hook.sh');
    await writeFile(hookFile, hook.replace(/\/run\/stackboot/g, path.join(tmp(), 'dr-run')));
    const trace = path.join(tmp(), 'dr-trace');
    const sh = `root=stackboot; NEWROOT=/sysroot; SB_TRACE=${trace}; SB_RUN=${path.join(tmp(), 'dr-run')}
getarg() { return 1; }; die() { echo "die $*"; }; ismounted() { return 1; }
. ${hookFile}; . ${hookFile}; echo done`;
    const res = await run('busybox', ['sh', '-c', sh]);
    expect(res.stdout).toContain('done');
    expect((await readFile(trace, 'utf8')).match(/^boot \/sysroot$/gm)).toHaveLength(1);
    // the shutdown hand-back, for the root and the configured init (no init= given)
    expect((await readFile(trace, 'utf8')).match(/^handback_hook \/sysroot \/sbin\/init$/gm)).toHaveLength(1);
  });
});
