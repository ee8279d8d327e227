/**
 * The only node-tar importer. node-tar parses tar streams here (layer tars, OCI
 * layers, bundles); it never packs a root filesystem (it cannot write xattrs or device
 * nodes). Writing uses node-tar's Header for the 512-byte ustar block and our own pax
 * records (SCHILY.xattr.*, path, linkpath), so xattrs and long names survive.
 */
import type * as TarLib from 'tar';
import type { ReadEntry } from 'tar';
import { createReadStream } from 'node:fs';
import { open } from 'node:fs/promises';
import { createGunzip } from 'node:zlib';
import { PassThrough, type Readable, type Writable } from 'node:stream';
import { spawn, StackbootError } from '../sys/index.js';

let tarModule: typeof TarLib | undefined;
/**
 * node-tar, loaded on first use: the commands that never read a tar (status, mark-good …)
 * do not pay for parsing it (in the bundled CLI it is a file of its own).
 */
async function tarLib(): Promise<typeof TarLib> {
  return (tarModule ??= await import('tar'));
}

export type EntryType = 'file' | 'dir' | 'symlink' | 'hardlink' | 'char' | 'block' | 'fifo';

export interface TarEntryMeta {
  /** index of the entry in the archive, from 0 */
  index: number;
  /** path exactly as stored (not normalised) */
  rawPath: string;
  type: EntryType | `unsupported:${string}`;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtime: number;
  linkpath?: string;
  devmajor?: number;
  devminor?: number;
  xattrs: Record<string, Buffer>;
}

const TYPE_MAP: Record<string, EntryType> = {
  File: 'file',
  OldFile: 'file',
  ContiguousFile: 'file',
  Directory: 'dir',
  SymbolicLink: 'symlink',
  Link: 'hardlink',
  CharacterDevice: 'char',
  BlockDevice: 'block',
  FIFO: 'fifo',
};

/** Parses SCHILY.xattr.* records out of a raw pax extended header body. */
export function paxXattrs(raw: string): Record<string, Buffer> {
  const out: Record<string, Buffer> = {};
  const buf = Buffer.from(raw, 'utf8');
  let off = 0;
  while (off < buf.length) {
    const sp = buf.indexOf(0x20, off);
    if (sp < 0) break;
    const len = parseInt(buf.subarray(off, sp).toString('ascii'), 10);
    if (!Number.isFinite(len) || len <= 0 || off + len > buf.length) break;
    const rec = buf.subarray(sp + 1, off + len - 1); // without trailing \n
    const eq = rec.indexOf(0x3d);
    if (eq > 0) {
      const key = rec.subarray(0, eq).toString('utf8');
      if (key.startsWith('SCHILY.xattr.')) out[key.slice('SCHILY.xattr.'.length)] = Buffer.from(rec.subarray(eq + 1));
      else if (key.startsWith('LIBARCHIVE.xattr.')) out[decodeURIComponent(key.slice('LIBARCHIVE.xattr.'.length))] = Buffer.from(rec.subarray(eq + 1).toString('ascii'), 'base64');
    }
    off += len;
  }
  return out;
}

async function sniff(file: string): Promise<Buffer> {
  const fh = await open(file, 'r').catch((e) => {
    throw new StackbootError('SOURCE', `cannot open ${file}`, { cause: e });
  });
  try {
    const b = Buffer.alloc(6);
    await fh.read(b, 0, 6, 0);
    return b;
  } finally {
    await fh.close();
  }
}

/** A decompressed stream of a tar file (plain, gzip, xz or zstd, detected by magic). */
export async function openTar(file: string): Promise<{ stream: Readable; done: Promise<void> }> {
  const m = await sniff(file);
  const raw = createReadStream(file);
  if (m[0] === 0x1f && m[1] === 0x8b) {
    const g = raw.pipe(createGunzip());
    raw.on('error', (e) => g.destroy(e));
    return { stream: g, done: Promise.resolve() };
  }
  const isXz = m.equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]));
  const isZstd = m[0] === 0x28 && m[1] === 0xb5 && m[2] === 0x2f && m[3] === 0xfd;
  if (isXz || isZstd) {
    raw.destroy();
    const tool = isXz ? 'xz' : 'zstd';
    // -q: no progress lines ("\r"-overwritten, they garbled the error message)
    const child = spawn(tool, ['-dcq', '--', file]);
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const out = new PassThrough();
    (child.stdout as Readable).pipe(out);
    const done = child.done.then((r) => {
      if (r.exitCode !== 0) {
        const why = err.split(/[\r\n]+/).map((l) => l.trim()).filter(Boolean).pop();
        const e = new StackbootError('SOURCE', `${tool} could not decompress ${file}: ${why || `exit ${r.exitCode}`}`);
        out.destroy(e);
        throw e;
      }
    });
    done.catch(() => {});
    return { stream: out, done };
  }
  return { stream: raw, done: Promise.resolve() };
}

