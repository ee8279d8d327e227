/**
 * Verified boot (QEMU TCG): the hook's time from loading its modules to `booting slot`
 * (guest printk times: QEMU and the BIOS do not count) with VERIFY=size, sha256 and
 * verity, for the 2-layer demo stack, for the same stack with a 100 MB layer and for the
 * Debian root of images/debian (the goal: verity within 10 % of size, and not growing
 * with the image; judged on the boot time from the kernel's start to the hand-off, as the
 * issue words it; the hook alone, stricter, is given beside it, with the part before the
 * stack, the same code in every mode, pooled over all boots), all with the same
 * verity-capable initrd, so only the mode differs (the stacks signed, the initrds holding
 * the key: each boot checks the manifest's signature, as a node's does); the time of that
 * check; the bytes the hash trees add to the layers; and what dmsetup and signify add to
 * the standalone initrd.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, promises as fs } from 'node:fs';
import path from 'node:path';
import { buildInitramfs, makeBootConfig } from '../src/boot/initramfs.js';
import { signBytes, writeKeyPair } from '../src/format/signature.js';
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

/**
 * `runs` boots a mode for each stack (BENCH_VERITY_RUNS, default 9: with 5, whole boots
 * spread so much that verity came out 0.83× of size for the demo in one run).
 */
export async function benchVerity(runs = Number(process.env.BENCH_VERITY_RUNS ?? 9)): Promise<Row[]> {
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

  // the Debian root (images/debian, built by run.ts into .cache/bench/debian-old when the
  // verity or delta part runs): its own copy, signed like the others
  const cases: { what: string; dir: string; mib: number; until: RegExp; kill: boolean }[] = [
    { what: '2-layer demo stack', dir: small.outDir, mib: 64, until: /DEMO: then/, kill: false },
    { what: 'the same + a 100 MB layer', dir: big.outDir, mib: 256, until: /DEMO: then/, kill: false },
  ];
  const debian = path.join(CACHE, 'bench', 'debian-old');
  let debianBytes = 0;
  if (existsSync(path.join(debian, 'manifest'))) {
    const copy = path.join(d, 'debian');
    await fs.cp(debian, copy, { recursive: true });
    await fs.writeFile(path.join(copy, 'manifest.sig'), await signBytes(await fs.readFile(path.join(copy, 'manifest')), keys.privateKey));
    for (const f of await fs.readdir(path.join(copy, 'layers'))) debianBytes += (await fs.stat(path.join(copy, 'layers', f))).size;
    // systemd starts after the hand-off: the boot is cut there
    cases.push({ what: `the Debian root (images/debian, ${(debianBytes / 1e6).toFixed(0)} MB of layers)`, dir: copy, mib: Math.ceil((debianBytes * 1.3) / 2 ** 20) + 64, until: /stackboot: booting slot/, kill: true });
  }

  const rows: Row[] = [];
  const sigMs: number[] = [];
  for (const c of cases) {
    const disk = path.join(d, `${c.what.length}.img`);
    await storeDisk({ file: disk, slots: { a: { buildDir: c.dir, status: 'good' } }, noData: true, storeMiB: c.mib });
    const hook: Record<string, number[]> = { size: [], sha256: [], verity: [] };
    const part: Record<string, number[]> = { size: [], sha256: [], verity: [] };
    const boot: Record<string, number[]> = { size: [], sha256: [], verity: [] };
    // the hook's work before `trying slot` (modules, the disks, the store, the state) is
    // the same code in every mode: its spread (±0.5 s under TCG) is pooled over all boots
    const pre: number[] = [];
    // the modes take turns, so a drift of the machine over the runs weighs on each alike
    for (let i = 0; i < runs; i++) {
      for (const mode of MODES) {
        const r = await bootOnce({ target: t, initrd: initrds[mode], disks: [{ file: disk, bus: 'virtio' }], append: 'demo.nohealth', until: c.until, killOnMatch: c.kill, timeoutMs: 300_000 });
        const [start, trying, booting] = [/stackboot init: loading modules/, /stackboot: trying slot/, /stackboot: booting slot/].map((re) => stamp(r.output, re)) as [number, number, number];
        hook[mode]!.push(booting - start);
        part[mode]!.push(booting - trying);
        boot[mode]!.push(booting);
        pre.push(trying - start);
        sigMs.push((stamp(r.output, /stackboot: manifest signature verified/) - trying) * 1000);
      }
    }
    const ms = (x: Record<string, number[]>, m: string) => median(x[m]!) * 1000;
    const three = (x: Record<string, number[]>) => MODES.map((m) => ms(x, m).toFixed(0)).join(' / ');
    const preMs = median(pre) * 1000;
    const pooled = (m: string) => preMs + ms(part, m);
    const bootRatio = ms(boot, 'verity') / ms(boot, 'size');
    rows.push(
      // the goal in the words: the boot time, from the kernel's start (printk 0) to the hand-off
      { metric: `verity: boot time, kernel start → \`booting slot\`, ${c.what}: size / sha256 / verity (QEMU TCG)`, value: `${three(boot)} ms` },
      { metric: `verity: verity / size, boot time, ${c.what}`, value: `${bootRatio.toFixed(2)}×`, goal: '≤ 1.10×', ok: bootRatio <= 1.1 },
      { metric: `verity: hook time (modules → \`booting slot\`), ${c.what}: size / sha256 / verity`, value: `${three(hook)} ms (verity / size ${(ms(hook, 'verity') / ms(hook, 'size')).toFixed(2)}×)` },
      // the part of the hook that differs between the modes
      { metric: `verity: the stack part of it (\`trying slot\` to \`booting slot\`), ${c.what}: size / sha256 / verity`, value: `${three(part)} ms (verity +${(ms(part, 'verity') - ms(part, 'size')).toFixed(0)} ms)` },
      // stricter than the goal: the hook alone, the part before the stack (the same code in every mode) pooled over all boots
      { metric: `verity: verity / size, hook time alone, ${c.what} (the part before \`trying slot\` pooled: ${preMs.toFixed(0)} ms, median of all ${pre.length} boots)`, value: `${(pooled('verity') / pooled('size')).toFixed(2)}×` },
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
