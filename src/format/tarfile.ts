/**
 * Tar archives: reading (layer tars, OCI layers, bundles) and writing. The reader is our
 * own (walkTarStream below; why: docs/design-tar.md). The only node-tar importer: writing
 * uses node-tar's Header for the 512-byte ustar block and our own pax records
 * (SCHILY.xattr.*, path, linkpath), so xattrs and long names survive; OCI archives and
 * bundles are unpacked with node-tar's guarded extractor. node-tar never packs a root
 * filesystem (it cannot write xattrs or device nodes).
 */
import type * as TarLib from 'tar';
import { createReadStream } from 'node:fs';
import { open } from 'node:fs/promises';
import { createGunzip } from 'node:zlib';
import { PassThrough, Readable, type Writable } from 'node:stream';
import { spawn, StackbootError } from '../sys/index.js';

let tarModule: typeof TarLib | undefined;
/**
 * node-tar, loaded on first use: the commands that never read a tar (status, mark-good …)
 * do not pay for parsing it (in the bundled CLI it is a file of its own).
 */
async function tarLib(): Promise<typeof TarLib> {
  if (tarModule) return tarModule;
  const m = (await import('tar')) as typeof TarLib & { default?: typeof TarLib };
  // the bundled CLI imports node-tar from a CommonJS part of its own, whose exports
  // arrive as the namespace's default (no named Header there)
  return (tarModule = typeof m.Header === 'function' ? m : (m.default ?? m));
}

export type EntryType = 'file' | 'dir' | 'symlink' | 'hardlink' | 'char' | 'block' | 'fifo';

export interface TarEntryMeta {
  /** index of the entry in the archive, from 0 */
  index: number;
  /** path exactly as stored (not normalised) */
  rawPath: string;
  /** unsupported: a type no layer can hold (GNU incremental or multi-volume, unknown), with a description */
  type: TarEntryKind;
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

// ---------------------------------------------------------------- reading
//
// The reader is our own (see docs/design-tar.md): node-tar reads device numbers only from
// POSIX headers, skips the entry types it does not know and has no sparse files. This one
// reads ustar, GNU and old GNU headers (base-256 numbers, long names L/K, old sparse S),
// pax records (global and per entry: path, linkpath, size, uid, gid, mtime, xattrs,
// SCHILY.devmajor/devminor, GNU.sparse 0.0, 0.1 and 1.0) and v7 headers, checks every
// header's checksum, and reports every other type (GNU incremental D, multi-volume M and
// V, vendor types) as unsupported instead of leaving it out.

const BLOCK = 512;
const ZEROS = Buffer.alloc(1 << 16);

/** Pulls exact byte counts out of a stream (its async iterator: no data is lost between entries). */
class ByteSource {
  private bufs: Buffer[] = [];
  private have = 0;
  private ended = false;
  private readonly it: AsyncIterator<Buffer | string>;
  constructor(stream: Readable) {
    this.it = stream[Symbol.asyncIterator]();
  }
  private async fill(n: number): Promise<void> {
    while (this.have < n && !this.ended) {
      const r = await this.it.next();
      if (r.done) this.ended = true;
      else {
        const b = Buffer.isBuffer(r.value) ? r.value : Buffer.from(r.value);
        this.bufs.push(b);
        this.have += b.length;
      }
    }
  }
  /** At most `max` bytes, at least one unless the stream ended. */
  async chunk(max: number): Promise<Buffer> {
    if (this.have === 0) await this.fill(1);
    if (this.have === 0) return Buffer.alloc(0);
    const first = this.bufs[0];
    if (first.length <= max) {
      this.bufs.shift();
      this.have -= first.length;
      return first;
    }
    this.bufs[0] = first.subarray(max);
    this.have -= max;
    return first.subarray(0, max);
  }
  /** Exactly n bytes, or fewer only when the stream ended. */
  async read(n: number): Promise<Buffer> {
    await this.fill(n);
    const parts: Buffer[] = [];
    let got = 0;
    while (got < n && this.have > 0) {
      const c = await this.chunk(n - got);
      parts.push(c);
      got += c.length;
    }
    return parts.length === 1 ? parts[0] : Buffer.concat(parts);
  }
  /** Reads and drops everything that is left (so a decompressor writing to us can finish). */
  async drain(): Promise<void> {
    this.bufs = [];
    this.have = 0;
    while (!this.ended) {
      const r = await this.it.next();
      if (r.done) this.ended = true;
    }
  }
  close(): void {
    void this.it.return?.();
  }
}

class TarFormatError extends Error {}
const bad = (why: string): never => {
  throw new TarFormatError(why);
};

/** A NUL-terminated header field; anything but NULs after the terminator is refused. */
function field(b: Buffer, off: number, len: number, what: string): Buffer {
  const f = b.subarray(off, off + len);
  const nul = f.indexOf(0);
  if (nul < 0) return f;
  for (let i = nul + 1; i < f.length; i++) if (f[i] !== 0) bad(`the ${what} field holds a NUL byte in the middle (${JSON.stringify(f.toString('latin1'))})`);
  return f.subarray(0, nul);
}

/** A numeric header field: octal (space or NUL ended), or base-256 when its top bit is set (GNU, star, Go). */
export function tarNumber(b: Buffer, off: number, len: number, what = 'number'): number {
  const f = b.subarray(off, off + len);
  if (f[0] & 0x80) {
    // two's complement big-endian, the marker bit 0x40 is the sign
    let v = BigInt(f[0] & 0x7f) - (f[0] & 0x40 ? 128n : 0n);
    for (let i = 1; i < f.length; i++) v = (v << 8n) | BigInt(f[i]);
    if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < -BigInt(Number.MAX_SAFE_INTEGER)) bad(`the ${what} field is out of range`);
    return Number(v);
  }
  const s = f.toString('latin1').replace(/[\0 ]+$/, '').replace(/^[ \0]+/, '');
  if (s === '') return 0;
  if (!/^[0-7]+$/.test(s)) bad(`the ${what} field is not an octal number (${JSON.stringify(s)})`);
  return parseInt(s, 8);
}

