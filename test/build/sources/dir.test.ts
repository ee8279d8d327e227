/**
 * Directory sources: the walk that gives the cache key and the gensquashfs pack file.
 * Trees are made here in a temp folder (no root needed).
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { scanDir, type ScanOptions } from '../../../src/build/sources/dir.js';
import { makeSocketFile, tmpdir } from './tarfixture.js';

let base: string;
beforeAll(async () => {
  base = await tmpdir('sb-dir-');
});
afterAll(async () => {
  await fs.rm(base, { recursive: true, force: true });
});

let n = 0;

/** Scans with a pack file; returns the scan and the pack file's text (null: none left). */
async function scanPack(root: string, o: Omit<ScanOptions, 'packTo'>): Promise<{ scan: Awaited<ReturnType<typeof scanDir>>; text: string | null }> {
  const packTo = path.join(base, `p${n++}.pack`);
  const scan = await scanDir(root, { ...o, packTo });
  const text = await fs.readFile(packTo, 'utf8').catch(() => null);
  if (scan.pack) expect(scan.pack).toEqual({ path: packTo, bytes: Buffer.byteLength(text ?? '') });
  else expect(text, 'no pack file is left behind').toBeNull();
  return { scan, text };
}

async function tree(): Promise<string> {
  const root = path.join(base, `t${n++}`);
  await fs.mkdir(path.join(root, 'etc', 'app'), { recursive: true });
  await fs.mkdir(path.join(root, 'usr', 'bin'), { recursive: true });
  await fs.writeFile(path.join(root, 'etc', 'app', 'conf'), 'a=1\n');
  await fs.writeFile(path.join(root, 'usr', 'bin', 'tool'), '#!/bin/sh\n', { mode: 0o755 });
  await fs.link(path.join(root, 'usr', 'bin', 'tool'), path.join(root, 'usr', 'bin', 'tool-alias'));
  await fs.symlink('../usr/bin/tool', path.join(root, 'etc', 'tool'));
  return root;
}

describe('scanDir', () => {
  it('counts files, bytes and hard links, and lists entries sorted, parents first', async () => {
    const root = await tree();
    const { scan: s, text } = await scanPack(root, { devices: false });
    expect(s.files).toBe(3);
    expect(s.hardlinks).toBe(1);
    expect(s.bytes).toBe(4 + 10 + 10);
    expect(s.entries).toBe(8);
    // pack lines in walk order (sorted, parents first), the hard link last
    const lines = text!.trimEnd().split('\n');
    const rels = lines.slice(0, -1).map((l) => /^\w+ "\/([^"]*)"/.exec(l)![1]);
    expect(rels).toEqual(['etc', 'etc/app', 'etc/app/conf', 'etc/tool', 'usr', 'usr/bin', 'usr/bin/tool']);
    expect(lines.at(-1)).toBe('link "/usr/bin/tool-alias" 0777 0 0 /usr/bin/tool');
    expect(lines).toContain('slink "/etc/tool" 0777 0 0 ../usr/bin/tool'.replace(' 0 0 ', ` ${process.getuid!()} ${process.getgid!()} `));
    expect(lines.find((l) => l.startsWith('file "/usr/bin/tool" '))).toMatch(/^file "\/usr\/bin\/tool" 0755 /);
  });

  it('writes no pack file unless asked to', async () => {
    const s = await scanDir(await tree(), { devices: false });
    expect(s.pack).toBeNull();
  });

  it('refuses a pack file it cannot write, with the path', async () => {
    await expect(scanDir(await tree(), { devices: false, packTo: path.join(base, 'no-such-dir', 'x.pack') })).rejects.toThrow(/cannot write .*no-such-dir\/x\.pack/);
  });

  it('gives the same key for the same tree, and a new key for any change a layer would show', async () => {
    const root = await tree();
    const k0 = (await scanDir(root, { devices: false })).key;
    expect((await scanDir(root, { devices: false })).key).toBe(k0);
    const changes: [string, () => Promise<void>][] = [
      ['content (same size)', () => fs.writeFile(path.join(root, 'etc', 'app', 'conf'), 'a=2\n')],
      ['mode', () => fs.chmod(path.join(root, 'etc', 'app', 'conf'), 0o600)],
      ['new file', () => fs.writeFile(path.join(root, 'etc', 'new'), '')],
      ['symlink target', async () => {
        await fs.rm(path.join(root, 'etc', 'tool'));
        await fs.symlink('/usr/bin/tool', path.join(root, 'etc', 'tool'));
      }],
      ['removed file', () => fs.rm(path.join(root, 'usr', 'bin', 'tool-alias'))],
    ];
    const seen = new Set([k0]);
    for (const [what, change] of changes) {
      await change();
      const k = (await scanDir(root, { devices: false })).key;
      expect(seen.has(k), what).toBe(false);
      seen.add(k);
    }
  });

  it('says clearly when the source is missing or not a directory', async () => {
    await expect(scanDir(path.join(base, 'nope'), { devices: false })).rejects.toThrow(/source directory .*nope does not exist/);
    const file = path.join(base, 'plain-file');
    await fs.writeFile(file, '');
    await expect(scanDir(file, { devices: false })).rejects.toThrow(/is not a directory/);
  });
});

describe('the pack file', () => {
  it('describes every entry with owners and modes, hard links last, data read from the tree', async () => {
    const root = await tree();
    const { text } = await scanPack(root, { devices: false, owner: 'root' });
    const lines = text!.trimEnd().split('\n');
    expect(lines[0]).toBe('dir "/etc" 0755 0 0');
    expect(lines).toContain(`file "/usr/bin/tool" 0755 0 0 ${path.resolve(root)}/usr/bin/tool`);
    expect(lines).toContain('slink "/etc/tool" 0777 0 0 ../usr/bin/tool');
    expect(lines[lines.length - 1]).toBe('link "/usr/bin/tool-alias" 0777 0 0 /usr/bin/tool');
  });

  it('places the tree under a prefix, making its parents 0755 0:0 (not the source folder\'s mode), and leaves sockets out', async () => {
    const root = await tree();
    await fs.chmod(root, 0o700);
    await makeSocketFile(path.join(root, 'etc/s.sock'));
    const { text } = await scanPack(root, { devices: false, owner: 'root', into: 'opt/app' });
    const lines = text!.split('\n');
    expect(lines.slice(0, 3)).toEqual(['dir "/opt" 0755 0 0', 'dir "/opt/app" 0755 0 0', 'dir "/opt/app/etc" 0755 0 0']);
    expect(lines.some((l) => l.includes('s.sock'))).toBe(false);
    expect(lines).toContain('link "/opt/app/usr/bin/tool-alias" 0777 0 0 /opt/app/usr/bin/tool');
  });

  it('quotes names with quotes and backslashes, and gives up on names a line cannot hold', async () => {
    const root = path.join(base, 'odd');
    await fs.mkdir(root);
    await fs.writeFile(path.join(root, 'say "hi"\\now'), 'x');
    expect((await scanPack(root, { devices: false, owner: 'root' })).text).toContain('file "/say \\"hi\\"\\\\now" 0644 0 0 ');
    await fs.writeFile(path.join(root, 'two\nlines'), 'x');
    const odd = await scanPack(root, { devices: false, owner: 'root' });
    expect(odd.scan.pack).toBeNull();
    expect(odd.scan.entries).toBe(2); // the walk itself goes on: the key does not need the pack
  });
});
