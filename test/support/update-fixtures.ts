/**
 * Fixtures for the update tests: fake build outputs (layers of random bytes: install
 * never mounts them), keys, and stores. Built by code, in a scratch folder.
 */
import { randomBytes, createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { serializeManifest, stackId, type Manifest } from '../../src/format/manifest.js';
import { generateKeyPair, signBytes } from '../../src/format/signature.js';

export interface FakeBuild {
  dir: string;
  manifest: Manifest;
  id: string;
  text: string;
}

export async function keys(dir: string, name = 'release'): Promise<{ key: string; pub: string; keysDir: string }> {
  await fs.mkdir(path.join(dir, 'keys'), { recursive: true });
  const kp = generateKeyPair();
  const key = path.join(dir, `${name}.key`);
  const pub = path.join(dir, 'keys', `${name}.pub`);
  await fs.writeFile(key, kp.privatePem, { mode: 0o600 });
  await fs.writeFile(pub, kp.publicPem);
  return { key, pub, keysDir: path.join(dir, 'keys') };
}

/** A layer file of `size` bytes: deterministic when `seed` is given. */
export function layerBytes(size: number, seed?: string): Buffer {
  if (!seed) return randomBytes(size);
  const out = Buffer.alloc(size);
  let block = createHash('sha256').update(seed).digest();
  for (let off = 0; off < size; off += 32) {
    block.copy(out, off, 0, Math.min(32, size - off));
    block = createHash('sha256').update(block).digest();
  }
  return out;
}

/** A build output: manifest, manifest.sig (when key), layers/<sha>.sqfs. */
export async function fakeBuild(
  dir: string,
  o: { version: string; layers: { name: string; data: Buffer }[]; compatible?: string; key?: string; compression?: string },
): Promise<FakeBuild> {
  await fs.mkdir(path.join(dir, 'layers'), { recursive: true });
  const layers = [];
  for (const l of o.layers) {
    const digest = createHash('sha256').update(l.data).digest('hex');
    await fs.writeFile(path.join(dir, 'layers', `${digest}.sqfs`), l.data);
    layers.push({ digest, size: l.data.length, name: l.name });
  }
  const manifest: Manifest = { name: 'node', version: o.version, compatible: o.compatible ?? 'test-node', created: 0, compression: o.compression ?? 'zstd', layers };
  const text = serializeManifest(manifest);
  await fs.writeFile(path.join(dir, 'manifest'), text);
  if (o.key) await fs.writeFile(path.join(dir, 'manifest.sig'), await signBytes(Buffer.from(text), o.key));
  return { dir, manifest, id: stackId(text), text };
}

export async function sha256Of(file: string): Promise<string> {
  return createHash('sha256').update(await fs.readFile(file)).digest('hex');
}
