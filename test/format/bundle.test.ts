import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { createReadStream, createWriteStream, promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { baseLayers, readBundle, readBundleHead, unpackBundle, writeBundle, writeBundleFile } from '../../src/format/bundle.js';
import { fakeBuild, keys, layerBytes, type FakeBuild } from '../support/update-fixtures.js';
import { walkTar } from '../../src/format/tarfile.js';
import { isTempName } from '../../src/sys/durable.js';

let tmp: string;
let k: { key: string; pub: string; keysDir: string };
let v1: FakeBuild;
let v2: FakeBuild;

beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(tmpdir(), 'sb-bundle-'));
  k = await keys(tmp);
  const base = layerBytes(300_000, 'base');
  v1 = await fakeBuild(path.join(tmp, 'v1'), { version: '1', key: k.key, layers: [{ name: 'base', data: base }, { name: 'app', data: layerBytes(70_000, 'app1') }] });
  v2 = await fakeBuild(path.join(tmp, 'v2'), { version: '2', key: k.key, layers: [{ name: 'base', data: base }, { name: 'app', data: layerBytes(80_001, 'app2') }] });
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

describe('bundle', () => {
  it('writes manifest, manifest.sig, contents, then the layers, as a tar', async () => {
    const f = path.join(tmp, 'full.stackbundle');
    const r = await writeBundleFile({ buildDir: v1.dir, file: f });
    expect(r.carried.map((l) => l.name)).toEqual(['base', 'app']);
    const names: string[] = [];
    await walkTar(f, { onEntry: (m, body) => { names.push(m.rawPath); body.resume(); } });
    expect(names).toEqual(['manifest', 'manifest.sig', 'contents', ...v1.manifest.layers.map((l) => `layers/${l.digest}.sqfs`)]);
    expect((await fs.stat(f)).size).toBe(r.bytes);
  });

  it('a delta against a base carries only the layers the base lacks', async () => {
    const f = path.join(tmp, 'delta.stackbundle');
    const base = await baseLayers(path.join(v1.dir, 'manifest'));
    const r = await writeBundleFile({ buildDir: v2.dir, file: f, baseDigests: base.digests });
    expect(r.carried.map((l) => l.name)).toEqual(['app']);
    expect(r.skipped.map((l) => l.name)).toEqual(['base']);
    // a bundle or a build folder works as a base too
    const full = path.join(tmp, 'full1.stackbundle');
    await writeBundleFile({ buildDir: v1.dir, file: full });
    expect([...(await baseLayers(full)).digests]).toEqual([...base.digests]);
    expect([...(await baseLayers(v1.dir)).digests]).toEqual([...base.digests]);
    const head = await readBundleHead(createReadStream(f));
    expect(head.stackId).toBe(v2.id);
    expect(head.contents.map((c) => c.digest)).toEqual([v2.manifest.layers[1].digest]);
    expect(head.sig).toMatch(/^[A-Za-z0-9+/]+=*\n$/);
  });

  it('signs with --key when the build output has no signature; refuses without one', async () => {
    const u = await fakeBuild(path.join(tmp, 'unsigned'), { version: '9', layers: [{ name: 'x', data: layerBytes(1000, 'x') }] });
    await expect(writeBundleFile({ buildDir: u.dir, file: path.join(tmp, 'u.sb') })).rejects.toMatchObject({ code: 'SIGNATURE' });
    const r = await writeBundleFile({ buildDir: u.dir, file: path.join(tmp, 'u.sb'), key: k.key });
    expect(r.stackId).toBe(u.id);
  });

  it('unsigned only when asked (a node with ALLOW_UNSIGNED): no manifest.sig entry at all', async () => {
    const u = await fakeBuild(path.join(tmp, 'unsigned2'), { version: '9', layers: [{ name: 'x', data: layerBytes(1000, 'x') }] });
    const f = path.join(tmp, 'unsigned.sb');
    const r = await writeBundleFile({ buildDir: u.dir, file: f, allowUnsigned: true });
    expect(r.stackId).toBe(u.id);
    const head = await readBundleHead(createReadStream(f));
    expect(head.sig).toBeNull();
    // the hint names what the caller can do
    await expect(writeBundleFile({ buildDir: u.dir, file: f, unsignedHint: 'set ALLOW_UNSIGNED=1' })).rejects.toThrow(/manifest\.sig is missing: set ALLOW_UNSIGNED=1/);
  });

  it('a bad output path is one clear error, and nothing is left', async () => {
    await expect(writeBundleFile({ buildDir: v1.dir, file: path.join(tmp, 'no-such-dir', 'x.sb') })).rejects.toMatchObject({ code: 'IO', message: expect.stringMatching(/cannot write .*no-such-dir\/x\.sb/) });
    const folder = path.join(tmp, 'a-folder');
    await fs.mkdir(folder);
    await expect(writeBundleFile({ buildDir: v1.dir, file: folder })).rejects.toMatchObject({ code: 'USAGE', message: expect.stringMatching(/is a folder: give the bundle's file name/) });
    expect((await fs.readdir(tmp)).filter(isTempName)).toEqual([]);
  });

  it('refuses a damaged manifest.sig instead of shipping it', async () => {
    const d = await fakeBuild(path.join(tmp, 'damaged'), { version: '8', layers: [{ name: 'x', data: layerBytes(1000, 'x') }] });
    await fs.writeFile(path.join(d.dir, 'manifest.sig'), 'junk\n');
    await expect(writeBundleFile({ buildDir: d.dir, file: path.join(tmp, 'd.sb') })).rejects.toThrow(/manifest\.sig is not a signature/);
    expect(await fs.stat(path.join(tmp, 'd.sb')).catch(() => null)).toBeNull();
  });

  it('streams through a pipe: the reader sees the head before any layer, and each layer body', async () => {
    const pt = new PassThrough({ highWaterMark: 16 * 1024 });
    const w = writeBundle({ buildDir: v1.dir, out: pt });
    const order: string[] = [];
    const bodies = new Map<string, number>();
    const head = await readBundle(pt, {
      onHead: (h) => {
        order.push('head');
        return new Set(h.contents.map((c) => c.digest));
      },
      onLayer: async (d, size, body) => {
        order.push(d.slice(0, 8));
        let n = 0;
        for await (const c of body) n += (c as Buffer).length;
        bodies.set(d, n);
        expect(n).toBe(size);
      },
    });
    await w;
    expect(order[0]).toBe('head');
    expect(order.length).toBe(3);
    expect(head.manifest.version).toBe('1');
    for (const l of v1.manifest.layers) expect(bodies.get(l.digest)).toBe(l.size);
  });

  it('a refusal in onHead stops the read at once', async () => {
    const f = path.join(tmp, 'full.stackbundle');
    let layers = 0;
    await expect(
      readBundle(createReadStream(f), {
        onHead: () => {
          throw Object.assign(new Error('refused'), { code: 'X' });
        },
        onLayer: async () => {
          layers++;
        },
      }),
    ).rejects.toThrow(/refused/);
    expect(layers).toBe(0);
  });

  it('refuses a tar that is not a bundle', async () => {
    const f = path.join(tmp, 'notbundle.tar');
    const out = createWriteStream(f);
    const { TarWriter } = await import('../../src/format/tarfile.js');
    const w = new TarWriter(out);
    await w.add({ path: 'hello', type: 'file', mode: 0o644, uid: 0, gid: 0, mtime: 0, size: 2 }, Buffer.from('hi'));
    await w.finish();
    await expect(readBundleHead(createReadStream(f))).rejects.toMatchObject({ code: 'MANIFEST' });
  });

  it('unpacks into a build output folder: the same files; a delta names the layers it lacks; a tampered layer never lands', async () => {
    const full = path.join(tmp, 'unpack-full.stackbundle');
    await writeBundleFile({ buildDir: v2.dir, file: full });
    const out = path.join(tmp, 'unpacked');
    const u = await unpackBundle(createReadStream(full), out, full);
    expect(u.absent).toEqual([]);
    for (const f of ['manifest', 'manifest.sig', ...v2.manifest.layers.map((l) => `layers/${l.digest}.sqfs`)]) {
      expect(await fs.readFile(path.join(out, f))).toEqual(await fs.readFile(path.join(v2.dir, f)));
    }
    const delta = path.join(tmp, 'unpack-delta.stackbundle');
    await writeBundleFile({ buildDir: v2.dir, file: delta, baseDigests: (await baseLayers(v1.dir)).digests });
    const d = await unpackBundle(createReadStream(delta), path.join(tmp, 'unpacked-delta'), delta);
    expect(d.absent.map((l) => l.name)).toEqual(['base']);
    // one byte of the app layer changed inside the bundle
    const bytes = await fs.readFile(delta);
    const app = v2.manifest.layers.find((l) => l.name === 'app')!;
    const at = bytes.indexOf(await fs.readFile(path.join(v2.dir, 'layers', `${app.digest}.sqfs`)));
    expect(at).toBeGreaterThan(0);
    bytes[at + 100] ^= 0xff;
    const bad = path.join(tmp, 'unpack-bad.stackbundle');
    await fs.writeFile(bad, bytes);
    const dir = path.join(tmp, 'unpacked-bad');
    await expect(unpackBundle(createReadStream(bad), dir, bad)).rejects.toMatchObject({ code: 'VERIFY', message: expect.stringMatching(/layer app does not match the manifest/) });
    expect(await fs.readdir(path.join(dir, 'layers'))).toEqual([]);
  });

  it('says a file that is not even a tar (random bytes, a text) is not a bundle', async () => {
    for (const [name, data] of [['random.bin', Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 7919) % 251))], ['text.txt', Buffer.from('hello\n')]] as const) {
      const f = path.join(tmp, name);
      await fs.writeFile(f, data);
      await expect(readBundleHead(createReadStream(f), f)).rejects.toMatchObject({ code: 'MANIFEST', message: expect.stringMatching(new RegExp(`^${f}: not a stackboot bundle \\(not a tar archive: `)) });
    }
  });
});
