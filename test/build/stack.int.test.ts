/**
 * Builds real stacks with the real tools, mounts their layers on loop devices under an
 * overlay (as the boot hook does) and checks the merged view.
 */
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import os from 'node:os';
import { afterAll, describe, expect, it } from 'vitest';
import { run } from '../../src/sys/exec.js';
import { mountOverlay, mountSquashfs, umountAll } from '../../src/sys/mount.js';
import { parseRecipe } from '../../src/build/recipe.js';
import { buildStack, type BuildResult } from '../../src/build/stack.js';
import { runOverLayers } from '../../src/build/sources/run.js';
import { makeSocketFile, tmpdir, writeTar } from './sources/tarfixture.js';

const mounted: string[] = [];
afterAll(async () => {
  await umountAll(mounted);
});

async function mountStack(r: BuildResult, where: string): Promise<string> {
  const lowers: string[] = [];
  for (let i = 0; i < r.layers.length; i++) {
    const d = path.join(where, `l${i}`);
    await mountSquashfs(r.layers[i].file, d);
    mounted.push(d);
    lowers.push(d);
  }
  const merged = path.join(where, 'merged');
  const up = path.join(where, 'rw');
  await fs.mkdir(path.join(up, 'upper'), { recursive: true });
  await fs.mkdir(path.join(up, 'work'), { recursive: true });
  await mountOverlay(merged, [...lowers].reverse(), { upper: path.join(up, 'upper'), work: path.join(up, 'work') });
  mounted.push(merged);
  return merged;
}

async function getXattr(file: string, name: string): Promise<string | null> {
  const r = await run('getfattr', ['--absolute-names', '--only-values', '-h', '-n', name, file], { reject: false });
  return r.exitCode === 0 ? r.stdout : null;
}

/** A base tree with every kind of entry a root filesystem has. */
async function makeBase(dir: string): Promise<void> {
  await fs.mkdir(path.join(dir, 'etc/app'), { recursive: true });
  await fs.mkdir(path.join(dir, 'var/cache/app'), { recursive: true });
  await fs.mkdir(path.join(dir, 'usr/bin'), { recursive: true });
  await fs.writeFile(path.join(dir, 'etc/hostname'), 'node\n');
  await fs.writeFile(path.join(dir, 'etc/removed'), 'to be deleted by a whiteout\n');
  await fs.writeFile(path.join(dir, 'etc/app/conf'), 'a=1\n');
  await fs.writeFile(path.join(dir, 'etc/.hidden'), 'dot\n');
  await fs.writeFile(path.join(dir, 'var/cache/app/old'), 'stale\n');
  await fs.writeFile(path.join(dir, 'usr/bin/tool'), '#!/bin/sh\necho tool\n');
  await fs.chmod(path.join(dir, 'usr/bin/tool'), 0o4755);
  await fs.writeFile(path.join(dir, 'etc/secret'), 's');
  await fs.chmod(path.join(dir, 'etc/secret'), 0o600);
  await fs.chown(path.join(dir, 'etc/secret'), 1000, 1001);
  await fs.symlink('hostname', path.join(dir, 'etc/hostname.link'));
  await fs.link(path.join(dir, 'usr/bin/tool'), path.join(dir, 'usr/bin/tool-hardlink'));
  await run('setfattr', ['-n', 'user.stackboot', '-v', 'kept', path.join(dir, 'etc/hostname')]);
  await run('setfattr', ['-n', 'security.capability', '-v', '0sAQAAAgAgAAAAAAAAAAAAAAAAAAA=', path.join(dir, 'usr/bin/tool')]);
}

