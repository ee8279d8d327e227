/**
 * Bundles: one uncompressed tar (written and parsed through src/format/tarfile.ts) that carries
 * a stack to a node, in this order so that a reader can verify before it reads layers:
 *
 *   manifest             the stack's manifest (signed)
 *   manifest.sig         its detached ed25519 signature
 *   contents             one line per carried layer: `<sha256> <bytes>` (not signed: each
 *                        layer is checked against the signed manifest anyway)
 *   layers/<sha256>.sqfs the layers, bottom first
 *   chunks/<sha256>.chunks, .carried, .data   a chunk delta of a layer (bundle --base --chunks):
 *                        its chunk index, the numbers of the chunks carried (u32 BE each),
 *                        then their bytes in index order (docs/PROTOCOL.md, "Chunk index")
 *
 * A full bundle carries every layer; a delta bundle (`base`) only the layers the base
 * stack lacks, or of a layer only the chunks the base lacks. The squashfs layers are compressed already, so the tar is not.
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, promises as fs } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import path from 'node:path';
import { PassThrough, Readable, type Writable } from 'node:stream';
import { parsing, StackbootError, RateMeter, noProgress, type ProgressSink, writeDurableFrom } from '../sys/index.js';
import { parseManifest, stackId, type LayerRef, type Manifest } from './manifest.js';
import { parseSignature, signBytes } from './signature.js';
import { TarWriter, walkTarStream, type TarEntryMeta } from './tarfile.js';

export const MAX_MANIFEST_BYTES = 1 << 20;
const LAYER_ENTRY = /^(?:\.\/)?layers\/([0-9a-f]{64})\.sqfs$/;
const CHUNK_ENTRY = /^(?:\.\/)?chunks\/([0-9a-f]{64})\.(chunks|carried|data)$/;

/** A layer's chunk delta in a bundle: its index, the chunks carried, and where their bytes lie in the layer file (in order). */
export interface BundleChunks {
  layer: string;
  index: Buffer;
  carried: number[];
  ranges: { start: number; end: number }[];
}

export interface BundleContent {
  digest: string;
  size: number;
}

export function parseContents(text: string): BundleContent[] {
  const out: BundleContent[] = [];
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    const m = /^([0-9a-f]{64}) (\d+)$/.exec(line.trim());
    if (!m) throw new StackbootError('MANIFEST', `bundle contents: bad line ${JSON.stringify(line)}`);
    out.push({ digest: m[1], size: Number(m[2]) });
  }
  return out;
}

/** The layer digests of a base: a manifest file, a build output folder or a bundle. */
export async function baseLayers(base: string): Promise<{ manifest: Manifest; digests: Set<string> }> {
  const st = await fs.stat(base).catch((e) => {
    throw new StackbootError('USAGE', `base ${base} does not exist`, { cause: e });
  });
  let text: string;
  if (st.isDirectory()) {
    text = await fs.readFile(path.join(base, 'manifest'), 'utf8').catch((e) => {
      throw new StackbootError('USAGE', `base ${base} has no manifest (is it a build output?)`, { cause: e });
    });
  } else {
    const fh = await fs.open(base, 'r');
    const head = Buffer.alloc(20);
    await fh.read(head, 0, 20, 0);
    await fh.close();
    if (head.toString('utf8').startsWith('stackboot-manifest')) text = await fs.readFile(base, 'utf8');
    else text = (await readBundleHead(createReadStream(base), base)).manifestText;
  }
  const manifest = parsing(base, () => parseManifest(text));
  return { manifest, digests: new Set(manifest.layers.map((l) => l.digest)) };
}

export interface WriteBundleOptions {
  /** build output folder: manifest, manifest.sig (unless key), layers/ */
  buildDir: string;
  /** where the tar goes */
  out: Writable;
  /** private key: sign the manifest now (else the build output's manifest.sig is used) */
  key?: string;
  /** layers the base already has (a delta) */
  baseDigests?: Set<string>;
  /** chunk deltas of layers the base lacks (those layers are then not carried whole) */
  chunks?: BundleChunks[];
  progress?: ProgressSink;
  /**
   * Without a key and without manifest.sig: write the bundle unsigned (a node installs
   * it only with ALLOW_UNSIGNED=1). `install <build-output>` on such a node.
   */
  allowUnsigned?: boolean;
  /** What to do about a missing manifest.sig, for the error (default: the bundle command's). */
  unsignedHint?: string;
}

export interface WriteBundleResult {
  stackId: string;
  manifest: Manifest;
  carried: LayerRef[];
  skipped: LayerRef[];
  bytes: number;
}

