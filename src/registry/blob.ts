/**
 * Fetching blobs by digest. A layer is streamed (never held in memory) and resumed with
 * `Range: bytes=<received>-` after a dropped connection, so its bytes cross the wire
 * once plus what was in flight when the link broke. Its sha256 is checked as it goes:
 * the last chunk is handed on only when the whole blob matched, so a consumer never
 * sees the end of a blob that is not the one asked for. Small blobs (the text manifest,
 * the signature) are read whole, size-limited and checked the same way.
 */
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { StackbootError } from '../sys/index.js';
import { registryError, type RegistryClient } from './client.js';
import type { Descriptor } from './artifact.js';

export interface BlobFetchOptions {
  /** reconnects in a row without progress (default 5) */
  retries?: number;
  /** first backoff in ms (doubles; default 500) */
  backoffMs?: number;
  onRetry?(info: { digest: string; attempt: number; received: number; reason: string }): void;
}

const pullScope = (repo: string) => `repository:${repo}:pull`;

function transient(e: unknown): boolean {
  if (!(e instanceof StackbootError)) return true;
  if (e.code !== 'NETWORK') return false;
  const status = e.details?.status as number | undefined;
  return status === undefined || status >= 500;
}

async function* blobChunks(client: RegistryClient, repo: string, desc: Descriptor, o: BlobFetchOptions): AsyncGenerator<Buffer> {
  const hex = desc.digest.slice('sha256:'.length);
  const what = `blob ${desc.digest.slice(0, 19)} of ${repo}`;
  const hash = createHash('sha256');
  const check = () => {
    const got = hash.digest('hex');
    if (got !== hex) throw new StackbootError('VERIFY', `${what}: the registry sent bytes whose sha256 is ${got.slice(0, 12)}, not ${hex.slice(0, 12)}: tampered or corrupt blob`);
  };
  if (desc.size === 0) return check();
  const retries = o.retries ?? 5;
  let received = 0;
  let failures = 0;
  while (received < desc.size) {
    try {
      const res = await client.send({ method: 'GET', path: `/v2/${repo}/blobs/${desc.digest}`, scope: pullScope(repo), headers: received > 0 ? { Range: `bytes=${received}-` } : {} });
      let skip = 0;
      if (res.statusCode === 206) {
        const m = /bytes (\d+)-/.exec(String(res.headers['content-range'] ?? ''));
        if (!m || Number(m[1]) !== received) {
          res.destroy();
          throw new StackbootError('VERIFY', `${what}: the registry resumed at the wrong offset (${res.headers['content-range']}, wanted ${received})`);
        }
      } else if (res.statusCode === 200) skip = received;
      else throw await registryError(`GET ${what}`, res);
      for await (const chunk of res) {
        let c = chunk as Buffer;
        if (skip > 0) {
          const k = Math.min(skip, c.length);
          skip -= k;
          c = c.subarray(k);
          if (c.length === 0) continue;
        }
        if (received + c.length > desc.size) {
          res.destroy();
          throw new StackbootError('VERIFY', `${what}: the registry sent more than the ${desc.size} bytes its manifest says`);
        }
        hash.update(c);
        received += c.length;
        failures = 0;
        if (received === desc.size) check();
        yield c;
      }
      if (received < desc.size) throw new Error(`connection closed at byte ${received} of ${desc.size}`);
    } catch (e) {
      if (!transient(e)) throw e;
      if (++failures > retries) throw new StackbootError('NETWORK', `${what}: failed after ${retries} retries at byte ${received} of ${desc.size}: ${(e as Error).message}`, { cause: e });
      o.onRetry?.({ digest: desc.digest, attempt: failures, received, reason: (e as Error).message });
      await new Promise((r) => setTimeout(r, (o.backoffMs ?? 500) * 2 ** (failures - 1)));
    }
  }
}

/** A blob as a stream of exactly `desc.size` bytes that match `desc.digest` (or an error). */
export function blobStream(client: RegistryClient, repo: string, desc: Descriptor, o: BlobFetchOptions = {}): Readable {
  return Readable.from(blobChunks(client, repo, desc, o), { objectMode: false, highWaterMark: 1 << 20 });
}

/**
 * Bytes [start, end) of a blob (chunk deltas: the pieces of a layer a node lacks), resumed
 * after a dropped connection from the byte reached. Not digest-checked here: the caller
 * checks each chunk it cuts from them. A registry that answers with the whole blob (200)
 * throws NETWORK with details.rangeUnsupported.
 */
export async function fetchBlobRange(client: RegistryClient, repo: string, digest: string, start: number, end: number, o: BlobFetchOptions = {}): Promise<Buffer> {
  const what = `blob ${digest.slice(0, 19)} of ${repo}`;
  const parts: Buffer[] = [];
  const retries = o.retries ?? 5;
  let at = start;
  let failures = 0;
  while (at < end) {
    try {
      const res = await client.send({ method: 'GET', path: `/v2/${repo}/blobs/${digest}`, scope: pullScope(repo), headers: { Range: `bytes=${at}-${end - 1}` } });
      if (res.statusCode === 200) {
        res.destroy();
        throw new StackbootError('NETWORK', `${what}: the registry does not honour Range requests`, { details: { rangeUnsupported: true } });
      }
      if (res.statusCode !== 206) throw await registryError(`GET ${what} (bytes ${at}-${end - 1})`, res);
      const m = /bytes (\d+)-/.exec(String(res.headers['content-range'] ?? ''));
      if (!m || Number(m[1]) !== at) {
        res.destroy();
        throw new StackbootError('VERIFY', `${what}: asked for byte ${at}, the registry sent ${res.headers['content-range']}`);
      }
      for await (const chunk of res) {
        const c = chunk as Buffer;
        if (at + c.length > end) {
          res.destroy();
          throw new StackbootError('VERIFY', `${what}: the registry sent more than the bytes ${start}-${end - 1} asked for`);
        }
        parts.push(c);
        at += c.length;
        failures = 0;
      }
      if (at < end) throw new Error(`connection closed at byte ${at} of ${start}-${end}`);
    } catch (e) {
      if (!transient(e)) throw e;
      if (++failures > retries) throw new StackbootError('NETWORK', `${what}: failed after ${retries} retries at byte ${at} of ${start}-${end}: ${(e as Error).message}`, { cause: e });
      o.onRetry?.({ digest, attempt: failures, received: at - start, reason: (e as Error).message });
      await new Promise((r) => setTimeout(r, (o.backoffMs ?? 500) * 2 ** (failures - 1)));
    }
  }
  return Buffer.concat(parts);
}

/** A small blob (manifest, signature), whole, size-limited and digest-checked. */
export async function fetchSmallBlob(client: RegistryClient, repo: string, desc: Descriptor, what: string): Promise<Buffer> {
  if (desc.size > client.maxManifestBytes) throw new StackbootError('MANIFEST', `${what} is ${desc.size} bytes, more than the limit of ${client.maxManifestBytes}: refused`);
  const parts: Buffer[] = [];
  for await (const c of blobStream(client, repo, desc)) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

/** Whether the repository has a blob (HEAD). */
export async function hasBlob(client: RegistryClient, repo: string, digest: string, scope = pullScope(repo)): Promise<boolean> {
  const res = await client.send({ method: 'HEAD', path: `/v2/${repo}/blobs/${digest}`, scope });
  res.resume();
  if (res.statusCode === 200) return true;
  if (res.statusCode === 404) return false;
  throw await registryError(`HEAD blob ${digest.slice(0, 19)} of ${repo}`, res);
}
