/**
 * Pushing a build output (manifest, manifest.sig, layers/<sha256>.sqfs) as a stack
 * artifact (see artifact.ts): each blob is asked for first (HEAD) and skipped when the
 * repository has it, mounted from another repository of the same registry when one is
 * named and has it, else uploaded: in one PUT up to `chunkSize`, in PATCH chunks
 * beyond. The OCI manifest goes last, under the tag or digest of the reference; the
 * result names it by digest.
 */
import { createHash } from 'node:crypto';
import { createReadStream, promises as fs } from 'node:fs';
import path from 'node:path';
import { StackbootError, parsing } from '../sys/index.js';
import { DEFAULT_CHUNK_SIZES, chunkIndexBytes, chunkIndexName, chunkIndexRefs, deltaFileName, framesIndexName, framesRefs, parseFramesIndex, parseManifest, parseSignature, signBytes, stackId, type Manifest } from '../format/index.js';
import { readBody, registryError, type RegistryClient } from './client.js';
import { hasBlob } from './blob.js';
import { EMPTY_CONFIG, EMPTY_CONFIG_BYTES, OCI_MANIFEST_TYPE, ARTIFACT_TYPE, sha256Digest, stackArtifact, type DeltaBlob, type Descriptor } from './artifact.js';
import { formatReference, type Reference } from './reference.js';

export interface PushOptions {
  client: RegistryClient;
  ref: Reference;
  /** build output folder */
  buildDir: string;
  /**
   * layers not in the folder (a delta bundle's base): pushed only if the registry has them
   * already, else the push is refused naming them
   */
  absentLayers?: ReadonlySet<string>;
  /** sign the manifest now with this private key (else the build's manifest.sig) */
  key?: string;
  /** push without a signature (nodes install it only with ALLOW_UNSIGNED=1) */
  allowUnsigned?: boolean;
  /** another repository of the same registry to mount blobs from */
  mountFrom?: string;
  /** uploads bigger than this go in PATCH chunks of this size (default 64 MiB) */
  chunkSize?: number;
  arch?: string;
  onBlob?(ev: { digest: string; size: number; how: BlobOutcome; what: string }): void;
}

export type BlobOutcome = 'present' | 'mounted' | 'uploaded';

export interface PushResult {
  /** oci://host/repo[:tag]@sha256:… */
  reference: string;
  digest: string;
  stack: string;
  name: string;
  version: string;
  blobs: { what: string; digest: string; size: number; how: BlobOutcome }[];
  /** bytes uploaded (blobs and the manifest) */
  uploaded: number;
}

interface LocalBlob {
  what: string;
  desc: Descriptor;
  bytes?: Buffer;
  file?: string;
}

async function readBuild(o: PushOptions): Promise<{ manifest: Manifest; text: Buffer; sig: Buffer | null; indexes: Map<string, { file?: string; bytes?: Buffer }>; deltas: (DeltaBlob & { frames: string; delta: string })[] }> {
  const text = await fs.readFile(path.join(o.buildDir, 'manifest')).catch((e) => {
    throw new StackbootError('USAGE', `${o.buildDir} has no manifest (is it a build output?)`, { cause: e });
  });
  const manifest = parsing(path.join(o.buildDir, 'manifest'), () => parseManifest(text.toString('utf8')));
  let sig: Buffer | null;
  if (o.key) sig = Buffer.from(await signBytes(text, o.key));
  else {
    sig = await fs.readFile(path.join(o.buildDir, 'manifest.sig')).catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT' && o.allowUnsigned) return null;
      throw new StackbootError('SIGNATURE', `${o.buildDir}/manifest.sig is missing: sign the build (stackboot sign) or pass --key`, { cause: e });
    });
    if (sig) parsing(`${o.buildDir}/manifest.sig`, () => parseSignature(sig!.toString('utf8')));
  }
  for (const l of manifest.layers) {
    if (o.absentLayers?.has(l.digest)) continue;
    const st = await fs.stat(path.join(o.buildDir, 'layers', `${l.digest}.sqfs`)).catch(() => null);
    if (!st) throw new StackbootError('SOURCE', `layer ${l.name} (${l.digest.slice(0, 12)}) is missing from ${o.buildDir}/layers`);
    if (st.size !== l.size) throw new StackbootError('SOURCE', `layer ${l.name}: ${st.size} bytes in ${o.buildDir}, the manifest says ${l.size}`);
  }
  return { manifest, text, sig, indexes: await chunkIndexes(o, manifest), deltas: await frameDeltas(o, manifest) };
}

/**
 * The frame deltas of the layers whose frames index the manifest names and the build
 * output has (the index it names, and a delta file of the index's size): pushed as two
 * blobs a layer (the registry checks the delta file's sha256, the one the index names).
 * A folder without them (a bundle) pushes none: nodes then rebuild from chunks alone.
 */
