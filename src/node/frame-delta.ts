/**
 * Frame deltas on the node (format/frames.ts): the frames of a new layer that its chunk
 * plan would fetch are rebuilt instead from their decoded chunks: those the store's
 * layers have (their frames decoded and cut the same way) and the others fetched from
 * `<layer>.delta`, each decompressed against the decoded bytes before it, and the block
 * compressed again with the system libzstd at the layer's level. Only the raw bytes
 * between such frames are still fetched from the layer file.
 *
 * The path is taken when the build published a frames index (signed through the
 * manifest), the source serves `.delta`, and this node's libzstd is the version the index
 * names (zstd gives the same bytes only for the same version); otherwise the chunk plan
 * stands, and the plan says why. Every decoded chunk is checked against its digest, every
 * rebuilt frame against its length, and every run of the layer against the chunk index's
 * sha256s (chunk-install.ts); a mismatch turns the path off for the rest of the layer.
 */
import { promises as fs } from 'node:fs';
import { StackbootError, openZstd, type Zstd } from '../sys/index.js';
import { DecodedTail, decodedChunks, layerFrames, parseDeltaEntries, shortDigest, verifyFramesIndex, ENTRY, type DeltaEntry, type FramesIndex, type FramesRef, type LayerRef, type Store } from '../format/index.js';
import type { ChunkSource } from './chunk-source.js';

/** Where a decoded chunk lies in a layer of the store: in which frame, where in its decoded bytes. */
interface OldChunk {
  file: string;
  frameOffset: number;
  frameLength: number;
  at: number;
  size: number;
}

export interface FramePlan {
  index: FramesIndex;
  /** the frames rebuilt (numbers in index.frames), with their entries */
  frames: Map<number, DeltaEntry[]>;
  /** the decoded chunks the store has, by short digest */
  local: Map<string, OldChunk>;
  /** bytes of `.delta` to fetch: the missing chunks */
  deltaBytes: number;
  /** bytes of the index and of the planned frames' entries (fetched by the plan) */
  indexBytes: number;
  /** decoded bytes found in the store and fetched */
  decodedHave: number;
  decodedFetch: number;
}

/** Why a layer goes without frame deltas (said in the plan), or the plan. */
export type FramePlanResult = { plan: FramePlan } | { off: string };

const RUN = 4 << 20;

/** Byte ranges [start, end) merged when adjacent, each at most RUN bytes. */
function runs(ranges: [number, number][]): [number, number][] {
  const out: [number, number][] = [];
  for (const [s, e] of ranges) {
    const last = out[out.length - 1];
    if (last && last[1] === s && e - last[0] <= RUN) last[1] = e;
    else out.push([s, e]);
  }
  return out;
}

/**
 * Plans the frames of `layer` that lie in `remote` (the byte ranges the chunk plan would
 * fetch): fetches the index and those frames' entries, and finds their decoded chunks in
 * the store's other layers.
 */
export async function planFrames(store: Store, layer: LayerRef, ref: FramesRef, source: ChunkSource, remote: [number, number][]): Promise<FramePlanResult> {
  if (!source.frames || !source.deltaRange) return { off: `${source.label} serves no frame deltas` };
  let index: FramesIndex;
  try {
    index = verifyFramesIndex(ref, layer.size, await source.frames(ref), source.label);
  } catch (e) {
    if (e instanceof StackbootError && e.code === 'VERIFY') throw e;
    return { off: `no frames index: ${(e as Error).message}` };
  }
  let zstd: Zstd;
  try {
    zstd = await openZstd();
  } catch (e) {
    return { off: (e as Error).message };
  }
  try {
    if (zstd.version !== index.zstdVersion) return { off: `the layer's blocks were compressed with libzstd ${index.zstdVersion}, this node has ${zstd.version}` };
    // the indexed frames that overlap the bytes to fetch
    const chosen: number[] = [];
    let r = 0;
    index.frames.forEach((f, i) => {
      while (r < remote.length && remote[r][1] <= f.offset) r++;
      if (r < remote.length && remote[r][0] < f.offset + f.length) chosen.push(i);
    });
    const frames = new Map<number, DeltaEntry[]>();
    if (chosen.length === 0) return { plan: { index, frames, local: new Map(), deltaBytes: 0, indexBytes: ref.size, decodedHave: 0, decodedFetch: 0 } };
    let deltaBytes = 0;
    let entryBytes = 0;
    const delta = { digest: index.deltaDigest, size: index.deltaSize };
    const entryRanges = runs(chosen.map((i) => [index.frames[i].entriesOffset, index.frames[i].entriesOffset + index.frames[i].entries * ENTRY]));
    const fetched = new Map<number, Buffer>();
    try {
      for (const [s, e] of entryRanges) {
        fetched.set(s, await source.deltaRange(layer, delta, s, e));
        entryBytes += e - s;
      }
    } catch (e) {
      // a server that keeps the delta file from us (no Range, not there): the chunk plan stands
      if (e instanceof StackbootError && e.code === 'NETWORK') return { off: `the delta file: ${e.message}` };
      throw e;
    }
    const starts = [...fetched.keys()];
    for (const i of chosen) {
      const f = index.frames[i];
      const s = starts.filter((x) => x <= f.entriesOffset).pop()!;
      const b = fetched.get(s)!;
      frames.set(i, parseDeltaEntries(b.subarray(f.entriesOffset - s, f.entriesOffset - s + f.entries * ENTRY), f.entries));
    }
    const needed = new Set<string>();
    for (const ents of frames.values()) for (const e of ents) needed.add(e.digest);
    const local = new Map<string, OldChunk>();
    for (const d of await store.layerDigests()) {
      if (d === layer.digest) continue;
      const file = store.layerPath(d);
      for await (const fr of layerFrames(file, zstd)) {
        let at = 0;
        for (const c of decodedChunks(fr.decoded, index.sizes)) {
          if (needed.has(c.digest) && !local.has(c.digest)) local.set(c.digest, { file, frameOffset: fr.offset, frameLength: fr.frame.length, at, size: c.size });
          at += c.size;
        }
      }
    }
    let decodedHave = 0;
    let decodedFetch = 0;
    for (const ents of frames.values())
      for (const e of ents) {
        if (local.has(e.digest)) decodedHave += e.size;
        else {
          decodedFetch += e.size;
          deltaBytes += e.stored;
        }
      }
    return { plan: { index, frames, local, deltaBytes, indexBytes: ref.size + entryBytes, decodedHave, decodedFetch } };
  } finally {
    await zstd.close();
  }
}

