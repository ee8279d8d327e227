/**
 * libzstd through python3-zstandard (src/sys/zstd.ts). The proof that matters: every zstd
 * frame gensquashfs writes (zstd level 3) comes back byte for byte from decompress then
 * compress(…, 3), on a squashfs made here (the Debian layer of the chunk tests, all 1,535
 * of its blocks: test/node/chunk-install.int.test.ts). Also: prefix compression round trips and pays, empty batches,
 * an error reply, concurrency, close, and a missing interpreter.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, promises as fs } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { StackbootError } from '../../src/sys/errors.js';
import { run } from '../../src/sys/exec.js';
import { openZstd, type Zstd } from '../../src/sys/zstd.js';
import { tmpdir } from '../build/sources/tarfixture.js';


/**
 * The zstd frames of a file: each occurrence of the magic (0xFD2FB528, little-endian) whose
 * frame walks to a last block inside the file. Scanning resumes after each frame.
 */
function findFrames(d: Buffer): Buffer[] {
  const MAGIC = Buffer.from([0x28, 0xb5, 0x2f, 0xfd]);
  /** the end of the frame at p, or -1 when the bytes there are no frame */
  const walk = (p: number): number => {
    let q = p + 4;
    if (q >= d.length) return -1;
    const fhd = d[q++]!;
    const fcsFlag = fhd >> 6;
    const single = (fhd >> 5) & 1;
    if ((fhd >> 3) & 1) return -1; // reserved bit
    const checksum = (fhd >> 2) & 1;
    q += single ? 0 : 1; // window descriptor
    q += [0, 1, 2, 4][fhd & 3]!; // dictionary id
    q += [single, 2, 4, 8][fcsFlag]!; // frame content size
    for (;;) {
      if (q + 3 > d.length) return -1;
      const bh = d.readUIntLE(q, 3);
      q += 3;
      const type = (bh >> 1) & 3;
      if (type === 3) return -1; // reserved block type
      q += type === 1 ? 1 : bh >> 3; // an RLE block carries one byte
      if (bh & 1) break; // last block
    }
    q += checksum ? 4 : 0;
    return q <= d.length ? q : -1;
  };
  const frames: Buffer[] = [];
  for (let p = d.indexOf(MAGIC); p >= 0; ) {
    const end = walk(p);
    if (end < 0) p = d.indexOf(MAGIC, p + 1);
    else {
      frames.push(d.subarray(p, end));
      p = d.indexOf(MAGIC, end);
    }
  }
  return frames;
}

/** Deterministic pseudo-random bytes (xorshift32). */
function prng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>>= 0);
  };
}

/** Text-like bytes: words of a small vocabulary, compressible but not trivially. */
function words(n: number, seed: number): Buffer {
  const vocab = 'the of libzstd squashfs block frame chunk layer delta prefix stack boot node kernel initrd verity manifest zstd level window match literal sequence huffman fse'.split(' ');
  const r = prng(seed);
  const parts: string[] = [];
  let len = 0;
  while (len < n) {
    const w = vocab[r() % vocab.length]! + (r() % 7 === 0 ? `${r() % 1000}\n` : ' ');
    parts.push(w);
    len += w.length;
  }
  return Buffer.from(parts.join('')).subarray(0, n);
}

/** Reproduces every frame: decompress, compress at `level`, compare. Returns the totals. */
async function reproduce(z: Zstd, frames: Buffer[], level: number): Promise<{ bad: number[]; raw: number }> {
  const bad: number[] = [];
  let raw = 0;
  const BATCH = 256;
  for (let i = 0; i < frames.length; i += BATCH) {
    const batch = frames.slice(i, i + BATCH);
    const plain = await z.decompress(batch);
    const again = await z.compress(plain, level);
    plain.forEach((p) => (raw += p.length));
    again.forEach((f, j) => {
      if (!f.equals(batch[j]!)) bad.push(i + j);
    });
  }
  return { bad, raw };
}

let work: string;
let z: Zstd;

/** Runs `fn` with STACKBOOT_PYTHON set to a wrapper that runs `script` (given the module's source as argv[1]). */
async function withPython<T>(script: string, fn: () => Promise<T>): Promise<T> {
  const py = path.join(work, `wrapper-${Math.random().toString(36).slice(2)}.py`);
  await fs.writeFile(py, script);
  const sh = `${py}.sh`;
  // the module runs: <python> -I -c SRC
  await fs.writeFile(sh, `#!/bin/sh\nexec /usr/bin/python3 ${py} "$3"\n`, { mode: 0o755 });
  const saved = process.env.STACKBOOT_PYTHON;
  process.env.STACKBOOT_PYTHON = sh;
  try {
    return await fn();
  } finally {
    if (saved === undefined) delete process.env.STACKBOOT_PYTHON;
    else process.env.STACKBOOT_PYTHON = saved;
  }
}

