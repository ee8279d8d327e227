/** A store on a real ext4 filesystem on a loop device (root), for the update tests. */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { run } from '../../src/sys/exec.js';
import { attachLoop, detachLoop, mountDevice, umount } from '../../src/sys/mount.js';
import { Store } from '../../src/format/store.js';

export interface LoopStore {
  store: Store;
  dir: string;
  dev: string;
  cleanup(): Promise<void>;
}

export async function loopStore(work: string, name: string, mib = 64): Promise<LoopStore> {
  const img = path.join(work, `${name}.img`);
  const mnt = path.join(work, `${name}.mnt`);
  await fs.rm(img, { force: true });
  const fh = await fs.open(img, 'w');
  await fh.truncate(mib << 20);
  await fh.close();
  await run('mkfs.ext4', ['-q', '-F', '-L', 'sb-store', '-m', '0', img]);
  const dev = await attachLoop(img);
  try {
    await mountDevice(dev, mnt);
  } catch (e) {
    await detachLoop(dev);
    throw e;
  }
  const store = await Store.create(mnt);
  return {
    store,
    dir: mnt,
    dev,
    cleanup: async () => {
      await umount(mnt);
      await detachLoop(dev);
      await fs.rm(img, { force: true });
    },
  };
}

/** Everything a test compares to say "nothing changed": state, slot files, layer names. */
export async function snapshot(dir: string): Promise<string> {
  const parts: string[] = [];
  parts.push(await fs.readFile(path.join(dir, 'state'), 'utf8'));
  for (const s of ['a', 'b']) for (const f of ['manifest', 'manifest.sig']) parts.push(`${s}/${f}:` + (await fs.readFile(path.join(dir, 'slots', s, f), 'utf8').catch(() => '-')));
  parts.push((await fs.readdir(path.join(dir, 'layers'))).sort().join(','));
  return parts.join('\n');
}
