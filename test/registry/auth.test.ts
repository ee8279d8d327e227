/** Registry credentials (docker auths files, flags, the node's root-only file) and challenges. */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { basicHeader, credentialsFromAuths, findCredentials, parseChallenge } from '../../src/registry/auth.js';

const b64 = (s: string) => Buffer.from(s).toString('base64');
let dir: string;

beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(tmpdir(), 'sb-regauth-'));
});
afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

describe('credentials', () => {
  it('reads base64 auth, username/password fields and URL-style keys of an auths file', () => {
    const j = { auths: { 'reg:5000': { auth: b64('ci:pa:ss') }, 'https://index.example/v1/': { username: 'u', password: 'p' } } };
    expect(credentialsFromAuths(j, 'reg:5000', 'f')).toEqual({ username: 'ci', password: 'pa:ss' });
    expect(credentialsFromAuths(j, 'index.example', 'f')).toEqual({ username: 'u', password: 'p' });
    expect(credentialsFromAuths(j, 'reg', 'f')).toBeNull();
    expect(() => credentialsFromAuths({ auths: { reg: { auth: b64('nocolon') } } }, 'reg', 'f')).toThrow(/not base64 of user:password/);
  });

  it('takes the flags first, then REGISTRY_AUTH_FILE, then $DOCKER_CONFIG/config.json', async () => {
    const authFile = path.join(dir, 'auth.json');
    const dockerDir = path.join(dir, 'docker');
    await fs.mkdir(dockerDir, { recursive: true });
    await fs.writeFile(authFile, JSON.stringify({ auths: { reg: { auth: b64('from:authfile') } } }));
    await fs.writeFile(path.join(dockerDir, 'config.json'), JSON.stringify({ auths: { reg: { auth: b64('from:docker') }, other: { auth: b64('o:d') } } }));
    expect(await findCredentials('reg', { username: 'flag', password: 'pw', env: { REGISTRY_AUTH_FILE: authFile } })).toEqual({ username: 'flag', password: 'pw' });
    expect(await findCredentials('reg', { env: { REGISTRY_AUTH_FILE: authFile, DOCKER_CONFIG: dockerDir } })).toEqual({ username: 'from', password: 'authfile' });
    expect(await findCredentials('other', { env: { REGISTRY_AUTH_FILE: authFile, DOCKER_CONFIG: dockerDir } })).toEqual({ username: 'o', password: 'd' });
    expect(await findCredentials('nobody', { env: { DOCKER_CONFIG: dockerDir } })).toBeNull();
    await expect(findCredentials('reg', { env: { REGISTRY_AUTH_FILE: path.join(dir, 'missing.json') } })).rejects.toThrow(/registry auth file .* does not exist/);
    await expect(findCredentials('reg', { username: 'flag' })).rejects.toThrow(/--username needs a password/);
  });

  it('on a node reads only its own file, and refuses one that others can read', async () => {
    const f = path.join(dir, 'node-auth.json');
    await fs.writeFile(f, JSON.stringify({ auths: { reg: { auth: b64('node:pw') } } }), { mode: 0o644 });
    await fs.chmod(f, 0o644);
    await expect(findCredentials('reg', { authFile: f, rootOnly: true })).rejects.toThrow(/readable by others \(mode 644\): chmod 600/);
    await fs.chmod(f, 0o600);
    expect(await findCredentials('reg', { authFile: f, rootOnly: true })).toEqual({ username: 'node', password: 'pw' });
    // no file configured: anonymous, whatever the user's docker config says
    const dockerDir = path.join(dir, 'docker');
    expect(await findCredentials('reg', { rootOnly: true, env: { DOCKER_CONFIG: dockerDir } })).toBeNull();
  });
});

describe('challenges', () => {
  it('parses Basic and Bearer (quoted, unquoted, with commas in values)', () => {
    expect(parseChallenge('Basic realm="registry"')).toEqual({ scheme: 'basic', params: { realm: 'registry' } });
    expect(parseChallenge('Bearer realm="https://auth.example/token",service="reg.example",scope="repository:a/b:pull,push"')).toEqual({
      scheme: 'bearer',
      params: { realm: 'https://auth.example/token', service: 'reg.example', scope: 'repository:a/b:pull,push' },
    });
    expect(parseChallenge('Bearer realm=https://t/x, error="invalid_token"')?.params).toEqual({ realm: 'https://t/x', error: 'invalid_token' });
    expect(parseChallenge('Negotiate abc')).toBeNull();
    expect(parseChallenge(undefined)).toBeNull();
    expect(basicHeader({ username: 'a', password: 'b:c' })).toBe(`Basic ${b64('a:b:c')}`);
  });
});
