/** PE/COFF heads: the Debian kernels (EFI-stub images) by arch, and what is not PE. */
import { promises as fs } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { checkPe, peMachine, PE_MACHINE } from '../../src/boot/pe.js';
import { loadTarget } from '../../src/boot/target.js';
import { CACHE } from '../e2e/fixtures.js';

const head = async (f: string) => (await fs.readFile(f)).subarray(0, 4096);

describe('PE images', () => {
  it("reads the machine of Debian's EFI-stub kernels; ELF, gzip and short buffers are not PE", async () => {
    for (const arch of ['amd64', 'arm64'] as const) {
      const t = await loadTarget(arch, CACHE);
      expect(peMachine(await head(t.kernel)), arch).toBe(PE_MACHINE[arch]);
      expect(() => checkPe(Buffer.alloc(0), arch, 'x', 'y')).toThrow(/x is not a PE \(UEFI\) image: y/);
      const elf = await head(t.busybox);
      expect(peMachine(elf)).toBeUndefined();
      expect(() => checkPe(elf, arch, 'busybox', 'why')).toThrow(/^busybox is not a PE \(UEFI\) image: why$/);
    }
    const amd = await head((await loadTarget('amd64', CACHE)).kernel);
    expect(() => checkPe(amd, 'arm64', 'k', 'why')).toThrow(/^k is a PE image for machine 0x8664, not arm64 \(0xaa64\): why$/);
    expect(() => checkPe(Buffer.from([0x1f, 0x8b, 8, 0, ...new Array(60).fill(0)]), 'arm64', 'Image.gz', 'why')).toThrow(/but gzip-compressed/);
    // "MZ" with a PE offset past the end: not PE
    const mz = Buffer.alloc(64);
    mz.write('MZ');
    mz.writeUInt32LE(10_000, 0x3c);
    expect(peMachine(mz)).toBeUndefined();
  });
});
