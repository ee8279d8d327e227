/**
 * Chunk-delta fixtures: a static HTTP server for a build output folder (Range requests,
 * or not; a connection dropped once in the middle of a range; a tampered byte; a stall
 * to kill a process in), build outputs whose manifests name chunk indexes, and the two
 * Debian bases of issue 15 (bookworm, and bookworm + updates + security, made once with
 * mmdebstrap into .cache/chunks and built there as one zstd layer each).
 */
import { createHash } from 'node:crypto';
import { existsSync, promises as fs } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { writeChunkIndex } from '../../src/format/chunker.js';
import { loadRecipe } from '../../src/build/recipe.js';
import { buildStack } from '../../src/build/stack.js';
import { chunkIndexLine } from '../../src/format/chunks.js';
import { serializeManifest, stackId, type LayerVerity, type Manifest } from '../../src/format/manifest.js';
import { signBytes } from '../../src/format/signature.js';
import { run } from '../../src/sys/exec.js';
import { sha256File } from '../../src/sys/digest.js';

export interface ServerOptions {
  /** honour Range (default true) */
  range?: boolean;
  /** drop the connection once, after this many body bytes of the first ranged response that goes past them */
  dropAfter?: number;
  /** flip a byte of the served layer file at this offset */
  tamperAt?: number;
  /** hold each ranged response after its first bytes for this many ms */
  stallMs?: number;
  /** the file names (their ending) that range, dropAfter, tamperAt and stallMs apply to (default: every file; tamperAt: .sqfs) */
  files?: string;
  /** stall only from this ranged response of those files on (0 = the first) */
  stallFrom?: number;
  /** answer 404 for files whose names end so */
  hide?: string;
}

export interface ChunkServer {
  url: string;
  /** body bytes sent, per file name */
  sent: Map<string, number>;
  total(): number;
  ranges: number;
  opts: ServerOptions;
  close(): Promise<void>;
}

