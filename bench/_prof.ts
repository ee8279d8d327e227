import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { buildInitramfs, makeBootConfig } from '../src/boot/initramfs.js';
import { signBytes, writeKeyPair } from '../src/format/signature.js';
import { CACHE, scratch, storeDisk, target } from '../test/e2e/fixtures.js';
import { bootOnce } from '../test/e2e/qemu.js';
import { twoLayerStack } from './boot.js';
const t = await target('amd64');
const d = await scratch('prof');
const bulk = path.join(d, 'bulk');
await fs.mkdir(bulk, { recursive: true });
for (let i = 0; i < 10; i++) await fs.writeFile(path.join(bulk, `blob${i}`), randomBytes(10 << 20));
const big = await twoLayerStack(path.join(d, 'big'), bulk);
const keys = await writeKeyPair(path.join(d, 'keys', 'bench'));
await fs.writeFile(`${big.manifestFile}.sig`, await signBytes(await fs.readFile(big.manifestFile), keys.privateKey));
const modes = (process.env.MODES ?? 'size verity').split(' ');
const rds: Record<string, string> = {};
for (const m of modes) { rds[m] = path.join(d, `rd-${m}.img`); await buildInitramfs({ flavor: 'standalone', out: rds[m], arch: 'amd64', cacheRoot: CACHE, verityRoot: t.verityRoot, pubKeys: [keys.publicKey], config: makeBootConfig({ set: [['STORES', 'vda'], ['VERIFY', m], ['DEVICE_SETTLE', '0']] }) }); }
const disk = path.join(d, 'disk.img');
await storeDisk({ file: disk, slots: { a: { buildDir: big.outDir, status: 'good' } }, noData: true, storeMiB: 256 });
for (let i = 0; i < Number(process.env.RUNS ?? 2); i++) for (const m of modes) {
  const r = await bootOnce({ target: t, initrd: rds[m], disks: [{ file: disk, bus: 'virtio' }], append: 'demo.nohealth stackboot.debug loglevel=8', until: /stackboot: booting slot/, killOnMatch: true, timeoutMs: 300_000 });
  const lines = r.output.split('\n').filter((l) => /stackboot/.test(l) && /^\[/.test(l.trim()));
  const i0 = lines.findIndex((l) => /trying slot/.test(l));
  const t0 = Number(/\[\s*([\d.]+)\]/.exec(lines[i0])![1]);
  console.log(`--- ${m} run ${i}`);
  for (const l of lines.slice(i0)) { const ts = Number(/\[\s*([\d.]+)\]/.exec(l)![1]); console.log(`${((ts - t0) * 1000).toFixed(0).padStart(6)} ${l.replace(/^\s*\[[^\]]*\]\s*/, '').slice(0, 140)}`); }
}
