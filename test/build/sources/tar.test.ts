import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { foldersAfter, normalizeTarPath, planTar, type FolderAttrs, type TarPlanOptions } from '../../../src/build/sources/tar.js';
import { rawHeader, tmpdir, writeRawTar, writeTar, type FixtureEntry } from './tarfixture.js';

const opts: TarPlanOptions = { whiteouts: 'oci', devices: false, owner: 'keep', epoch: 7 };

async function plan(entries: FixtureEntry[], o = opts) {
  const d = await tmpdir('sb-tar-');
  const f = path.join(d, 'layer.tar');
  await writeTar(f, entries);
  const p = await planTar(f, o);
  return [...p.keep.values()].map((k) => k.entry).concat([...p.before.values()].flat());
}

describe('tar source: normalisation', () => {
  it('strips ./ and trailing slashes', () => {
    expect(normalizeTarPath('./etc//passwd')).toBe('etc/passwd');
    expect(normalizeTarPath('./')).toBe('');
  });
  it.each([
    ['/etc/passwd', /absolute path/],
    ['a/../../etc', /escapes the layer root/],
    [`${'x'.repeat(256)}/f`, /longer than 255 bytes/],
  ])('refuses %s', (p, re) => {
    expect(() => normalizeTarPath(p)).toThrow(re);
  });
});

describe('tar source: OCI whiteouts', () => {
  it('turns .wh.<name> into a 0/0 char device and .wh..wh..opq into an opaque dir', async () => {
    const es = await plan([
      { path: 'etc/', type: 'dir' },
      { path: 'etc/.wh.removed', data: '' },
      { path: 'var/cache/.wh..wh..opq', data: '' },
      { path: 'opt/', type: 'dir' },
      { path: 'opt/.wh..wh..opq', data: '' },
      { path: 'opt/keep', data: 'k' },
    ]);
    const wh = es.find((e) => e.path === 'etc/removed')!;
    expect(wh).toMatchObject({ type: 'char', devmajor: 0, devminor: 0, mode: 0 });
    const opt = es.find((e) => e.path === 'opt')!;
    expect(opt.xattrs?.['trusted.overlay.opaque']?.toString()).toBe('y');
    const cache = es.find((e) => e.path === 'var/cache')!;
    expect(cache).toMatchObject({ type: 'dir' });
    expect(cache.xattrs?.['trusted.overlay.opaque']?.toString()).toBe('y');
    expect(es.some((e) => e.path.includes('.wh.'))).toBe(false);
  });

  it('refuses a whiteout that names no file (.wh., .wh.., .wh...)', async () => {
    for (const w of ['etc/.wh.', '.wh..', 'etc/.wh...']) await expect(plan([{ path: w, data: '' }])).rejects.toThrow(/UNSAFE|whiteout must name a file/);
    await expect(plan([{ path: 'etc/.wh.', data: '' }])).rejects.toMatchObject({ code: 'UNSAFE_ENTRY', message: expect.stringContaining('"etc/.wh."') });
  });

  it("hides only the lower layers' file: an entry of the same name in the layer stays, in either order, and its folder is opaque", async () => {
    for (const entries of [
      [{ path: '.wh.d', data: '' }, { path: 'd/', type: 'dir' }, { path: 'd/new', data: 'n' }, { path: 'f', data: 'mine' }, { path: '.wh.f', data: '' }],
      [{ path: 'd/', type: 'dir' }, { path: 'd/new', data: 'n' }, { path: '.wh.d', data: '' }, { path: '.wh.f', data: '' }, { path: 'f', data: 'mine' }],
    ] as FixtureEntry[][]) {
      const es = await plan(entries);
      const d = es.find((e) => e.path === 'd')!;
      expect(d.type).toBe('dir');
      expect(d.xattrs?.['trusted.overlay.opaque']?.toString()).toBe('y');
      expect(es.find((e) => e.path === 'f')).toMatchObject({ type: 'file', size: 4 });
      expect(es.filter((e) => e.type === 'char')).toEqual([]);
    }
  });

  it('makes a whited-out folder with entries below it and no entry of its own an opaque 0755 folder', async () => {
    const es = await plan([
      { path: 'd/new', data: 'n' },
      { path: '.wh.d', data: '' },
      { path: 'e/.wh..wh..opq', data: '' },
      { path: '.wh.e', data: '' },
    ]);
    for (const dir of ['d', 'e']) {
      const e = es.find((x) => x.path === dir)!;
      expect(e).toMatchObject({ type: 'dir', mode: 0o755, uid: 0, gid: 0 });
      expect(e.xattrs?.['trusted.overlay.opaque']?.toString()).toBe('y');
    }
  });

  it('keeps .wh. files as they are when the source is a plain tar', async () => {
    const es = await plan([{ path: 'etc/.wh.x', data: '' }], { ...opts, whiteouts: 'none' });
    expect(es.map((e) => e.path)).toEqual(['etc/.wh.x']);
  });

  it('keeps the last of duplicate entries and sets every mtime to the epoch', async () => {
    const es = await plan([
      { path: 'f', data: 'one' },
      { path: './f', data: 'two!' },
    ]);
    expect(es).toHaveLength(1);
    expect(es[0]).toMatchObject({ path: 'f', size: 4, mtime: 7 });
  });
});

