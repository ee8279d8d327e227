/**
 * Chunk-delta benchmark (issue 15), `npx tsx bench/run.ts chunks`:
 *
 * - the base-layer security update: two Debian 12 minbase + systemd roots (bookworm, and
 *   bookworm + updates + security; mmdebstrap, cached in .cache/chunks), each built as one
 *   zstd-3 layer; a node with the old one installs the new one from a static HTTP server
 *   (Range requests): bytes fetched (the indexes included) against the new layer, with
 *   frame deltas and with chunks alone (the server hides the frames index), against the
 *   real casync on the same pair (Debian's casync 2, 16 KiB average chunks, what its store
 *   keeps and its index) and against the anchors (casync 17.4 %, per-file zstd
 *   13.8 %); the install's time, and what the build's frame deltas cost (one core).
 * - reassembly of a 1 GB layer: a 1 GiB old layer in the store, a new one that differs in
 *   64 places of 64 KiB; the time to plan (cut the store's layer) and to write the new
 *   layer (local chunks read and checked, missing ones fetched, sha256, fsync, rename),
 *   and the peak memory of the reassembly, in a process of its own (chunks-reassemble.ts:
 *   the rise of VmHWM over the resident size before it).
 */
import { createCipheriv } from 'node:crypto';
import { createReadStream, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { writeBundleFile } from '../src/format/bundle.js';
import { chunkIndexRefs } from '../src/format/chunks.js';
import { parseManifest } from '../src/format/manifest.js';
import { stageStore } from '../src/format/store.js';
import { install, type InstallEvent } from '../src/node/install.js';
import { httpChunkSource } from '../src/node/chunk-source.js';
import { casyncFetch, chunkServer, chunkedBuild, debianBases, type ServerOptions } from '../test/support/chunk-fixtures.js';
import { writeFrameDeltas } from '../src/format/frames.js';
import { openZstd } from '../src/sys/zstd.js';
import { keys } from '../test/support/update-fixtures.js';
import { run } from '../src/sys/exec.js';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));

interface Row {
  metric: string;
  value: string;
  goal?: string;
  ok?: boolean;
}

const pct = (a: number, b: number) => `${((a / b) * 100).toFixed(2)} %`;
const MB = (n: number) => `${(n / 1e6).toFixed(1)} MB`;

async function debianRows(work: string, k: { key: string; keysDir: string }): Promise<Row[]> {
  const b = await debianBases();
  const newM = parseManifest(await fs.readFile(path.join(b.new, 'manifest'), 'utf8'));
  const bundle = path.join(work, 'debian.sb');
  await writeBundleFile({ buildDir: b.new, file: bundle, key: k.key, baseDigests: new Set(chunkIndexRefs(newM).keys()) });
  const size = newM.layers[0].size;
  /** the install of the new stack, into a store of the old one, from a server of its build output: its bytes and seconds */
  const installOnce = async (name: string, opts: ServerOptions) => {
    const store = await stageStore(path.join(work, name), { slots: { a: { buildDir: b.old, status: 'good' } } });
    const ctx = { store, bootedSlot: 'a' as const, booted: null, bootedFile: null, remount: false, lockDir: path.join(store.dir, '.lock') };
    const srv = await chunkServer(b.new, opts);
    try {
      const ev: InstallEvent[] = [];
      const t = performance.now();
      await install({ ctx, stream: createReadStream(bundle), label: 'debian', keysDir: k.keysDir, tries: 3, chunkSource: httpChunkSource(srv.url), onEvent: (e) => ev.push(e) });
      const s = (performance.now() - t) / 1000;
      const done = ev.find((e): e is Extract<InstallEvent, { event: 'chunks' }> => e.event === 'chunks' && e.fetched !== undefined);
      if (done?.fallback) throw new Error(`the install fell back to the whole layer: ${done.fallback}`);
      return { store, fetched: srv.total(), ranges: srv.ranges, s, rebuilt: ev.find((e): e is Extract<InstallEvent, { event: 'chunks' }> => e.event === 'chunks')?.rebuilt ?? 0 };
    } finally {
      await srv.close();
    }
  };
  const alone = await installOnce('store-chunks', { hide: '.frames' });
  const frames = await installOnce('store-frames', {});
  const store = frames.store;
  const oldM = (await store.slotManifest('a'))!.manifest;
  const cas = await casyncFetch(store.layerPath(oldM.layers[0].digest), store.layerPath(newM.layers[0].digest));
  const casync = cas.bytes + cas.index;
  const share = frames.fetched / size;
  // what the build pays for the frame deltas of the new layer (a copy: the build output keeps its own)
  const copy = path.join(work, 'frames-build');
  await fs.mkdir(copy, { recursive: true });
  const layerCopy = path.join(copy, `${newM.layers[0].digest}.sqfs`);
  await fs.copyFile(path.join(b.new, 'layers', `${newM.layers[0].digest}.sqfs`), layerCopy);
  const zstd = await openZstd();
  const t = performance.now();
  await writeFrameDeltas(layerCopy, newM.layers[0].digest, zstd, 3);
  const buildS = (performance.now() - t) / 1000;
  await zstd.close();
  const deltaFile = (await fs.stat(path.join(copy, `${newM.layers[0].digest}.delta`))).size;
  return [
    { metric: 'chunks: Debian base security update, bytes fetched / new layer (frame deltas)', value: `${pct(frames.fetched, size)} (${MB(frames.fetched)} of ${MB(size)}, indexes included, ${frames.ranges} range requests; ${MB(frames.rebuilt)} of changed blocks rebuilt)`, goal: '≤ 12 %', ok: share <= 0.12 },
    { metric: 'chunks: the same update with chunks alone (no frames index on the server)', value: `${pct(alone.fetched, size)} (${MB(alone.fetched)}, ${alone.ranges} range requests)` },
    { metric: 'chunks: the same pair, the real casync (Debian\'s casync 2, --chunk-size=16384: its zstd chunks the old layer lacks + its index)', value: `${pct(casync, size)} (${MB(casync)}: ${cas.chunks} chunks, index ${MB(cas.index)})`, goal: 'above ours', ok: casync > frames.fetched },
    { metric: 'chunks: against the anchors (casync 17.4 %, per-file zstd 13.8 %, whole 100 %)', value: `${(share * 100).toFixed(2)} % vs 17.4 / 13.8 / 100` },
    { metric: 'chunks: the install of the Debian update (plan: decode the store\'s layer; rebuild, check, fsync)', value: `${frames.s.toFixed(1)} s with frame deltas, ${alone.s.toFixed(1)} s with chunks alone` },
    { metric: 'chunks: the build\'s frame deltas of the new Debian layer (one core)', value: `${buildS.toFixed(1)} s for ${MB(size)} of layer; delta file ${MB(deltaFile)} (${pct(deltaFile, size)} of the layer)` },
  ];
}

