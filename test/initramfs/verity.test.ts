/**
 * Verified boot in the boot core (initramfs/verity.sh) under busybox sh with a fake root:
 * the manifest's signature is checked with the host's real signify-openbsd (the standalone
 * initrd's verifier) and, without the keys in signify's form, real openssl, against keys in a
 * keys folder before anything of the stack is used; a stack with verity lines has each
 * layer opened through dm-verity (the dmsetup/loop effects faked, their arguments
 * recorded); evil verity lines are refused with a clear log line and the node falls back
 * on the same boot, never a shell error.
 */
import { generateKeyPairSync, sign } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { verityTreeBytes } from '../../src/build/verity.js';
import { signifyPublicKey } from '../../src/format/signature.js';
import { LIB, fakeRoots, readEvents, readState, sha256, type FakeRoot, type Store } from './harness.js';
import { VERITY_HASH_MODULES } from '../../src/boot/modules.js';

const roots = fakeRoots();
const CONF = 'STORES=vda\n';
const ROOT = 'ab'.repeat(32);
const SALT = 'cd'.repeat(32);
/** layer files of 3 blocks: 2 of data, 1 of tree */
const LAYERS = (slot: string) => [
  { name: `base-${slot}`, size: 12288 },
  { name: `app-${slot}`, size: 12288 },
];

function oneStore(r: FakeRoot, verityOn: ('a' | 'b')[] = ['a', 'b']): Store {
  const store = r.makeStore('s1', { current: 'a', a: { status: 'good', layers: LAYERS('a') }, b: { status: 'pending', tries: 3, layers: LAYERS('b') } });
  r.addDisk('vda', [{ name: 'vda2', label: 'sb-store', store: store.dir }]);
  for (const slot of verityOn) rewrite(store, slot, (t) => t.replace(/^layer sha256:([0-9a-f]{64}) .*$/gm, (l, h: string) => `${l}\nverity ${h} ${ROOT} ${SALT} 8192 8192`));
  return store;
}

/** Rewrites SLOT's manifest and keeps the state's stack id in step (as an installer would). */
function rewrite(store: Store, slot: 'a' | 'b', f: (text: string) => string): void {
  const mf = join(store.dir, 'slots', slot, 'manifest');
  const text = f(readFileSync(mf, 'utf8'));
  writeFileSync(mf, text);
  const id = sha256(text);
  writeFileSync(join(store.dir, 'state'), readState(store).replace(store.stack[slot]!, id));
  store.stack[slot] = id;
}

/**
 * dm-verity present (or not); each device opened, mounted and closed recorded (one open
 * call for the stack, its spec lines in the record), FAKE_VERITY_FAIL=<device name part>
 * makes that device's mount fail, FAKE_VERITY_OPEN_FAIL=<part> the open of a stack with such a device.
 * (The specs come as a string of lines.)
 */
const verityFakes = (o: { noDm?: boolean; noVerifier?: boolean; failingOpenssl?: boolean } = {}) => `
sb_sys_has_dm_verity() { ${o.noDm ? 'return 1' : 'return 0'}; }
${o.noVerifier ? 'sb_sys_has_verifier() { return 1; }' : ''}
${o.failingOpenssl ? 'openssl() { echo "openssl called" >&2; return 1; }' : ''}
sb_sys_verity_open() {
	local l rc=0 IFS='
'
	for l in $1; do
		sb__rec "verity-open $l"
		[ -n "\${FAKE_VERITY_OPEN_FAIL-}" ] && case "$l" in *"$FAKE_VERITY_OPEN_FAIL"*) rc=1 ;; esac
	done
	return $rc
}
sb_sys_verity_mount() {
	sb__rec "verity-mount $*"
	[ -n "\${FAKE_VERITY_FAIL-}" ] && case "$1" in *"$FAKE_VERITY_FAIL"*) return 2 ;; esac
	return 0
}
sb_sys_verity_close() { sb__rec "verity-close $1"; return 0; }
`;

async function boot(r: FakeRoot, conf = CONF, env: Record<string, string> = {}, o: Parameters<typeof verityFakes>[0] = {}) {
  writeFileSync(join(r.dir, 'boot.conf'), conf);
  return r.sh(`${verityFakes(o)}
sb_config_load "$SB_T/boot.conf"
sb_boot "$SB_T/root"; rc=$?
echo "BOOT=$rc"`, { SB_KEYS: join(r.dir, 'keys'), ...env });
}

