/**
 * Verified boot (QEMU TCG): the hook's time from loading its modules to `booting slot`
 * (guest printk times: QEMU and the BIOS do not count) with VERIFY=size, sha256 and
 * verity, for the 2-layer demo stack and for the same stack with a 100 MB layer (the goal:
 * verity within 10 % of size, and not growing with the image), all with the same
 * verity-capable initrd, so only the mode differs (the stacks signed, the initrds holding
 * the key: each boot checks the manifest's signature, as a node's does); the time of that
 * check; the bytes the hash trees add to the layers; and what dmsetup and signify add to
 * the standalone initrd.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { buildInitramfs, makeBootConfig } from '../src/boot/initramfs.js';
import { signBytes, writeKeyPair } from '../src/format/signature.js';
import type { BuildResult } from '../src/build/stack.js';
import { CACHE, scratch, storeDisk, target } from '../test/e2e/fixtures.js';
import { bootOnce } from '../test/e2e/qemu.js';
import { median, stamp, twoLayerStack } from './boot.js';

export interface Row {
  metric: string;
  value: string;
  goal?: string;
  ok?: boolean;
}

const MODES = ['size', 'sha256', 'verity'] as const;

export async function benchVerity(runs = 5): Promise<Row[]> {
  const t = await target('amd64');
  if (!t.verityRoot) return [{ metric: 'verity', value: 'not available (scripts/setup.sh makes the verity-root sysroot)' }];
  const d = await scratch('bench-verity');
  const small = await twoLayerStack(path.join(d, 'small'));
  const bulk = path.join(d, 'bulk');
  await fs.mkdir(bulk, { recursive: true });
  for (let i = 0; i < 10; i++) await fs.writeFile(path.join(bulk, `blob${i}`), randomBytes(10 << 20));
  const big = await twoLayerStack(path.join(d, 'big'), bulk);
  const keys = await writeKeyPair(path.join(d, 'keys', 'bench'));
  for (const r of [small, big]) await fs.writeFile(`${r.manifestFile}.sig`, await signBytes(await fs.readFile(r.manifestFile), keys.privateKey));
  const initrds: Record<(typeof MODES)[number], string> = { size: '', sha256: '', verity: '' };
  for (const mode of MODES) {
    initrds[mode] = path.join(d, `initrd-${mode}.img`);
    await buildInitramfs({ flavor: 'standalone', out: initrds[mode], arch: 'amd64', cacheRoot: CACHE, verityRoot: t.verityRoot, pubKeys: [keys.publicKey], config: makeBootConfig({ set: [['STORES', 'vda'], ['VERIFY', mode], ['DEVICE_SETTLE', '0']] }) });
  }
  const plain = path.join(d, 'initrd-plain.img');
  await buildInitramfs({ flavor: 'standalone', out: plain, arch: 'amd64', cacheRoot: CACHE });

  const rows: Row[] = [];
  const sigMs: number[] = [];
  for (const [what, stack, mib] of [['2-layer demo stack', small, 64], ['the same + a 100 MB layer', big, 256]] as [string, BuildResult, number][]) {
    const disk = path.join(d, `${what.length}.img`);
    await storeDisk({ file: disk, slots: { a: { buildDir: stack.outDir, status: 'good' } }, noData: true, storeMiB: mib });
    const ms: Record<string, number> = {};
    const stackMs: Record<string, number> = {};
    for (const mode of MODES) {
      const spans: number[] = [];
      const stackSpans: number[] = [];
      for (let i = 0; i < runs; i++) {
        const r = await bootOnce({ target: t, initrd: initrds[mode], disks: [{ file: disk, bus: 'virtio' }], append: 'demo.nohealth', until: /DEMO: then/, timeoutMs: 300_000 });
        spans.push(stamp(r.output, /stackboot: booting slot/) - stamp(r.output, /stackboot init: loading modules/));
        stackSpans.push(stamp(r.output, /stackboot: booting slot/) - stamp(r.output, /stackboot: trying slot/));
        sigMs.push((stamp(r.output, /stackboot: manifest signature verified/) - stamp(r.output, /stackboot: trying slot/)) * 1000);
      }
      ms[mode] = median(spans) * 1000;
      stackMs[mode] = median(stackSpans) * 1000;
    }
    const ratio = ms.verity! / ms.size!;
    rows.push(
      { metric: `verity: hook time, ${what}: size / sha256 / verity (QEMU TCG)`, value: `${ms.size!.toFixed(0)} / ${ms.sha256!.toFixed(0)} / ${ms.verity!.toFixed(0)} ms` },
      { metric: `verity: verity / size, ${what}`, value: `${ratio.toFixed(2)}×`, goal: '≤ 1.10×', ok: ratio <= 1.1 },
      // the same work for every mode before it (the modules): the part of the hook that differs
      { metric: `verity: the stack part of it (\`trying slot\` to \`booting slot\`), ${what}: size / sha256 / verity`, value: `${stackMs.size!.toFixed(0)} / ${stackMs.sha256!.toFixed(0)} / ${stackMs.verity!.toFixed(0)} ms (verity +${(stackMs.verity! - stackMs.size!).toFixed(0)} ms)` },
    );
  }
  rows.push({ metric: 'verity: the manifest signature check in the hook (signify-openbsd; from `trying slot` to `verified`, every boot)', value: `${median(sigMs).toFixed(0)} ms` });
  const data = big.manifest.layers.reduce((n, l) => n + (l.verity?.dataBytes ?? l.size), 0);
  const files = big.manifest.layers.reduce((n, l) => n + l.size, 0);
  rows.push({ metric: 'verity: bytes the hash trees add to the layers (the 100 MB stack)', value: `${files - data} B (${(((files - data) / data) * 100).toFixed(2)} %)` });
  const [p, v] = await Promise.all([fs.stat(plain), fs.stat(initrds.verity)]);
  rows.push({ metric: 'verity: standalone initrd (gzip) without vs with dmsetup + signify-openbsd', value: `${(p.size / 1e6).toFixed(2)} MB vs ${(v.size / 1e6).toFixed(2)} MB` });
  await fs.rm(d, { recursive: true, force: true });
  return rows;
}