async function frameDeltas(o: PushOptions, manifest: Manifest): Promise<(DeltaBlob & { frames: string; delta: string })[]> {
  const out: (DeltaBlob & { frames: string; delta: string })[] = [];
  for (const ref of framesRefs(manifest).values()) {
    const frames = path.join(o.buildDir, 'layers', framesIndexName(ref.layer));
    const delta = path.join(o.buildDir, 'layers', deltaFileName(ref.layer));
    const b = await fs.readFile(frames).catch(() => null);
    if (!b || b.length !== ref.size || createHash('sha256').update(b).digest('hex') !== ref.digest) continue;
    const ix = parsing(frames, () => parseFramesIndex(b));
    const st = await fs.stat(delta).catch(() => null);
    if (st?.size !== ix.deltaSize) continue;
    out.push({ layer: ref.layer, digest: ix.deltaDigest, size: ix.deltaSize, frames, delta });
  }
  return out;
}

/**
 * The chunk index of each layer the manifest names one for: its file in the build output,
 * or, where the folder lacks it (a bundle carries no indexes), cut again from the layer
 * (the index is a pure function of the layer's bytes; kept when it is the one the signed
 * manifest names). Neither: the registry must have it (a delta's base), as for layers.
 */
async function chunkIndexes(o: PushOptions, manifest: Manifest): Promise<Map<string, { file?: string; bytes?: Buffer }>> {
  const out = new Map<string, { file?: string; bytes?: Buffer }>();
  for (const ix of chunkIndexRefs(manifest).values()) {
    const name = manifest.layers.find((l) => l.digest === ix.layer)?.name ?? ix.layer.slice(0, 12);
    const file = path.join(o.buildDir, 'layers', chunkIndexName(ix.layer));
    const isIt = (b: Buffer) => b.length === ix.size && createHash('sha256').update(b).digest('hex') === ix.digest;
    const b = await fs.readFile(file).catch(() => null);
    if (b) {
      if (!isIt(b)) throw new StackbootError('SOURCE', `${file} is not the chunk index the manifest names for layer ${name}`);
      out.set(ix.layer, { file });
    } else if (!o.absentLayers?.has(ix.layer)) {
      const layer = path.join(o.buildDir, 'layers', `${ix.layer}.sqfs`);
      const again = await chunkIndexBytes(layer, DEFAULT_CHUNK_SIZES);
      if (!isIt(again)) throw new StackbootError('SOURCE', `the chunk index of layer ${name} is not in ${o.buildDir}/layers, and cutting the layer again with the default sizes gives another one: push the build output folder`);
      out.set(ix.layer, { bytes: again });
    }
  }
  return out;
}

/** Starts an upload (or mounts the blob: then null). */
async function startUpload(client: RegistryClient, repo: string, scope: string, digest: string, from?: string): Promise<string | null> {
  const q = from ? `?mount=${encodeURIComponent(digest)}&from=${encodeURIComponent(from)}` : '';
  const res = await client.send({ method: 'POST', path: `/v2/${repo}/blobs/uploads/${q}`, scope: from ? `${scope} repository:${from}:pull` : scope, headers: { 'Content-Length': '0' } });
  res.resume();
  if (res.statusCode === 201 && from) return null;
  if (res.statusCode !== 202 || !res.headers.location) throw await registryError(`start an upload to ${repo}`, res);
  return String(res.headers.location);
}

function withDigest(location: string, digest: string): string {
  return `${location}${location.includes('?') ? '&' : '?'}digest=${encodeURIComponent(digest)}`;
}

async function upload(client: RegistryClient, repo: string, scope: string, b: LocalBlob, location: string, chunkSize: number): Promise<void> {
  const what = `upload ${b.what} to ${repo}`;
  const body = (start: number, end: number) => (b.bytes ? b.bytes.subarray(start, end) : () => createReadStream(b.file!, { start, end: end - 1, highWaterMark: 1 << 20 }));
  if (b.desc.size <= chunkSize) {
    const res = await client.send({ method: 'PUT', path: withDigest(location, b.desc.digest), scope, headers: { 'Content-Type': 'application/octet-stream', 'Content-Length': String(b.desc.size) }, body: body(0, b.desc.size) });
    if (res.statusCode !== 201) throw await registryError(what, res);
    res.resume();
    return;
  }
  let loc = location;
  for (let off = 0; off < b.desc.size; off += chunkSize) {
    const end = Math.min(b.desc.size, off + chunkSize);
    const res = await client.send({
      method: 'PATCH',
      path: loc,
      scope,
      headers: { 'Content-Type': 'application/octet-stream', 'Content-Length': String(end - off), 'Content-Range': `${off}-${end - 1}` },
      body: body(off, end),
    });
    if (res.statusCode !== 202 || !res.headers.location) throw await registryError(`${what} (chunk at ${off})`, res);
    res.resume();
    loc = String(res.headers.location);
  }
  const res = await client.send({ method: 'PUT', path: withDigest(loc, b.desc.digest), scope, headers: { 'Content-Length': '0' } });
  if (res.statusCode !== 201) throw await registryError(`${what} (commit)`, res);
  res.resume();
}

