/**
 * ed25519 signatures over manifests (node:crypto). Keys are PEM files (PKCS#8 private,
 * SPKI public). The detached signature `manifest.sig` is one line of base64.
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, type KeyObject } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { parsing, StackbootError, makeDir, writeDurable } from '../sys/index.js';

export interface KeyPairFiles {
  privateKey: string;
  publicKey: string;
}

export function generateKeyPair(): { privatePem: string; publicPem: string } {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  return {
    privatePem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    publicPem: publicKey.export({ type: 'spki', format: 'pem' }).toString(),
  };
}

/** Writes `<base>.key` (mode 0600) and `<base>.pub`; refuses to overwrite. */
export async function writeKeyPair(base: string): Promise<KeyPairFiles> {
  // `keys/` or '' would make the hidden files keys/.key and keys/.pub
  const name = path.basename(base);
  if (base === '' || base.endsWith('/') || name === '.' || name === '..') {
    throw new StackbootError('USAGE', `key name ${JSON.stringify(base)} has no file name: give a path like keys/release (writes keys/release.key and .pub)`);
  }
  const { privatePem, publicPem } = generateKeyPair();
  const priv = `${base}.key`;
  const pub = `${base}.pub`;
  await makeDir(path.dirname(path.resolve(priv)));
  try {
    await fs.writeFile(priv, privatePem, { mode: 0o600, flag: 'wx' });
  } catch (e) {
    throw new StackbootError('IO', `cannot write ${priv}${(e as NodeJS.ErrnoException).code === 'EEXIST' ? ': it exists already' : ''}`, { cause: e });
  }
  try {
    await fs.writeFile(pub, publicPem, { flag: 'wx' });
  } catch (e) {
    await fs.rm(priv, { force: true });
    throw new StackbootError('IO', `cannot write ${pub}${(e as NodeJS.ErrnoException).code === 'EEXIST' ? ': it exists already' : ''}`, { cause: e });
  }
  return { privateKey: priv, publicKey: pub };
}

async function readKey(file: string, kind: 'private' | 'public'): Promise<KeyObject> {
  let pem: string;
  try {
    pem = await fs.readFile(file, 'utf8');
  } catch (e) {
    throw new StackbootError('SIGNATURE', `cannot read ${kind} key ${file}`, { cause: e });
  }
  // node:crypto would take a private key where a public one is asked for (it derives the
  // public half): on a node that means the fleet's signing key sits on every node
  if (kind === 'public' && /-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(pem)) {
    throw new StackbootError('SIGNATURE', `${file} holds a private key: verifying needs only the public half (<name>.pub from stackboot keygen), and a signing key must stay off the nodes`);
  }
  try {
    const k = kind === 'private' ? createPrivateKey(pem) : createPublicKey(pem);
    if (k.asymmetricKeyType !== 'ed25519') throw new Error(`key type is ${k.asymmetricKeyType}, not ed25519`);
    return k;
  } catch (e) {
    throw new StackbootError('SIGNATURE', `${file} is not an ed25519 ${kind} key`, { cause: e });
  }
}

export async function signBytes(data: Buffer, privateKeyFile: string): Promise<string> {
  const key = await readKey(privateKeyFile, 'private');
  return sign(null, data, key).toString('base64') + '\n';
}

export function parseSignature(sigText: string): Buffer {
  const t = sigText.trim();
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(t)) throw new StackbootError('SIGNATURE', 'signature is not base64');
  const b = Buffer.from(t, 'base64');
  if (b.length !== 64) throw new StackbootError('SIGNATURE', `signature must be 64 bytes, got ${b.length}`);
  return b;
}

/**
 * The public key of FILE in signify's format (signify-openbsd, the verifier of the
 * standalone initrd: docs/design.md, "Verified boot"): a comment line,
 * then the base64 of "Ed", an 8-byte key number and the 32-byte ed25519 key. The key
 * number is 0 for every key (the initrd tries each key in turn, and signify only wants
 * the signature's number to match the key's): the initrd turns a manifest.sig into
 * signify's form with the same number (initramfs/verity.sh).
 */
export async function signifyPublicKey(file: string): Promise<string> {
  const key = await readKey(file, 'public');
  const raw = Buffer.from(String(key.export({ format: 'jwk' }).x), 'base64url');
  return `untrusted comment: stackboot key ${path.basename(file)}\n${Buffer.concat([SIGNIFY_ED, raw]).toString('base64')}\n`;
}

