/**
 * A layer rebuilt from chunks (chunk deltas): the new layer's chunk index (checked against
 * the signed manifest) names each chunk by its sha256; the node finds the chunks it has
 * in the layers of its store (cut with the same sizes: build/chunker.ts) and fetches only
 * the others from a ChunkSource (Range requests, runs of adjacent chunks together). The
 * bytes stream into Store.putLayer, which checks the whole layer's size and sha256
 * before the rename: a power cut leaves a temp file (gc sweeps it), never a wrong layer.
 *
 * A layer with a dm-verity tree: the chunks that lie in the tree are not fetched (nor
 * carried by a bundle): the node computes the tree from the data it reassembled (the
 * index cuts the layer where the tree starts: format/chunker.ts), and checks them like
 * any chunk.
 *
 * Every chunk is checked as it comes (a local one too: a store file can rot). A remote
 * chunk that is wrong is fetched once more; wrong again, or a server without Range, and
 * the layer is fetched whole instead (said in a `chunks` event).
 */
import { promises as fs } from 'node:fs';
import { chunkDigest, chunkFile } from '../format/index.js';
import { StackbootError } from '../sys/index.js';
import { VerityTreeBuilder, treeChunks, verifyChunkIndex, type ChunkIndex, type ChunkIndexRef, type ChunkSizes, type LayerRef, type Store } from '../format/index.js';
import { RangeUnsupported, type ChunkSource } from './chunk-source.js';
import { FrameBuilder, FrameMismatch, planFrames, type FramePlan } from './frame-delta.js';
import { openZstd } from '../sys/index.js';
import type { FramesRef } from '../format/index.js';

/** Where a chunk lies in a layer the store has. */
interface LocalChunk {
  file: string;
  offset: number;
}

/** A layer to rebuild: its index, and for each chunk where it comes from. */
export interface ChunkPlan {
  layer: LayerRef;
  index: ChunkIndex;
  /** per chunk: a local copy, or null (fetch, or compute: `tree`) */
  local: (LocalChunk | null)[];
  /** the chunks of the dm-verity tree the node computes (none found in the store) */
  tree: Set<number>;
  /** bytes found in the store */
  have: number;
  /** bytes of the tree computed on the node */
  computed: number;
  /** bytes to fetch (plus the index itself) */
  fetch: number;
  indexBytes: number;
  /** frame deltas: the frames rebuilt from decoded chunks (frame-delta.ts) */
  frames?: FramePlan;
  /** why the layer goes without frame deltas, when its manifest names a frames index */
  framesOff?: string;
  /** bytes of the layer rebuilt from frame deltas (decoded chunks of the store and fetched ones) */
  rebuilt?: number;
}

/** The most bytes one Range request asks for (runs of adjacent missing chunks). */
const RUN_BYTES = 4 << 20;
/** Remote runs fetched ahead of the writer. */
const AHEAD = 3;

/** The chunks of the store's layers, by digest (each layer cut with `sizes`; `except` is skipped). */
export async function storeChunks(store: Store, sizes: ChunkSizes, except: Set<string>): Promise<Map<string, LocalChunk>> {
  const out = new Map<string, LocalChunk>();
  for (const d of await store.layerDigests()) {
    if (except.has(d)) continue;
    const file = store.layerPath(d);
    let offset = 0;
    for (const c of await chunkFile(file, sizes)) {
      if (!out.has(c.digest)) out.set(c.digest, { file, offset });
      offset += c.size;
    }
  }
  return out;
}

/**
 * Fetches and checks a layer's index, and maps its chunks onto the store. With `carried`
 * (a bundle's chunk delta) exactly those chunks come from the source, the others must
 * be in the store.
 */
export async function planChunks(store: Store, layer: LayerRef, ref: ChunkIndexRef, source: ChunkSource, carried?: Set<number>, framesRef?: FramesRef): Promise<ChunkPlan> {
  const index = verifyChunkIndex(ref, layer.size, await source.index(ref), source.label);
  const have = await storeChunks(store, index.sizes, new Set([layer.digest]));
  const local = index.chunks.map((c, i) => (carried?.has(i) ? null : have.get(c.digest) ?? null));
  const tree = new Set([...treeChunks(layer, index)].filter((i) => local[i] === null && !carried?.has(i)));
  const lacking = carried ? local.findIndex((l, i) => l === null && !carried.has(i) && !tree.has(i)) : -1;
  if (lacking >= 0) {
    throw new StackbootError('MISSING_LAYERS', `${source.label}: chunk ${lacking} of layer ${layer.name} (sha256 ${index.chunks[lacking].digest.slice(0, 12)}) is neither in the store nor in the bundle: the bundle's base is not this store's stack; install a full bundle`);
  }
  let got = 0;
  let computed = 0;
  index.chunks.forEach((c, i) => {
    if (local[i]) got += c.size;
    else if (tree.has(i)) computed += c.size;
  });
  const plan: ChunkPlan = { layer, index, local, tree, have: got, computed, fetch: layer.size - got - computed, indexBytes: ref.size };
  return framesRef && !carried ? withFrames(plan, store, source, framesRef) : plan;
}

