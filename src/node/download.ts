/**
 * A resumable HTTP(S) download as one Readable: when the connection breaks, it asks again
 * with `Range: bytes=<received>-` (and `If-Range` when the server gave an ETag) and goes on
 * where it stopped, so a consumer (the bundle reader) sees one unbroken byte stream.
 * node:http/https only, no dependency.
 */
import http from 'node:http';
import https from 'node:https';
import { PassThrough, type Readable } from 'node:stream';
import { StackbootError } from '../sys/index.js';

export interface DownloadOptions {
  /** reconnects allowed in a row without progress (default 5) */
  retries?: number;
  /** ms without data before a connection is dropped (default 30 000) */
  idleTimeoutMs?: number;
  /** first backoff in ms (doubles, default 500) */
  backoffMs?: number;
  onRetry?(info: { attempt: number; received: number; reason: string }): void;
  /** total size once known */
  onTotal?(bytes: number): void;
}

export function isUrl(s: string): boolean {
  return /^https?:\/\//i.test(s);
}

export function download(url: string, o: DownloadOptions = {}): Readable {
  const out = new PassThrough({ highWaterMark: 1 << 20 });
  const retries = o.retries ?? 5;
  let received = 0;
  let total: number | null = null;
  let etag: string | undefined;
  let failures = 0;
  let closed = false;
  let current: http.ClientRequest | null = null;
  out.on('close', () => {
    closed = true;
    current?.destroy();
  });
  const fail = (msg: string, cause?: unknown) => {
    if (closed) return;
    closed = true;
    out.destroy(new StackbootError('NETWORK', msg, { cause }));
  };
  const go = (target: string, redirects: number) => {
    if (closed) return;
    const mod = target.startsWith('https:') ? https : http;
    const headers: Record<string, string> = {};
    if (received > 0) {
      headers.Range = `bytes=${received}-`;
      if (etag) headers['If-Range'] = etag;
    }
    let settled = false;
    const again = (reason: string, cause?: unknown) => {
      if (settled || closed) return;
      settled = true;
      if (++failures > retries) return fail(`${url}: download failed after ${retries} retries at byte ${received}: ${reason}`, cause);
      o.onRetry?.({ attempt: failures, received, reason });
      setTimeout(() => go(url, 0), (o.backoffMs ?? 500) * 2 ** (failures - 1));
    };
    const req = mod.get(target, { headers }, (res) => {
      const code = res.statusCode ?? 0;
      if (code >= 300 && code < 400 && res.headers.location && redirects < 5) {
        settled = true;
        res.resume();
        return go(new URL(res.headers.location, target).toString(), redirects + 1);
      }
      let skip = 0;
      if (code === 206 && received > 0) {
        const m = /bytes (\d+)-\d+\/(\d+|\*)/.exec(String(res.headers['content-range'] ?? ''));
        if (!m || Number(m[1]) !== received) {
          res.resume();
          settled = true;
          return fail(`${url}: the server resumed at the wrong offset (${res.headers['content-range']})`);
        }
        if (total === null && m[2] !== '*') total = Number(m[2]);
      } else if (code === 200) {
        skip = received; // the server ignored Range: skip what we have
        if (res.headers['content-length']) {
          const n = Number(res.headers['content-length']);
          if (total !== null && n !== total) {
            res.resume();
            settled = true;
            return fail(`${url}: the file changed during the download (${total} then ${n} bytes)`);
          }
          total = n;
        }
      } else {
        res.resume();
        settled = true;
        return fail(`${url}: HTTP ${code} ${res.statusMessage ?? ''}`.trim());
      }
      if (total !== null) o.onTotal?.(total);
      if (res.headers.etag) etag = String(res.headers.etag);
      res.on('data', (chunk: Buffer) => {
        let c = chunk;
        if (skip > 0) {
          const k = Math.min(skip, c.length);
          skip -= k;
          c = c.subarray(k);
          if (c.length === 0) return;
        }
        received += c.length;
        failures = 0;
        if (!out.write(c)) {
          res.pause();
          out.once('drain', () => res.resume());
        }
      });
      res.on('error', () => {});
      res.on('close', () => {
        if (settled || closed) return;
        if (res.complete && (total === null || received >= total)) {
          settled = true;
          out.end();
        } else again(`connection closed at byte ${received}${total !== null ? ` of ${total}` : ''}`);
      });
    });
    current = req;
    req.setTimeout(o.idleTimeoutMs ?? 30_000, () => req.destroy(new Error('no data (timeout)')));
    req.on('error', (e) => again(e.message, e));
  };
  go(url, 0);
  return out;
}
