/**
 * The standalone initrd with verified boot (src/boot/standalone.ts verityRoot, pubKeys):
 * for each arch, dmsetup and openssl with their library closures from setup's
 * VERITY_ROOT, the dm-verity module with its dependencies, the keys under
 * /etc/stackboot/keys; on amd64 the packed openssl, run in a chroot of the unpacked
 * initrd, checks a real signature the way initramfs/verity.sh does. Prints the size the
 * verifier and dm-verity add (the bench note in docs/design.md).
 */
import { generateKeyPairSync, sign } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { makeBootConfig } from '../../src/boot/bootconfig.js';
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
    it(`${arch}: dmsetup, openssl and their libraries, dm-verity and the keys are in; what they add`, async () => {
      const t = await loadTarget(arch);
      expect(t.verityRoot, 'scripts/setup.sh makes VERITY_ROOT').toBeTruthy();
      const d = tmp();
      const k = await keyFiles(d);
      const base = { flavor: 'standalone' as const, arch, config: makeBootConfig(), mtime: 0 };
      const plain = await buildStandalone({ ...base, out: path.join(d, 'plain.img') });
      const v = await buildStandalone({ ...base, out: path.join(d, 'verity.img'), verityRoot: t.verityRoot, pubKeys: [k.pub] });
      expect(v.files).toEqual(expect.arrayContaining(['bin/dmsetup', 'bin/openssl', 'etc/stackboot/keys/release.pub']));
      expect(v.verity!.some((f) => /libcrypto\.so\.3$/.test(f))).toBe(true);
      expect(v.verity!.some((f) => /libdevmapper\.so/.test(f))).toBe(true);
      expect(v.modules).toEqual(expect.arrayContaining(['dm_verity', 'dm_mod']));
      expect(v.keys).toEqual(['etc/stackboot/keys/release.pub']);
      console.log(`${arch}: initrd ${plain.bytes} -> ${v.bytes} bytes with dmsetup+openssl+dm-verity (+${v.bytes! - plain.bytes!})`);
      // measured (gzip -9): amd64 +5.0 MB, arm64 +4.5 MB, most of it libcrypto (4.7 MB) and libc (1.9 MB)
      expect(v.bytes! - plain.bytes!).toBeLessThan(6 << 20);
    }, 120_000);
  }

  it('amd64: the packed openssl verifies a manifest signature in a chroot of the initrd, and refuses a flipped byte', async () => {
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
    const verify = () => run('chroot', [root, '/bin/openssl', 'pkeyutl', '-verify', '-pubin', '-inkey', '/etc/stackboot/keys/release.pub', '-rawin', '-in', '/manifest', '-sigfile', '/sig'], { reject: false });
    const ok = await verify();
    expect(ok.exitCode, ok.stderr).toBe(0);
    expect(ok.stdout).toMatch(/Signature Verified Successfully/);
    manifest[5] ^= 1;
    await fs.writeFile(path.join(root, 'manifest'), manifest);
    expect((await verify()).exitCode).not.toBe(0);
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
  it('dracut and initramfs-tools take dmsetup, openssl, base64 and dm-verity from the host, and the --pub keys', async () => {
    const { buildDracut } = await import('../../src/boot/dracut.js');
    const { buildInitramfsTools } = await import('../../src/boot/initramfs-tools.js');
    const d = tmp();
    const k = await keyFiles(d);
    const dr = await buildDracut({ flavor: 'dracut', out: path.join(d, 'dracut'), config: makeBootConfig(), pubKeys: [k.pub] });
    expect(dr.files).toContain('modules.d/90stackboot/keys/release.pub');
    const setup = await fs.readFile(path.join(d, 'dracut/modules.d/90stackboot/module-setup.sh'), 'utf8');
    expect(setup).toMatch(/inst_multiple -o .*\bdmsetup openssl base64\b/);
    expect(setup).toMatch(/instmods dm-verity/);
    const it = await buildInitramfsTools({ flavor: 'initramfs-tools', out: path.join(d, 'itools'), config: makeBootConfig(), pubKeys: [k.pub] });
    expect(it.files).toContain('keys/release.pub');
    const hook = await fs.readFile(path.join(d, 'itools/hooks/stackboot'), 'utf8');
    expect(hook).toMatch(/for sb_tool in .*dmsetup openssl base64/);
    expect(hook).toMatch(/manual_add_modules dm-verity/);
    await expect(buildDracut({ flavor: 'dracut', out: path.join(d, 'dracut2'), config: makeBootConfig(), pubKeys: [k.priv] })).rejects.toThrow(/holds a private key/);
  });
});