function checksumOk(b: Buffer): boolean {
  const stored = tarNumber(b, 148, 8, 'checksum');
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const v = i >= 148 && i < 156 ? 0x20 : b[i];
    unsigned += v;
    signed += v > 127 ? v - 256 : v;
  }
  return stored === unsigned || stored === signed;
}

/** A name as bytes -> string: must be valid UTF-8 and hold no NUL. */
function nameOf(raw: Buffer, what: string): string {
  if (raw.includes(0)) bad(`the ${what} ${JSON.stringify(raw.toString('latin1'))} holds a NUL byte`);
  const s = raw.toString('utf8');
  if (!Buffer.from(s, 'utf8').equals(raw)) bad(`the ${what} ${JSON.stringify(raw.toString('latin1'))} is not valid UTF-8`);
  return s;
}

/** Pax records in order (a key may repeat: GNU.sparse.offset/numbytes of sparse 0.0). */
export function paxRecords(body: Buffer): [string, Buffer][] {
  const out: [string, Buffer][] = [];
  let off = 0;
  while (off < body.length) {
    if (body[off] === 0) break; // padding some writers leave
    const sp = body.indexOf(0x20, off);
    const len = sp < 0 ? NaN : Number(body.subarray(off, sp).toString('latin1'));
    if (!Number.isInteger(len) || len <= sp - off + 1 || off + len > body.length || body[off + len - 1] !== 0x0a) bad(`a pax record at byte ${off} is malformed`);
    const rec = body.subarray(sp + 1, off + len - 1);
    const eq = rec.indexOf(0x3d);
    if (eq <= 0) bad(`a pax record at byte ${off} has no key=value`);
    out.push([rec.subarray(0, eq).toString('utf8'), Buffer.from(rec.subarray(eq + 1))]);
    off += len;
  }
  return out;
}

