import { promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { signManifestFile, verifyManifestFile, writeKeyPair, verifyWithKeyDir, parseSignature, signifyPublicKey, signifySignature } from '../../src/format/signature.js';
import { run } from '../../src/sys/exec.js';
import { tmpdir } from '../build/sources/tarfixture.js';

const tmp = (): Promise<string> => tmpdir('sb-sig-');

describe('signature (ed25519)', () => {
  it('signs and verifies a manifest; a changed byte or another key fails', async () => {
    const d = await tmp();
    const k1 = await writeKeyPair(path.join(d, 'k1'));
    const k2 = await writeKeyPair(path.join(d, 'k2'));
    expect((await fs.stat(k1.privateKey)).mode & 0o777).toBe(0o600);
    const man = path.join(d, 'manifest');
    await fs.writeFile(man, 'stackboot-manifest 1\nname x\n');
    await signManifestFile(man, k1.privateKey);
    await verifyManifestFile(man, k1.publicKey);
    await expect(verifyManifestFile(man, k2.publicKey)).rejects.toThrow(/bad signature/);
    await fs.appendFile(man, 'layer tampered\n');
    await expect(verifyManifestFile(man, k1.publicKey)).rejects.toThrow(/bad signature/);
  });

  it('verifies against a keys folder and says when none matches', async () => {
    const d = await tmp();
    const keys = path.join(d, 'keys');
    await fs.mkdir(keys);
    const k1 = await writeKeyPair(path.join(d, 'k1'));
    const k2 = await writeKeyPair(path.join(keys, 'other'));
    void k2;
    const man = path.join(d, 'manifest');
    await fs.writeFile(man, 'data');
    await signManifestFile(man, k1.privateKey);
    const sig = await fs.readFile(`${man}.sig`, 'utf8');
    await expect(verifyWithKeyDir(Buffer.from('data'), sig, keys)).rejects.toThrow(/does not match any key/);
    await fs.copyFile(k1.publicKey, path.join(keys, 'k1.pub'));
    expect(await verifyWithKeyDir(Buffer.from('data'), sig, keys)).toMatch(/k1\.pub$/);
    await expect(verifyWithKeyDir(Buffer.from('data'), sig, d + '/none')).rejects.toThrow(/cannot read keys directory/);
  });

  it('a key file that cannot be used neither blocks the others nor verifies, whatever the names sort', async () => {
    const d = await tmp();
    const k = await writeKeyPair(path.join(d, 'rel'));
    const other = await writeKeyPair(path.join(d, 'other'));
    const data = Buffer.from('manifest data');
    await fs.writeFile(path.join(d, 'm'), data);
    await signManifestFile(path.join(d, 'm'), k.privateKey);
    const sig = await fs.readFile(path.join(d, 'm.sig'), 'utf8');
    for (const [bad, good] of [['a-empty.pub', 'z-rel.pub'], ['z-empty.pub', 'a-rel.pub']]) {
      const keys = path.join(d, `keys-${bad}`);
      await fs.mkdir(keys);
      await fs.writeFile(path.join(keys, bad), '');
      await fs.copyFile(other.privateKey, path.join(keys, 'leaked.pub')); // a private key: never used
      await fs.copyFile(k.publicKey, path.join(keys, good));
      expect(await verifyWithKeyDir(data, sig, keys)).toBe(path.join(keys, good));
      // without the right key: refused, and the unusable files are named
      await fs.rm(path.join(keys, good));
      await fs.copyFile(other.publicKey, path.join(keys, 'other.pub'));
      const err = await verifyWithKeyDir(data, sig, keys).then(() => '', (e: Error) => e.message);
      expect(err).toMatch(/does not match any key in .*\(and 2 unusable key file\(s\): /);
      expect(err).toContain(`${bad} is not an ed25519 public key`);
      expect(err).toMatch(/leaked\.pub holds a private key/);
      await fs.rm(path.join(keys, 'other.pub'));
      await expect(verifyWithKeyDir(data, sig, keys)).rejects.toThrow(/no usable public key in /);
    }
    // a malformed signature is refused as such, before any key
    await expect(verifyWithKeyDir(data, 'not base64 !', path.join(d, 'keys-a-empty.pub'))).rejects.toThrow(/signature is not base64/);
  });

  it('keygen refuses a name without a file name (it would write hidden .key/.pub files)', async () => {
    const d = await tmp();
    for (const n of ['', `${d}/kk/`, `${d}/.`, `${d}/..`]) await expect(writeKeyPair(n)).rejects.toThrow(/has no file name/);
    expect((await fs.readdir(d)).filter((n) => n.startsWith('.'))).toEqual([]);
  });

  it('refuses an unsigned manifest, a malformed signature and a key that is not ed25519', async () => {
    const d = await tmp();
    const k = await writeKeyPair(path.join(d, 'k'));
    const man = path.join(d, 'manifest');
    await fs.writeFile(man, 'data');
    await expect(verifyManifestFile(man, k.publicKey)).rejects.toThrow(/no signature/);
    expect(() => parseSignature('not base64 !')).toThrow(/not base64/);
    expect(() => parseSignature(Buffer.alloc(10).toString('base64'))).toThrow(/64 bytes/);
    // a malformed signature file is named
    await fs.writeFile(`${man}.sig`, 'c2hvcnQ=\n');
    await expect(verifyManifestFile(man, k.publicKey)).rejects.toThrow(`${man}.sig: signature must be 64 bytes, got 5`);
    await fs.writeFile(path.join(d, 'bad.pub'), 'hello');
    await fs.writeFile(`${man}.sig`, Buffer.alloc(64).toString('base64'));
    await expect(verifyManifestFile(man, path.join(d, 'bad.pub'))).rejects.toThrow(/not an ed25519 public key/);
    await expect(writeKeyPair(path.join(d, 'k'))).rejects.toThrow(/exists already/);
  });

  it('refuses a private key where a public one belongs (node:crypto would derive the public half)', async () => {
    const d = await tmp();
    const k = await writeKeyPair(path.join(d, 'k'));
    const man = path.join(d, 'manifest');
    await fs.writeFile(man, 'data');
    await signManifestFile(man, k.privateKey);
    await expect(verifyManifestFile(man, k.privateKey)).rejects.toThrow(/holds a private key/);
    const keys = path.join(d, 'keys');
    await fs.mkdir(keys);
    await fs.copyFile(k.privateKey, path.join(keys, 'release.pub'));
    await expect(verifyWithKeyDir(Buffer.from('data'), await fs.readFile(`${man}.sig`, 'utf8'), keys)).rejects.toThrow(/release\.pub holds a private key/);
  });

  it("our keys and signatures in signify's form verify with the real signify-openbsd (the initrd's verifier); another key's or a changed byte do not", async () => {
    const d = await tmp();
    const k1 = await writeKeyPair(path.join(d, 'k1'));
    const k2 = await writeKeyPair(path.join(d, 'k2'));
    const man = path.join(d, 'manifest');
    await fs.writeFile(man, 'stackboot-manifest 1\nname x\n');
    await signManifestFile(man, k1.privateKey);
    await fs.writeFile(`${man}.signify`, signifySignature(await fs.readFile(`${man}.sig`, 'utf8')));
    for (const k of [k1, k2]) await fs.writeFile(k.publicKey.replace(/\.pub$/, '.signify'), await signifyPublicKey(k.publicKey));
    const verify = (key: string) => run('signify-openbsd', ['-V', '-q', '-p', key, '-x', `${man}.signify`, '-m', man], { reject: false });
    expect((await verify(path.join(d, 'k1.signify'))).exitCode).toBe(0);
    expect((await verify(path.join(d, 'k2.signify'))).exitCode).not.toBe(0);
    // the layout signify itself writes: a comment line, then base64 of "Ed", 8 bytes of key number, 32 of key
    await run('signify-openbsd', ['-G', '-n', '-p', path.join(d, 'own.pub'), '-s', path.join(d, 'own.sec')]);
    const line2 = (f: string) => fs.readFile(f, 'utf8').then((t) => Buffer.from(t.split('\n')[1]!, 'base64'));
    const [own, ours] = [await line2(path.join(d, 'own.pub')), await line2(path.join(d, 'k1.signify'))];
    expect(ours.length).toBe(own.length);
    expect(ours.subarray(0, 2)).toEqual(own.subarray(0, 2));
    await fs.appendFile(man, 'layer tampered\n');
    expect((await verify(path.join(d, 'k1.signify'))).exitCode).not.toBe(0);
  });
});
