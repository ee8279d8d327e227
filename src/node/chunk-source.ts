/**
 * Where a chunked install fetches what the node lacks:
 * - a static HTTP(S) server that serves a build output folder (`layers/<sha256>.sqfs` and
 *   `layers/<sha256>.chunks`; the same files serve whole-layer installs): missing chunks
 *   are Range requests into the full layer file, a dropped connection resumes from the
 *   byte it reached (If-Range on the ETag);
 * - an OCI registry (the stack's artifact carries the chunk indexes as blobs): missing
 *   chunks are Range requests on the layer's blob (registry/blob.ts fetchBlobRange).
 * A source that answers a Range with the whole file is RangeUnsupported.
 */
import http from 'node:http';
import https from 'node:https';
import type { Readable } from 'node:stream';
import { StackbootError } from '../sys/index.js';
import { chunkIndexName, deltaFileName, framesIndexName, type ChunkIndexRef, type FramesRef, type LayerRef } from '../format/index.js';
import { download } from './download.js';
import { blobStream, fetchBlobRange, type BlobFetchOptions, type RegistryClient, type RemoteStack } from '../registry/index.js';

/** What a chunked install reads from (HTTP here; the registry's blob source has the same shape). */
export interface ChunkSource {
  label: string;
  /** the bytes of a layer's chunk index (the caller checks them against the manifest) */
  index(ref: ChunkIndexRef): Promise<Buffer>;
  /** bytes [start, end) of a layer file, exactly (resumed across dropped connections) */
  range(layer: LayerRef, start: number, end: number): Promise<Buffer>;
  /** the whole layer file (the fallback) */
  whole(layer: LayerRef): Readable;
  /** frame deltas (format/frames.ts): a layer's frames index (checked by the caller) */
  frames?(ref: FramesRef): Promise<Buffer>;
  /** bytes [start, end) of a layer's `.delta` file (`delta`: its sha256 and size, as its frames index names them) */
  deltaRange?(layer: LayerRef, delta: { digest: string; size: number }, start: number, end: number): Promise<Buffer>;
}

/** The server sent the whole file to a Range request (or no Range support): fall back to the whole layer. */
export class RangeUnsupported extends StackbootError {
  constructor(what: string) {
    super('NETWORK', `${what}: the server does not honour Range requests`);
  }
}

export interface HttpChunkSourceOptions {
  /** reconnects in a row without progress (default 5) */
  retries?: number;
  backoffMs?: number;
  onRetry?(info: { what: string; attempt: number; received: number; reason: string }): void;
}

/** A build output folder served over HTTP(S) at `base` (…/manifest, …/layers/<sha256>.sqfs). */
export function httpChunkSource(base: string, o: HttpChunkSourceOptions = {}): ChunkSource {
  const root = base.replace(/\/+$/, '');
  const layerUrl = (l: LayerRef) => `${root}/layers/${l.digest}.sqfs`;
  const etags = new Map<string, string>();
  const small = async (url: string, size: number) => {
    const { body, status } = await get(url, {}, size + 1);
    if (status !== 200) throw new StackbootError('NETWORK', `${url}: HTTP ${status}`, { details: { status } });
    return body;
  };
  const range = async (url: string, start: number, end: number) => {
    const parts: Buffer[] = [];
    let at = start;
    let failures = 0;
    while (at < end) {
      try {
        const etag = etags.get(url);
        const r = await get(url, { Range: `bytes=${at}-${end - 1}`, ...(etag ? { 'If-Range': etag } : {}) }, end - at, (b) => {
          parts.push(b);
          at += b.length;
          failures = 0; // progress: the retries count again from here
        });
        if (r.status === 200) throw new RangeUnsupported(url);
        if (r.status !== 206) throw new StackbootError('NETWORK', `${url}: HTTP ${r.status}`, { details: { status: r.status } });
        if (r.etag) etags.set(url, r.etag);
        if (at < end) throw new Error(`connection closed at byte ${at} of ${start}-${end}`);
      } catch (e) {
        if (e instanceof StackbootError) throw e;
        if (++failures > (o.retries ?? 5)) throw new StackbootError('NETWORK', `${url}: failed after ${o.retries ?? 5} retries at byte ${at}: ${(e as Error).message}`, { cause: e });
        o.onRetry?.({ what: url, attempt: failures, received: at - start, reason: (e as Error).message });
        await new Promise((res) => setTimeout(res, (o.backoffMs ?? 500) * 2 ** (failures - 1)));
      }
    }
    return Buffer.concat(parts);
  };
  return {
    label: root,
    index: (ref) => small(`${root}/layers/${chunkIndexName(ref.layer)}`, ref.size),
    range: (layer, start, end) => range(layerUrl(layer), start, end),
    whole(layer) {
      return download(layerUrl(layer), { retries: o.retries, backoffMs: o.backoffMs });
    },
    frames: (ref) => small(`${root}/layers/${framesIndexName(ref.layer)}`, ref.size),
    deltaRange: (layer, _delta, start, end) => range(`${root}/layers/${deltaFileName(layer.digest)}`, start, end),
  };
}

