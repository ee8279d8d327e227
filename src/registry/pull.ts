/**
 * Reading a stack from a registry: resolve the reference to an OCI manifest (size-
 * limited, its digest checked when asked by digest, and a tag given with a digest must
 * still point to it), then the text manifest and the signature blobs, each digest-
 * checked; the artifact must agree with the signed manifest (artifact.ts). `pullStack`
 * then writes a build output folder (each file through sys's durable writes: a temp name,
 * renamed only when whole and matching).
 */
import { createWriteStream, promises as fs } from 'node:fs';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { StackbootError, isTempName, makeDir, parsing, writeDurable, writeDurableFrom } from '../sys/index.js';
import { chunkIndexName, chunkIndexRefs, parseManifest, stackId, type Manifest } from '../format/index.js';
import { readBody, registryError, type RegistryClient } from './client.js';
import { blobStream, fetchSmallBlob, type BlobFetchOptions } from './blob.js';
import { OCI_MANIFEST_TYPE, checkArtifactMatches, parseStackArtifact, sha256Digest, type StackArtifact } from './artifact.js';
import { formatReference, manifestTarget, type Reference } from './reference.js';

export interface RemoteStack {
  ref: Reference;
  /** the OCI manifest's digest */
  digest: string;
  artifact: StackArtifact;
  manifestText: string;
  manifest: Manifest;
  stackId: string;
  sig: string | null;
}

const ACCEPT = `${OCI_MANIFEST_TYPE}, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json`;

async function tagDigest(client: RegistryClient, ref: Reference): Promise<string> {
  const res = await client.send({ method: 'HEAD', path: `/v2/${ref.repository}/manifests/${ref.tag}`, scope: `repository:${ref.repository}:pull`, headers: { Accept: ACCEPT } });
  res.resume();
  if (res.statusCode !== 200) throw await registryError(`${formatReference({ ...ref, digest: null })}`, res);
  const d = res.headers['docker-content-digest'];
  if (!d) throw new StackbootError('NETWORK', `${client.registry} does not say which digest the tag ${ref.tag} points to (no Docker-Content-Digest)`);
  return String(d);
}

/** The stack a reference names: OCI manifest, text manifest and signature, checked. */
export async function resolveStack(client: RegistryClient, ref: Reference): Promise<RemoteStack> {
  const name = formatReference(ref);
  if (ref.tag && ref.digest) {
    const now = await tagDigest(client, ref);
    if (now !== ref.digest) throw new StackbootError('VERIFY', `${name}: the tag ${ref.tag} now points to ${now}, not to the pinned ${ref.digest}: refused (the tag was moved)`);
  }
  const res = await client.send({ method: 'GET', path: `/v2/${ref.repository}/manifests/${manifestTarget(ref)}`, scope: `repository:${ref.repository}:pull`, headers: { Accept: ACCEPT } });
  if (res.statusCode !== 200) throw await registryError(name, res);
  const body = await readBody(res, client.maxManifestBytes, `${name}: the manifest`);
  const digest = sha256Digest(body);
  if (ref.digest && digest !== ref.digest) throw new StackbootError('VERIFY', `${name}: the registry sent a manifest whose digest is ${digest}: tampered or corrupt`);
  const said = res.headers['docker-content-digest'];
  if (!ref.digest && said && said !== digest) throw new StackbootError('VERIFY', `${name}: the registry says the manifest is ${said} but sent one whose digest is ${digest}: tampered or corrupt`);
  const artifact = parseStackArtifact(body, name);
  const text = (await fetchSmallBlob(client, ref.repository, artifact.manifest, `${name}: the text manifest`)).toString('utf8');
  const manifest = parsing(`${name}: manifest`, () => parseManifest(text));
  checkArtifactMatches(artifact, manifest, name);
  const sig = artifact.signature ? (await fetchSmallBlob(client, ref.repository, artifact.signature, `${name}: manifest.sig`)).toString('utf8') : null;
  return { ref, digest, artifact, manifestText: text, manifest, stackId: stackId(text), sig };
}

export interface PullResult {
  reference: string;
  digest: string;
  stack: string;
  dir: string;
  fetched: { name: string; digest: string; size: number }[];
  present: { name: string; digest: string; size: number }[];
  bytes: number;
}

async function sameSize(file: string, size: number): Promise<boolean> {
  const st = await fs.stat(file).catch(() => null);
  return !!st && st.size === size;
}

/**
 * A build output folder from a registry: manifest, manifest.sig, layers/ (with the chunk
 * indexes the stack carries, so the folder serves chunk deltas too). Layers already in
 * the folder with the right size are kept (a pull into a mirror fetches only what is
 * new); `out` must be new, empty or such a folder.
 */
export async function pullStack(client: RegistryClient, ref: Reference, out: string, o: BlobFetchOptions & { onLayer?(name: string, size: number): void } = {}): Promise<PullResult> {
  const names = await fs.readdir(out).catch(() => [] as string[]);
  const strange = names.filter((n) => !['manifest', 'manifest.sig', 'layers'].includes(n) && !isTempName(n));
  if (strange.length) throw new StackbootError('USAGE', `${out} is not empty and not a build output (${strange.slice(0, 3).join(', ')}): pull into a new folder`);
  const remote = await resolveStack(client, ref);
  await makeDir(path.join(out, 'layers'));
  const fetched: PullResult['fetched'] = [];
  const present: PullResult['present'] = [];
  for (const [i, l] of remote.manifest.layers.entries()) {
    const file = path.join(out, 'layers', `${l.digest}.sqfs`);
    if (await sameSize(file, l.size)) {
      present.push(l);
      continue;
    }
    o.onLayer?.(l.name, l.size);
    await writeDurableFrom(file, (tmp) => pipeline(blobStream(client, ref.repository, remote.artifact.layers[i], o), createWriteStream(tmp, { flags: 'wx' })));
    fetched.push(l);
  }
  const indexes = [...chunkIndexRefs(remote.manifest).values()];
  for (const c of remote.artifact.chunks) {
    // (checkArtifactMatches: every index of the artifact is one the signed manifest names)
    const ix = indexes.find((x) => `sha256:${x.digest}` === c.digest)!;
    const file = path.join(out, 'layers', chunkIndexName(ix.layer));
    if (await sameSize(file, c.size)) continue;
    await writeDurableFrom(file, (tmp) => pipeline(blobStream(client, remote.ref.repository, c, o), createWriteStream(tmp, { flags: 'wx' })));
  }
  // the frame deltas it carries, under their names (the descriptors' titles: <layer>.frames, <layer>.delta)
  for (const d of [...remote.artifact.frames, ...remote.artifact.deltas]) {
    const name = d.annotations?.['org.opencontainers.image.title'] ?? '';
    if (!/^[0-9a-f]{64}\.(frames|delta)$/.test(name)) continue;
    const file = path.join(out, 'layers', name);
    if (await sameSize(file, d.size)) continue;
    await writeDurableFrom(file, (tmp) => pipeline(blobStream(client, remote.ref.repository, d, o), createWriteStream(tmp, { flags: 'wx' })));
  }
  // manifest last: a folder with a manifest is a whole build output
  await fs.rm(path.join(out, 'manifest.sig'), { force: true });
  if (remote.sig !== null) await writeDurable(path.join(out, 'manifest.sig'), remote.sig);
  await writeDurable(path.join(out, 'manifest'), remote.manifestText);
  return { reference: formatReference({ ...ref, digest: null }, remote.digest), digest: remote.digest, stack: remote.stackId, dir: out, fetched, present, bytes: fetched.reduce((n, l) => n + l.size, 0) };
}