/** Bytes of AES-CTR over zeros: incompressible and reproducible, fast to make. */
function noise(size: number, seed: number): Buffer {
  const c = createCipheriv('aes-128-ctr', Buffer.alloc(16, seed), Buffer.alloc(16));
  return Buffer.concat([c.update(Buffer.alloc(size)), c.final()]);
}

const PIECE = 16 << 20;

/** A 1 GiB layer file written piece by piece; `patched`: 64 KiB of other bytes in the middle of each 16 MiB. */
function bigLayer(patched: boolean) {
  return async (file: string) => {
    const fh = await fs.open(file, 'w');
    try {
      for (let i = 0; i < GiB / PIECE; i++) {
        const b = noise(PIECE, i);
        if (patched) noise(64 << 10, 1000 + i).copy(b, PIECE / 2);
        await fh.write(b);
      }
    } finally {
      await fh.close();
    }
  };
}

const GiB = 1 << 30;


async function reassemblyRows(work: string, k: { key: string; keysDir: string }): Promise<Row[]> {
  const size = GiB;
  const v1 = await chunkedBuild(path.join(work, 'big1'), { version: '1', key: k.key, layers: [{ name: 'big', data: bigLayer(false) }] });
  const v2 = await chunkedBuild(path.join(work, 'big2'), { version: '2', key: k.key, layers: [{ name: 'big', data: bigLayer(true) }] });
  const store = await stageStore(path.join(work, 'big-store'), { slots: { a: { buildDir: v1.dir, status: 'good' } } });
  await fs.rm(v1.dir, { recursive: true });
  const srv = await chunkServer(v2.dir);
  try {
    const child = await run('npx', ['tsx', path.join(here, 'chunks-reassemble.ts'), store.dir, v2.dir, srv.url]);
    const r = JSON.parse(child.stdout.trim().split('\n').pop()!) as { planMs: number; ms: number; fetched: number; fallback: string | null; before: number; peak: number };
    if (r.fallback) throw new Error(`the reassembly fell back to the whole layer: ${r.fallback}`);
    const rate = size / 1e6 / (r.ms / 1000);
    const rise = r.peak - r.before;
    return [
      { metric: 'chunks: 1 GiB layer, plan (cut the store\'s layer, fetch the index)', value: `${(r.planMs / 1000).toFixed(1)} s` },
      { metric: 'chunks: 1 GiB layer, reassembly (write, check, fsync, rename)', value: `${(r.ms / 1000).toFixed(1)} s, ${rate.toFixed(0)} MB/s of output; ${MB(r.fetched)} fetched`, goal: '≥ 100 MB/s', ok: rate >= 100 },
      { metric: 'chunks: 1 GiB layer, memory of the reassembly (peak RSS rise in its process)', value: `${(rise / 2 ** 20).toFixed(1)} MiB (the process: ${(r.before / 2 ** 20).toFixed(0)} MiB before, ${(r.peak / 2 ** 20).toFixed(0)} MiB at its peak)`, goal: '≤ 64 MiB', ok: rise <= 64 * 2 ** 20 },
    ];
  } finally {
    await srv.close();
  }
}

export async function benchChunks(): Promise<Row[]> {
  const work = await fs.mkdtemp(path.join(os.tmpdir(), 'sb-bench-chunks-'));
  try {
    const k = await keys(work);
    const deb = await debianRows(work, k).catch((e) => [{ metric: 'chunks: Debian base update', value: `not available: ${(e as Error).message.split('\n')[0]}` }]);
    return [...deb, ...(await reassemblyRows(work, k))];
  } finally {
    await fs.rm(work, { recursive: true, force: true });
  }
}
