/**
 * Stacks through a real Docker Distribution 2.8 (Debian's docker-registry) with TLS and
 * htpasswd auth: push (HEAD first, cross-repository mount), skopeo reading and copying
 * what was pushed, installs that fetch only the layers the store lacks (bytes counted by
 * a proxy), a dropped connection resumed with Range, redirects and 429, and refusals
 * (wrong password, wrong key, tampered blob, edited manifest, moved tag) that leave the
 * store as it was.
 */
import { describe, it, expect, beforeAll, afterAll, afterEach } from 'vitest';
import { promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { run } from '../../src/sys/exec.js';
import { install } from '../../src/node/install.js';
import type { NodeContext } from '../../src/node/context.js';
import { parseState } from '../../src/format/state.js';
import { bundleStreamFromBuild } from '../../src/format/bundle.js';
import { RegistryClient, installError, readBody, openRegistrySource, parseReference, pushStack, pullStack, type PushResult, type ClientOptions } from '../../src/registry/index.js';
import { loopStore, snapshot, type LoopStore } from '../support/store-loop.js';
import { REGISTRY_USER as USER, startBasicAuthRegistry, startProxy, sha256hex, type CountingProxy, type Pki, type RunningRegistry } from './harness.js';
import { buildSigned, keys, type BuiltStack } from './stacks.js';

let tmp: string;
let pki: Pki;
let reg: RunningRegistry;
let proxy: CountingProxy;
let k: Awaited<ReturnType<typeof keys>>;
let otherKeys: Awaited<ReturnType<typeof keys>>;
let v1: BuiltStack, v2: BuiltStack;
let p1: PushResult, p2: PushResult;
const stores: LoopStore[] = [];
const notes: string[] = [];

const direct = (o: ClientOptions = {}) => new RegistryClient(reg.host, { credentials: USER, caFile: pki.caCert, onNote: (n) => notes.push(n), ...o });
const viaProxy = (o: ClientOptions = {}) => new RegistryClient(proxy.host, { credentials: USER, onNote: (n) => notes.push(n), backoffMs: 50, ...o } as ClientOptions);
const blobPath = (digest: string) => path.join(reg.storage, 'docker/registry/v2/blobs/sha256', digest.slice(0, 2), digest, 'data');
const layer = (s: BuiltStack, name: string) => s.manifest.layers.find((l) => l.name === name)!;

async function newStore(name: string): Promise<LoopStore> {
  const s = await loopStore(tmp, name, 64);
  stores.push(s);
  return s;
}
function ctx(s: LoopStore): NodeContext {
  return { store: s.store, bootedSlot: null, booted: null, bootedFile: null, remount: false, lockDir: path.join(s.dir, '.stackboot.lock') };
}

/** install <ref> on a store through the registry source and the existing install */
async function installRef(s: LoopStore, ref: string, o: { client?: RegistryClient; keysDir?: string; dryRun?: boolean } = {}) {
  const client = o.client ?? viaProxy();
  const src = await openRegistrySource({ client, ref: parseReference(ref), store: s.store, keysDir: o.keysDir ?? k.keysDir, headOnly: o.dryRun, backoffMs: 50 });
  const r = await install({ ctx: ctx(s), stream: src.stream, label: src.label, keysDir: o.keysDir ?? k.keysDir, tries: 3, dryRun: o.dryRun }).catch((e) => {
    throw installError(src, e);
  });
  return { src, r };
}

beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(tmpdir(), 'sb-registry-'));
  ({ pki, reg, proxy } = await startBasicAuthRegistry(tmp));
  k = await keys(path.join(tmp, 'k'));
  otherKeys = await keys(path.join(tmp, 'other'), 'someone');
  v1 = await buildSigned(tmp, '1', k.key);
  v2 = await buildSigned(tmp, '2', k.key);
});
afterEach(async () => {
  while (stores.length) await stores.pop()!.cleanup();
});
afterAll(async () => {
  await proxy?.stop();
  await reg?.stop();
  await fs.rm(tmp, { recursive: true, force: true });
});