/** Streams a bundle of a build output into `out` (and ends it). */
export async function writeBundle(o: WriteBundleOptions): Promise<WriteBundleResult> {
  const manifestBuf = await fs.readFile(path.join(o.buildDir, 'manifest')).catch((e) => {
    throw new StackbootError('USAGE', `${o.buildDir} has no manifest (is it a build output?)`, { cause: e });
  });
  const manifest = parsing(path.join(o.buildDir, 'manifest'), () => parseManifest(manifestBuf.toString('utf8')));
  let sig: string | null;
  if (o.key) sig = await signBytes(manifestBuf, o.key);
  else {
    sig = await fs.readFile(path.join(o.buildDir, 'manifest.sig'), 'utf8').catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT' && o.allowUnsigned) return null;
      throw new StackbootError('SIGNATURE', `${o.buildDir}/manifest.sig is missing: ${o.unsignedHint ?? 'sign the build (stackboot sign) or pass --key'}`, { cause: e });
    });
    // no public key here to verify it with, but a damaged one must not ship: every node
    // would refuse the bundle, after downloading it
    try {
      if (sig !== null) parseSignature(sig);
    } catch (e) {
      throw new StackbootError('SIGNATURE', `${o.buildDir}/manifest.sig is not a signature: sign the build again (stackboot sign) or pass --key`, { cause: e });
    }
  }
  const asChunks = new Set((o.chunks ?? []).map((c) => c.layer));
  const carried = manifest.layers.filter((l) => !o.baseDigests?.has(l.digest) && !asChunks.has(l.digest));
  const skipped = manifest.layers.filter((l) => o.baseDigests?.has(l.digest) || asChunks.has(l.digest));
  for (const l of carried) {
    const st = await fs.stat(path.join(o.buildDir, 'layers', `${l.digest}.sqfs`)).catch(() => null);
    if (!st) throw new StackbootError('SOURCE', `layer ${l.name} (${l.digest.slice(0, 12)}) is missing from ${o.buildDir}/layers`);
    if (st.size !== l.size) throw new StackbootError('SOURCE', `layer ${l.name}: ${st.size} bytes in ${o.buildDir}, the manifest says ${l.size}`);
  }
  const w = new TarWriter(o.out);
  const file = (p: string, data: Buffer | string) => {
    const b = Buffer.isBuffer(data) ? data : Buffer.from(data);
    return w.add({ path: p, type: 'file', mode: 0o644, uid: 0, gid: 0, mtime: manifest.created, size: b.length }, b);
  };
  await file('manifest', manifestBuf);
  if (sig !== null) await file('manifest.sig', sig);
  await file('contents', carried.map((l) => `${l.digest} ${l.size}\n`).join(''));
  for (const c of o.chunks ?? []) {
    await file(`chunks/${c.layer}.chunks`, c.index);
    const list = Buffer.alloc(4 * c.carried.length);
    c.carried.forEach((n, i) => list.writeUInt32BE(n, 4 * i));
    await file(`chunks/${c.layer}.carried`, list);
  }
  const total = carried.reduce((n, l) => n + l.size, 0);
  const meter = new RateMeter(o.progress ?? noProgress, 'bundle', total);
  let done = 0;
  for (const l of carried) {
    const src = createReadStream(path.join(o.buildDir, 'layers', `${l.digest}.sqfs`), { highWaterMark: 1 << 20 });
    src.on('data', (c) => {
      done += (c as Buffer).length;
      meter.update(done);
    });
    await w.add({ path: `layers/${l.digest}.sqfs`, type: 'file', mode: 0o644, uid: 0, gid: 0, mtime: manifest.created, size: l.size }, src);
  }
  for (const c of o.chunks ?? []) {
    const size = c.ranges.reduce((n, r) => n + r.end - r.start, 0);
    await w.add({ path: `chunks/${c.layer}.data`, type: 'file', mode: 0o644, uid: 0, gid: 0, mtime: manifest.created, size }, rangesOf(path.join(o.buildDir, 'layers', `${c.layer}.sqfs`), c.ranges));
  }
  await w.finish();
  meter.update(done, true);
  return { stackId: stackId(manifestBuf), manifest, carried, skipped, bytes: w.bytes };
}

/** Byte ranges of a file, one after the other, as a stream. */
function rangesOf(file: string, ranges: { start: number; end: number }[]): Readable {
  async function* gen(): AsyncGenerator<Buffer> {
    for (const r of ranges) for await (const c of createReadStream(file, { start: r.start, end: r.end - 1, highWaterMark: 1 << 20 })) yield c as Buffer;
  }
  return Readable.from(gen(), { objectMode: false });
}