/** Parses SCHILY.xattr.* (and LIBARCHIVE.xattr.*) records out of a raw pax extended header body. */
export function paxXattrs(raw: string | Buffer): Record<string, Buffer> {
  const out: Record<string, Buffer> = {};
  for (const [key, value] of paxRecords(Buffer.isBuffer(raw) ? raw : Buffer.from(raw, 'utf8'))) {
    if (key.startsWith('SCHILY.xattr.')) out[key.slice('SCHILY.xattr.'.length)] = value;
    else if (key.startsWith('LIBARCHIVE.xattr.')) out[decodeURIComponent(key.slice('LIBARCHIVE.xattr.'.length))] = Buffer.from(value.toString('ascii'), 'base64');
  }
  return out;
}

/** One data run of a sparse file: `size` bytes stored in the archive go at `offset`. */
interface SparseRun {
  offset: number;
  size: number;
}

const TYPES: Record<string, EntryType> = { '0': 'file', '\0': 'file', '7': 'file', '1': 'hardlink', '2': 'symlink', '3': 'char', '4': 'block', '5': 'dir', '6': 'fifo' };
const REFUSED: Record<string, string> = {
  D: 'GNU incremental dump directory (D)',
  M: 'GNU multi-volume continuation (M)',
  V: 'GNU volume label (V)',
  N: 'old GNU long-name list (N)',
};

const decimal = (v: Buffer, key: string): number => {
  const s = v.toString('latin1');
  if (!/^-?[0-9]+(\.[0-9]*)?$/.test(s)) bad(`pax ${key}=${JSON.stringify(s)} is not a number`);
  return Math.floor(Number(s));
};

function sparseList(nums: number[], what: string): SparseRun[] {
  if (nums.length % 2) bad(`${what}: an odd count of numbers`);
  const runs: SparseRun[] = [];
  for (let i = 0; i < nums.length; i += 2) runs.push({ offset: nums[i], size: nums[i + 1] });
  return runs;
}

/** The runs of an old GNU sparse header (S): 4 in the header, 21 in each extension block. */
async function gnuSparseRuns(h: Buffer, src: ByteSource): Promise<SparseRun[]> {
  const runs: SparseRun[] = [];
  const take = (b: Buffer, off: number, n: number) => {
    for (let i = 0; i < n; i++) {
      const o = off + i * 24;
      if (b[o] === 0) break;
      runs.push({ offset: tarNumber(b, o, 12, 'sparse offset'), size: tarNumber(b, o + 12, 12, 'sparse size') });
    }
  };
  take(h, 386, 4);
  let more = h[482] !== 0;
  while (more) {
    const ext = await src.read(BLOCK);
    if (ext.length < BLOCK) bad('it ends inside a sparse header');
    take(ext, 0, 21);
    more = ext[504] !== 0;
  }
  return runs;
}

/** The map at the start of a pax 1.0 sparse file's data: decimal lines, padded to a block. */
async function sparseMap10(src: ByteSource): Promise<{ runs: SparseRun[]; bytes: number }> {
  let text = '';
  let bytes = 0;
  const nums: number[] = [];
  let count = -1;
  while (count < 0 || nums.length < count * 2) {
    const b = await src.read(BLOCK);
    if (b.length < BLOCK) bad('it ends inside a sparse map');
    bytes += BLOCK;
    text += b.toString('latin1');
    const lines = text.split('\n');
    text = lines.pop() ?? '';
    for (const l of lines) {
      if (!/^[0-9]+$/.test(l)) bad(`the sparse map holds ${JSON.stringify(l.slice(0, 40))}`);
      if (count < 0) count = Number(l);
      else if (nums.length < count * 2) nums.push(Number(l));
    }
    if (count > 1 << 20) bad('the sparse map is too long');
  }
  return { runs: sparseList(nums, 'sparse map'), bytes };
}

