/**
 * The build's part of frame deltas (format/frames.ts): beside each zstd layer of a
 * `build --chunks`, its frames index and delta file, named in the manifest. Both are a
 * pure function of the layer's bytes, the libzstd version and the format's constants, so
 * a pair already beside the layer for this libzstd is kept (a rebuild of an unchanged
 * layer costs nothing). Without python3-zstandard the build says so and goes on with
 * chunk indexes alone (nodes then fetch changed blocks whole).
 */
import { promises as fs } from 'node:fs';
import { availableParallelism } from 'node:os';
import path from 'node:path';
import { openZstd, StackbootError, type ProgressSink, type Zstd } from '../sys/index.js';
import { DELTA_LEVEL, PREFIX_BYTES, deltaFileName, framesIndexName, framesLine, parseFramesIndex, writeFrameDeltas, type FramesRef } from '../format/index.js';
import { createHash } from 'node:crypto';

interface BuiltLayer {
  name: string;
  digest: string;
  file: string;
}

/** A frames index and delta file already beside the layer, made with this libzstd at this level. */
async function existing(l: BuiltLayer, zstd: Zstd, level: number): Promise<FramesRef | null> {
  const dir = path.dirname(l.file);
  try {
    const b = await fs.readFile(path.join(dir, framesIndexName(l.digest)));
    const ix = parseFramesIndex(b);
    const layerSize = (await fs.stat(l.file)).size;
    const deltaSize = (await fs.stat(path.join(dir, deltaFileName(l.digest)))).size;
    if (ix.zstdVersion !== zstd.version || ix.level !== level || ix.deltaLevel !== DELTA_LEVEL || ix.prefix !== PREFIX_BYTES || ix.layerSize !== layerSize || ix.deltaSize !== deltaSize) return null;
    return { layer: l.digest, digest: createHash('sha256').update(b).digest('hex'), size: b.length };
  } catch {
    return null;
  }
}

/** The manifest's `frames` lines for the built layers (none when libzstd cannot be reached from here). */
export async function frameDeltaLines(built: BuiltLayer[], level: number, progress: ProgressSink, jobs = availableParallelism()): Promise<[string, string][]> {
  let zstd: Zstd;
  try {
    zstd = await openZstd();
  } catch (e) {
    progress({ task: 'frame deltas', done: 0, note: `skipped: ${(e as Error).message}`, final: true });
    return [];
  }
  // more libzstd processes (up to `jobs`) once a layer has to be written
  const pool: Zstd[] = [zstd];
  try {
    const out: [string, string][] = [];
    const seen = new Set<string>();
    for (const l of built) {
      if (seen.has(l.digest)) continue;
      seen.add(l.digest);
      let ref = await existing(l, zstd, level);
      if (!ref) {
        const task = `frame deltas ${l.name}`;
        while (pool.length < Math.max(1, jobs)) pool.push(await openZstd());
        ref = await writeFrameDeltas(l.file, l.digest, pool, level, (done, total) => progress({ task, done, total, unit: 'bytes' }));
        progress({ task, done: 1, total: 1, final: true });
      }
      out.push(framesLine(ref));
    }
    return out;
  } catch (e) {
    throw e instanceof StackbootError ? e : new StackbootError('TOOL', `frame deltas: ${(e as Error).message}`, { cause: e });
  } finally {
    for (const z of pool) await z.close();
  }
}
