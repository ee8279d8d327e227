// Fixtures for the boot hook's tests: a temporary folder per test file, a fake kernel
// modules dir (compressed modules, deps, built-ins, aliases) and a fake shell core that
// records what the rendered templates call, for building all three flavors fast.
import { beforeAll, afterAll } from 'vitest';
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { fileURLToPath } from 'node:url';
import { run } from '../../src/sys/exec.js';
import { archFromNode } from '../../src/sys/arch.js';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/** A temporary folder made before the file's tests and removed after them: call the result inside a test. */
export function testTmp(prefix: string): () => string {
  let tmp = '';
  beforeAll(async () => {
    tmp = await mkdtemp(path.join(tmpdir(), prefix));
  });
  afterAll(async () => {
    await rm(tmp, { recursive: true, force: true });
  });
  return () => tmp;
}

export const ARCH = archFromNode(process.arch) ?? 'amd64';
const MACHINE = ARCH === 'arm64' ? 183 : 62;
export const KVER = '6.1.0-99-test';

export function fakeKo(name: string): Buffer {
  const b = Buffer.alloc(64);
  b.writeUInt32BE(0x7f454c46, 0);
  b[4] = 2;
  b[5] = 1;
  b.writeUInt16LE(1, 16); // ET_REL
  b.writeUInt16LE(MACHINE, 18);
  return Buffer.concat([b, Buffer.from(`module ${name}\n`)]);
}

const FAKE_DEP: Array<[string, string[]]> = [
  ['kernel/fs/overlayfs/overlay.ko', []],
  ['kernel/fs/squashfs/squashfs.ko.xz', []],
  ['kernel/drivers/block/loop.ko.zst', []],
  ['kernel/fs/ext4/ext4.ko.gz', ['kernel/lib/crc16.ko', 'kernel/fs/mbcache.ko', 'kernel/fs/jbd2/jbd2.ko']],
  ['kernel/lib/crc16.ko', []],
  ['kernel/fs/mbcache.ko', []],
  ['kernel/fs/jbd2/jbd2.ko', []],
  ['kernel/crypto/crc32c_generic.ko', []],
  ['kernel/fs/fat/vfat.ko', ['kernel/fs/fat/fat.ko']],
  ['kernel/fs/fat/fat.ko', []],
  ['kernel/drivers/block/virtio_blk.ko', []],
  ['kernel/drivers/virtio/virtio_pci.ko', []],
  ['kernel/drivers/nvme/host/nvme.ko', ['kernel/drivers/nvme/host/nvme-core.ko']],
  ['kernel/drivers/nvme/host/nvme-core.ko', []],
  ['kernel/drivers/mmc/host/sdhci.ko', []],
  ['kernel/drivers/mmc/host/sdhci-pci.ko', ['kernel/drivers/mmc/host/sdhci.ko']],
  ['kernel/fs/btrfs/btrfs.ko', []],
];

export async function makeFakeKernel(root: string): Promise<string> {
  const dir = path.join(root, 'lib', 'modules', KVER);
  for (const [p] of FAKE_DEP) {
    const file = path.join(dir, p);
    await mkdir(path.dirname(file), { recursive: true });
    const raw = fakeKo(p);
    if (p.endsWith('.gz')) await writeFile(file, zlib.gzipSync(raw));
    else if (p.endsWith('.xz') || p.endsWith('.zst')) {
      const tool = p.endsWith('.xz') ? 'xz' : 'zstd';
      const r = await run(tool, ['-c', '-q'], { input: raw, binary: true });
      await writeFile(file, r.stdoutBuffer!);
    } else await writeFile(file, raw);
  }
  await writeFile(path.join(dir, 'modules.dep'), FAKE_DEP.map(([p, d]) => `${p}:${d.length ? ' ' + d.join(' ') : ''}`).join('\n') + '\n');
  await writeFile(path.join(dir, 'modules.builtin'), 'kernel/drivers/mmc/core/mmc_block.ko\n');
  await writeFile(path.join(dir, 'modules.alias'), 'alias crypto-crc32c crc32c_generic\nalias fs-btrfs btrfs\nalias fs-overlay overlay\n');
  await writeFile(path.join(dir, 'modules.softdep'), 'softdep ext4 pre: crypto-crc32c\n');
  await writeFile(path.join(dir, 'modules.order'), FAKE_DEP.map(([p]) => p).join('\n') + '\n');
  return dir;
}

/** A core with the entry points the templates call, recording what they were given. */
export async function makeFakeCore(dir: string, bootOk: boolean): Promise<string> {
  await mkdir(dir, { recursive: true });
  await writeFile(
    path.join(dir, 'stackboot.sh'),
    `: "\${SB_TRACE:=/dev/null}"
sb_log() { echo "log: $*" >>"$SB_TRACE"; }
sb_config_load() { echo "config_load $1" >>"$SB_TRACE"; SB_INIT=/sbin/init; }
sb_load_modules() { echo "load_modules $*" >>"$SB_TRACE"; }
sb_boot() { echo "boot $1" >>"$SB_TRACE"; ${bootOk ? 'return 0' : 'return 1'}; }
sb_break_requested() { return 1; }
sb_all_failed() { echo "all_failed" >>"$SB_TRACE"; return 1; }
sb_handback_hook() { echo "handback_hook $*" >>"$SB_TRACE"; }
`,
  );
  await writeFile(path.join(dir, 'util.sh'), 'sb_util() { :; }\n');
  return dir;
}

export async function hostBusybox(): Promise<string> {
  const r = await run('sh', ['-c', 'command -v busybox']);
  return r.stdout.trim();
}
