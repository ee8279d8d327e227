/**
 * Whether the boot kernel reads a stack's layers (src/boot/kconfig.ts, src/node/kernel-support.ts):
 * kernel configs as Debian's and Raspberry Pi's are written, the running kernel's config
 * from /proc/config.gz or /boot, the verdict only when the running kernel is the boot
 * partition's (booted from this store, the booted stack without a kernel of its own),
 * and what install and doctor do with it. Store folders are staged from fake builds; the
 * proc and boot folders are the test's own. The build-time check on Debian's real 6.12
 * config: test/build/stack-kernel.int.test.ts.
 */
import { promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { describeUnmet, parseKernelConfig, stackKernelNeeds, unmetNeeds } from '../../src/boot/kconfig.js';
import { bundleStreamFromBuild } from '../../src/format/bundle.js';
import { stageStore } from '../../src/format/store.js';
import { serializeManifest } from '../../src/format/manifest.js';
import { nodeContext } from '../../src/node/context.js';
import { parseNodeConfig } from '../../src/node/config.js';
import { doctor } from '../../src/node/doctor.js';
import { install } from '../../src/node/install.js';
import { bootKernelReads, runningKernelConfig } from '../../src/node/kernel-support.js';
import { fakeBuild, keys, layerBytes, type FakeBuild } from '../support/update-fixtures.js';

/** A Debian-like config (squashfs with every decompressor, overlay and loop as modules). */
const DEBIAN = [
  'CONFIG_BLK_DEV_LOOP=m',
  'CONFIG_OVERLAY_FS=m',
  'CONFIG_SQUASHFS=m',
  'CONFIG_SQUASHFS_ZLIB=y',
  'CONFIG_SQUASHFS_LZ4=y',
  'CONFIG_SQUASHFS_LZO=y',
  'CONFIG_SQUASHFS_XZ=y',
  'CONFIG_SQUASHFS_ZSTD=y',
  'CONFIG_LOCALVERSION="-v8"',
].join('\n');
/** As Raspberry Pi's kernels were: no squashfs zstd. */
const NO_ZSTD = DEBIAN.replace('CONFIG_SQUASHFS_ZSTD=y', '# CONFIG_SQUASHFS_ZSTD is not set');

let tmp: string;
let k: Awaited<ReturnType<typeof keys>>;
let v1: FakeBuild, v2: FakeBuild, v2xz: FakeBuild, vk: FakeBuild;
beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(tmpdir(), 'sb-kernel-support-'));
  k = await keys(tmp);
  const base = layerBytes(4000, 'base');
  v1 = await fakeBuild(path.join(tmp, 'v1'), { version: '1', key: k.key, layers: [{ name: 'base', data: base }] });
  v2 = await fakeBuild(path.join(tmp, 'v2'), { version: '2', key: k.key, layers: [{ name: 'base', data: base }, { name: 'app', data: layerBytes(900, '2') }] });
  v2xz = await fakeBuild(path.join(tmp, 'v2xz'), { version: '2', key: k.key, compression: 'xz', layers: [{ name: 'base', data: base }, { name: 'app', data: layerBytes(900, '2x') }] });
  // a v1 whose manifest names a kernel of its own (the running kernel is then that one)
  vk = await fakeBuild(path.join(tmp, 'vk'), { version: '1', key: k.key, layers: [{ name: 'base', data: base }] });
  const withKernel = serializeManifest({ ...vk.manifest, kernel: { release: '6.12.1', path: '/boot/vmlinuz-6.12.1', digest: 'a'.repeat(64), size: 10 }, initrd: { path: '/boot/initrd.img', digest: 'b'.repeat(64), size: 10 } });
  await fs.writeFile(path.join(vk.dir, 'manifest'), withKernel);
  await fs.rm(path.join(vk.dir, 'manifest.sig'));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