const failOf = (store: Store) => readEvents(store).find((e) => e.event === 'fail');

describe('dm-verity layers', () => {
  it('opens every layer of a stack with verity lines through dm-verity, with the manifest values', async () => {
    const r = roots();
    const store = oneStore(r);
    const res = await boot(r);
    expect(res.out).toContain('BOOT=0');
    expect(r.booted().slot).toBe('b');
    // one open for the whole stack (one dmsetup), then a mount per layer
    const dm = (h: string, n: number) => `sbv-b${n}-${h.slice(0, 12)}`;
    expect(r.calls().filter((c) => c.startsWith('verity-open'))).toEqual(
      store.layerHashes.b!.map((h, n) => `verity-open ${dm(h, n)} ${r.runDir}/sb/s0/layers/${h}.sqfs 8192 8192 ${ROOT} ${SALT}`),
    );
    expect(r.calls().filter((c) => c.startsWith('verity-mount'))).toEqual(store.layerHashes.b!.map((h, n) => `verity-mount ${dm(h, n)} ${r.runDir}/sb/l${n}`));
    expect(r.calls().filter((c) => c.startsWith('layer '))).toEqual([]);
    expect(r.calls().find((c) => c.includes('-t overlay'))).toContain(`lowerdir=${r.runDir}/sb/l1:${r.runDir}/sb/l0`);
    // the CPU's sha256 drivers are loaded (quietly: most refuse on a given CPU) before the
    // first table, so that dm-verity takes the best one, not the generic C one built in
    const c = r.calls();
    const hash = ['modprobe sha256_ssse3', 'modprobe sha2_ce', 'modprobe sha256_arm64'];
    expect(c.filter((x) => hash.includes(x))).toEqual(hash);
    expect(c.indexOf('modprobe sha256_arm64')).toBeLessThan(c.findIndex((x) => x.startsWith('verity-open')));
    expect(res.err).not.toMatch(/sha256_ssse3|sha2_ce|sha256_arm64/);
  });

  it('a layer that fails dm-verity at mount fails the stack; the node falls back on the same boot and the event names the layer', async () => {
    const r = roots();
    const store = oneStore(r);
    const res = await boot(r, CONF, { FAKE_VERITY_FAIL: store.layerHashes.b![1]!.slice(0, 12) });
    expect(res.out).toContain('BOOT=0');
    expect(r.booted().slot).toBe('a');
    expect(failOf(store)!.reason).toMatch(/layer app-b \([0-9a-f]{12}\) fails dm-verity at mount: a block does not match the signed root hash/);
    expect(readState(store)).toMatch(/^b bad /m);
    // what was opened is closed again before the fallback: the mounted layer first, then every device
    const c = r.calls();
    const closes = store.layerHashes.b!.map((h, n) => c.indexOf(`verity-close sbv-b${n}-${h.slice(0, 12)}`));
    expect(closes.every((i) => i >= 0)).toBe(true);
    expect(c.indexOf(`umount ${r.runDir}/sb/l0`)).toBeGreaterThanOrEqual(0);
    expect(c.indexOf(`umount ${r.runDir}/sb/l0`)).toBeLessThan(Math.min(...closes));
  });

  it('verity devices that cannot be opened: the machine failed, not the stack (not marked bad), nothing mounted', async () => {
    const r = roots();
    const store = oneStore(r);
    const res = await boot(r, CONF, { FAKE_VERITY_OPEN_FAIL: 'sbv-b' });
    expect(res.out).toContain('BOOT=0');
    expect(r.booted().slot).toBe('a');
    expect(failOf(store)!.reason).toMatch(/cannot open the layers through dm-verity \(not marked bad\)/);
    expect(readState(store)).not.toMatch(/^b bad /m);
    expect(r.calls().filter((c) => c.startsWith('verity-mount') && c.includes(' sbv-b'))).toEqual([]);
  });

  it('a stack without verity lines, a kernel without dm-verity, or VERIFY=size: layers by size, plain loop mounts', async () => {
    for (const [verityOn, conf, o, log] of [
      [['a'], CONF, {}, /the stack has no verity data: checking its layers by size/],
      [['a', 'b'], CONF, { noDm: true }, /VERIFY=verity but this kernel or initrd has no dm-verity/],
      [['a', 'b'], `${CONF}VERIFY=size\n`, {}, null],
    ] as const) {
      const r = roots();
      oneStore(r, [...verityOn]);
      const res = await boot(r, conf, {}, o);
      expect(res.out).toContain('BOOT=0');
      expect(r.booted().slot).toBe('b');
      expect(r.calls().filter((c) => c.startsWith('verity-mount'))).toEqual([]);
      expect(r.calls().filter((c) => c.startsWith('layer '))).toHaveLength(2);
      // no dm-verity here: its sha256 drivers are not loaded for nothing
      if ('noDm' in o) expect(r.calls().filter((c) => /^modprobe sha/.test(c))).toEqual([]);
      if (log) expect(res.err).toMatch(log);
    }
  });

  it('computes the tree size as the build does', async () => {
    const r = roots();
    const sizes = [4096, 8192, 128 * 4096, 129 * 4096, 16385 * 4096, 262144 * 4096 * 5];
    const res = await r.sh(`for s in ${sizes.join(' ')}; do sb_verity_tree_bytes $s; done`);
    expect(res.out.trim().split('\n').map(Number)).toEqual(sizes.map(verityTreeBytes));
  });
});

