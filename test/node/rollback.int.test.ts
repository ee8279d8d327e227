/** rollback, mark-good and mark-bad on an ext4 store on a loop device, through the CLI too. */
import { describe, it, expect, beforeAll, afterAll, afterEach } from 'vitest';
import { createReadStream, promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { writeBundleFile } from '../../src/format/bundle.js';
import { run } from '../../src/sys/exec.js';
import { install } from '../../src/node/install.js';
import { nodeContext } from '../../src/node/context.js';
import { markBootedBad, markBootedGood, nodeStatus, rollback } from '../../src/node/rollback.js';
import { jetsonSlots } from '../../src/node/firmware.js';
import { fakeBuild, keys, layerBytes, type FakeBuild } from '../support/update-fixtures.js';
import { loopStore, type LoopStore } from '../support/store-loop.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
let tmp: string;
let k: Awaited<ReturnType<typeof keys>>;
let v1: FakeBuild, v2: FakeBuild;
let b1: string, b2: string;
const stores: LoopStore[] = [];

beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(tmpdir(), 'sb-rollback-'));
  k = await keys(tmp);
  const base = layerBytes(100_000, 'base');
  v1 = await fakeBuild(path.join(tmp, 'v1'), { version: '1', key: k.key, layers: [{ name: 'base', data: base }, { name: 'app', data: layerBytes(5000, '1') }] });
  v2 = await fakeBuild(path.join(tmp, 'v2'), { version: '2', key: k.key, layers: [{ name: 'base', data: base }, { name: 'app', data: layerBytes(5000, '2') }] });
  b1 = path.join(tmp, 'v1.sb');
  b2 = path.join(tmp, 'v2.sb');
  await writeBundleFile({ buildDir: v1.dir, file: b1 });
  await writeBundleFile({ buildDir: v2.dir, file: b2 });
});
afterEach(async () => {
  while (stores.length) await stores.pop()!.cleanup();
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

/** v1 good in a (booted), v2 pending in b. */
async function twoStacks(name: string): Promise<LoopStore> {
  const s = await loopStore(tmp, name, 32);
  stores.push(s);
  await install({ ctx: await nodeContext({ store: s.dir }), stream: createReadStream(b1), label: 'v1', keysDir: k.keysDir, tries: 3 });
  await markBootedGood(await nodeContext({ store: s.dir, bootedSlot: 'a' }));
  await install({ ctx: await nodeContext({ store: s.dir, bootedSlot: 'a' }), stream: createReadStream(b2), label: 'v2', keysDir: k.keysDir, tries: 3 });
  return s;
}

describe('rollback, mark-good, mark-bad', () => {
  it('rollback drops a pending stack and keeps the good one current', async () => {
    const s = await twoStacks('rb1');
    const ctx = await nodeContext({ store: s.dir, bootedSlot: 'a' });
    const dry = await rollback(ctx, { dryRun: true });
    expect(dry).toMatchObject({ to: 'a', dropped: 'b', dryRun: true });
    expect((await s.store.readState()).slots.b?.status).toBe('pending');
    const r = await rollback(ctx);
    expect(r).toMatchObject({ to: 'a', dropped: 'b' });
    const st = await s.store.readState();
    expect(st.slots.b).toEqual({ status: 'bad', stack: v2.id });
    expect(st.current).toBe('a');
    expect((await s.store.events()).at(-1)).toMatch(/ rollback slot=a .*pending slot b dropped/);
  });

  it('after mark-good of the new stack, rollback makes the previous good stack current again', async () => {
    const s = await twoStacks('rb2');
    const ctxB = await nodeContext({ store: s.dir, bootedSlot: 'b' });
    const g = await markBootedGood(ctxB);
    expect(g).toMatchObject({ slot: 'b', was: 'pending' });
    let st = await s.store.readState();
    expect(st.current).toBe('b');
    expect(st.slots.a?.status).toBe('good');
    await rollback(ctxB);
    st = await s.store.readState();
    expect(st.current).toBe('a');
    const status = await nodeStatus(ctxB);
    expect(status.next[0]).toEqual({ slot: 'a', why: 'current' });
    // nothing to roll back to once the other slot is gone bad; mark-bad says so
    expect(await markBootedBad(ctxB)).toMatchObject({ slot: 'b', was: 'good', bootable: true });
    expect(await markBootedBad(await nodeContext({ store: s.dir, bootedSlot: 'a' }))).toMatchObject({ slot: 'a', was: 'good', bootable: false });
    await expect(rollback(ctxB)).rejects.toMatchObject({ code: 'STATE' });
  });

  it('the CLI: status, mark-good and rollback on a store folder', async () => {
    const s = await twoStacks('rb3');
    const cli = (args: string[]) => run('npx', ['tsx', path.join(REPO, 'src/cli/main.ts'), ...args, '--store', s.dir], { cwd: REPO, reject: false });
    const st = await cli(['status', '--json', '--booted-slot', 'b']);
    expect(st.exitCode).toBe(0);
    const j = JSON.parse(st.stdout);
    expect(j.slots.map((x: { status: string }) => x.status)).toEqual(['good', 'pending']);
    expect(j.next.map((x: { slot: string }) => x.slot)).toEqual(['b', 'a']);
    const rb = await cli(['rollback', '--booted-slot', 'b']);
    expect(rb.stdout).toMatch(/next boot: slot a \(pending slot b marked bad\)/);
    const again = await cli(['rollback', '--booted-slot', 'b']);
    expect(again.exitCode).toBe(13);
    expect(again.stderr).toMatch(/no previous good stack/);
  });

  it("mark-good on a booted node stops the watchdog the hook armed for the try and clears it from the booted record", async () => {
    const s = await twoStacks('wd1');
    const runDir = path.join(tmp, 'run-wd1');
    await fs.mkdir(path.join(runDir, 'stackboot'), { recursive: true });
    const booted = path.join(runDir, 'stackboot', 'booted');
    // /dev/null stands in for /dev/watchdog: a character device its magic close can be written to
    const record = `store_dev=/dev/loop9\nstore_id=x\nstore_mnt=${s.dir}\nslot=b\nstack=${v2.id}\nstatus=pending\ntries=2\nfallback=\nupper=tmpfs\ndata_dev=\nwatchdog=/dev/null:30\n`;
    await fs.writeFile(booted, record);
    const g = await markBootedGood(await nodeContext({ runDir }));
    expect(g).toMatchObject({ slot: 'b', was: 'pending', watchdog: { dev: '/dev/null', result: 'stopped' } });
    expect((await s.store.readState()).slots.b?.status).toBe('good');
    const after = await fs.readFile(booted, 'utf8');
    expect(after).toMatch(/^watchdog=$/m);
    expect(after).toMatch(/^status=good$/m);
  });

  it("mark-good with a watchdog it cannot stop (a device node without a driver): says why, keeps it in the booted record, the stack is good and the firmware is still told", async () => {
    const s = await twoStacks('wd2');
    const runDir = path.join(tmp, 'run-wd2');
    await fs.mkdir(path.join(runDir, 'stackboot'), { recursive: true });
    // a character device of a major no driver has (the experimental range): open fails ENXIO
    const dev = path.join(runDir, 'watchdog-nodriver');
    await run('mknod', [dev, 'c', '240', '77']);
    const booted = path.join(runDir, 'stackboot', 'booted');
    await fs.writeFile(booted, `store_dev=/dev/loop9\nstore_id=x\nstore_mnt=${s.dir}\nslot=b\nstack=${v2.id}\nstatus=pending\ntries=2\nfallback=\nupper=tmpfs\ndata_dev=\nwatchdog=${dev}:30\n`);
    // nvbootctrl as the Jetson firmware's tool: a script that records its arguments
    const calls = path.join(runDir, 'nvbootctrl.calls');
    const nv = path.join(runDir, 'nvbootctrl');
    await fs.writeFile(nv, `#!/bin/sh\necho "$*" >>${calls}\n`, { mode: 0o755 });
    const g = await markBootedGood(await nodeContext({ runDir }), jetsonSlots({ tools: { nvbootctrl: nv } }));
    expect(g).toMatchObject({ slot: 'b', was: 'pending', firmware: 'jetson', watchdog: { dev, result: 'error', error: expect.stringMatching(/ENXIO/) } });
    expect((await s.store.readState()).slots.b?.status).toBe('good');
    expect(await fs.readFile(calls, 'utf8')).toBe('-t rootfs verify\n');
    // still armed as far as the node knows: doctor and a later mark-good see it
    expect(await fs.readFile(booted, 'utf8')).toContain(`watchdog=${dev}:30\n`);
  });
});
