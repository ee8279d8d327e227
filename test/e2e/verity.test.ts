/**
 * Verified boot on real QEMU nodes (TCG), x86_64 and aarch64: the standalone initrd has
 * dmsetup, signify-openbsd and a public key; the stack's layers carry the dm-verity tree the
 * build appended and its manifest is signed. A signed stack with verity boots through
 * dm-verity; one byte of a file's data flipped inside a layer on the store (same size)
 * makes the read of that file fail with EIO (the stack still boots: documented in
 * docs/design.md); a byte flipped in a block the mount reads fails the stack at mount and
 * the node falls back on the same boot, the event naming the layer; a flipped byte in the
 * manifest (state made to match) or in its signature: refused at boot, fallback.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeAll, describe, expect } from 'vitest';
import { itConcurrent } from './concurrent.js';
import { buildInitramfs, makeBootConfig } from '../../src/boot/initramfs.js';
import type { Target } from '../../src/boot/target.js';
import { loadRecipe, parseRecipe } from '../../src/build/recipe.js';
import { buildStack, type BuildResult } from '../../src/build/stack.js';
import { signBytes, writeKeyPair } from '../../src/format/signature.js';
import { stackId } from '../../src/format/manifest.js';
import { ARCHES, type Arch } from '../../src/sys/arch.js';
import { REPO, WORK, scratch, storeDisk, target } from './fixtures.js';
import { bootDemo, corruptLayer, readStore, tailOf, withPart, writeStoreFile, type DemoBoot } from './inspect.js';
import { useVmCleanup, type Disk } from './qemu.js';

useVmCleanup(afterEach);

const BOOT = { STORES: 'vda', DEVICE_TIMEOUT: '5', TRIES: '2' };
const BLOB = '/srv/verity-blob';

interface Fixture {
  T: Target;
  dir: string;
  rd: string;
  v1: BuildResult;
  /** the demo plus a probe layer: a 1 MiB incompressible file and a script reading it */
  v2: BuildResult;
  blob: Buffer;
}

const fixtures = new Map<Arch, Promise<Fixture>>();

async function signed(r: BuildResult, key: string): Promise<BuildResult> {
  await fs.writeFile(`${r.manifestFile}.sig`, await signBytes(await fs.readFile(r.manifestFile), key));
  return r;
}

function fixture(arch: Arch): Promise<Fixture> {
  let f = fixtures.get(arch);
  if (!f) {
    f = (async () => {
      const T = await target(arch);
      if (!T.verityRoot) throw new Error(`scripts/setup.sh prepares VERITY_ROOT for ${arch}`);
      const dir = await scratch(`verity-${arch}`);
      const keys = await writeKeyPair(path.join(dir, 'keys', 'release'));
      const rd = path.join(dir, 'initrd.img');
      await buildInitramfs({ flavor: 'standalone', out: rd, arch, config: makeBootConfig({ set: Object.entries(BOOT) }), verityRoot: T.verityRoot, pubKeys: [keys.publicKey] });
      const cache = path.join(WORK, 'layer-cache');
      const demo = await loadRecipe(path.join(REPO, 'images', 'demo'), { arch });
      const v1 = await buildStack(demo, { outDir: path.join(dir, 'v1'), cacheDir: cache, epoch: 0, arch, uid: 0, progress: () => {} });
      const probe = path.join(dir, 'probe');
      const blob = randomBytes(1 << 20);
      await fs.mkdir(path.join(probe, 'etc/demo.d'), { recursive: true });
      await fs.mkdir(path.join(probe, path.dirname(BLOB)), { recursive: true });
      await fs.writeFile(path.join(probe, BLOB), blob);
      await fs.writeFile(
        path.join(probe, 'etc/demo.d/verity.sh'),
        [
          `if cat ${BLOB} >/dev/null 2>/tmp/verity-err; then say "verity read ok"; else say "verity read failed: $(cat /tmp/verity-err)"; fi`,
          'for n in /sys/block/dm-*/dm/name; do [ -r "$n" ] && say "dm device $(cat "$n")"; done',
          // which sha256 driver dm-verity took (the kernel logs it at each table)
          `say "verity hash $(dmesg | sed -n 's/.*verity: sha256 using implementation "\\([^"]*\\)".*/\\1/p' | sort -u | tr '\\n' ' ')"`,
          '',
        ].join('\n'),
      );
      const raw = JSON.parse(await fs.readFile(path.join(REPO, 'images/demo/recipe.json'), 'utf8')) as { layers: unknown[] };
      const recipe = parseRecipe(
        JSON.stringify({ ...raw, version: '2', layers: [...raw.layers, { name: 'probe', source: { type: 'dir', path: probe }, owner: 'root' }] }),
        path.join(REPO, 'images/demo/recipe.json'),
        { arch },
      );
      const v2 = await buildStack(recipe, { outDir: path.join(dir, 'v2'), cacheDir: cache, epoch: 0, arch, uid: 0, progress: () => {} });
      await Promise.all([signed(v1, keys.privateKey), signed(v2, keys.privateKey)]);
      return { T, dir, rd, v1, v2, blob };
    })();
    fixtures.set(arch, f);
  }
  return f;
}

