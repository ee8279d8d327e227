/**
 * Durable writes, the one path every writer takes (DESIGN.md, "Boot protocol"): a temp
 * file beside the target, written, fsynced, renamed over the target, then the folder
 * fsynced. A power cut at any instant leaves the old file or the new one, never a mix.
 *
 * Temp files are named `.<target name>.sb-tmp-<pid>-<8 hex>` (hidden, in the target's
 * folder, so the rename never crosses filesystems). isTempName() knows them, and the
 * `.part` files older versions left in a store's layers/, for whoever sweeps leftovers
 * (gc). A temp is removed on any failure, and on an interrupt (Ctrl-C) while it is open.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { undoOnInterrupt } from './interrupt.js';

const TEMP_NAME = /^\..+\.sb-tmp-\d+-[0-9a-f]{8}$/;
/** what an interrupted install of an older version left in layers/ */
const LEGACY_TEMP_NAME = /\.part$/;

/** The temp file for `target`: beside it, hidden, unique to this process and call. */
export function tempPathFor(target: string): string {
  return path.join(path.dirname(target), `.${path.basename(target)}.sb-tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
}

/** Whether a file name (no folder) is a temp file of a durable write, this version's or an older one's. */
export function isTempName(name: string): boolean {
  return TEMP_NAME.test(name) || LEGACY_TEMP_NAME.test(name);
}

/** fsync a file or directory by path. */
export async function fsyncPath(p: string): Promise<void> {
  const fh = await fs.open(p, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export interface DurableFillOptions<T> {
  /** runs on the filled temp before the rename; a throw keeps the old target */
  check?(tmp: string, filled: T): Promise<void> | void;
  /** the target, when only the filled file can name it (a layer named by its sha256); same folder */
  target?(filled: T): string;
}

/**
 * The streaming variant: `fill` creates the temp file and fills it (writes a stream into
 * it, runs a tool that writes it, links a file there), then the optional check, fsync,
 * rename, fsync the folder. The temp is removed on any failure. Returns what fill returned.
 */
export async function writeDurableFrom<T>(target: string, fill: (tmp: string) => Promise<T>, o: DurableFillOptions<T> = {}): Promise<T> {
  const tmp = tempPathFor(target);
  const discard = () => fs.rm(tmp, { force: true });
  return undoOnInterrupt(discard, async () => {
    try {
      const filled = await fill(tmp);
      await o.check?.(tmp, filled);
      await fsyncPath(tmp);
      const final = o.target ? o.target(filled) : target;
      await fs.rename(tmp, final);
      await fsyncPath(path.dirname(final));
      return filled;
    } catch (e) {
      await discard().catch(() => {});
      throw e;
    }
  });
}

/** Writes `data` to `file` durably: a power cut leaves the old or the new file. */
export async function writeDurable(file: string, data: string | Buffer, o: { mode?: number } = {}): Promise<void> {
  await writeDurableFrom(file, (tmp) => fs.writeFile(tmp, data, { mode: o.mode, flag: 'wx' }));
}

/** Places a copy of `src` at `dst` durably: a hard link when both are on one filesystem, else a copy. */
export async function placeDurable(src: string, dst: string): Promise<void> {
  await writeDurableFrom(dst, async (tmp) => {
    try {
      await fs.link(src, tmp);
    } catch {
      await fs.copyFile(src, tmp);
    }
  });
}