/** A frame rebuild failed its checks: the rest of the layer goes without frame deltas. */
export class FrameMismatch extends StackbootError {
  constructor(msg: string) {
    super('VERIFY', msg);
  }
}

/**
 * Rebuilds the planned frames of one layer, in layer order. The decoded bytes of every
 * indexed frame pass through the decoded tail (the rebuilt ones as they are made, the
 * others as the writer passes them: `tap`), so a chunk is decompressed against the same
 * bytes the build compressed it with.
 */
export class FrameBuilder {
  private readonly tail: DecodedTail;
  /** the next indexed frame the tail has not had */
  private next = 0;
  /** the writer's position and the bytes of the frame it is in */
  private pos = 0;
  private cur: Buffer[] = [];
  private readonly built = new Map<number, Buffer>();
  private readonly oldFrames = new Map<string, Buffer>();
  private readonly files = new Map<string, fs.FileHandle>();
  private readonly prefetched = new Map<number, Promise<Buffer>>();
  /** the planned frames' numbers, in layer order */
  private readonly planned: number[];
  fetched = 0;

  constructor(private readonly p: FramePlan, private readonly zstd: Zstd, private readonly layer: LayerRef, private readonly source: ChunkSource) {
    this.tail = new DecodedTail(p.index.prefix);
    this.planned = [...p.frames.keys()].sort((a, b) => a - b);
  }

