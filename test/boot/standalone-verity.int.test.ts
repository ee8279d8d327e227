/**
 * The standalone initrd with verified boot (src/boot/standalone.ts verityRoot, pubKeys):
 * for each arch, dmsetup and signify-openbsd with their library closures from setup's
 * VERITY_ROOT, the dm-verity module with its dependencies, the keys under
 * /etc/stackboot/keys (PEM and signify's form); on amd64 the boot core's own functions,
 * run by the packed busybox in a chroot of the unpacked initrd, check a real signature
 * with the packed signify. Prints the size the verifier and dm-verity add (the bench
 * note in docs/design.md).
 */
import { generateKeyPairSync, sign } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { makeBootConfig } from '../../src/boot/bootconfig.js';
import { SB_LIB } from '../../src/boot/render.js';
import { buildStandalone } from '../../src/boot/standalone.js';
import { loadTarget } from '../../src/boot/target.js';
import { ARCHES } from '../../src/sys/arch.js';
import { run } from '../../src/sys/exec.js';
import { testTmp } from '../support/boot-fixtures.js';

const tmp = testTmp('sb-standalone-verity-');

async function keyFiles(dir: string) {
  const { publicKey, privateKey } = generateKeyPairSync('ed25519');
  const pub = path.join(dir, 'release.pub');
  const priv = path.join(dir, 'release.key');
  await fs.writeFile(pub, publicKey.export({ type: 'spki', format: 'pem' }));
  await fs.writeFile(priv, privateKey.export({ type: 'pkcs8', format: 'pem' }));
  return { pub, priv, privateKey };
}

async function unpack(initrd: string, dir: string): Promise<void> {
  await fs.mkdir(dir, { recursive: true });
  await run('cpio', ['-idm', '--quiet', '--no-absolute-filenames'], { input: zlib.gunzipSync(await fs.readFile(initrd)), cwd: dir });
}

describe('standalone initrd with verified boot', () => {
  for (const arch of ARCHES) {
    it(`${arch}: dmsetup, signify and their libraries, dm-verity and the keys are in; what they add`, async () => {
      const t = await loadTarget(arch);
      expect(t.verityRoot, 'scripts/setup.sh makes VERITY_ROOT').toBeTruthy();
      const d = tmp();
      const k = await keyFiles(d);
      const base = { flavor: 'standalone' as const, arch, config: makeBootConfig(), mtime: 0 };
      const plain = await buildStandalone({ ...base, out: path.join(d, 'plain.img') });
      const v = await buildStandalone({ ...base, out: path.join(d, 'verity.img'), verityRoot: t.verityRoot, pubKeys: [k.pub] });
      expect(v.files).toEqual(expect.arrayContaining(['bin/dmsetup', 'bin/signify-openbsd', 'etc/stackboot/keys/release.pub', 'etc/stackboot/keys/release.signify']));
      expect(v.files.some((f) => f.includes('openssl') || /libcrypto/.test(f))).toBe(false);
      expect(v.verity!.some((f) => /libbsd\.so/.test(f))).toBe(true);
      expect(v.verity!.some((f) => /libdevmapper\.so/.test(f))).toBe(true);
      expect(v.modules).toEqual(expect.arrayContaining(['dm_verity', 'dm_mod']));
      // the CPU's sha256 drivers ride along (Debian builds only the generic one in), and
      // /init does not load them at its start (the hook does, before the first table)
      const accel = arch === 'amd64' ? ['sha256_ssse3'] : ['sha2_ce', 'sha256_arm64'];
      expect(v.modules).toEqual(expect.arrayContaining(accel));
      expect(plain.modules.filter((m) => /^sha2/.test(m))).toEqual([]);
      const x = path.join(d, `x-${arch}`);
      await unpack(path.join(d, 'verity.img'), x);
      const initLoads = (await fs.readFile(path.join(x, 'init'), 'utf8')).split('\n').find((l) => l.startsWith('sb_load_modules'))!;
      expect(initLoads).toMatch(/\bdm_verity\b/);
      for (const m of accel) expect(initLoads).not.toMatch(new RegExp(`\\b${m}\\b`));
      expect(v.keys).toEqual(['etc/stackboot/keys/release.pub', 'etc/stackboot/keys/release.signify']);
      console.log(`${arch}: initrd ${plain.bytes} -> ${v.bytes} bytes with dmsetup+signify+dm-verity (+${v.bytes! - plain.bytes!})`);
      // measured (gzip -9): amd64 +2.5 MB, arm64 +2.2 MB: libc (1.9 MB uncompressed), dmsetup's
      // libraries and the dm modules; openssl in signify's place added 5.0 / 4.5 MB
      expect(v.bytes! - plain.bytes!).toBeLessThan(3 << 20);
    }, 120_000);
  }

  it("amd64: the boot core's own functions, run by the packed busybox in a chroot of the initrd, verify a signature with the packed signify, and refuse a flipped byte", async () => {
    const t = await loadTarget('amd64');
    const d = tmp();
    const k = await keyFiles(d);
    const out = path.join(d, 'verity.img');
    await buildStandalone({ flavor: 'standalone', out, arch: 'amd64', config: makeBootConfig(), mtime: 0, verityRoot: t.verityRoot, pubKeys: [k.pub] });
    const root = path.join(d, 'root');
    await unpack(out, root);
    const manifest = Buffer.from('stackboot-manifest 1\nname demo\n');
    await fs.writeFile(path.join(root, 'manifest'), manifest);
    await fs.writeFile(path.join(root, 'sig'), sign(null, manifest, k.privateKey));
    const script = `. ${SB_LIB}/verity.sh; rm -f /sig.signify; sb_signify_sig /sig && sb_sys_sig_verify /manifest /sig /etc/stackboot/keys/release.pub && echo VERIFIED`;
    const verify = () => run('chroot', [root, '/bin/sh', '-c', script], { reject: false, env: { PATH: '/bin:/sbin' } });
    const ok = await verify();
    expect(ok.stdout, ok.stderr).toContain('VERIFIED');
    expect(await fs.readFile(path.join(root, 'sig.signify'), 'utf8')).toMatch(/^untrusted comment: .*\n[A-Za-z0-9+/]{99}=\n$/);
    manifest[5] ^= 1;
    await fs.writeFile(path.join(root, 'manifest'), manifest);
    expect((await verify()).stdout).not.toContain('VERIFIED');
    const dm = await run('chroot', [root, '/bin/dmsetup', '--version'], { reject: false });
    expect(dm.stdout).toMatch(/Library version/);
  }, 120_000);

  it('refuses keys without a verifier, and a private key given as a public one', async () => {
    const t = await loadTarget('amd64');
    const d = tmp();
    const k = await keyFiles(d);
    const base = { flavor: 'standalone' as const, arch: 'amd64' as const, config: makeBootConfig(), mtime: 0, out: path.join(d, 'x.img') };
    await expect(buildStandalone({ ...base, pubKeys: [k.pub] })).rejects.toThrow(/public keys need a signature verifier in the initrd: give --verity-root/);
    await expect(buildStandalone({ ...base, verityRoot: t.verityRoot, pubKeys: [k.priv] })).rejects.toThrow(/holds a private key/);
  }, 120_000);
});

