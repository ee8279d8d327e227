/**
 * Chunk deltas end to end (issue 15): a delta bundle (manifest and signature only) and a
 * static HTTP server of the new build output; the node rebuilds the missing layer from
 * the chunks of its store's layers and fetches only the others with Range requests.
 *
 * - the base-layer security update of two real Debian 12 bases (mmdebstrap, cached in
 *   .cache/chunks): bytes fetched against the new layer (the goal: at most 12 %, with the
 *   changed blocks rebuilt from frame deltas: frame-delta.int) and against the real casync
 *   on the same pair (Debian's casync 2, 16 KiB average chunks, its index included);
 *   the layer made is byte-identical; --dry-run says what the node has and will fetch.
 * - a connection dropped in the middle of a range: resumed; a server without Range and
 *   a wrong chunk: the whole layer instead, said so; a tampered server: refused, the
 *   store unchanged; the process killed in the middle of the reassembly: old stack
 *   still whole, no layer under the new name, gc sweeps the temp file.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { createReadStream, promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chunkDelta } from '../../src/format/chunker.js';
import { VERITY_SALT, VerityTreeBuilder } from '../../src/format/verity-tree.js';
import { writeBundleFile } from '../../src/format/bundle.js';
import { chunkIndexRefs } from '../../src/format/chunks.js';
import { layerFrames, parseFramesIndex } from '../../src/format/frames.js';
import { openZstd } from '../../src/sys/zstd.js';
import { parseManifest } from '../../src/format/manifest.js';
import { stageStore, Store } from '../../src/format/store.js';
import { isTempName } from '../../src/sys/durable.js';
import { install, type InstallEvent } from '../../src/node/install.js';
import { httpChunkSource } from '../../src/node/chunk-source.js';
import type { NodeContext } from '../../src/node/context.js';
import { casyncFetch, chunkServer, chunkedBuild, debianBases } from '../support/chunk-fixtures.js';
import { killMidReassembly } from '../support/chunk-kill.js';
import { keys, layerBytes, sha256Of } from '../support/update-fixtures.js';
import { snapshot } from '../support/store-loop.js';

let tmp: string;
let k: Awaited<ReturnType<typeof keys>>;

beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(tmpdir(), 'sb-chunks-'));
  k = await keys(tmp);
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

function ctxOf(store: Store): NodeContext {
  return { store, bootedSlot: 'a', booted: null, bootedFile: null, remount: false, lockDir: path.join(store.dir, '.stackboot.lock') };
}

/** A store with `oldBuild` good and booted in slot a, and a bundle of `newBuild` without its chunked layers (`bundle --chunks`). */
async function setup(name: string, oldBuild: string, newBuild: string): Promise<{ store: Store; bundle: string }> {
  const store = await stageStore(path.join(tmp, name, 'store'), { slots: { a: { buildDir: oldBuild, status: 'good' } } });
  const bundle = path.join(tmp, name, 'delta.sb');
  const chunked = chunkIndexRefs(parseManifest(await fs.readFile(path.join(newBuild, 'manifest'), 'utf8')));
  const r = await writeBundleFile({ buildDir: newBuild, file: bundle, key: k.key, baseDigests: new Set(chunked.keys()) });
  expect(r.carried).toEqual([]);
  return { store, bundle };
}

async function installChunks(store: Store, bundle: string, url: string, o: { dryRun?: boolean } = {}) {
  const events: InstallEvent[] = [];
  const r = await install({ ctx: ctxOf(store), stream: createReadStream(bundle), label: 'delta.sb', keysDir: k.keysDir, tries: 3, chunkSource: httpChunkSource(url, { backoffMs: 10 }), onEvent: (e) => events.push(e), dryRun: o.dryRun });
  return { r, chunks: events.filter((e): e is Extract<InstallEvent, { event: 'chunks' }> => e.event === 'chunks') };
}

