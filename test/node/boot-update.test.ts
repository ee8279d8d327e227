/**
 * boot-update --from-stack: the booted stack's own kernel and initrd, read in the running
 * root and checked against its manifest, become the boot partition's default entry.
 */
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { serializeManifest } from '../../src/format/manifest.js';
import { stageStore } from '../../src/format/store.js';
import { renderExtlinux, parseBootConf } from '../../src/media/index.js';
import { nodeContext } from '../../src/node/context.js';
import { nodeBootUpdate } from '../../src/node/boot-update.js';

let tmp: string;
const sha = (b: string) => createHash('sha256').update(b).digest('hex');

beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'sb-bootupd-'));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

async function setup(name: string, kernelText: string) {
  const dir = path.join(tmp, name);
  const build = path.join(dir, 'build');
  await fs.mkdir(path.join(build, 'layers'), { recursive: true });
  const layer = Buffer.from(`layer ${name}`);
  const ld = createHash('sha256').update(layer).digest('hex');
  await fs.writeFile(path.join(build, 'layers', `${ld}.sqfs`), layer);
  const rel = '6.12.48+deb12-amd64';
  await fs.writeFile(
    path.join(build, 'manifest'),
    serializeManifest({
      name: 'node',
      version: '2',
      compatible: 'c',
      created: 0,
      kernel: { release: rel, path: `/boot/vmlinuz-${rel}`, digest: sha('the 6.12 kernel'), size: 15 },
      initrd: { path: `/boot/stackboot/initrd-${rel}.img`, digest: sha('its initrd'), size: 10 },
      layers: [{ digest: ld, size: layer.length, name: 'base' }],
    }),
  );
  const store = path.join(dir, 'store');
  await stageStore(store, { slots: { a: { buildDir: build, status: 'good' } }, current: 'a' });
  // the running root: the stack's files as the overlay shows them
  const root = path.join(dir, 'root');
  await fs.mkdir(path.join(root, 'boot/stackboot'), { recursive: true });
  await fs.writeFile(path.join(root, `boot/vmlinuz-${rel}`), kernelText);
  await fs.writeFile(path.join(root, `boot/stackboot/initrd-${rel}.img`), 'its initrd');
  const boot = path.join(dir, 'boot');
  await fs.mkdir(path.join(boot, 'extlinux'), { recursive: true });
  await fs.writeFile(path.join(boot, 'vmlinuz'), 'the 6.1 kernel');
  await fs.writeFile(path.join(boot, 'initrd.img'), 'the stackboot initrd');
  await fs.writeFile(path.join(boot, 'extlinux/extlinux.conf'), await renderExtlinux({ name: 'node', version: '1', stackId: 'b'.repeat(64), kernel: 'vmlinuz', initrd: 'initrd.img', append: 'panic=10' }));
  return { store, root, boot, ctx: await nodeContext({ store, bootedSlot: 'a' }) };
}

describe('boot-update --from-stack', () => {
  it('puts the booted stack kernel and initrd on the boot partition, checked against its manifest', async () => {
    const s = await setup('ok', 'the 6.12 kernel');
    const r = await nodeBootUpdate(s.ctx, { bootDir: s.boot, fromStack: true, root: s.root });
    expect(r.write.map((w) => w.to)).toEqual([`vmlinuz-${sha('the 6.12 kernel').slice(0, 12)}`, `initrd-${sha('its initrd').slice(0, 12)}.img`]);
    const conf = parseBootConf(await fs.readFile(path.join(s.boot, 'extlinux/extlinux.conf'), 'utf8'));
    expect(conf.entries.map((e) => [e.label, e.kernel, e.append])).toEqual([
      ['stackboot', r.entry.kernel, 'panic=10'],
      ['previous', 'vmlinuz', 'panic=10'],
    ]);
    expect(conf.entries[0]!.menu).toBe('stackboot (node 2, kernel 6.12.48+deb12-amd64)');
    expect(await fs.readFile(path.join(s.boot, r.entry.kernel), 'utf8')).toBe('the 6.12 kernel');
  });

  it('refuses a kernel file that does not match the manifest, and a stack without a kernel; writes nothing', async () => {
    const s = await setup('bad', 'a tampered kernel');
    await expect(nodeBootUpdate(s.ctx, { bootDir: s.boot, fromStack: true, root: s.root })).rejects.toMatchObject({ code: 'VERIFY' });
    expect((await fs.readdir(s.boot)).sort()).toEqual(['extlinux', 'initrd.img', 'vmlinuz']);
    await expect(nodeBootUpdate(s.ctx, { bootDir: s.boot })).rejects.toMatchObject({ code: 'USAGE', message: 'give --kernel and --initrd, or --from-stack' });
    await expect(nodeBootUpdate(null, { bootDir: s.boot, fromStack: true })).rejects.toMatchObject({ code: 'USAGE' });
  });
});
