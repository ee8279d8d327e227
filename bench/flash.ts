/**
 * Flash benchmark: an image that is ~20 % used (512 MiB, ~100 MiB of data in an ext4
 * partition), flashed to a file by `stackboot flash` (mapped ranges + verify) and by `dd`
 * of the whole image. Medians of 3 runs. Called by the bench runner.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { assembleDisk, MiB } from '../src/media/disk.js';
import { writeBmapFor } from '../src/media/bmap.js';
import { flash } from '../src/media/flash.js';
import { run } from '../src/sys/exec.js';

export interface FlashBench {
  bytesFlashed: number;
  ddBytes: number;
  flashMs: number;
  ddMs: number;
  verifyMs: number;
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

export async function benchFlash(o: { runs?: number; tmpDir?: string } = {}): Promise<FlashBench> {
  const runs = o.runs ?? 3;
  const work = await fs.mkdtemp(path.join(o.tmpDir ?? os.tmpdir(), 'sb-bench-flash-'));
  try {
    const content = path.join(work, 'content');
    await fs.mkdir(content);
    for (let i = 0; i < 25; i++) await fs.writeFile(path.join(content, `f${i}`), randomBytes(4 * MiB));
    const img = path.join(work, 'node.img');
    await assembleDisk(img, { seed: 'bench', epoch: 0, parts: [{ name: 'sb-store', type: 'linux', size: 510 * MiB, content: { kind: 'ext4', dir: content, label: 'sb-store' } }] });
    await writeBmapFor(img);
    const size = (await fs.stat(img)).size;
    const flashMs: number[] = [];
    const verifyMs: number[] = [];
    const ddMs: number[] = [];
    let bytesFlashed = 0;
    for (let i = 0; i < runs; i++) {
      const out = path.join(work, 'out.img');
      await fs.rm(out, { force: true });
      const t0 = Date.now();
      const r = await flash({ image: img, target: out });
      flashMs.push(Date.now() - t0);
      verifyMs.push(r.verifyMs);
      bytesFlashed = r.bytesWritten;
      await fs.rm(out, { force: true });
      const t1 = Date.now();
      await run('dd', [`if=${img}`, `of=${out}`, 'bs=4M', 'conv=fsync', 'status=none']);
      ddMs.push(Date.now() - t1);
      await fs.rm(out, { force: true });
    }
    return { bytesFlashed, ddBytes: size, flashMs: median(flashMs), ddMs: median(ddMs), verifyMs: median(verifyMs) };
  } finally {
    await fs.rm(work, { recursive: true, force: true });
  }
}
