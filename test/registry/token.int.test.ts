/**
 * The bearer-token flow against Docker Distribution 2.8 configured with `auth.token`: a
 * token server made here (Basic in, RS256 JWT out, its certificate in the registry's
 * rootcertbundle). Push and install go through it; an expired token and a wrong
 * password are refused in one line, the store unchanged.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { install } from '../../src/node/install.js';
import { RegistryClient, openRegistrySource, parseReference, pushStack, type ClientOptions } from '../../src/registry/index.js';
import { loopStore, snapshot, type LoopStore } from '../support/store-loop.js';
import { makePki, startRegistry, startTokenServer, type Pki, type RunningRegistry, type TokenServer } from './harness.js';
import { buildSigned, keys, type BuiltStack } from './stacks.js';

const USER = { username: 'fleet-ci', password: 's3cret' };
let tmp: string;
let pki: Pki;
let tokens: TokenServer;
let reg: RunningRegistry;
let k: Awaited<ReturnType<typeof keys>>;
let v1: BuiltStack;
let store: LoopStore;

const client = (o: ClientOptions = {}) => new RegistryClient(reg.host, { credentials: USER, caFile: pki.caCert, ...o });

async function installRef(ref: string, c: RegistryClient) {
  const src = await openRegistrySource({ client: c, ref: parseReference(ref), store: store.store, keysDir: k.keysDir });
  return install({ ctx: { store: store.store, bootedSlot: null, booted: null, bootedFile: null, remount: false, lockDir: path.join(store.dir, '.stackboot.lock') }, stream: src.stream, label: src.label, keysDir: k.keysDir, tries: 3 });
}

beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(tmpdir(), 'sb-regtoken-'));
  pki = await makePki(path.join(tmp, 'pki'));
  tokens = await startTokenServer(tmp, { user: USER.username, password: USER.password });
  reg = await startRegistry({ dir: path.join(tmp, 'reg'), pki, token: { realm: tokens.realm, service: tokens.service, issuer: tokens.issuer, cert: tokens.cert } });
  k = await keys(path.join(tmp, 'k'));
  v1 = await buildSigned(tmp, '1', k.key);
  store = await loopStore(tmp, 'store', 64);
});
afterAll(async () => {
  await store?.cleanup();
  await reg?.stop();
  await tokens?.stop();
  await fs.rm(tmp, { recursive: true, force: true });
});

describe('bearer tokens (auth.token of Distribution 2.8)', () => {
  it('push and install through tokens from the realm; expired tokens and a wrong password are refused, the store unchanged', async () => {
    const pushed = await pushStack({ client: client(), ref: parseReference(`oci://${reg.host}/fleet/node:1`), buildDir: v1.dir });
    expect(tokens.issued).toBeGreaterThan(0);
    const ref = `oci://${reg.host}/fleet/node:1`;

    const before = await snapshot(store.dir);
    tokens.expired = true;
    const issued = tokens.issued;
    // the client asks for a new token once when the registry refuses one, then gives up
    await expect(installRef(ref, client())).rejects.toThrow(/HTTP 401 UNAUTHORIZED/);
    expect(tokens.issued - issued).toBe(2);
    expect(await snapshot(store.dir)).toBe(before);
    tokens.expired = false;

    await expect(installRef(ref, client({ credentials: { username: USER.username, password: 'wrong' } }))).rejects.toThrow(/token from http:\/\/127\.0\.0\.1:\d+\/token: HTTP 401/);
    expect(await snapshot(store.dir)).toBe(before);

    const r = await installRef(ref, client());
    expect(r.installed).toBe(true);
    expect(r.plan!.stack).toBe(pushed.stack);
  });
});