describe('push to Docker Distribution 2.8', () => {
  it('uploads each blob once (chunked beyond the chunk size), skips what the registry has, mounts across repositories', async () => {
    expect(layer(v1, 'base').digest).toBe(layer(v2, 'base').digest);
    expect(layer(v1, 'base').size).toBeGreaterThan(6 << 20);
    const c = direct();
    p1 = await pushStack({ client: c, ref: parseReference(`oci://${reg.host}/fleet/node:1`), buildDir: v1.dir, chunkSize: 1 << 20 });
    expect(p1.blobs.map((b) => `${b.what}:${b.how}`)).toEqual(['config:uploaded', 'manifest:uploaded', 'manifest.sig:uploaded', 'layer base:uploaded', 'layer app:uploaded']);
    expect(p1.reference).toBe(`oci://${reg.host}/fleet/node:1@${p1.digest}`);
    // the registry stored the layer under the layer's own sha256 (its blob digest)
    expect(sha256hex(await fs.readFile(blobPath(layer(v1, 'base').digest)))).toBe(layer(v1, 'base').digest);
    p2 = await pushStack({ client: c, ref: parseReference(`oci://${reg.host}/fleet/node:2`), buildDir: v2.dir });
    expect(Object.fromEntries(p2.blobs.map((b) => [b.what, b.how]))).toEqual({ config: 'present', manifest: 'uploaded', 'manifest.sig': 'uploaded', 'layer base': 'present', 'layer app': 'uploaded' });
    expect(p2.uploaded).toBeLessThan(layer(v2, 'app').size + 10_000);
    // another repository of the same registry: mounted, not sent again
    const m = await pushStack({ client: c, ref: parseReference(`oci://${reg.host}/mirror/node:2`), buildDir: v2.dir, mountFrom: 'fleet/node' });
    expect(m.digest).toBe(p2.digest);
    expect(m.blobs.filter((b) => b.what.startsWith('layer')).map((b) => b.how)).toEqual(['mounted', 'mounted']);
    expect(m.uploaded).toBeLessThan(10_000);
    // pushing the same again sends only the OCI manifest
    const again = await pushStack({ client: c, ref: parseReference(`oci://${reg.host}/fleet/node:2`), buildDir: v2.dir });
    expect(again.blobs.every((b) => b.how === 'present')).toBe(true);
    expect(again.digest).toBe(p2.digest);
  });

  it('skopeo (containers/image) reads what push wrote and copies it; install works from the copy', async () => {
    const creds = `--creds=${USER.username}:${USER.password}`;
    const raw = await run('skopeo', ['inspect', '--raw', '--cert-dir', pki.certDir, creds, `docker://${reg.host}/fleet/node:2`]);
    expect(`sha256:${sha256hex(raw.stdout)}`).toBe(p2.digest);
    const j = JSON.parse(raw.stdout);
    expect(j.artifactType).toBe('application/vnd.stackboot.stack.v1');
    expect(j.annotations['io.stackboot.version']).toBe('2');
    expect(j.layers.map((l: { mediaType: string }) => l.mediaType)).toEqual([
      'application/vnd.stackboot.manifest.v1',
      'application/vnd.stackboot.signature.v1',
      'application/vnd.stackboot.layer.v1.squashfs',
      'application/vnd.stackboot.layer.v1.squashfs',
    ]);
    await run('skopeo', ['copy', '--src-cert-dir', pki.certDir, '--dest-cert-dir', pki.certDir, `--src-creds=${USER.username}:${USER.password}`, `--dest-creds=${USER.username}:${USER.password}`, `docker://${reg.host}/fleet/node:2`, `docker://${reg.host}/copied/node:2`]);
    const s = await newStore('skopeo');
    const { r } = await installRef(s, `oci://${proxy.host}/copied/node:2`);
    expect(r.installed).toBe(true);
    expect(r.plan!.stack).toBe(p2.stack);
    expect(await fs.readFile(path.join(s.dir, 'slots', r.plan!.slot, 'manifest'), 'utf8')).toBe(v2.text);
    // and pull makes the same build output folder as the one pushed
    const out = path.join(tmp, 'pulled');
    const pr = await pullStack(viaProxy(), parseReference(`oci://${proxy.host}/copied/node:2`), out);
    expect(pr.fetched.length).toBe(2);
    for (const f of ['manifest', 'manifest.sig', ...v2.manifest.layers.map((l) => `layers/${l.digest}.sqfs`)]) {
      expect(sha256hex(await fs.readFile(path.join(out, f)))).toBe(sha256hex(await fs.readFile(path.join(v2.dir, f))));
    }
  });
});