function boot(f: Fixture, disks: Disk[], qemuArgs: string[] = []): Promise<DemoBoot> {
  return bootDemo({ target: f.T, initrd: f.rd, disks, append: 'quiet', memoryMiB: 512, timeoutMs: 300_000, qemuArgs });
}

/** v1 good in slot a, v2 pending in slot b. */
async function disk(f: Fixture, name: string): Promise<string> {
  const img = path.join(f.dir, `${name}.img`);
  await storeDisk({ file: img, slots: { a: { buildDir: f.v1.outDir, status: 'good' }, b: { buildDir: f.v2.outDir, status: 'pending', tries: 2 } }, current: 'a', storeMiB: 96 });
  return img;
}

const probeLayer = (f: Fixture) => f.v2.manifest.layers.find((l) => l.name === 'probe')!;

async function boots(arch: Arch): Promise<void> {
  const f = await fixture(arch);
  const img = await disk(f, 'good');
  // amd64: QEMU's `max` CPU (SSSE3, AVX2 under TCG), so that the x86 sha256 driver loads
  const b = await boot(f, [{ file: img, bus: 'virtio' }], arch === 'amd64' ? ['-cpu', 'max'] : []);
  expect(b.output, tailOf(b, 'signature')).toMatch(/manifest signature verified with release.pub/);
  expect(b.booted.slot).toBe('b');
  expect(b.output, tailOf(b, 'the file reads')).toMatch(/^DEMO: verity read ok$/m);
  // every layer of the stack is a dm-verity device
  const dms = [...b.output.matchAll(/^DEMO: dm device (sbv-b\d+-[0-9a-f]{12})$/gm)].map((m) => m[1]);
  expect(dms).toEqual(f.v2.manifest.layers.map((l, n) => `sbv-b${n}-${l.digest.slice(0, 12)}`));
  // dm-verity hashes with the CPU's own sha256, not the generic C one Debian builds in:
  // QEMU's cortex-a57 has the ARMv8 SHA-2 instructions (sha2_ce, as a Jetson's
  // Cortex-A78AE has), the x86 `max` CPU SSSE3 and AVX2 (sha256_ssse3)
  expect(b.output, tailOf(b, 'the sha256 driver')).toMatch(arch === 'arm64' ? /^DEMO: verity hash sha256-ce $/m : /^DEMO: verity hash sha256-(avx2|avx|ssse3|ni) $/m);
  expect(b.output, tailOf(b, 'health')).toMatch(/^DEMO: health exit 0$/m);
  const s = await readStore(img);
  expect(s.state?.slots.b).toEqual({ status: 'good', stack: f.v2.stackId });
}

