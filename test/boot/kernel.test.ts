import { describe, it, expect } from 'vitest';
import {
  buildModuleIndex,
  moduleNameFromPath,
  normalizeModuleName,
  parseModulesAlias,
  parseModulesBuiltin,
  parseModulesDep,
  parseModulesSoftdep,
  renderModulesDep,
  resolveModules,
} from '../../src/boot/kernel.js';
import { StackbootError } from '../../src/sys/errors.js';

// A fake kernel, shaped like Debian 6.1's modules.dep (deps listed, deepest last).
const DEP = `kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/fs/jbd2/jbd2.ko:
kernel/fs/mbcache.ko:
kernel/lib/crc16.ko:
kernel/fs/overlayfs/overlay.ko:
kernel/fs/squashfs/squashfs.ko.xz:
kernel/drivers/block/loop.ko.zst:
kernel/crypto/crc32c_generic.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/nvme/host/nvme.ko: kernel/drivers/nvme/host/nvme-core.ko
kernel/drivers/nvme/host/nvme-core.ko:
kernel/fs/fat/vfat.ko: kernel/fs/fat/fat.ko
kernel/fs/fat/fat.ko:
`;
const BUILTIN = `kernel/drivers/mmc/core/mmc_block.ko
kernel/drivers/mmc/core/mmc_core.ko
`;
const ALIAS = `# Aliases extracted from modules themselves.
alias crypto-crc32c crc32c_generic
alias crc32c crc32c_generic
alias fs-overlay overlay
alias pci:v00001AF4d00001001sv*sd*bc*sc*i* virtio_blk
alias block-major-7-* loop
`;
const SOFTDEP = `# Soft dependencies extracted from modules themselves.
softdep ext4 pre: crypto-crc32c
softdep nvme post: nosuch_module
`;

const index = () => buildModuleIndex({ dep: DEP, builtin: BUILTIN, alias: ALIAS, softdep: SOFTDEP });
const names = (r: { modules: { name: string }[] }) => r.modules.map((m) => m.name);

describe('module names', () => {
  it('normalizes paths and dashes', () => {
    expect(moduleNameFromPath('kernel/drivers/nvme/host/nvme-core.ko')).toBe('nvme_core');
    expect(moduleNameFromPath('kernel/fs/squashfs/squashfs.ko.xz')).toBe('squashfs');
    expect(moduleNameFromPath('kernel/drivers/block/loop.ko.zst')).toBe('loop');
    expect(moduleNameFromPath('a/b/x-y.ko.gz')).toBe('x_y');
    expect(normalizeModuleName('virtio-blk')).toBe('virtio_blk');
  });
});

describe('parsers', () => {
  it('parses modules.dep with deps as names', () => {
    const m = parseModulesDep(DEP);
    expect(m.get('ext4')).toEqual({ name: 'ext4', path: 'kernel/fs/ext4/ext4.ko', deps: ['crc16', 'mbcache', 'jbd2'] });
    expect(m.get('nvme')!.deps).toEqual(['nvme_core']);
    expect(m.get('squashfs')!.path).toBe('kernel/fs/squashfs/squashfs.ko.xz');
    expect(m.size).toBe(15);
  });
  it('rejects a malformed modules.dep line', () => {
    expect(() => parseModulesDep('no colon here\n')).toThrow(StackbootError);
  });
  it('parses modules.builtin', () => {
    expect([...parseModulesBuiltin(BUILTIN)].sort()).toEqual(['mmc_block', 'mmc_core']);
  });
  it('keeps only exact aliases', () => {
    const a = parseModulesAlias(ALIAS);
    expect(a.get('crypto_crc32c')).toEqual(['crc32c_generic']);
    expect(a.get('crc32c')).toEqual(['crc32c_generic']);
    expect([...a.keys()].some((k) => k.includes('*'))).toBe(false);
  });
  it('parses softdeps', () => {
    const s = parseModulesSoftdep(SOFTDEP);
    expect(s.get('ext4')).toEqual({ pre: ['crypto_crc32c'], post: [] });
    expect(s.get('nvme')).toEqual({ pre: [], post: ['nosuch_module'] });
  });
});

describe('resolveModules', () => {
  it('puts dependencies first, each module once', () => {
    const r = resolveModules(index(), ['ext4', 'virtio_blk', 'nvme', 'vfat', 'ext4']);
    const order = names(r);
    expect(new Set(order).size).toBe(order.length);
    for (const [dep, mod] of [
      ['jbd2', 'ext4'],
      ['mbcache', 'ext4'],
      ['crc16', 'ext4'],
      ['crc32c_generic', 'ext4'], // softdep pre: through the crypto-crc32c alias
      ['virtio_ring', 'virtio'],
      ['virtio', 'virtio_blk'],
      ['nvme_core', 'nvme'],
      ['fat', 'vfat'],
    ]) {
      expect(order.indexOf(dep!), `${dep} before ${mod}`).toBeGreaterThanOrEqual(0);
      expect(order.indexOf(dep!)).toBeLessThan(order.indexOf(mod!));
    }
    // a soft dependency that does not exist is ignored
    expect(order).not.toContain('nosuch_module');
  });
  it('skips built-in modules and reports them', () => {
    const r = resolveModules(index(), ['mmc_block', 'overlay']);
    expect(r.builtin).toEqual(['mmc_block']);
    expect(names(r)).toEqual(['overlay']);
  });
  it('resolves exact aliases and dashed names', () => {
    expect(names(resolveModules(index(), ['crc32c']))).toEqual(['crc32c_generic']);
    expect(names(resolveModules(index(), ['nvme-core']))).toEqual(['nvme_core']);
  });
  it('names a module that does not exist', () => {
    try {
      resolveModules(index(), ['overlay', 'sdhci_pci']);
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(StackbootError);
      expect((e as StackbootError).code).toBe('CONFIG');
      expect((e as StackbootError).message).toContain('sdhci_pci');
    }
  });
  it('names a dependency missing from modules.dep', () => {
    const idx = buildModuleIndex({ dep: 'kernel/a.ko: kernel/b.ko\n' });
    expect(() => resolveModules(idx, ['a'])).toThrow(/kernel module b .*needed by b <- a/);
  });
  it('skips optional modules that do not exist, but not wanted ones', () => {
    const r = resolveModules(index(), ['overlay'], ['nls_utf8', 'crc32c']);
    expect(r.skipped).toEqual(['nls_utf8']);
    expect(names(r)).toEqual(['overlay', 'crc32c_generic']);
    expect(() => resolveModules(index(), ['nls_utf8'], ['nls_utf8'])).toThrow(/nls_utf8/);
  });
  it('does not loop on a dependency cycle', () => {
    const idx = buildModuleIndex({ dep: 'kernel/a.ko: kernel/b.ko\nkernel/b.ko: kernel/a.ko\n' });
    expect(names(resolveModules(idx, ['a'])).sort()).toEqual(['a', 'b']);
  });
});

describe('renderModulesDep', () => {
  it('writes a pruned modules.dep with renamed paths', () => {
    const idx = index();
    const r = resolveModules(idx, ['virtio_blk', 'squashfs']);
    const text = renderModulesDep(r.modules, (p) => p.replace(/\.ko\.(xz|zst)$/, '.ko'));
    expect(text).toContain('kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n');
    expect(text).toContain('kernel/fs/squashfs/squashfs.ko:\n');
    expect(text).not.toContain('ext4');
    // the output parses back to the same graph
    const back = parseModulesDep(text);
    expect(back.get('virtio_blk')!.deps).toEqual(['virtio_ring', 'virtio']);
  });
});