  /** The planned frames that overlap [start, end) of the layer, in order. */
  framesIn(start: number, end: number): number[] {
    const frames = this.p.index.frames;
    // the first planned frame that ends after `start` (frames are in order and do not overlap)
    let lo = 0;
    let hi = this.planned.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      const f = frames[this.planned[mid]];
      if (f.offset + f.length <= start) lo = mid + 1;
      else hi = mid;
    }
    const out: number[] = [];
    for (let k = lo; k < this.planned.length && frames[this.planned[k]].offset < end; k++) out.push(this.planned[k]);
    return out;
  }

  /** Starts fetching a planned frame's missing chunks (ahead of the writer). */
  prefetch(i: number): void {
    if (this.prefetched.has(i) || this.built.has(i)) return;
    const pr = this.fetchMissing(i);
    pr.catch(() => {});
    this.prefetched.set(i, pr);
  }

  private async fetchMissing(i: number): Promise<Buffer> {
    const f = this.p.index.frames[i];
    const ents = this.p.frames.get(i)!;
    const ranges: [number, number][] = [];
    let at = f.dataOffset;
    for (const e of ents) {
      if (!this.p.local.has(e.digest)) ranges.push([at, at + e.stored]);
      at += e.stored;
    }
    const parts: Buffer[] = [];
    for (const [s, e] of runs(ranges)) parts.push(await this.source.deltaRange!(this.layer, { digest: this.p.index.deltaDigest, size: this.p.index.deltaSize }, s, e));
    const b = Buffer.concat(parts);
    this.fetched += b.length;
    return b;
  }

  /** The compressed bytes of planned frame i (rebuilt once, kept until the writer passes it). */
  async frame(i: number): Promise<Buffer> {
    const have = this.built.get(i);
    if (have) return have;
    const f = this.p.index.frames[i];
    // the tail must have every indexed frame before this one: the writer has passed the
    // unplanned ones (tap), the planned ones were rebuilt in order
    if (this.next !== i) {
      this.next = i;
      this.cur = [];
    }
    const missing = await (this.prefetched.get(i) ?? this.fetchMissing(i));
    this.prefetched.delete(i);
    const ents = this.p.frames.get(i)!;
    // the tail's bytes, then the frame's decoded bytes as they are made: a chunk's prefix is what lies before it
    const tail = this.tail.bytes();
    const work = Buffer.allocUnsafe(tail.length + f.decoded);
    tail.copy(work);
    const decoded = work.subarray(tail.length);
    let at = 0;
    let m = 0;
    for (const e of ents) {
      let chunk: Buffer;
      const loc = this.p.local.get(e.digest);
      if (loc) chunk = (await this.oldFrame(loc)).subarray(loc.at, loc.at + loc.size);
      else {
        const stored = missing.subarray(m, m + e.stored);
        m += e.stored;
        if (e.mode === 0) chunk = stored;
        else {
          const end = tail.length + at;
          try {
            [chunk] = await this.zstd.decompressWithPrefix([{ frame: stored, prefix: work.subarray(Math.max(0, end - this.p.index.prefix), end) }]);
          } catch (err) {
            throw new FrameMismatch(`${this.source.label}: a delta chunk of frame ${i} of layer ${this.layer.name} (sha256 ${e.digest.slice(0, 12)}…) is wrong: it does not decode (${(err as Error).message})`);
          }
        }
      }
      if (chunk.length !== e.size || shortDigest(chunk) !== e.digest) throw new FrameMismatch(`${this.source.label}: a decoded chunk of frame ${i} of layer ${this.layer.name} (sha256 ${e.digest.slice(0, 12)}…) is wrong`);
      chunk.copy(decoded, at);
      at += e.size;
    }
    if (at !== f.decoded) throw new FrameMismatch(`frame ${i} of layer ${this.layer.name}: ${at} decoded bytes, the index says ${f.decoded}`);
    const [block] = await this.zstd.compress([decoded], this.p.index.level);
    if (block.length !== f.length) throw new FrameMismatch(`frame ${i} of layer ${this.layer.name} compressed again to ${block.length} bytes, not ${f.length}: libzstd does not give the build's bytes`);
    this.tail.push(Buffer.from(decoded));
    this.next = i + 1;
    this.cur = [];
    this.built.set(i, block);
    return block;
  }

  /** An old layer's frame, decoded (the last few kept). */
  private async oldFrame(loc: OldChunk): Promise<Buffer> {
    const key = `${loc.file}:${loc.frameOffset}`;
    const have = this.oldFrames.get(key);
    if (have) return have;
    let fh = this.files.get(loc.file);
    if (!fh) this.files.set(loc.file, (fh = await fs.open(loc.file, 'r')));
    const b = Buffer.allocUnsafe(loc.frameLength);
    await fh.read(b, 0, b.length, loc.frameOffset);
    let d: Buffer;
    try {
      [d] = await this.zstd.decompress([b]);
    } catch (err) {
      throw new FrameMismatch(`the store's layer ${loc.file}: its block at ${loc.frameOffset} does not decode (${(err as Error).message})`);
    }
    if (this.oldFrames.size >= 16) this.oldFrames.delete(this.oldFrames.keys().next().value!);
    this.oldFrames.set(key, d);
    return d;
  }

  /**
   * The writer's bytes, in order: the indexed frames among them that were not rebuilt are
   * decoded into the tail when the next planned frame is near enough to need them.
   */
  async tap(b: Buffer): Promise<void> {
    const frames = this.p.index.frames;
    for (const i of this.built.keys()) if (frames[i].offset + frames[i].length <= this.pos + b.length) this.built.delete(i);
    let off = 0;
    while (off < b.length) {
      // skip to the next indexed frame the tail has not had
      while (this.next < frames.length && frames[this.next].offset + frames[this.next].length <= this.pos) {
        this.next++;
        this.cur = [];
      }
      if (this.next >= frames.length) return;
      const f = frames[this.next];
      const end = this.pos + (b.length - off);
      if (end <= f.offset) {
        this.pos = end;
        return;
      }
      const from = Math.max(this.pos, f.offset);
      const to = Math.min(end, f.offset + f.length);
      this.cur.push(b.subarray(off + (from - this.pos), off + (to - this.pos)));
      off += to - this.pos;
      this.pos = to;
      if (to === f.offset + f.length) {
        const i = this.next;
        const parts = this.cur;
        this.cur = [];
        this.next++;
        if (this.p.frames.has(i)) continue; // rebuilt: the tail had it then
        if (this.nearPlanned(i)) this.tail.push((await this.zstd.decompress([Buffer.concat(parts)]))[0]);
        else this.tail.clear();
      }
    }
  }

  /** Whether a planned frame follows frame i within the dictionary's reach. */
  private nearPlanned(i: number): boolean {
    const frames = this.p.index.frames;
    let reach = 0;
    for (let k = i + 1; k < frames.length && reach < this.p.index.prefix; k++) {
      if (this.p.frames.has(k)) return true;
      reach += frames[k].decoded;
    }
    return false;
  }

  async close(): Promise<void> {
    for (const fh of this.files.values()) await fh.close().catch(() => {});
  }
}