/** Writes a bundle file durably (sys/durable.ts: temp beside it, fsync, rename). */
export async function writeBundleFile(o: Omit<WriteBundleOptions, 'out'> & { file: string }): Promise<WriteBundleResult> {
  const st = await fs.stat(o.file).catch(() => null);
  if (st?.isDirectory()) throw new StackbootError('USAGE', `${o.file} is a folder: give the bundle's file name (e.g. ${path.join(o.file, 'stack.stackbundle')})`);
  const cannot = (e: unknown) => (e instanceof StackbootError ? e : new StackbootError('IO', `cannot write ${o.file}`, { cause: e }));
  return writeDurableFrom(o.file, async (tmp) => {
    const fh = await fs.open(tmp, 'wx', 0o644).catch((e) => {
      throw cannot(e);
    });
    const out = fh.createWriteStream();
    try {
      return await writeBundle({ ...o, out });
    } catch (e) {
      out.destroy();
      throw e;
    }
  }).catch((e) => {
    throw cannot(e);
  });
}

/**
 * A bundle streamed from a build output folder (for `install <build-output>`): unsigned
 * when the build has no manifest.sig and the node allows that.
 */
export function bundleStreamFromBuild(buildDir: string, o: { allowUnsigned?: boolean } = {}): Readable {
  const pt = new PassThrough({ highWaterMark: 1 << 20 });
  // the writer can fail (no manifest.sig) before the reader listens (install takes the
  // store lock first): the reader finds the error in pt.errored then (walkTarStream),
  // and an 'error' event with no listener yet must not crash the process
  pt.on('error', () => {});
  writeBundle({ buildDir, out: pt, allowUnsigned: o.allowUnsigned, unsignedHint: 'sign the build (stackboot sign), or set ALLOW_UNSIGNED=1 in the node config' }).catch((e) => pt.destroy(e));
  return pt;
}

// ---------------------------------------------------------------- reading

export interface BundleHead {
  manifestText: string;
  manifest: Manifest;
  stackId: string;
  sig: string | null;
  contents: BundleContent[];
  /** chunk deltas the bundle carries, by layer: the index and the numbers of the chunks carried */
  chunks: Map<string, { index: Buffer; carried: number[] }>;
}

export interface ReadBundleHandlers {
  /**
   * Called once the manifest, signature and contents are read, before any layer. Throw to
   * refuse the bundle (nothing is read further). Returns the digests to deliver.
   */
  onHead(head: BundleHead): Promise<Set<string>> | Set<string>;
  /** One wanted layer, its body streamed. Must consume the whole body. */
  onLayer(digest: string, size: number, body: Readable): Promise<void>;
  /** The carried chunks of a wanted layer (head.chunks), their bytes streamed. Must consume the whole body. */
  onChunkData?(digest: string, size: number, body: Readable): Promise<void>;
  /** Bytes read so far (for progress). */
  onBytes?(n: number): void;
}

class StopReading extends Error {}

