import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { normalizeTarPath, planTar } from '../../src/sources/tar.js';
import { tmpdir, writeTar, type FixtureEntry } from './tarfixture.js';

const opts = { whiteouts: 'oci' as const, devices: false, owner: 'keep' as const, epoch: 7 };

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
    ['hard link out of the tree', [{ path: 'h', type: 'hardlink', linkpath: '../../etc/passwd' }], /escapes the layer root/],
    ['hard link absolute', [{ path: 'h', type: 'hardlink', linkpath: '/etc/passwd' }], /absolute path \/etc\/passwd \(outside the tree\)/],
    ['hard link to nothing', [{ path: 'h', type: 'hardlink', linkpath: 'nothere' }], /not in the archive/],
    ['device node', [{ path: 'dev/sda', type: 'block', devmajor: 8, devminor: 0 }], /device node .* does not allow devices/],
    ['long name', [{ path: `d/${'n'.repeat(300)}`, data: 'x' }], /longer than 255 bytes/],
  ])('refuses %s', async (_n, entries, re) => {
    await expect(plan(entries)).rejects.toThrow(re);
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