/** The byte ranges of the layer the chunk plan fetches, merged. */
function remoteRanges(p: ChunkPlan): [number, number][] {
  const out: [number, number][] = [];
  let at = 0;
  p.index.chunks.forEach((c, i) => {
    if (p.local[i] === null && !p.tree.has(i)) {
      const last = out[out.length - 1];
      if (last && last[1] === at) last[1] += c.size;
      else out.push([at, at + c.size]);
    }
    at += c.size;
  });
  return out;
}

/** The plan with frame deltas: the planned frames' bytes come from `.delta` and the store, the rest as before. */
async function withFrames(p: ChunkPlan, store: Store, source: ChunkSource, ref: FramesRef): Promise<ChunkPlan> {
  const remote = remoteRanges(p);
  if (remote.length === 0) return p;
  const r = await planFrames(store, p.layer, ref, source, remote);
  if ('off' in r) return { ...p, framesOff: r.off };
  const f = r.plan;
  // the remote bytes outside the planned frames are still fetched from the layer file
  let covered = 0;
  for (const i of f.frames.keys()) {
    const fr = f.index.frames[i];
    for (const [s, e] of remote) covered += Math.max(0, Math.min(e, fr.offset + fr.length) - Math.max(s, fr.offset));
  }
  return { ...p, frames: f, rebuilt: covered, fetch: p.fetch - covered + f.deltaBytes, indexBytes: p.indexBytes + f.indexBytes };
}

/** A run of chunks that come from one place: one read of a store's layer, or one Range request. */
interface Segment {
  remote: boolean;
  /** the chunks are computed: the dm-verity tree */
  tree?: boolean;
  /** local: where the run lies in a layer of the store */
  at?: LocalChunk;
  /** first chunk, end chunk (exclusive) */
  from: number;
  to: number;
  /** byte offsets in the new layer */
  start: number;
  end: number;
}

function segments(p: ChunkPlan): Segment[] {
  const out: Segment[] = [];
  let at = 0;
  p.index.chunks.forEach((c, i) => {
    const loc = p.local[i];
    const tree = p.tree.has(i);
    const remote = loc === null && !tree;
    const last = out[out.length - 1];
    // a local run goes on while the chunks follow each other in one file
    const follows = (l: Segment) => (tree ? !!l.tree : remote ? l.remote : !l.remote && !l.tree && l.at!.file === loc!.file && l.at!.offset + (l.end - l.start) === loc!.offset);
    if (last && follows(last) && (tree || last.end - last.start + c.size <= RUN_BYTES)) {
      last.to = i + 1;
      last.end += c.size;
    } else out.push({ remote, from: i, to: i + 1, start: at, end: at + c.size, ...(loc ? { at: loc } : {}), ...(tree ? { tree } : {}) });
    at += c.size;
  });
  return out;
}

const sha = chunkDigest;

/** The first chunk of a segment's bytes whose sha256 is wrong, or -1. */
function badChunk(p: ChunkPlan, s: Segment, bytes: Buffer): number {
  let at = 0;
  for (let i = s.from; i < s.to; i++) {
    const c = p.index.chunks[i];
    if (sha(bytes.subarray(at, at + c.size)) !== c.digest) return i;
    at += c.size;
  }
  return -1;
}

/** A remote segment's bytes, checked chunk by chunk; a wrong chunk is fetched once more. */
async function fetchSegment(p: ChunkPlan, s: Segment, source: ChunkSource): Promise<Buffer> {
  for (let attempt = 0; ; attempt++) {
    const bytes = await source.range(p.layer, s.start, s.end);
    const bad = badChunk(p, s, bytes);
    if (bad < 0) return bytes;
    if (attempt > 0) throw new ChunkMismatch(`${source.label}: chunk ${bad} of layer ${p.layer.name} (sha256 ${p.index.chunks[bad].digest.slice(0, 12)}) is wrong twice`);
  }
}

class ChunkMismatch extends StackbootError {
  constructor(msg: string) {
    super('VERIFY', msg);
  }
}