/** "Ed" and a key number of 0: what precedes the key or signature in signify's files. */
export const SIGNIFY_ED = Buffer.concat([Buffer.from('Ed'), Buffer.alloc(8)]);

/** A signature (`manifest.sig`'s text) in signify's form, for a key made by signifyPublicKey. */
export function signifySignature(sigText: string): string {
  return `untrusted comment: stackboot signature\n${Buffer.concat([SIGNIFY_ED, parseSignature(sigText)]).toString('base64')}\n`;
}

/** Throws unless `file` holds an ed25519 public key (and not a private one). */
export async function checkPublicKey(file: string): Promise<void> {
  await readKey(file, 'public');
}

/** True when `sigText` is a valid signature of `data` by the key in `publicKeyFile`. */
export async function verifyBytes(data: Buffer, sigText: string, publicKeyFile: string): Promise<boolean> {
  const key = await readKey(publicKeyFile, 'public');
  return verify(null, data, key, parseSignature(sigText));
}

/** The public key files of a keys directory (`*.pub`), sorted. */
export async function listPublicKeys(dir: string): Promise<string[]> {
  let names: string[];
  try {
    names = await fs.readdir(dir);
  } catch (e) {
    throw new StackbootError('SIGNATURE', `cannot read keys directory ${dir}`, { cause: e });
  }
  return names.filter((n) => n.endsWith('.pub')).sort().map((n) => path.join(dir, n));
}

/**
 * Verifies against every key of a keys directory; returns the key that matched. A key
 * file that cannot be used (empty, not ed25519, a private key) never verifies anything
 * and does not stop the others from being tried: otherwise one damaged file would
 * refuse every update, or not, by the order of the names. It is named in the error when
 * no key matches (and `doctor` reports it).
 */
export async function verifyWithKeyDir(data: Buffer, sigText: string, dir: string): Promise<string> {
  const sig = parseSignature(sigText);
  const keys = await listPublicKeys(dir);
  if (keys.length === 0) throw new StackbootError('SIGNATURE', `no public keys (*.pub) in ${dir}`);
  const unusable: StackbootError[] = [];
  for (const k of keys) {
    let key: KeyObject;
    try {
      key = await readKey(k, 'public');
    } catch (e) {
      unusable.push(e as StackbootError);
      continue;
    }
    if (verify(null, data, key, sig)) return k;
  }
  if (unusable.length === keys.length) {
    throw new StackbootError('SIGNATURE', `no usable public key in ${dir}: ${unusable.map((e) => e.message).join('; ')}`, { cause: unusable[0] });
  }
  const also = unusable.length ? ` (and ${unusable.length} unusable key file(s): ${unusable.map((e) => e.message).join('; ')})` : '';
  throw new StackbootError('SIGNATURE', `signature does not match any key in ${dir}${also}`);
}

/** Signs a manifest file, writing `<manifest>.sig` next to it (atomically). */
export async function signManifestFile(manifestFile: string, privateKeyFile: string, sigFile = `${manifestFile}.sig`): Promise<string> {
  const data = await fs.readFile(manifestFile).catch((e) => {
    throw new StackbootError('IO', `cannot read ${manifestFile}`, { cause: e });
  });
  const sig = await signBytes(data, privateKeyFile);
  await writeDurable(sigFile, sig);
  return sigFile;
}

export async function verifyManifestFile(manifestFile: string, publicKeyFile: string, sigFile = `${manifestFile}.sig`): Promise<void> {
  const data = await fs.readFile(manifestFile).catch((e) => {
    throw new StackbootError('IO', `cannot read ${manifestFile}`, { cause: e });
  });
  const sig = await fs.readFile(sigFile, 'utf8').catch((e) => {
    throw new StackbootError('SIGNATURE', `no signature: cannot read ${sigFile}`, { cause: e });
  });
  parsing(sigFile, () => parseSignature(sig));
  const st = await fs.stat(publicKeyFile).catch(() => null);
  if (st?.isDirectory()) {
    await verifyWithKeyDir(data, sig, publicKeyFile);
    return;
  }
  if (!(await verifyBytes(data, sig, publicKeyFile))) throw new StackbootError('SIGNATURE', `bad signature: ${sigFile} does not match ${manifestFile} with key ${publicKeyFile}`);
}