describe('install oci://… on a node', () => {
  it('fetches only the layers the store lacks (bytes counted by the proxy); a node with every layer fetches only the manifests', async () => {
    const s = await newStore('node1');
    // the node runs v1 (installed from a bundle, as today)
    expect((await install({ ctx: ctx(s), stream: bundleStreamFromBuild(v1.dir), label: 'v1', keysDir: k.keysDir, tries: 3 })).installed).toBe(true);
    proxy.reset();
    const { src, r } = await installRef(s, `oci://${proxy.host}/fleet/node:2`);
    expect(r.installed).toBe(true);
    expect(src.fetch.map((l) => l.name)).toEqual(['app']);
    expect(src.label).toBe(`oci://${proxy.host}/fleet/node:2@${p2.digest}`);
    const art = (await fs.stat(blobPath(p2.digest.slice(7)))).size;
    const want = layer(v2, 'app').size + Buffer.byteLength(v2.text) + Buffer.byteLength(v2.sig) + art;
    expect(proxy.bytes()).toBe(want);
    expect(proxy.bytes((x) => x.path.includes(layer(v2, 'base').digest))).toBe(0);
    const st = parseState(await fs.readFile(path.join(s.dir, 'state'), 'utf8'));
    expect(st.slots[r.plan!.slot]).toMatchObject({ status: 'pending', stack: p2.stack });

    // a second node that has every layer already (v1 installed, v2's app layer copied in)
    const s2 = await newStore('node2');
    await install({ ctx: ctx(s2), stream: bundleStreamFromBuild(v1.dir), label: 'v1', keysDir: k.keysDir, tries: 3 });
    await fs.copyFile(path.join(v2.dir, 'layers', `${layer(v2, 'app').digest}.sqfs`), s2.store.layerPath(layer(v2, 'app').digest));
    proxy.reset();
    const second = await installRef(s2, `oci://${proxy.host}/fleet/node:2`);
    expect(second.r.installed).toBe(true);
    expect(second.src.fetch).toEqual([]);
    expect(proxy.bytes()).toBe(Buffer.byteLength(v2.text) + Buffer.byteLength(v2.sig) + art);
  });

  it('--dry-run says which layers and how many bytes, and fetches no layer', async () => {
    const s = await newStore('dry');
    const before = await snapshot(s.dir);
    proxy.reset();
    const { src, r } = await installRef(s, `oci://${proxy.host}/fleet/node:2`, { dryRun: true });
    expect(r.dryRun).toBe(true);
    expect(src.fetch.map((l) => l.name)).toEqual(['base', 'app']);
    expect(src.bytes).toBe(layer(v2, 'base').size + layer(v2, 'app').size);
    expect(r.plan!.bytes).toBe(src.bytes);
    for (const l of v2.manifest.layers) expect(proxy.bytes((x) => x.path.includes(l.digest))).toBe(0);
    expect(await snapshot(s.dir)).toBe(before);
  });

  it('a connection dropped in the middle of a large layer: resumed with Range, the layer fetched once plus at most one chunk', async () => {
    const s = await newStore('resume');
    const base = layer(v1, 'base');
    proxy.reset();
    const mark = proxy.records.length;
    proxy.dropOnce(base.digest, 2 << 20);
    const { r } = await installRef(s, `oci://${proxy.host}/fleet/node:1`);
    expect(r.installed).toBe(true);
    const gets = proxy.records.slice(mark).filter((x) => x.method === 'GET' && x.path.includes(base.digest));
    expect(gets.map((g) => g.status)).toEqual([200, 206]);
    const fetched = proxy.bytes((x) => x.path.includes(base.digest));
    expect(fetched).toBeGreaterThanOrEqual(base.size);
    expect(fetched).toBeLessThanOrEqual(base.size + (1 << 20));
    expect(sha256hex(await fs.readFile(s.store.layerPath(base.digest)))).toBe(base.digest);
    expect(notes.some((n) => /plain HTTP/.test(n))).toBe(true);
  });

  it('refuses a wrong password, a stack signed by another key (before any layer), a tampered blob, an edited manifest and a moved tag, leaving the store unchanged', async () => {
    const s = await newStore('refuse');
    await install({ ctx: ctx(s), stream: bundleStreamFromBuild(v1.dir), label: 'v1', keysDir: k.keysDir, tries: 3 });
    const before = await snapshot(s.dir);
    const ref2 = `oci://${proxy.host}/fleet/node:2`;
    const check = async (p: Promise<unknown>, re: RegExp) => {
      await expect(p).rejects.toThrow(re);
      expect(await snapshot(s.dir)).toBe(before);
      expect((await fs.readdir(path.join(s.dir, 'layers'))).filter((n) => n.endsWith('.part'))).toEqual([]);
    };
    // wrong password
    await check(installRef(s, ref2, { client: viaProxy({ credentials: { username: 'ci', password: 'wrong' } }) }), /HTTP 401.*authentication refused/);
    // no credentials at all
    await check(installRef(s, ref2, { client: viaProxy({ credentials: null }) }), /HTTP 401.*no credentials for this registry/);
    // signed, but not by a key of this node: refused before any layer byte
    proxy.reset();
    await check(installRef(s, ref2, { keysDir: otherKeys.keysDir }), /signature does not match any key/);
    for (const l of v2.manifest.layers) expect(proxy.bytes((x) => x.path.includes(l.digest))).toBe(0);

    // a layer blob changed in the registry's storage
    const app = blobPath(layer(v2, 'app').digest);
    const good = await fs.readFile(app);
    const bad = Buffer.from(good);
    bad[bad.length - 100] ^= 0xff;
    await fs.writeFile(app, bad);
    try {
      // the registry's reason, with the install's own refusal of the bytes as its cause
      const e = await installRef(s, ref2).catch((x: Error) => x);
      expect(e).toBeInstanceOf(Error);
      expect((e as Error).message).toMatch(/sha256 .*tampered or corrupt blob/);
      expect(((e as Error).cause as Error).message).toMatch(/does not match the signed manifest/);
      await check(installRef(s, ref2), /sha256 .*tampered or corrupt blob/);
      // pull too: no layer file, no temp, no manifest
      const out = path.join(tmp, 'pull-tampered');
      await expect(pullStack(viaProxy(), parseReference(ref2), out)).rejects.toThrow(/tampered or corrupt blob/);
      expect((await fs.readdir(path.join(out, 'layers'))).filter((n) => !n.startsWith(layer(v2, 'base').digest))).toEqual([]);
      expect(await fs.readdir(out)).toEqual(['layers']);
    } finally {
      await fs.writeFile(app, good);
    }

    // a link that drops every time before a byte of the layer passes: given up after the
    // retries (a link that drops after some progress keeps going: each try resumes)
    proxy.dropOnce(layer(v2, 'app').digest, 0, 100);
    try {
      await check(installRef(s, ref2), /failed after 5 retries at byte 0 of \d+/);
    } finally {
      proxy.dropOnce('nothing', 0);
    }

    // the OCI manifest edited in storage (the tag still links to the old digest)
    const ociFile = blobPath(p2.digest.slice(7));
    const oci = await fs.readFile(ociFile, 'utf8');
    await fs.writeFile(ociFile, oci.replace('"io.stackboot.version": "2"', '"io.stackboot.version": "9"'));
    try {
      await check(installRef(s, ref2), /tampered or corrupt/);
      await check(installRef(s, `oci://${proxy.host}/fleet/node@${p2.digest}`), /digest is sha256:.*tampered or corrupt/);
    } finally {
      await fs.writeFile(ociFile, oci);
    }
    // the text manifest edited in storage (say, a layer swapped): its blob digest no longer matches
    const textFile = blobPath(sha256hex(v2.text));
    await fs.writeFile(textFile, v2.text.replace('version 2', 'version 3'));
    try {
      await check(installRef(s, ref2), /tampered or corrupt blob/);
    } finally {
      await fs.writeFile(textFile, v2.text);
    }

    // the tag moved to another stack while the node pins the digest it was told
    await pushStack({ client: direct(), ref: parseReference(`oci://${reg.host}/fleet/node:2`), buildDir: v1.dir });
    try {
      await check(installRef(s, `oci://${proxy.host}/fleet/node:2@${p2.digest}`), /the tag 2 now points to sha256:[0-9a-f]+, not to the pinned .*moved/);
    } finally {
      await pushStack({ client: direct(), ref: parseReference(`oci://${reg.host}/fleet/node:2`), buildDir: v2.dir });
    }
    // and with everything back as it was, the same install goes through
    expect((await installRef(s, `oci://${proxy.host}/fleet/node:2@${p2.digest}`)).r.installed).toBe(true);
  });
});

