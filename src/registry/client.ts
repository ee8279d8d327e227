/**
 * The HTTP client of the registry API (node:http/https, no dependency). One client per
 * registry host; it owns what every call needs:
 *
 *   TLS      verified against the system CAs, plus a CA file when given. Plain HTTP only
 *            with `insecure` (said on every client made) or for a loopback host whose
 *            port does not speak TLS (as docker allows), said once.
 *   auth     anonymous first; on 401 the challenge says Basic (the credentials) or
 *            Bearer (a token asked from the realm for the call's scope, with the
 *            credentials when there are some); one retry, then a one-line refusal.
 *   moves    redirects followed (5 at most); the Authorization header goes to the
 *            registry's own host only, never to a storage host it redirects to.
 *   429      Retry-After honoured (capped), three times at most.
 */
import http from 'node:http';
import https from 'node:https';
import { readFileSync } from 'node:fs';
import tls from 'node:tls';
import type { Readable } from 'node:stream';
import { StackbootError } from '../sys/index.js';
import { basicHeader, parseChallenge, type Credentials } from './auth.js';
import { isLoopback } from './reference.js';
import { MAX_MANIFEST_BYTES } from './artifact.js';

export interface ClientOptions {
  credentials?: Credentials | null;
  /** a PEM file of CAs trusted besides the system's */
  caFile?: string;
  /** plain HTTP to any host */
  insecure?: boolean;
  /** longest Retry-After honoured, in seconds (default 60) */
  maxRetryAfter?: number;
  /** ms without data before a connection is dropped (default 30 000) */
  idleTimeoutMs?: number;
  /** the largest manifest, text manifest or signature read (default MAX_MANIFEST_BYTES, 4 MiB) */
  maxManifestBytes?: number;
  /** warnings and retries, one line each */
  onNote?(note: string): void;
}

export interface SendOptions {
  method: 'GET' | 'HEAD' | 'POST' | 'PUT' | 'PATCH';
  /** `/v2/…` on the registry, or an absolute URL it gave (an upload location) */
  path: string;
  /** `repository:<name>:pull` or `…:pull,push` (for a bearer token) */
  scope: string;
  headers?: Record<string, string>;
  /** a request body; a factory when it must be sent again after a 401 or 429 */
  body?: Buffer | (() => Readable);
}

/** A body of at most `limit` bytes (refused beyond, whatever Content-Length says). */
export async function readBody(res: http.IncomingMessage, limit: number, what: string): Promise<Buffer> {
  const declared = Number(res.headers['content-length'] ?? NaN);
  if (declared > limit) {
    res.destroy();
    throw new StackbootError('NETWORK', `${what} is ${declared} bytes, more than the limit of ${limit}: refused`);
  }
  const parts: Buffer[] = [];
  let n = 0;
  for await (const c of res) {
    n += (c as Buffer).length;
    if (n > limit) {
      res.destroy();
      throw new StackbootError('NETWORK', `${what} is more than the limit of ${limit} bytes: refused`);
    }
    parts.push(c as Buffer);
  }
  return Buffer.concat(parts);
}

/** A one-line error from a registry answer (its `errors` JSON when it sent one). */
export async function registryError(what: string, res: http.IncomingMessage): Promise<StackbootError> {
  const body = await readBody(res, 64 * 1024, what).catch(() => Buffer.alloc(0));
  let detail = '';
  try {
    const j = JSON.parse(body.toString('utf8')) as { errors?: { code?: string; message?: string; detail?: unknown }[] };
    detail = (j.errors ?? []).map((e) => [e.code, e.message, e.detail && typeof e.detail !== 'object' ? String(e.detail) : e.detail ? JSON.stringify(e.detail) : ''].filter(Boolean).join(' ')).join('; ');
  } catch {
    detail = body.toString('utf8').trim().slice(0, 200);
  }
  const status = res.statusCode ?? 0;
  const hint = status === 401 ? ' (authentication refused: check the credentials)' : status === 403 ? ' (access denied for these credentials)' : '';
  return new StackbootError('NETWORK', `${what}: HTTP ${status}${detail ? ` ${detail}` : ` ${res.statusMessage ?? ''}`.trimEnd()}${hint}`, { details: { status } });
}