/** The body of one entry: its data, or a sparse file's runs with zeros between them. */
class EntryBody extends Readable {
  busy: Promise<void> = Promise.resolve();
  constructor(private readonly next: () => Promise<Buffer | null>) {
    super({ highWaterMark: 1 << 16 });
  }
  override _read(): void {
    this.busy = this.next().then(
      (b) => void this.push(b),
      (e: Error) => void this.destroy(e),
    );
  }
}

/** Produces a body's bytes: `stored` bytes from the archive, laid out by `runs` over `size` (plain: one run). */
function bodyReader(src: ByteSource, size: number, stored: number, runs: SparseRun[] | null) {
  let storedLeft = stored;
  let pos = 0; // position in the expanded file
  let run = 0;
  let inRun = 0; // bytes of the current run already given
  const fromArchive = async (max: number): Promise<Buffer> => {
    const c = await src.chunk(Math.min(max, storedLeft));
    if (c.length === 0) bad('it ends inside an entry');
    storedLeft -= c.length;
    return c;
  };
  const next = async (): Promise<Buffer | null> => {
    if (!runs) {
      if (storedLeft === 0) return null;
      return fromArchive(1 << 20);
    }
    while (run < runs.length && inRun >= runs[run].size) {
      run++;
      inRun = 0;
    }
    const r = run < runs.length ? runs[run] : null;
    const holeEnd = r ? r.offset : size;
    if (pos < holeEnd) {
      const n = Math.min(holeEnd - pos, ZEROS.length);
      pos += n;
      return ZEROS.subarray(0, n);
    }
    if (!r) return null;
    const c = await fromArchive(r.size - inRun);
    inRun += c.length;
    pos += c.length;
    return c;
  };
  /** Drops the stored data onEntry left unread. */
  const skip = async (): Promise<void> => {
    while (storedLeft > 0) await fromArchive(1 << 20);
  };
  return { next, skip };
}

export type TarEntryKind = EntryType | `unsupported:${string}`;

/**
 * The core of walkTar over any Readable (a pipe, an HTTP body, a file stream): the tar
 * must be uncompressed. `label` names the source in errors; `done` is awaited at the end
 * (e.g. a decompressor's exit). Entries are delivered one at a time; a body that
 * onEntry leaves unread is skipped.
 */