describe('evil verity lines: refused with a clear log line, fallback, no shell error', () => {
  it.each([
    ['a root hash of the wrong length', (t: string) => t.replace(` ${ROOT} `, ` ${ROOT.slice(2)} `), /verity root hash of layer [0-9a-f]{12} is not 64 hex characters \(62\)/],
    ['a hash offset past the end of the file', (t: string) => t.replace(/ 8192 8192$/m, ' 8192 12288'), /its verity hash tree \(offset 12288, ending at 16384\) is past the end of the 12288-byte file/],
    ['a data size not a multiple of the block size', (t: string) => t.replace(/ 8192 8192$/m, ' 8000 8192'), /verity data size of layer [0-9a-f]{12} is not a positive multiple of 4096/],
    ['a hash offset inside the data', (t: string) => t.replace(/ 8192 8192$/m, ' 8192 4096'), /verity hash offset of layer [0-9a-f]{12} is not a multiple of 4096 at or past its data/],
    ['a size of 20 digits (past shell arithmetic)', (t: string) => t.replace(/ 8192 8192$/m, ' 8192 99999999999999999999'), /verity hash offset of layer/],
    ['a size with a leading zero (not octal)', (t: string) => t.replace(/ 8192 8192$/m, ' 08192 8192'), null],
    ['a salt with a non-hex character', (t: string) => t.replace(` ${SALT} `, ` ${SALT.slice(1)}z `), /verity salt of layer [0-9a-f]{12} is not 2 to 256 hex characters/],
    ['a missing field', (t: string) => t.replace(/ 8192 8192$/m, ' 8192'), /malformed verity line for layer/],
    ['a layer without a verity line', (t: string) => t.replace(/^verity .*\n(?![\s\S]*^verity )/m, ''), /layer app-b \([0-9a-f]{12}\) has no verity line/],
  ])('%s', async (_what, edit, re) => {
    const r = roots();
    const store = oneStore(r);
    rewrite(store, 'b', edit);
    const res = await boot(r);
    expect(res.out).toContain('BOOT=0');
    if (re === null) {
      expect(r.booted().slot).toBe('b');
      expect(r.calls().find((c) => c.startsWith('verity-open'))).toContain(' 8192 8192 ');
      return;
    }
    expect(r.booted().slot).toBe('a');
    expect(failOf(store)!.reason).toMatch(re);
    expect(res.err).toMatch(re);
    expect(res.err).not.toMatch(/arithmetic|syntax error|bad number|not found/i);
    // nothing of the refused stack was opened; the fallback's layers were
    expect(r.calls().filter((c) => c.startsWith('verity-mount') && c.includes(' sbv-b'))).toEqual([]);
    expect(r.calls().filter((c) => c.startsWith('verity-mount') && c.includes(' sbv-a'))).toHaveLength(2);
  });
});

