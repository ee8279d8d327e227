/**
 * libzstd, the system's own, through one long-lived Python co-process (Debian's
 * python3-zstandard).
 *
 * Why Python: the chunk deltas' frame deltas (issue 15) recompress squashfs blocks and must
 * get back the exact bytes gensquashfs wrote. Those bytes depend on the libzstd version,
 * so only the library gensquashfs itself links (Debian 12's libzstd1, 1.5.4) will do.
 * Node 20 has no zstd; the npm zstd builds bundle their own libzstd, whose output differs
 * (a build of zstd 1.5.7 reproduced 137 of the 1535 frames of a Debian layer, a wasm build
 * 0 of 5). python3-zstandard links the system libzstd1, so it reproduces every frame.
 *
 * The co-process runs PY_SOURCE below (python3 -I -c) and speaks a length-prefixed binary
 * protocol on stdin/stdout, every integer little-endian:
 *   request:  u8 op, i32 level, u32 count, per item: u32 len + bytes [+ u32 len + prefix]
 *   response: u8 status (0 ok, 1 error), u32 count, per item: u32 len + bytes
 *             (an error: count 1, the one item the UTF-8 message)
 * On start it sends one response whose item is libzstd's version. Calls are batched (one
 * round trip serves many items) and queued (one request at a time), so concurrent calls
 * are safe. Ending stdin ends the process.
 */
import { existsSync } from 'node:fs';
import { StackbootError } from './errors.js';
import { spawn, type Spawned } from './exec.js';

export interface Zstd {
  /** libzstd's version, e.g. "1.5.4" (zstandard.ZSTD_VERSION joined with dots) */
  readonly version: string;
  /** each item one complete zstd frame -> its decompressed bytes */
  decompress(frames: Buffer[]): Promise<Buffer[]>;
  /** one-shot compression of each buffer at `level` as gensquashfs does it (ZSTD_compress: content size in the header, no checksum, no dict id) */
  compress(blocks: Buffer[], level: number): Promise<Buffer[]>;
  /** each item compressed at `level` against `prefix` used as a raw-content dictionary (no dict id, no checksum, content size written) */
  compressWithPrefix(items: { data: Buffer; prefix: Buffer }[], level: number): Promise<Buffer[]>;
  /** the inverse: each frame decompressed with its prefix as raw-content dictionary */
  decompressWithPrefix(items: { frame: Buffer; prefix: Buffer }[]): Promise<Buffer[]>;
  /**
   * Slices [start, end) of one `context`, each compressed as compressWithPrefix does it
   * against the up to `reach` bytes of the context before it (the context crosses the
   * pipe once, not once a slice).
   */
  compressSlices(context: Buffer, slices: [number, number][], reach: number, level: number): Promise<Buffer[]>;
  close(): Promise<void>;
}

