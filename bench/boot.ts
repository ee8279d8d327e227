/**
 * Boot benchmark (QEMU TCG): time from /init to the moment before switch_root, for a
 * 2-layer stack with VERIFY=size, against a hand-written minimal init that only loads the
 * same modules and mounts the same layers; and the cost of VERIFY=sha256 per 100 MB.
 * Times come from the guest kernel's printk timestamps, so QEMU start-up and the BIOS
 * do not count.
 */
import { randomBytes } from 'node:crypto';
import { gunzipSync } from 'node:zlib';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { writeCpio } from '../src/boot/cpio.js';
import { buildStack } from '../src/build/stack.js';
import { parseRecipe } from '../src/build/recipe.js';
import { bootOnce } from '../test/e2e/qemu.js';
import { CACHE, REPO, initrd, scratch, storeDisk, target } from '../test/e2e/fixtures.js';

export interface Row {
  metric: string;
  value: string;
  goal?: string;
}

export function stamp(output: string, re: RegExp): number {
  for (const line of output.split('\n')) {
    const m = /^\[\s*(\d+\.\d+)\]\s*(.*)$/.exec(line.trim());
    if (m && re.test(m[2])) return Number(m[1]);
  }
  throw new Error(`no console line matching ${re}`);
}

export const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

export async function twoLayerStack(dir: string, extraLayerDir?: string) {
  const layers: unknown[] = [
    { name: 'busybox', source: { type: 'dir', path: path.join(CACHE, 'targets/amd64/busybox') }, owner: 'root' },
    { name: 'base', source: { type: 'dir', path: path.join(REPO, 'images/demo/rootfs') }, owner: 'root' },
  ];
  if (extraLayerDir) layers.push({ name: 'bulk', source: { type: 'dir', path: extraLayerDir }, owner: 'root' });
  const text = JSON.stringify({ name: 'bench', version: '1', compatible: 'bench', compression: { algorithm: extraLayerDir ? 'lz4' : 'zstd', ...(extraLayerDir ? {} : { level: 3 }) }, layers });
  const f = path.join(dir, 'recipe.json');
  await fs.mkdir(dir, { recursive: true });
  await fs.writeFile(f, text);
  return buildStack(parseRecipe(text, f, { arch: 'amd64' }), { outDir: path.join(dir, 'out'), cacheDir: path.join(CACHE, 'e2e', 'layer-cache'), epoch: 0, arch: 'amd64', uid: 0, progress: () => {} });
}

