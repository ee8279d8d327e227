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