async function readSmall(meta: TarEntryMeta, body: Readable, what: string): Promise<Buffer> {
  if (meta.size > MAX_MANIFEST_BYTES) throw new StackbootError('MANIFEST', `bundle: ${what} is too big (${meta.size} bytes)`);
  const parts: Buffer[] = [];
  for await (const c of body) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

/**
 * Reads a bundle from any stream (a file, a pipe, an HTTP body) in one pass, with no
 * temporary copy: the head first (handlers.onHead decides), then each wanted layer.
 */
export async function readBundle(stream: Readable, handlers: ReadBundleHandlers, label = 'bundle'): Promise<BundleHead> {
  let manifestText: string | null = null;
  let sig: string | null = null;
  let contents: BundleContent[] | null = null;
  const chunks = new Map<string, { index: Buffer; carried: number[] }>();
  let head: BundleHead | null = null;
  let wanted = new Set<string>();
  const seen = new Set<string>();
  // a refusal stops the read at once (no need to download the rest)
  const abortOnError = async <T>(fn: () => Promise<T> | T): Promise<T> => {
    try {
      return await fn();
    } catch (e) {
      stream.destroy(e as Error);
      throw e;
    }
  };
  if (handlers.onBytes) {
    let n = 0;
    stream.on('data', (c) => handlers.onBytes!((n += (c as Buffer).length)));
  }
  const startHead = async () => {
    if (head) return;
    if (manifestText === null) throw new StackbootError('MANIFEST', `${label}: not a bundle (its first entry must be "manifest")`);
    const manifest = parsing(`${label}: manifest`, () => parseManifest(manifestText!));
    head = { manifestText, manifest, stackId: stackId(manifestText), sig, contents: contents ?? [], chunks };
    wanted = await abortOnError(() => handlers.onHead(head!));
  };
  let entries = 0;
  await walkTarStream(
    stream,
    {
      onEntry: async (meta, body) => {
        entries++;
        const p = meta.rawPath.replace(/^\.\//, '');
        if (meta.index === 0 && p !== 'manifest') throw new StackbootError('MANIFEST', `${label}: not a bundle (its first entry is ${JSON.stringify(p)}, not "manifest")`);
        if (meta.type !== 'file') {
          body.resume();
          return;
        }
        if (p === 'manifest' && !head) {
          manifestText = (await readSmall(meta, body, 'manifest')).toString('utf8');
          return;
        }
        if (p === 'manifest.sig' && !head) {
          sig = (await readSmall(meta, body, 'manifest.sig')).toString('utf8');
          return;
        }
        if (p === 'contents' && !head) {
          contents = parseContents((await readSmall(meta, body, 'contents')).toString('utf8'));
          return;
        }
        const c = CHUNK_ENTRY.exec(p);
        if (c && c[2] !== 'data' && !head) {
          const b = await readSmall(meta, body, p);
          const e = chunks.get(c[1]) ?? { index: Buffer.alloc(0), carried: [] };
          if (c[2] === 'chunks') e.index = b;
          else for (let i = 0; i + 4 <= b.length; i += 4) e.carried.push(b.readUInt32BE(i));
          chunks.set(c[1], e);
          return;
        }
        if (c && c[2] === 'data' && handlers.onChunkData) {
          await startHead();
          if (!seen.has(`chunks:${c[1]}`) && wanted.has(c[1]) && chunks.has(c[1])) {
            seen.add(`chunks:${c[1]}`);
            await abortOnError(() => handlers.onChunkData!(c[1], meta.size, body));
            return;
          }
        }
        const m = LAYER_ENTRY.exec(p);
        if (!m) {
          body.resume();
          return;
        }
        await startHead();
        const digest = m[1];
        if (seen.has(digest) || !wanted.has(digest)) {
          body.resume();
          await new Promise<void>((r) => (body.readableEnded ? r() : body.once('end', () => r())));
          return;
        }
        seen.add(digest);
        await abortOnError(() => handlers.onLayer(digest, meta.size, body));
      },
    },
    label,
  ).catch((e: unknown) => {
    // not even a first entry: some other file (an image, a text, random bytes)
    if (entries === 0 && e instanceof StackbootError && e.code === 'SOURCE' && / invalid tar: /.test(e.message)) {
      throw new StackbootError('MANIFEST', `${label}: not a stackboot bundle (not a tar archive: ${e.message.replace(/^.* invalid tar: /, '')})`, { cause: e });
    }
    throw e;
  });
  await startHead();
  return head!;
}

/** Reads only the head (manifest, signature, contents) and stops. */
export async function readBundleHead(stream: Readable, label = 'bundle'): Promise<BundleHead> {
  let got: BundleHead | null = null;
  try {
    await readBundle(
      stream,
      {
        onHead: (h) => {
          got = h;
          throw new StopReading();
        },
        onLayer: async () => {},
      },
      label,
    );
  } catch (e) {
    if (!got) throw e;
  } finally {
    stream.destroy();
  }
  return got!;
}

// ---------------------------------------------------------------- unpacking

/**
 * A bundle as a build output folder (manifest, manifest.sig, layers/<sha256>.sqfs): for
 * `push` of a bundle. Each carried layer is written durably and checked against the
 * manifest's sha256 and size. Returns the layers the bundle does not carry (a delta's
 * base), which the caller must find elsewhere.
 */
export async function unpackBundle(stream: Readable, dir: string, label = 'bundle'): Promise<{ manifest: Manifest; absent: LayerRef[] }> {
  await fs.mkdir(path.join(dir, 'layers'), { recursive: true });
  let layers: LayerRef[] = [];
  const written = new Set<string>();
  const head = await readBundle(
    stream,
    {
      onHead: async (h) => {
        layers = h.manifest.layers;
        await fs.writeFile(path.join(dir, 'manifest'), h.manifestText);
        if (h.sig) await fs.writeFile(path.join(dir, 'manifest.sig'), h.sig);
        return new Set(layers.map((l) => l.digest));
      },
      onLayer: async (digest, size, body) => {
        const l = layers.find((x) => x.digest === digest)!;
        if (size !== l.size) throw new StackbootError('VERIFY', `${label}: layer ${l.name} has ${size} bytes, the manifest says ${l.size}`);
        const h = createHash('sha256');
        body.on('data', (c: Buffer) => h.update(c));
        await writeDurableFrom(path.join(dir, 'layers', `${digest}.sqfs`), (tmp) => pipeline(body, createWriteStream(tmp, { flags: 'wx' })), {
          check: () => {
            const got = h.digest('hex');
            if (got !== digest) throw new StackbootError('VERIFY', `${label}: layer ${l.name} does not match the manifest (sha256 ${got.slice(0, 12)})`);
          },
        });
        written.add(digest);
      },
    },
    label,
  );
  return { manifest: head.manifest, absent: head.manifest.layers.filter((l) => !written.has(l.digest)) };
}