describe('the client against the real registry, behind proxies', () => {
  it('follows a redirect to another host without the Authorization header, and waits as a 429 Retry-After asks', async () => {
    // a "storage host" (localhost, not 127.0.0.1: another host) with its own access
    const storage = await startProxy(reg.port, pki, { addAuth: `Basic ${Buffer.from(`${USER.username}:${USER.password}`).toString('base64')}` });
    const front = await startProxy(reg.port, pki, { redirectBlobsTo: `http://localhost:${storage.host.split(':')[1]}`, tooManyOnce: { pathPart: '/manifests/', retryAfter: '1' } });
    try {
      const c = new RegistryClient(front.host, { credentials: USER, onNote: (n) => notes.push(n) });
      const t0 = Date.now();
      const out = path.join(tmp, 'redirected');
      const r = await pullStack(c, parseReference(`oci://${front.host}/fleet/node:2`), out);
      expect(Date.now() - t0).toBeGreaterThanOrEqual(1000);
      expect(notes.some((n) => /429.*waiting 1 s/.test(n))).toBe(true);
      expect(r.fetched.map((l) => l.name)).toEqual(['base', 'app']);
      // the front saw the credentials; the storage host never did
      expect(front.authSeen.some((a) => a?.startsWith('Basic '))).toBe(true);
      expect(storage.authSeen.length).toBeGreaterThan(0);
      expect(storage.authSeen.every((a) => a === undefined)).toBe(true);
      expect(sha256hex(await fs.readFile(path.join(out, 'layers', `${layer(v2, 'base').digest}.sqfs`)))).toBe(layer(v2, 'base').digest);
    } finally {
      await front.stop();
      await storage.stop();
    }
  });

  it('refuses a Retry-After longer than the limit, and a manifest larger than the limit', async () => {
    const front = await startProxy(reg.port, pki, { tooManyOnce: { pathPart: '/manifests/', retryAfter: '3600' } });
    try {
      await expect(pullStack(new RegistryClient(front.host, { credentials: USER, maxRetryAfter: 5 }), parseReference(`oci://${front.host}/fleet/node:2`), path.join(tmp, 'never'))).rejects.toThrow(/429.*wait 3600 s/);
    } finally {
      await front.stop();
    }
    // Distribution 2.8 itself takes no manifest over 4 MiB ("http: request body too
    // large"): a 200 kB one, read by a client whose limit is 64 KiB, stands for it
    const c = direct();
    const oci = JSON.parse(await fs.readFile(blobPath(p2.digest.slice(7)), 'utf8'));
    oci.annotations['padding'] = 'x'.repeat(200_000);
    const put = await c.send({ method: 'PUT', path: '/v2/fleet/node/manifests/huge', scope: 'repository:fleet/node:pull,push', headers: { 'Content-Type': 'application/vnd.oci.image.manifest.v1+json' }, body: Buffer.from(JSON.stringify(oci)) });
    expect([put.statusCode, (await readBody(put, 1 << 20, 'answer')).toString()]).toEqual([201, '']);
    await expect(pullStack(direct({ maxManifestBytes: 64 << 10 }), parseReference(`oci://${reg.host}/fleet/node:huge`), path.join(tmp, 'never2'))).rejects.toThrow(/manifest is \d+ bytes, more than the limit of 65536: refused/);
    // the default limit takes it (and then finds it is the stack v2 with padding)
    expect((await pullStack(direct(), parseReference(`oci://${reg.host}/fleet/node:huge`), path.join(tmp, 'huge'))).stack).toBe(p2.stack);
  });
});
