import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { diffBootConfig, parseNodeConfig } from '../../src/node/config.js';
import { doctor } from '../../src/node/doctor.js';
import { makeBootConfig } from '../../src/boot/initramfs.js';
import { nodeContext } from '../../src/node/context.js';
import { stageStore } from '../../src/format/store.js';
import { fakeBuild, keys, layerBytes } from '../support/update-fixtures.js';

let tmp: string;
beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(tmpdir(), 'sb-doctor-'));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

describe('node config', () => {
  it('parses boot keys with the boot.conf parser plus node-only keys', () => {
    const c = parseNodeConfig('STORES=mmcblk0 # sd\nTRIES=5\nKEYS_DIR=/k\nCOMPATIBLE=fleet-1\nALLOW_UNSIGNED=0\n');
    expect(c.boot.STORES).toEqual(['mmcblk0']);
    expect(c.boot.TRIES).toBe(5);
    expect(c.node).toMatchObject({ KEYS_DIR: '/k', COMPATIBLE: 'fleet-1', ALLOW_UNSIGNED: false });
    expect(() => parseNodeConfig('TRIES=zero')).toThrow(/TRIES/);
    expect(() => parseNodeConfig('NOPE=1')).toThrow(/unknown boot config key NOPE/);
    expect(diffBootConfig(c.boot, makeBootConfig({ set: ['STORES=mmcblk0'] }))).toEqual([{ key: 'TRIES', node: '5', initramfs: '3' }]);
  });
});

