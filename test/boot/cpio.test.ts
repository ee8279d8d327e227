// The newc cpio writer: order, parents, duplicates and escapes refused, reproducible
// bytes and mtimes, and an archive that cpio lists and extracts with devices, links, modes.
import { describe, it, expect } from 'vitest';
import { mkdir, writeFile, readFile, stat, readlink, lstat } from 'node:fs/promises';
import path from 'node:path';
import { run } from '../../src/sys/exec.js';
import { writeCpio, prepareEntries } from '../../src/boot/cpio.js';
import { testTmp } from '../support/boot-fixtures.js';

const tmp = testTmp('sb-cpio-test-');

describe('cpio writer', () => {
  const entries = () => [
    { path: '/init', type: 'file' as const, mode: 0o755, data: Buffer.from('#!/bin/sh\necho hi\n') },
    { path: 'bin/busybox', type: 'file' as const, mode: 0o755, data: Buffer.from('not really busybox') },
    { path: 'bin/sh', type: 'symlink' as const, target: 'busybox' },
    { path: 'dev/console', type: 'char' as const, mode: 0o600, major: 5, minor: 1 },
    { path: 'dev/null', type: 'char' as const, mode: 0o666, major: 1, minor: 3 },
    { path: 'lib/modules/6.1.0-x/kernel/fs/overlay.ko', type: 'file' as const, data: Buffer.alloc(1001, 7) },
    { path: 'empty', type: 'file' as const },
    { path: 'tmp', type: 'dir' as const, mode: 0o1777 },
  ];

  it('sorts, adds parents, rejects duplicates and escapes', () => {
    const list = prepareEntries(entries()).map((e) => e.path);
    expect(list).toEqual([
      'bin',
      'bin/busybox',
      'bin/sh',
      'dev',
      'dev/console',
      'dev/null',
      'empty',
      'init',
      'lib',
      'lib/modules',
      'lib/modules/6.1.0-x',
      'lib/modules/6.1.0-x/kernel',
      'lib/modules/6.1.0-x/kernel/fs',
      'lib/modules/6.1.0-x/kernel/fs/overlay.ko',
      'tmp',
    ]);
    expect(() => prepareEntries([{ path: 'a', type: 'file' }, { path: '/a', type: 'file' }])).toThrow(/duplicate/);
    expect(() => prepareEntries([{ path: '../etc/passwd', type: 'file' }])).toThrow(/escapes/);
  });

  it('is reproducible and gives every entry the mtime it is given (0 by default)', () => {
    expect(writeCpio(entries(), { mtime: 0 }).equals(writeCpio([...entries()].reverse(), { mtime: 0 }))).toBe(true);
    expect(writeCpio(entries()).equals(writeCpio(entries(), { mtime: 0 }))).toBe(true);
    // newc: the mtime is the 6th 8-hex-digit field of each header
    expect(writeCpio(entries(), { mtime: 1700000000 }).subarray(6 + 5 * 8, 6 + 6 * 8).toString()).toBe((1700000000).toString(16).padStart(8, '0'));
  });

  it('lists back with cpio -it and extracts with devices, links and modes', async () => {
    const buf = writeCpio(entries(), { mtime: 1700000000 });
    expect(buf.length % 4).toBe(0);
    const file = path.join(tmp(), 'test.cpio');
    await writeFile(file, buf);
    const list = await run('cpio', ['-it', '--quiet'], { inputFile: file });
    expect(list.stdout.trim().split('\n')).toEqual(prepareEntries(entries()).map((e) => e.path));
    const verbose = await run('cpio', ['-itv', '--quiet'], { inputFile: file, env: { TZ: 'UTC' } });
    expect(verbose.stdout).toMatch(/^crw-------\s+1 root\s+root\s+5,\s+1 .* dev\/console$/m);
    expect(verbose.stdout).toMatch(/^lrwxrwxrwx .* bin\/sh -> busybox$/m);
    expect(verbose.stdout).toMatch(/^drwxrwxrwt .* tmp$/m);
    expect(verbose.stdout).toMatch(/Nov 14\s+2023 init$/m);

    const out = path.join(tmp(), 'x');
    await mkdir(out);
    await run('cpio', ['-idm', '--quiet', '--no-absolute-filenames'], { inputFile: file, cwd: out });
    expect(await readFile(path.join(out, 'init'), 'utf8')).toBe('#!/bin/sh\necho hi\n');
    expect((await stat(path.join(out, 'init'))).mode & 0o7777).toBe(0o755);
    expect(await readlink(path.join(out, 'bin/sh'))).toBe('busybox');
    expect((await readFile(path.join(out, 'lib/modules/6.1.0-x/kernel/fs/overlay.ko'))).equals(Buffer.alloc(1001, 7))).toBe(true);
    expect((await stat(path.join(out, 'empty'))).size).toBe(0);
    if (process.getuid?.() === 0) {
      const st = await lstat(path.join(out, 'dev/console'));
      expect(st.isCharacterDevice()).toBe(true);
      expect(st.rdev).toBe((5 << 8) | 1);
    }
  });
});