async function flippedData(arch: Arch): Promise<void> {
  const f = await fixture(arch);
  const img = await disk(f, 'flipped-data');
  const l = probeLayer(f);
  // the blob's bytes sit as they are in the layer (random data is stored uncompressed)
  const file = await fs.readFile(path.join(f.v2.outDir, 'layers', `${l.digest}.sqfs`));
  const at = file.indexOf(f.blob.subarray(1 << 19, (1 << 19) + 64));
  expect(at).toBeGreaterThan(0);
  expect(at).toBeLessThan(l.verity!.dataBytes);
  await corruptLayer(img, l.digest, 1, at);
  const b = await boot(f, [{ file: img, bus: 'virtio' }]);
  expect(b.booted.slot).toBe('b');
  expect(b.output, tailOf(b, 'the read fails')).toMatch(/^DEMO: verity read failed: .*Input\/output error/m);
  expect(b.output, tailOf(b, 'the kernel names the block')).toMatch(/device-mapper: verity: .*data block \d+ is corrupted/);
}

async function flippedMount(arch: Arch): Promise<void> {
  const f = await fixture(arch);
  const img = await disk(f, 'flipped-mount');
  const l = probeLayer(f);
  // byte 100: after the squashfs superblock, in the first block, which the mount reads
  await corruptLayer(img, l.digest, 1, 100);
  const b = await boot(f, [{ file: img, bus: 'virtio' }]);
  expect(b.booted.slot).toBe('a');
  expect(b.output, tailOf(b, 'v1 runs')).toMatch(/^DEMO: running .*\(version 1\)$/m);
  const s = await readStore(img);
  expect(s.state?.slots.b?.status).toBe('bad');
  expect(s.events.find((e) => e.event === 'fail')!.reason).toMatch(new RegExp(`layer probe \\(${l.digest.slice(0, 12)}\\) fails dm-verity at mount`));
}

async function flippedManifest(arch: Arch): Promise<void> {
  const f = await fixture(arch);
  const text = await fs.readFile(f.v2.manifestFile, 'utf8');
  // the manifest: one byte of a verity root changed, the state rewritten to its new id
  const img = await disk(f, 'flipped-manifest');
  const i = text.indexOf('\nverity ') + 8 + 64 + 1 + 10;
  const evil = text.slice(0, i) + (text[i] === '0' ? '1' : '0') + text.slice(i + 1);
  const state = await withPart(img, 'sb-store', (v) => v.read('/state'));
  await writeStoreFile(img, '/slots/b/manifest', evil);
  await writeStoreFile(img, '/state', state!.replace(f.v2.stackId, stackId(evil)));
  let b = await boot(f, [{ file: img, bus: 'virtio' }]);
  expect(b.booted.slot).toBe('a');
  let s = await readStore(img);
  expect(s.events.find((e) => e.event === 'fail')!.reason).toMatch(/manifest signature does not verify with any key of this initrd/);
  // the signature: one byte of it flipped
  const img2 = await disk(f, 'flipped-sig');
  const sig = Buffer.from((await fs.readFile(`${f.v2.manifestFile}.sig`, 'utf8')).trim(), 'base64');
  sig[7] ^= 1;
  await writeStoreFile(img2, '/slots/b/manifest.sig', sig.toString('base64') + '\n');
  b = await boot(f, [{ file: img2, bus: 'virtio' }]);
  expect(b.booted.slot).toBe('a');
  s = await readStore(img2);
  expect(s.state?.slots.b?.status).toBe('bad');
  expect(s.events.find((e) => e.event === 'fail')!.reason).toMatch(/manifest signature does not verify/);
}

describe('verified boot', () => {
  beforeAll(async () => {
    await Promise.all(ARCHES.map(fixture));
  }, 900_000);

  for (const arch of ARCHES) {
    itConcurrent(`${arch}: a signed stack with verity boots, each layer a dm-verity device; health marks it good`, () => boots(arch));
    itConcurrent(`${arch}: one byte of a file's data flipped inside a layer (same size): the stack boots and reading that file fails with EIO`, () => flippedData(arch));
    itConcurrent(`${arch}: a byte flipped in a block the mount reads: the stack fails at mount, the node falls back on the same boot, the event names the layer`, () => flippedMount(arch));
    itConcurrent(`${arch}: a flipped byte in the manifest (state made to match) or in its signature: refused at boot, fallback`, () => flippedManifest(arch));
  }
});