describe('the hook flavours with verified boot', () => {
  it('dracut and initramfs-tools take dmsetup, signify-openbsd or openssl, base64 and dm-verity from the host, and the --pub keys', async () => {
    const { buildDracut } = await import('../../src/boot/dracut.js');
    const { buildInitramfsTools } = await import('../../src/boot/initramfs-tools.js');
    const d = tmp();
    const k = await keyFiles(d);
    const dr = await buildDracut({ flavor: 'dracut', out: path.join(d, 'dracut'), config: makeBootConfig(), pubKeys: [k.pub] });
    expect(dr.files).toEqual(expect.arrayContaining(['modules.d/90stackboot/keys/release.pub', 'modules.d/90stackboot/keys/release.signify']));
    const setup = await fs.readFile(path.join(d, 'dracut/modules.d/90stackboot/module-setup.sh'), 'utf8');
    expect(setup).toMatch(/inst_multiple -o .*\bdmsetup signify-openbsd openssl base64\b/);
    expect(setup).toMatch(/keys\/\*\.pub "\$moddir"\/keys\/\*\.signify/);
    expect(setup).toMatch(/instmods dm-verity/);
    expect(setup).toMatch(/instmods sha256_ssse3 sha2_ce sha256_arm64 \|\| :/);
    const it = await buildInitramfsTools({ flavor: 'initramfs-tools', out: path.join(d, 'itools'), config: makeBootConfig(), pubKeys: [k.pub] });
    expect(it.files).toEqual(expect.arrayContaining(['keys/release.pub', 'keys/release.signify']));
    const hook = await fs.readFile(path.join(d, 'itools/hooks/stackboot'), 'utf8');
    expect(hook).toMatch(/for sb_tool in .*dmsetup signify-openbsd openssl base64/);
    expect(hook).toMatch(/keys\/\*\.pub "\$SB_SHARE"\/keys\/\*\.signify/);
    expect(hook).toMatch(/manual_add_modules dm-verity/);
    expect(hook).toMatch(/^manual_add_modules sha256_ssse3 sha2_ce sha256_arm64$/m);
    // its INSTALL installs the keys where the hook takes them from
    expect(await fs.readFile(path.join(d, 'itools/INSTALL'), 'utf8')).toMatch(/^  install -m 0644 keys\/\* \/usr\/share\/stackboot\/keys\/$/m);
    await expect(buildDracut({ flavor: 'dracut', out: path.join(d, 'dracut2'), config: makeBootConfig(), pubKeys: [k.priv] })).rejects.toThrow(/holds a private key/);
  });
});