describe('tar source: guards', () => {
  it.each<[string, FixtureEntry[], RegExp]>([
    ['dot-dot', [{ path: '../evil', data: 'x' }], /escapes the layer root/],
    ['absolute', [{ path: '/etc/shadow', data: 'x' }], /absolute path/],
    ['through a symlink', [{ path: 'lnk', type: 'symlink', linkpath: '/etc' }, { path: 'lnk/passwd', data: 'x' }], /through the symlink lnk/],
    ['hard link out of the tree', [{ path: 'h', type: 'hardlink', linkpath: '../../etc/passwd' }], /entry "h": hard link to "..\/..\/etc\/passwd": path escapes the layer root/],
    ['hard link absolute', [{ path: 'h', type: 'hardlink', linkpath: '/etc/passwd' }], /absolute path \/etc\/passwd \(outside the tree\)/],
    ['hard link to nothing', [{ path: 'h', type: 'hardlink', linkpath: 'nothere' }], /not in the archive/],
    ['device node', [{ path: 'dev/sda', type: 'block', devmajor: 8, devminor: 0 }], /device node .* does not allow devices/],
    ['long name', [{ path: `d/${'n'.repeat(300)}`, data: 'x' }], /longer than 255 bytes/],
    ['an entry under a file', [{ path: 'f', data: 'file' }, { path: 'f/x', data: 'x' }], /entry "f\/x": its parent f is a file/],
    ['an entry under a device', [{ path: 'n', type: 'char', devmajor: 0, devminor: 0 }, { path: 'n/x', data: 'x' }], /its parent n is a device/],
  ])('refuses %s', async (_n, entries, re) => {
    await expect(plan(entries)).rejects.toThrow(re);
  });

  it('refuses, in a plain tar, a folder replaced by a later file', async () => {
    const entries: FixtureEntry[] = [{ path: 'd/', type: 'dir' }, { path: 'd/x', data: 'x' }, { path: 'd', data: 'file' }];
    await expect(plan(entries, { ...opts, whiteouts: 'none' })).rejects.toThrow(/entry "d\/x": its parent d is a file in the same archive, not a folder/);
  });

  it('allows devices when the layer says so, and hard links inside the tree', async () => {
    const es = await plan(
      [
        { path: 'dev/null', type: 'char', devmajor: 1, devminor: 3 },
        { path: 'a', data: 'x' },
        { path: 'b', type: 'hardlink', linkpath: './a' },
      ],
      { ...opts, devices: true },
    );
    expect(es.find((e) => e.path === 'b')).toMatchObject({ type: 'hardlink', linkpath: 'a' });
  });
});

