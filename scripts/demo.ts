/**
 * The demo (`npm run demo`): builds the example node, makes its initrd and disk, boots it
 * in QEMU, installs a broken update, and shows the node falling back on its own, with a
 * short account of each boot. Everything is real: squashfs layers, the standalone
 * initramfs, a GPT disk, Debian's kernel under QEMU (TCG). Needs root for the install
 * step (it mounts the disk image's store partition, as a node would have it mounted).
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadRecipe } from '../src/build/recipe.js';
import { buildStack, type BuildResult } from '../src/build/stack.js';
import { stageStore } from '../src/format/store.js';
import { install } from '../src/node/install.js';
import { nodeContext } from '../src/node/context.js';
import { bundleStreamFromBuild } from '../src/format/bundle.js';
import { signManifestFile, writeKeyPair } from '../src/format/signature.js';
import { assembleDisk } from '../src/media/disk.js';
import { findPartition } from '../src/media/blockdev.js';
import { buildInitramfs, makeBootConfig } from '../src/boot/initramfs.js';
import { loadTarget } from '../src/boot/target.js';
import { archFromNode, type Arch } from '../src/sys/arch.js';
import { withPartitionMounted } from '../src/sys/mount.js';
import { bootOnce } from '../test/e2e/qemu.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const arch: Arch = (process.env.DEMO_ARCH as Arch) || archFromNode(process.arch) || 'amd64';
const WORK = path.join(REPO, 'out', 'demo');
const TRIES = 2;

const say = (s = '') => process.stdout.write(s + '\n');

async function build(name: string): Promise<BuildResult> {
  const r = await buildStack(await loadRecipe(path.join(REPO, 'images', name), { arch }), {
    outDir: path.join(WORK, name),
    cacheDir: path.join(REPO, '.cache', 'layers'),
    epoch: 0,
    arch,
    uid: process.getuid?.(),
    progress: () => {},
  });
  say(`  built ${name.padEnd(12)} stack ${r.stackId.slice(0, 12)}  layers: ${r.layers.map((l) => `${l.name}${l.cached ? '(cached)' : ''}`).join(', ')}`);
  return r;
}

async function bootAndTell(n: number, disk: string, initrd: string): Promise<void> {
  const target = await loadTarget(arch, path.join(REPO, '.cache'));
  const t0 = Date.now();
  const r = await bootOnce({ target, initrd, disks: [{ file: disk, bus: 'virtio' }], timeoutMs: 180_000, logFile: path.join(WORK, `boot-${n}.log`) });
  const lines = r.output.split('\n').map((l) => l.replace(/^\[\s*[\d.]+\]\s*/, '').trim());
  const pick = (re: RegExp) => lines.find((l) => re.test(l))?.match(re)?.[1];
  const running = pick(/^DEMO: running (.*)$/) ?? '(no stack reached userspace)';
  const slot = pick(/^DEMO: booted slot=(\w)/);
  const status = pick(/^DEMO: booted status=(\w+)/);
  const tries = pick(/^DEMO: booted tries=(\d*)/);
  const fallback = lines.filter((l) => /stackboot: .*(fail|exhausted|bad|fall)/i.test(l) && !/modprobe|DEMO/.test(l));
  const health = pick(/^DEMO: health exit (\d+)/);
  say(`boot ${n} (${((Date.now() - t0) / 1000).toFixed(1)} s): ${running}`);
  if (slot) say(`    slot ${slot}, ${status}${status === 'pending' ? `, ${tries} tries left` : ''}`);
  for (const f of [...new Set(fallback)].slice(0, 4)) say(`    hook: ${f.replace(/^stackboot: /, '')}`);
  if (health !== undefined) say(`    health checks: ${health !== '0' ? 'FAILED, marked bad' : status === 'pending' ? 'passed, marked good' : 'passed'}`);
}

async function main(): Promise<void> {
  await fs.rm(WORK, { recursive: true, force: true });
  await fs.mkdir(WORK, { recursive: true });
  say(`stackboot demo (${arch})`);
  say('1. build the example stacks (images/demo, and a broken update images/demo-broken)');
  const v1 = await build('demo');
  const bad = await build('demo-broken');

  say('2. make the standalone initramfs and a GPT disk with a store (slot a = demo 1)');
  const initrd = path.join(WORK, 'initrd.img');
  await buildInitramfs({ flavor: 'standalone', out: initrd, arch, cacheRoot: path.join(REPO, '.cache'), config: makeBootConfig({ set: [['STORES', 'vda'], ['TRIES', String(TRIES)], ['ON_FAIL_DELAY', '3']] }) });
  const staging = path.join(WORK, 'staging');
  await stageStore(path.join(staging, 'store'), { slots: { a: { buildDir: v1.outDir, status: 'good' } } });
  await fs.mkdir(path.join(staging, 'data'), { recursive: true });
  const disk = path.join(WORK, 'node.img');
  await assembleDisk(disk, {
    seed: v1.stackId,
    epoch: 0,
    parts: [
      { name: 'sb-store', type: 'linux', size: 96 << 20, content: { kind: 'ext4', dir: path.join(staging, 'store'), label: 'sb-store' } },
      { name: 'sb-data', type: 'linux', size: 16 << 20, content: { kind: 'ext4', dir: path.join(staging, 'data'), label: 'sb-data' } },
    ],
  });
  say(`  ${disk}`);

  say('3. boot it');
  await bootAndTell(1, disk, initrd);

  say(`4. install the broken update into the inactive slot (pending, ${TRIES} tries)`);
  const part = await findPartition(disk, 'sb-store');
  const keys = path.join(WORK, 'keys');
  const key = await writeKeyPair(path.join(keys, 'release'));
  await signManifestFile(bad.manifestFile, key.privateKey);
  await withPartitionMounted(disk, part, path.join(WORK, 'mnt'), async (dir) => {
    // the real installer, as a node runs it, with the store of the disk image
    const ctx = await nodeContext({ store: dir, bootedSlot: 'a' });
    const r = await install({ ctx, stream: bundleStreamFromBuild(bad.outDir), label: 'demo-broken', keysDir: keys, tries: TRIES });
    const p = r.plan!;
    say(`  signed bundle verified; slot ${p.slot} <- demo 3 (broken), pending with ${TRIES} tries`);
    say(`  wrote ${p.write.length} layer(s) the store lacked (${p.write.map((l) => l.name).join(', ')}), reused ${p.have.length}`);
  });

  say('5. boot again: the update runs, fails its health check, and the node falls back on its own');
  await bootAndTell(2, disk, initrd);
  await bootAndTell(3, disk, initrd);

  say('6. what the store says (state and events)');
  await withPartitionMounted(disk, part, path.join(WORK, 'mnt'), async (dir) => {
    say((await fs.readFile(path.join(dir, 'state'), 'utf8')).trimEnd().replace(/^/gm, '  '));
    for (const e of (await fs.readFile(path.join(dir, 'events'), 'utf8')).trimEnd().split('\n')) say(`  event: ${e}`);
  }, true);
  say(`console logs: ${WORK}/boot-*.log`);
}

main().catch((e) => {
  process.stderr.write(`demo failed: ${e instanceof Error ? e.message : e}\n`);
  process.exitCode = 1;
});
