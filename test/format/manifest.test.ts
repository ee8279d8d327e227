import { describe, expect, it } from 'vitest';
import { missingLayers, parseManifest, serializeManifest, stackId, type Manifest } from '../../src/format/manifest.js';

const d = (c: string) => c.repeat(64);
const m: Manifest = {
  name: 'demo',
  version: '1.2',
  compatible: 'stackboot-demo',
  created: 1763683200,
  compression: 'zstd',
  layers: [
    { digest: d('a'), size: 4096, name: 'base' },
    { digest: d('b'), size: 8192, name: 'app' },
  ],
};

describe('manifest', () => {
  it('serialises in the line format busybox sh reads', () => {
    expect(serializeManifest(m)).toBe(
      `stackboot-manifest 1\nname demo\nversion 1.2\ncompatible stackboot-demo\ncreated 1763683200\ncompression zstd\nlayer sha256:${d('a')} 4096 base\nlayer sha256:${d('b')} 8192 app\n`,
    );
  });

  it('round-trips, keeping unknown keys so the stack id is stable', () => {
    const text = serializeManifest({ ...m, extra: [['future', 'x']] });
    const back = parseManifest(text);
    expect(back.layers).toEqual(m.layers);
    expect(back.extra).toEqual([['future', 'x']]);
    expect(serializeManifest(back)).toBe(text);
    expect(stackId(text)).toMatch(/^[0-9a-f]{64}$/);
  });

  it.each([
    ['no magic', 'name x\n', /not a stackboot manifest/],
    ['bad digest', `stackboot-manifest 1\nname a\nversion 1\ncompatible c\ncreated 0\nlayer sha256:xyz 1 base\n`, /bad layer digest/],
    ['bad size', `stackboot-manifest 1\nname a\nversion 1\ncompatible c\ncreated 0\nlayer sha256:${d('a')} -1 base\n`, /bad layer size/],
    ['no layers', `stackboot-manifest 1\nname a\nversion 1\ncompatible c\ncreated 0\n`, /no layers/],
    ['missing name', `stackboot-manifest 1\nversion 1\ncompatible c\ncreated 0\nlayer sha256:${d('a')} 1 base\n`, /missing "name"/],
  ])('refuses %s', (_n, text, re) => {
    expect(() => parseManifest(text)).toThrow(re);
  });

  it('refuses values with spaces and duplicate layer names on write', () => {
    expect(() => serializeManifest({ ...m, name: 'a b' })).toThrow(/without spaces/);
    expect(() => serializeManifest({ ...m, layers: [m.layers[0], { ...m.layers[1], name: 'base' }] })).toThrow(/appears twice/);
  });

  it('lists the layers a store lacks', () => {
    expect(missingLayers(m, [d('a')]).map((l) => l.name)).toEqual(['app']);
  });
});

describe('manifest: the stack kernel', () => {
  const withKernel: Manifest = {
    ...m,
    kernel: { release: '6.12.48+deb12-amd64', path: '/boot/vmlinuz-6.12.48+deb12-amd64', digest: d('c'), size: 9000000 },
    initrd: { path: '/boot/stackboot/initrd.img', digest: d('e'), size: 4000000 },
    fdt: { path: '/boot/dtb/board.dtb', digest: d('f'), size: 60000 },
  };

  it('writes kernel, initrd and fdt lines before the layers and reads them back', () => {
    const text = serializeManifest(withKernel);
    expect(text).toContain(`\nkernel 6.12.48+deb12-amd64 /boot/vmlinuz-6.12.48+deb12-amd64 sha256:${d('c')} 9000000\ninitrd /boot/stackboot/initrd.img sha256:${d('e')} 4000000\nfdt /boot/dtb/board.dtb sha256:${d('f')} 60000\nlayer `);
    const back = parseManifest(text);
    expect(back.kernel).toEqual(withKernel.kernel);
    expect(back.initrd).toEqual(withKernel.initrd);
    expect(back.fdt).toEqual(withKernel.fdt);
    expect(back.extra).toEqual([]);
    expect(serializeManifest(back)).toBe(text);
  });

  it('a manifest without a kernel has none (the boot partition kernel runs it)', () => {
    expect(parseManifest(serializeManifest(m)).kernel).toBeUndefined();
  });

  const base = `stackboot-manifest 1\nname a\nversion 1\ncompatible c\ncreated 0\nlayer sha256:${d('a')} 1 base\n`;
  it.each([
    ['a kernel without an initrd', `kernel 6.1 /boot/vmlinuz sha256:${d('c')} 10\n`, /without an initrd/],
    ['an initrd without a kernel', `initrd /boot/i sha256:${d('c')} 10\n`, /initrd line without a kernel/],
    ['a relative kernel path', `kernel 6.1 boot/vmlinuz sha256:${d('c')} 10\ninitrd /i sha256:${d('c')} 1\n`, /bad kernel path/],
    ['a path with ..', `kernel 6.1 /boot/../etc/shadow sha256:${d('c')} 10\ninitrd /i sha256:${d('c')} 1\n`, /bad kernel path/],
    ['a short digest', `kernel 6.1 /boot/vmlinuz sha256:abc 10\ninitrd /i sha256:${d('c')} 1\n`, /bad kernel digest/],
    ['a zero size', `kernel 6.1 /boot/vmlinuz sha256:${d('c')} 0\ninitrd /i sha256:${d('c')} 1\n`, /bad kernel size/],
    ['a missing release', `kernel /boot/vmlinuz sha256:${d('c')} 10\ninitrd /i sha256:${d('c')} 1\n`, /bad kernel release|expected "kernel/],
    ['two kernels', `kernel 6.1 /v sha256:${d('c')} 10\nkernel 6.2 /w sha256:${d('c')} 10\ninitrd /i sha256:${d('c')} 1\n`, /second kernel/],
  ])('refuses %s', (_n, lines, re) => {
    expect(() => parseManifest(base.replace('layer ', `${lines}layer `))).toThrow(re);
  });

  it('refuses to write a kernel without its initrd', () => {
    expect(() => serializeManifest({ ...withKernel, initrd: undefined })).toThrow(/needs its initrd/);
  });
});