/** An OCI image layout with one layer that deletes and replaces base files. */
async function makeOci(dir: string): Promise<void> {
  const blobs = path.join(dir, 'blobs/sha256');
  await fs.mkdir(blobs, { recursive: true });
  const layerTar = path.join(dir, 'layer.tar.gz');
  await writeTar(
    layerTar,
    [
      { path: 'etc/', type: 'dir' },
      { path: 'etc/.wh.removed', data: '' },
      { path: 'var/cache/app/', type: 'dir' },
      { path: 'var/cache/app/.wh..wh..opq', data: '' },
      { path: 'var/cache/app/new', data: 'fresh\n' },
      { path: 'opt/oci/', type: 'dir' },
      { path: 'opt/oci/hello', data: 'from oci\n', mode: 0o640, uid: 33, gid: 33 },
    ],
    true,
  );
  const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
  const layerBytes = await fs.readFile(layerTar);
  const layerDigest = sha(layerBytes);
  await fs.rename(layerTar, path.join(blobs, layerDigest));
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] } }));
  await fs.writeFile(path.join(blobs, sha(config)), config);
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: `sha256:${sha(config)}`, size: config.length },
      layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: `sha256:${layerDigest}`, size: layerBytes.length }],
    }),
  );
  await fs.writeFile(path.join(blobs, sha(manifest)), manifest);
  await fs.writeFile(
    path.join(dir, 'index.json'),
    JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: `sha256:${sha(manifest)}`, size: manifest.length, platform: { architecture: 'amd64', os: 'linux' } }] }),
  );
  await fs.writeFile(path.join(dir, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
}

async function recipeFile(dir: string, layers: unknown[], extra: Record<string, unknown> = {}): Promise<string> {
  const f = path.join(dir, 'recipe.json');
  await fs.writeFile(f, JSON.stringify({ name: 'itest', version: '1', compatible: 'itest', layers, ...extra }));
  return f;
}

/** A recipe in `dir` with one dir layer `a` holding one file. */
async function oneDirRecipe(dir: string): Promise<string> {
  await fs.mkdir(path.join(dir, 'a'), { recursive: true });
  await fs.writeFile(path.join(dir, 'a/f'), 'a');
  return recipeFile(dir, [{ name: 'a', source: { type: 'dir', path: 'a' } }]);
}

async function build(recipe: string, out: string, cacheDir: string | null, epoch = 0): Promise<BuildResult> {
  const r = parseRecipe(await fs.readFile(recipe, 'utf8'), recipe, { arch: 'amd64' });
  return buildStack(r, { outDir: out, cacheDir, epoch, arch: 'amd64', uid: process.getuid?.(), progress: () => {} });
}

describe('build: real squashfs layers under an overlay', () => {
  it('dir + tar + OCI layers: files, modes, owners, symlinks, hard links, xattrs, whiteouts', async () => {
    const d = await tmpdir('sb-stack-');
    await makeBase(path.join(d, 'base'));
    await makeOci(path.join(d, 'oci'));
    await writeTar(path.join(d, 'app.tar'), [{ path: 'opt/app/run', data: 'app v1\n', mode: 0o755 }]);
    await run('zstd', ['-q', '-f', path.join(d, 'app.tar'), '-o', path.join(d, 'app.tar.zst')]);
    const recipe = await recipeFile(d, [
      { name: 'base', source: { type: 'dir', path: 'base' } },
      { name: 'oci', source: { type: 'oci', path: 'oci' } },
      { name: 'app', source: { type: 'tar', path: 'app.tar.zst' } },
    ]);
    const r = await build(recipe, path.join(d, 'out'), null);
    expect(r.layers.map((l) => l.name)).toEqual(['base', 'oci', 'app']);
    // base has a hard link: packed through tar2sqfs so the link survives
    expect(r.layers[0].builder).toBe('tar2sqfs');
    for (const l of r.layers) expect(path.basename(l.file)).toBe(`${l.digest}.sqfs`);
    const manifest = await fs.readFile(path.join(d, 'out/manifest'), 'utf8');
    expect(manifest.split('\n').filter((x) => x.startsWith('layer ')).length).toBe(3);

    const m = await mountStack(r, path.join(d, 'mnt'));
    expect(await fs.readFile(path.join(m, 'etc/hostname'), 'utf8')).toBe('node\n');
    expect(await fs.readFile(path.join(m, 'etc/.hidden'), 'utf8')).toBe('dot\n');
    expect(await fs.readlink(path.join(m, 'etc/hostname.link'))).toBe('hostname');
    const tool = await fs.stat(path.join(m, 'usr/bin/tool'));
    expect(tool.mode & 0o7777).toBe(0o4755);
    const link = await fs.stat(path.join(m, 'usr/bin/tool-hardlink'));
    expect(link.nlink).toBe(2);
    const lowerTool = await fs.stat(path.join(d, 'mnt/l0/usr/bin/tool'));
    const lowerLink = await fs.stat(path.join(d, 'mnt/l0/usr/bin/tool-hardlink'));
    expect(lowerTool.ino).toBe(lowerLink.ino);
    const secret = await fs.stat(path.join(m, 'etc/secret'));
    expect([secret.uid, secret.gid, secret.mode & 0o777]).toEqual([1000, 1001, 0o600]);
    expect(await getXattr(path.join(m, 'etc/hostname'), 'user.stackboot')).toBe('kept');
    expect(await getXattr(path.join(d, 'mnt/l0/usr/bin/tool'), 'security.capability')).not.toBeNull();
    // the OCI layer's whiteout hides the base file; the opaque dir hides the old content
    await expect(fs.stat(path.join(m, 'etc/removed'))).rejects.toThrow(/ENOENT/);
    expect((await fs.readdir(path.join(m, 'var/cache/app'))).sort()).toEqual(['new']);
    const oci = await fs.stat(path.join(m, 'opt/oci/hello'));
    expect([oci.uid, oci.gid, oci.mode & 0o777]).toEqual([33, 33, 0o640]);
    expect(await fs.readFile(path.join(m, 'opt/app/run'), 'utf8')).toBe('app v1\n');
    // every mtime is the epoch
    expect(Math.floor(oci.mtimeMs / 1000)).toBe(0);
  });

  it('is reproducible: two folders, two times, touched inputs, no cache → identical digests and manifest', async () => {
    const d = await tmpdir('sb-repro-');
    await makeBase(path.join(d, 'base'));
    await fs.mkdir(path.join(d, 'plain/etc'), { recursive: true });
    await fs.writeFile(path.join(d, 'plain/etc/motd'), 'hi\n');
    const recipe = await recipeFile(d, [
      { name: 'base', source: { type: 'dir', path: 'base' } },
      { name: 'plain', source: { type: 'dir', path: 'plain' }, owner: 'root' },
    ]);
    const r1 = await build(recipe, path.join(d, 'out1'), null, 1700000000);
    await new Promise((res) => setTimeout(res, 1100));
    const later = new Date();
    for (const f of ['base/etc/hostname', 'plain/etc/motd', 'plain/etc']) await fs.utimes(path.join(d, f), later, later);
    const r2 = await build(recipe, path.join(d, 'out2'), null, 1700000000);
    expect(r2.layers.map((l) => l.digest)).toEqual(r1.layers.map((l) => l.digest));
    expect(await fs.readFile(r2.manifestFile, 'utf8')).toBe(await fs.readFile(r1.manifestFile, 'utf8'));
    expect(r2.stackId).toBe(r1.stackId);
    expect(r1.layers[1].builder).toBe('gensquashfs');
  });

  it('a dir source that is a symlink to a folder builds that folder', async () => {
    const d = await tmpdir('sb-symroot-');
    await fs.mkdir(path.join(d, 'real/etc'), { recursive: true });
    await fs.writeFile(path.join(d, 'real/etc/x'), 'x');
    await fs.symlink('real', path.join(d, 'link'));
    const viaLink = await build(await recipeFile(d, [{ name: 'a', source: { type: 'dir', path: 'link' } }]), path.join(d, 'o1'), null);
    const direct = await build(await recipeFile(d, [{ name: 'a', source: { type: 'dir', path: 'real' } }]), path.join(d, 'o2'), null);
    expect(viaLink.layers[0].digest).toBe(direct.layers[0].digest);
  });

  it('caches: an unchanged layer is not compressed again; a changed one is', async () => {
    const d = await tmpdir('sb-cache-');
    await fs.mkdir(path.join(d, 'a'), { recursive: true });
    await fs.mkdir(path.join(d, 'b'), { recursive: true });
    await fs.writeFile(path.join(d, 'a/f'), 'a');
    await fs.writeFile(path.join(d, 'b/f'), 'b');
    const recipe = await recipeFile(d, [
      { name: 'a', source: { type: 'dir', path: 'a' } },
      { name: 'b', source: { type: 'dir', path: 'b' } },
    ]);
    const cache = path.join(d, 'cache');
    const r1 = await build(recipe, path.join(d, 'o1'), cache);
    expect(r1.layers.map((l) => l.cached)).toEqual([false, false]);
    const r2 = await build(recipe, path.join(d, 'o2'), cache);
    expect(r2.layers.map((l) => l.cached)).toEqual([true, true]);
    expect(r2.stackId).toBe(r1.stackId);
    await fs.writeFile(path.join(d, 'b/f'), 'B');
    const r3 = await build(recipe, path.join(d, 'o3'), cache);
    expect(r3.layers.map((l) => l.cached)).toEqual([true, false]);
    expect(r3.layers[0].digest).toBe(r1.layers[0].digest);
    expect(r3.layers[1].digest).not.toBe(r1.layers[1].digest);
  });

  it('a cached layer written into through an output (a hard link) is hashed, found bad, and built again', async () => {
    const d = await tmpdir('sb-cache-bad-');
    const recipe = await oneDirRecipe(d);
    const cache = path.join(d, 'cache');
    const r1 = await build(recipe, path.join(d, 'o1'), cache);
    const sha = async (f: string) => createHash('sha256').update(await fs.readFile(f)).digest('hex');
    // a write into the first output reaches the cache's file (the same inode)
    await fs.appendFile(r1.layers[0].file, 'garbage');
    const r2 = await build(recipe, path.join(d, 'o2'), cache);
    expect(r2.layers[0]).toMatchObject({ digest: r1.layers[0].digest, cached: false, size: r1.layers[0].size });
    expect(await sha(r2.layers[0].file)).toBe(r1.layers[0].digest);
    // rebuilt into the cache too: the next build is served from it, and right
    const r3 = await build(recipe, path.join(d, 'o2'), cache);
    expect(r3.layers[0].cached).toBe(true);
    expect(await sha(r3.layers[0].file)).toBe(r1.layers[0].digest);
    // a touch without a change: hashed once, found good, served
    await fs.utimes(r3.layers[0].file, new Date(), new Date(Date.now() + 5000));
    const r4 = await build(recipe, path.join(d, 'o4'), cache);
    expect(r4.layers[0].cached).toBe(true);
  });

  it("refuses an output folder of other files (its manifest would be overwritten) or an empty name; rebuilds into its own", async () => {
    const d = await tmpdir('sb-outdir-');
    const recipe = await oneDirRecipe(d);
    const other = path.join(d, 'docs');
    await fs.mkdir(other);
    await fs.writeFile(path.join(other, 'manifest'), 'my shipping list\n');
    await fs.writeFile(path.join(other, 'manifest.sig'), 'mine\n');
    await expect(build(recipe, other, null)).rejects.toMatchObject({ code: 'USAGE', message: expect.stringMatching(/docs is a folder of other files, not a build output/) });
    expect(await fs.readFile(path.join(other, 'manifest'), 'utf8')).toBe('my shipping list\n');
    expect(await fs.readdir(other)).toEqual(['manifest', 'manifest.sig']);
    await expect(build(recipe, '', null)).rejects.toThrow(/the output folder is an empty name/);
    await fs.writeFile(path.join(d, 'file'), 'x');
    await expect(build(recipe, path.join(d, 'file'), null)).rejects.toThrow(/exists and is not a folder/);
    // an earlier output of its own is built over
    const out = path.join(d, 'out');
    await build(recipe, out, null);
    const again = await build(recipe, out, null);
    expect(again.layers[0].cached).toBe(false);
  });

  it('refuses a dir source that holds the output or the cache folder (the layer would take in the stack itself)', async () => {
    const d = await tmpdir('sb-inside-');
    await fs.writeFile(path.join(d, 'f'), 'x');
    const recipe = await recipeFile(d, [{ name: 'all', source: { type: 'dir', path: '.' } }]);
    await expect(build(recipe, path.join(d, 'out'), null)).rejects.toMatchObject({
      code: 'USAGE',
      message: `${recipe}: layers[0] (all): the output folder ${path.join(d, 'out')} is inside its source folder ${d}: the layer would take in the stack's own files; give a folder outside it`,
    });
    await expect(fs.stat(path.join(d, 'out'))).rejects.toThrow(/ENOENT/);
    // through a symlink to the source too, and for the cache folder
    await fs.symlink(d, `${d}-link`);
    await expect(build(recipe, path.join(`${d}-link`, 'sub', 'out'), null)).rejects.toThrow(/the output folder .* is inside its source folder/);
    await expect(build(recipe, path.join(os.tmpdir(), `${path.basename(d)}-out`), path.join(d, '.cache'))).rejects.toThrow(/layers\[0\] \(all\): the cache folder .*\.cache is inside its source folder/);
    await fs.rm(`${d}-link`);
  });

  it('a failed build leaves no layer under a final or temporary name', async () => {
    const d = await tmpdir('sb-fail-');
    await writeTar(path.join(d, 'evil.tar'), [
      { path: 'ok', data: 'fine' },
      { path: 'lnk', type: 'symlink', linkpath: '/etc' },
      { path: 'lnk/passwd', data: 'pwned' },
    ]);
    const recipe = await recipeFile(d, [{ name: 'evil', source: { type: 'tar', path: 'evil.tar' } }]);
    await expect(build(recipe, path.join(d, 'out'), null)).rejects.toThrow(/through the symlink lnk/);
    // nor the empty folders it made (the output folder was new: it is gone)
    await expect(fs.stat(path.join(d, 'out'))).rejects.toThrow(/ENOENT/);
    // an output folder that was there stays, without an empty layers/ in it
    await fs.mkdir(path.join(d, 'out2'));
    await expect(build(recipe, path.join(d, 'out2'), null)).rejects.toThrow(/through the symlink lnk/);
    expect(await fs.readdir(path.join(d, 'out2'))).toEqual([]);
  });

  it('reads docker save archives too', async () => {
    const d = await tmpdir('sb-docker-');
    const img = path.join(d, 'img');
    await fs.mkdir(path.join(img, 'l1'), { recursive: true });
    await fs.mkdir(path.join(img, 'l2'), { recursive: true });
    await writeTar(path.join(img, 'l1/layer.tar'), [{ path: 'etc/a', data: 'a' }, { path: 'etc/b', data: 'b' }]);
    await writeTar(path.join(img, 'l2/layer.tar'), [{ path: 'etc/.wh.a', data: '' }]);
    await fs.writeFile(path.join(img, 'manifest.json'), JSON.stringify([{ Config: 'c.json', RepoTags: ['x:1'], Layers: ['l1/layer.tar', 'l2/layer.tar'] }]));
    await run('tar', ['-C', img, '-cf', path.join(d, 'image.tar'), '.']);
    const recipe = await recipeFile(d, [{ name: 'img', source: { type: 'oci', path: 'image.tar' } }]);
    const r = await build(recipe, path.join(d, 'out'), null);
    expect(r.layers.map((l) => l.name)).toEqual(['img-1', 'img-2']);
    const m = await mountStack(r, path.join(d, 'mnt'));
    expect((await fs.readdir(path.join(m, 'etc'))).sort()).toEqual(['b']);
  });
});

describe('build: OCI sources are checked', () => {
  it('a blob that does not hash to its digest is refused, and never cached under the genuine name', async () => {
    const d = await tmpdir('sb-oci-bad-');
    await makeOci(path.join(d, 'oci'));
    const index = JSON.parse(await fs.readFile(path.join(d, 'oci', 'index.json'), 'utf8'));
    const manifest = JSON.parse(await fs.readFile(path.join(d, 'oci', 'blobs/sha256', index.manifests[0].digest.slice(7)), 'utf8'));
    const blob = path.join(d, 'oci', 'blobs/sha256', manifest.layers[0].digest.slice(7));
    const genuine = await fs.readFile(blob);
    await writeTar(blob, [{ path: 'etc/', type: 'dir' }, { path: 'etc/TAMPERED', data: 'x' }], true);
    const recipe = await recipeFile(d, [{ name: 'img', source: { type: 'oci', path: 'oci' } }]);
    const cache = path.join(d, 'cache');
    await expect(build(recipe, path.join(d, 'out'), cache)).rejects.toMatchObject({ code: 'VERIFY', message: expect.stringMatching(/layer img: .* hashes to sha256:[0-9a-f]{64}, not to its digest sha256:/) });
    // the genuine blob back: built from it, not served from a poisoned cache
    await fs.writeFile(blob, genuine);
    const r = await build(recipe, path.join(d, 'out'), cache);
    expect(r.layers[0].cached).toBe(false);
    const m = await mountStack(r, path.join(d, 'mnt'));
    expect((await fs.readdir(path.join(m, 'opt/oci'))).sort()).toEqual(['hello']);
    await expect(fs.stat(path.join(m, 'etc/TAMPERED'))).rejects.toThrow(/ENOENT/);
  });

  it("an image for another architecture is refused, also when it is the layout's only one", async () => {
    const d = await tmpdir('sb-oci-arch-');
    await makeOci(path.join(d, 'oci'));
    const recipe = await recipeFile(d, [{ name: 'img', source: { type: 'oci', path: 'oci' } }]);
    const r = parseRecipe(await fs.readFile(recipe, 'utf8'), recipe, { arch: 'arm64' });
    await expect(buildStack(r, { outDir: path.join(d, 'out'), cacheDir: null, epoch: 0, arch: 'arm64', uid: process.getuid?.(), progress: () => {} })).rejects.toThrow(/no image for architecture arm64 \(has amd64\)/);
    // docker save: the config's architecture
    const img = path.join(d, 'img');
    await fs.mkdir(path.join(img, 'l1'), { recursive: true });
    await writeTar(path.join(img, 'l1/layer.tar'), [{ path: 'etc/a', data: 'a' }]);
    await fs.writeFile(path.join(img, 'c.json'), JSON.stringify({ architecture: 'arm64', os: 'linux' }));
    await fs.writeFile(path.join(img, 'manifest.json'), JSON.stringify([{ Config: 'c.json', Layers: ['l1/layer.tar'] }]));
    await run('tar', ['-C', img, '-cf', path.join(d, 'image.tar'), '.']);
    const before = (await fs.readdir(os.tmpdir())).filter((n) => n.startsWith('stackboot-oci-')).length;
    const r2 = await recipeFile(d, [{ name: 'img', source: { type: 'oci', path: 'image.tar' } }]);
    await expect(build(r2, path.join(d, 'out2'), null)).rejects.toThrow(/image\.tar: the image is for arm64, not amd64/);
    // malformed: a layer that is not a path
    await fs.writeFile(path.join(img, 'manifest.json'), JSON.stringify([{ Layers: [5] }]));
    await run('tar', ['-C', img, '-cf', path.join(d, 'image.tar'), '.']);
    await expect(build(r2, path.join(d, 'out2'), null)).rejects.toMatchObject({ code: 'SOURCE', message: expect.stringMatching(/manifest\.json Layers\[0\] is not a path/) });
    // and the unpacked archive is removed after each failure
    expect((await fs.readdir(os.tmpdir())).filter((n) => n.startsWith('stackboot-oci-')).length).toBe(before);
  });
});

describe('build: run sources', () => {
  it('runs a command over the lower layers and captures the upper, whiteouts included', async () => {
    const busybox = path.resolve('.cache/targets/amd64/busybox');
    const d = await tmpdir('sb-run-');
    await fs.mkdir(path.join(d, 'root/bin'), { recursive: true });
    await fs.mkdir(path.join(d, 'root/etc'), { recursive: true });
    await fs.mkdir(path.join(d, 'root/proc'), { recursive: true });
    await fs.symlink('busybox', path.join(d, 'root/bin/sh'));
    await fs.writeFile(path.join(d, 'root/etc/old'), 'old');
    const recipe = await recipeFile(d, [
      { name: 'busybox', source: { type: 'dir', path: busybox }, owner: 'root' },
      { name: 'root', source: { type: 'dir', path: 'root' }, owner: 'root' },
      { name: 'pkgs', source: { type: 'run', command: '/bin/busybox rm /etc/old && /bin/busybox mkdir -p /opt/new && echo installed > /opt/new/f' } },
    ]);
    const cache = path.join(d, 'cache');
    const r = await build(recipe, path.join(d, 'out'), cache);
    const m = await mountStack(r, path.join(d, 'mnt'));
    await expect(fs.stat(path.join(m, 'etc/old'))).rejects.toThrow(/ENOENT/);
    expect(await fs.readFile(path.join(m, 'opt/new/f'), 'utf8')).toBe('installed\n');
    const wh = await fs.stat(path.join(d, 'mnt/l2/etc/old'));
    expect(wh.isCharacterDevice() && wh.rdev === 0).toBe(true);
    // the second build takes the run layer from the cache without running the command
    const r2 = await build(recipe, path.join(d, 'out2'), cache);
    expect(r2.layers[2]).toMatchObject({ cached: true, digest: r.layers[2].digest });
  });

  it("gives the command a clean environment: fixed variables, SOURCE_DATE_EPOCH, the recipe's env and the proxies passed, none of the host's", async () => {
    const busybox = path.resolve('.cache/targets/amd64/busybox');
    const d = await tmpdir('sb-runenv-');
    await fs.mkdir(path.join(d, 'root/bin'), { recursive: true });
    await fs.symlink('busybox', path.join(d, 'root/bin/sh'));
    const recipe = await recipeFile(d, [
      { name: 'busybox', source: { type: 'dir', path: busybox }, owner: 'root' },
      { name: 'root', source: { type: 'dir', path: 'root' }, owner: 'root' },
      { name: 'env', source: { type: 'run', command: '/bin/busybox env | /bin/busybox sort > /env.txt', env: { APP: 'x' } } },
    ]);
    process.env.SB_HOST_ONLY = 'leaked';
    try {
      const r = parseRecipe(await fs.readFile(recipe, 'utf8'), recipe, { arch: 'amd64' });
      const res = await buildStack(r, { outDir: path.join(d, 'out'), cacheDir: null, epoch: 1700000000, arch: 'amd64', uid: 0, runEnv: { http_proxy: 'http://proxy:3128' }, progress: () => {} });
      const m = await mountStack(res, path.join(d, 'mnt'));
      const env = (await fs.readFile(path.join(m, 'env.txt'), 'utf8')).trim().split('\n').filter((l) => !/^(PWD|SHLVL|_)=/.test(l));
      expect(env).toEqual([
        'APP=x',
        'DEBIAN_FRONTEND=noninteractive',
        'HOME=/root',
        'LANG=C.UTF-8',
        'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
        'SOURCE_DATE_EPOCH=1700000000',
        'http_proxy=http://proxy:3128',
      ]);
    } finally {
      delete process.env.SB_HOST_ONLY;
    }
  });

  it('refuses without root, saying why', async () => {
    await expect(runOverLayers({ name: 'pkgs', lowers: [], command: 'true', uid: 1000 })).rejects.toThrow(/needs root/);
  });
});

describe('build: run sources see the host resolv.conf, and it does not end up in the layer', () => {
  it('binds /etc/resolv.conf read-only for the command', async () => {
    const busybox = path.resolve('.cache/targets/amd64/busybox');
    const d = await tmpdir('sb-resolv-');
    await fs.mkdir(path.join(d, 'root/bin'), { recursive: true });
    await fs.mkdir(path.join(d, 'root/etc'), { recursive: true });
    await fs.symlink('busybox', path.join(d, 'root/bin/sh'));
    const recipe = await recipeFile(d, [
      { name: 'busybox', source: { type: 'dir', path: busybox }, owner: 'root' },
      { name: 'root', source: { type: 'dir', path: 'root' }, owner: 'root' },
      { name: 'net', source: { type: 'run', command: '/bin/busybox cp /etc/resolv.conf /seen-resolv.conf' } },
    ]);
    const r = await build(recipe, path.join(d, 'out'), null);
    const m = await mountStack(r, path.join(d, 'mnt'));
    expect(await fs.readFile(path.join(m, 'seen-resolv.conf'), 'utf8')).toBe(await fs.readFile('/etc/resolv.conf', 'utf8'));
    await expect(fs.lstat(path.join(d, 'mnt/l2/etc/resolv.conf'))).rejects.toThrow(/ENOENT/);
  });
});

describe('build: trees with hard links and no xattrs go through a gensquashfs pack file', () => {
  it('keeps hard links, owners and modes, and can place the tree under a prefix', async () => {
    const d = await tmpdir('sb-pack-');
    await fs.mkdir(path.join(d, 't/bin'), { recursive: true });
    await fs.writeFile(path.join(d, 't/bin/perl'), 'perl\n');
    await fs.chmod(path.join(d, 't/bin/perl'), 0o755);
    await fs.link(path.join(d, 't/bin/perl'), path.join(d, 't/bin/perl5.36'));
    await fs.writeFile(path.join(d, 't/bin/with space'), 'x');
    await fs.chown(path.join(d, 't/bin/with space'), 7, 8);
    await fs.symlink('perl', path.join(d, 't/bin/p'));
    const recipe = await recipeFile(d, [
      { name: 'plain', source: { type: 'dir', path: 't' } },
      { name: 'under', source: { type: 'dir', path: 't', into: 'opt/x' }, owner: 'root' },
    ]);
    const r = await build(recipe, path.join(d, 'out'), null);
    expect(r.layers.map((l) => l.builder)).toEqual(['gensquashfs', 'gensquashfs']);
    const m = await mountStack(r, path.join(d, 'mnt'));
    const a = await fs.stat(path.join(d, 'mnt/l0/bin/perl'));
    const b = await fs.stat(path.join(d, 'mnt/l0/bin/perl5.36'));
    expect([a.ino === b.ino, a.nlink, a.mode & 0o777]).toEqual([true, 2, 0o755]);
    const sp = await fs.stat(path.join(m, 'bin/with space'));
    expect([sp.uid, sp.gid]).toEqual([7, 8]);
    expect(await fs.readlink(path.join(m, 'bin/p'))).toBe('perl');
    const u = await fs.stat(path.join(m, 'opt/x/bin/with space'));
    expect([u.uid, u.gid]).toEqual([0, 0]);
    expect((await fs.stat(path.join(d, 'mnt/l1/opt/x/bin/perl5.36'))).nlink).toBe(2);
  });
});

describe('build: tar sources in every compression', () => {
  it.each(['plain', 'gz', 'xz', 'zst'])('reads a %s tar', async (kind) => {
    const d = await tmpdir(`sb-tar-${kind}-`);
    await writeTar(path.join(d, 'l.tar'), [{ path: 'etc/motd', data: `hello ${kind}\n` }]);
    let file = 'l.tar';
    if (kind === 'gz') await run('gzip', ['-k', path.join(d, 'l.tar')]), (file = 'l.tar.gz');
    if (kind === 'xz') await run('xz', ['-k', path.join(d, 'l.tar')]), (file = 'l.tar.xz');
    if (kind === 'zst') await run('zstd', ['-q', path.join(d, 'l.tar')]), (file = 'l.tar.zst');
    const recipe = await recipeFile(d, [{ name: 'l', source: { type: 'tar', path: file } }]);
    const r = await build(recipe, path.join(d, 'out'), null);
    const m = await mountStack(r, path.join(d, 'mnt'));
    expect(await fs.readFile(path.join(m, 'etc/motd'), 'utf8')).toBe(`hello ${kind}\n`);
  });

  it('says so when a compressed tar is corrupt', async () => {
    const d = await tmpdir('sb-tar-bad-');
    await fs.writeFile(path.join(d, 'l.tar.xz'), Buffer.concat([Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]), Buffer.alloc(100, 7)]));
    const recipe = await recipeFile(d, [{ name: 'l', source: { type: 'tar', path: 'l.tar.xz' } }]);
    await expect(build(recipe, path.join(d, 'out'), null)).rejects.toThrow(/xz could not decompress|invalid tar/);
    // a truncated .zst: zstd's one-line reason, no progress output in the message
    const tar = path.join(d, 'big.tar');
    await writeTar(tar, [{ path: 'data', data: createHash('sha512').update('x').digest('hex').repeat(4000) }]);
    await run('zstd', ['-q', '-1', tar]);
    const zst = await fs.readFile(`${tar}.zst`);
    await fs.writeFile(path.join(d, 'cut.tar.zst'), zst.subarray(0, zst.length >> 1));
    const r2 = await recipeFile(d, [{ name: 'l', source: { type: 'tar', path: 'cut.tar.zst' } }]);
    const e = await build(r2, path.join(d, 'out2'), null).then(() => null, (x: Error) => x);
    expect(e?.message).toMatch(/zstd could not decompress .*cut\.tar\.zst: .*(premature end|error)/i);
    expect(e?.message).not.toMatch(/\r/);
  });
});

