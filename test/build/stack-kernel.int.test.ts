/**
 * The stack's own kernel at build time: found in the built layers by its path in the
 * merged root (whiteouts, opaque folders and files over folders as overlayfs applies
 * them), its initrd made from the stack's own modules, reproducibly, as the `initrd`
 * layer, and the manifest's kernel/initrd lines. Real layers (gensquashfs), the setup
 * target's second kernel (Debian 12's 6.12) as the stack's kernel.
 */
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run } from '../../src/sys/exec.js';
import { noProgress } from '../../src/sys/progress.js';
import { parseRecipe } from '../../src/build/recipe.js';
import { buildStack } from '../../src/build/stack.js';
import { findInStack, kernelRelease } from '../../src/build/stack-kernel.js';
import { loadTarget, type Target } from '../../src/boot/target.js';
import { tmpdir } from './sources/tarfixture.js';

let work: string;
let T: Target;
beforeAll(async () => {
  work = await tmpdir('sb-stack-kernel-');
  T = await loadTarget('amd64');
});
afterAll(async () => {
  await fs.rm(work, { recursive: true, force: true });
});

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** A squashfs made from a tree given as { path: content | 'dir' | 'whiteout' | 'opaque-dir' }. */
async function layer(name: string, tree: Record<string, string>): Promise<string> {
  const dir = path.join(work, `tree-${name}`);
  for (const [p, what] of Object.entries(tree)) {
    const f = path.join(dir, p);
    if (what === 'dir' || what === 'opaque-dir') {
      await fs.mkdir(f, { recursive: true });
      if (what === 'opaque-dir') await run('setfattr', ['-n', 'trusted.overlay.opaque', '-v', 'y', f]);
    } else if (what === 'whiteout') {
      await fs.mkdir(path.dirname(f), { recursive: true });
      await run('mknod', [f, 'c', '0', '0']);
    } else {
      await fs.mkdir(path.dirname(f), { recursive: true });
      await fs.writeFile(f, what);
    }
  }
  const out = path.join(work, `${name}.sqfs`);
  await run('gensquashfs', ['-D', dir, '-x', '-f', '-q', out]);
  return out;
}

describe('stack kernel: finding files in the merged root of built layers', () => {
  it('takes the top-most layer, and honours whiteouts, opaque folders and files over folders', async () => {
    const base = await layer('base', { 'boot/vmlinuz-1': 'k1', 'boot/other': 'o' });
    const over = await layer('over', { 'boot/vmlinuz-1': 'k2' });
    const wh = await layer('wh', { 'boot/vmlinuz-1': 'whiteout' });
    const opq = await layer('opq', { boot: 'opaque-dir', 'boot/new': 'n' });
    const file = await layer('file', { boot: 'a file now' });
    const whDir = await layer('whdir', { boot: 'whiteout' });
    expect((await findInStack([base], '/boot/vmlinuz-1'))?.image).toBe(base);
    expect((await findInStack([base, over], '/boot/vmlinuz-1'))?.image).toBe(over);
    expect(await findInStack([base, wh], '/boot/vmlinuz-1')).toBeNull();
    expect((await findInStack([base, wh, over], '/boot/vmlinuz-1'))?.image).toBe(over);
    expect(await findInStack([base, opq], '/boot/other')).toBeNull();
    expect((await findInStack([base, opq], '/boot/new'))?.image).toBe(opq);
    expect(await findInStack([base, file], '/boot/vmlinuz-1')).toBeNull();
    expect(await findInStack([base, whDir], '/boot/other')).toBeNull();
    expect((await findInStack([base], '/boot'))?.entry.type).toBe('dir');
    expect(await findInStack([base], '/nothing/here')).toBeNull();
  });

  it('tells the release from the usual kernel file names', () => {
    expect(kernelRelease({ path: '/boot/vmlinuz-6.12.48+deb12-amd64', modules: [] })).toBe('6.12.48+deb12-amd64');
    expect(kernelRelease({ path: '/usr/lib/modules/6.1.0-9-arm64/vmlinuz', modules: [] })).toBe('6.1.0-9-arm64');
    expect(kernelRelease({ path: '/boot/Image', release: '6.1-tegra', modules: [] })).toBe('6.1-tegra');
    expect(kernelRelease({ path: '/boot/Image', modules: [] })).toBeNull();
  });
});

