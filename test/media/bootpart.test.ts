/**
 * Updating the boot partition's kernel and initrd (the host's kernel here has no vfat, as
 * `image` knows, so the partition's files are a folder; the code only renames within it
 * and fsyncs, as on a node's mounted vfat): the new files beside the old, the switch by one rename of extlinux.conf, the old
 * entry kept as the second label, the files of older entries removed only after the
 * switch; a stop before the switch leaves the old configuration whole.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bootUpdate, EXTLINUX_CONF, LEGACY_EXTLINUX_CONF, parseBootConf, planBootUpdate, renderExtlinux } from '../../src/media/index.js';
import { tmpdir } from '../build/sources/tarfixture.js';

let work: string;
let mnt: string;
beforeAll(async () => {
  work = await tmpdir('sb-bootpart-');
  mnt = path.join(work, 'part');
  await fs.mkdir(mnt);
  // the partition as `stackboot image` writes it
  await fs.mkdir(path.join(mnt, 'boot/extlinux'), { recursive: true });
  await fs.writeFile(path.join(mnt, 'vmlinuz'), 'kernel 6.1');
  await fs.writeFile(path.join(mnt, 'initrd.img'), 'initrd 6.1');
  await fs.writeFile(path.join(mnt, EXTLINUX_CONF), await renderExtlinux({ name: 'demo', version: '1', stackId: 'a'.repeat(64), kernel: 'vmlinuz', initrd: 'initrd.img', append: 'console=ttyS0 panic=10' }));
});
afterAll(async () => {
  await fs.rm(work, { recursive: true, force: true });
});

async function files(name: string, kernel: string, initrd: string) {
  const d = path.join(work, name);
  await fs.mkdir(d, { recursive: true });
  await fs.writeFile(path.join(d, 'vmlinuz'), kernel);
  await fs.writeFile(path.join(d, 'initrd.img'), initrd);
  return { kernel: path.join(d, 'vmlinuz'), initrd: path.join(d, 'initrd.img') };
}

const conf = async () => parseBootConf(await fs.readFile(path.join(mnt, EXTLINUX_CONF), 'utf8'));
const ls = async () => (await fs.readdir(mnt)).filter((n) => n !== 'boot').sort();

describe('boot partition update', () => {
  it('reads the extlinux.conf that image writes', async () => {
    const c = await conf();
    expect(c.entries).toEqual([{ label: 'stackboot', menu: `stackboot (demo 1, stack ${'a'.repeat(12)})`, kernel: 'vmlinuz', initrd: 'initrd.img', append: 'console=ttyS0 panic=10' }]);
    expect(c.title).toBe('stackboot demo 1');
    expect(c.timeout).toBe(10);
    // the keys upper case, as Jetson's L4TLauncher matches them (case-sensitive prefixes)
    const text = await fs.readFile(path.join(mnt, EXTLINUX_CONF), 'utf8');
    const keys = text.split('\n').filter((l) => l.trim() && !l.startsWith('#')).map((l) => l.trim().split(/\s+/).slice(0, /^MENU /.test(l.trim()) ? 2 : 1).join(' '));
    expect(new Set(keys)).toEqual(new Set(['TIMEOUT', 'DEFAULT', 'MENU TITLE', 'LABEL', 'MENU LABEL', 'LINUX', 'INITRD', 'APPEND']));
    // a file written by hand or another tool, lower case (U-Boot and syslinux take either)
    const lower = parseBootConf('timeout 30\ndefault b\nmenu title mine\nlabel a\n  menu label first\n  kernel /Image\nlabel b\n  linux /Image-2\n  initrd /initrd-2\n  devicetree /x.dtb\n  append root=/dev/sda1\n');
    expect(lower).toEqual({
      timeout: 30,
      title: 'mine',
      entries: [
        { label: 'b', menu: 'b', kernel: 'Image-2', initrd: 'initrd-2', fdt: 'x.dtb', append: 'root=/dev/sda1' },
        { label: 'a', menu: 'first', kernel: 'Image', initrd: '', fdt: undefined, append: '' },
      ],
    });
  });

  it('a dry run writes nothing; a stop before the switch leaves the old entry and its files whole', async () => {
    const f = await files('v2', 'kernel 6.12', 'initrd 6.12');
    const before = await fs.readFile(path.join(mnt, EXTLINUX_CONF), 'utf8');
    const dry = await bootUpdate({ bootDir: mnt, ...f, describe: 'demo 2', dryRun: true });
    expect(dry.dryRun).toBe(true);
    expect(dry.write.map((w) => w.to)).toEqual([dry.entry.kernel, dry.entry.initrd]);
    expect(await ls()).toEqual(['initrd.img', 'vmlinuz']);
    await expect(bootUpdate({ bootDir: mnt, ...f, describe: 'demo 2' }, { beforeSwitch: async () => { throw new Error('power cut'); } })).rejects.toThrow(/power cut/);
    expect(await fs.readFile(path.join(mnt, EXTLINUX_CONF), 'utf8')).toBe(before);
    // the old files are all there (the new ones too, unused; the next update takes them)
    expect(await ls()).toEqual(expect.arrayContaining(['initrd.img', 'vmlinuz']));
    expect((await fs.readdir(path.join(mnt, 'boot/extlinux'))).filter((n) => n !== 'extlinux.conf')).toEqual([]);
  });

  it('switches to the new kernel and initrd and keeps the old entry as the second label; the next update removes the oldest files', async () => {
    const f2 = await files('v2', 'kernel 6.12', 'initrd 6.12');
    const r = await bootUpdate({ bootDir: mnt, ...f2, describe: 'demo 2, kernel 6.12' });
    let c = await conf();
    expect(c.entries.map((e) => e.label)).toEqual(['stackboot', 'previous']);
    expect(c.entries[0]).toMatchObject({ kernel: r.entry.kernel, initrd: r.entry.initrd, append: 'console=ttyS0 panic=10', menu: 'stackboot (demo 2, kernel 6.12)' });
    expect(c.entries[1]).toMatchObject({ kernel: 'vmlinuz', initrd: 'initrd.img' });
    expect(await fs.readFile(path.join(mnt, r.entry.kernel), 'utf8')).toBe('kernel 6.12');
    expect(r.entry.kernel).toMatch(/^vmlinuz-[0-9a-f]{12}$/);
    // the same files again: nothing to do
    const again = await bootUpdate({ bootDir: mnt, ...f2, describe: 'demo 2, kernel 6.12' });
    expect(again.current).toBe(true);
    // a third kernel: v2 becomes the previous entry, the image's first files go
    const f3 = await files('v3', 'kernel 6.13', 'initrd 6.13');
    const r3 = await bootUpdate({ bootDir: mnt, ...f3, describe: 'demo 3', append: 'console=ttyS0 panic=10 quiet' });
    c = await conf();
    expect(c.entries.map((e) => [e.label, e.kernel])).toEqual([['stackboot', r3.entry.kernel], ['previous', r.entry.kernel]]);
    expect(c.entries[0]!.append).toBe('console=ttyS0 panic=10 quiet');
    expect(r3.remove).toEqual(['vmlinuz', 'initrd.img']);
    expect(await ls()).toEqual([r.entry.initrd, r3.entry.initrd, r.entry.kernel, r3.entry.kernel].sort());
    expect(r3.conf).toBe(EXTLINUX_CONF);
  });

  it('a node made before boot/extlinux/ keeps its extlinux/extlinux.conf (what its U-Boot reads); both at once is refused', async () => {
    const old = path.join(work, 'legacy');
    await fs.mkdir(path.join(old, 'extlinux'), { recursive: true });
    await fs.writeFile(path.join(old, 'vmlinuz'), 'kernel 6.1');
    await fs.writeFile(path.join(old, 'initrd.img'), 'initrd 6.1');
    await fs.writeFile(path.join(old, LEGACY_EXTLINUX_CONF), 'default stackboot\nlabel stackboot\n\tlinux /vmlinuz\n\tinitrd /initrd.img\n\tappend quiet\n');
    const f = await files('v2', 'kernel 6.12', 'initrd 6.12');
    const r = await bootUpdate({ bootDir: old, ...f, describe: 'demo 2' });
    expect(r.conf).toBe(LEGACY_EXTLINUX_CONF);
    expect(await fs.stat(path.join(old, 'boot')).catch(() => null)).toBeNull();
    const c = parseBootConf(await fs.readFile(path.join(old, LEGACY_EXTLINUX_CONF), 'utf8'));
    expect(c.entries.map((e) => [e.label, e.kernel, e.append])).toEqual([['stackboot', r.entry.kernel, 'quiet'], ['previous', 'vmlinuz', 'quiet']]);
    // a second extlinux.conf beside it: which one boots depends on the firmware
    await fs.mkdir(path.join(old, 'boot/extlinux'), { recursive: true });
    await fs.copyFile(path.join(old, LEGACY_EXTLINUX_CONF), path.join(old, EXTLINUX_CONF));
    const before = await fs.readFile(path.join(old, LEGACY_EXTLINUX_CONF), 'utf8');
    await expect(planBootUpdate({ bootDir: old, ...(await files('v3', 'k3', 'i3')), describe: 'demo 3' })).rejects.toThrow(/has both boot\/extlinux\/extlinux\.conf and extlinux\/extlinux\.conf: U-Boot reads the second, L4TLauncher the first/);
    expect(await fs.readFile(path.join(old, LEGACY_EXTLINUX_CONF), 'utf8')).toBe(before);
  });

  it("refuses a command line with '#' (L4TLauncher would cut it there) and reads '#' as a comment anywhere", async () => {
    const f = await files('v4', 'kernel 6.14', 'initrd 6.14');
    const before = await fs.readFile(path.join(mnt, EXTLINUX_CONF), 'utf8');
    await expect(bootUpdate({ bootDir: mnt, ...f, describe: 'demo 4', append: 'console=ttyS0 # quiet' })).rejects.toThrow(/--append has a '#': Jetson's L4TLauncher reads the rest of the line as a comment/);
    expect(await fs.readFile(path.join(mnt, EXTLINUX_CONF), 'utf8')).toBe(before);
    expect(parseBootConf('LABEL a # the first\n  LINUX /Image # not /Image.gz\n  APPEND quiet#ro\n').entries).toEqual([{ label: 'a', menu: 'a', kernel: 'Image', initrd: '', fdt: undefined, append: 'quiet' }]);
  });

  it('refuses a folder that is not a boot partition, and a missing kernel', async () => {
    await expect(planBootUpdate({ bootDir: work, kernel: '/x', initrd: '/y', describe: 'x' })).rejects.toThrow(/is not a stackboot boot partition \(no boot\/extlinux\/extlinux\.conf, nor extlinux\/extlinux\.conf\)/);
    await expect(planBootUpdate({ bootDir: mnt, kernel: '/no/such', initrd: '/y', describe: 'x' })).rejects.toThrow(/--kernel \/no\/such: no such file/);
  });
});
