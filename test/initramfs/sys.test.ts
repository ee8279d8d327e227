/**
 * The boot core's real sb_sys_fslabel (initramfs/sys.sh) under busybox sh on real
 * filesystems made by mkfs: with blkid on PATH, and without it (a node's busybox has
 * none), where it reads ext4's superblock and FAT's boot sector itself. And the real
 * sb_sys_kexec_load's command lines, given Debian 12's kexec's --help (the kexec
 * boots in test/e2e run it for real). The other tests replace every sb_sys_* with a fake.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run } from '../../src/sys/exec.js';
import { tmpdir } from '../build/sources/tarfixture.js';
import { LIB } from './harness.js';

let work: string;
let noBlkid: string;
let bb: string;
beforeAll(async () => {
  work = await tmpdir('sb-fslabel-');
  // a PATH with only what the fallback needs, as busybox applets
  noBlkid = path.join(work, 'bin');
  await fs.mkdir(noBlkid);
  bb = (await run('sh', ['-c', 'command -v busybox'])).stdout.trim();
  for (const a of ['dd', 'od', 'tr']) await fs.symlink(bb, path.join(noBlkid, a));
});
afterAll(async () => {
  await fs.rm(work, { recursive: true, force: true });
});

async function label(file: string, withBlkid: boolean): Promise<string> {
  const env = withBlkid ? {} : { PATH: noBlkid };
  const r = await run(bb, ['sh', '-c', `. '${LIB}/sys.sh'; command -v blkid >/dev/null && echo HAS-BLKID; sb_sys_fslabel "$1"; echo "rc=$?"`, 'sh', file], { env });
  expect(r.stdout.includes('HAS-BLKID'), `blkid ${withBlkid ? '' : 'not '}found`).toBe(withBlkid);
  return r.stdout.replace('HAS-BLKID\n', '');
}

describe('sb_sys_fslabel', () => {
  it('reads ext4 and FAT32/FAT16 labels, with blkid and without; no label and no filesystem print nothing', async () => {
    const make = async (name: string, mib: number, mkfs: string[]) => {
      const f = path.join(work, name);
      await run('truncate', ['-s', `${mib}M`, f]);
      if (mkfs.length) await run(mkfs[0]!, [...mkfs.slice(1), f]);
      return f;
    };
    const cases: [string, string][] = [
      [await make('store.ext4', 16, ['mkfs.ext4', '-q', '-F', '-L', 'sb-store']), 'sb-store'],
      [await make('boot.fat32', 40, ['mkfs.vfat', '-F', '32', '-n', 'SB-BOOT']), 'SB-BOOT'],
      [await make('boot.fat16', 16, ['mkfs.vfat', '-F', '16', '-n', 'SB-BOOT']), 'SB-BOOT'],
      [await make('nolabel.fat32', 40, ['mkfs.vfat', '-F', '32']), ''],
      [await make('zeros', 1, []), ''],
    ];
    for (const withBlkid of [true, false]) {
      for (const [f, want] of cases) expect(await label(f, withBlkid), `${path.basename(f)}, ${withBlkid ? 'blkid' : 'no blkid'}`).toBe(`${want ? `${want}\n` : ''}rc=0\n`);
    }
  });
});

describe('sb_sys_kexec_load', () => {
  /** A kexec on PATH that records its arguments; `-s` fails (no kexec_file_load: Debian's arm64 kernels); --help as `help` says. */
  async function calls(help: string, dtb: string): Promise<string[]> {
    const bin = path.join(work, `kexec-${Math.random().toString(36).slice(2, 8)}`);
    await fs.mkdir(bin);
    const log = path.join(bin, 'log');
    await fs.writeFile(path.join(bin, 'help'), `${help}\n`);
    await fs.writeFile(path.join(bin, 'kexec'), `#!${bb} sh\ncase "$1" in --help) cat '${bin}/help'; exit 0 ;; esac\necho "$*" >> '${log}'\ncase "$1" in -s) exit 1 ;; esac\nexit 0\n`, { mode: 0o755 });
    for (const a of ['cat', 'echo']) await fs.symlink(bb, path.join(bin, a)).catch(() => undefined);
    const r = await run(bb, ['sh', '-c', `. '${LIB}/sys.sh'; sb_sys_kexec_load /k /i "$1" 'root=x quiet'; echo "rc=$?"`, 'sh', dtb], { env: { PATH: bin } });
    expect(r.stdout.trim(), r.stderr).toBe('rc=0');
    return (await fs.readFile(log, 'utf8')).trim().split('\n');
  }

  it('falls back from kexec_file_load to kexec_load with --no-checks when kexec has it (purgatory\'s second sha256, caches off on arm64), without it when not; a device tree goes straight to kexec_load', async () => {
    // Debian 12's kexec-tools 2.0.25: " -i, --no-checks      Fast reboot, no memory integrity checks."
    const has = ' -i, --no-checks      Fast reboot, no memory integrity checks.';
    expect(await calls(has, '')).toEqual(['-s -l /k --initrd=/i --command-line=root=x quiet', '-l --no-checks /k --initrd=/i --command-line=root=x quiet']);
    expect(await calls(' -x, --no-ifdown      Don\'t bring down network interfaces.', '')).toEqual(['-s -l /k --initrd=/i --command-line=root=x quiet', '-l /k --initrd=/i --command-line=root=x quiet']);
    expect(await calls(has, '/d.dtb')).toEqual(['-l --no-checks /k --initrd=/i --dtb=/d.dtb --command-line=root=x quiet']);
  });
});
