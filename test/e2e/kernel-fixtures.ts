/**
 * Fixtures for stack kernels (test/e2e/kernel-kexec.test.ts, bench/kexec.ts): the boot
 * partition's initrd with kexec, v1 (the demo, no kernel of its own) and v2 (the demo with
 * Debian 12's 6.12 kernel as its own: modules and kernel file in two layers, a probe that
 * prints `uname -r` and the loaded modules), built once per process and arch.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { buildInitramfs, makeBootConfig } from '../../src/boot/initramfs.js';
import type { Target } from '../../src/boot/target.js';
import { parseRecipe } from '../../src/build/recipe.js';
import { parseManifest, serializeManifest } from '../../src/format/manifest.js';
import { run } from '../../src/sys/exec.js';
import { buildStack, type BuildResult } from '../../src/build/stack.js';
import type { Arch } from '../../src/sys/arch.js';
import { CACHE, REPO, WORK, demoStack, scratch, target } from './fixtures.js';

export const KEXEC_BOOT = { STORES: 'vda', DEVICE_TIMEOUT: '5', TRIES: '2' };

export interface KexecFixture {
  T: Target;
  dir: string;
  /** the first stage: the boot partition's initrd (6.1 modules, kexec) */
  rd: string;
  v1: BuildResult;
  /** the demo with Debian 12's 6.12 kernel as its own */
  v2: BuildResult;
}

const fixtures = new Map<Arch, Promise<KexecFixture>>();

/**
 * images/demo plus the 6.12 kernel (modules and kernel file in two layers) and a probe,
 * built into `<dir>/<out>` (default v2); `modules`: more modules for its initrd.
 */
export async function kernelStack(T: Target, dir: string, arch: Arch, o: { modules?: string[]; out?: string } = {}): Promise<BuildResult> {
  const k2 = T.kernel2!;
  const kroot = path.dirname(path.dirname(path.dirname(k2.modules)));
  const probe = path.join(dir, 'probe');
  await fs.mkdir(path.join(probe, 'etc/demo.d'), { recursive: true });
  await fs.writeFile(
    path.join(probe, 'etc/demo.d/kernel.sh'),
    'say "kernel $(uname -r)"\nfor m in virtio_blk squashfs overlay; do grep -q "^$m " /proc/modules && say "module $m loaded"; done\n',
  );
  const recipe = parseRecipe(
    JSON.stringify({
      name: 'demo',
      version: '2',
      compatible: 'stackboot-demo',
      layers: [
        { name: 'busybox', source: { type: 'dir', path: '${recipeDir}/../../.cache/targets/${arch}/busybox' }, owner: 'root' },
        { name: 'stackboot', source: { type: 'dir', path: '${recipeDir}/../../initramfs', into: 'usr/lib/stackboot' }, owner: 'root' },
        { name: 'base', source: { type: 'dir', path: 'rootfs' }, owner: 'root' },
        { name: 'modules', source: { type: 'dir', path: path.join(kroot, 'lib'), into: 'lib' }, owner: 'root' },
        { name: 'vmlinuz', source: { type: 'dir', path: path.join(kroot, 'boot'), into: 'boot' }, owner: 'root' },
        { name: 'app', source: { type: 'dir', path: 'update-good' }, owner: 'root' },
        { name: 'probe', source: { type: 'dir', path: probe }, owner: 'root' },
      ],
      boot: KEXEC_BOOT,
      kernel: { path: `/boot/vmlinuz-${k2.kver}`, ...(o.modules ? { modules: o.modules } : {}) },
    }),
    path.join(REPO, 'images/demo/kernel-recipe.json'),
    { arch },
  );
  return buildStack(recipe, { outDir: path.join(dir, o.out ?? 'v2'), cacheDir: path.join(WORK, 'layer-cache'), epoch: 0, arch, uid: 0, kexecRoot: T.kexecRoot, progress: () => {} });
}

export function kexecFixture(arch: Arch): Promise<KexecFixture> {
  let f = fixtures.get(arch);
  if (!f) {
    f = (async () => {
      const T = await target(arch);
      if (!T.kernel2 || !T.kexecRoot) throw new Error(`scripts/setup.sh prepares KERNEL2 and KEXEC_ROOT for ${arch}`);
      const dir = await scratch(`kexec-${arch}`);
      const rd = path.join(dir, 'initrd.img');
      await buildInitramfs({ flavor: 'standalone', out: rd, arch, cacheRoot: CACHE, config: makeBootConfig({ set: Object.entries(KEXEC_BOOT) }), kexecRoot: T.kexecRoot });
      const [v1, v2] = await Promise.all([demoStack('demo', arch), kernelStack(T, dir, arch)]);
      return { T, dir, rd, v1, v2 };
    })();
    fixtures.set(arch, f);
  }
  return f;
}


const panics = new Map<string, Promise<{ dir: string; text: string }>>();

/**
 * v3: v2 with an initrd its kernel cannot use (garbage of the right digest), so the
 * kernel kexec'ed into panics (VFS: unable to mount root). Made once per fixture, in
 * `<dir>/v3`; `text` is its manifest.
 */
export function panicStack(f: KexecFixture): Promise<{ dir: string; text: string }> {
  let p = panics.get(f.dir);
  if (!p) {
    p = (async () => {
      const v3 = path.join(f.dir, 'v3');
      await fs.mkdir(path.join(v3, 'layers'), { recursive: true });
      const junkRoot = path.join(f.dir, 'junk-initrd');
      const rel = f.v2.manifest.initrd!.path;
      await fs.mkdir(path.dirname(path.join(junkRoot, rel)), { recursive: true });
      await fs.writeFile(path.join(junkRoot, rel), Buffer.alloc(1 << 20, 0x5a));
      const junkLayer = path.join(f.dir, 'junk.sqfs');
      await run('gensquashfs', ['-D', junkRoot, '--all-root', '-f', '-q', junkLayer]);
      const [jd, js] = await Promise.all([run('sha256sum', [junkLayer]).then((r) => r.stdout.split(' ')[0]!), fs.stat(junkLayer).then((s) => s.size)]);
      const idig = (await run('sha256sum', [path.join(junkRoot, rel)])).stdout.split(' ')[0]!;
      const m = parseManifest(await fs.readFile(f.v2.manifestFile, 'utf8'));
      // the hand-made junk layer has no hash tree: v3 has no verity lines (VERIFY falls back to size)
      const layers = m.layers.map(({ verity: _v, ...l }) => (l.name === 'initrd' ? { name: 'initrd', digest: jd, size: js } : l));
      const text = serializeManifest({ ...m, version: '3', initrd: { path: rel, digest: idig, size: 1 << 20 }, layers });
      await fs.writeFile(path.join(v3, 'manifest'), text);
      for (const l of layers) await fs.copyFile(l.name === 'initrd' ? junkLayer : path.join(f.v2.outDir, 'layers', `${l.digest}.sqfs`), path.join(v3, 'layers', `${l.digest}.sqfs`));
      return { dir: v3, text };
    })();
    panics.set(f.dir, p);
  }
  return p;
}
