/**
 * makeDir (src/sys/dirs.ts): mkdir -p on the real file system, including the paths where
 * Node's own recursive mkdir never returns (a parent under /proc that exists but cannot
 * hold children).
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeDir } from '../../src/sys/dirs.js';
import { StackbootError } from '../../src/sys/errors.js';
import { tmpdir } from '../build/sources/tarfixture.js';

let base: string;
beforeAll(async () => {
  base = await tmpdir('sb-dirs-');
});
afterAll(async () => {
  await fs.rm(base, { recursive: true, force: true });
});

describe('makeDir', () => {
  it('makes a folder and its missing parents, and is content when it exists', async () => {
    const d = path.join(base, 'a', 'b', 'c');
    await makeDir(d);
    expect((await fs.stat(d)).isDirectory()).toBe(true);
    await makeDir(d);
    await makeDir(path.relative(process.cwd(), path.join(base, 'a', 'rel')));
    expect((await fs.stat(path.join(base, 'a', 'rel'))).isDirectory()).toBe(true);
  });

  it('fails, and returns, where a parent cannot hold it: /proc, a file, a dangling link', async () => {
    // Node's fs.mkdir(…, { recursive: true }) spins forever on the first of these
    const started = Date.now();
    await expect(makeDir('/proc/stackboot-test/out/layers')).rejects.toThrow(/cannot create folder \/proc\/stackboot-test\/out\/layers/);
    expect(Date.now() - started).toBeLessThan(2000);
    const file = path.join(base, 'file');
    await fs.writeFile(file, 'x');
    await expect(makeDir(path.join(file, 'sub'))).rejects.toBeInstanceOf(StackbootError);
    await fs.symlink(path.join(base, 'nowhere'), path.join(base, 'dangling'));
    await expect(makeDir(path.join(base, 'dangling', 'sub'))).rejects.toMatchObject({ code: 'IO' });
  });

  it('several at once on the same new path all succeed', async () => {
    const d = path.join(base, 'race', 'x', 'y');
    await Promise.all(Array.from({ length: 8 }, () => makeDir(d)));
    expect((await fs.stat(d)).isDirectory()).toBe(true);
  });
});
