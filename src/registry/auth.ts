/**
 * Registry credentials and challenges, as the container tools do them:
 *
 *   where    --username/--password-stdin, else the file REGISTRY_AUTH_FILE names, else
 *            $DOCKER_CONFIG/config.json or ~/.docker/config.json; on a node, the file
 *            REGISTRY_AUTH of /etc/stackboot/config names (root-only: mode 0600).
 *   format   {"auths": {"<host[:port]>": {"auth": base64("user:password")}}} (also
 *            "username"/"password" fields, and keys written as https://host/v1/ URLs).
 *   scheme   the registry's 401 says which: `Basic realm=…` or
 *            `Bearer realm=…,service=…,scope=…` (then a token is asked from the realm).
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { StackbootError } from '../sys/index.js';

export interface Credentials {
  username: string;
  password: string;
}

export interface CredentialSources {
  username?: string;
  password?: string;
  /** an auths file to read (REGISTRY_AUTH_FILE, the node's REGISTRY_AUTH) */
  authFile?: string;
  /** the node's file: refused when readable by group or others; no other file is read */
  rootOnly?: boolean;
  /** the environment to read REGISTRY_AUTH_FILE, DOCKER_CONFIG, HOME from (the CLI passes its own; none: ~/.docker/config.json only) */
  env?: NodeJS.ProcessEnv;
}

function authKeyHost(key: string): string {
  return key.replace(/^https?:\/\//, '').replace(/\/.*$/, '');
}

/** The credentials an auths file holds for `registry` (host[:port]), or null. */
export function credentialsFromAuths(json: unknown, registry: string, origin: string): Credentials | null {
  const auths = (json as { auths?: Record<string, { auth?: string; username?: string; password?: string }> })?.auths;
  if (!auths || typeof auths !== 'object') return null;
  for (const [key, v] of Object.entries(auths)) {
    if (authKeyHost(key) !== registry || !v) continue;
    if (typeof v.auth === 'string' && v.auth !== '') {
      const plain = Buffer.from(v.auth, 'base64').toString('utf8');
      const colon = plain.indexOf(':');
      if (colon <= 0) throw new StackbootError('CONFIG', `${origin}: the auth of ${key} is not base64 of user:password`);
      return { username: plain.slice(0, colon), password: plain.slice(colon + 1) };
    }
    if (typeof v.username === 'string' && typeof v.password === 'string') return { username: v.username, password: v.password };
  }
  return null;
}

async function readAuthFile(file: string, rootOnly: boolean): Promise<unknown | null> {
  const st = await fs.stat(file).catch(() => null);
  if (!st) return null;
  if (rootOnly && (st.mode & 0o077) !== 0) {
    throw new StackbootError('CONFIG', `${file} holds registry passwords and is readable by others (mode ${(st.mode & 0o777).toString(8)}): chmod 600 ${file}`);
  }
  const text = await fs.readFile(file, 'utf8').catch((e) => {
    throw new StackbootError('CONFIG', `cannot read ${file}`, { cause: e });
  });
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new StackbootError('CONFIG', `${file} is not JSON (an auths file: {"auths": {"host": {"auth": "<base64 user:password>"}}})`, { cause: e });
  }
}

/** The credentials for a registry, from the first source that has some; null = anonymous. */
export async function findCredentials(registry: string, o: CredentialSources = {}): Promise<Credentials | null> {
  if (o.username !== undefined) {
    if (o.password === undefined) throw new StackbootError('USAGE', `--username needs a password (--password-stdin)`);
    return { username: o.username, password: o.password };
  }
  const env = o.env ?? {};
  // a node (rootOnly) reads its configured file only, never a user's docker config
  const files = o.authFile
    ? [o.authFile]
    : o.rootOnly
      ? []
      : [env.REGISTRY_AUTH_FILE, path.join(env.DOCKER_CONFIG || path.join(env.HOME || os.homedir(), '.docker'), 'config.json')].filter((f): f is string => !!f);
  for (const f of files) {
    const json = await readAuthFile(f, !!o.rootOnly);
    if (json === null) {
      if (f === o.authFile || f === env.REGISTRY_AUTH_FILE) throw new StackbootError('CONFIG', `registry auth file ${f} does not exist`);
      continue;
    }
    const c = credentialsFromAuths(json, registry, f);
    if (c) return c;
  }
  return null;
}

export interface Challenge {
  scheme: 'basic' | 'bearer';
  params: Record<string, string>;
}

/** Parses a WWW-Authenticate header (one challenge: Basic or Bearer). */
export function parseChallenge(header: string | undefined): Challenge | null {
  if (!header) return null;
  const m = /^\s*(\w+)\s*(.*)$/s.exec(header);
  if (!m) return null;
  const scheme = m[1].toLowerCase();
  if (scheme !== 'basic' && scheme !== 'bearer') return null;
  const params: Record<string, string> = {};
  const re = /(\w+)=(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*,?\s*/g;
  let p: RegExpExecArray | null;
  while ((p = re.exec(m[2])) !== null) params[p[1].toLowerCase()] = p[2] !== undefined ? p[2].replace(/\\(.)/g, '$1') : p[3];
  return { scheme, params };
}

export function basicHeader(c: Credentials): string {
  return `Basic ${Buffer.from(`${c.username}:${c.password}`).toString('base64')}`;
}
