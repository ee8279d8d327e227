/** Streaming sha256 of files. */
import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';

/**
 * sha256 of a file, read through one reused 1 MiB buffer: a read stream allocates a new
 * buffer per chunk, and until the collector runs those add up (+60 MiB of RSS for a
 * 70 MiB layer), which is what the build's memory budget is spent on otherwise.
 */
export async function sha256File(file: string, onBytes?: (n: number) => void): Promise<string> {
  const h = createHash('sha256');
  const fh = await open(file, 'r');
  try {
    const buf = Buffer.allocUnsafe(1 << 20);
    let n = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, n);
      if (bytesRead === 0) break;
      h.update(bytesRead === buf.length ? buf : buf.subarray(0, bytesRead));
      n += bytesRead;
      onBytes?.(n);
    }
    return h.digest('hex');
  } finally {
    await fh.close();
  }
}