/** The chunk source of a stack in a registry: its chunk index blobs and Range requests on its layer blobs. */
export function registryChunkSource(client: RegistryClient, remote: RemoteStack, o: BlobFetchOptions = {}): ChunkSource {
  const repo = remote.ref.repository;
  const layerDesc = (l: LayerRef) => ({ mediaType: '', digest: `sha256:${l.digest}`, size: l.size });
  return {
    label: `${client.registry}/${repo}`,
    async index(ref) {
      const parts: Buffer[] = [];
      for await (const c of blobStream(client, repo, { mediaType: '', digest: `sha256:${ref.digest}`, size: ref.size }, o)) parts.push(c as Buffer);
      return Buffer.concat(parts);
    },
    async range(layer, start, end) {
      try {
        return await fetchBlobRange(client, repo, `sha256:${layer.digest}`, start, end, o);
      } catch (e) {
        if (e instanceof StackbootError && e.details?.rangeUnsupported) throw new RangeUnsupported(`${client.registry}/${repo} blob ${layer.digest.slice(0, 12)}`);
        throw e;
      }
    },
    whole(layer) {
      return blobStream(client, repo, layerDesc(layer), o);
    },
    async frames(ref) {
      const d = remote.artifact.frames.find((f) => f.digest === `sha256:${ref.digest}`);
      if (!d) throw new StackbootError('NETWORK', `${client.registry}/${repo}: the stack carries no frame deltas for layer ${ref.layer.slice(0, 12)} (pushed without them)`);
      const parts: Buffer[] = [];
      for await (const c of blobStream(client, repo, d, o)) parts.push(c as Buffer);
      return Buffer.concat(parts);
    },
    async deltaRange(_layer, delta, start, end) {
      try {
        return await fetchBlobRange(client, repo, `sha256:${delta.digest}`, start, end, o);
      } catch (e) {
        if (e instanceof StackbootError && e.details?.rangeUnsupported) throw new RangeUnsupported(`${client.registry}/${repo} blob ${delta.digest.slice(0, 12)}`);
        throw e;
      }
    },
  };
}

/**
 * One GET: the status, the ETag, and the body (collected, or handed to `onData` as it
 * comes), at most `limit` bytes (a 206 must start where it was asked: checked).
 */
function get(url: string, headers: Record<string, string>, limit: number, onData?: (b: Buffer) => unknown, redirects = 0): Promise<{ status: number; etag?: string; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const mod = url.startsWith('https:') ? https : http;
    const req = mod.get(url, { headers }, (res) => {
      const status = res.statusCode ?? 0;
      if (status >= 300 && status < 400 && res.headers.location && redirects < 5) {
        res.resume();
        return get(new URL(res.headers.location, url).toString(), headers, limit, onData, redirects + 1).then(resolve, reject);
      }
      if (status === 206 && headers.Range) {
        const want = /bytes=(\d+)-/.exec(headers.Range)![1];
        const got = /bytes (\d+)-/.exec(String(res.headers['content-range'] ?? ''))?.[1];
        if (got !== want) {
          res.destroy();
          return reject(new StackbootError('NETWORK', `${url}: asked for byte ${want}, the server sent ${res.headers['content-range']}`));
        }
      }
      if (status !== 206 && (status !== 200 || headers.Range)) {
        res.resume();
        return resolve({ status, body: Buffer.alloc(0) });
      }
      const parts: Buffer[] = [];
      let n = 0;
      res.on('data', (c: Buffer) => {
        if (n + c.length > limit) {
          res.destroy();
          return reject(new StackbootError('NETWORK', `${url}: the server sent more than the ${limit} bytes asked for`));
        }
        n += c.length;
        if (onData) onData(c);
        else parts.push(c);
      });
      res.on('error', () => {});
      res.on('close', () => {
        if (res.complete) resolve({ status, etag: res.headers.etag ? String(res.headers.etag) : undefined, body: Buffer.concat(parts) });
        else reject(new Error(`connection closed after ${n} bytes`));
      });
    });
    req.setTimeout(30_000, () => req.destroy(new Error('no data (timeout)')));
    req.on('error', reject);
  });
}