/** Every entry under `root` (itself included, as "."): type, mode, owner, size, link target and content, sorted. */
async function listTree(root: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (rel: string): Promise<void> => {
    const full = rel === '.' ? root : path.join(root, rel);
    const s = await fs.lstat(full);
    const type = s.isDirectory() ? 'd' : s.isSymbolicLink() ? 'l' : s.isFile() ? 'f' : s.isFIFO() ? 'p' : s.isSocket() ? 's' : 'c';
    const what = type === 'l' ? `-> ${await fs.readlink(full)}` : type === 'f' ? createHash('sha256').update(await fs.readFile(full)).digest('hex').slice(0, 12) : '';
    out.push([rel, type, (s.mode & 0o7777).toString(8), `${s.uid}:${s.gid}`, type === 'f' ? s.size : '', what].filter((x) => x !== '').join(' '));
    if (type === 'd') for (const n of await fs.readdir(full)) await walk(rel === '.' ? n : `${rel}/${n}`);
  };
  await walk('.');
  return out.sort();
}

describe('build: the three dir builders give the same layer for the same tree', () => {
  /** A 0700 source folder owned by 1000:1000 (as `mktemp -d` by a user makes), with relative symlinks, a fifo and a socket. */
  async function oddTree(t: string): Promise<void> {
    await fs.mkdir(path.join(t, 'lib/sub'), { recursive: true });
    await fs.writeFile(path.join(t, 'lib/sub/f'), 'f\n');
    await fs.writeFile(path.join(t, '-dash'), 'starts with a dash\n');
    await fs.chown(path.join(t, 'lib/sub/f'), 5, 6);
    await fs.symlink('../x', path.join(t, 'lib/sub/up'));
    await fs.symlink('./sub/f', path.join(t, 'lib/dot'));
    await fs.symlink('/etc/passwd', path.join(t, 'abs'));
    await run('mkfifo', [path.join(t, 'fifo')]);
    await makeSocketFile(path.join(t, 'lib/live.sock'));
    await fs.chmod(t, 0o700);
    await fs.chown(t, 1000, 1000);
  }

  it('gensquashfs -D, the pack file and GNU tar | tar2sqfs: the contents, root 0755 0:0, symlinks untouched, no sockets', async () => {
    const d = await tmpdir('sb-agree-');
    await oddTree(path.join(d, 't'));
    // the same tree, a copy with a hard link (pack file) and one with an xattr (tar path)
    await run('cp', ['-a', path.join(d, 't'), path.join(d, 'h')]);
    await fs.link(path.join(d, 'h/lib/sub/f'), path.join(d, 'h/lib/sub/f2'));
    await run('cp', ['-a', path.join(d, 'h'), path.join(d, 'x')]);
    await run('setfattr', ['-n', 'user.k', '-v', 'v', path.join(d, 'x/-dash')]);
    const recipe = await recipeFile(d, [
      { name: 'direct', source: { type: 'dir', path: 't' } },
      { name: 'pack', source: { type: 'dir', path: 'h' } },
      { name: 'tar', source: { type: 'dir', path: 'x' } },
      { name: 'pack-into', source: { type: 'dir', path: 'h', into: 'opt/app' } },
      { name: 'tar-into', source: { type: 'dir', path: 'x', into: 'opt/app' } },
    ]);
    const notes: string[] = [];
    const r = parseRecipe(await fs.readFile(recipe, 'utf8'), recipe, { arch: 'amd64' });
    const res = await buildStack(r, { outDir: path.join(d, 'out'), cacheDir: null, epoch: 0, arch: 'amd64', uid: 0, progress: (e) => e.note && notes.push(`${e.task}: ${e.note}`) });
    // a tree with a socket never goes to gensquashfs -D (which would keep it)
    expect(res.layers.map((l) => l.builder)).toEqual(['gensquashfs', 'gensquashfs', 'tar2sqfs', 'gensquashfs', 'tar2sqfs']);
    expect(notes).toContain('compress direct: 1 socket(s) left out (a layer holds no sockets)');
    const lists: Record<string, string[]> = {};
    for (const l of res.layers) {
      const mnt = path.join(d, 'mnt', l.name);
      await mountSquashfs(l.file, mnt);
      mounted.push(mnt);
      lists[l.name] = await listTree(mnt);
    }
    const noLink = (xs: string[]) => xs.filter((x) => !x.startsWith('lib/sub/f2 '));
    expect(lists.direct).toContain('. d 755 0:0');
    expect(lists.direct).toContain('lib/sub/up l 777 0:0 -> ../x');
    expect(lists.direct).toContain('lib/dot l 777 0:0 -> ./sub/f');
    expect(lists.direct.some((x) => x.includes('live.sock'))).toBe(false);
    expect(noLink(lists.pack)).toEqual(lists.direct);
    expect(noLink(lists.tar)).toEqual(lists.direct);
    // under a prefix: its folders 0755 0:0, the tree below the same (links not rewritten)
    const under = (xs: string[]) => noLink(xs.filter((x) => /^opt\/app[ /]/.test(x)).map((x) => (x.startsWith('opt/app ') ? `.${x.slice(7)}` : x.slice(8))));
    for (const n of ['pack-into', 'tar-into']) {
      expect(lists[n].filter((x) => !x.startsWith('opt/app/'))).toEqual(['. d 755 0:0', 'opt d 755 0:0', 'opt/app d 755 0:0']);
      expect(under(lists[n]).sort()).toEqual(lists.direct);
    }
  });
});