describe('chunk install: the Debian base-layer security update', () => {
  it('fetches a fraction of the new layer, below casync on the same pair, and makes it byte-identical', async () => {
    const b = await debianBases();
    const { store, bundle } = await setup('debian', b.old, b.new);
    const oldM = (await store.slotManifest('a'))!.manifest;
    const newLayer = (await fs.readFile(path.join(b.new, 'manifest'), 'utf8')).match(/^layer sha256:([0-9a-f]{64}) (\d+)/m)!;
    const [digest, size] = [newLayer[1], Number(newLayer[2])];
    expect(oldM.layers[0].digest).not.toBe(digest);
    const srv = await chunkServer(b.new);
    try {
      const before = await snapshot(store.dir);
      const dry = await installChunks(store, bundle, srv.url, { dryRun: true });
      expect(dry.r.installed).toBe(false);
      expect(dry.chunks).toHaveLength(1);
      expect(dry.chunks[0].had + dry.chunks[0].fetch).toBeGreaterThanOrEqual(size);
      expect(await snapshot(store.dir)).toBe(before);

      srv.sent.clear();
      const r = await installChunks(store, bundle, srv.url);
      expect(r.r.installed).toBe(true);
      const ev = r.chunks.find((e) => e.fetched !== undefined)!;
      expect(ev.fallback).toBeUndefined();
      expect(ev.fetched).toBe(srv.total());
      expect(ev.fetch).toBe(dry.chunks[0].fetch);
      expect(await sha256Of(store.layerPath(digest))).toBe(digest);
      expect(Buffer.compare(await fs.readFile(store.layerPath(digest)), await fs.readFile(path.join(b.new, 'layers', `${digest}.sqfs`)))).toBe(0);
      const share = srv.total() / size;
      // the real casync on the same pair (16 KiB average chunks, its index included)
      const cas = await casyncFetch(store.layerPath(oldM.layers[0].digest), store.layerPath(digest));
      const casync = (cas.bytes + cas.index) / size;
      process.stderr.write(`chunk install, Debian base update: fetched ${srv.total()} of ${size} bytes (${(share * 100).toFixed(2)} %), casync ${(casync * 100).toFixed(2)} % (${cas.chunks} chunks), ${srv.ranges} range requests\n`);
      expect(share).toBeLessThan(casync);
      // the layer's dm-verity tree (0.8 % of it) is computed on the node, not fetched
      expect(dry.chunks[0].computed).toBeGreaterThan(0.005 * size);
      expect(ev.had).toBeGreaterThanOrEqual(dry.chunks[0].computed!);
      // the changed blocks rebuilt from decoded chunks (frame deltas): issue 15's goal
      expect(dry.chunks[0].framesOff).toBeUndefined();
      expect(ev.framesOff).toBeUndefined();
      expect(dry.chunks[0].rebuilt).toBeGreaterThan(0.1 * size);
      expect(share).toBeLessThanOrEqual(0.12);
      // the build listed every block of the layer: the system libzstd gave each one back byte for byte
      const ix = parseFramesIndex(await fs.readFile(path.join(b.new, 'layers', `${digest}.frames`)));
      const zstd = await openZstd();
      let blocks = 0;
      try {
        for await (const f of layerFrames(path.join(b.new, 'layers', `${digest}.sqfs`), zstd)) expect(ix.frames[blocks++]?.offset).toBe(f.offset);
      } finally {
        await zstd.close();
      }
      expect(blocks).toBe(ix.frames.length);
      expect(blocks).toBeGreaterThan(1000); // 1,535
    } finally {
      await srv.close();
    }
  }, 900_000);
});

/** A bundle of `newBuild` whose chunked layers go as chunk deltas against `oldBuild`'s layers (`bundle --base old --chunks`). */
async function chunkBundle(name: string, oldBuild: string, newBuild: string): Promise<{ file: string; bytes: number }> {
  const m = parseManifest(await fs.readFile(path.join(newBuild, 'manifest'), 'utf8'));
  const old = parseManifest(await fs.readFile(path.join(oldBuild, 'manifest'), 'utf8'));
  const base = new Set(old.layers.map((l) => l.digest));
  const deltas = [];
  for (const d of chunkIndexRefs(m).keys()) {
    if (base.has(d)) continue;
    deltas.push(await chunkDelta(d, await fs.readFile(path.join(newBuild, 'layers', `${d}.chunks`)), [...base].map((b) => path.join(oldBuild, 'layers', `${b}.sqfs`)), m.layers.find((l) => l.digest === d)));
  }
  const file = path.join(tmp, `${name}.sb`);
  const r = await writeBundleFile({ buildDir: newBuild, file, key: k.key, baseDigests: base, chunks: deltas });
  expect(r.carried).toEqual([]);
  return { file, bytes: r.bytes };
}

