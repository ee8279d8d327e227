/**
 * Installs over HTTP from real static servers, not the tests' own (test/support/chunk-fixtures
 * chunkServer): busybox's httpd (Range and an ETag, one connection per request: what a
 * gateway or a small update box runs) and Python's http.server (no Range at all). Both
 * serve a folder on 127.0.0.1 behind a TCP proxy that counts the bytes they send and can
 * cut the first response midway, as a flaky link does.
 *
 * - a bundle by URL, its first response cut: resumed (busybox: a Range request from
 *   where it stopped; Python: the file again, what was read skipped), installed;
 * - a chunk install (`--chunks-from`): busybox serves only the missing chunks (Range);
 *   Python cannot, so the layer comes whole and the install says why.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createReadStream, promises as fs } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeBundleFile } from '../../src/format/bundle.js';
import { chunkIndexRefs } from '../../src/format/chunks.js';
import { stageStore, type Store } from '../../src/format/store.js';
import { httpChunkSource } from '../../src/node/chunk-source.js';
import type { NodeContext } from '../../src/node/context.js';
import { download } from '../../src/node/download.js';
import { install, type InstallEvent } from '../../src/node/install.js';
import { chunkedBuild } from '../support/chunk-fixtures.js';
import { keys, layerBytes, sha256Of } from '../support/update-fixtures.js';
import { freePort } from '../registry/harness.js';

let tmp: string;
let www: string;
let k: Awaited<ReturnType<typeof keys>>;
let v1: string;
let v2: string;
let v2Layer: { digest: string; size: number };

beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(tmpdir(), 'sb-static-'));
  www = path.join(tmp, 'www');
  k = await keys(tmp);
  // v2's layer: v1's with 100 kB changed in the middle and a new tail
  const v1Data = layerBytes(3 << 20, 'static-v1');
  const v2Data = Buffer.concat([v1Data.subarray(0, 1_000_000), layerBytes(100_000, 'static-patch'), v1Data.subarray(1_100_000), layerBytes(30_000, 'static-tail')]);
  v1 = (await chunkedBuild(path.join(www, 'v1'), { version: '1', key: k.key, layers: [{ name: 'base', data: v1Data }] })).dir;
  const b2 = await chunkedBuild(path.join(www, 'v2'), { version: '2', key: k.key, layers: [{ name: 'base', data: v2Data }] });
  v2 = b2.dir;
  v2Layer = b2.manifest.layers[0]!;
  // the bundle with the layer (a delta on v1: the changed layer whole), and its head only
  // (the chunked layer left to --chunks-from)
  await writeBundleFile({ buildDir: v2, file: path.join(www, 'v2.stackbundle'), key: k.key, baseDigests: new Set(b2.manifest.layers.filter((l) => l.digest !== v2Layer.digest).map((l) => l.digest)) });
  await writeBundleFile({ buildDir: v2, file: path.join(www, 'v2.head'), key: k.key, baseDigests: new Set(chunkIndexRefs(b2.manifest).keys()) });
});

afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

interface Served {
  url: string;
  /** bytes the server sent through the proxy */
  sent(): number;
  /** connections made through the proxy */
  connections(): number;
  /** the request heads the proxy saw */
  requests: string[];
  /** cut the first response that carries more than this many bytes (once) */
  cutAfter?: number;
  close(): Promise<void>;
}