let n = 0;
/** A store booted from slot a (a booted record in a run folder of its own), and a proc folder with CONFIG as config.gz. */
async function bootedNode(slotA: FakeBuild, config: string | null) {
  const d = path.join(tmp, `node${n++}`);
  const storeDir = path.join(d, 'store');
  const store = await stageStore(storeDir, { slots: { a: { buildDir: slotA.dir, status: 'good' } }, current: 'a' });
  const run = path.join(d, 'run');
  await fs.mkdir(path.join(run, 'stackboot'), { recursive: true });
  const st = await store.readState();
  await fs.writeFile(path.join(run, 'stackboot', 'booted'), `store_dev=/dev/vda2\nstore_id=${store.id}\nstore_mnt=${storeDir}\nslot=a\nstack=${st.slots.a!.stack}\nstatus=good\ntries=\nfallback=\nupper=tmpfs\ndata_dev=\nwatchdog=\n`);
  const proc = path.join(d, 'proc');
  await fs.mkdir(proc, { recursive: true });
  if (config !== null) await fs.writeFile(path.join(proc, 'config.gz'), gzipSync(config));
  const lookup = { procDir: proc, bootDir: path.join(d, 'boot'), release: '6.1.0-test' };
  return { storeDir, run, proc, lookup, ctx: await nodeContext({ runDir: run }) };
}

describe('kernel configs', () => {
  it("reads y and m, not 'is not set'; names what a kernel lacks for a compression", () => {
    const c = parseKernelConfig(DEBIAN);
    expect(c.get('SQUASHFS')).toBe('m');
    expect(c.get('LOCALVERSION')).toBe('-v8');
    expect(unmetNeeds(c, stackKernelNeeds('zstd'))).toEqual([]);
    const nz = parseKernelConfig(NO_ZSTD);
    expect(nz.has('SQUASHFS_ZSTD')).toBe(false);
    expect(describeUnmet(unmetNeeds(nz, stackKernelNeeds('zstd')))).toBe('CONFIG_SQUASHFS_ZSTD (the layers are zstd-compressed)');
    expect(unmetNeeds(nz, stackKernelNeeds('xz'))).toEqual([]);
    expect(unmetNeeds(parseKernelConfig('CONFIG_SQUASHFS=y\nCONFIG_SQUASHFS_XZ=y\n'), stackKernelNeeds('xz')).map((x) => x.option)).toEqual(['OVERLAY_FS', 'BLK_DEV_LOOP']);
  });

  it('the running kernel config: /proc/config.gz first, else /boot/config-<release>, else none', async () => {
    const d = path.join(tmp, 'lookup');
    await fs.mkdir(path.join(d, 'proc'), { recursive: true });
    await fs.mkdir(path.join(d, 'boot'), { recursive: true });
    const o = { procDir: path.join(d, 'proc'), bootDir: path.join(d, 'boot'), release: '6.1.0-9' };
    expect(await runningKernelConfig(o)).toBeNull();
    await fs.writeFile(path.join(d, 'boot', 'config-6.1.0-9'), NO_ZSTD);
    expect((await runningKernelConfig(o))!.source).toBe(path.join(d, 'boot', 'config-6.1.0-9'));
    // a config.gz that is not gzip: /boot still answers
    await fs.writeFile(path.join(d, 'proc', 'config.gz'), 'junk');
    expect((await runningKernelConfig(o))!.config.has('SQUASHFS_ZSTD')).toBe(false);
    await fs.writeFile(path.join(d, 'proc', 'config.gz'), gzipSync(DEBIAN));
    const r = (await runningKernelConfig(o))!;
    expect(r.source).toBe(path.join(d, 'proc', 'config.gz'));
    expect(r.config.get('SQUASHFS_ZSTD')).toBe('y');
  });
});

