import { describe, expect, it } from 'vitest';
import { parseReadelf, programClosure } from '../../src/boot/programs.js';
import { loadTarget } from '../../src/boot/target.js';
import { ARCHES } from '../../src/sys/arch.js';

describe('programs: a program and its libraries from a sysroot', () => {
  it('parses readelf output', () => {
    const text = ` 0x0000000000000001 (NEEDED)             Shared library: [libxenctrl.so.4.17]\n 0x0000000000000001 (NEEDED)             Shared library: [libc.so.6]\n      [Requesting program interpreter: /lib64/ld-linux-x86-64.so.2]\n`;
    expect(parseReadelf(text)).toEqual({ needed: ['libxenctrl.so.4.17', 'libc.so.6'], interp: '/lib64/ld-linux-x86-64.so.2' });
    expect(parseReadelf('')).toEqual({ needed: [] });
  });

  for (const arch of ARCHES) {
    it(`finds kexec's whole closure in the ${arch} kexec-tools sysroot (setup's KEXEC_ROOT)`, async () => {
      const t = await loadTarget(arch);
      expect(t.kexecRoot, 'scripts/setup.sh makes KEXEC_ROOT').toBeTruthy();
      const files = await programClosure(t.kexecRoot!, '/sbin/kexec');
      const paths = files.map((f) => f.path);
      expect(paths).toContain('/sbin/kexec');
      expect(paths.some((p) => p.endsWith('/libc.so.6'))).toBe(true);
      expect(paths.some((p) => p.endsWith('/libxenctrl.so.4.17'))).toBe(true);
      expect(paths.some((p) => /ld-linux/.test(p))).toBe(true);
      // every library any of them needs is in the list
      for (const f of files) expect(f.source.startsWith(t.kexecRoot!)).toBe(true);
    });
  }

  it('names a missing library and who needs it', async () => {
    const t = await loadTarget('amd64');
    await expect(programClosure(t.kexecRoot!, '/sbin/no-such')).rejects.toThrow(/\/sbin\/no-such is not in/);
  });
});