function retryAfterSeconds(v: string | string[] | undefined): number {
  const s = Array.isArray(v) ? v[0] : v;
  if (!s) return 1;
  if (/^\d+$/.test(s.trim())) return Number(s.trim());
  const t = Date.parse(s);
  return Number.isNaN(t) ? 1 : Math.max(0, Math.ceil((t - Date.now()) / 1000));
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export class RegistryClient {
  private scheme: 'https' | 'http';
  private readonly ca: string[] | undefined;
  private basic = false;
  private readonly tokens = new Map<string, string>();

  constructor(
    readonly registry: string,
    private readonly o: ClientOptions = {},
  ) {
    this.scheme = o.insecure ? 'http' : 'https';
    if (o.insecure) o.onNote?.(`WARNING: --insecure: talking plain HTTP to ${registry}, without TLS: anyone on the path can read and change what is sent`);
    if (o.caFile) {
      try {
        this.ca = [...tls.rootCertificates, readFileSync(o.caFile, 'utf8')];
      } catch (e) {
        throw new StackbootError('CONFIG', `cannot read the CA file ${o.caFile}`, { cause: e });
      }
    }
  }

  get maxManifestBytes(): number {
    return this.o.maxManifestBytes ?? MAX_MANIFEST_BYTES;
  }

  get base(): string {
    return `${this.scheme}://${this.registry}`;
  }

  /** The final answer to a call (any status): auth, redirects and 429 handled. */
  async send(s: SendOptions): Promise<http.IncomingMessage> {
    let url = new URL(s.path, this.base);
    let authTries = 0;
    let waits = 0;
    let redirects = 0;
    let method = s.method;
    for (;;) {
      const own = url.host === new URL(this.base).host;
      const headers: Record<string, string> = { ...s.headers };
      const auth = own ? this.authHeader(s.scope) : null;
      if (auth) headers.Authorization = auth;
      const res = await this.request(method, url, headers, method === s.method ? s.body : undefined);
      const code = res.statusCode ?? 0;
      if (code === 401 && own) {
        const ch = parseChallenge(res.headers['www-authenticate'] as string | undefined);
        if (authTries < 2 && ch?.scheme === 'basic' && this.o.credentials && !this.basic) {
          res.resume();
          this.basic = true;
          authTries++;
          continue;
        }
        if (authTries < 2 && ch?.scheme === 'bearer') {
          res.resume();
          authTries++;
          this.tokens.set(s.scope, await this.fetchToken(ch.params, s.scope));
          continue;
        }
        const why = ch?.scheme === 'basic' && !this.o.credentials ? ' (no credentials for this registry: docker login, REGISTRY_AUTH_FILE or --username)' : '';
        const e = await registryError(`${method} ${url.pathname}`, res);
        throw new StackbootError('NETWORK', `${this.registry}: ${e.message}${why}`, { details: e.details });
      }
      if (code === 429 && waits < 3) {
        const secs = retryAfterSeconds(res.headers['retry-after']);
        const max = this.o.maxRetryAfter ?? 60;
        res.resume();
        if (secs > max) throw new StackbootError('NETWORK', `${this.registry}: too many requests (429), and the registry asks to wait ${secs} s (more than ${max} s): try later`);
        waits++;
        this.o.onNote?.(`${this.registry}: too many requests (429): waiting ${secs} s as Retry-After asks`);
        await sleep(secs * 1000);
        continue;
      }
      if ([301, 302, 303, 307, 308].includes(code) && res.headers.location) {
        res.resume();
        if (++redirects > 5) throw new StackbootError('NETWORK', `${url}: more than 5 redirects`);
        url = new URL(res.headers.location, url);
        if (code === 303 || ((code === 301 || code === 302) && method !== 'HEAD')) method = 'GET';
        continue;
      }
      return res;
    }
  }

  private authHeader(scope: string): string | null {
    const t = this.tokens.get(scope);
    if (t) return `Bearer ${t}`;
    if (this.basic && this.o.credentials) return basicHeader(this.o.credentials);
    return null;
  }

  private async fetchToken(params: Record<string, string>, scope: string): Promise<string> {
    if (!params.realm) throw new StackbootError('NETWORK', `${this.registry} asks for a bearer token but names no realm`);
    const u = new URL(params.realm);
    if (params.service) u.searchParams.set('service', params.service);
    // a mount asks for two repositories: one scope parameter each
    for (const sc of (scope || params.scope || '').split(' ').filter(Boolean)) u.searchParams.append('scope', sc);
    const headers: Record<string, string> = {};
    if (this.o.credentials) headers.Authorization = basicHeader(this.o.credentials);
    const res = await this.request('GET', u, headers);
    if (res.statusCode !== 200) throw await registryError(`token from ${u.origin}${u.pathname}`, res);
    const body = await readBody(res, 1 << 20, `token from ${u.origin}`);
    let j: { token?: string; access_token?: string };
    try {
      j = JSON.parse(body.toString('utf8'));
    } catch (e) {
      throw new StackbootError('NETWORK', `token from ${u.origin}${u.pathname}: not JSON`, { cause: e });
    }
    const t = j.token ?? j.access_token;
    if (!t) throw new StackbootError('NETWORK', `token from ${u.origin}${u.pathname}: no token in the answer`);
    return t;
  }

  /** One HTTP exchange; a loopback registry that does not speak TLS is asked again over HTTP. */
  private async request(method: string, url: URL, headers: Record<string, string>, body?: Buffer | (() => Readable)): Promise<http.IncomingMessage> {
    try {
      return await this.exchange(method, url, headers, body);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code ?? '';
      const plainOnTls = code === 'EPROTO' || code.startsWith('ERR_SSL') || /wrong version number|packet length too long/i.test((e as Error).message);
      if (url.protocol === 'https:' && url.host === new URL(this.base).host && plainOnTls && isLoopback(this.registry)) {
        this.scheme = 'http';
        this.o.onNote?.(`WARNING: ${this.registry} does not speak TLS: using plain HTTP (allowed for a loopback host only)`);
        return this.exchange(method, new URL(url.pathname + url.search, this.base), headers, body);
      }
      throw new StackbootError('NETWORK', `${method} ${url.origin}${url.pathname}: ${(e as Error).message}`, { cause: e });
    }
  }

  private exchange(method: string, url: URL, headers: Record<string, string>, body?: Buffer | (() => Readable)): Promise<http.IncomingMessage> {
    return new Promise((resolve, reject) => {
      const mod = url.protocol === 'https:' ? https : http;
      const h: Record<string, string> = { 'User-Agent': 'stackboot', ...headers };
      if (Buffer.isBuffer(body)) h['Content-Length'] = String(body.length);
      const req = mod.request(url, { method, headers: h, ...(url.protocol === 'https:' && this.ca ? { ca: this.ca } : {}) }, resolve);
      req.setTimeout(this.o.idleTimeoutMs ?? 30_000, () => req.destroy(new Error('no answer (timeout)')));
      req.on('error', reject);
      if (body === undefined) req.end();
      else if (Buffer.isBuffer(body)) req.end(body);
      else {
        const src = body();
        src.on('error', (e) => req.destroy(e));
        src.pipe(req);
      }
    });
  }
}