/** The pids of this process's children that run the zstd co-process. */
async function coProcesses(): Promise<number[]> {
  const out: number[] = [];
  for (const n of await fs.readdir('/proc')) {
    if (!/^\d+$/.test(n)) continue;
    try {
      const stat = await fs.readFile(`/proc/${n}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === process.pid && (await fs.readFile(`/proc/${n}/cmdline`, 'utf8')).includes('import zstandard')) out.push(Number(n));
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

beforeAll(async () => {
  work = await tmpdir('sb-zstd-');
  z = await openZstd();
});
afterAll(async () => {
  await z?.close();
  await fs.rm(work, { recursive: true, force: true });
});

describe('openZstd', () => {
  it('reports the system libzstd (Debian 12: 1.5.4)', () => {
    expect(z.version).toMatch(/^\d+\.\d+\.\d+$/);
  });

  it('names python3-zstandard when the interpreter is missing', async () => {
    const saved = process.env.STACKBOOT_PYTHON;
    process.env.STACKBOOT_PYTHON = path.join(work, 'no-such-python3');
    try {
      const e = await openZstd().then(
        () => undefined,
        (err: unknown) => err,
      );
      expect(e).toBeInstanceOf(StackbootError);
      expect((e as StackbootError).code).toBe('TOOL');
      expect((e as StackbootError).message).toContain('python3-zstandard');
    } finally {
      if (saved === undefined) delete process.env.STACKBOOT_PYTHON;
      else process.env.STACKBOOT_PYTHON = saved;
    }
  });

  it('names python3-zstandard when the interpreter lacks the zstandard module', async () => {
    // a python3 whose zstandard import fails
    const e = await withPython('import sys\nsys.modules["zstandard"] = None\nexec(sys.argv[1])\n', () => openZstd()).then(
      () => undefined,
      (err: unknown) => err as StackbootError,
    );
    expect(e).toBeInstanceOf(StackbootError);
    expect(e!.code).toBe('TOOL');
    expect(e!.message).toContain('cannot import zstandard');
    expect(e!.message).toContain('python3-zstandard');
  });

  it('a co-process that dies rejects the pending request with its stderr', async () => {
    const die = [
      'import os, sys, zstandard',
      'class Dying:',
      '    def __init__(self, **kw): pass',
      '    def compress(self, data):',
      '        sys.stderr.write("boom: the co-process dies\\n"); sys.stderr.flush(); os._exit(7)',
      'zstandard.ZstdCompressor = Dying',
      'exec(sys.argv[1])',
      '',
    ].join('\n');
    const own = await withPython(die, () => openZstd());
    await expect(own.compress([Buffer.from('x')], 3)).rejects.toThrow(/exited \(code 7\): boom: the co-process dies/);
    await expect(own.decompress([])).rejects.toMatchObject({ code: 'TOOL' });
    await own.close();
  });
});

describe("gensquashfs's zstd frames, reproduced byte for byte", () => {
  it('a squashfs made here (-c zstd -X level=3)', async () => {
    const tree = path.join(work, 'tree');
    await fs.mkdir(path.join(tree, 'etc'), { recursive: true });
    await fs.mkdir(path.join(tree, 'usr/share/doc'), { recursive: true });
    await fs.writeFile(path.join(tree, 'usr/share/doc/words.txt'), words(600_000, 1));
    await fs.writeFile(path.join(tree, 'usr/share/doc/more.txt'), words(150_000, 2));
    await fs.writeFile(path.join(tree, 'etc/repeat.conf'), Buffer.from('key = value # a repeated line\n'.repeat(6000)));
    await fs.writeFile(path.join(tree, 'zeros'), Buffer.alloc(200_000)); // RLE blocks
    await fs.writeFile(path.join(tree, 'random'), randomBytes(40_000)); // stored uncompressed
    for (let i = 0; i < 20; i++) await fs.writeFile(path.join(tree, 'etc', `small-${i}`), words(300 + i * 50, 10 + i)); // fragments
    const img = path.join(work, 'made.sqfs');
    await run('gensquashfs', ['-c', 'zstd', '-X', 'level=3', '-D', tree, '-d', 'mode=0755,uid=0,gid=0,mtime=0', '--all-root', '-f', '-q', img]);

    const frames = findFrames(await fs.readFile(img));
    expect(frames.length).toBeGreaterThanOrEqual(8); // 128 KiB blocks; all-zero blocks are sparse, no frame
    const { bad, raw } = await reproduce(z, frames, 3);
    expect(bad, `frames not reproduced of ${frames.length}`).toEqual([]);
    expect(raw).toBeGreaterThan(900_000);
  });
});

describe('prefix compression', () => {
  const prefix = words(64 * 1024, 42);
  /** a 4 KiB chunk that mostly repeats pieces of the prefix, with a few edits */
  const chunk = (seed: number): Buffer => {
    const r = prng(seed);
    const parts: Buffer[] = [];
    let n = 0;
    while (n < 4096) {
      const at = r() % (prefix.length - 600);
      const piece = r() % 5 === 0 ? words(40, r()) : prefix.subarray(at, at + 200 + (r() % 400));
      parts.push(piece);
      n += piece.length;
    }
    return Buffer.concat(parts).subarray(0, 4096);
  };

  it('round trips with and without a prefix; a prefix makes a repeating chunk much smaller', async () => {
    const data = [chunk(1), chunk(2), chunk(3), Buffer.alloc(0), words(10_000, 7)];
    const withPrefix = await z.compressWithPrefix(
      data.map((d) => ({ data: d, prefix })),
      9,
    );
    const without = await z.compressWithPrefix(
      data.map((d) => ({ data: d, prefix: Buffer.alloc(0) })),
      9,
    );
    expect(await z.decompressWithPrefix(withPrefix.map((frame) => ({ frame, prefix })))).toEqual(data);
    expect(await z.decompressWithPrefix(without.map((frame) => ({ frame, prefix: Buffer.alloc(0) })))).toEqual(data);
    // without a prefix it is a plain frame; content size, no checksum, no dict id
    expect(await z.decompress(without)).toEqual(data);
    for (const f of [...withPrefix, ...without]) {
      const fhd = f[4]!;
      expect(fhd & 3, 'no dictionary id').toBe(0);
      expect((fhd >> 2) & 1, 'no checksum').toBe(0);
      expect(fhd >> 6 !== 0 || ((fhd >> 5) & 1) === 1, 'content size written').toBe(true);
    }
    for (let i = 0; i < 3; i++) expect(withPrefix[i]!.length * 4).toBeLessThan(without[i]!.length);
    // the same inputs give the same bytes
    expect(await z.compressWithPrefix([{ data: data[0]!, prefix }], 9)).toEqual([withPrefix[0]]);
    // a frame made against a prefix does not decompress against another one
    const other = words(64 * 1024, 43);
    const wrong = await z.decompressWithPrefix([{ frame: withPrefix[0]!, prefix: other }]).then(
      (r) => r[0],
      () => undefined,
    );
    expect(wrong?.equals(data[0]!) ?? false).toBe(false);
  });

  it('speed: 4 KiB chunks at level 9 against a 64 KiB prefix', async () => {
    const items = Array.from({ length: 2000 }, (_, i) => ({ data: chunk(100 + i), prefix }));
    const t0 = performance.now();
    const frames = await z.compressWithPrefix(items, 9);
    const t1 = performance.now();
    const back = await z.decompressWithPrefix(frames.map((frame) => ({ frame, prefix })));
    const t2 = performance.now();
    expect(back.every((b, i) => b.equals(items[i]!.data))).toBe(true);
    console.log(
      `compressWithPrefix level 9, 64 KiB prefix: ${((t1 - t0) / items.length).toFixed(3)} ms per 4 KiB chunk; ` +
        `decompressWithPrefix ${((t2 - t1) / items.length).toFixed(3)} ms per chunk`,
    );
  });
});

describe('batches, errors, concurrency, close', () => {
  it('a batch of 0 items', async () => {
    expect(await z.decompress([])).toEqual([]);
    expect(await z.compress([], 3)).toEqual([]);
    expect(await z.compressWithPrefix([], 9)).toEqual([]);
    expect(await z.decompressWithPrefix([])).toEqual([]);
  });

  it('garbage rejects with TOOL; the co-process serves the next request', async () => {
    const garbage = Buffer.from('this is not a zstd frame at all');
    const e = (await z.decompress([garbage]).then(
      () => undefined,
      (err: unknown) => err,
    )) as StackbootError;
    expect(e).toBeInstanceOf(StackbootError);
    expect(e.code).toBe('TOOL');
    expect(e.message).toMatch(/^zstd: /);
    // a truncated frame (the content size is in the header) fails too
    const [frame] = await z.compress([words(50_000, 5)], 3);
    await expect(z.decompress([frame!.subarray(0, frame!.length - 10)])).rejects.toMatchObject({ code: 'TOOL' });
    expect(await z.decompress([frame!])).toEqual([words(50_000, 5)]);
  });

  it('concurrent calls each get their own answer; large batches (many MB) come back whole', async () => {
    const inputs = Array.from({ length: 8 }, (_, i) => [words(3 << 20, 200 + i), Buffer.from(`item ${i}`)]);
    const frames = await Promise.all(inputs.map((b) => z.compress(b, 1)));
    const plain = await Promise.all(frames.map((f) => z.decompress(f)));
    // (Buffer.equals: vitest's toEqual walks large buffers byte by byte, slowly)
    expect(plain.map((p, i) => p.length === 2 && p.every((b, j) => b.equals(inputs[i]![j]!)))).toEqual(inputs.map(() => true));
  });

  it('close() ends the process; later calls reject', async () => {
    const before = await coProcesses();
    const own = await openZstd();
    const started = (await coProcesses()).filter((p) => !before.includes(p));
    expect(started).toHaveLength(1);
    const pending = own.compress([words(1 << 20, 9)], 3); // queued before close: answered
    await own.close();
    expect((await pending)[0]!.length).toBeGreaterThan(0);
    await expect(own.compress([Buffer.from('x')], 3)).rejects.toMatchObject({ code: 'TOOL' });
    await own.close(); // a second close is harmless
    expect(existsSync(`/proc/${started[0]}`)).toBe(false);
  });
});
