/** gc on an ext4 store on a loop device: unreferenced layers and temp files (new and legacy .part) go, the booted stack's stay. */
import { describe, it, expect, beforeAll, afterAll, afterEach } from 'vitest';
import { createReadStream, promises as fs } from 'node:fs';
import { PassThrough } from 'node:stream';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { writeBundleFile } from '../../src/format/bundle.js';
import { gc } from '../../src/node/gc.js';
import { install } from '../../src/node/install.js';
import { nodeContext, type NodeContext } from '../../src/node/context.js';
import { markBootedGood } from '../../src/node/rollback.js';
import { fakeBuild, keys, layerBytes, type FakeBuild } from '../support/update-fixtures.js';
import { loopStore, type LoopStore } from '../support/store-loop.js';
import { isTempName, tempPathFor } from '../../src/sys/durable.js';

let tmp: string;
let k: Awaited<ReturnType<typeof keys>>;
const v: FakeBuild[] = [];
const b: string[] = [];
const stores: LoopStore[] = [];

beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(tmpdir(), 'sb-gc-'));
  k = await keys(tmp);
  const base = layerBytes(100_000, 'base');
  for (const n of [1, 2, 3]) {
    v.push(await fakeBuild(path.join(tmp, `v${n}`), { version: String(n), key: k.key, layers: [{ name: 'base', data: base }, { name: 'app', data: layerBytes(7000, String(n)) }] }));
    b.push(path.join(tmp, `v${n}.sb`));
    await writeBundleFile({ buildDir: v[n - 1].dir, file: b[n - 1] });
  }
});
afterEach(async () => {
  while (stores.length) await stores.pop()!.cleanup();
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

const inst = (ctx: NodeContext, i: number) => install({ ctx, stream: createReadStream(b[i]), label: `v${i + 1}`, keysDir: k.keysDir, tries: 3 });

/** A store on a loop device: v1 installed into slot a, booted and marked good; v2 into slot b (pending). */
async function storeV1GoodV2Pending(name: string): Promise<{ s: LoopStore; bootA: NodeContext }> {
  const s = await loopStore(tmp, name, 32);
  stores.push(s);
  await inst(await nodeContext({ store: s.dir }), 0);
  const bootA = await nodeContext({ store: s.dir, bootedSlot: 'a' });
  await markBootedGood(bootA);
  await inst(bootA, 1);
  return { s, bootA };
}

describe('gc', () => {
  it('removes the layers of a replaced stack and partial files, keeps every slot\'s and the booted stack\'s', async () => {
    const { s, bootA } = await storeV1GoodV2Pending('gc'); // v1 -> a (good, booted), v2 -> b (pending)
    await inst(bootA, 2); // v3 -> b again: v2's app layer is now unreferenced
    // what an interrupted install left: an older version's .part, and this version's temp name
    await fs.writeFile(path.join(s.dir, 'layers', `${'f'.repeat(64)}.sqfs.part`), 'half');
    await fs.writeFile(tempPathFor(s.store.layerPath('e'.repeat(64))), 'half');
    const dry = await gc(bootA, { dryRun: true });
    expect(dry.removed.map((x) => x.digest)).toEqual([v[1].manifest.layers[1].digest]);
    expect(dry.partials.length).toBe(2);
    expect(await s.store.layerDigests()).toContain(v[1].manifest.layers[1].digest);
    const r = await gc(bootA);
    expect(r.freed).toBe(7000);
    const left = (await s.store.layerDigests()).sort();
    expect(left).toEqual([...new Set([...v[0].manifest.layers, ...v[2].manifest.layers].map((l) => l.digest))].sort());
    expect((await fs.readdir(path.join(s.dir, 'layers'))).some(isTempName)).toBe(false);
    // the booted stack's layers are kept even when its slot no longer matches: gc keeps all
    await fs.writeFile(path.join(s.store.slotDir('a'), 'manifest'), v[2].text);
    const odd: NodeContext = { ...bootA, booted: { slot: 'a', stack: v[0].id } as never };
    const r2 = await gc(odd);
    expect(r2.removed).toEqual([]);
    expect((await s.store.layerDigests()).sort()).toEqual(left);
  });

  it('waits for an install that is writing (store lock): its temp file and new layers survive, and gc then removes the right things', async () => {
    // v2 in slot b (pending) is replaced below: its app layer then unreferenced
    const { s, bootA } = await storeV1GoodV2Pending('gc-lock');
    // v3 streams in slowly: half now, the rest after gc was started
    const whole = await fs.readFile(b[2]);
    const pipe = new PassThrough();
    const installing = install({ ctx: bootA, stream: pipe, label: 'v3', keysDir: k.keysDir, tries: 3 });
    pipe.write(whole.subarray(0, whole.length - 3000));
    const layers = path.join(s.dir, 'layers');
    for (let i = 0; i < 100 && !(await fs.readdir(layers)).some(isTempName); i++) await new Promise((r) => setTimeout(r, 20));
    expect((await fs.readdir(layers)).some(isTempName), 'the install is writing a layer').toBe(true);
    expect((await fs.readdir(s.dir)).includes('.stackboot.lock')).toBe(true);
    let gcDone = false;
    const collecting = gc(bootA).then((r) => ((gcDone = true), r));
    await new Promise((r) => setTimeout(r, 500));
    expect(gcDone, 'gc ran while the install held the store').toBe(false);
    pipe.end(whole.subarray(whole.length - 3000));
    expect((await installing).installed).toBe(true);
    const r = await collecting;
    // after the install: v2's app layer is unreferenced, v3's layers are slot b's
    expect(r.removed.map((x) => x.digest)).toEqual([v[1].manifest.layers[1].digest]);
    expect(r.partials).toEqual([]);
    expect((await s.store.layerDigests()).sort()).toEqual([...new Set([...v[0].manifest.layers, ...v[2].manifest.layers].map((l) => l.digest))].sort());
    expect((await s.store.readState()).slots.b).toEqual({ status: 'pending', stack: v[2].id, tries: 3 });
    expect((await fs.readdir(s.dir)).includes('.stackboot.lock'), 'the lock is released').toBe(false);
  });
});