describe('build: OCI whiteouts of the same layer, and layer names', () => {
  it('a whiteout hides the lower file only: the layer\'s own folder of that name is opaque, its own file stays', async () => {
    const d = await tmpdir('sb-wh-same-');
    const img = path.join(d, 'img');
    await fs.mkdir(path.join(img, 'l1'), { recursive: true });
    await fs.mkdir(path.join(img, 'l2'), { recursive: true });
    await writeTar(path.join(img, 'l1/layer.tar'), [{ path: 'd/old', data: 'old' }, { path: 'f', data: 'old' }, { path: 'e/old', data: 'old' }]);
    // children before their whiteout: the folder is emitted after what is in it
    await writeTar(path.join(img, 'l2/layer.tar'), [{ path: 'd/new', data: 'new' }, { path: '.wh.d', data: '' }, { path: '.wh.f', data: '' }, { path: 'f', data: 'new' }, { path: '.wh.e', data: '' }]);
    await fs.writeFile(path.join(img, 'manifest.json'), JSON.stringify([{ Layers: ['l1/layer.tar', 'l2/layer.tar'] }]));
    await run('tar', ['-C', img, '-cf', path.join(d, 'image.tar'), '.']);
    const r = await build(await recipeFile(d, [{ name: 'img', source: { type: 'oci', path: 'image.tar' } }]), path.join(d, 'out'), null);
    const m = await mountStack(r, path.join(d, 'mnt'));
    expect(await fs.readdir(path.join(m, 'd'))).toEqual(['new']);
    expect(await fs.readFile(path.join(m, 'f'), 'utf8')).toBe('new');
    expect((await fs.readdir(m)).sort()).toEqual(['d', 'f']);
  });

  it('an image whose layer names would pass 64 characters is refused before any layer is compressed', async () => {
    const d = await tmpdir('sb-oci-name-');
    const img = path.join(d, 'img');
    await fs.mkdir(path.join(img, 'l1'), { recursive: true });
    await writeTar(path.join(img, 'l1/layer.tar'), [{ path: 'a', data: 'a' }]);
    await fs.writeFile(path.join(img, 'manifest.json'), JSON.stringify([{ Layers: ['l1/layer.tar', 'l1/layer.tar'] }]));
    const name = 'n'.repeat(63);
    const recipe = await recipeFile(d, [{ name, source: { type: 'oci', path: 'img' } }]);
    await expect(build(recipe, path.join(d, 'out'), null)).rejects.toMatchObject({
      code: 'RECIPE',
      message: expect.stringMatching(new RegExp(`recipe\\.json: layers\\[0\\]\\.name: its image has 2 layers, and the name ${name}-1 of one is not a layer name`)),
    });
    // nothing compressed, and no empty output folder left
    await expect(fs.stat(path.join(d, 'out'))).rejects.toThrow(/ENOENT/);
  });
});