/** The new layer's bytes in order, and its dm-verity tree computed from them where the plan says. */
async function* assemble(p: ChunkPlan, source: ChunkSource, onFetched: (n: number) => void, onFramesOff?: (why: string) => void): AsyncGenerator<Buffer> {
  const v = p.layer.verity;
  if (!v || p.tree.size === 0) return yield* assembleData(p, source, onFetched, undefined, onFramesOff);
  const t = new VerityTreeBuilder(v.dataBytes, Buffer.from(v.salt, 'hex'));
  let built: Buffer | undefined;
  let at = 0;
  for await (const b of assembleData(p, source, onFetched, async (s) => {
    const tree = (built ??= t.finish().tree);
    const bytes = tree.subarray(s.start - v.hashOffset, s.end - v.hashOffset);
    if (badChunk(p, s, bytes) < 0) return bytes;
    // not the tree the index names (the layer's own tree is not the one of its data?): fetch it
    const fetched = await fetchSegment(p, { ...s, remote: true, tree: false }, source);
    onFetched(fetched.length);
    return fetched;
  }, onFramesOff)) {
    if (at < v.dataBytes) t.push(b.subarray(0, Math.min(b.length, v.dataBytes - at)));
    at += b.length;
    yield b;
  }
}

/**
 * A remote run's bytes with frame deltas: the planned frames in it rebuilt, the bytes
 * between them fetched from the layer file; checked chunk by chunk like a fetched run.
 */
async function frameSegment(p: ChunkPlan, s: Segment, fb: FrameBuilder, source: ChunkSource, onFetched: (n: number) => void): Promise<Buffer> {
  const parts: Buffer[] = [];
  let pos = s.start;
  for (const i of fb.framesIn(s.start, s.end)) {
    const f = p.frames!.index.frames[i];
    if (f.offset > pos) {
      const gap = await source.range(p.layer, pos, f.offset);
      onFetched(gap.length);
      parts.push(gap);
      pos = f.offset;
    }
    const block = await fb.frame(i);
    const to = Math.min(s.end, f.offset + f.length);
    parts.push(block.subarray(pos - f.offset, to - f.offset));
    pos = to;
  }
  if (pos < s.end) {
    const gap = await source.range(p.layer, pos, s.end);
    onFetched(gap.length);
    parts.push(gap);
  }
  const bytes = Buffer.concat(parts);
  const bad = badChunk(p, s, bytes);
  if (bad >= 0) throw new FrameMismatch(`chunk ${bad} of layer ${p.layer.name} is wrong as rebuilt from frame deltas`);
  return bytes;
}

/** The layer's bytes in order: local chunks read and checked, remote runs fetched ahead, tree runs from `computeTree`. */
async function* assembleData(p: ChunkPlan, source: ChunkSource, onFetched: (n: number) => void, computeTree?: (s: Segment) => Promise<Buffer>, onFramesOff?: (why: string) => void): AsyncGenerator<Buffer> {
  const segs = segments(p);
  const zstd = p.frames && p.frames.frames.size ? await openZstd() : undefined;
  let fb = zstd ? new FrameBuilder(p.frames!, zstd, p.layer, source) : undefined;
  const withFrames = (s: Segment) => !!fb && s.remote && fb.framesIn(s.start, s.end).length > 0;
  const pending = new Map<number, Promise<Buffer>>();
  const ahead = (from: number) => {
    for (let k = from, n = 0; k < segs.length && n < AHEAD; k++) {
      if (!segs[k].remote) continue;
      n++;
      if (withFrames(segs[k])) {
        for (const i of fb!.framesIn(segs[k].start, segs[k].end)) fb!.prefetch(i);
        continue;
      }
      if (!pending.has(k)) {
        const pr = fetchSegment(p, segs[k], source);
        pr.catch(() => {}); // awaited in order below
        pending.set(k, pr);
      }
    }
  };
  const files = new Map<string, fs.FileHandle>();
  // every byte written passes the frame builder (the decoded bytes before a rebuilt frame)
  const out = async (b: Buffer) => {
    if (fb) await fb.tap(b);
    return b;
  };
  try {
    for (let k = 0; k < segs.length; k++) {
      const s = segs[k];
      ahead(k);
      if (s.tree) {
        yield await out(await computeTree!(s));
        continue;
      }
      if (s.remote && withFrames(s)) {
        let bytes: Buffer;
        try {
          bytes = await frameSegment(p, s, fb!, source, onFetched);
        } catch (e) {
          if (!(e instanceof FrameMismatch || e instanceof RangeUnsupported)) throw e;
          // the rest of the layer goes as chunks
          onFramesOff?.((e as Error).message);
          onFetched(fb!.fetched);
          await fb!.close();
          await zstd!.close();
          fb = undefined;
          bytes = await fetchSegment(p, s, source);
          onFetched(bytes.length);
        }
        yield await out(bytes);
        continue;
      }
      if (s.remote) {
        const bytes = await (pending.get(k) ?? fetchSegment(p, s, source));
        pending.delete(k);
        onFetched(bytes.length);
        yield await out(bytes);
        continue;
      }
      const bytes = await readLocal(s, files);
      if (badChunk(p, s, bytes) < 0) yield await out(bytes);
      else for (let i = s.from; i < s.to; i++) yield await out(await localChunk(p, i, files, source, onFetched));
    }
  } finally {
    for (const fh of files.values()) await fh.close().catch(() => {});
    if (fb) {
      onFetched(fb.fetched);
      await fb.close();
      await zstd!.close();
    }
  }
}

