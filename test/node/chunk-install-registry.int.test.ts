/**
 * Chunk deltas from an OCI registry (issue 15): a real Docker Distribution 2.8 (TLS,
 * htpasswd) behind a counting proxy. Push carries each layer's chunk index as a blob of
 * the stack's artifact; skopeo copies the artifact with them; a node with v1 installs v2
 * by rebuilding the new layer from its store's chunks and fetching only the missing ones
 * with Range requests on the layer's blob (resumed after a dropped connection), the layer
 * byte-identical; `chunks: false` (--no-chunks) fetches it whole; `pull` writes the
 * indexes into the build output folder. Frame deltas (real squashfs layers): the frames
 * index and the delta file travel as two more blobs, skopeo copies them, a node rebuilds
 * the changed blocks with Range requests on the delta blob.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { createReadStream, promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { run } from '../../src/sys/exec.js';
import { stageStore, type Store } from '../../src/format/store.js';
import { chunkIndexName } from '../../src/format/chunks.js';
import { unpackBundle, writeBundleFile } from '../../src/format/bundle.js';
import { install, type InstallEvent } from '../../src/node/install.js';
import { registryChunkSource } from '../../src/node/chunk-source.js';
import type { NodeContext } from '../../src/node/context.js';
import { RegistryClient, installError, openRegistrySource, parseReference, pullStack, pushStack, type ClientOptions } from '../../src/registry/index.js';
import { REGISTRY_USER as USER, startBasicAuthRegistry, type CountingProxy, type Pki, type RunningRegistry } from '../registry/harness.js';
import { chunkedBuild, squashfsPair } from '../support/chunk-fixtures.js';
import { parseManifest } from '../../src/format/manifest.js';
import { keys, layerBytes, sha256Of } from '../support/update-fixtures.js';

let tmp: string;
let pki: Pki;
let reg: RunningRegistry;
let proxy: CountingProxy;
let k: Awaited<ReturnType<typeof keys>>;
let v1: string, v2: string;
let v2Digest: string;

// v1's layer, and v2's: v1's with a changed region in the middle and a new tail
const v1Data = layerBytes(3 << 20, 'reg-chunks-v1');
const v2Data = Buffer.concat([v1Data.subarray(0, 1_000_000), layerBytes(100_000, 'reg-patch'), v1Data.subarray(1_050_000), layerBytes(30_000, 'reg-tail')]);

const direct = (o: ClientOptions = {}) => new RegistryClient(reg.host, { credentials: USER, caFile: pki.caCert, ...o });
const viaProxy = () => new RegistryClient(proxy.host, { credentials: USER, backoffMs: 50 } as ClientOptions);
const ctxOf = (store: Store): NodeContext => ({ store, bootedSlot: 'a', booted: null, bootedFile: null, remount: false, lockDir: path.join(store.dir, '.stackboot.lock') });

/** install <ref> as `stackboot install oci://…` does: the registry source, and its chunk source for the layers it leaves out */
async function installRef(store: Store, ref: string, o: { dryRun?: boolean; chunks?: boolean } = {}) {
  const client = viaProxy();
  const src = await openRegistrySource({ client, ref: parseReference(ref), store, keysDir: k.keysDir, headOnly: o.dryRun, chunks: o.chunks ?? true, backoffMs: 50 });
  const events: InstallEvent[] = [];
  const r = await install({
    ctx: ctxOf(store),
    stream: src.stream,
    label: src.label,
    keysDir: k.keysDir,
    tries: 3,
    dryRun: o.dryRun,
    onEvent: (e) => events.push(e),
    ...(src.chunked.length ? { chunkSource: registryChunkSource(client, src.remote, { backoffMs: 50 }) } : {}),
  }).catch((e) => {
    throw installError(src, e);
  });
  return { src, r, chunks: events.filter((e): e is Extract<InstallEvent, { event: 'chunks' }> => e.event === 'chunks') };
}

beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(tmpdir(), 'sb-chunk-registry-'));
  ({ pki, reg, proxy } = await startBasicAuthRegistry(tmp));
  k = await keys(path.join(tmp, 'k'));
  v1 = (await chunkedBuild(path.join(tmp, 'v1'), { version: '1', key: k.key, layers: [{ name: 'base', data: v1Data }] })).dir;
  const b2 = await chunkedBuild(path.join(tmp, 'v2'), { version: '2', key: k.key, layers: [{ name: 'base', data: v2Data }] });
  v2 = b2.dir;
  v2Digest = b2.manifest.layers[0].digest;
  const c = direct();
  await pushStack({ client: c, ref: parseReference(`oci://${reg.host}/fleet/chunky:1`), buildDir: v1 });
  const p2 = await pushStack({ client: c, ref: parseReference(`oci://${reg.host}/fleet/chunky:2`), buildDir: v2 });
  expect(p2.blobs.map((b) => `${b.what}:${b.how}`)).toEqual(['config:present', 'manifest:uploaded', 'manifest.sig:uploaded', 'layer base:uploaded', 'chunk index of base:uploaded']);
}, 120_000);
afterAll(async () => {
  await proxy?.stop();
  await reg?.stop();
  await fs.rm(tmp, { recursive: true, force: true });
});

async function v1Store(name: string): Promise<Store> {
  return stageStore(path.join(tmp, name, 'store'), { slots: { a: { buildDir: v1, status: 'good' } } });
}