const PY_SOURCE = String.raw`
import struct, sys
try:
    import zstandard as zstd
except ImportError as e:
    sys.stderr.write('cannot import zstandard: %s\n' % e)
    sys.exit(3)

inp, out = sys.stdin.buffer, sys.stdout.buffer
U32, HEAD, REPLY = struct.Struct('<I'), struct.Struct('<BiI'), struct.Struct('<BI')
DECOMPRESS, COMPRESS, COMPRESS_PREFIX, DECOMPRESS_PREFIX, COMPRESS_SLICES = 1, 2, 3, 4, 5

def read(n):
    b = inp.read(n)
    if len(b) != n:
        sys.exit(0)  # stdin closed: the end
    return b

def blob():
    return read(U32.unpack(read(4))[0])

def reply(status, items):
    out.write(REPLY.pack(status, len(items)))
    for b in items:
        out.write(U32.pack(len(b)))
        out.write(b)
    out.flush()

def raw_dict(prefix):
    return zstd.ZstdCompressionDict(prefix, dict_type=zstd.DICT_TYPE_RAWCONTENT) if prefix else None

def compressor(level, prefix=b''):
    return zstd.ZstdCompressor(level=level, dict_data=raw_dict(prefix), write_content_size=True,
                               write_checksum=False, write_dict_id=False)

def decompress(dctx, frame):
    if zstd.frame_content_size(frame) >= 0:
        return dctx.decompress(frame)
    # no content size in the header: stream it (no bound to guess), and insist on a whole frame
    obj = dctx.decompressobj()
    data = obj.decompress(frame)
    if not obj.eof:
        raise zstd.ZstdError('truncated frame')
    return data

def serve(op, level, items):
    # one (de)compressor per distinct prefix of the batch: reusing one saves loading the
    # prefix for every item (3x faster for 4 KiB items), and gives the same bytes
    cache = {}
    def cached(make, prefix):
        if prefix not in cache:
            cache[prefix] = make(prefix)
        return cache[prefix]
    if op in (DECOMPRESS, DECOMPRESS_PREFIX):
        return [decompress(cached(lambda p: zstd.ZstdDecompressor(dict_data=raw_dict(p)), p), f) for f, p in items]
    if op in (COMPRESS, COMPRESS_PREFIX):
        return [cached(lambda p: compressor(level, p), p).compress(b) for b, p in items]
    if op == COMPRESS_SLICES:
        # one context, many slices of it: each compressed against at most REACH bytes before it
        ctx, spec = items[0]
        ctx = memoryview(ctx)
        reach = U32.unpack_from(spec, 0)[0]
        result = []
        for k in range(4, len(spec), 8):
            s, e = struct.unpack_from('<II', spec, k)
            result.append(compressor(level, bytes(ctx[max(0, s - reach):s])).compress(ctx[s:e]))
        return result
    raise ValueError('unknown op %d' % op)

reply(0, ['.'.join(map(str, zstd.ZSTD_VERSION)).encode()])
while True:
    head = inp.read(HEAD.size)
    if len(head) != HEAD.size:
        break
    op, level, count = HEAD.unpack(head)
    with_prefix = op in (COMPRESS_PREFIX, DECOMPRESS_PREFIX, COMPRESS_SLICES)
    # the whole request is read before any work, so an error leaves the stream in step
    items = [(blob(), blob() if with_prefix else b'') for _ in range(count)]
    try:
        result = serve(op, level, items)
    except Exception as e:
        reply(1, [('%s: %s' % (type(e).__name__, e)).encode()])
    else:
        reply(0, result)
`;

const OP = { decompress: 1, compress: 2, compressWithPrefix: 3, decompressWithPrefix: 4, compressSlices: 5 } as const;
const PACKAGE_HINT = 'install the Debian package python3-zstandard (run: npm run setup)';

/** The interpreter: $STACKBOOT_PYTHON, else Debian's /usr/bin/python3, else python3 on PATH. */
function interpreter(): string {
  const env = process.env.STACKBOOT_PYTHON;
  if (env) return env;
  return existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
}

/** Reads exact byte counts from a stream, whatever the sizes of the chunks it delivers. */
class ByteReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private waiter?: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void };
  private failure?: Error;

  constructor(stream: NodeJS.ReadableStream) {
    stream.on('data', (c: Buffer) => {
      this.chunks.push(c);
      this.buffered += c.length;
      this.wake();
    });
  }

  /** Later and pending reads reject with `e` (the stream ended or the process died). */
  fail(e: Error): void {
    this.failure ??= e;
    const w = this.waiter;
    if (w && this.buffered < w.n) {
      this.waiter = undefined;
      w.reject(this.failure);
    }
  }

  read(n: number): Promise<Buffer> {
    if (this.waiter) throw new Error('ByteReader: one read at a time');
    if (this.buffered >= n) return Promise.resolve(this.take(n));
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.waiter = { n, resolve, reject };
    });
  }

  private wake(): void {
    const w = this.waiter;
    if (w && this.buffered >= w.n) {
      this.waiter = undefined;
      w.resolve(this.take(w.n));
    }
  }

  private take(n: number): Buffer {
    this.buffered -= n;
    const first = this.chunks[0];
    if (first && first.length >= n) {
      // within the first chunk: no copy
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let off = 0;
    while (off < n) {
      const c = this.chunks[0]!;
      const k = Math.min(c.length, n - off);
      c.copy(out, off, 0, k);
      off += k;
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
    }
    return out;
  }
}

class ZstdProcess implements Zstd {
  version = '';
  private readonly reader: ByteReader;
  private queue: Promise<unknown> = Promise.resolve();
  private stderrTail = '';
  private exited = false;
  private closing = false;

  constructor(
    private readonly child: Spawned,
    private readonly python: string,
  ) {
    this.reader = new ByteReader(child.stdout);
    child.stderr.on('data', (c: Buffer) => {
      this.stderrTail = (this.stderrTail + c.toString('utf8')).slice(-2000);
    });
    // a write to a process that has died: the exit below reports it
    child.stdin!.on('error', () => {});
    void child.done.then(({ exitCode, signal }) => {
      this.exited = true;
      // let stdout and stderr deliver what they still hold
      setImmediate(() => this.reader.fail(this.deathError(exitCode, signal)));
    });
  }