async function fileOf(files: Map<string, fs.FileHandle>, file: string): Promise<fs.FileHandle> {
  let fh = files.get(file);
  if (!fh) files.set(file, (fh = await fs.open(file, 'r')));
  return fh;
}

/** A local run's bytes, in one read. */
async function readLocal(s: Segment, files: Map<string, fs.FileHandle>): Promise<Buffer> {
  const b = Buffer.allocUnsafe(s.end - s.start);
  const { bytesRead } = await (await fileOf(files, s.at!.file)).read(b, 0, b.length, s.at!.offset);
  return b.subarray(0, bytesRead);
}

/** Chunk i from the store's copy; a copy that does not match (rot) is fetched instead. */
async function localChunk(p: ChunkPlan, i: number, files: Map<string, fs.FileHandle>, source: ChunkSource, onFetched: (n: number) => void): Promise<Buffer> {
  const loc = p.local[i]!;
  const c = p.index.chunks[i];
  const b = Buffer.allocUnsafe(c.size);
  const { bytesRead } = await (await fileOf(files, loc.file)).read(b, 0, c.size, loc.offset);
  if (bytesRead === c.size && sha(b) === c.digest) return b;
  let start = 0;
  for (let k = 0; k < i; k++) start += p.index.chunks[k].size;
  const bytes = await fetchSegment(p, { remote: true, from: i, to: i + 1, start, end: start + c.size }, source);
  onFetched(bytes.length);
  return bytes;
}

/**
 * A bundle's chunk delta as a ChunkSource: the index from the bundle's head, and the
 * carried chunks' bytes read in order from the `.data` entry (the reassembly asks for
 * them in order). There is no whole layer to fall back to: a wrong chunk fails.
 */
export function bundleChunkSource(label: string, index: Buffer, body?: AsyncIterable<Buffer>): ChunkSource {
  const it = body?.[Symbol.asyncIterator]();
  let rest: Buffer = Buffer.alloc(0);
  let chain: Promise<unknown> = Promise.resolve();
  const take = async (n: number): Promise<Buffer> => {
    const parts: Buffer[] = [];
    let got = 0;
    while (got < n) {
      if (rest.length === 0) {
        const r = it ? await it.next() : { done: true as const, value: undefined };
        if (r.done) throw new StackbootError('VERIFY', `${label}: the bundle's chunk data ended early`);
        rest = r.value;
      }
      const k = Math.min(n - got, rest.length);
      parts.push(rest.subarray(0, k));
      rest = rest.subarray(k);
      got += k;
    }
    return Buffer.concat(parts);
  };
  return {
    label,
    index: async () => index,
    range: (_layer, start, end) => {
      const p = chain.then(() => take(end - start));
      chain = p.catch(() => {});
      return p;
    },
    whole: (layer) => {
      throw new StackbootError('VERIFY', `${label}: the bundle carries wrong chunks of layer ${layer.name} (no whole layer to fall back to)`);
    },
  };
}

export interface ChunkInstallResult {
  /** bytes taken from the store */
  had: number;
  /** bytes fetched (the index included) */
  fetched: number;
  /** why the layer was fetched whole instead, if it was */
  fallback?: string;
  /** why the frame deltas stopped part way (the rest came as chunks), if they did */
  framesOff?: string;
}

/**
 * Rebuilds a layer into the store from its plan; on a server without Range or a chunk
 * wrong twice, fetches the whole layer instead. Either way Store.putLayer checks it.
 */
export async function installChunked(store: Store, p: ChunkPlan, source: ChunkSource, onBytes: (n: number) => void): Promise<ChunkInstallResult> {
  let fetched = p.indexBytes;
  let framesOff: string | undefined;
  try {
    await store.putLayer(p.layer, assemble(p, source, (n) => (fetched += n), (why) => (framesOff = why)), { source: source.label, what: 'chunks', onBytes });
    return { had: p.layer.size - (fetched - p.indexBytes), fetched, ...(framesOff ? { framesOff } : {}) };
  } catch (e) {
    if (!(e instanceof RangeUnsupported || e instanceof ChunkMismatch)) throw e;
    let whole = 0;
    await store.putLayer(p.layer, countBytes(source.whole(p.layer), (n) => (whole += n)), { source: source.label, what: 'layer file', onBytes });
    return { had: 0, fetched: fetched + whole, fallback: e.message };
  }
}

async function* countBytes(body: AsyncIterable<Buffer>, on: (n: number) => void): AsyncGenerator<Buffer> {
  for await (const c of body) {
    on(c.length);
    yield c;
  }
}
