/**
 * Stack kernels (QEMU TCG): what a kexec adds to a boot, and what kexec adds to the boot
 * initrd. The same node (the boot partition's 6.1 kernel and initrd) boots v1, which runs
 * on that kernel, and v2, which carries Debian 12's 6.12 and is kexec'ed into: the time
 * from QEMU's start to the stack's init (its first console line) for each, the median of
 * a few runs. The initrd rows are the standalone initrd without and with kexec-tools (and
 * its libraries) for each arch.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { buildInitramfs } from '../src/boot/initramfs.js';
import type { Arch } from '../src/sys/arch.js';
import { CACHE, storeDisk } from '../test/e2e/fixtures.js';
import { kexecFixture } from '../test/e2e/kernel-fixtures.js';
import { bootOnce } from '../test/e2e/qemu.js';

export interface Row {
  metric: string;
  value: string;
  goal?: string;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function timeToInit(arch: Arch, slot: 'v1' | 'v2', runs: number): Promise<number> {
  const f = await kexecFixture(arch);
  const ms: number[] = [];
  for (let i = 0; i < runs; i++) {
    const img = path.join(f.dir, `bench-${slot}-${i}.img`);
    // the stack to boot is the good one in slot a: no try is counted, nothing changes
    await storeDisk({ file: img, slots: { a: { buildDir: (slot === 'v1' ? f.v1 : f.v2).outDir, status: 'good' } }, current: 'a', storeMiB: 320 });
    const r = await bootOnce({ target: f.T, initrd: f.rd, disks: [{ file: img, bus: 'virtio' }], append: 'quiet demo.nohealth', memoryMiB: 768, timeoutMs: 300_000, until: /^DEMO: running/m, killOnMatch: true });
    ms.push(r.matchMs!);
    await fs.rm(img, { force: true });
  }
  return median(ms);
}

async function initrdGrowth(arch: Arch): Promise<{ plain: number; kexec: number }> {
  const f = await kexecFixture(arch);
  const plain = path.join(f.dir, 'bench-plain.img');
  await buildInitramfs({ flavor: 'standalone', out: plain, arch, cacheRoot: CACHE });
  const [a, b] = await Promise.all([fs.stat(plain), fs.stat(f.rd)]);
  return { plain: a.size, kexec: b.size };
}

export async function benchKexec(runs = 3): Promise<Row[]> {
  const rows: Row[] = [];
  const [v1, v2] = [await timeToInit('amd64', 'v1', runs), await timeToInit('amd64', 'v2', runs)];
  rows.push(
    { metric: 'kexec: QEMU start to the stack init, amd64: own kernel vs kexec into 6.12', value: `${(v1 / 1000).toFixed(1)} s vs ${(v2 / 1000).toFixed(1)} s` },
    { metric: 'kexec: time a kexec adds to a boot (amd64, TCG)', value: `${((v2 - v1) / 1000).toFixed(1)} s` },
  );
  const [a1, a2] = [await timeToInit('arm64', 'v1', runs), await timeToInit('arm64', 'v2', runs)];
  rows.push({ metric: 'kexec: time a kexec adds to a boot (arm64, TCG)', value: `${((a2 - a1) / 1000).toFixed(1)} s (${(a1 / 1000).toFixed(1)} s vs ${(a2 / 1000).toFixed(1)} s)` });
  for (const arch of ['amd64', 'arm64'] as const) {
    const g = await initrdGrowth(arch);
    const mb = (n: number) => `${(n / 1e6).toFixed(2)} MB`;
    rows.push({ metric: `kexec: standalone initrd (gzip) without vs with kexec-tools, ${arch}`, value: `${mb(g.plain)} vs ${mb(g.kexec)} (+${mb(g.kexec - g.plain)})` });
  }
  return rows;
}
