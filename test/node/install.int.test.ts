/**
 * install against stores on real ext4 loop devices: full and delta installs, refusals
 * (tampered manifest, layer, signature; incompatible; missing base), a full disk, and
 * HTTP with a server that drops the connection midway (resumed with Range).
 */
import { describe, it, expect, beforeAll, afterAll, afterEach } from 'vitest';
import { createReadStream, promises as fs } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { bundleStreamFromBuild, writeBundleFile } from '../../src/format/bundle.js';
import { download } from '../../src/node/download.js';
import { install, type InstallEvent } from '../../src/node/install.js';
import type { NodeContext } from '../../src/node/context.js';
import { parseState } from '../../src/format/state.js';
import { StackbootError } from '../../src/sys/errors.js';
import { fakeBuild, keys, layerBytes, sha256Of, type FakeBuild } from '../support/update-fixtures.js';
import { loopStore, snapshot, type LoopStore } from '../support/store-loop.js';

let tmp: string;
let k: Awaited<ReturnType<typeof keys>>;
let v1: FakeBuild, v2: FakeBuild, other: FakeBuild, big: FakeBuild;
let full1: string, full2: string, delta2: string, otherB: string, bigB: string;
const stores: LoopStore[] = [];

beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(tmpdir(), 'sb-install-'));
  k = await keys(tmp);
  const base = layerBytes(3 << 20, 'base');
  v1 = await fakeBuild(path.join(tmp, 'v1'), { version: '1', key: k.key, layers: [{ name: 'base', data: base }, { name: 'app', data: layerBytes(200_000, 'a1') }] });
  v2 = await fakeBuild(path.join(tmp, 'v2'), { version: '2', key: k.key, layers: [{ name: 'base', data: base }, { name: 'app', data: layerBytes(250_000, 'a2') }] });
  other = await fakeBuild(path.join(tmp, 'other'), { version: '1', compatible: 'someone-else', key: k.key, layers: [{ name: 'x', data: layerBytes(1000, 'o') }] });
  big = await fakeBuild(path.join(tmp, 'big'), { version: '5', key: k.key, layers: [{ name: 'base', data: base }, { name: 'huge', data: layerBytes(12 << 20, 'huge') }] });
  full1 = path.join(tmp, 'v1.sb');
  full2 = path.join(tmp, 'v2.sb');
  delta2 = path.join(tmp, 'v2-delta.sb');
  otherB = path.join(tmp, 'other.sb');
  bigB = path.join(tmp, 'big.sb');
  await writeBundleFile({ buildDir: v1.dir, file: full1 });
  await writeBundleFile({ buildDir: v2.dir, file: full2 });
  await writeBundleFile({ buildDir: v2.dir, file: delta2, baseDigests: new Set(v1.manifest.layers.map((l) => l.digest)) });
  await writeBundleFile({ buildDir: other.dir, file: otherB });
  await writeBundleFile({ buildDir: big.dir, file: bigB });
});
afterEach(async () => {
  while (stores.length) await stores.pop()!.cleanup();
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

async function newStore(name: string, mib = 64): Promise<LoopStore> {
  const s = await loopStore(tmp, name, mib);
  stores.push(s);
  return s;
}

function ctx(s: LoopStore, booted: 'a' | 'b' | null = null): NodeContext {
  return { store: s.store, bootedSlot: booted, booted: null, bootedFile: null, remount: false, lockDir: path.join(s.dir, '.stackboot.lock') };
}

function fromFile(file: string) {
  return { stream: createReadStream(file), label: path.basename(file) };
}

const opts = () => ({ keysDir: k.keysDir, tries: 3 });

/** A store with v1 installed and marked good in slot a (booted). */
async function storeWithV1(name: string, mib = 64): Promise<LoopStore> {
  const s = await newStore(name, mib);
  await install({ ctx: ctx(s), ...fromFile(full1), ...opts() });
  const st = await s.store.readState();
  st.slots.a = { status: 'good', stack: v1.id };
  st.current = 'a';
  await s.store.writeState(st);
  return s;
}

async function layersIntact(s: LoopStore): Promise<void> {
  for (const d of await s.store.layerDigests()) expect(await sha256Of(s.store.layerPath(d))).toBe(d);
  expect((await fs.readdir(path.join(s.dir, 'layers'))).filter((n) => !n.endsWith('.sqfs'))).toEqual([]);
}

describe('install (ext4 store on a loop device)', () => {
  it('a full install into an empty store: layers verified, manifest, pending last, event', async () => {
    const s = await newStore('full');
    const events: InstallEvent[] = [];
    const r = await install({ ctx: ctx(s), ...fromFile(full1), ...opts(), onEvent: (e) => events.push(e) });
    expect(r.installed).toBe(true);
    expect(r.plan!.slot).toBe('a');
    const st = await s.store.readState();
    expect(st.slots.a).toEqual({ status: 'pending', stack: v1.id, tries: 3 });
    expect((await s.store.slotManifest('a'))!.id).toBe(v1.id);
    expect(await fs.readFile(path.join(s.store.slotDir('a'), 'manifest.sig'), 'utf8')).toBe(await fs.readFile(path.join(v1.dir, 'manifest.sig'), 'utf8'));
    await layersIntact(s);
    expect((await s.store.layerDigests()).sort()).toEqual(v1.manifest.layers.map((l) => l.digest).sort());
    expect((await s.store.events()).at(-1)).toMatch(new RegExp(`install slot=a stack=${v1.id.slice(0, 12)} tries=3 reason=node 1 from v1.sb`));
    expect(events.map((e) => (e.event === 'step' ? e.step : e.event))).toEqual(['plan', 'layer', 'layer', 'clear slot a', 'manifest into slot a', 'slot a pending', 'done']);
    // installing the same stack again does nothing
    const again = await install({ ctx: ctx(s), ...fromFile(full1), ...opts() });
    expect(again.already).toEqual({ slot: 'a', status: 'pending' });
  });

  it('a delta install writes only the new layer into the inactive slot; the booted good slot is untouched', async () => {
    const s = await storeWithV1('delta');
    const before = await fs.readFile(path.join(s.store.slotDir('a'), 'manifest'), 'utf8');
    const r = await install({ ctx: ctx(s, 'a'), ...fromFile(delta2), ...opts() });
    expect(r.plan!.slot).toBe('b');
    expect(r.plan!.write.map((l) => l.name)).toEqual(['app']);
    expect(r.plan!.have.map((l) => l.name)).toEqual(['base']);
    const st = await s.store.readState();
    expect(st.current).toBe('a');
    expect(st.slots.a).toEqual({ status: 'good', stack: v1.id });
    expect(st.slots.b).toEqual({ status: 'pending', stack: v2.id, tries: 3 });
    expect(await fs.readFile(path.join(s.store.slotDir('a'), 'manifest'), 'utf8')).toBe(before);
    await layersIntact(s);
  });

  it('a delta whose base the store lacks fails before any change, listing the layers', async () => {
    const s = await newStore('nobase');
    const snap = await snapshot(s.dir);
    const e = await install({ ctx: ctx(s), ...fromFile(delta2), ...opts() }).catch((x) => x);
    expect(e.code).toBe('MISSING_LAYERS');
    expect(e.message).toMatch(new RegExp(`base \\(sha256:${v1.manifest.layers[0].digest.slice(0, 12)}`));
    expect(e.details.missing.map((m: { name: string }) => m.name)).toEqual(['base']);
    expect(await snapshot(s.dir)).toBe(snap);
  });

  it('refuses a tampered manifest, a bad signature, a missing signature, and an unknown key: nothing changes', async () => {
    const s = await storeWithV1('tamper');
    const snap = await snapshot(s.dir);
    // tampered manifest: a different version, same signature
    const t1 = path.join(tmp, 'tampered-manifest');
    await fs.cp(v2.dir, t1, { recursive: true });
    await fs.writeFile(path.join(t1, 'manifest'), v2.text.replace('version 2', 'version 3'));
    const e1 = await install({ ctx: ctx(s, 'a'), stream: bundleStreamFromBuild(t1), label: 't1', ...opts() }).catch((x) => x);
    expect(e1.code).toBe('SIGNATURE');
    // a signature by another key
    const other = await keys(path.join(tmp, 'otherkey'));
    const t2 = path.join(tmp, 't2.sb');
    await writeBundleFile({ buildDir: v2.dir, file: t2, key: other.key });
    const e2 = await install({ ctx: ctx(s, 'a'), ...fromFile(t2), ...opts() }).catch((x) => x);
    expect(e2.code).toBe('SIGNATURE');
    expect(e2.message).toMatch(/does not match any key/);
    // a garbled signature
    const t3 = path.join(tmp, 'garbled');
    await fs.cp(v2.dir, t3, { recursive: true });
    await fs.writeFile(path.join(t3, 'manifest.sig'), 'AAAA' + (await fs.readFile(path.join(v2.dir, 'manifest.sig'), 'utf8')).slice(4));
    const e3 = await install({ ctx: ctx(s, 'a'), stream: bundleStreamFromBuild(t3), label: 't3', ...opts() }).catch((x) => x);
    expect(e3.code).toBe('SIGNATURE');
    expect(await snapshot(s.dir)).toBe(snap);
  });

  it('refuses a tampered layer (sha256 mismatch): no corrupt layer lands in the store, the good slot stays', async () => {
    const s = await storeWithV1('tamperlayer');
    const t = path.join(tmp, 'tampered-layer.sb');
    await fs.copyFile(full2, t);
    // flip a byte inside the app layer's data (the last entry, before the 1024-byte trailer)
    const fh = await fs.open(t, 'r+');
    const size = (await fh.stat()).size;
    const b = Buffer.alloc(1);
    const pos = size - 1024 - 512 - 1000;
    await fh.read(b, 0, 1, pos);
    b[0] ^= 0xff;
    await fh.write(b, 0, 1, pos);
    await fh.close();
    const e = await install({ ctx: ctx(s, 'a'), ...fromFile(t), ...opts() }).catch((x) => x);
    expect(e.code).toBe('VERIFY');
    expect(e.message).toMatch(/layer app does not match the signed manifest/);
    const st = await s.store.readState();
    expect(st.slots.a).toEqual({ status: 'good', stack: v1.id });
    expect(st.current).toBe('a');
    expect(st.slots.b).toBeUndefined();
    await layersIntact(s);
    expect(await s.store.layerDigests()).not.toContain(v2.manifest.layers[1].digest);
  });

  it('a bundle found tampered or truncated while its layers stream in leaves the target slot as it was (here the previous good stack)', async () => {
    const s = await storeWithV1('keepprev', 96);
    // slot b holds v2, marked good earlier; a (v1) is current and booted: b is the target
    await install({ ctx: ctx(s, 'a'), ...fromFile(delta2), ...opts() });
    const st0 = await s.store.readState();
    st0.slots.b = { status: 'good', stack: v2.id };
    await s.store.writeState(st0);
    const manifestB = await fs.readFile(path.join(s.store.slotDir('b'), 'manifest'), 'utf8');
    // the big stack, its huge layer flipped in the middle, then the same bundle cut short
    const tampered = path.join(tmp, 'big-tampered.sb');
    await fs.copyFile(bigB, tampered);
    const fh = await fs.open(tampered, 'r+');
    const pos = Math.floor((await fh.stat()).size / 2);
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, pos);
    b[0] ^= 0xff;
    await fh.write(b, 0, 1, pos);
    await fh.close();
    const cut = path.join(tmp, 'big-cut.sb');
    await fs.writeFile(cut, (await fs.readFile(bigB)).subarray(0, 6 << 20));
    for (const [file, code, msg] of [[tampered, 'VERIFY', /layer huge does not match the signed manifest/], [cut, undefined, /./]] as const) {
      const e = await install({ ctx: ctx(s, 'a'), ...fromFile(file), ...opts() }).catch((x) => x);
      expect(e).toBeInstanceOf(Error);
      if (code) expect(e.code).toBe(code);
      expect(e.message).toMatch(msg);
      expect(e.message).not.toMatch(/was cleared/);
      const st = await s.store.readState();
      expect(st.slots.b).toEqual({ status: 'good', stack: v2.id });
      expect(st.slots.a).toEqual({ status: 'good', stack: v1.id });
      expect(await fs.readFile(path.join(s.store.slotDir('b'), 'manifest'), 'utf8')).toBe(manifestB);
      expect((await s.store.slotManifest('b'))!.id).toBe(v2.id);
      await layersIntact(s);
    }
  });

  it('refuses an incompatible stack', async () => {
    const s = await storeWithV1('incompat');
    const snap = await snapshot(s.dir);
    const e = await install({ ctx: ctx(s, 'a'), ...fromFile(otherB), ...opts() }).catch((x) => x);
    expect(e.code).toBe('INCOMPATIBLE');
    expect(e.message).toMatch(/is for "someone-else", this node takes "test-node"/);
    // the configured compatible wins over the booted stack's
    const e2 = await install({ ctx: ctx(s, 'a'), ...fromFile(full2), ...opts(), compatible: 'fleet-x' }).catch((x) => x);
    expect(e2.code).toBe('INCOMPATIBLE');
    expect(await snapshot(s.dir)).toBe(snap);
  });

  it('never writes the booted slot or the current good slot', async () => {
    const s = await storeWithV1('busy');
    await install({ ctx: ctx(s, 'a'), ...fromFile(delta2), ...opts() });
    // booted b (pending, on trial) while a is current good: it is judged first
    const snap = await snapshot(s.dir);
    const e = await install({ ctx: ctx(s, 'b'), ...fromFile(otherB), ...opts(), compatible: 'someone-else' }).catch((x) => x);
    expect(e.code).toBe('STATE');
    expect(e.message).toMatch(/the booted stack \(slot b\) is still pending/);
    expect(await snapshot(s.dir)).toBe(snap);
    // booted b good while a is the current good (b was marked good, then rolled back): no
    // slot is free
    const st = await s.store.readState();
    st.slots.b = { status: 'good', stack: st.slots.b!.stack };
    await s.store.writeState(st);
    const snap2 = await snapshot(s.dir);
    const e2 = await install({ ctx: ctx(s, 'b'), ...fromFile(otherB), ...opts(), compatible: 'someone-else' }).catch((x) => x);
    expect(e2.code).toBe('STATE');
    expect(e2.message).toMatch(/no slot can take an install/);
    expect(await snapshot(s.dir)).toBe(snap2);
  });

  it('a full disk (a small filesystem) gives a clear error and both slots stay intact', async () => {
    const s = await storeWithV1('small', 8);
    await install({ ctx: ctx(s, 'a'), ...fromFile(delta2), ...opts() });
    const snap = await snapshot(s.dir);
    const e = await install({ ctx: ctx(s, 'a'), ...fromFile(bigB), ...opts() }).catch((x) => x);
    expect(e.code).toBe('NO_SPACE');
    expect(e.message).toMatch(/not enough space on the store .* needs \d+ bytes \(1 layers, 12582912 bytes/);
    expect(await snapshot(s.dir)).toBe(snap);
    // the real ENOSPC path too (the free-space check lied): the error is clear, the good slot stays
    const e2 = await install({ ctx: ctx(s, 'a'), ...fromFile(bigB), ...opts(), freeBytes: async () => 1 << 30 }).catch((x) => x);
    expect(e2.code).toBe('NO_SPACE');
    expect(e2.message).toMatch(/is full \(writing layer huge\)/);
    const st = await s.store.readState();
    expect(st.slots.a).toEqual({ status: 'good', stack: v1.id });
    expect(st.current).toBe('a');
    await layersIntact(s);
  });

  it('installs from a build output folder and dry-runs without writing', async () => {
    const s = await storeWithV1('builddir');
    const snap = await snapshot(s.dir);
    const d = await install({ ctx: ctx(s, 'a'), stream: bundleStreamFromBuild(v2.dir), label: v2.dir, ...opts(), dryRun: true });
    expect(d.dryRun).toBe(true);
    expect(d.plan!.write.map((l) => l.name)).toEqual(['app']);
    expect(await snapshot(s.dir)).toBe(snap);
    const r = await install({ ctx: ctx(s, 'a'), stream: bundleStreamFromBuild(v2.dir), label: v2.dir, ...opts() });
    expect(r.installed).toBe(true);
    expect((await s.store.readState()).slots.b?.stack).toBe(v2.id);
  });

  it('installs an unsigned build output only where unsigned stacks are allowed (ALLOW_UNSIGNED)', async () => {
    const u = await fakeBuild(path.join(tmp, 'unsigned-build'), { version: '3', layers: [{ name: 'base', data: layerBytes(300_000, 'base') }, { name: 'app', data: layerBytes(5000, 'u') }] });
    const s = await storeWithV1('unsigned');
    const snap = await snapshot(s.dir);
    await expect(install({ ctx: ctx(s, 'a'), stream: bundleStreamFromBuild(u.dir), label: u.dir, ...opts() })).rejects.toThrow(/manifest\.sig is missing: sign the build \(stackboot sign\), or set ALLOW_UNSIGNED=1/);
    expect(await snapshot(s.dir)).toBe(snap);
    const r = await install({ ctx: ctx(s, 'a'), stream: bundleStreamFromBuild(u.dir, { allowUnsigned: true }), label: u.dir, ...opts(), allowUnsigned: true });
    expect(r.installed).toBe(true);
    expect((await s.store.readState()).slots.b).toEqual({ status: 'pending', stack: u.id, tries: 3 });
  });

  it('installs over HTTP from 127.0.0.1 and resumes with Range after the server drops the connection midway', async () => {
    const data = await fs.readFile(full2);
    const requests: string[] = [];
    let dropped = 0;
    const server = http.createServer((req, res) => {
      if (req.url !== '/v2.stackbundle') {
        res.writeHead(404).end('no');
        return;
      }
      const range = /bytes=(\d+)-/.exec(req.headers.range ?? '');
      requests.push(req.headers.range ?? 'full');
      const start = range ? Number(range[1]) : 0;
      const headers: http.OutgoingHttpHeaders = { 'content-type': 'application/octet-stream', etag: '"v2"', 'accept-ranges': 'bytes' };
      if (range) {
        res.writeHead(206, { ...headers, 'content-length': data.length - start, 'content-range': `bytes ${start}-${data.length - 1}/${data.length}` });
      } else res.writeHead(200, { ...headers, 'content-length': data.length });
      // the first two responses die after about a third of the file
      if (dropped < 2) {
        dropped++;
        const cut = start + Math.floor(data.length / 3);
        res.write(data.subarray(start, cut), () => setTimeout(() => res.socket?.destroy(), 50));
        return;
      }
      res.end(data.subarray(start));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    try {
      const port = (server.address() as AddressInfo).port;
      const s = await storeWithV1('http');
      const retries: number[] = [];
      const url = `http://127.0.0.1:${port}/v2.stackbundle`;
      const r = await install({ ctx: ctx(s, 'a'), stream: download(url, { backoffMs: 50, onRetry: (x) => retries.push(x.received) }), label: url, ...opts() });
      expect(r.installed).toBe(true);
      expect(requests[0]).toBe('full');
      expect(requests.length).toBe(3);
      expect(requests[1]).toMatch(/^bytes=\d+-$/);
      expect(retries.length).toBe(2);
      expect(retries[0]).toBeGreaterThan(0);
      const st = await s.store.readState();
      expect(st.slots.b).toEqual({ status: 'pending', stack: v2.id, tries: 3 });
      await layersIntact(s);
      // an HTTP error is a clear NETWORK error
      const e = await install({ ctx: ctx(s, 'a'), stream: download(`http://127.0.0.1:${port}/missing`, { retries: 0 }), label: 'x', ...opts() }).catch((x) => x);
      expect(e.code).toBe('NETWORK');
      expect(e.message).toMatch(/HTTP 404/);
    } finally {
      server.close();
    }
  });
});

describe('state after install', () => {
  it('refuses a downgrade (an older signed bundle replayed onto the node) with its own code naming both versions; --allow-downgrade installs it with an event; a replay of the pending one is a no-op', async () => {
    // v2 good in slot a
    const s = await newStore('downgrade');
    await install({ ctx: ctx(s), ...fromFile(full2), ...opts() });
    const st = await s.store.readState();
    st.slots.a = { status: 'good', stack: v2.id };
    st.current = 'a';
    await s.store.writeState(st);
    const before = await snapshot(s.dir);
    const e = await install({ ctx: ctx(s, 'a'), ...fromFile(full1), ...opts() }).catch((x: unknown) => x as StackbootError);
    expect(e).toBeInstanceOf(StackbootError);
    expect((e as StackbootError).code).toBe('DOWNGRADE');
    expect((e as StackbootError).exitCode).toBe(20);
    expect((e as StackbootError).message).toMatch(/stack node 1 is older than node 2, good in slot a: a downgrade is refused \(give --allow-downgrade/);
    expect(await snapshot(s.dir)).toEqual(before);
    // allowed: installed pending, and an event says so before the install event
    const r = await install({ ctx: ctx(s, 'a'), ...fromFile(full1), ...opts(), allowDowngrade: true });
    expect(r.installed).toBe(true);
    expect(r.plan!.downgradeFrom).toEqual({ slot: 'a', version: '2' });
    expect((await s.store.readState()).slots.b).toEqual({ status: 'pending', stack: v1.id, tries: 3 });
    const ev = await s.store.events();
    expect(ev.at(-2)).toMatch(/downgrade slot=b .* reason=node 1 below 2 \(good in slot a\), allowed by --allow-downgrade/);
    expect(ev.at(-1)).toMatch(/ install slot=b /);
    // the same bundle again: already pending, nothing done, no new event
    const again = await install({ ctx: ctx(s, 'a'), ...fromFile(full1), ...opts() });
    expect(again.installed).toBe(false);
    expect(again.already).toEqual({ slot: 'b', status: 'pending' });
    expect(await s.store.events()).toEqual(ev);
  });

  it('orders versions as Debian does: 12.9 is older than 12.10 (refused), 12.10~rc1 too, 12.10+fix1 is newer (installed)', async () => {
    const base = layerBytes(100_000, 'dv');
    const mk = async (version: string) => {
      const b = await fakeBuild(path.join(tmp, `dv-${version}`), { version, key: k.key, layers: [{ name: 'base', data: base }, { name: 'app', data: layerBytes(1000, version) }] });
      const f = path.join(tmp, `dv-${version}.sb`);
      await writeBundleFile({ buildDir: b.dir, file: f });
      return { b, f };
    };
    const [good, older, rc, newer] = await Promise.all(['12.10', '12.9', '12.10~rc1', '12.10+fix1'].map(mk));
    const s = await newStore('debian-order');
    await install({ ctx: ctx(s), ...fromFile(good!.f), ...opts() });
    const st = await s.store.readState();
    st.slots.a = { status: 'good', stack: good!.b.id };
    st.current = 'a';
    await s.store.writeState(st);
    for (const x of [older!, rc!]) await expect(install({ ctx: ctx(s, 'a'), ...fromFile(x.f), ...opts() })).rejects.toMatchObject({ code: 'DOWNGRADE' });
    expect((await install({ ctx: ctx(s, 'a'), ...fromFile(newer!.f), ...opts() })).installed).toBe(true);
  });

  it('the pending line is parseable by the boot protocol', () => {
    expect(parseState('stackboot-state 1\ncurrent a\na good ' + 'a'.repeat(64) + '\nb pending ' + 'b'.repeat(64) + ' 3\n').slots.b?.tries).toBe(3);
  });
});