/** Serves `dir` (a build output folder) over HTTP. */
export async function chunkServer(dir: string, opts: ServerOptions = {}): Promise<ChunkServer> {
  const sent = new Map<string, number>();
  const s: ChunkServer = {
    url: '',
    sent,
    ranges: 0,
    opts,
    total: () => [...sent.values()].reduce((a, b) => a + b, 0),
    close: () => new Promise((r) => server.close(() => r())),
  };
  let stalls = 0;
  const server = http.createServer(async (req, res) => {
    const rel = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname).replace(/^\/+/, '');
    const file = path.join(dir, rel);
    const st = await fs.stat(file).catch(() => null);
    const mine = rel.endsWith(s.opts.files ?? '');
    if (!st?.isFile() || (s.opts.hide && rel.endsWith(s.opts.hide))) {
      res.writeHead(404).end();
      return;
    }
    const etag = `"${st.size.toString(16)}-${st.mtimeMs.toString(16)}"`;
    /** bytes [start, end] of the file (only those are read: layers can be a GiB), tampered if asked */
    const read = async (start: number, end: number): Promise<Buffer> => {
      const b = Buffer.alloc(end + 1 - start);
      const fh = await fs.open(file, 'r');
      try {
        await fh.read(b, 0, b.length, start);
      } finally {
        await fh.close();
      }
      const t = s.opts.tamperAt;
      if (t !== undefined && rel.endsWith(s.opts.files ?? '.sqfs') && t >= start && t <= end) b[t - start] ^= 0xff;
      return b;
    };
    const m = /^bytes=(\d+)-(\d*)$/.exec(String(req.headers.range ?? ''));
    const send = (body: Buffer, status: number, headers: Record<string, string | number>) => {
      res.writeHead(status, { 'Content-Length': body.length, ETag: etag, ...headers });
      const name = path.basename(rel);
      const count = (n: number) => sent.set(name, (sent.get(name) ?? 0) + n);
      const drop = s.opts.dropAfter;
      if (status === 206 && mine && drop !== undefined && body.length > drop) {
        s.opts.dropAfter = undefined;
        count(drop);
        res.write(body.subarray(0, drop), () => setTimeout(() => res.destroy(), 20));
        return;
      }
      if (status === 206 && mine && s.opts.stallMs && stalls++ >= (s.opts.stallFrom ?? 0)) {
        const head = Math.min(body.length, 4096);
        count(head);
        res.write(body.subarray(0, head));
        setTimeout(() => {
          count(body.length - head);
          res.end(body.subarray(head));
        }, s.opts.stallMs);
        return;
      }
      count(body.length);
      res.end(body);
    };
    if (m && (s.opts.range !== false || !mine)) {
      const start = Number(m[1]);
      const end = m[2] ? Math.min(Number(m[2]), st.size - 1) : st.size - 1;
      s.ranges++;
      send(await read(start, end), 206, { 'Content-Range': `bytes ${start}-${end}/${st.size}` });
    } else send(await read(0, st.size - 1), 200, {});
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  s.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return s;
}

/**
 * A build output whose manifest names a chunk index for each layer (signed with `key`).
 * A layer is its bytes, or a function that writes its file (a big one, without a buffer).
 */
export async function chunkedBuild(dir: string, o: { version: string; key: string; layers: { name: string; data: Buffer | ((file: string) => Promise<void>); verity?: LayerVerity }[] }): Promise<{ dir: string; manifest: Manifest; id: string }> {
  await fs.mkdir(path.join(dir, 'layers'), { recursive: true });
  const layers = [];
  const extra: [string, string][] = [];
  for (const l of o.layers) {
    const tmp = path.join(dir, 'layers', `${l.name}.tmp`);
    if (Buffer.isBuffer(l.data)) await fs.writeFile(tmp, l.data);
    else await l.data(tmp);
    const digest = await sha256File(tmp);
    const file = path.join(dir, 'layers', `${digest}.sqfs`);
    await fs.rename(tmp, file);
    extra.push(chunkIndexLine(await writeChunkIndex(file, digest)));
    layers.push({ digest, size: (await fs.stat(file)).size, name: l.name, ...(l.verity ? { verity: l.verity } : {}) });
  }
  const manifest: Manifest = { name: 'node', version: o.version, compatible: 'test-node', created: 0, compression: 'zstd', extra, layers };
  const text = serializeManifest(manifest);
  await fs.writeFile(path.join(dir, 'manifest'), text);
  await fs.writeFile(path.join(dir, 'manifest.sig'), await signBytes(Buffer.from(text), o.key));
  return { dir, manifest, id: stackId(text) };
}

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const CHUNKS_CACHE = path.join(REPO, '.cache', 'chunks');

const SUITES: Record<'old' | 'new', string[]> = {
  old: ['deb http://deb.debian.org/debian bookworm main'],
  new: ['deb http://deb.debian.org/debian bookworm main', 'deb http://deb.debian.org/debian bookworm-updates main', 'deb http://deb.debian.org/debian-security bookworm-security main'],
};

/** A Debian 12 minbase + systemd root as a tar (made once with mmdebstrap, then cached). */
async function debianTar(which: 'old' | 'new'): Promise<string> {
  const tar = path.join(CHUNKS_CACHE, `bookworm-${which}.tar`);
  if (existsSync(tar)) return tar;
  await fs.mkdir(CHUNKS_CACHE, { recursive: true });
  // mmdebstrap picks the output format from the file name's extension unless told: a
  // temp name that does not end in .tar became a folder (on a fresh clone only)
  const tmp = `${tar}.tmp-${process.pid}`;
  await run('mmdebstrap', ['--variant=minbase', '--include=systemd', '--format=tar', 'bookworm', tmp, ...SUITES[which]]);
  await fs.rename(tmp, tar);
  return tar;
}

/** The two Debian bases, each built (with chunk indexes) as a one-layer stack: build output folders. */
export async function debianBases(): Promise<{ old: string; new: string }> {
  const out = { old: '', new: '' };
  for (const which of ['old', 'new'] as const) {
    const tar = await debianTar(which);
    const recipeDir = path.join(CHUNKS_CACHE, `recipe-${which}`);
    await fs.mkdir(recipeDir, { recursive: true });
    await fs.writeFile(path.join(recipeDir, 'recipe.json'), JSON.stringify({ name: 'debian', version: which === 'old' ? '12.0' : '12.1', compatible: 'debian-chunks', layers: [{ name: 'base', devices: true, source: { type: 'tar', path: tar } }] }));
    const recipe = await loadRecipe(recipeDir, { arch: 'amd64' });
    out[which] = path.join(CHUNKS_CACHE, `build-${which}`);
    await buildStack(recipe, { outDir: out[which], cacheDir: path.join(CHUNKS_CACHE, 'layer-cache'), epoch: 0, arch: 'amd64', uid: 0, chunks: true, progress: () => {} });
  }
  return out;
}

/**
 * What the real casync (Debian's casync 2) would fetch to go from `oldFile` to `newFile`:
 * both cut with `casync make --chunk-size=N` into chunk stores, the new file's chunks the
 * old one lacks as casync keeps them (`.cacnk`, zstd-compressed: what a client fetches),
 * plus the new `.caibx` index. The anchor "casync on the same pair" of issue 15.
 */
export async function casyncFetch(oldFile: string, newFile: string, chunkSize = 16384): Promise<{ chunks: number; bytes: number; index: number }> {
  const work = await fs.mkdtemp(path.join(path.dirname(newFile), '.casync-'));
  try {
    const make = async (name: string, file: string) => {
      await run('casync', ['make', `--chunk-size=${chunkSize}`, `--store=${path.join(work, `${name}.castr`)}`, path.join(work, `${name}.caibx`), file]);
      const sizes = new Map<string, number>();
      const walk = async (d: string): Promise<void> => {
        for (const e of await fs.readdir(d, { withFileTypes: true })) {
          const p = path.join(d, e.name);
          if (e.isDirectory()) await walk(p);
          else if (e.name.endsWith('.cacnk')) sizes.set(e.name, (await fs.stat(p)).size);
        }
      };
      await walk(path.join(work, `${name}.castr`));
      return sizes;
    };
    const [had, want] = [await make('old', oldFile), await make('new', newFile)];
    const lacking = [...want].filter(([n]) => !had.has(n));
    return { chunks: lacking.length, bytes: lacking.reduce((t, [, s]) => t + s, 0), index: (await fs.stat(path.join(work, 'new.caibx'))).size };
  } finally {
    await fs.rm(work, { recursive: true, force: true });
  }
}

/** Deterministic text that compresses like code and data do (words of a small vocabulary, numbers). */
export function sourceText(bytes: number, seed: number): Buffer {
  const words = ['static', 'int', 'return', 'struct', 'if', 'else', 'for', 'while', 'buffer', 'length', 'error', 'const', 'void', 'size_t', 'ssl', 'cert', 'verify', 'ctx', 'state', 'key'];
  let x = seed >>> 0 || 1;
  const rnd = () => ((x = (Math.imul(x, 1103515245) + 12345) >>> 0) >>> 8);
  const parts: string[] = [];
  let n = 0;
  while (n < bytes) {
    const line = `${words[rnd() % words.length]} ${words[rnd() % words.length]}_${rnd() % 1000}(${rnd() % 65536}, ${words[rnd() % words.length]});\n`;
    parts.push(line);
    n += line.length;
  }
  return Buffer.from(parts.join('')).subarray(0, bytes);
}

/**
 * Two real squashfs builds (`stackboot build --chunks`, zstd-3, one layer from a folder):
 * v1, and v2 where a 3 MB file had text inserted and changed in a few places (what a
 * library's version bump does to it), another file is new and a third one unchanged.
 */
export async function squashfsPair(dir: string): Promise<{ v1: string; v2: string }> {
  const lib = sourceText(3 << 20, 7);
  const trees = {
    v1: { 'usr/lib/libfoo.so.1': lib, 'usr/share/data.txt': sourceText(1 << 20, 11) } as Record<string, Buffer>,
    v2: {
      'usr/lib/libfoo.so.1': Buffer.concat([lib.subarray(0, 1_000_000), Buffer.from('/* CVE-2026-0001: check the length first */\n'.repeat(5)), lib.subarray(1_000_000, 2_000_000), sourceText(300, 99), lib.subarray(2_000_300)]),
      'usr/share/data.txt': sourceText(1 << 20, 11),
      'usr/share/new.txt': sourceText(50_000, 13),
    } as Record<string, Buffer>,
  };
  const out = { v1: '', v2: '' };
  for (const which of ['v1', 'v2'] as const) {
    const root = path.join(dir, `${which}-root`);
    for (const [rel, data] of Object.entries(trees[which])) {
      await fs.mkdir(path.dirname(path.join(root, rel)), { recursive: true });
      await fs.writeFile(path.join(root, rel), data);
    }
    const recipeDir = path.join(dir, `${which}-recipe`);
    await fs.mkdir(recipeDir, { recursive: true });
    await fs.writeFile(path.join(recipeDir, 'recipe.json'), JSON.stringify({ name: 'node', version: which === 'v1' ? '1' : '2', compatible: 'test-node', layers: [{ name: 'base', source: { type: 'dir', path: root } }] }));
    out[which] = path.join(dir, `${which}-build`);
    await buildStack(await loadRecipe(recipeDir, { arch: 'amd64' }), { outDir: out[which], cacheDir: path.join(dir, 'layer-cache'), epoch: 0, arch: 'amd64', uid: 0, chunks: true, progress: () => {} });
  }
  return out;
}