describe('the boot kernel reads the stack', () => {
  it('known only when booted from the store on the boot partition kernel', async () => {
    const b = await bootedNode(v1, NO_ZSTD);
    const v = await bootKernelReads(b.ctx, v2.manifest, b.lookup);
    expect(v).toMatchObject({ known: true, release: '6.1.0-test', source: path.join(b.proc, 'config.gz') });
    expect(v.known && v.unmet.map((x) => x.option)).toEqual(['SQUASHFS_ZSTD']);
    expect(await bootKernelReads(b.ctx, v2xz.manifest, b.lookup)).toMatchObject({ known: true, unmet: [] });
    // a store named with --store: another machine's, maybe
    expect(await bootKernelReads(await nodeContext({ store: b.storeDir, bootedSlot: 'a' }), v2.manifest, b.lookup)).toMatchObject({ known: false, why: expect.stringMatching(/not booted from this store/) });
    // the booted stack runs its own kernel (kexec): the boot partition's is not the running one
    const bk = await bootedNode(vk, NO_ZSTD);
    expect(await bootKernelReads(bk.ctx, v2.manifest, bk.lookup)).toMatchObject({ known: false, why: expect.stringMatching(/the booted stack's own \(6\.12\.1, kexec'ed\)/) });
    // no config anywhere
    const nc = await bootedNode(v1, null);
    expect(await bootKernelReads(nc.ctx, v2.manifest, nc.lookup)).toMatchObject({ known: false, why: expect.stringMatching(/no \/proc\/config\.gz/) });
  });

  it('install refuses a stack the boot kernel cannot read (INCOMPATIBLE, nothing written); takes one it reads', async () => {
    const b = await bootedNode(v1, NO_ZSTD);
    const before = (await fs.readdir(path.join(b.storeDir, 'layers'))).sort();
    const stateBefore = await fs.readFile(path.join(b.storeDir, 'state'), 'utf8');
    const o = { ctx: b.ctx, label: 'v2', keysDir: k.keysDir, tries: 3, kernelLookup: b.lookup, freeBytes: async () => 1 << 30 };
    const err = await install({ ...o, stream: bundleStreamFromBuild(v2.dir) }).catch((e: unknown) => e as Error & { code?: string });
    expect(err).toBeInstanceOf(Error);
    expect((err as { code?: string }).code).toBe('INCOMPATIBLE');
    expect((err as Error).message).toMatch(/v2: stack node 2 cannot boot on this node: its kernel 6\.1\.0-test \(\S+config\.gz\) lacks CONFIG_SQUASHFS_ZSTD \(the layers are zstd-compressed\)/);
    expect((await fs.readdir(path.join(b.storeDir, 'layers'))).sort()).toEqual(before);
    expect(await fs.readFile(path.join(b.storeDir, 'state'), 'utf8')).toBe(stateBefore);
    // xz layers, which that kernel reads: the checks pass (a dry run: the plan)
    const d = await install({ ...o, stream: bundleStreamFromBuild(v2xz.dir), dryRun: true });
    expect(d.dryRun).toBe(true);
    expect(d.plan?.slot).toBe('b');
  });

  it('doctor fails each stack the boot kernel cannot read, and says which kernel it judged', async () => {
    const b = await bootedNode(v1, NO_ZSTD);
    const config = parseNodeConfig(`STORES=vda\nKEYS_DIR=${k.keysDir}\n`);
    const r = await doctor({ ctx: b.ctx, config, procDir: b.proc, runDir: b.run, bootDir: b.lookup.bootDir, kernelRelease: b.lookup.release });
    const msgs = r.findings.filter((f) => f.check === 'kernel').map((f) => `${f.level} ${f.message}`);
    expect(msgs).toContainEqual(expect.stringMatching(/^fail slot a \(good \w+\): the boot kernel 6\.1\.0-test \(\S+config\.gz\) lacks CONFIG_SQUASHFS_ZSTD \(the layers are zstd-compressed\): it cannot boot this stack$/));
    const ok = await bootedNode(v1, DEBIAN);
    const r2 = await doctor({ ctx: ok.ctx, config, procDir: ok.proc, runDir: ok.run, bootDir: ok.lookup.bootDir, kernelRelease: ok.lookup.release });
    expect(r2.findings.filter((f) => f.check === 'kernel').map((f) => `${f.level} ${f.message}`)).toContainEqual(expect.stringMatching(/^ok the boot kernel 6\.1\.0-test \(\S+\) reads zstd squashfs, overlayfs and loop devices$/));
  });
});
