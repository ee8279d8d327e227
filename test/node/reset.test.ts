/**
 * factory-reset on a store folder (src/node/reset.ts): the request the hook reads
 * (initramfs/reset.sh, checked here by the hook's own reader under busybox sh), its
 * event, --cancel, --dry-run, and the CLI's words, JSON and status line.
 */
import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Store, parseResetRequest, formatResetRequest } from '../../src/format/index.js';
import { nodeContext } from '../../src/node/context.js';
import { factoryReset } from '../../src/node/reset.js';
import { nodeStatus } from '../../src/node/rollback.js';
import { run } from '../../src/sys/exec.js';
import { LIB } from '../initramfs/harness.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
let dir: string;
beforeEach(async () => {
  dir = await fs.mkdtemp(path.join(tmpdir(), 'sb-reset-'));
  await Store.create(path.join(dir, 'store'));
});
afterEach(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

/** What the hook's reader makes of the store's reset file: "BY" when it is a request, else "none". */
async function hookReads(store: string): Promise<string> {
  const r = await run('busybox', ['sh', '-c', `. "$SB_LIB/stackboot.sh"; SB_RESET=0; if sb_reset_request "$1"; then echo "$SB_RESET_BY"; else echo none; fi`, 'sh', store], { env: { SB_LIB: LIB, SB_KMSG: '' }, reject: false });
  return r.stdout.trim();
}

describe('factory-reset (node)', () => {
  it('writes the request the hook reads, with an event; the dry run writes nothing; cancel removes it', async () => {
    const storeDir = path.join(dir, 'store');
    const ctx = await nodeContext({ store: storeDir });
    const dry = await factoryReset(ctx, { dryRun: true, now: 1796600000, dataLabel: 'field-data' });
    expect(dry).toMatchObject({ action: 'request', dryRun: true, previous: null, request: { requested: 1796600000, by: 'stackboot factory-reset' } });
    expect(dry.wipes).toEqual([`every disk upper of the store (${storeDir}/upper)`, 'everything on the data partition (label field-data) but lost+found']);
    await expect(fs.access(path.join(storeDir, 'reset'))).rejects.toThrow();
    expect(await ctx.store.events()).toEqual([]);

    const r = await factoryReset(ctx, { now: 1796600000 });
    expect(r).toMatchObject({ action: 'request', dryRun: false, previous: null });
    expect(await fs.readFile(path.join(storeDir, 'reset'), 'utf8')).toBe('stackboot-reset 1\nrequested 1796600000 stackboot factory-reset\n');
    expect(await hookReads(storeDir)).toBe('1796600000 stackboot factory-reset');
    expect((await ctx.store.events()).at(-1)).toMatch(/^\d+ reset slot=- stack=- reason=requested by stackboot factory-reset: the next boot wipes the disk uppers and the data partition$/);
    expect((await nodeStatus(ctx)).reset).toEqual({ requested: 1796600000, by: 'stackboot factory-reset' });
    // asked again: the request is replaced, the earlier one reported
    expect(await factoryReset(ctx, { now: 1796600100 })).toMatchObject({ previous: { requested: 1796600000 }, request: { requested: 1796600100 } });

    const c = await factoryReset(ctx, { cancel: true });
    expect(c).toMatchObject({ action: 'cancel', request: null, previous: { requested: 1796600100 }, wipes: [] });
    expect(await hookReads(storeDir)).toBe('none');
    expect((await nodeStatus(ctx)).reset).toBeNull();
    expect((await ctx.store.events()).at(-1)).toMatch(/ reset slot=- stack=- reason=request cancelled$/);
    // nothing to cancel: nothing written
    const n = (await ctx.store.events()).length;
    expect(await factoryReset(ctx, { cancel: true })).toMatchObject({ previous: null });
    expect((await ctx.store.events()).length).toBe(n);
  });

  it('on a booted node the plan says what this boot has: a tmpfs upper, the data partition it mounted', async () => {
    const storeDir = path.join(dir, 'store');
    const runDir = path.join(dir, 'run');
    await fs.mkdir(path.join(runDir, 'stackboot'), { recursive: true });
    const rec = (upper: string, data: string) => `store_dev=/dev/vda2\nstore_id=x\nstore_mnt=${storeDir}\nslot=a\nstack=${'a'.repeat(64)}\nstatus=good\ntries=\nfallback=\nupper=${upper}\ndata_dev=${data}\nwatchdog=\n`;
    await fs.writeFile(path.join(runDir, 'stackboot', 'booted'), rec('tmpfs', '/dev/vda3'));
    expect((await factoryReset(await nodeContext({ runDir }), { dryRun: true })).wipes).toEqual([
      `every disk upper of the store (${storeDir}/upper): this boot has none in use (UPPER=tmpfs)`,
      'everything on the data partition /dev/vda3 (label sb-data) but lost+found',
    ]);
    await fs.writeFile(path.join(runDir, 'stackboot', 'booted'), rec('disk', ''));
    expect((await factoryReset(await nodeContext({ runDir }), { dryRun: true })).wipes).toEqual([
      `every disk upper of the store (${storeDir}/upper)`,
      'everything on the data partition (label sb-data) but lost+found: the hook bound none at this boot (no PERSIST); the next boot wipes the one it finds',
    ]);
  });

  it('the request format: one line for who asked; a file without the magic is no request, for both readers', async () => {
    expect(formatResetRequest({ requested: 5, by: 'a\nb\tc' })).toBe('stackboot-reset 1\nrequested 5 a b c\n');
    expect(parseResetRequest('stackboot-reset 1\nrequested 5 a b c\n')).toEqual({ requested: 5, by: 'a b c' });
    expect(parseResetRequest('please reset\n')).toBeNull();
    await fs.writeFile(path.join(dir, 'store', 'reset'), 'please reset\n');
    expect(await hookReads(path.join(dir, 'store'))).toBe('none');
    expect((await nodeStatus(await nodeContext({ store: path.join(dir, 'store') }))).reset).toBeNull();
  });

  it('the CLI: the plan in words and JSON, the status line, --cancel', async () => {
    const storeDir = path.join(dir, 'store');
    const cli = (args: string[]) => run('npx', ['tsx', path.join(REPO, 'src/cli/main.ts'), ...args, '--store', storeDir, '--config', path.join(dir, 'none')], { cwd: REPO, reject: false });
    const dry = await cli(['factory-reset', '--dry-run']);
    expect(dry.exitCode, dry.stderr).toBe(0);
    expect(dry.stdout).toBe(`dry run: would request a factory reset of ${storeDir}; at the next boot the hook wipes:\n  every disk upper of the store (${storeDir}/upper)\n  everything on the data partition (label sb-data) but lost+found\nnothing written\n`);
    const j = await cli(['factory-reset', '--json']);
    expect(JSON.parse(j.stdout)).toMatchObject({ action: 'request', dryRun: false, store: storeDir });
    const st = await cli(['status']);
    expect(st.stdout + st.stderr).toMatch(/factory reset requested \(stackboot factory-reset, \d{4}-\d\d-\d\dT[\d:.]+Z\): the next boot wipes the disk uppers and the data partition/);
    const c = await cli(['factory-reset', '--cancel']);
    expect(c.stdout).toBe('cancelled the factory reset requested by stackboot factory-reset\n');
  });
});