describe('chunk deltas from a registry', () => {
  it('skopeo sees the chunk index as a blob of the artifact and copies it with the stack', async () => {
    const creds = `--creds=${USER.username}:${USER.password}`;
    const raw = JSON.parse((await run('skopeo', ['inspect', '--raw', '--cert-dir', pki.certDir, creds, `docker://${reg.host}/fleet/chunky:2`])).stdout) as { layers: { mediaType: string; annotations?: Record<string, string> }[] };
    expect(raw.layers.map((l) => l.mediaType)).toEqual(['application/vnd.stackboot.manifest.v1', 'application/vnd.stackboot.signature.v1', 'application/vnd.stackboot.layer.v1.squashfs', 'application/vnd.stackboot.chunks.v1']);
    expect(raw.layers[3].annotations?.['org.opencontainers.image.title']).toBe(chunkIndexName(v2Digest));
    await run('skopeo', ['copy', '--src-cert-dir', pki.certDir, '--dest-cert-dir', pki.certDir, `--src-creds=${USER.username}:${USER.password}`, `--dest-creds=${USER.username}:${USER.password}`, `docker://${reg.host}/fleet/chunky:2`, `docker://${reg.host}/copied/chunky:2`]);
    await run('skopeo', ['copy', '--src-cert-dir', pki.certDir, '--dest-cert-dir', pki.certDir, `--src-creds=${USER.username}:${USER.password}`, `--dest-creds=${USER.username}:${USER.password}`, `docker://${reg.host}/fleet/chunky:1`, `docker://${reg.host}/copied/chunky:1`]);
    // the node rebuilds the layer from the copy too
    const store = await v1Store('copied');
    const { r, chunks } = await installRef(store, `oci://${proxy.host}/copied/chunky:2`);
    expect(r.installed).toBe(true);
    expect(chunks.at(-1)!.fallback).toBeUndefined();
    expect(await sha256Of(store.layerPath(v2Digest))).toBe(v2Digest);
  });

  it('a node with v1 rebuilds v2\'s layer from its store, fetching only the missing chunks with Range requests on the blob; --dry-run says so first', async () => {
    const store = await v1Store('delta');
    proxy.reset();
    let mark = proxy.records.length;
    const dry = await installRef(store, `oci://${proxy.host}/fleet/chunky:2`, { dryRun: true });
    expect(dry.r.installed).toBe(false);
    expect(dry.src.chunked.map((l) => l.name)).toEqual(['base']);
    expect(dry.src.fetch).toEqual([]);
    expect(dry.chunks).toHaveLength(1);
    expect(dry.chunks[0].had).toBeGreaterThan(2_900_000);
    expect(dry.chunks[0].fetch).toBeLessThan(250_000);
    const layerGets = () => proxy.records.slice(mark).filter((x) => x.method === 'GET' && x.path.includes(`/blobs/sha256:${v2Digest}`));
    expect(layerGets()).toEqual([]);

    proxy.reset();
    mark = proxy.records.length;
    const { r, chunks } = await installRef(store, `oci://${proxy.host}/fleet/chunky:2`);
    expect(r.installed).toBe(true);
    const done = chunks.find((e) => e.fetched !== undefined)!;
    expect(done.fallback).toBeUndefined();
    expect(done.fetched).toBe(dry.chunks[0].fetch);
    expect(await sha256Of(store.layerPath(v2Digest))).toBe(v2Digest);
    expect(Buffer.compare(await fs.readFile(store.layerPath(v2Digest)), v2Data)).toBe(0);
    // what crossed the wire: the missing chunks, the index, the manifests: not the 3 MB layer
    expect(proxy.bytes()).toBeLessThan(300_000);
    expect(layerGets().length).toBeGreaterThan(0);
    expect(layerGets().every((x) => x.status === 206)).toBe(true);
  });

  it('resumes a range of the blob after a dropped connection', async () => {
    const store = await v1Store('drop');
    proxy.dropOnce(`/blobs/sha256:${v2Digest}`, 20_000);
    const { r, chunks } = await installRef(store, `oci://${proxy.host}/fleet/chunky:2`);
    expect(r.installed).toBe(true);
    expect(chunks.at(-1)!.fallback).toBeUndefined();
    expect(chunks.at(-1)!.fetched).toBeLessThan(250_000);
    expect(await sha256Of(store.layerPath(v2Digest))).toBe(v2Digest);
  });

  it('with chunks off (--no-chunks) the layer comes whole', async () => {
    const store = await v1Store('whole');
    proxy.reset();
    const { src, r, chunks } = await installRef(store, `oci://${proxy.host}/fleet/chunky:2`, { chunks: false });
    expect(r.installed).toBe(true);
    expect(src.fetch.map((l) => l.name)).toEqual(['base']);
    expect(chunks).toEqual([]);
    expect(proxy.bytes()).toBeGreaterThan(v2Data.length);
  });

  it('pull writes the chunk indexes into the build output folder (a mirror serves chunk deltas too)', async () => {
    const out = path.join(tmp, 'pulled');
    await pullStack(direct(), parseReference(`oci://${reg.host}/fleet/chunky:2`), out);
    const name = chunkIndexName(v2Digest);
    expect(Buffer.compare(await fs.readFile(path.join(out, 'layers', name)), await fs.readFile(path.join(v2, 'layers', name)))).toBe(0);
  });

  it('a bundle of the build (which carries no indexes) pushes with its indexes cut again from the layers: the same artifact', async () => {
    const file = path.join(tmp, 'v2.sb');
    await writeBundleFile({ buildDir: v2, file, key: k.key });
    const dir = path.join(tmp, 'unpacked');
    const u = await unpackBundle(createReadStream(file), dir, file);
    expect(u.absent).toEqual([]);
    expect(await fs.readdir(path.join(dir, 'layers'))).toEqual([`${v2Digest}.sqfs`]);
    const p = await pushStack({ client: direct(), ref: parseReference(`oci://${reg.host}/bundled/chunky:2`), buildDir: dir });
    const fromBuild = await pushStack({ client: direct(), ref: parseReference(`oci://${reg.host}/fleet/chunky:2`), buildDir: v2 });
    expect(p.digest).toBe(fromBuild.digest);
    expect(p.blobs.find((b) => b.what === 'chunk index of base')?.how).toBe('uploaded');
  });

  it('push refuses a folder whose chunk index is not the one its manifest names, or is gone and cannot be cut again, before any blob', async () => {
    const name = chunkIndexName(v2Digest);
    // an index file with other bytes
    const bad = path.join(tmp, 'bad-index');
    await fs.cp(v2, bad, { recursive: true });
    await fs.writeFile(path.join(bad, 'layers', name), Buffer.from('SBCHUNKS not this one'));
    await expect(pushStack({ client: direct(), ref: parseReference(`oci://${reg.host}/refused/chunky:2`), buildDir: bad })).rejects.toThrow(/is not the chunk index the manifest names for layer base/);
    // no index file, and the manifest names one that cutting the layer does not give
    const gone = path.join(tmp, 'gone-index');
    await fs.cp(v2, gone, { recursive: true });
    await fs.rm(path.join(gone, 'layers', name));
    const text = await fs.readFile(path.join(gone, 'manifest'), 'utf8');
    await fs.writeFile(path.join(gone, 'manifest'), text.replace(/^(chunks [0-9a-f]{64} sha256:)[0-9a-f]{64}/m, `$1${'0'.repeat(64)}`));
    await expect(pushStack({ client: direct(), ref: parseReference(`oci://${reg.host}/refused/chunky:2`), buildDir: gone })).rejects.toMatchObject({ code: 'SOURCE', message: expect.stringMatching(/cutting the layer again with the default sizes gives another one: push the build output folder/) });
    // nothing of either reached the registry
    await expect(pullStack(direct(), parseReference(`oci://${reg.host}/refused/chunky:2`), path.join(tmp, 'refused-pull'))).rejects.toThrow(/404|unknown|not found/i);
  });
});