describe('chunk install: a bundle that carries only the missing chunks', () => {
  it('the Debian update from a bundle: a fraction of the layer, byte-identical, no server', async () => {
    const b = await debianBases();
    const store = await stageStore(path.join(tmp, 'debian-bundle', 'store'), { slots: { a: { buildDir: b.old, status: 'good' } } });
    const bundle = await chunkBundle('debian-chunks', b.old, b.new);
    const layer = parseManifest(await fs.readFile(path.join(b.new, 'manifest'), 'utf8')).layers[0];
    const r = await install({ ctx: ctxOf(store), stream: createReadStream(bundle.file), label: 'debian-chunks.sb', keysDir: k.keysDir, tries: 3 });
    expect(r.installed).toBe(true);
    expect(await sha256Of(store.layerPath(layer.digest))).toBe(layer.digest);
    process.stderr.write(`chunk bundle, Debian base update: ${bundle.bytes} bytes for a ${layer.size}-byte layer (${((bundle.bytes / layer.size) * 100).toFixed(2)} %)\n`);
    expect(bundle.bytes / layer.size).toBeLessThanOrEqual(0.18);
  }, 900_000);
});

describe('chunk install: failures', () => {
  // v1's layer, and v2's: v1's with a changed region in the middle and a new tail
  const v1Data = layerBytes(3 << 20, 'chunks-v1');
  const v2Data = Buffer.concat([v1Data.subarray(0, 1_000_000), layerBytes(100_000, 'patch'), v1Data.subarray(1_050_000), layerBytes(30_000, 'tail')]);
  let v1: string, v2: string;
  let v2Digest: string;
  let fresh: number;

  beforeAll(async () => {
    v1 = (await chunkedBuild(path.join(tmp, 'v1'), { version: '1', key: k.key, layers: [{ name: 'base', data: v1Data }] })).dir;
    const b2 = await chunkedBuild(path.join(tmp, 'v2'), { version: '2', key: k.key, layers: [{ name: 'base', data: v2Data }] });
    v2 = b2.dir;
    v2Digest = b2.manifest.layers[0].digest;
    fresh = 1_000_000; // the first offset v2 differs from v1 at
  });

  it('a bundle with the missing chunks: installed without a server; a tampered one refused, the store unchanged; a store without the base: MISSING_LAYERS', async () => {
    const bundle = await chunkBundle('v2-chunks', v1, v2);
    expect(bundle.bytes).toBeLessThan(300_000);
    const ok = await stageStore(path.join(tmp, 'bundle-ok', 'store'), { slots: { a: { buildDir: v1, status: 'good' } } });
    const r = await install({ ctx: ctxOf(ok), stream: createReadStream(bundle.file), label: 'v2-chunks.sb', keysDir: k.keysDir, tries: 3 });
    expect(r.installed).toBe(true);
    expect(await sha256Of(ok.layerPath(v2Digest))).toBe(v2Digest);

    const bad = Buffer.from(await fs.readFile(bundle.file));
    bad[bad.length - 1024 - 2000] ^= 0xff; // inside the last entry: the chunk data
    const badFile = path.join(tmp, 'v2-chunks-bad.sb');
    await fs.writeFile(badFile, bad);
    const s2 = await stageStore(path.join(tmp, 'bundle-bad', 'store'), { slots: { a: { buildDir: v1, status: 'good' } } });
    const before = await snapshot(s2.dir);
    await expect(install({ ctx: ctxOf(s2), stream: createReadStream(badFile), label: 'bad.sb', keysDir: k.keysDir, tries: 3 })).rejects.toMatchObject({ code: 'VERIFY' });
    expect(await snapshot(s2.dir)).toBe(before);

    const other = await chunkedBuild(path.join(tmp, 'other'), { version: '0', key: k.key, layers: [{ name: 'base', data: layerBytes(1 << 20, 'other') }] });
    const s3 = await stageStore(path.join(tmp, 'bundle-nobase', 'store'), { slots: { a: { buildDir: other.dir, status: 'good' } } });
    await expect(install({ ctx: ctxOf(s3), stream: createReadStream(bundle.file), label: 'v2-chunks.sb', keysDir: k.keysDir, tries: 3 })).rejects.toMatchObject({ code: 'MISSING_LAYERS' });
  });

  it('resumes a range after a dropped connection', async () => {
    const { store, bundle } = await setup('drop', v1, v2);
    const srv = await chunkServer(v2, { dropAfter: 20_000 });
    try {
      const r = await installChunks(store, bundle, srv.url);
      expect(r.r.installed).toBe(true);
      expect(srv.opts.dropAfter).toBeUndefined(); // the drop happened
      expect(r.chunks.at(-1)!.fallback).toBeUndefined();
      expect(r.chunks.at(-1)!.fetched).toBeLessThan(200_000);
      expect(await sha256Of(store.layerPath(v2Digest))).toBe(v2Digest);
    } finally {
      await srv.close();
    }
  });

  it('fetches the whole layer from a server without Range, and says so', async () => {
    const { store, bundle } = await setup('norange', v1, v2);
    const srv = await chunkServer(v2, { range: false });
    try {
      const r = await installChunks(store, bundle, srv.url);
      expect(r.r.installed).toBe(true);
      expect(r.chunks.at(-1)!.fallback).toMatch(/does not honour Range/);
      expect(await sha256Of(store.layerPath(v2Digest))).toBe(v2Digest);
    } finally {
      await srv.close();
    }
  });

  it('a wrong chunk on the server: fetched again, then the whole layer, which is wrong too: refused, the store unchanged', async () => {
    const { store, bundle } = await setup('tamper', v1, v2);
    const srv = await chunkServer(v2, { tamperAt: fresh + 5000 });
    try {
      const before = await snapshot(store.dir);
      await expect(installChunks(store, bundle, srv.url)).rejects.toMatchObject({ code: 'VERIFY' });
      expect(await snapshot(store.dir)).toBe(before);
      expect((await fs.readdir(path.join(store.dir, 'layers'))).some(isTempName)).toBe(false);
      expect(srv.ranges).toBeGreaterThanOrEqual(2);
    } finally {
      await srv.close();
    }
  });

  it('a layer with a dm-verity tree: the tree\'s chunks are computed on the node, not fetched; a tree that is not the one of its data is fetched, the layer still right', async () => {
    // v2's data (1 MiB-aligned) with its real tree appended, and with a wrong one
    const data = v2Data.subarray(0, 3 << 20);
    const t = new VerityTreeBuilder(data.length);
    t.push(data);
    const { tree, root } = t.finish();
    const verity = { root: root.toString('hex'), salt: VERITY_SALT.toString('hex'), dataBytes: data.length, hashOffset: data.length };
    for (const [name, bytes, computedAll] of [['tree-ok', tree, true], ['tree-wrong', layerBytes(tree.length, 'not-the-tree'), false]] as const) {
      const b = await chunkedBuild(path.join(tmp, name), { version: '2', key: k.key, layers: [{ name: 'base', data: Buffer.concat([data, bytes]), verity }] });
      const { store, bundle } = await setup(`${name}-store`, v1, b.dir);
      const srv = await chunkServer(b.dir);
      try {
        const r = await installChunks(store, bundle, srv.url);
        expect(r.r.installed).toBe(true);
        const plan = r.chunks[0];
        const done = r.chunks.find((e) => e.fetched !== undefined)!;
        expect(plan.computed).toBeGreaterThan(tree.length / 2);
        expect(done.fallback).toBeUndefined();
        const digest = b.manifest.layers[0].digest;
        expect(await sha256Of(store.layerPath(digest))).toBe(digest);
        // the wrong tree's chunks came from the server instead
        if (computedAll) expect(done.fetched).toBe(plan.fetch);
        else expect(done.fetched).toBeGreaterThanOrEqual(plan.fetch + plan.computed!);
      } finally {
        await srv.close();
      }
    }
  });

  it('killed in the middle of the reassembly: the old stack whole, no layer under the new name, gc sweeps the temp', async () => {
    const { store, bundle } = await setup('kill', v1, v2);
    const srv = await chunkServer(v2, { stallMs: 60_000 });
    try {
      await killMidReassembly({ store, bundle, url: srv.url, keysDir: k.keysDir, digest: v2Digest });
    } finally {
      await srv.close();
    }
  }, 120_000);
});