describe.each(['signify', 'openssl'] as const)('manifest signatures (%s)', (verifier) => {
  const keys = () => generateKeyPairSync('ed25519');
  /** the keys as `stackboot initramfs --pub` puts them in an initrd (with openssl: only the PEM files) */
  async function withKeys(r: FakeRoot, pubs: string[]): Promise<void> {
    mkdirSync(join(r.dir, 'keys'), { recursive: true });
    for (const [i, p] of pubs.entries()) {
      const f = join(r.dir, 'keys', `k${i}.pub`);
      writeFileSync(f, p);
      if (verifier === 'signify') writeFileSync(f.replace(/\.pub$/, '.signify'), await signifyPublicKey(f));
    }
  }
  /** with signify, an openssl that fails: a verified signature is signify's */
  const bootWith = (r: FakeRoot, conf = CONF, o: Parameters<typeof verityFakes>[0] = {}) => boot(r, conf, {}, { ...o, failingOpenssl: verifier === 'signify' });
  function signSlot(store: Store, slot: 'a' | 'b', key: ReturnType<typeof keys>['privateKey']): void {
    const mf = join(store.dir, 'slots', slot, 'manifest');
    writeFileSync(`${mf}.sig`, sign(null, readFileSync(mf), key).toString('base64') + '\n');
  }
  const pem = (k: ReturnType<typeof keys>) => k.publicKey.export({ type: 'spki', format: 'pem' }).toString();

  it('a manifest signed by a key of the initrd (the second key) boots, and the log says which key', async () => {
    const r = roots();
    const store = oneStore(r);
    const [other, mine] = [keys(), keys()];
    await withKeys(r, [pem(other), pem(mine)]);
    signSlot(store, 'a', mine.privateKey);
    signSlot(store, 'b', mine.privateKey);
    const res = await bootWith(r);
    expect(res.out).toContain('BOOT=0');
    expect(r.booted().slot).toBe('b');
    expect(res.err).toMatch(/manifest signature verified with k1.pub/);
    if (verifier === 'signify') expect(res.err).not.toMatch(/openssl called/);
  });

  it.each([
    ['a flipped byte in the manifest (state rewritten to match)', 'manifest', /manifest signature does not verify with any key of this initrd/],
    ['a flipped byte in the signature', 'sig', /manifest signature does not verify with any key of this initrd/],
    ['no signature', 'nosig', /manifest is not signed \(no manifest.sig\)/],
    ['a signature that is not 64 bytes', 'short', /manifest.sig is not the base64 of a 64-byte ed25519 signature/],
    ['a signature by another key', 'otherkey', /manifest signature does not verify with any key of this initrd/],
  ])('%s: refused before any layer is opened, fallback on the same boot', async (_what, how, re) => {
    const r = roots();
    const store = oneStore(r);
    const k = keys();
    await withKeys(r, [pem(k)]);
    signSlot(store, 'a', k.privateKey);
    signSlot(store, 'b', how === 'otherkey' ? keys().privateKey : k.privateKey);
    const sigFile = join(store.dir, 'slots', 'b', 'manifest.sig');
    if (how === 'manifest') {
      const sig = readFileSync(sigFile);
      rewrite(store, 'b', (t) => t.replace('name demo-b', 'name demo-c'));
      writeFileSync(sigFile, sig);
    }
    if (how === 'sig') {
      const raw = Buffer.from(readFileSync(sigFile, 'utf8'), 'base64');
      raw[10] ^= 1;
      writeFileSync(sigFile, raw.toString('base64') + '\n');
    }
    if (how === 'nosig') writeFileSync(sigFile, '');
    if (how === 'short') writeFileSync(sigFile, Buffer.alloc(32, 1).toString('base64') + '\n');
    const res = await bootWith(r);
    expect(res.out).toContain('BOOT=0');
    expect(r.booted().slot).toBe('a');
    expect(failOf(store)!.reason).toMatch(re);
    expect(readState(store)).toMatch(/^b bad /m);
    expect(r.calls().filter((c) => c.startsWith('verity-mount') && c.includes('sbv-b'))).toEqual([]);
  });

  it('ALLOW_UNSIGNED=1 boots an unsigned manifest and says so in the log', async () => {
    const r = roots();
    oneStore(r);
    await withKeys(r, [pem(keys())]);
    const res = await bootWith(r, `${CONF}ALLOW_UNSIGNED=1\n`);
    expect(res.out).toContain('BOOT=0');
    expect(r.booted().slot).toBe('b');
    expect(res.err).toMatch(/ALLOW_UNSIGNED=1 \(development only\): booting anyway: manifest is not signed/);
    expect(readFileSync(join(r.dir, 'kmsg'), 'utf8')).toMatch(/ALLOW_UNSIGNED=1/);
  });

  it('keys but no verifier in the initrd: no stack boots, and none is marked bad (the machine is at fault)', async () => {
    const r = roots();
    const store = oneStore(r);
    const k = keys();
    await withKeys(r, [pem(k)]);
    signSlot(store, 'a', k.privateKey);
    signSlot(store, 'b', k.privateKey);
    const res = await bootWith(r, CONF, { noVerifier: true });
    expect(res.out).toContain('BOOT=1');
    expect(failOf(store)!.reason).toMatch(/no signature verifier \(signify-openbsd or openssl\).*not marked bad/);
    expect(readState(store)).not.toMatch(/ bad /);
  });

  it('an initrd without keys checks no signature and says so once', async () => {
    const r = roots();
    oneStore(r);
    const res = await bootWith(r);
    expect(res.out).toContain('BOOT=0');
    expect(res.err.match(/no keys in this initrd/g)).toHaveLength(1);
  });
});

