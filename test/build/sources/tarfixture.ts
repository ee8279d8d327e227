/** Writes tar files for tests through the project's own tar writer (any path, any type). */
import { createWriteStream, promises as fs } from 'node:fs';
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

export async function tmpdir(prefix: string): Promise<string> {
  const os = await import('node:os');
  const path = await import('node:path');
  return fs.mkdtemp(path.join(os.tmpdir(), prefix));
}

/** Leaves a Unix socket file at `p`, as a process that died without cleaning up does (node unlinks its own on close). */
export async function makeSocketFile(p: string): Promise<void> {
  const { run } = await import('../../../src/sys/exec.js');
  await run(process.execPath, ['-e', "require('net').createServer().listen(process.argv[1], () => process.exit(0))", p]);
}