export interface WalkOptions {
  /** Called for every entry; `body` yields the file data (only for files). */
  onEntry(meta: TarEntryMeta, body: Readable): Promise<void> | void;
}

/**
 * Reads every entry of a tar file in order. Entries are delivered one at a time: the next
 * is parsed only after onEntry's promise settles, so onEntry may stream the body.
 */
export async function walkTar(file: string, opts: WalkOptions): Promise<number> {
  const { stream, done } = await openTar(file);
  try {
    return await walkTarStream(stream, opts, file, done);
  } catch (e) {
    // a decompressor that failed explains more than the tar parser that starved
    const decompressor = await done.then(
      () => null,
      (d: unknown) => d,
    );
    throw decompressor ?? e;
  }
}

/**
 * The core of walkTar over any Readable (a pipe, an HTTP body, a file stream): the tar
 * must be uncompressed. `label` names the source in errors; `done` is awaited at the end
 * (e.g. a decompressor's exit).
 */
export async function walkTarStream(stream: Readable, opts: WalkOptions, label = 'tar stream', done: Promise<void> = Promise.resolve()): Promise<number> {
  const file = label;
  const { Parser } = await tarLib();
  const parser = new Parser({ strict: true });
  let pendingMeta: string | null = null;
  let index = 0;
  let failure: unknown = null;
  const chain: Promise<void>[] = [];
  let last: Promise<void> = Promise.resolve();
  parser.on('meta', (raw: string) => {
    pendingMeta = raw;
  });
  parser.on('entry', (entry: ReadEntry) => {
    const xattrs = pendingMeta && (entry.header.type !== undefined) ? paxXattrs(pendingMeta) : {};
    pendingMeta = null;
    const t = TYPE_MAP[entry.type];
    const meta: TarEntryMeta = {
      index: index++,
      rawPath: String(entry.path),
      type: t ?? `unsupported:${entry.type}`,
      mode: (entry.mode ?? 0) & 0o7777,
      uid: entry.uid ?? 0,
      gid: entry.gid ?? 0,
      size: entry.size ?? 0,
      mtime: entry.mtime ? Math.floor(entry.mtime.getTime() / 1000) : 0,
      linkpath: entry.linkpath ? String(entry.linkpath) : undefined,
      devmajor: entry.header.devmaj,
      devminor: entry.header.devmin,
      xattrs,
    };
    // Serialise: pause the parser until the consumer is done with this entry.
    stream.pause();
    last = last.then(async () => {
      if (failure) {
        entry.resume();
        return;
      }
      try {
        await opts.onEntry(meta, entry as unknown as Readable);
      } catch (e) {
        failure = e;
      }
      entry.resume();
    });
    chain.push(last);
    last.then(() => stream.resume());
  });
  const finished = new Promise<void>((resolve, reject) => {
    parser.on('end', resolve);
    parser.on('error', reject);
    parser.on('warn', (code: string, msg: string | Error) => {
      if (code === 'TAR_ENTRY_INVALID' || code === 'TAR_BAD_ARCHIVE' || code === 'TAR_ABORT') reject(new StackbootError('SOURCE', `${file}: invalid tar: ${msg instanceof Error ? msg.message : msg}`));
    });
    stream.on('error', reject);
    // a stream that failed (or was closed) before this reader came emits nothing more
    if (stream.errored) reject(stream.errored);
    else if (stream.destroyed && !stream.readableEnded) reject(new Error('the stream was closed before its end'));
  });
  stream.pipe(parser);
  try {
    await finished;
    await Promise.all(chain);
    await done;
  } catch (e) {
    stream.destroy();
    throw e instanceof StackbootError ? e : new StackbootError('SOURCE', `cannot read tar ${file}: ${(e as Error).message}`, { cause: e });
  }
  if (failure) throw failure;
  return index;
}

// ---------------------------------------------------------------- writing

export interface OutEntry {
  path: string;
  type: EntryType;
  mode: number;
  uid: number;
  gid: number;
  mtime: number;
  size?: number;
  linkpath?: string;
  devmajor?: number;
  devminor?: number;
  xattrs?: Record<string, Buffer>;
}

const OUT_TYPE: Record<EntryType, string> = {
  file: 'File',
  dir: 'Directory',
  symlink: 'SymbolicLink',
  hardlink: 'Link',
  char: 'CharacterDevice',
  block: 'BlockDevice',
  fifo: 'FIFO',
};

function paxRecord(key: string, value: Buffer): Buffer {
  // "<len> key=value\n" where len counts itself
  const body = Buffer.concat([Buffer.from(` ${key}=`), value, Buffer.from('\n')]);
  let len = body.length + 1;
  while (String(len).length + body.length !== len) len = String(len).length + body.length;
  return Buffer.concat([Buffer.from(String(len)), body]);
}

