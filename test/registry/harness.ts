/**
 * The real registry for the registry tests: Debian's docker-registry (Docker
 * Distribution 2.8) started on 127.0.0.1 with a temporary config (filesystem storage,
 * TLS with a CA made here by openssl, htpasswd basic auth or a token server made here),
 * plus a small HTTP proxy in front of it that counts the bytes it passes and can drop a
 * connection once. Nothing here answers registry API calls itself.
 */
import { createHash, randomBytes, sign } from 'node:crypto';
import { promises as fs, readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { run } from '../../src/sys/exec.js';

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
    s.on('error', reject);
  });
}

export interface Pki {
  caCert: string;
  /** a folder with ca.crt only (skopeo --cert-dir) */
  certDir: string;
  serverCert: string;
  serverKey: string;
}

/** A CA and a server certificate for 127.0.0.1 and localhost. */
export async function makePki(dir: string): Promise<Pki> {
  await fs.mkdir(path.join(dir, 'certs'), { recursive: true });
  const f = (n: string) => path.join(dir, n);
  await run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', f('ca.key'), '-out', f('ca.crt'), '-subj', '/CN=stackboot-test-ca', '-days', '2']);
  await run('openssl', ['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', f('srv.key'), '-out', f('srv.csr'), '-subj', '/CN=localhost']);
  await fs.writeFile(f('san.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  await run('openssl', ['x509', '-req', '-in', f('srv.csr'), '-CA', f('ca.crt'), '-CAkey', f('ca.key'), '-CAcreateserial', '-out', f('srv.crt'), '-days', '2', '-extfile', f('san.ext')]);
  await fs.copyFile(f('ca.crt'), path.join(dir, 'certs', 'ca.crt'));
  return { caCert: f('ca.crt'), certDir: path.join(dir, 'certs'), serverCert: f('srv.crt'), serverKey: f('srv.key') };
}

export interface RegistryOptions {
  dir: string;
  pki: Pki;
  /** htpasswd basic auth with this user */
  basic?: { user: string; password: string };
  /** token auth: the token server's realm, service, issuer and its certificate */
  token?: { realm: string; service: string; issuer: string; cert: string };
}

export interface RunningRegistry {
  /** 127.0.0.1:<port> */
  host: string;
  port: number;
  storage: string;
  stop(): Promise<void>;
}

export async function startRegistry(o: RegistryOptions): Promise<RunningRegistry> {
  const port = await freePort();
  const storage = path.join(o.dir, 'storage');
  await fs.mkdir(storage, { recursive: true });
  const lines = [
    'version: 0.1',
    'log:',
    '  level: warn',
    'storage:',
    '  filesystem:',
    `    rootdirectory: ${storage}`,
    '  delete:',
    '    enabled: true',
    'http:',
    `  addr: 127.0.0.1:${port}`,
    `  secret: ${randomBytes(8).toString('hex')}`,
    '  tls:',
    `    certificate: ${o.pki.serverCert}`,
    `    key: ${o.pki.serverKey}`,
  ];
  if (o.basic) {
    const htpasswd = path.join(o.dir, 'htpasswd');
    const r = await run('htpasswd', ['-Bbn', o.basic.user, o.basic.password]);
    await fs.writeFile(htpasswd, r.stdout + '\n');
    lines.push('auth:', '  htpasswd:', '    realm: stackboot-test', `    path: ${htpasswd}`);
  } else if (o.token) {
    lines.push('auth:', '  token:', `    realm: ${o.token.realm}`, `    service: ${o.token.service}`, `    issuer: ${o.token.issuer}`, `    rootcertbundle: ${o.token.cert}`);
  }
  const config = path.join(o.dir, 'config.yml');
  await fs.writeFile(config, lines.join('\n') + '\n');
  const child: ChildProcess = spawn('docker-registry', ['serve', config], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  child.stderr!.on('data', (c) => (log = (log + c).slice(-4000)));
  const deadline = Date.now() + 15_000;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const req = https.get({ host: '127.0.0.1', port, path: '/v2/', ca: [caOf(o.pki)] }, (res) => {
        res.resume();
        resolve(true);
      });
      req.on('error', () => resolve(false));
    });
    if (ok) break;
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill();
      throw new Error(`docker-registry did not start: ${log}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    host: `127.0.0.1:${port}`,
    port,
    storage,
    stop: async () => {
      if (child.exitCode !== null) return;
      const gone = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await gone;
    },
  };
}

function caOf(p: Pki): string {
  return readFileSync(p.caCert, 'utf8');
}

export interface ProxyRecord {
  method: string;
  path: string;
  status: number;
  /** response body bytes passed to the client */
  bytes: number;
}

export interface CountingProxy {
  /** 127.0.0.1:<port> (plain HTTP: the client falls back to it on loopback) */
  host: string;
  records: ProxyRecord[];
  /** drop the client connection after `afterBytes` body bytes of the next GET (or `times` GETs) whose path has `pathPart` */
  dropOnce(pathPart: string, afterBytes: number, times?: number): void;
  /** body bytes of answered (2xx) GETs since the last reset */
  bytes(filter?: (r: ProxyRecord) => boolean): number;
  reset(): void;
  stop(): Promise<void>;
}

export interface ProxyOptions {
  /** answer the first request whose path has `pathPart` with 429 and this Retry-After */
  tooManyOnce?: { pathPart: string; retryAfter: string };
  /** answer blob GETs with 307 to this origin (a "storage host", another proxy) */
  redirectBlobsTo?: string;
  /** an Authorization header this proxy adds itself (a storage host's own access) */
  addAuth?: string;
}

/** A plain-HTTP proxy in front of the TLS registry: counts, and can cut, what passes. */
export async function startProxy(registryPort: number, pki: Pki, o: ProxyOptions = {}): Promise<CountingProxy & { authSeen: (string | undefined)[] }> {
  const records: ProxyRecord[] = [];
  const authSeen: (string | undefined)[] = [];
  let drop: { pathPart: string; afterBytes: number; times: number } | null = null;
  let tooMany = o.tooManyOnce ?? null;
  const ca = caOf(pki);
  const server = http.createServer((req, res) => {
    authSeen.push(req.headers.authorization);
    if (tooMany && req.url!.includes(tooMany.pathPart)) {
      records.push({ method: req.method!, path: req.url!, status: 429, bytes: 0 });
      res.writeHead(429, { 'Retry-After': tooMany.retryAfter });
      tooMany = null;
      return res.end();
    }
    if (o.redirectBlobsTo && req.method === 'GET' && req.url!.includes('/blobs/sha256:')) {
      records.push({ method: req.method!, path: req.url!, status: 307, bytes: 0 });
      res.writeHead(307, { Location: `${o.redirectBlobsTo}${req.url}` });
      return res.end();
    }
    const headers = { ...req.headers };
    delete headers.host;
    if (o.addAuth) headers.authorization = o.addAuth;
    const up = https.request({ host: '127.0.0.1', port: registryPort, path: req.url, method: req.method, headers, ca }, (ur) => {
      const rec: ProxyRecord = { method: req.method!, path: req.url!, status: ur.statusCode ?? 0, bytes: 0 };
      records.push(rec);
      res.writeHead(ur.statusCode ?? 502, ur.headers);
      const cut = drop && req.method === 'GET' && req.url!.includes(drop.pathPart) ? drop : null;
      if (cut && --cut.times <= 0) drop = null;
      ur.on('data', (c: Buffer) => {
        if (cut && rec.bytes + c.length > cut.afterBytes) {
          const k = cut.afterBytes - rec.bytes;
          if (k > 0) res.write(c.subarray(0, k));
          rec.bytes += Math.max(0, k);
          ur.destroy();
          res.socket?.destroy();
          return;
        }
        rec.bytes += c.length;
        res.write(c);
      });
      ur.on('end', () => res.end());
    });
    up.on('error', () => res.socket?.destroy());
    req.pipe(up);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as net.AddressInfo).port;
  let since = 0;
  return {
    host: `127.0.0.1:${port}`,
    records,
    authSeen,
    dropOnce: (pathPart, afterBytes, times = 1) => (drop = { pathPart, afterBytes, times }),
    bytes: (filter) => records.slice(since).filter((r) => r.method === 'GET' && r.status >= 200 && r.status < 300 && (!filter || filter(r))).reduce((n, r) => n + r.bytes, 0),
    reset: () => (since = records.length),
    stop: () => new Promise<void>((r) => {
      server.closeAllConnections();
      server.close(() => r());
    }),
  };
}

export interface TokenServer {
  realm: string;
  service: string;
  issuer: string;
  cert: string;
  /** tokens issued from now on are already expired */
  expired: boolean;
  issued: number;
  stop(): Promise<void>;
}

const b64url = (b: Buffer | string) => Buffer.from(b).toString('base64url');

/**
 * A token server for the bearer flow (the registry's `auth.token`): Basic credentials in,
 * an RS256 JWT out, whose x5c names a certificate the registry trusts (rootcertbundle).
 */
export async function startTokenServer(dir: string, user: { user: string; password: string }): Promise<TokenServer> {
  const key = path.join(dir, 'token.key');
  const cert = path.join(dir, 'token.crt');
  await run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-subj', '/CN=stackboot-test-token', '-days', '2']);
  const keyPem = await fs.readFile(key, 'utf8');
  const certDer = (await fs.readFile(cert, 'utf8')).replace(/-----[A-Z ]+-----|\s/g, '');
  const ts: TokenServer = { realm: '', service: 'stackboot-test-registry', issuer: 'stackboot-test-issuer', cert, expired: false, issued: 0, stop: async () => {} };
  const server = http.createServer((req, res) => {
    const u = new URL(req.url!, 'http://x');
    const auth = req.headers.authorization ?? '';
    const want = `Basic ${Buffer.from(`${user.user}:${user.password}`).toString('base64')}`;
    if (auth !== want) {
      res.writeHead(401, { 'Content-Type': 'application/json' });
      return res.end(JSON.stringify({ details: 'wrong user or password' }));
    }
    const access = u.searchParams.getAll('scope').map((s) => {
      const [type, ...rest] = s.split(':');
      const actions = rest.pop()!.split(',');
      return { type, name: rest.join(':'), actions };
    });
    const now = Math.floor(Date.now() / 1000);
    const exp = ts.expired ? now - 3600 : now + 300;
    const header = { typ: 'JWT', alg: 'RS256', x5c: [certDer] };
    const claims = { iss: ts.issuer, sub: user.user, aud: u.searchParams.get('service'), exp, nbf: ts.expired ? now - 7200 : now - 10, iat: ts.expired ? now - 7200 : now, jti: randomBytes(8).toString('hex'), access };
    const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
    const token = `${input}.${b64url(sign('sha256', Buffer.from(input), keyPem))}`;
    ts.issued++;
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify({ token, expires_in: exp - now }));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  ts.realm = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}/token`;
  ts.stop = () => new Promise<void>((r) => {
    server.closeAllConnections();
    server.close(() => r());
  });
  return ts;
}

export const sha256hex = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');

/** The user of the basic-auth registries (htpasswd). */
export const REGISTRY_USER = { username: 'ci', password: 'correct horse' };

/**
 * The setup most registry tests share: a test CA, Distribution with basic auth for
 * REGISTRY_USER over TLS, and the counting proxy in front (the caller stops both).
 */
export async function startBasicAuthRegistry(dir: string): Promise<{ pki: Pki; reg: RunningRegistry; proxy: CountingProxy & { authSeen: (string | undefined)[] } }> {
  const pki = await makePki(path.join(dir, 'pki'));
  const reg = await startRegistry({ dir: path.join(dir, 'reg'), pki, basic: { user: REGISTRY_USER.username, password: REGISTRY_USER.password } });
  const proxy = await startProxy(reg.port, pki).catch(async (e) => {
    await reg.stop();
    throw e;
  });
  return { pki, reg, proxy };
}
