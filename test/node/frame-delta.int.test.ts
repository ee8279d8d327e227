/**
 * Frame deltas end to end (issue 15): real squashfs layers built by `build --chunks`
 * (gensquashfs, zstd-3) where a big file had text inserted and changed; the node rebuilds
 * the changed blocks from the decoded chunks of its old layer and the few it fetches from
 * `<layer>.delta`, compresses them again with the system libzstd, and makes the new layer
 * byte for byte. The Debian base update (the goal's measure) is in chunk-install.int.
 *
 * Failures: a tampered delta chunk (found, the rest of the layer as chunks, the layer
 * still right); a server without the frames index, or without Range on the delta file;
 * a node whose libzstd is another version; a dropped connection in the middle of a delta
 * range; the process killed in the middle of rebuilding frames.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { createReadStream, promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { writeBundleFile } from '../../src/format/bundle.js';
import { chunkIndexRefs } from '../../src/format/chunks.js';
import { decodedChunks, framesRefs, layerFrames, parseDeltaEntries, parseFramesIndex, writeFrameDeltas, ENTRY } from '../../src/format/frames.js';
import { parseManifest } from '../../src/format/manifest.js';
import { stageStore, type Store } from '../../src/format/store.js';
import { openZstd } from '../../src/sys/zstd.js';
import { install, type InstallEvent } from '../../src/node/install.js';
import { httpChunkSource } from '../../src/node/chunk-source.js';
import type { NodeContext } from '../../src/node/context.js';
import { chunkServer, squashfsPair, type ServerOptions } from '../support/chunk-fixtures.js';
import { killMidReassembly } from '../support/chunk-kill.js';
import { keys, sha256Of } from '../support/update-fixtures.js';

let tmp: string;
let k: Awaited<ReturnType<typeof keys>>;
let pair: { v1: string; v2: string };
let digest: string;
let size: number;

beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(tmpdir(), 'sb-frames-'));
  k = await keys(tmp);
  pair = await squashfsPair(tmp);
  const m = parseManifest(await fs.readFile(path.join(pair.v2, 'manifest'), 'utf8'));
  [digest, size] = [m.layers[0].digest, m.layers[0].size];
}, 120_000);
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

const ctxOf = (store: Store): NodeContext => ({ store, bootedSlot: 'a', booted: null, bootedFile: null, remount: false, lockDir: path.join(store.dir, '.stackboot.lock') });

/** A store with v1 good in slot a, and a bundle of v2 without its layer (it has a chunk index). */
async function setup(name: string): Promise<{ store: Store; bundle: string }> {
  const store = await stageStore(path.join(tmp, name, 'store'), { slots: { a: { buildDir: pair.v1, status: 'good' } } });
  const bundle = path.join(tmp, name, 'delta.sb');
  const m = parseManifest(await fs.readFile(path.join(pair.v2, 'manifest'), 'utf8'));
  await writeBundleFile({ buildDir: pair.v2, file: bundle, key: k.key, baseDigests: new Set(chunkIndexRefs(m).keys()) });
  return { store, bundle };
}

type ChunksEvent = Extract<InstallEvent, { event: 'chunks' }>;

async function run(name: string, opts: ServerOptions = {}, dryRun = false) {
  const { store, bundle } = await setup(name);
  const srv = await chunkServer(pair.v2, opts);
  try {
    const events: InstallEvent[] = [];
    const r = await install({ ctx: ctxOf(store), stream: createReadStream(bundle), label: 'delta.sb', keysDir: k.keysDir, tries: 3, chunkSource: httpChunkSource(srv.url, { backoffMs: 10 }), onEvent: (e) => events.push(e), dryRun });
    const chunks = events.filter((e): e is ChunksEvent => e.event === 'chunks');
    return { r, store, srv, plan: chunks[0], done: chunks.find((e) => e.fetched !== undefined), total: srv.total() };
  } finally {
    await srv.close();
  }
}