function pad(n: number): Buffer {
  const r = n % 512;
  return r === 0 ? Buffer.alloc(0) : Buffer.alloc(512 - r);
}

/** Encodes the header block(s) of one entry (pax header first when needed). */
export function encodeHeader(e: OutEntry, { Header }: typeof TarLib): Buffer {
  const size = e.type === 'file' ? e.size ?? 0 : 0;
  const name = e.type === 'dir' && !e.path.endsWith('/') ? `${e.path}/` : e.path;
  const h = new Header({
    path: name,
    mode: e.mode & 0o7777,
    uid: e.uid,
    gid: e.gid,
    size,
    mtime: new Date(e.mtime * 1000),
    type: OUT_TYPE[e.type] as never,
    linkpath: e.linkpath ?? '',
    uname: '',
    gname: '',
    devmaj: e.devmajor ?? 0,
    devmin: e.devminor ?? 0,
  });
  const block = Buffer.alloc(512);
  const needPax = h.encode(block, 0);
  const xattrs = e.xattrs ?? {};
  const xkeys = Object.keys(xattrs).sort();
  if (!needPax && xkeys.length === 0) return block;
  const recs: Buffer[] = [];
  if (needPax) {
    recs.push(paxRecord('path', Buffer.from(name)));
    if (e.linkpath) recs.push(paxRecord('linkpath', Buffer.from(e.linkpath)));
  }
  for (const k of xkeys) recs.push(paxRecord(`SCHILY.xattr.${k}`, xattrs[k]));
  const body = Buffer.concat(recs);
  const ph = new Header({
    path: 'PaxHeader',
    mode: 0o644,
    uid: 0,
    gid: 0,
    size: body.length,
    mtime: new Date(e.mtime * 1000),
    type: 'ExtendedHeader',
    uname: '',
    gname: '',
  });
  const pblock = Buffer.alloc(512);
  ph.encode(pblock, 0);
  return Buffer.concat([pblock, body, pad(body.length), block]);
}

function write(out: Writable, b: Buffer): Promise<void> {
  if (b.length === 0) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const onErr = (e: Error) => reject(e);
    out.once('error', onErr);
    const ok = out.write(b, (err) => {
      if (err) reject(err);
    });
    if (ok) {
      out.off('error', onErr);
      resolve();
    } else
      out.once('drain', () => {
        out.off('error', onErr);
        resolve();
      });
  });
}

/** Streams a tar archive into `out`, entry by entry, with backpressure. */
export class TarWriter {
  bytes = 0;
  constructor(private readonly out: Writable) {}

  async add(e: OutEntry, body?: Readable | Buffer): Promise<void> {
    const hdr = encodeHeader(e, await tarLib());
    await this.push(hdr);
    if (e.type !== 'file') return;
    const size = e.size ?? 0;
    let n = 0;
    if (Buffer.isBuffer(body)) {
      await this.push(body);
      n = body.length;
    } else if (body) {
      for await (const chunk of body) {
        const c = chunk as Buffer;
        n += c.length;
        if (n > size) throw new StackbootError('SOURCE', `${e.path}: more data than its size ${size}`);
        await this.push(c);
      }
    }
    if (n !== size) throw new StackbootError('SOURCE', `${e.path}: expected ${size} bytes of data, got ${n}`);
    await this.push(pad(size));
  }

  private async push(b: Buffer): Promise<void> {
    this.bytes += b.length;
    await write(this.out, b);
  }

  async finish(): Promise<void> {
    await this.push(Buffer.alloc(1024));
    await new Promise<void>((resolve, reject) => {
      this.out.once('error', reject);
      this.out.end(() => resolve());
    });
  }
}

/**
 * Extracts a tar archive with node-tar's guarded extractor (no absolute paths, no "..",
 * no writes through symlinks, no device nodes). Used for OCI/docker archives and bundles.
 */
export async function extractTar(file: string, dir: string): Promise<void> {
  const problems: string[] = [];
  const { x: extractArchive } = await tarLib();
  await extractArchive({
    file,
    cwd: dir,
    strict: true,
    preservePaths: false,
    onwarn: (code: string, msg: string | Error) => {
      problems.push(`${code}: ${msg instanceof Error ? msg.message : msg}`);
    },
  }).catch((e: unknown) => {
    throw new StackbootError('UNSAFE_ENTRY', `cannot extract ${file}: ${(e as Error).message}`, { cause: e });
  });
  if (problems.length) throw new StackbootError('UNSAFE_ENTRY', `${file}: ${problems[0]}${problems.length > 1 ? ` (and ${problems.length - 1} more)` : ''}`);
}
