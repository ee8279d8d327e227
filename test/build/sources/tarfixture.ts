/** Writes tar files for tests through the project's own tar writer (any path, any type); temporary folders removed after the test file. */
import { createWriteStream, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll } from 'vitest';
import { createGzip } from 'node:zlib';
import { TarWriter, type OutEntry } from '../../../src/format/tarfile.js';

export type FixtureEntry = Partial<OutEntry> & { path: string; data?: string };

export async function writeTar(file: string, entries: FixtureEntry[], gzip = false): Promise<void> {
  const fileStream = createWriteStream(file);
  const closed = new Promise<void>((res, rej) => {
    fileStream.on('close', res);
    fileStream.on('error', rej);
  });
  let out: NodeJS.WritableStream = fileStream;
  if (gzip) {
    const gz = createGzip();
    gz.pipe(fileStream);
    out = gz;
  }
  const w = new TarWriter(out as never);
  for (const e of entries) {
    const data = e.data !== undefined ? Buffer.from(e.data) : undefined;
    const type = e.type ?? (data ? 'file' : 'dir');
    await w.add({ mode: type === 'dir' ? 0o755 : 0o644, uid: 0, gid: 0, mtime: 1234, ...e, type, size: data?.length ?? 0 } as OutEntry, data);
  }
  await w.finish();
  await closed;
}

const made: string[] = [];
// the folders tmpdir() made go with the test file's last hook (SB_KEEP_TMP=1 keeps them)
afterAll(async () => {
  if (process.env.SB_KEEP_TMP === '1') return;
  await Promise.all(made.splice(0).map((d) => fs.rm(d, { recursive: true, force: true })));
});

/** A new folder under the system's temporary folder, removed after the test file. */
export async function tmpdir(prefix: string): Promise<string> {
  const d = await fs.mkdtemp(path.join(os.tmpdir(), prefix));
  made.push(d);
  return d;
}

/** Leaves a Unix socket file at `p`, as a process that died without cleaning up does (node unlinks its own on close). */
export async function makeSocketFile(p: string): Promise<void> {
  const { run } = await import('../../../src/sys/exec.js');
  await run(process.execPath, ['-e', "require('net').createServer().listen(process.argv[1], () => process.exit(0))", p]);
}

/** One raw 512-byte tar header, for archives the project's writer cannot make (GNU magic, odd types, hand-made pax). */
export function rawHeader(h: { name: string; type: string; size?: number; mode?: number; magic?: 'gnu' | 'ustar'; devmajor?: number; devminor?: number; uid?: number | Buffer }): Buffer {
  const b = Buffer.alloc(512);
  const oct = (v: number, off: number, len: number) => b.write(`${v.toString(8).padStart(len - 1, '0')}\0`, off, len, 'latin1');
  b.write(h.name, 0, 100, 'utf8');
  oct(h.mode ?? 0o644, 100, 8);
  if (Buffer.isBuffer(h.uid)) h.uid.copy(b, 108);
  else oct(h.uid ?? 0, 108, 8);
  oct(0, 116, 8);
  oct(h.size ?? 0, 124, 12);
  oct(1234, 136, 12);
  b.write(h.type, 156, 1, 'latin1');
  b.write(h.magic === 'ustar' ? 'ustar\u000000' : 'ustar  \0', 257, 8, 'latin1');
  oct(h.devmajor ?? 0, 329, 8);
  oct(h.devminor ?? 0, 337, 8);
  b.fill(0x20, 148, 156);
  let sum = 0;
  for (const x of b) sum += x;
  b.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 8, 'latin1');
  return b;
}

/** A raw archive: headers with their data (padded), then the end blocks. */
export async function writeRawTar(file: string, entries: { header: Buffer; data?: Buffer }[]): Promise<void> {
  const parts: Buffer[] = [];
  for (const e of entries) {
    parts.push(e.header);
    if (e.data) parts.push(e.data, Buffer.alloc((512 - (e.data.length % 512)) % 512));
  }
  parts.push(Buffer.alloc(1024));
  await fs.writeFile(file, Buffer.concat(parts));
}
