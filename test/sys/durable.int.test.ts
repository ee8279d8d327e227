/**
 * Durable writes (src/sys/durable.ts) on the real file system: the target holds the old
 * or the new content, never a mix; the temp file is gone after a success, a failure, a
 * failed check and an interrupt; isTempName knows the temp names (and the legacy .part).
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isTempName, placeDurable, tempPathFor, writeDurable, writeDurableFrom } from '../../src/sys/durable.js';
import { interrupted } from '../../src/sys/interrupt.js';
import { tmpdir } from '../build/sources/tarfixture.js';

let base: string;
let n = 0;
/** a fresh folder per test */
const folder = async (): Promise<string> => {
  const d = path.join(base, `t${n++}`);
  await fs.mkdir(d);
  return d;
};

beforeAll(async () => {
  base = await tmpdir('sb-durable-');
});
afterAll(async () => {
  await fs.rm(base, { recursive: true, force: true });
});

describe('writeDurable', () => {
  it('creates, then replaces a file; only the target is left', async () => {
    const d = await folder();
    const f = path.join(d, 'state');
    await writeDurable(f, 'one\n');
    expect(await fs.readFile(f, 'utf8')).toBe('one\n');
    await writeDurable(f, Buffer.from('two\n'), { mode: 0o600 });
    expect(await fs.readFile(f, 'utf8')).toBe('two\n');
    expect((await fs.stat(f)).mode & 0o777).toBe(0o600);
    expect(await fs.readdir(d)).toEqual(['state']);
  });

  it('fails in a missing folder and leaves nothing', async () => {
    const d = await folder();
    await expect(writeDurable(path.join(d, 'no-such', 'state'), 'x')).rejects.toMatchObject({ code: 'ENOENT' });
    expect(await fs.readdir(d)).toEqual([]);
  });
});

describe('writeDurableFrom (streaming)', () => {
  it('a fill that fails half-way keeps the old file and removes the temp', async () => {
    const d = await folder();
    const f = path.join(d, 'layer.sqfs');
    await writeDurable(f, 'old');
    let seen = '';
    await expect(
      writeDurableFrom(f, async (tmp) => {
        seen = tmp;
        await fs.writeFile(tmp, 'half of the new');
        throw new Error('source broke');
      }),
    ).rejects.toThrow('source broke');
    expect(path.dirname(seen)).toBe(d);
    expect(isTempName(path.basename(seen))).toBe(true);
    expect(await fs.readFile(f, 'utf8')).toBe('old');
    expect(await fs.readdir(d)).toEqual(['layer.sqfs']);
  });

  it('a failing check keeps the old file and removes the temp', async () => {
    const d = await folder();
    const f = path.join(d, 'manifest');
    await writeDurable(f, 'old');
    const checked: string[] = [];
    await expect(
      writeDurableFrom(
        f,
        async (tmp) => {
          await fs.writeFile(tmp, 'tampered');
          return 8;
        },
        {
          check: async (tmp, bytes) => {
            checked.push(`${await fs.readFile(tmp, 'utf8')} ${bytes}`);
            throw new Error('sha256 mismatch');
          },
        },
      ),
    ).rejects.toThrow('sha256 mismatch');
    expect(checked).toEqual(['tampered 8']);
    expect(await fs.readFile(f, 'utf8')).toBe('old');
    expect(await fs.readdir(d)).toEqual(['manifest']);
  });

  it('a passing check renames the filled file over the target, and returns what fill returned', async () => {
    const d = await folder();
    const f = path.join(d, 'manifest');
    await writeDurable(f, 'old');
    const r = await writeDurableFrom(f, async (tmp) => (await fs.writeFile(tmp, 'new'), 'filled'), { check: () => {} });
    expect(r).toBe('filled');
    expect(await fs.readFile(f, 'utf8')).toBe('new');
    expect(await fs.readdir(d)).toEqual(['manifest']);
  });

  it('the filled file can name its target (a layer by its digest)', async () => {
    const d = await folder();
    const r = await writeDurableFrom(path.join(d, 'base.sqfs'), async (tmp) => (await fs.writeFile(tmp, 'bytes'), { digest: 'abc' }), { target: (x) => path.join(d, `${x.digest}.sqfs`) });
    expect(r.digest).toBe('abc');
    expect(await fs.readdir(d)).toEqual(['abc.sqfs']);
    expect(await fs.readFile(path.join(d, 'abc.sqfs'), 'utf8')).toBe('bytes');
  });

  it('an interrupt (Ctrl-C) while the temp is being filled removes it; the target keeps its old content', async () => {
    const d = await folder();
    const f = path.join(d, 'bundle.sb');
    await writeDurable(f, 'old');
    let filling!: () => void;
    const started = new Promise<void>((r) => (filling = r));
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const w = writeDurableFrom(f, async (tmp) => {
      await fs.writeFile(tmp, 'partial');
      filling();
      await gate;
      throw new Error('stopped');
    });
    await started;
    expect((await fs.readdir(d)).filter(isTempName)).toHaveLength(1);
    await interrupted();
    expect(await fs.readdir(d)).toEqual(['bundle.sb']);
    release();
    await expect(w).rejects.toThrow('stopped');
    expect(await fs.readFile(f, 'utf8')).toBe('old');
  });
});

describe('placeDurable', () => {
  it('places a file by hard link on one filesystem; the source stays', async () => {
    const d = await folder();
    const src = path.join(d, 'built.sqfs');
    await fs.writeFile(src, 'layer');
    const dst = path.join(d, 'out.sqfs');
    await placeDurable(src, dst);
    const [a, b] = await Promise.all([fs.stat(src), fs.stat(dst)]);
    expect(b.ino).toBe(a.ino);
    expect(a.nlink).toBe(2);
    expect((await fs.readdir(d)).sort()).toEqual(['built.sqfs', 'out.sqfs']);
  });

  it('fails for a missing source and leaves nothing', async () => {
    const d = await folder();
    await expect(placeDurable(path.join(d, 'gone'), path.join(d, 'out'))).rejects.toMatchObject({ code: 'ENOENT' });
    expect(await fs.readdir(d)).toEqual([]);
  });
});

describe('isTempName', () => {
  it('knows the temp names of every writer and the .part files of older installs, and nothing else', () => {
    for (const target of ['/s/layers/' + 'a'.repeat(64) + '.sqfs', '/s/state', '/s/slots/a/manifest.sig', '/c/keys/' + 'b'.repeat(64), '/o/x.stackbundle']) {
      const t = tempPathFor(target);
      expect(path.dirname(t)).toBe(path.dirname(target));
      expect(isTempName(path.basename(t)), t).toBe(true);
      expect(tempPathFor(target)).not.toBe(t);
    }
    expect(isTempName(`${'f'.repeat(64)}.sqfs.part`)).toBe(true);
    for (const name of [`${'a'.repeat(64)}.sqfs`, 'state', 'events', 'store-id', 'manifest', 'manifest.sig', 'state.new', 'lost+found', '.stackboot.lock']) expect(isTempName(name), name).toBe(false);
  });
});