export async function pushStack(o: PushOptions): Promise<PushResult> {
  const { client, ref } = o;
  const repo = ref.repository;
  const scope = `repository:${repo}:pull,push`;
  const { manifest, text, sig, indexes, deltas } = await readBuild(o);
  const artifact = stackArtifact(manifest, text, sig, o.arch, deltas);
  const framesOf = framesRefs(manifest);
  const layerName = (d: string) => manifest.layers.find((l) => l.digest === d)?.name ?? d.slice(0, 12);
  const digest = sha256Digest(artifact);
  if (ref.digest && ref.digest !== digest) throw new StackbootError('USAGE', `${formatReference(ref)}: the stack's artifact has the digest ${digest}: push to a tag, or to that digest`);
  const blobs: LocalBlob[] = [
    { what: 'config', desc: EMPTY_CONFIG, bytes: EMPTY_CONFIG_BYTES },
    { what: 'manifest', desc: { mediaType: '', digest: sha256Digest(text), size: text.length }, bytes: text },
    ...(sig ? [{ what: 'manifest.sig', desc: { mediaType: '', digest: sha256Digest(sig), size: sig.length }, bytes: sig }] : []),
    ...manifest.layers.map((l) => ({ what: `layer ${l.name}`, desc: { mediaType: '', digest: `sha256:${l.digest}`, size: l.size }, ...(o.absentLayers?.has(l.digest) ? {} : { file: path.join(o.buildDir, 'layers', `${l.digest}.sqfs`) }) })),
    ...[...chunkIndexRefs(manifest).values()].map((c) => ({ what: `chunk index of ${layerName(c.layer)}`, desc: { mediaType: '', digest: `sha256:${c.digest}`, size: c.size }, ...indexes.get(c.layer) })),
    ...deltas.flatMap((d) => [
      { what: `frames index of ${layerName(d.layer)}`, desc: { mediaType: '', digest: `sha256:${framesOf.get(d.layer)!.digest}`, size: framesOf.get(d.layer)!.size }, file: d.frames },
      { what: `delta file of ${layerName(d.layer)}`, desc: { mediaType: '', digest: `sha256:${d.digest}`, size: d.size }, file: d.delta },
    ]),
  ];
  const result: PushResult['blobs'] = [];
  let uploaded = 0;
  for (const b of blobs) {
    if (result.some((r) => r.digest === b.desc.digest)) continue;
    let how: BlobOutcome = 'present';
    if (!(await hasBlob(client, repo, b.desc.digest, scope))) {
      if (!b.file && !b.bytes) throw new StackbootError('MISSING_LAYERS', `${b.what} (${b.desc.digest.slice(7, 19)}) is neither in ${o.buildDir} (a delta bundle's base) nor in ${client.registry}/${repo}: push the base stack first, or a full bundle`);
      // a mount that the registry cannot do (the other repository lacks the blob) is
      // answered 202 with an upload opened instead: that upload is used
      const mount = o.mountFrom && o.mountFrom !== repo ? await startUpload(client, repo, scope, b.desc.digest, o.mountFrom) : undefined;
      if (mount === null) how = 'mounted';
      else {
        how = 'uploaded';
        const location = mount ?? (await startUpload(client, repo, scope, b.desc.digest));
        await upload(client, repo, scope, b, location!, o.chunkSize ?? 64 << 20);
        uploaded += b.desc.size;
      }
    }
    result.push({ what: b.what, digest: b.desc.digest, size: b.desc.size, how });
    o.onBlob?.({ digest: b.desc.digest, size: b.desc.size, how, what: b.what });
  }
  const target = ref.tag ?? digest;
  const res = await client.send({ method: 'PUT', path: `/v2/${repo}/manifests/${target}`, scope, headers: { 'Content-Type': OCI_MANIFEST_TYPE }, body: artifact });
  if (res.statusCode !== 201) {
    const e = await registryError(`${client.registry} refused the stack's manifest (${OCI_MANIFEST_TYPE}, artifactType ${ARTIFACT_TYPE}, empty config, stackboot layer media types)`, res);
    throw e;
  }
  const said = res.headers['docker-content-digest'];
  await readBody(res, 64 * 1024, 'manifest PUT answer').catch(() => null);
  if (said && said !== digest) throw new StackbootError('VERIFY', `${client.registry} stored the manifest as ${said}, not ${digest}: it rewrote the manifest`);
  uploaded += artifact.length;
  return { reference: formatReference({ ...ref, digest: null }, digest), digest, stack: stackId(text), name: manifest.name, version: manifest.version, blobs: result, uploaded };
}