export async function benchBoot(runs = 3): Promise<Row[]> {
  const t = await target('amd64');
  const d = await scratch('bench-boot');
  const stack = await twoLayerStack(d);
  const disk = path.join(d, 'disk.img');
  await storeDisk({ file: disk, slots: { a: { buildDir: stack.outDir, status: 'good' } }, noData: true });
  const sbInitrd = await initrd(path.join(d, 'sb.img'), { STORES: 'vda', VERIFY: 'size', DEVICE_SETTLE: '0' });

  // the hand-written minimal init: same busybox and modules (the stackboot initrd,
  // uncompressed, with its /init replaced by an appended cpio), mounting the same two layers by hand
  const [l0, l1] = stack.manifest.layers.map((l) => `${l.digest}.sqfs`);
  // the same modules, in the same order, as the stackboot /init loads
  const sbCpio = gunzipSync(await fs.readFile(sbInitrd)).toString('latin1');
  const modLine = /^sb_load_modules (.*)$/m.exec(sbCpio);
  if (!modLine) throw new Error('cannot find the module list in the stackboot /init');
  const modules = modLine[1].replace(/'/g, '').trim();
  const minInit = `#!/bin/sh
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev; mount -t tmpfs tmpfs /run
echo "<6>MIN: start" >/dev/kmsg
for m in ${modules}; do modprobe $m 2>/dev/null; done
i=0; while [ ! -b /dev/vda1 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
mkdir -p /run/s /run/l0 /run/l1 /run/up /root
mount -o ro /dev/vda1 /run/s
mount -t squashfs -o ro,loop /run/s/layers/${l0} /run/l0
mount -t squashfs -o ro,loop /run/s/layers/${l1} /run/l1
mount -t tmpfs -o size=50% tmpfs /run/up; mkdir -p /run/up/u /run/up/w
mount -t overlay overlay -o lowerdir=/run/l1:/run/l0,upperdir=/run/up/u,workdir=/run/up/w /root
echo "<6>MIN: done" >/dev/kmsg
poweroff -f
`;
  const minInitrd = path.join(d, 'min.img');
  await fs.writeFile(minInitrd, Buffer.concat([gunzipSync(await fs.readFile(sbInitrd)), writeCpio([{ path: 'init', type: 'file', mode: 0o755, data: Buffer.from(minInit) }])]));

  const sb: number[] = [];
  const min: number[] = [];
  for (let i = 0; i < runs; i++) {
    const a = await bootOnce({ target: t, initrd: sbInitrd, disks: [{ file: disk, bus: 'virtio' }], append: 'demo.nohealth', until: /DEMO: then/, timeoutMs: 120_000 });
    sb.push(stamp(a.output, /stackboot init: loading modules/) - 0, stamp(a.output, /stackboot: booting slot/));
    const b = await bootOnce({ target: t, initrd: minInitrd, disks: [{ file: disk, bus: 'virtio' }], until: /MIN: done/, timeoutMs: 120_000 });
    min.push(stamp(b.output, /MIN: start/), stamp(b.output, /MIN: done/));
  }
  const spans = (xs: number[]) => xs.filter((_, i) => i % 2 === 1).map((end, i) => end - xs[2 * i]);
  const sbMs = median(spans(sb)) * 1000;
  const minMs = median(spans(min)) * 1000;

  // verify=sha256: a stack with a 100 MB incompressible layer, size vs sha256
  const bulk = path.join(d, 'bulk');
  await fs.mkdir(bulk, { recursive: true });
  for (let i = 0; i < 10; i++) await fs.writeFile(path.join(bulk, `blob${i}`), randomBytes(10 << 20));
  const big = await twoLayerStack(path.join(d, 'big'), bulk);
  const bigBytes = big.layers.reduce((n, l) => n + l.size, 0);
  const bigDisk = path.join(d, 'big.img');
  await storeDisk({ file: bigDisk, slots: { a: { buildDir: big.outDir, status: 'good' } }, noData: true, storeMiB: 256 });
  const shaInitrd = await initrd(path.join(d, 'sha.img'), { STORES: 'vda', VERIFY: 'sha256', DEVICE_SETTLE: '0' });
  const sizeT: number[] = [];
  const shaT: number[] = [];
  for (let i = 0; i < runs; i++) {
    for (const [img, acc] of [[sbInitrd, sizeT], [shaInitrd, shaT]] as const) {
      const r = await bootOnce({ target: t, initrd: img, disks: [{ file: bigDisk, bus: 'virtio' }], append: 'demo.nohealth', until: /DEMO: then/, timeoutMs: 300_000 });
      acc.push(stamp(r.output, /stackboot: booting slot/) - stamp(r.output, /stackboot init: loading modules/));
    }
  }
  const perHundred = ((median(shaT) - median(sizeT)) * 1000 * (100e6 / bigBytes));
  await fs.rm(d, { recursive: true, force: true });
  return [
    { metric: 'boot: /init → switch_root, 2 layers, verify=size (QEMU TCG)', value: `${sbMs.toFixed(0)} ms` },
    { metric: 'boot: hand-written minimal init, same layers', value: `${minMs.toFixed(0)} ms` },
    { metric: 'boot: stackboot / minimal', value: `${(sbMs / minMs).toFixed(2)}×`, goal: '≤ 1.5×' },
    { metric: 'boot: verify=sha256 cost per 100 MB (QEMU TCG)', value: `${perHundred.toFixed(0)} ms` },
  ];
}
