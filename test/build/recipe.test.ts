import { describe, expect, it } from 'vitest';
import { parseRecipe } from '../../src/build/recipe.js';

const F = '/x/images/demo/recipe.json';
const ok = { name: 'demo', version: '1', compatible: 'c', layers: [{ name: 'base', source: { type: 'dir', path: 'rootfs' } }] };
const p = (o: unknown, vars?: Record<string, string>) => parseRecipe(JSON.stringify(o), F, vars);

describe('recipe', () => {
  it('fills defaults: zstd level 3, 128 KiB blocks, owner keep', () => {
    const r = p(ok);
    expect(r.compression).toEqual({ algorithm: 'zstd', level: 3 });
    expect(r.blockSize).toBe(131072);
    expect(r.layers[0]).toEqual({ name: 'base', source: { type: 'dir', path: '/x/images/demo/rootfs' }, owner: 'keep', devices: false });
  });

  it('keeps valid boot settings as text, and lets a layer be called <name>-<n> when <name> is no OCI layer', () => {
    const r = p({ ...ok, boot: { TRIES: 5, VERIFY: 'sha256', STORES: 'nvme0n1 mmcblk0' }, layers: [ok.layers[0], { name: 'base-2', source: { type: 'tar', path: 't.tar' } }] });
    expect(r.boot).toEqual({ TRIES: '5', VERIFY: 'sha256', STORES: 'nvme0n1 mmcblk0' });
    expect(r.layers.map((l) => l.name)).toEqual(['base', 'base-2']);
  });

  it('keeps the ref of an OCI source', () => {
    const r = p({ ...ok, layers: [{ name: 'img', source: { type: 'oci', path: 'layout', ref: 'v2' } }] });
    expect(r.layers[0].source).toEqual({ type: 'oci', path: '/x/images/demo/layout', ref: 'v2' });
  });

  it('substitutes ${arch} and ${recipeDir}', () => {
    const r = p({ ...ok, layers: [{ name: 'bb', source: { type: 'dir', path: '${recipeDir}/../t/${arch}', into: 'usr/lib/x' } }] }, { arch: 'arm64' });
    expect(r.layers[0].source).toEqual({ type: 'dir', path: '/x/images/t/arm64', into: 'usr/lib/x' });
  });

  it.each([
    ['bad JSON', '{', /recipe.json: not valid JSON/],
    ['no compatible', { ...ok, compatible: undefined }, /compatible: the field is missing \(expected a compatible string without spaces\)$/],
    ['no version', { ...ok, version: undefined }, /version: the field is missing/],
    ['empty compatible', { ...ok, compatible: '' }, /compatible: expected a compatible string without spaces, got ""$/],
    ['bad OCI ref', { ...ok, layers: [{ name: 'a', source: { type: 'oci', path: 'x', ref: 'a b' } }] }, /layers\[0\]\.source\.ref: expected a tag or a sha256:<digest> without spaces/],
    ['unknown top key', { ...ok, nme: 1 }, /\(top level\)\.nme: expected one of the keys/],
    ['bad compressor', { ...ok, compression: { algorithm: 'brotli' } }, /compression\.algorithm: expected one of zstd, xz, gzip, lz4, lzo, got "brotli"/],
    ['zstd level too high', { ...ok, compression: { algorithm: 'zstd', level: 30 } }, /compression\.level: expected an integer from 1 to 22/],
    ['level for lz4', { ...ok, compression: { algorithm: 'lz4', level: 3 } }, /compression\.level: expected no level for lz4/],
    ['block size', { ...ok, blockSize: 5000 }, /blockSize: expected a power of two/],
    ['no layers', { ...ok, layers: [] }, /layers: expected a non-empty array/],
    ['bad layer name', { ...ok, layers: [{ name: 'a b', source: { type: 'dir', path: 'x' } }] }, /layers\[0\]\.name/],
    ['duplicate layer', { ...ok, layers: [ok.layers[0], ok.layers[0]] }, /layers\[1\]\.name: expected a name not used by another layer/],
    ['bad source type', { ...ok, layers: [{ name: 'a', source: { type: 'git' } }] }, /layers\[0\]\.source\.type: expected one of dir, tar, oci, run/],
    ['run at the bottom', { ...ok, layers: [{ name: 'a', source: { type: 'run', command: 'true' } }] }, /above at least one other layer/],
    ['into with ..', { ...ok, layers: [{ name: 'a', source: { type: 'dir', path: 'x', into: 'a/../b' } }] }, /into: expected a path without/],
    ['unknown var', { ...ok, layers: [{ name: 'a', source: { type: 'dir', path: '${nope}' } }] }, /expected a known variable/],
    ['bad boot key', { ...ok, boot: { tries: 3 } }, /boot\.tries: expected a boot config key \(STORES, /],
    ['unknown boot key', { ...ok, boot: { TRIEZ: 3 } }, /boot\.TRIEZ: expected a boot config key/],
    ['bad boot value', { ...ok, boot: { TRIES: 0 } }, /boot\.TRIES: expected a positive integer \(at most 1000\), got 0$/],
    ['bad boot word', { ...ok, boot: { VERIFY: 'md5 sum' } }, /boot\.VERIFY: expected size, sha256 or verity, got "md5 sum"$/],
    ['OCI layer names', { ...ok, layers: [{ name: 'img', source: { type: 'oci', path: 'i' } }, { name: 'img-2', source: { type: 'dir', path: 'x' } }] }, /layers\[1\]\.name: expected a name other than img-<number> \(the OCI layer img names its image's layers img-1, img-2, …\), got "img-2"/],
  ])('names the file and field: %s', (_n, input, re) => {
    const text = typeof input === 'string' ? input : JSON.stringify(input);
    expect(() => parseRecipe(text, F)).toThrow(re);
    try {
      parseRecipe(text, F);
    } catch (e) {
      expect((e as Error).message.startsWith(F)).toBe(true);
    }
  });
});