describe('stack kernel: build', () => {
  async function kernelRecipe(name: string, extra: Record<string, unknown> = {}, extraLayers: unknown[] = []) {
    const k2 = T.kernel2!;
    const root = path.join(work, 'base-root');
    await fs.mkdir(path.join(root, 'sbin'), { recursive: true });
    await fs.mkdir(path.join(root, 'etc'), { recursive: true });
    await fs.writeFile(path.join(root, 'sbin/init'), '#!/bin/sh\n');
    await fs.writeFile(path.join(root, 'etc/os-release'), 'ID=test\n');
    // the kernel package's tree (boot/, lib/modules/<release>/ with modules.dep) as a layer
    const kroot = path.dirname(path.dirname(path.dirname(k2.modules)));
    const recipe = {
      name,
      version: '2',
      compatible: 'test',
      layers: [
        { name: 'base', source: { type: 'dir', path: root } },
        { name: 'kernel', source: { type: 'dir', path: kroot } },
        ...extraLayers,
      ],
      kernel: { path: `/boot/vmlinuz-${k2.kver}` },
      ...extra,
    };
    return parseRecipe(JSON.stringify(recipe), path.join(work, `${name}.json`));
  }

  it('records the kernel and its initrd in the manifest, the initrd a layer made from the stack modules, reproducibly', async () => {
    expect(T.kernel2, 'scripts/setup.sh unpacks the second kernel').toBeTruthy();
    const recipe = await kernelRecipe('k');
    const opts = { cacheDir: path.join(work, 'cache'), epoch: 1700000000, arch: 'amd64', uid: 0, progress: noProgress, kexecRoot: T.kexecRoot };
    const a = await buildStack(recipe, { ...opts, outDir: path.join(work, 'out-a') });
    const k2 = T.kernel2!;
    const kbytes = await fs.readFile(k2.kernel);
    expect(a.manifest.kernel).toEqual({ release: k2.kver, path: `/boot/vmlinuz-${k2.kver}`, digest: sha(kbytes), size: kbytes.length });
    expect(a.manifest.layers.map((l) => l.name)).toEqual(['base', 'kernel', 'initrd']);
    expect(a.manifest.initrd!.path).toBe(`/boot/stackboot/initrd-${k2.kver}.img`);
    const text = await fs.readFile(a.manifestFile, 'utf8');
    expect(text).toMatch(new RegExp(`\\nkernel ${k2.kver.replace(/[.+]/g, '\\$&')} /boot/vmlinuz-\\S+ sha256:[0-9a-f]{64} ${kbytes.length}\\ninitrd /boot/stackboot/initrd-\\S+ sha256:[0-9a-f]{64} \\d+\\nlayer `));
    // the initrd in its layer is the one the manifest names, and it holds the 6.12 modules
    const img = path.join(work, 'initrd.img');
    await run('sh', ['-c', `rdsquashfs -c ${a.manifest.initrd!.path} ${a.layers[2]!.file} > ${img}`]);
    const data = await fs.readFile(img);
    expect(sha(data)).toBe(a.manifest.initrd!.digest);
    const list = await run('sh', ['-c', `(zstd -dc ${img} 2>/dev/null || gzip -dc ${img}) | cpio -t 2>/dev/null`]);
    expect(list.stdout).toContain(`lib/modules/${k2.kver}/`);
    expect(list.stdout).toMatch(/squashfs\.ko/);
    if (T.kexecRoot) expect(list.stdout).toMatch(/^bin\/kexec$/m);
    if (T.kexecRoot) expect(list.stdout).toMatch(/libxenctrl\.so/);
    // the same recipe in another folder, no cache: the same stack
    const b = await buildStack(recipe, { ...opts, cacheDir: null, outDir: path.join(work, 'out-b') });
    expect(b.stackId).toBe(a.stackId);
  });

  it("refuses a kernel whose own config (/boot/config-<release>) cannot read the stack's layers, naming the option; takes it with a compression it reads", async () => {
    const k2 = T.kernel2!;
    const cfgPath = path.join(path.dirname(k2.kernel), `config-${k2.kver}`);
    const real = await fs.readFile(cfgPath, 'utf8');
    expect(real, "Debian's config has it").toMatch(/^CONFIG_SQUASHFS_ZSTD=y$/m);
    // a layer on top replaces the kernel's config with one without squashfs zstd (as Raspberry Pi kernels are)
    const top = path.join(work, 'nozstd-root');
    await fs.mkdir(path.join(top, 'boot'), { recursive: true });
    await fs.writeFile(path.join(top, 'boot', `config-${k2.kver}`), real.replace(/^CONFIG_SQUASHFS_ZSTD=y$/m, '# CONFIG_SQUASHFS_ZSTD is not set'));
    const opts = { cacheDir: path.join(work, 'cache'), epoch: 0, arch: 'amd64', uid: 0, progress: noProgress };
    const recipe = await kernelRecipe('nozstd', {}, [{ name: 'nozstd', source: { type: 'dir', path: top } }]);
    await expect(buildStack(recipe, { ...opts, outDir: path.join(work, 'out-nozstd') })).rejects.toThrow(
      new RegExp(`kernel: ${k2.kver.replace(/[.+]/g, '\\$&')} cannot boot this stack: its config /boot/config-\\S+ lacks CONFIG_SQUASHFS_ZSTD \\(the layers are zstd-compressed\\)`),
    );
    await expect(fs.stat(path.join(work, 'out-nozstd', 'manifest'))).rejects.toThrow();
    // the same stack with xz layers, which that kernel reads
    const xz = await kernelRecipe('xz', { compression: { algorithm: 'xz', level: 6 } }, [{ name: 'nozstd', source: { type: 'dir', path: top } }]);
    const r = await buildStack(xz, { ...opts, outDir: path.join(work, 'out-xz') });
    expect(r.manifest.compression).toBe('xz');
    expect(r.manifest.kernel?.release).toBe(k2.kver);
  });

  it('a kernel path the stack lacks is a recipe error naming it', async () => {
    const recipe = await kernelRecipe('nok');
    recipe.kernel!.path = '/boot/vmlinuz-9.9.9';
    await expect(buildStack(recipe, { outDir: path.join(work, 'out-c'), cacheDir: path.join(work, 'cache'), epoch: 0, arch: 'amd64', uid: 0, progress: noProgress })).rejects.toThrow(/the stack has no kernel \/boot\/vmlinuz-9\.9\.9/);
  });

  it('refuses a recipe kernel that is not an absolute path, and a layer named initrd', () => {
    const base = { name: 'x', version: '1', compatible: 'c', layers: [{ name: 'base', source: { type: 'dir', path: '.' } }] };
    expect(() => parseRecipe(JSON.stringify({ ...base, kernel: { path: 'boot/vmlinuz' } }), '/r.json')).toThrow(/kernel\.path: expected an absolute path/);
    expect(() => parseRecipe(JSON.stringify({ ...base, kernel: { path: '/boot/../x' } }), '/r.json')).toThrow(/kernel\.path: expected a path without/);
    expect(() => parseRecipe(JSON.stringify({ ...base, layers: [{ name: 'initrd', source: { type: 'dir', path: '.' } }], kernel: { path: '/boot/vmlinuz-1' } }), '/r.json')).toThrow(/a name other than "initrd"/);
  });
});
