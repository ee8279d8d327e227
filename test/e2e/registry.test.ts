/**
 * A node installs from an OCI registry (amd64, QEMU TCG): the demo-node stack v1 (busybox
 * demo + Node.js + the real stackboot CLI) runs `stackboot install oci://…` for v2, which
 * CI pushed to a real registry on the host (Debian's docker-registry, Distribution 2.8,
 * on 127.0.0.1), reboots into v2 (pending), passes its health check and is marked good.
 *
 * The network: a virtio-net NIC on QEMU's user-mode network (slirp); the guest gives
 * eth0 10.0.2.15/24 and no default route, and reaches the host's 127.0.0.1 as 10.0.2.2,
 * so no packet leaves the machine. The guest talks to the plain-HTTP counting proxy of
 * the registry tests (test/registry/harness.ts), which passes every request on to the
 * TLS registry and counts the bytes. Plain HTTP is allowed by itself only for a loopback
 * host, and the guest's view of the host is 10.0.2.2, not a loopback address: the guest
 * therefore says `--insecure`, which is exactly what that flag is for (a registry the
 * operator knows is reached without TLS).
 */
import { describe, it, expect, beforeAll, afterAll, afterEach } from 'vitest';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import type { BuildResult } from '../../src/build/stack.js';
import type { Target } from '../../src/boot/target.js';
import { buildInitramfs, makeBootConfig } from '../../src/boot/initramfs.js';
import { RegistryClient, parseReference, pushStack, type PushResult } from '../../src/registry/index.js';
import { makePki, startProxy, startRegistry, type CountingProxy, type RunningRegistry } from '../registry/harness.js';
import { CACHE, scratch, storeDisk, target } from './fixtures.js';
import { bootDemo, expectOnConsole, expectPendingThenGood, readStore, tailOf, type DemoBoot } from './inspect.js';
import { nodeStack } from './node-fixtures.js';
import { useVmCleanup, type Disk } from './qemu.js';

useVmCleanup(afterEach);

let T: Target;
let dir: string;
let rd: string;
let v1: BuildResult, v2: BuildResult;
let reg: RunningRegistry;
let proxy: CountingProxy;
let pushed: PushResult;

beforeAll(async () => {
  T = await target('amd64');
  dir = await scratch('registry');
  [v1, v2] = await Promise.all([nodeStack('recipe'), nodeStack('update')]);
  // the standalone initrd loads virtio_net (and its dependencies) with the disk modules:
  // the demo root has no kernel modules of its own
  rd = path.join(dir, 'initrd.img');
  await buildInitramfs({ flavor: 'standalone', out: rd, arch: 'amd64', cacheRoot: CACHE, modules: ['virtio_net'], config: makeBootConfig({ set: [['STORES', 'vda'], ['DEVICE_TIMEOUT', '5'], ['TRIES', '3']] }) });
  const pki = await makePki(path.join(dir, 'pki'));
  reg = await startRegistry({ dir: path.join(dir, 'registry'), pki });
  proxy = await startProxy(reg.port, pki);
  // CI's push: straight to the TLS registry, trusting the test CA
  pushed = await pushStack({ client: new RegistryClient(reg.host, { caFile: pki.caCert }), ref: parseReference(`oci://${reg.host}/fleet/node:2`), buildDir: v2.outDir });
}, 900_000);

afterAll(async () => {
  await proxy?.stop();
  await reg?.stop();
  // the disk image and the registry's storage: removed unless SB_KEEP_E2E is set
  if (dir && !process.env.SB_KEEP_E2E) await rm(dir, { recursive: true, force: true });
});

function boot(disks: Disk[], append: string): Promise<DemoBoot> {
  return bootDemo({ target: T, initrd: rd, disks, nic: 'user', append: `quiet ${append}`, memoryMiB: 768, timeoutMs: 300_000 });
}

const check = expectOnConsole;

describe('a QEMU node installs from an OCI registry on the host', () => {
  it('fetches only the app layer over user-mode networking, boots v2 pending and marks it good', async () => {
    const img = path.join(dir, 'node.img');
    await storeDisk({ file: img, slots: { a: { buildDir: v1.outDir, status: 'good' } }, storeMiB: 256 });
    const store: Disk = { file: img, bus: 'virtio' };
    // the pinned reference push printed, as the guest sees the host
    const guestRef = pushed.reference.replace(`oci://${reg.host}/`, `oci://10.0.2.2:${proxy.host.split(':')[1]}/`);
    expect(guestRef).toMatch(/^oci:\/\/10\.0\.2\.2:\d+\/fleet\/node:2@sha256:[0-9a-f]{64}$/);
    proxy.reset();

    // 1: v1 (good) brings up eth0, installs v2 from the registry, then reboots
    const b1 = await boot([store], `demo.net=10.0.2.15/24 demo.install=${guestRef} demo.installarg=--insecure demo.then=reboot`);
    check(b1, /DEMO: booted slot=a/, 'v1 should boot from slot a');
    check(b1, /DEMO: network: eth0 10\.0\.2\.15\/24$/m, 'eth0 should come up');
    check(b1, /DEMO: install: \{"event":"note","note":"WARNING: --insecure: talking plain HTTP to 10\.0\.2\.2:\d+/, 'the client should say --insecure loudly');
    check(b1, /DEMO: install: \{"event":"fetch"/, 'the install should say what it fetches');
    const fetch = JSON.parse(/^DEMO: install: (\{"event":"fetch".*)$/m.exec(b1.output)![1]!) as { layers: { name: string }[]; have: number };
    expect(fetch.layers.map((l) => l.name), 'only the app layer should be fetched').toEqual(['app']);
    expect(fetch.have).toBe(6);
    check(b1, /DEMO: install: \{"event":"plan".*"slot":"b","write":\["app"\]/, 'install should plan slot b with the app layer only');
    check(b1, /DEMO: install: \{"event":"done".*"slot":"b","tries":3\}/, 'install should finish');
    check(b1, new RegExp(`DEMO: install from ${guestRef.replace(/[.]/g, '\\.')}: exit 0`), 'install should exit 0');
    expect(b1.how, tailOf(b1, 'reboot')).toBe('reboot');

    // over the wire: the manifests, the text manifest, the signature and the app layer, once each
    const app = v2.manifest.layers.find((l) => l.name === 'app')!;
    const blobGets = proxy.records.filter((r) => r.method === 'GET' && r.path.includes('/blobs/'));
    const sig = pushed.blobs.find((b) => b.what === 'manifest.sig')!;
    const text = pushed.blobs.find((b) => b.what === 'manifest')!;
    expect(blobGets.map((r) => r.path.split('/blobs/')[1]).sort()).toEqual([`sha256:${app.digest}`, text.digest, sig.digest].sort());
    expect(proxy.bytes((r) => r.path.includes('/blobs/'))).toBe(app.size + text.size + sig.size);

    const s = await readStore(img);
    expect(s.state?.slots.b).toEqual({ status: 'pending', stack: v2.stackId, tries: 3 });
    expect(s.state?.current).toBe('a');
    expect(s.layers).toContain(`${app.digest}.sqfs`);
    expect(s.events.filter((e) => e.event === 'install').map((e) => e.stack)).toEqual([v2.stackId.slice(0, 12)]);

    // 2: the node boots v2 (pending), its health check passes: marked good
    const b2 = await boot([store], 'demo.then=poweroff');
    await expectPendingThenGood(b2, img, { version: '2', old: v1.stackId, now: v2.stackId });
  });
});
