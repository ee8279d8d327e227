/**
 * A registry stack as the source of a node's install. The order is the point:
 *
 *   1. resolve the reference; fetch the OCI manifest, the text manifest and the
 *      signature (pull.ts);
 *   2. verify the signature against the node's keys BEFORE any layer is asked for
 *      (unless the node allows unsigned stacks);
 *   3. the layers the store lacks (missing, or of the wrong size: what install writes)
 *      are the only ones fetched; with `chunks`, a lacking layer whose chunk index the
 *      stack carries is left out of the stream instead (`chunked`): the install rebuilds
 *      it from the store's chunks and fetches the others from the layer's blob with
 *      Range requests (node/chunk-source.ts registryChunkSource);
 *   4. a delta bundle stream (format/bundle.ts: manifest, manifest.sig, contents, then
 *      the missing layers, each streamed from the registry, resumed, sha256-checked)
 *      goes to the existing install, so every install check and the power-cut-safe
 *      order apply unchanged. A dry run's stream stops after the contents: no layer
 *      byte crosses the wire.
 *
 * A layer that fails (a blob whose sha256 is wrong, a link that stays down) is not ended
 * by destroying the stream: the bundle reader would leave the layer's temp file open and
 * in the store. Its entry is filled up with zeros instead and the bundle ended, so the
 * install's own sha256 check refuses it and removes its temp file; `failure` keeps the
 * registry's reason (callers report it: `installError`).
 */
import { promises as fs } from 'node:fs';
import { PassThrough, Readable } from 'node:stream';
import { StackbootError } from '../sys/index.js';
import { TarWriter, chunkIndexRefs, verifyWithKeyDir, type LayerRef, type Store } from '../format/index.js';
import type { RegistryClient } from './client.js';
import { blobStream, type BlobFetchOptions } from './blob.js';
import { resolveStack, type RemoteStack } from './pull.js';
import { formatReference, type Reference } from './reference.js';

export interface RegistrySourceOptions extends BlobFetchOptions {
  client: RegistryClient;
  ref: Reference;
  store: Store;
  keysDir: string;
  allowUnsigned?: boolean;
  /** only the head (manifest, signature, contents): for --dry-run */
  headOnly?: boolean;
  /** leave the lacking layers that have a chunk index out of the stream (chunk deltas) */
  chunks?: boolean;
}

export interface RegistrySource {
  stream: Readable;
  /** the reference, pinned to the digest that was resolved */
  label: string;
  remote: RemoteStack;
  signedBy: string | null;
  /** lacking layers the stream carries whole */
  fetch: LayerRef[];
  /** lacking layers left to the install's chunk source (with `chunks`) */
  chunked: LayerRef[];
  have: LayerRef[];
  /** bytes of the layers to fetch whole */
  bytes: number;
  /** why a layer could not be fetched whole and right (then the install fails on it) */
  failure: Error | null;
}

/** A layer's bytes, or, after a failure, zeros up to its size (the reader refuses them). */
async function* layerOrFill(src: Readable, size: number, onFail: (e: Error) => void): AsyncGenerator<Buffer> {
  let sent = 0;
  try {
    for await (const c of src) {
      sent += (c as Buffer).length;
      yield c as Buffer;
    }
  } catch (e) {
    onFail(e as Error);
    const zeros = Buffer.alloc(Math.min(1 << 20, size - sent));
    for (; sent < size; sent += zeros.length) yield zeros.subarray(0, Math.min(zeros.length, size - sent));
  } finally {
    src.destroy();
  }
}

/** The install's error, or the registry's reason for it when a layer failed to come. */
export function installError(src: RegistrySource, e: unknown): unknown {
  if (!src.failure) return e;
  const f = src.failure;
  return f instanceof StackbootError ? new StackbootError(f.code, f.message, { cause: e, details: f.details }) : new StackbootError('NETWORK', `${src.label}: ${f.message}`, { cause: e });
}

async function verifyRemote(r: RemoteStack, keysDir: string, allowUnsigned: boolean, label: string): Promise<string | null> {
  if (r.sig === null) {
    if (allowUnsigned) return null;
    throw new StackbootError('SIGNATURE', `${label}: the stack has no signature (unsigned stacks are refused)`);
  }
  try {
    return await verifyWithKeyDir(Buffer.from(r.manifestText), r.sig, keysDir);
  } catch (e) {
    if (allowUnsigned) return null;
    throw new StackbootError('SIGNATURE', `${label}: ${(e as Error).message}`, { cause: e });
  }
}

export async function openRegistrySource(o: RegistrySourceOptions): Promise<RegistrySource> {
  const remote = await resolveStack(o.client, o.ref);
  const label = formatReference({ ...o.ref, digest: null }, remote.digest);
  const signedBy = await verifyRemote(remote, o.keysDir, !!o.allowUnsigned, label);
  const fetch: LayerRef[] = [];
  const chunked: LayerRef[] = [];
  const have: LayerRef[] = [];
  const indexes = new Set(remote.artifact.chunks.map((c) => c.digest));
  const refs = chunkIndexRefs(remote.manifest);
  for (const l of remote.manifest.layers) {
    const st = await fs.stat(o.store.layerPath(l.digest)).catch(() => null);
    const ix = refs.get(l.digest);
    if (st && st.size === l.size) have.push(l);
    else if (fetch.some((f) => f.digest === l.digest) || chunked.some((f) => f.digest === l.digest)) continue;
    else if (o.chunks && ix && indexes.has(`sha256:${ix.digest}`)) chunked.push(l);
    else fetch.push(l);
  }
  const source: RegistrySource = { stream: new PassThrough({ highWaterMark: 1 << 20 }), label, remote, signedBy, fetch, chunked, have, bytes: fetch.reduce((n, l) => n + l.size, 0), failure: null };
  const out = source.stream as PassThrough;
  // install may take the store lock before it reads: an early error waits in out.errored
  out.on('error', () => {});
  const write = async () => {
    const w = new TarWriter(out);
    const file = (p: string, text: string) => {
      const b = Buffer.from(text);
      return w.add({ path: p, type: 'file', mode: 0o644, uid: 0, gid: 0, mtime: remote.manifest.created, size: b.length }, b);
    };
    await file('manifest', remote.manifestText);
    if (remote.sig !== null) await file('manifest.sig', remote.sig);
    await file('contents', fetch.map((l) => `${l.digest} ${l.size}\n`).join(''));
    for (const l of o.headOnly ? [] : fetch) {
      const desc = remote.artifact.layers.find((d) => d.digest === `sha256:${l.digest}`)!;
      const body = Readable.from(layerOrFill(blobStream(o.client, o.ref.repository, desc, o), l.size, (e) => (source.failure = e)));
      await w.add({ path: `layers/${l.digest}.sqfs`, type: 'file', mode: 0o644, uid: 0, gid: 0, mtime: remote.manifest.created, size: l.size }, body);
      if (source.failure) break;
    }
    await w.finish();
  };
  write().catch((e) => out.destroy(e));
  return source;
}