/** Starts a real server on `dir` (127.0.0.1) and a counting, cutting TCP proxy before it. */
async function serve(kind: 'busybox' | 'python', dir: string): Promise<Served> {
  const port = await freePort();
  const child: ChildProcess =
    kind === 'busybox'
      ? spawn('busybox', ['httpd', '-f', '-p', `127.0.0.1:${port}`, '-h', dir], { stdio: 'ignore' })
      : spawn('python3', ['-m', 'http.server', '--bind', '127.0.0.1', '--directory', dir, String(port)], { stdio: 'ignore' });
  // wait until it answers
  for (let i = 0; ; i++) {
    const up = await new Promise<boolean>((resolve) => {
      const c = net.connect(port, '127.0.0.1', () => {
        c.destroy();
        resolve(true);
      });
      c.on('error', () => resolve(false));
    });
    if (up) break;
    if (i > 100 || child.exitCode !== null) throw new Error(`${kind} did not start on port ${port}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  let sent = 0;
  let conns = 0;
  const s: Served = {
    url: '',
    sent: () => sent,
    connections: () => conns,
    requests: [],
    close: async () => {
      await new Promise<void>((r) => proxy.close(() => r()));
      child.kill();
    },
  };
  const proxy = net.createServer((client) => {
    conns++;
    const up = net.connect(port, '127.0.0.1');
    let got = 0;
    client.on('data', (d: Buffer) => {
      s.requests.push(d.toString('latin1').split('\r\n\r\n')[0]!);
      up.write(d);
    });
    up.on('data', (d: Buffer) => {
      got += d.length;
      if (s.cutAfter !== undefined && got > s.cutAfter) {
        const keep = d.length - (got - s.cutAfter);
        s.cutAfter = undefined;
        sent += keep;
        client.write(d.subarray(0, keep), () => {
          client.destroy();
          up.destroy();
        });
        return;
      }
      sent += d.length;
      client.write(d);
    });
    up.on('end', () => client.end());
    up.on('error', () => client.destroy());
    client.on('error', () => up.destroy());
    client.on('close', () => up.destroy());
  });
  await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', () => r()));
  s.url = `http://127.0.0.1:${(proxy.address() as net.AddressInfo).port}`;
  return s;
}

function ctxOf(store: Store): NodeContext {
  return { store, bootedSlot: 'a', booted: null, bootedFile: null, remount: false, lockDir: path.join(store.dir, '.stackboot.lock') };
}

const chunkEvents = (ev: InstallEvent[]) => ev.filter((e): e is Extract<InstallEvent, { event: 'chunks' }> => e.event === 'chunks');

describe.each(['busybox', 'python'] as const)('install from a real static server: %s', (kind) => {
  it('a bundle by URL, the first response cut midway: resumed, installed', async () => {
    const srv = await serve(kind, www);
    try {
      const store = await stageStore(path.join(tmp, `${kind}-url`, 'store'), { slots: { a: { buildDir: v1, status: 'good' } } });
      const size = (await fs.stat(path.join(www, 'v2.stackbundle'))).size;
      srv.cutAfter = Math.floor(size * 0.4);
      const retries: number[] = [];
      const stream = download(`${srv.url}/v2.stackbundle`, { backoffMs: 10, onRetry: (r) => retries.push(r.received) });
      const r = await install({ ctx: ctxOf(store), stream, label: 'v2.stackbundle', keysDir: k.keysDir, tries: 3 });
      expect(r.installed).toBe(true);
      expect(await sha256Of(store.layerPath(v2Layer.digest))).toBe(v2Layer.digest);
      expect(retries).toHaveLength(1);
      const again = srv.requests.filter((q) => /^GET \/v2\.stackbundle /.test(q));
      expect(again).toHaveLength(2);
      // busybox resumes where the cut left it; Python sends it all again (skipped)
      expect(again[1]).toMatch(new RegExp(`^Range: bytes=${retries[0]}-$`, 'mi'));
      if (kind === 'busybox') expect(srv.sent()).toBeLessThan(size * 1.1);
      else expect(srv.sent()).toBeGreaterThan(size * 1.3);
    } finally {
      await srv.close();
    }
  });

  it(kind === 'busybox' ? 'a chunk install fetches only the missing chunks, with Range' : 'a chunk install gets the layer whole, and says the server has no Range', async () => {
    const srv = await serve(kind, www);
    try {
      const store = await stageStore(path.join(tmp, `${kind}-chunks`, 'store'), { slots: { a: { buildDir: v1, status: 'good' } } });
      const ev: InstallEvent[] = [];
      const r = await install({ ctx: ctxOf(store), stream: createReadStream(path.join(www, 'v2.head')), label: 'v2.head', keysDir: k.keysDir, tries: 3, chunkSource: httpChunkSource(`${srv.url}/v2`, { backoffMs: 10 }), onEvent: (e) => ev.push(e) });
      expect(r.installed).toBe(true);
      expect(await sha256Of(store.layerPath(v2Layer.digest))).toBe(v2Layer.digest);
      const done = chunkEvents(ev).find((e) => e.fetched !== undefined)!;
      if (kind === 'busybox') {
        expect(done.fallback).toBeUndefined();
        expect(srv.requests.some((q) => /^Range: bytes=\d+-\d+$/im.test(q))).toBe(true);
        // the 130 kB that changed, the index and the chunks around them: far from the layer
        expect(srv.sent()).toBeLessThan(v2Layer.size / 4);
      } else {
        expect(done.fallback).toMatch(/does not honour Range/);
        expect(srv.sent()).toBeGreaterThan(v2Layer.size);
      }
    } finally {
      await srv.close();
    }
  });
});