export async function walkTarStream(stream: Readable, opts: WalkOptions, label = 'tar stream', done: Promise<void> = Promise.resolve()): Promise<number> {
  // a stream that failed (or was closed) before this reader came emits nothing more
  if (stream.errored) throw wrapReadError(stream.errored, label);
  if (stream.destroyed && !stream.readableEnded) throw new StackbootError('SOURCE', `cannot read tar ${label}: the stream was closed before its end`);
  const src = new ByteSource(stream);
  let index = 0;
  let globals: [string, Buffer][] = [];
  let local: [string, Buffer][] = [];
  let longName: Buffer | null = null;
  let longLink: Buffer | null = null;
  let consumerError: { e: unknown } | null = null;
  const meta = async (size: number, what: string): Promise<Buffer> => {
    if (size > 64 << 20) bad(`a ${what} of ${size} bytes`);
    const b = await src.read(size);
    if (b.length < size) bad(`it ends inside a ${what}`);
    await skipPad(size);
    return b;
  };
  const skipPad = async (size: number) => {
    const pad = (BLOCK - (size % BLOCK)) % BLOCK;
    if (pad && (await src.read(pad)).length < pad) bad('it ends inside the padding of an entry');
  };
  try {
    for (;;) {
      const h = await src.read(BLOCK);
      if (h.length === 0) bad(index === 0 && !longName && !local.length ? 'it is empty' : 'it ends without an end-of-archive block (truncated?)');
      if (h.length < BLOCK) bad('it ends inside a header');
      if (h.every((x) => x === 0)) {
        if (longName || longLink || local.length) bad('it ends after an extended header, without its entry');
        await src.drain();
        break;
      }
      if (!checksumOk(h)) bad(`the header of entry ${index + 1} has a wrong checksum (not a tar, or a damaged one)`);
      const flag = String.fromCharCode(h[156]);
      const magic = h.subarray(257, 263).toString('latin1');
      const ustar = magic === 'ustar\0';
      const gnu = magic === 'ustar ';
      const headerSize = tarNumber(h, 124, 12, 'size');
      if (flag === 'x' || flag === 'X') {
        local = local.concat(paxRecords(await meta(headerSize, 'pax header')));
        continue;
      }
      if (flag === 'g') {
        globals = globals.concat(paxRecords(await meta(headerSize, 'pax global header')));
        continue;
      }
      if (flag === 'L') {
        longName = (await meta(headerSize, 'GNU long name')).subarray(0);
        continue;
      }
      if (flag === 'K') {
        longLink = (await meta(headerSize, 'GNU long link name')).subarray(0);
        continue;
      }
      const pax = new Map<string, Buffer>();
      for (const [k, v] of [...globals, ...local]) pax.set(k, v);
      // GNU long names end with a NUL (counted in their size)
      const strip = (b: Buffer) => (b.length && b[b.length - 1] === 0 ? b.subarray(0, b.length - 1) : b);
      let rawName: Buffer;
      if (pax.has('GNU.sparse.name')) rawName = pax.get('GNU.sparse.name')!;
      else if (pax.has('path')) rawName = pax.get('path')!;
      else if (longName) rawName = strip(longName);
      else {
        const name = field(h, 0, 100, 'name');
        const prefix = ustar ? field(h, 345, 155, 'prefix') : Buffer.alloc(0);
        rawName = prefix.length ? Buffer.concat([prefix, Buffer.from('/'), name]) : name;
      }
      const rawLink = pax.has('linkpath') ? pax.get('linkpath')! : longLink ? strip(longLink) : field(h, 157, 100, 'link name');
      const rawPath = nameOf(rawName, 'name');
      const linkpath = rawLink.length ? nameOf(rawLink, 'link name') : undefined;
      let type: TarEntryKind = TYPES[flag] ?? (flag === 'S' ? 'file' : `unsupported:${REFUSED[flag] ?? `unknown type ${JSON.stringify(flag)}`}`);
      // v7 and some old writers mark folders only by a trailing slash
      if (type === 'file' && (flag === '0' || flag === '\0') && rawPath.endsWith('/')) type = 'dir';
      const num = (key: string, off: number, len: number): number => (pax.has(key) ? decimal(pax.get(key)!, key) : tarNumber(h, off, len, key));
      let stored = pax.has('size') ? decimal(pax.get('size')!, 'size') : headerSize;
      const devField = (key: string, off: number) => (pax.has(`SCHILY.${key}`) ? decimal(pax.get(`SCHILY.${key}`)!, key) : ustar || gnu ? tarNumber(h, off, 8, key) : 0);
      const xattrs: Record<string, Buffer> = {};
      for (const [k, v] of pax) {
        if (k.startsWith('SCHILY.xattr.')) xattrs[k.slice('SCHILY.xattr.'.length)] = v;
        else if (k.startsWith('LIBARCHIVE.xattr.')) xattrs[decodeURIComponent(k.slice('LIBARCHIVE.xattr.'.length))] = Buffer.from(v.toString('ascii'), 'base64');
      }
      // sparse files: the runs, the size of the whole file
      let runs: SparseRun[] | null = null;
      let size = stored;
      if (flag === 'S') {
        runs = await gnuSparseRuns(h, src);
        size = tarNumber(h, 483, 12, 'real size');
      } else if (type === 'file' && pax.get('GNU.sparse.major')?.toString() === '1') {
        if (pax.get('GNU.sparse.minor')?.toString() !== '0') bad(`${rawPath}: GNU sparse format 1.${pax.get('GNU.sparse.minor')} is not known`);
        const m = await sparseMap10(src);
        runs = m.runs;
        stored -= m.bytes;
        size = decimal(pax.get('GNU.sparse.realsize') ?? bad(`${rawPath}: sparse file without GNU.sparse.realsize`), 'GNU.sparse.realsize');
      } else if (type === 'file' && pax.has('GNU.sparse.map')) {
        const s = pax.get('GNU.sparse.map')!.toString('latin1');
        runs = sparseList(s === '' ? [] : s.split(',').map((x) => decimal(Buffer.from(x), 'GNU.sparse.map')), 'GNU.sparse.map');
        size = decimal(pax.get('GNU.sparse.size') ?? pax.get('GNU.sparse.realsize') ?? bad(`${rawPath}: sparse file without GNU.sparse.size`), 'GNU.sparse.size');
      } else if (type === 'file' && pax.has('GNU.sparse.numblocks')) {
        const nums: number[] = [];
        for (const [k, v] of local) if (k === 'GNU.sparse.offset' || k === 'GNU.sparse.numbytes') nums.push(decimal(v, k));
        runs = sparseList(nums, 'GNU.sparse.offset/numbytes');
        size = decimal(pax.get('GNU.sparse.size') ?? bad(`${rawPath}: sparse file without GNU.sparse.size`), 'GNU.sparse.size');
      }
      if (runs) {
        let end = 0;
        let total = 0;
        for (const r of runs) {
          if (r.offset < end || r.offset + r.size > size) bad(`${rawPath}: its sparse map is out of order or past the end of the file`);
          end = r.offset + r.size;
          total += r.size;
        }
        if (total !== stored) bad(`${rawPath}: its sparse map holds ${total} bytes, the entry ${stored}`);
      }
      // links, folders, devices and fifos carry no data, whatever the size field says
      // (as Go's archive/tar and Python's tarfile read them)
      if (type !== 'file' && !type.startsWith('unsupported:')) stored = 0;
      const m: TarEntryMeta = {
        index: index++,
        rawPath,
        type,
        mode: tarNumber(h, 100, 8, 'mode') & 0o7777,
        uid: num('uid', 108, 8),
        gid: num('gid', 116, 8),
        size: type === 'file' ? size : 0,
        mtime: num('mtime', 136, 12),
        linkpath: type === 'symlink' || type === 'hardlink' ? linkpath : undefined,
        devmajor: type === 'char' || type === 'block' ? devField('devmajor', 329) : undefined,
        devminor: type === 'char' || type === 'block' ? devField('devminor', 337) : undefined,
        xattrs,
      };
      local = [];
      longName = null;
      longLink = null;
      const reader = bodyReader(src, type === 'file' ? size : stored, stored, type === 'file' ? runs : null);
      // once onEntry is done, the body ends: a consumer that only resume()d it must not
      // read on while the next header is read
      let detached = false;
      const body = new EntryBody(() => (detached ? Promise.resolve(null) : reader.next()));
      try {
        await opts.onEntry(m, body);
      } catch (e) {
        consumerError = { e };
        throw e;
      } finally {
        detached = true;
        await body.busy;
      }
      if (!body.readableEnded) body.destroy();
      // what onEntry left unread, then the padding
      await reader.skip();
      await skipPad(stored);
    }
    await done;
  } catch (e) {
    src.close();
    stream.destroy();
    // onEntry's own errors (a refusal, a stop) go out as they are
    throw consumerError ? consumerError.e : wrapReadError(e, label);
  }
  return index;
}

function wrapReadError(e: unknown, label: string): Error {
  if (e instanceof StackbootError) return e;
  if (e instanceof TarFormatError) return new StackbootError('SOURCE', `${label}: invalid tar: ${e.message}`);
  return new StackbootError('SOURCE', `cannot read tar ${label}: ${(e as Error).message}`, { cause: e });
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
