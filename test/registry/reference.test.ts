/** oci:// references: the one form, its parts, and what is refused. */
import { describe, it, expect } from 'vitest';
import { formatReference, isLoopback, manifestTarget, parseReference } from '../../src/registry/reference.js';

const D = `sha256:${'a'.repeat(64)}`;

describe('parseReference', () => {
  it('reads host, port, nested repository, tag and digest', () => {
    expect(parseReference('oci://ghcr.io/acme/fleet/node:2')).toEqual({ registry: 'ghcr.io', repository: 'acme/fleet/node', tag: '2', digest: null });
    expect(parseReference(`oci://127.0.0.1:5000/node@${D}`)).toEqual({ registry: '127.0.0.1:5000', repository: 'node', tag: null, digest: D });
    expect(parseReference(`oci://reg:443/a/b:v1.2-rc_3@${D}`)).toEqual({ registry: 'reg:443', repository: 'a/b', tag: 'v1.2-rc_3', digest: D });
    expect(parseReference('oci://reg/node').tag).toBe('latest');
  });

  it('refuses what is not the one form, saying the form', () => {
    for (const bad of ['ghcr.io/acme/node:2', 'docker://ghcr.io/a:1', 'oci://ghcr.io', 'oci:///node', 'oci://reg/Node:1', 'oci://reg/node:', 'oci://reg/node@sha256:abc', `oci://reg/node@md5:${'a'.repeat(32)}`, 'oci://re g/node']) {
      expect(() => parseReference(bad), bad).toThrow(/form is oci:\/\/host\[:port\]\/repository\[:tag\]\[@sha256:<hex>\]/);
    }
  });

  it('formats back, pins a digest, and names what a manifest call asks for', () => {
    const r = parseReference('oci://reg:5000/fleet/node:2');
    expect(formatReference(r)).toBe('oci://reg:5000/fleet/node:2');
    expect(formatReference(r, D)).toBe(`oci://reg:5000/fleet/node:2@${D}`);
    expect(manifestTarget(r)).toBe('2');
    expect(manifestTarget(parseReference(`oci://reg/n:2@${D}`))).toBe(D);
  });

  it('treats only loopback hosts as loopback', () => {
    expect(['localhost:5000', '127.0.0.1:1', '[::1]:5000'].map(isLoopback)).toEqual([true, true, true]);
    expect(['localhost.example:5000', '127.0.0.2', '10.0.0.1:5000', 'ghcr.io'].map(isLoopback)).toEqual([false, false, false, false]);
  });
});
