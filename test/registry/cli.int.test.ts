/**
 * push, pull and install oci://… as users run them: the bundled CLI (bundled here from
 * src/), a real Distribution 2.8 with TLS and htpasswd, credentials from
 * --password-stdin, REGISTRY_AUTH_FILE, DOCKER_CONFIG and the node config's root-only
 * REGISTRY_AUTH file.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { run } from '../../src/sys/exec.js';
import { Store } from '../../src/format/store.js';
import { parseState } from '../../src/format/state.js';
import { makePki, startRegistry, sha256hex, type Pki, type RunningRegistry } from './harness.js';
import { buildSigned, keys, type BuiltStack } from './stacks.js';
import { chunkedBuild } from '../support/chunk-fixtures.js';
import { layerBytes } from '../support/update-fixtures.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const USER = { user: 'ci', password: 'pw-from-stdin' };
let tmp: string;
let cli: string;
let pki: Pki;
let reg: RunningRegistry;
let k: Awaited<ReturnType<typeof keys>>;
let v1: BuiltStack;
let authFile: string;

const sb = (args: string[], o: { env?: Record<string, string>; input?: string } = {}) =>
  run('node', [cli, ...args], { reject: false, cwd: tmp, input: o.input, env: { HOME: tmp, DOCKER_CONFIG: path.join(tmp, 'no-docker'), REGISTRY_AUTH_FILE: undefined, ...o.env } });

beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(tmpdir(), 'sb-regcli-'));
  await fs.mkdir(path.join(tmp, 'dist'));
  cli = path.join(tmp, 'dist', 'stackboot.cjs');
  await run('node', [path.join(REPO, 'scripts', 'bundle-cli.mjs'), path.join(REPO, 'src', 'cli', 'main.ts'), cli], { cwd: REPO });
  for (const d of ['templates', 'initramfs']) await fs.symlink(path.join(REPO, d), path.join(tmp, d));
  pki = await makePki(path.join(tmp, 'pki'));
  reg = await startRegistry({ dir: path.join(tmp, 'reg'), pki, basic: { user: USER.user, password: USER.password } });
  k = await keys(path.join(tmp, 'k'));
  v1 = await buildSigned(tmp, '1', k.key);
  authFile = path.join(tmp, 'auth.json');
  await fs.writeFile(authFile, JSON.stringify({ auths: { [reg.host]: { auth: Buffer.from(`${USER.user}:${USER.password}`).toString('base64') } } }), { mode: 0o600 });
}, 120_000);
afterAll(async () => {
  await reg?.stop();
  await fs.rm(tmp, { recursive: true, force: true });
});

describe('stackboot push / pull / install oci://', () => {
  it('push prints the reference by digest; --json gives the result; pull makes the build output again', async () => {
    const ref = `oci://${reg.host}/fleet/node:1`;
    const p = await sb(['push', v1.dir, ref, '--ca-file', pki.caCert, '--username', USER.user, '--password-stdin'], { input: `${USER.password}\n` });
    expect(p.stderr).toBe('');
    expect(p.exitCode).toBe(0);
    const printed = p.stdout.trim().split('\n').pop()!;
    expect(printed).toMatch(new RegExp(`^oci://${reg.host}/fleet/node:1@sha256:[0-9a-f]{64}$`));

    const again = await sb(['push', v1.dir, ref, '--ca-file', pki.caCert, '--json'], { env: { REGISTRY_AUTH_FILE: authFile } });
    expect(again.exitCode).toBe(0);
    const j = JSON.parse(again.stdout);
    expect(j.reference).toBe(printed);
    expect(j.blobs.map((b: { how: string }) => b.how)).toEqual(['present', 'present', 'present', 'present', 'present']);

    // docker's own file (DOCKER_CONFIG) for the pull
    const dockerDir = path.join(tmp, 'docker');
    await fs.mkdir(dockerDir);
    await fs.copyFile(authFile, path.join(dockerDir, 'config.json'));
    const out = path.join(tmp, 'pulled');
    const pl = await sb(['pull', printed, '--out', out, '--ca-file', pki.caCert, '--json'], { env: { DOCKER_CONFIG: dockerDir } });
    expect(pl.exitCode).toBe(0);
    expect(JSON.parse(pl.stdout)).toMatchObject({ reference: printed, fetched: v1.manifest.layers.map((l) => ({ name: l.name })) });
    for (const f of ['manifest', 'manifest.sig', ...v1.manifest.layers.map((l) => `layers/${l.digest}.sqfs`)]) {
      expect(sha256hex(await fs.readFile(path.join(out, f)))).toBe(sha256hex(await fs.readFile(path.join(v1.dir, f))));
    }

    // no credentials: one line, the network exit code
    const anon = await sb(['pull', ref, '--out', path.join(tmp, 'anon'), '--ca-file', pki.caCert]);
    expect(anon.exitCode).toBe(18);
    expect(anon.stderr.trim().split('\n')).toHaveLength(1);
    expect(anon.stderr).toMatch(/HTTP 401 .*no credentials for this registry/);
    // without the CA the TLS check fails (nothing is sent in the clear to a verified host)
    const noCa = await sb(['pull', ref, '--out', path.join(tmp, 'noca')], { env: { REGISTRY_AUTH_FILE: authFile } });
    expect(noCa.exitCode).toBe(18);
    expect(noCa.stderr).toMatch(/certificate/);
  });

  it('push of a bundle: a full one is the same artifact as its build output; a delta needs its base in the registry, else it is refused naming the layer', async () => {
    const v2 = await buildSigned(tmp, '2', k.key);
    const env = { REGISTRY_AUTH_FILE: authFile };
    const full = path.join(tmp, 'v2.stackbundle');
    const delta = path.join(tmp, 'v2-delta.stackbundle');
    expect((await sb(['bundle', v2.dir, '--out', full])).exitCode).toBe(0);
    expect((await sb(['bundle', v2.dir, '--out', delta, '--base', v1.dir])).exitCode).toBe(0);
    // the delta into a repository that has no base: refused, nothing tagged
    const lonely = await sb(['push', delta, `oci://${reg.host}/fleet/lonely:2`, '--ca-file', pki.caCert], { env });
    expect(lonely.exitCode, lonely.stderr).toBe(15);
    expect(lonely.stderr).toMatch(/layer base \([0-9a-f]{12}\) is neither in .* \(a delta bundle's base\) nor in .*fleet\/lonely: push the base stack first/);
    // the full bundle and the build output give the same artifact digest
    const fromDir = await sb(['push', v2.dir, `oci://${reg.host}/fleet/node:2`, '--ca-file', pki.caCert, '--json'], { env });
    const fromFull = await sb(['push', full, `oci://${reg.host}/fleet/other:2`, '--ca-file', pki.caCert, '--json'], { env });
    expect(fromFull.exitCode, fromFull.stderr).toBe(0);
    expect(JSON.parse(fromFull.stdout).digest).toBe(JSON.parse(fromDir.stdout).digest);
    // the delta where v1 (its base) was pushed before: only the manifests and the app layer are new there
    const fromDelta = await sb(['push', delta, `oci://${reg.host}/fleet/node:2d`, '--ca-file', pki.caCert, '--json'], { env });
    expect(fromDelta.exitCode, fromDelta.stderr).toBe(0);
    const j = JSON.parse(fromDelta.stdout);
    expect(j.digest).toBe(JSON.parse(fromDir.stdout).digest);
    expect(j.blobs.find((b: { what: string }) => b.what === 'layer base').how).toBe('present');
  });

  it('install oci://… on a node: credentials and CA from the node config, --dry-run names the layers and bytes', async () => {
    const storeDir = path.join(tmp, 'store');
    await Store.create(storeDir);
    const nodeAuth = path.join(tmp, 'node-auth.json');
    await fs.copyFile(authFile, nodeAuth);
    await fs.chmod(nodeAuth, 0o600);
    const config = path.join(tmp, 'node.conf');
    await fs.writeFile(config, `KEYS_DIR=${k.keysDir}\nREGISTRY_AUTH=${nodeAuth}\nREGISTRY_CA=${pki.caCert}\n`);
    const ref = `oci://${reg.host}/fleet/node:1`;
    const dry = await sb(['install', ref, '--store', storeDir, '--config', config, '--dry-run', '--json']);
    expect(dry.stderr).toBe('');
    expect(dry.exitCode).toBe(0);
    const events = dry.stdout.trim().split('\n').map((l) => JSON.parse(l));
    const fetch = events.find((e) => e.event === 'fetch');
    expect(fetch.layers.map((l: { name: string }) => l.name)).toEqual(['base', 'app']);
    expect(fetch.bytes).toBe(v1.manifest.layers.reduce((n, l) => n + l.size, 0));
    expect(events.at(-1)).toMatchObject({ event: 'result', dryRun: true, installed: false });
    expect(await fs.readdir(path.join(storeDir, 'layers'))).toEqual([]);

    const human = await sb(['install', ref, '--store', storeDir, '--config', config]);
    expect(human.exitCode).toBe(0);
    expect(human.stderr).toMatch(/fetching base, app \(\d+ bytes\); 0 layer\(s\) in the store/);
    expect(human.stdout).toMatch(/slot a pending with 3 tries/);
    expect(parseState(await fs.readFile(path.join(storeDir, 'state'), 'utf8')).slots.a?.status).toBe('pending');

    // a credentials file that others can read is refused before anything is asked
    await fs.chmod(nodeAuth, 0o644);
    const open = await sb(['install', ref, '--store', storeDir, '--config', config, '--dry-run']);
    expect(open.exitCode).toBe(19);
    expect(open.stderr).toMatch(/readable by others \(mode 644\): chmod 600/);
  });

  it('install oci://… of a stack with chunk indexes: the lacking layer rebuilt from the store, only the missing chunks fetched; --no-chunks fetches it whole', async () => {
    const data1 = layerBytes(2 << 20, 'cli-chunks-v1');
    const data2 = Buffer.concat([data1.subarray(0, 700_000), layerBytes(50_000, 'cli-patch'), data1.subarray(700_000)]);
    const c1 = await chunkedBuild(path.join(tmp, 'c1'), { version: '1', key: k.key, layers: [{ name: 'base', data: data1 }] });
    const c2 = await chunkedBuild(path.join(tmp, 'c2'), { version: '2', key: k.key, layers: [{ name: 'base', data: data2 }] });
    const env = { REGISTRY_AUTH_FILE: authFile };
    for (const [dir, tag] of [[c1.dir, '1'], [c2.dir, '2']]) {
      const p = await sb(['push', dir, `oci://${reg.host}/fleet/chunky:${tag}`, '--ca-file', pki.caCert, '--json'], { env });
      expect(p.exitCode, p.stderr).toBe(0);
      expect(JSON.parse(p.stdout).blobs.map((b: { what: string }) => b.what)).toContain('chunk index of base');
    }
    const config = path.join(tmp, 'node-chunks.conf');
    const nodeAuth = path.join(tmp, 'node-chunks-auth.json');
    await fs.copyFile(authFile, nodeAuth);
    await fs.chmod(nodeAuth, 0o600);
    await fs.writeFile(config, `KEYS_DIR=${k.keysDir}\nREGISTRY_AUTH=${nodeAuth}\nREGISTRY_CA=${pki.caCert}\n`);
    const store = async (name: string) => {
      const d = path.join(tmp, name);
      await Store.create(d);
      const i1 = await sb(['install', `oci://${reg.host}/fleet/chunky:1`, '--store', d, '--config', config], { env });
      expect(i1.exitCode, i1.stderr).toBe(0);
      // the node booted it (slot a) and its health checks passed
      const good = await sb(['mark-good', '--store', d, '--booted-slot', 'a', '--config', config]);
      expect(good.exitCode, good.stderr).toBe(0);
      return d;
    };
    const d = await store('store-chunks');
    const dry = await sb(['install', `oci://${reg.host}/fleet/chunky:2`, '--store', d, '--config', config, '--booted-slot', 'a', '--dry-run', '--json'], { env });
    expect(dry.exitCode, dry.stderr).toBe(0);
    const events = dry.stdout.trim().split('\n').map((l) => JSON.parse(l));
    expect(events.find((e) => e.event === 'fetch')).toMatchObject({ layers: [], bytes: 0, chunked: [{ name: 'base' }] });
    const plan = events.find((e) => e.event === 'chunks');
    expect(plan.fetch).toBeLessThan(200_000);
    expect(plan.had).toBeGreaterThan(1_900_000);
    const human = await sb(['install', `oci://${reg.host}/fleet/chunky:2`, '--store', d, '--config', config, '--booted-slot', 'a'], { env });
    expect(human.exitCode, human.stderr).toBe(0);
    expect(human.stderr).toMatch(/no layer to fetch whole; base from chunks; 0 layer\(s\) in the store/);
    expect(human.stdout).toMatch(/layer base rebuilt: .* from the store, .* fetched/);
    expect(sha256hex(await fs.readFile(path.join(d, 'layers', `${c2.manifest.layers[0].digest}.sqfs`)))).toBe(c2.manifest.layers[0].digest);

    // --chunks-from is for bundles and URLs: the usage error (and the help hint), nothing asked
    const both = await sb(['install', `oci://${reg.host}/fleet/chunky:2`, '--store', d, '--config', config, '--chunks-from', 'http://127.0.0.1:1/x'], { env });
    expect(both.exitCode).toBe(2);
    expect(both.stderr.trim().split('\n')).toEqual(['stackboot: [USAGE] --chunks-from is for bundles and URLs: an oci:// stack carries its chunk indexes', '  (see: stackboot install --help)']);

    const whole = await store('store-whole');
    const w = await sb(['install', `oci://${reg.host}/fleet/chunky:2`, '--store', whole, '--config', config, '--booted-slot', 'a', '--no-chunks'], { env });
    expect(w.exitCode, w.stderr).toBe(0);
    expect(w.stderr).toMatch(/fetching base \(\d+ bytes\)/);
    expect(w.stdout).not.toMatch(/from chunks|rebuilt/);
  });
});
