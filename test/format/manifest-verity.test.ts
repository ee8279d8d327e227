/** The manifest's `verity` lines: serialised after their layer, parsed back, and the checks the boot repeats. */
import { describe, expect, it } from 'vitest';
import { parseManifest, serializeManifest, type Manifest } from '../../src/format/manifest.js';

const d = (c: string) => c.repeat(64);
const v = (over: Partial<{ root: string; salt: string; dataBytes: number; hashOffset: number }> = {}) => ({ root: d('1'), salt: d('2'), dataBytes: 8192, hashOffset: 8192, ...over });
const m: Manifest = {
  name: 'demo',
  version: '1.2',
  compatible: 'stackboot-demo',
  created: 0,
  layers: [
    { digest: d('a'), size: 12288, name: 'base', verity: v() },
    { digest: d('b'), size: 12288, name: 'app', verity: v({ root: d('3') }) },
  ],
};
const head = 'stackboot-manifest 1\nname demo\nversion 1.2\ncompatible stackboot-demo\ncreated 0\n';

describe('manifest verity lines', () => {
  it('follow their layer line and round-trip', () => {
    const text = serializeManifest(m);
    expect(text).toBe(
      head +
        `layer sha256:${d('a')} 12288 base\nverity ${d('a')} ${d('1')} ${d('2')} 8192 8192\n` +
        `layer sha256:${d('b')} 12288 app\nverity ${d('b')} ${d('3')} ${d('2')} 8192 8192\n`,
    );
    const back = parseManifest(text);
    expect(back.layers).toEqual(m.layers);
    expect(back.extra).toEqual([]);
    expect(serializeManifest(back)).toBe(text);
  });

  it('are parsed wherever they stand, and one line serves two layers of the same file', () => {
    const text = head + `verity ${d('a')} ${d('1')} ${d('2')} 8192 8192\nlayer sha256:${d('a')} 12288 one\nlayer sha256:${d('a')} 12288 two\n`;
    const back = parseManifest(text);
    expect(back.layers.map((l) => l.verity?.root)).toEqual([d('1'), d('1')]);
    expect(serializeManifest(back).match(/^verity /gm)).toHaveLength(1);
  });

  const line = (root: string, salt: string, data: string, off: string, size = 12288) =>
    head + `layer sha256:${d('a')} ${size} base\nverity ${d('a')} ${root} ${salt} ${data} ${off}\n`;
  it.each([
    ['a root hash of the wrong length', line(d('1').slice(2), d('2'), '8192', '8192'), /verity root must be 64/],
    ['an upper-case root', line(d('A'), d('2'), '8192', '8192'), /verity root must be 64/],
    ['a salt of odd length', line(d('1'), 'abc', '8192', '8192'), /salt/],
    ['a data size not a multiple of 4096', line(d('1'), d('2'), '8000', '8192'), /data size 8000 is not a positive multiple of 4096/],
    ['a zero data size', line(d('1'), d('2'), '0', '8192'), /data size 0/],
    ['a hash offset inside the data', line(d('1'), d('2'), '8192', '4096'), /hash offset 4096 must be a multiple of 4096 at or past the data/],
    ['a hash offset past the end of the file', line(d('1'), d('2'), '8192', '12288'), /hash offset 12288 is past the end of the 12288-byte file/],
    ['a negative size', line(d('1'), d('2'), '-4096', '8192'), /sizes must be integers/],
    ['a missing field', head + `layer sha256:${d('a')} 12288 base\nverity ${d('a')} ${d('1')} ${d('2')} 8192\n`, /expected "verity/],
    ['a line for no layer', head + `layer sha256:${d('a')} 12288 base\nverity ${d('c')} ${d('1')} ${d('2')} 8192 8192\n`, /not a layer of the stack/],
    ['two lines for a layer', line(d('1'), d('2'), '8192', '8192') + `verity ${d('a')} ${d('1')} ${d('2')} 8192 8192\n`, /a second verity line/],
    [
      'verity for some layers only',
      head + `layer sha256:${d('a')} 12288 base\nlayer sha256:${d('b')} 12288 app\nverity ${d('a')} ${d('1')} ${d('2')} 8192 8192\n`,
      /verity lines for 1 of 2 layers: all or none/,
    ],
  ])('refuses %s', (_what, text, re) => {
    expect(() => parseManifest(text)).toThrow(re);
  });

  it('are not written for some layers only, nor with bad values', () => {
    expect(() => serializeManifest({ ...m, layers: [m.layers[0]!, { ...m.layers[1]!, verity: undefined }] })).toThrow(/all or none/);
    expect(() => serializeManifest({ ...m, layers: [{ ...m.layers[0]!, verity: v({ hashOffset: 12288 }) }] })).toThrow(/past the end/);
    expect(() => serializeManifest({ ...m, layers: [{ ...m.layers[0]!, verity: v({ dataBytes: 100 }) }] })).toThrow(/multiple of 4096/);
  });
});

describe('a one-block layer', () => {
  it('has no tree: its hash offset may be the end of the file', () => {
    const one = head + `layer sha256:${d('a')} 4096 base\nverity ${d('a')} ${d('1')} ${d('2')} 4096 4096\n`;
    expect(parseManifest(one).layers[0]!.verity).toEqual({ root: d('1'), salt: d('2'), dataBytes: 4096, hashOffset: 4096 });
  });
});