describe('frame deltas', () => {
  it('the build lists every block of the layer and names the index in the manifest; shared among processes, the same files', async () => {
    const m = parseManifest(await fs.readFile(path.join(pair.v2, 'manifest'), 'utf8'));
    const ref = framesRefs(m).get(digest)!;
    const b = await fs.readFile(path.join(pair.v2, 'layers', `${digest}.frames`));
    expect(b.length).toBe(ref.size);
    const ix = parseFramesIndex(b);
    const zstd = await openZstd();
    try {
      expect(ix.zstdVersion).toBe(zstd.version);
      expect(ix.level).toBe(3);
      let n = 0;
      for await (const f of layerFrames(path.join(pair.v2, 'layers', `${digest}.sqfs`), zstd)) {
        expect(ix.frames[n]).toMatchObject({ offset: f.offset, length: f.frame.length, decoded: f.decoded.length });
        n++;
      }
      expect(n).toBe(ix.frames.length);
      expect(n).toBeGreaterThan(30); // 4 MB of text in 128 KiB blocks, and the metadata blocks
      // shared among three libzstd processes, the work gives the same files
      const copy = path.join(tmp, 'frames-shared');
      await fs.mkdir(copy, { recursive: true });
      await fs.copyFile(path.join(pair.v2, 'layers', `${digest}.sqfs`), path.join(copy, `${digest}.sqfs`));
      const more = [await openZstd(), await openZstd()];
      try {
        const again = await writeFrameDeltas(path.join(copy, `${digest}.sqfs`), digest, [zstd, ...more], 3);
        expect(again).toEqual(ref);
        expect(Buffer.compare(await fs.readFile(path.join(copy, `${digest}.delta`)), await fs.readFile(path.join(pair.v2, 'layers', `${digest}.delta`)))).toBe(0);
      } finally {
        for (const z of more) await z.close();
      }
    } finally {
      await zstd.close();
    }
  });

  it('rebuilds the changed blocks from the old layer\'s decoded chunks: a fraction of what chunks alone fetch, the layer byte-identical; --dry-run says it', async () => {
    const dry = await run('dry', {}, true);
    expect(dry.r.installed).toBe(false);
    expect(dry.plan.rebuilt).toBeGreaterThan(0);
    expect(dry.plan.framesOff).toBeUndefined();
    expect(dry.plan.had + dry.plan.fetch).toBeGreaterThanOrEqual(size);

    const f = await run('frames');
    expect(f.r.installed).toBe(true);
    expect(f.done!.framesOff).toBeUndefined();
    expect(f.done!.fallback).toBeUndefined();
    expect(f.done!.fetched).toBe(f.total);
    expect(f.done!.fetched).toBe(dry.plan.fetch);
    expect(await sha256Of(f.store.layerPath(digest))).toBe(digest);
    expect(Buffer.compare(await fs.readFile(f.store.layerPath(digest)), await fs.readFile(path.join(pair.v2, 'layers', `${digest}.sqfs`)))).toBe(0);

    // the same install where the server has no frames index: chunks alone
    const c = await run('chunks-only', { hide: '.frames' });
    expect(c.plan.framesOff).toMatch(/no frames index/);
    expect(await sha256Of(c.store.layerPath(digest))).toBe(digest);
    process.stderr.write(`frame deltas: fetched ${f.total} of ${size} bytes (${((f.total / size) * 100).toFixed(2)} %), chunks alone ${c.total} (${((c.total / size) * 100).toFixed(2)} %)\n`);
    expect(f.total).toBeLessThan(c.total / 2);
  }, 120_000);

  it('a tampered delta chunk: found, the rest of the layer comes as chunks, the layer still right', async () => {
    // the data of the first delta chunk the node lacks (not among v1's decoded chunks)
    const ix = parseFramesIndex(await fs.readFile(path.join(pair.v2, 'layers', `${digest}.frames`)));
    const delta = await fs.readFile(path.join(pair.v2, 'layers', `${digest}.delta`));
    const zstd = await openZstd();
    const old = new Set<string>();
    try {
      const v1 = parseManifest(await fs.readFile(path.join(pair.v1, 'manifest'), 'utf8')).layers[0].digest;
      for await (const fr of layerFrames(path.join(pair.v1, 'layers', `${v1}.sqfs`), zstd)) for (const c of decodedChunks(fr.decoded, ix.sizes)) old.add(c.digest);
    } finally {
      await zstd.close();
    }
    let target = -1;
    for (const f of ix.frames) {
      let at = f.dataOffset;
      for (const e of parseDeltaEntries(delta.subarray(f.entriesOffset, f.entriesOffset + f.entries * ENTRY), f.entries)) {
        if (!old.has(e.digest)) {
          target = at + 1;
          break;
        }
        at += e.stored;
      }
      if (target >= 0) break;
    }
    expect(target).toBeGreaterThan(0);
    const t = await run('tamper', { files: '.delta', tamperAt: target });
    expect(t.r.installed).toBe(true);
    expect(t.done!.framesOff).toMatch(/wrong/);
    expect(t.done!.fallback).toBeUndefined();
    expect(await sha256Of(t.store.layerPath(digest))).toBe(digest);
  }, 120_000);

  it('a delta file without Range: the chunk plan, said so', async () => {
    const r = await run('norange', { files: '.delta', range: false });
    expect(r.plan.framesOff).toMatch(/delta file: .*does not honour Range/);
    expect(r.r.installed).toBe(true);
    expect(await sha256Of(r.store.layerPath(digest))).toBe(digest);
  }, 120_000);

  it('a dropped connection in the middle of a delta range: resumed', async () => {
    const r = await run('drop', { files: '.delta', dropAfter: 300 });
    expect(r.srv.opts.dropAfter).toBeUndefined(); // the drop happened
    expect(r.r.installed).toBe(true);
    expect(r.done!.framesOff).toBeUndefined();
    expect(r.plan.rebuilt).toBeGreaterThan(0);
    expect(await sha256Of(r.store.layerPath(digest))).toBe(digest);
  }, 120_000);

  it('a node whose libzstd is another version: the chunk plan, said so', async () => {
    // python3-zstandard that says it links libzstd 1.4.8 (JetPack 6's Ubuntu 22.04)
    const fake = path.join(tmp, 'python-zstd-1.4.8');
    await fs.writeFile(fake, '#!/usr/bin/python3\nimport sys, zstandard\nzstandard.ZSTD_VERSION = (1, 4, 8)\nexec(compile(sys.argv[-1], "<stackboot>", "exec"))\n', { mode: 0o755 });
    const was = process.env.STACKBOOT_PYTHON;
    process.env.STACKBOOT_PYTHON = fake;
    try {
      const r = await run('version');
      expect(r.plan.framesOff).toMatch(/compressed with libzstd 1\.5\.\d+, this node has 1\.4\.8/);
      expect(r.r.installed).toBe(true);
      expect(await sha256Of(r.store.layerPath(digest))).toBe(digest);
    } finally {
      if (was === undefined) delete process.env.STACKBOOT_PYTHON;
      else process.env.STACKBOOT_PYTHON = was;
    }
  }, 120_000);

  it('killed in the middle of rebuilding frames: the old stack whole, no layer under the new name, gc sweeps the temp', async () => {
    const { store, bundle } = await setup('kill');
    // the plan's entries come at once; every later delta range stalls
    const srv = await chunkServer(pair.v2, { files: '.delta', stallMs: 60_000, stallFrom: 1 });
    try {
      await killMidReassembly({ store, bundle, url: srv.url, keysDir: k.keysDir, digest, ready: () => (srv.sent.get(`${digest}.delta`) ?? 0) > 0 });
    } finally {
      await srv.close();
    }
  }, 120_000);
});