describe('frame deltas from a registry', () => {
  let f1: string, f2: string, fDigest: string;
  const creds = () => [`--src-creds=${USER.username}:${USER.password}`, `--dest-creds=${USER.username}:${USER.password}`];

  beforeAll(async () => {
    ({ v1: f1, v2: f2 } = await squashfsPair(path.join(tmp, 'pair')));
    fDigest = parseManifest(await fs.readFile(path.join(f2, 'manifest'), 'utf8')).layers[0].digest;
    await pushStack({ client: direct(), ref: parseReference(`oci://${reg.host}/fleet/frames:1`), buildDir: f1, key: k.key });
    const p = await pushStack({ client: direct(), ref: parseReference(`oci://${reg.host}/fleet/frames:2`), buildDir: f2, key: k.key });
    expect(p.blobs.map((b) => b.what)).toEqual(['config', 'manifest', 'manifest.sig', 'layer base', 'chunk index of base', 'frames index of base', 'delta file of base']);
  }, 120_000);

  const frameStore = (name: string) => stageStore(path.join(tmp, name, 'store'), { slots: { a: { buildDir: f1, status: 'good' } } });

  it('the artifact carries the frames index and the delta file; skopeo copies them; a node rebuilds the changed blocks from its store and Range requests on the delta blob', async () => {
    const raw = JSON.parse((await run('skopeo', ['inspect', '--raw', '--cert-dir', pki.certDir, `--creds=${USER.username}:${USER.password}`, `docker://${reg.host}/fleet/frames:2`])).stdout) as { layers: { mediaType: string }[] };
    expect(raw.layers.map((l) => l.mediaType).slice(-2)).toEqual(['application/vnd.stackboot.frames.v1', 'application/vnd.stackboot.delta.v1']);
    await run('skopeo', ['copy', '--src-cert-dir', pki.certDir, '--dest-cert-dir', pki.certDir, ...creds(), `docker://${reg.host}/fleet/frames:2`, `docker://${reg.host}/copied/frames:2`]);
    for (const repo of ['fleet', 'copied']) {
      const store = await frameStore(`frames-${repo}`);
      proxy.reset();
      const { r, chunks } = await installRef(store, `oci://${proxy.host}/${repo}/frames:2`);
      expect(r.installed).toBe(true);
      expect(chunks[0].rebuilt).toBeGreaterThan(0);
      expect(chunks[0].framesOff).toBeUndefined();
      const done = chunks.find((e) => e.fetched !== undefined)!;
      expect(done.framesOff).toBeUndefined();
      expect(done.fallback).toBeUndefined();
      expect(done.fetched).toBe(chunks[0].fetch);
      expect(await sha256Of(store.layerPath(fDigest))).toBe(fDigest);
      // the delta blob's ranges and the small blobs: a small share of the 1.4 MB layer
      expect(proxy.bytes()).toBeLessThan(200_000);
    }
  });

  it('pull writes the frames index and the delta file into the folder; a stack pushed from a bundle has none, and the node says so', async () => {
    const out = path.join(tmp, 'frames-pulled');
    await pullStack(direct(), parseReference(`oci://${reg.host}/fleet/frames:2`), out);
    for (const ext of ['frames', 'delta']) expect(Buffer.compare(await fs.readFile(path.join(out, 'layers', `${fDigest}.${ext}`)), await fs.readFile(path.join(f2, 'layers', `${fDigest}.${ext}`)))).toBe(0);
    const file = path.join(tmp, 'frames-v2.sb');
    await writeBundleFile({ buildDir: f2, file, key: k.key });
    const dir = path.join(tmp, 'frames-unpacked');
    await unpackBundle(createReadStream(file), dir, file);
    await pushStack({ client: direct(), ref: parseReference(`oci://${reg.host}/bundled/frames:2`), buildDir: dir });
    const store = await frameStore('frames-bundled');
    const { r, chunks } = await installRef(store, `oci://${proxy.host}/bundled/frames:2`);
    expect(r.installed).toBe(true);
    expect(chunks[0].framesOff).toMatch(/carries no frame deltas/);
    expect(await sha256Of(store.layerPath(fDigest))).toBe(fDigest);
  });
});