describe('tar source: OCI changeset rules (as umoci and container runtimes apply a layer)', () => {
  it('a file that replaces a folder of the same layer takes its earlier contents with it', async () => {
    const es = await plan([{ path: 'd/', type: 'dir' }, { path: 'd/x', data: 'x' }, { path: 'd/.wh.y', data: '' }, { path: 'd', data: 'file' }]);
    expect(es.map((e) => [e.path, e.type])).toEqual([['d', 'file']]);
  });

  it('drops whiteouts and opaque markers under a path that is a file in the layer (umoci repack), in either order', async () => {
    for (const entries of [
      [{ path: 'usr', data: 'now a file' }, { path: 'usr/.wh.bin', data: '' }, { path: 'usr/lib/.wh.x', data: '' }, { path: 'usr/.wh..wh..opq', data: '' }],
      [{ path: 'usr/.wh.bin', data: '' }, { path: 'usr/.wh..wh..opq', data: '' }, { path: 'usr', data: 'now a file' }],
      [{ path: 'usr/.wh.bin', data: '' }, { path: 'usr', type: 'symlink', linkpath: 'opt' }],
    ] as FixtureEntry[][]) {
      const es = await plan(entries);
      expect(es.map((e) => e.path)).toEqual(['usr']);
      expect(es[0].xattrs?.['trusted.overlay.opaque']).toBeUndefined();
    }
  });

  it('a folder made again after a file took its path is opaque (the lower folder was deleted)', async () => {
    const es = await plan([{ path: 'd', data: 'f' }, { path: 'd/', type: 'dir' }, { path: 'd/n', data: 'n' }]);
    const d = es.find((e) => e.path === 'd')!;
    expect(d.type).toBe('dir');
    expect(d.xattrs?.['trusted.overlay.opaque']?.toString()).toBe('y');
    expect(es.find((e) => e.path === 'd/n')).toMatchObject({ type: 'file' });
  });

  it('still refuses an entry below a file that stays a file', async () => {
    await expect(plan([{ path: 'f', data: 'file' }, { path: 'f/x', data: 'x' }])).rejects.toThrow(/entry "f\/x": its parent f is a file/);
  });
});

describe('tar source: folders an OCI layer needs but lacks', () => {
  it('take the mode and owner the lower layers give them, and the next layer sees them', async () => {
    const d = await tmpdir('sb-tar-');
    const f = path.join(d, 'layer.tar');
    await writeTar(f, [{ path: 'srv/data/b', data: 'b' }, { path: 'etc/.wh.gone', data: '' }]);
    const lowerFolders: FolderAttrs = new Map([['srv', { mode: 0o750, uid: 1000, gid: 1001 }], ['etc', { mode: 0o711, uid: 0, gid: 0 }], ['gone', { mode: 0o755, uid: 0, gid: 0 }]]);
    const p = await planTar(f, { ...opts, lowerFolders });
    const made = p.before.get(0)!;
    // srv/data is not in the lower layers: left to tar2sqfs (0755 0:0)
    expect(made.map((e) => [e.path, e.mode, e.uid, e.gid])).toEqual([['etc', 0o711, 0, 0], ['srv', 0o750, 1000, 1001]]);
    const next = foldersAfter(lowerFolders, p);
    expect(next.get('srv')).toEqual({ mode: 0o750, uid: 1000, gid: 1001 });
    expect(next.get('srv/data')).toEqual({ mode: 0o755, uid: 0, gid: 0 });
    // owner "root": the mode stays, the owner is 0:0
    const r = await planTar(f, { ...opts, owner: 'root', lowerFolders });
    expect(r.before.get(0)!.find((e) => e.path === 'srv')).toMatchObject({ mode: 0o750, uid: 0, gid: 0 });
  });
});