describe('doctor', () => {
  it('reports missing modules, keys, a config mismatch and an unverifiable stack', async () => {
    const k = await keys(tmp);
    const good = await fakeBuild(path.join(tmp, 'good'), { version: '1', key: k.key, layers: [{ name: 'base', data: layerBytes(1000, 'b') }] });
    const broken = await fakeBuild(path.join(tmp, 'broken'), { version: '2', key: k.key, layers: [{ name: 'base', data: layerBytes(1000, 'b') }, { name: 'app', data: layerBytes(500, 'x') }] });
    const store = path.join(tmp, 'store');
    await stageStore(store, { slots: { a: { buildDir: good.dir, status: 'good' }, b: { buildDir: broken.dir, status: 'pending' } }, skipLayers: [broken.manifest.layers[1].digest] });
    const proc = path.join(tmp, 'proc');
    await fs.mkdir(proc);
    await fs.writeFile(path.join(proc, 'filesystems'), 'nodev\ttmpfs\n\text4\n\tsquashfs\n');
    await fs.writeFile(path.join(proc, 'modules'), 'loop 32768 0 - Live 0x0\n');
    const run = path.join(tmp, 'run');
    await fs.mkdir(path.join(run, 'stackboot'), { recursive: true });
    await fs.writeFile(path.join(run, 'stackboot', 'boot.conf'), 'STORES=vda\nTRIES=3\n');
    const config = parseNodeConfig(`STORES=vda\nTRIES=4\nKEYS_DIR=${k.keysDir}\n`);
    const r = await doctor({ ctx: await nodeContext({ store }), config, procDir: proc, runDir: run });
    const msgs = r.findings.map((f) => `${f.level} ${f.check} ${f.message}`);
    expect(r.ok).toBe(false);
    expect(msgs).toContainEqual(expect.stringMatching(/^fail kernel overlay filesystem not available/));
    expect(msgs).toContainEqual(expect.stringMatching(/^ok kernel squashfs/));
    expect(msgs).toContainEqual(expect.stringMatching(/^ok keys 1 public key/));
    expect(msgs).toContainEqual(expect.stringMatching(/^warn config TRIES: node config says "4", the initramfs was built with "3"/));
    expect(msgs).toContainEqual(expect.stringMatching(/^fail stack slot b \(pending .*unverifiable: app missing/));
    expect(msgs).toContainEqual(expect.stringMatching(/^ok stack slot a \(good .*node 1, 1 layers present/));
    // a bad signature on slot a and no keys
    await fs.writeFile(path.join(store, 'slots', 'a', 'manifest.sig'), (await fs.readFile(path.join(broken.dir, 'manifest.sig'), 'utf8')));
    const r2 = await doctor({ ctx: await nodeContext({ store }), config, procDir: proc, runDir: run });
    const slotA2 = r2.findings.filter((f) => f.check === 'stack' && /^slot a /.test(f.message));
    // one finding for the slot: the bad signature (not also an "ok" for its layers)
    expect(slotA2.map((f) => `${f.level} ${f.message}`)).toEqual([expect.stringMatching(/^fail slot a .*bad signature .*its layers are present$/)]);
    // a manifest that does not parse: one problem, not two
    const goodManifest = await fs.readFile(path.join(store, 'slots', 'a', 'manifest'), 'utf8');
    await fs.writeFile(path.join(store, 'slots', 'a', 'manifest'), 'garbage\n');
    const rg = await doctor({ ctx: await nodeContext({ store }), config, procDir: proc, runDir: run });
    expect(rg.findings.filter((f) => /^slot a /.test(f.message)).map((f) => `${f.level} ${f.message}`)).toEqual([expect.stringMatching(/^fail slot a \(good .*\): manifest does not parse: /)]);
    await fs.writeFile(path.join(store, 'slots', 'a', 'manifest'), goodManifest);
    // a torn slot line in the state: skipped as the hook skips it, and said
    const goodState = await fs.readFile(path.join(store, 'state'), 'utf8');
    await fs.writeFile(path.join(store, 'state'), goodState.replace(/^b pending ([0-9a-f]{20}).*$/m, 'b pending $1'));
    const rt = await doctor({ ctx: await nodeContext({ store }), config, procDir: proc, runDir: run });
    const mt = rt.findings.map((f) => `${f.level} ${f.check} ${f.message}`);
    expect(mt).toContainEqual('warn state state: slot b: bad stack id: line skipped (the slot reads as empty, as the hook reads it)');
    expect(mt.filter((m) => /slot b/.test(m) && m.startsWith('fail'))).toEqual([]);
    await fs.writeFile(path.join(store, 'state'), goodState);
    // a pending factory reset is said
    await fs.writeFile(path.join(store, 'reset'), 'stackboot-reset 1\nrequested 0 stackboot factory-reset\n');
    const rr = await doctor({ ctx: await nodeContext({ store }), config, procDir: proc, runDir: run });
    expect(rr.findings.map((f) => `${f.level} ${f.check} ${f.message}`)).toContainEqual('warn reset a factory reset is requested (stackboot factory-reset, 1970-01-01T00:00:00.000Z): the next boot wipes the disk uppers and the data partition (stackboot factory-reset --cancel undoes it)');
    await fs.rm(path.join(store, 'reset'));
    // a boot with stackboot.reset on its command line: said, in case the default entry has it
    await fs.writeFile(path.join(proc, 'cmdline'), 'console=ttyAMA0 stackboot.reset quiet\n');
    const rc = await doctor({ ctx: await nodeContext({ store }), config, procDir: proc, runDir: run });
    expect(rc.findings.filter((f) => f.check === 'reset').map((f) => f.message)).toEqual([expect.stringMatching(/^this boot ran with stackboot\.reset on the kernel command line .*every boot wipes/)]);
    await fs.writeFile(path.join(proc, 'cmdline'), 'console=ttyAMA0 quiet stackboot.resets stackboot.reset=0\n');
    const rn = await doctor({ ctx: await nodeContext({ store }), config, procDir: proc, runDir: run });
    expect(rn.findings.filter((f) => f.check === 'reset')).toEqual([]);
    await fs.rm(path.join(proc, 'cmdline'));
    // a private key among the public ones: the fleet's signing key on a node
    await fs.copyFile(k.key, path.join(k.keysDir, 'leaked.pub'));
    const rp = await doctor({ ctx: await nodeContext({ store }), config, procDir: proc, runDir: run });
    const mp = rp.findings.map((f) => `${f.level} ${f.check} ${f.message}`);
    expect(mp).toContainEqual(expect.stringMatching(/^fail keys .*leaked\.pub holds a private key/));
    expect(mp).toContainEqual(expect.stringMatching(/^ok keys 1 public key/));
    await fs.rm(path.join(k.keysDir, 'leaked.pub'));
    const r3 = await doctor({ ctx: null, config: parseNodeConfig(`KEYS_DIR=${path.join(tmp, 'nokeys')}\n`), procDir: proc, runDir: path.join(tmp, 'norun') });
    const m3 = r3.findings.map((f) => `${f.level} ${f.check} ${f.message}`);
    expect(m3).toContainEqual(expect.stringMatching(/^fail keys no keys directory/));
    expect(m3).toContainEqual(expect.stringMatching(/^warn config no .*boot.conf/));
    expect(m3).toContainEqual(expect.stringMatching(/^fail store no store: not booted/));
  });

  it('the watchdog: WATCHDOG= without a device, a stop_on_reboot that the kexec would obey, and an arming still running after mark-good', async () => {
    const d = path.join(tmp, 'wd');
    const run = path.join(d, 'run');
    const dev = path.join(d, 'dev');
    const sys = path.join(d, 'sys');
    await fs.mkdir(path.join(run, 'stackboot'), { recursive: true });
    await fs.mkdir(dev, { recursive: true });
    await fs.mkdir(path.join(sys, 'module/watchdog/parameters'), { recursive: true });
    await fs.writeFile(path.join(run, 'stackboot', 'boot.conf'), 'STORES=vda\nWATCHDOG=60\n');
    const config = parseNodeConfig('STORES=vda\nWATCHDOG=60\n');
    const findings = async () =>
      (await doctor({ ctx: null, config, procDir: path.join(d, 'proc'), runDir: run, devDir: dev, sysRoot: sys })).findings.filter((f) => f.check === 'watchdog').map((f) => `${f.level} ${f.message}`);
    expect(await findings()).toEqual([expect.stringMatching(/^warn WATCHDOG=60, but there is no \S+\/dev\/watchdog: the initrd loads no watchdog driver/)]);
    // a character device (/dev/null stands in), the core's default stop_on_reboot
    await fs.symlink('/dev/null', path.join(dev, 'watchdog'));
    await fs.writeFile(path.join(sys, 'module/watchdog/parameters/stop_on_reboot'), '-1\n');
    expect(await findings()).toEqual([expect.stringMatching(/^ok WATCHDOG=60: the hook arms/), expect.stringMatching(/^warn watchdog\.stop_on_reboot is -1: the kexec into a stack's own kernel may stop the watchdog/)]);
    await fs.writeFile(path.join(sys, 'module/watchdog/parameters/stop_on_reboot'), '0\n');
    // armed for a pending stack: fine; still armed after the stack is good: said
    const record = (status: string) => `slot=b\nstack=x\nstatus=${status}\nwatchdog=${path.join(dev, 'watchdog')}:60\n`;
    await fs.writeFile(path.join(run, 'stackboot', 'booted'), record('pending'));
    expect(await findings()).toEqual([expect.stringMatching(/^ok WATCHDOG=60/), 'ok armed by the hook for this boot: the pending stack has 60 s from the hand-over to be marked good']);
    await fs.writeFile(path.join(run, 'stackboot', 'booted'), record('good'));
    expect((await findings())[1]).toMatch(/^warn \S+ was armed by the hook for this boot and is still running though the stack is good: the board resets unless something feeds it/);
    // WATCHDOG=0 and nothing armed: nothing to say
    await fs.writeFile(path.join(run, 'stackboot', 'boot.conf'), 'STORES=vda\n');
    await fs.rm(path.join(run, 'stackboot', 'booted'));
    expect((await doctor({ ctx: null, config: parseNodeConfig('STORES=vda\n'), procDir: path.join(d, 'proc'), runDir: run, devDir: dev, sysRoot: sys })).findings.filter((f) => f.check === 'watchdog')).toEqual([]);
  });
});