  deathError(exitCode: number | null, signal: string | null): StackbootError {
    const how = this.closing ? 'was closed' : signal ? `died of ${signal}` : exitCode === null ? 'could not start' : `exited (code ${exitCode})`;
    const tail = this.stderrTail.trim().split('\n').slice(-5).join(' | ');
    const hint = exitCode === 3 || (exitCode === null && !signal) ? ` (${PACKAGE_HINT})` : '';
    return new StackbootError('TOOL', `zstd co-process (${this.python}) ${how}${tail ? `: ${tail}` : ''}${hint}`, {
      details: { python: this.python, exitCode, signal, stderr: this.stderrTail },
    });
  }

  /** Reads one response: its items, or a StackbootError for an error reply. */
  async response(): Promise<Buffer[]> {
    const head = await this.reader.read(5);
    const status = head.readUInt8(0);
    const count = head.readUInt32LE(1);
    const items: Buffer[] = [];
    for (let i = 0; i < count; i++) items.push(await this.reader.read((await this.reader.read(4)).readUInt32LE(0)));
    if (status !== 0) throw new StackbootError('TOOL', `zstd: ${items[0]?.toString('utf8') ?? 'failed'}`);
    return items;
  }

  /** Queues one request and resolves with its response. */
  private request(op: number, level: number, items: [Buffer, Buffer?][]): Promise<Buffer[]> {
    const job = this.queue.then(() => {
      if (this.closing) throw new StackbootError('TOOL', 'zstd co-process is closed');
      const head = Buffer.alloc(9);
      head.writeUInt8(op, 0);
      head.writeInt32LE(level, 1);
      head.writeUInt32LE(items.length, 5);
      const stdin = this.child.stdin!;
      stdin.write(head);
      for (const [data, prefix] of items) {
        for (const b of prefix === undefined ? [data] : [data, prefix]) {
          const len = Buffer.alloc(4);
          len.writeUInt32LE(b.length, 0);
          stdin.write(len);
          if (b.length > 0) stdin.write(b);
        }
      }
      return this.response();
    });
    this.queue = job.catch(() => {});
    return job;
  }

  decompress(frames: Buffer[]): Promise<Buffer[]> {
    return this.request(OP.decompress, 0, frames.map((f) => [f]));
  }

  compress(blocks: Buffer[], level: number): Promise<Buffer[]> {
    return this.request(OP.compress, level, blocks.map((b) => [b]));
  }

  compressWithPrefix(items: { data: Buffer; prefix: Buffer }[], level: number): Promise<Buffer[]> {
    return this.request(OP.compressWithPrefix, level, items.map((i) => [i.data, i.prefix]));
  }

  compressSlices(context: Buffer, slices: [number, number][], reach: number, level: number): Promise<Buffer[]> {
    if (slices.length === 0) return Promise.resolve([]);
    const spec = Buffer.alloc(4 + 8 * slices.length);
    spec.writeUInt32LE(reach, 0);
    slices.forEach(([s, e], k) => {
      if (!(s >= 0 && s <= e && e <= context.length)) throw new StackbootError('TOOL', `zstd: slice ${s}-${e} outside a context of ${context.length} bytes`);
      spec.writeUInt32LE(s, 4 + 8 * k);
      spec.writeUInt32LE(e, 8 + 8 * k);
    });
    return this.request(OP.compressSlices, level, [[context, spec]]);
  }

  decompressWithPrefix(items: { frame: Buffer; prefix: Buffer }[]): Promise<Buffer[]> {
    return this.request(OP.decompressWithPrefix, 0, items.map((i) => [i.frame, i.prefix]));
  }

  /** Ends the co-process once the queued requests are answered. */
  async close(): Promise<void> {
    await this.queue;
    this.closing = true;
    if (!this.exited) this.child.stdin!.end();
    await this.child.done;
  }
}

/** Starts the co-process; StackbootError('TOOL', '<why>: ...') when python3 or its zstandard module is missing (message names the Debian package python3-zstandard). */
export async function openZstd(): Promise<Zstd> {
  const python = interpreter();
  const child = spawn(python, ['-I', '-c', PY_SOURCE], { stdin: 'pipe' });
  const z = new ZstdProcess(child, python);
  let hello: Buffer[];
  try {
    hello = await z.response();
  } catch (e) {
    child.kill();
    const why = e instanceof StackbootError ? e.message : String(e);
    throw new StackbootError('TOOL', `cannot start libzstd through ${python}: ${why}`, { cause: e });
  }
  z.version = hello[0]!.toString('utf8');
  return z;
}