describe('loop devices for the verity layers (sb_sys_loop_attach)', () => {
  /** A sysfs with loop0..loop<n-1>, those in BOUND with their `loop` folder; losetup recorded, FAKE_LOSETUP_FAIL=<dev> refuses that device. */
  async function attach(bound: number[], n: number, env: Record<string, string> = {}) {
    const r = roots();
    for (let i = 0; i < n; i++) mkdirSync(join(r.dir, 'sys/class/block', `loop${i}`, ...(bound.includes(i) ? ['loop'] : [])), { recursive: true });
    const res = await r.sh(`
losetup() {
	sb__rec "losetup $*"
	if [ "$1" = -f ]; then echo "$SB_DEV/loop-new"; return 0; fi
	case " \${FAKE_LOSETUP_FAIL-} " in *" \${2##*/} "*) return 1 ;; esac
	return 0
}
sb_sys_loop_attach /store/layers/x.sqfs; echo "RC=$? LOOP=\${SB_LOOP#$SB_DEV/}"`, env);
    return { out: res.out, calls: r.calls(), dev: join(r.dir, 'dev') };
  }

  it('takes the first device sysfs shows unbound: one losetup run', async () => {
    const a = await attach([0, 1], 4);
    expect(a.out).toContain('RC=0 LOOP=loop2');
    expect(a.calls).toEqual([`losetup -r ${a.dev}/loop2 /store/layers/x.sqfs`]);
  });

  it('every device bound, or none made yet: asks losetup -f, which can make one', async () => {
    for (const a of [await attach([0, 1], 2), await attach([], 0)]) {
      expect(a.out).toContain('RC=0 LOOP=loop-new');
      expect(a.calls).toEqual(['losetup -f', `losetup -r ${a.dev}/loop-new /store/layers/x.sqfs`]);
    }
  });

  it('the free device found cannot be bound (taken meanwhile): losetup -f instead; both failing is a failure', async () => {
    const a = await attach([], 2, { FAKE_LOSETUP_FAIL: 'loop0' });
    expect(a.out).toContain('RC=0 LOOP=loop-new');
    expect(a.calls).toEqual([`losetup -r ${a.dev}/loop0 /store/layers/x.sqfs`, 'losetup -f', `losetup -r ${a.dev}/loop-new /store/layers/x.sqfs`]);
    const b = await attach([], 2, { FAKE_LOSETUP_FAIL: 'loop0 loop-new' });
    expect(b.out).toMatch(/RC=1 /);
  });
});

describe('the verity lines of a manifest (sb_manifest_verity)', () => {
  const H1 = '11'.repeat(32);
  const H2 = '22'.repeat(32);
  const H3 = '33'.repeat(32);
  async function lookup(manifest: string, hashes: string[]) {
    const r = roots();
    writeFileSync(join(r.dir, 'm'), manifest);
    const res = await r.sh(
      hashes.map((h) => `sb_manifest_verity "$SB_T/m" ${h}; echo "${h.slice(0, 2)} rc=$? $SB_V_ROOT $SB_V_SALT $SB_V_DATA $SB_V_OFF [$SB_MANIFEST_WHY]"`).join('\n'),
    );
    return res.out.trim().split('\n');
  }

  it('finds each layer line in one pass: spaces and tabs as `read` splits them, the last line without a newline, the first line for a layer wins', async () => {
    const m = [`layer sha256:${H1} 8192 base`, `verity\t${H1}  ${ROOT}\t${SALT} 08192 8192`, `verity ${H2} ${'x'.repeat(64)} ${SALT} 4096 4096`, `verity ${H1} ${ROOT} ${SALT} 4096 4096`, `verity ${H3} ${ROOT} ${SALT} 4096 12288`].join('\n');
    expect(await lookup(m, [H1, H2, H3, 'ff'.repeat(32)])).toEqual([
      `11 rc=0 ${ROOT} ${SALT} 8192 8192 []`,
      `22 rc=2     [manifest: verity root hash of layer 222222222222 is not 64 hex characters (64)]`,
      `33 rc=0 ${ROOT} ${SALT} 4096 12288 []`,
      'ff rc=1     []',
    ]);
  });

  it('a line with a field missing or one too many, or a glob in it, is malformed, never expanded', async () => {
    const m = [`verity ${H1} ${ROOT} ${SALT} 4096`, `verity ${H2} ${ROOT} ${SALT} 4096 4096 extra`, `verity ${H3} * ${SALT} 4096 4096`, ''].join('\n');
    const out = await lookup(m, [H1, H2, H3]);
    expect(out[0]).toMatch(/^11 rc=2 .*malformed verity line for layer 111111111111/);
    expect(out[1]).toMatch(/^22 rc=2 .*malformed verity line for layer 222222222222/);
    expect(out[2]).toMatch(/^33 rc=2 .*root hash of layer 333333333333 is not 64 hex characters \(1\)/);
  });
});

