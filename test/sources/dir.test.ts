/**
 * Directory sources: the walk that gives the cache key and the gensquashfs pack file.
 * Trees are made here in a temp folder (no root needed).
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { packFile, scanDir } from '../../src/sources/dir.js';
import { tmpdir } from './tarfixture.js';

let base: string;
beforeAll(async () => {
  base = await tmpdir('sb-dir-');
});
afterAll(async () => {
  await fs.rm(base, { recursive: true, force: true });
});

let n = 0;
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
    const s = await scanDir(root, { devices: false });
    expect(s.files).toBe(3);
    expect(s.hardlinks).toBe(1);
    expect(s.bytes).toBe(4 + 10 + 10);
    expect(s.entries).toBe(8);
    // pack lines in walk order (sorted, parents first), the hard link apart
    const lines = Buffer.concat(s.pack!.lines).toString().trimEnd().split('\n');
    const rels = lines.map((l) => /^\w+ "\/([^"]*)"/.exec(l)![1]);
    expect(rels).toEqual(['etc', 'etc/app', 'etc/app/conf', 'etc/tool', 'usr', 'usr/bin', 'usr/bin/tool']);
    expect(Buffer.concat(s.pack!.links).toString()).toBe('link "/usr/bin/tool-alias" 0777 0 0 /usr/bin/tool\n');
    expect(lines).toContain('slink "/etc/tool" 0777 0 0 ../usr/bin/tool'.replace(' 0 0 ', ` ${process.getuid!()} ${process.getgid!()} `));
    expect(lines.find((l) => l.startsWith('file "/usr/bin/tool" '))).toMatch(/^file "\/usr\/bin\/tool" 0755 /);
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

describe('packFile', () => {
  it('describes every entry with owners and modes, hard links last, data read from the tree', async () => {
    const root = await tree();
    const s = await scanDir(root, { devices: false, owner: 'root' });
    const text = Buffer.concat(packFile(s)!).toString();
    const lines = text.trimEnd().split('\n');
    expect(lines[0]).toBe('dir "/etc" 0755 0 0');
    expect(lines).toContain(`file "/usr/bin/tool" 0755 0 0 ${path.resolve(root)}/usr/bin/tool`);
    expect(lines).toContain('slink "/etc/tool" 0777 0 0 ../usr/bin/tool');
    expect(lines[lines.length - 1]).toBe('link "/usr/bin/tool-alias" 0777 0 0 /usr/bin/tool');
  });

  it('places the tree under a prefix, making its parents', async () => {
    const root = await tree();
    const s = await scanDir(root, { devices: false, owner: 'root', into: 'opt/app' });
    const lines = Buffer.concat(packFile(s)!).toString().split('\n');
    expect(lines.slice(0, 3)).toEqual(['dir "/opt" 0755 0 0', expect.stringMatching(/^dir "\/opt\/app" 0\d{3} 0 0$/), 'dir "/opt/app/etc" 0755 0 0']);
    expect(lines).toContain('link "/opt/app/usr/bin/tool-alias" 0777 0 0 /opt/app/usr/bin/tool');
  });

  it('quotes names with quotes and backslashes, and gives up on names a line cannot hold', async () => {
    const root = path.join(base, 'odd');
    await fs.mkdir(root);
    await fs.writeFile(path.join(root, 'say "hi"\\now'), 'x');
    const s = await scanDir(root, { devices: false, owner: 'root' });
    expect(Buffer.concat(packFile(s)!).toString()).toContain('file "/say \\"hi\\"\\\\now" 0644 0 0 ');
    await fs.writeFile(path.join(root, 'two\nlines'), 'x');
    expect(packFile(await scanDir(root, { devices: false, owner: 'root' }))).toBeNull();
  });
});