describe('tar source: what the reader refuses or reads from raw headers', () => {
  async function planRaw(entries: { header: Buffer; data?: Buffer }[], o = opts) {
    const d = await tmpdir('sb-tarraw-');
    const f = path.join(d, 'raw.tar');
    await writeRawTar(f, entries);
    const p = await planTar(f, o);
    return [...p.keep.values()].map((k) => k.entry);
  }

  it('reads the device numbers of a GNU-format header (they were read as 0:0, an overlay whiteout)', async () => {
    const es = await planRaw([{ header: rawHeader({ name: 'dev/null', type: '3', magic: 'gnu', devmajor: 1, devminor: 3 }) }, { header: rawHeader({ name: 'dev/sda', type: '4', magic: 'gnu', devmajor: 8, devminor: 0 }) }], { ...opts, devices: true });
    expect(es.find((e) => e.path === 'dev/null')).toMatchObject({ type: 'char', devmajor: 1, devminor: 3 });
    expect(es.find((e) => e.path === 'dev/sda')).toMatchObject({ type: 'block', devmajor: 8, devminor: 0 });
    await expect(planRaw([{ header: rawHeader({ name: 'dev/null', type: '3', magic: 'gnu', devmajor: 1, devminor: 3 }) }])).rejects.toThrow(/device node \(char 1:3\) in a layer that does not allow devices/);
  });

  it('reads a base-256 owner (GNU tar, Go and star write them for large ids)', async () => {
    const uid = Buffer.from([0x80, 0, 0, 0, 0, 0x01, 0x86, 0xa0]); // 100000
    const es = await planRaw([{ header: rawHeader({ name: 'f', type: '0', uid }) }]);
    expect(es[0]).toMatchObject({ path: 'f', uid: 100000 });
  });

  it.each([
    ['Z', /unknown type "Z"/],
    ['D', /GNU incremental dump directory \(D\)/],
    ['M', /GNU multi-volume continuation \(M\)/],
    ['V', /GNU volume label \(V\)/],
  ])('refuses the layer for an entry of type %s (it was dropped without a word)', async (type, re) => {
    const data = Buffer.from('x\0');
    const run = planRaw([{ header: rawHeader({ name: 'a', type: '0', size: 1 }), data: Buffer.from('a') }, { header: rawHeader({ name: 'odd', type, size: data.length }), data }]);
    await expect(run).rejects.toMatchObject({ code: 'UNSAFE_ENTRY', message: expect.stringMatching(/entry "odd": unsupported entry type/) });
    await expect(run).rejects.toThrow(re);
  });

  it('refuses a name with a NUL byte (it built a file named up to the NUL)', async () => {
    const rec = (k: string, v: string) => {
      const body = ` ${k}=${v}\n`;
      let n = body.length + 1;
      while (String(n).length + body.length !== n) n = String(n).length + body.length;
      return Buffer.from(`${n}${body}`, 'utf8');
    };
    const pax = rec('path', 'etc/pass\0wd');
    await expect(planRaw([{ header: rawHeader({ name: 'PaxHeader', type: 'x', size: pax.length, magic: 'ustar' }), data: pax }, { header: rawHeader({ name: 'etc/pass', type: '0', magic: 'ustar' }) }])).rejects.toThrow(/holds a NUL byte/);
    const long = Buffer.from('a/long\0name\0');
    await expect(planRaw([{ header: rawHeader({ name: '././@LongLink', type: 'L', size: long.length }), data: long }, { header: rawHeader({ name: 'a/long', type: '0' }) }])).rejects.toThrow(/holds a NUL byte/);
  });

  it('refuses a damaged header (wrong checksum) and a truncated archive', async () => {
    const h = rawHeader({ name: 'f', type: '0', size: 3 });
    h[0] = 0x67;
    await expect(planRaw([{ header: h, data: Buffer.from('abc') }])).rejects.toThrow(/wrong checksum/);
    const d = await tmpdir('sb-tarraw-');
    const f = path.join(d, 'cut.tar');
    await (await import('node:fs')).promises.writeFile(f, Buffer.concat([rawHeader({ name: 'f', type: '0', size: 1000 }), Buffer.alloc(600)]));
    await expect(planTar(f, opts)).rejects.toThrow(/invalid tar: it ends inside an entry/);
  });
});