describe('the dm-verity table of a stack (sb_sys_verity_open)', () => {
  it('binds each layer to a loop device and creates every device with one dmsetup call, the table in 512-byte sectors and 4096-byte blocks', async () => {
    const r = roots();
    for (let i = 0; i < 3; i++) mkdirSync(join(r.dir, 'sys/class/block', `loop${i}`), { recursive: true });
    const res = await r.sh(`
losetup() { sb__rec "losetup $*"; mkdir -p "$SB_SYS_BLOCK/\${2##*/}/loop"; }
dmsetup() { sb__rec "dmsetup $*"; }
mkdir -p "$SB_RUN/sb"
specs="n0 /s/layers/a.sqfs 8192 8192 ${ROOT} ${SALT}
n1 /s/layers/b.sqfs 40960 45056 ${ROOT} ${SALT}
"
sb_sys_verity_open "$specs"; echo "RC=$?"`);
    expect(res.out).toContain('RC=0');
    const dev = join(r.dir, 'dev');
    expect(r.calls()).toEqual([
      `losetup -r ${dev}/loop0 /s/layers/a.sqfs`,
      `losetup -r ${dev}/loop1 /s/layers/b.sqfs`,
      `dmsetup create --noudevsync --concise n0,,,ro,0 16 verity 1 ${dev}/loop0 ${dev}/loop0 4096 4096 2 2 sha256 ${ROOT} ${SALT};n1,,,ro,0 80 verity 1 ${dev}/loop1 ${dev}/loop1 4096 4096 10 11 sha256 ${ROOT} ${SALT}`,
      // no /dev/mapper node made by the fake: dmsetup mknodes, as without udev
      'dmsetup mknodes n0',
      'dmsetup mknodes n1',
    ]);
  });

  it('a loop device that cannot be bound: what was bound is freed, no dmsetup create', async () => {
    const r = roots();
    const res = await r.sh(`
losetup() { sb__rec "losetup $*"; case "$*" in *b.sqfs*) return 1 ;; -f) echo "$SB_DEV/loop9" ;; esac; return 0; }
dmsetup() { sb__rec "dmsetup $*"; }
mkdir -p "$SB_RUN/sb"
sb_sys_verity_open "n0 /s/a.sqfs 4096 4096 ${ROOT} ${SALT}
n1 /s/b.sqfs 4096 4096 ${ROOT} ${SALT}"; echo "RC=$?"`);
    expect(res.out).toContain('RC=1');
    expect(r.calls().filter((c) => c.startsWith('dmsetup create'))).toEqual([]);
    expect(r.calls()).toContain('dmsetup remove n0');
    expect(r.calls()).toContain(`losetup -d ${join(r.dir, 'dev')}/loop9`);
  });
});

describe('sha256 drivers for dm-verity', () => {
  it('the hook loads the same list the flavours ship (src/boot/modules.ts VERITY_HASH_MODULES)', () => {
    const sh = readFileSync(join(LIB, 'verity.sh'), 'utf8');
    const loop = /^sb_sys_hash_accel\(\) \{[\s\S]*?\n\tfor m in ([^;]+); do/m.exec(sh);
    expect(loop, 'sb_sys_hash_accel loops over the module names').not.toBeNull();
    expect(loop![1]!.trim().split(/\s+/)).toEqual([...VERITY_HASH_MODULES]);
  });
});
