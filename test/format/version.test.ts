import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { compareVersions, parseVersion } from '../../src/format/version.js';

/** The real dpkg's answer for each pair: -1, 0 or 1 (one shell for all pairs). */
function dpkgOrder(pairs: [string, string][]): number[] {
  const script = 'while read -r a b; do if dpkg --compare-versions "$a" lt "$b"; then echo -1; elif dpkg --compare-versions "$a" eq "$b"; then echo 0; else echo 1; fi; done';
  const out = execFileSync('sh', ['-c', script], { input: pairs.map((p) => p.join(' ')).join('\n') + '\n', encoding: 'utf8', stdio: ['pipe', 'pipe', 'pipe'] });
  return out.trim().split('\n').map(Number);
}

/** A seeded generator of versions with every rule in play: epochs, ~, +, letters, leading zeros, revisions. */
function generated(n: number, seed: number): string[] {
  let s = seed;
  const rnd = (k: number) => {
    s = (s * 1103515245 + 12345) % 2147483648;
    return s % k;
  };
  const token = () => ['0', '1', '2', '9', '10', '01', '099', '100', 'a', 'b', 'z', 'A', 'Z', '.', '.', '+', '~', '~~', 'rc', 'beta', 'dfsg', 'ubuntu'][rnd(22)];
  const out: string[] = [];
  for (let i = 0; i < n; i++) {
    let up = String(rnd(13));
    for (let t = rnd(5); t > 0; t--) up += token();
    const epoch = rnd(4) === 0 ? `${rnd(3)}:` : '';
    const rev = rnd(2) === 0 ? `-${String(rnd(4))}${rnd(3) === 0 ? token() + String(rnd(3)) : ''}` : '';
    out.push(`${epoch}${up}${rev}`);
  }
  return out;
}

const HAND = ['0', '1', '1.0', '1.0-0', '1.0-1', '1.0-1ubuntu1', '1.0~rc1', '1.0~rc1-1', '1.0~', '1.0~~', '1.0+b1', '1.0.1', '1.00', '1.01', '12.1', '12.10', '12.9', '1:0.1', '0:1.0', '2:0', '1.0a', '1.0A', '1.0.a', '1.0-a', '2026.11.1', '2026.9.30', '1.2.3-4.5', '1.2.3-4+b1', '1.2.3-4~bpo1', '9.9'];

describe('versions: Debian order', () => {
  it('orders as the issue asks: 12.1 < 12.10, 1.0~rc1 < 1.0, epochs first', () => {
    expect(compareVersions('12.1', '12.10')).toBe(-1);
    expect(compareVersions('1.0~rc1', '1.0')).toBe(-1);
    expect(compareVersions('1:0.1', '9.9')).toBe(1);
    expect(compareVersions('1.0', '1.0-0')).toBe(0);
    expect(compareVersions('2026.11.1', '2026.11.1')).toBe(0);
  });

  it('agrees with dpkg --compare-versions on every pair of a hand list and a generated list', () => {
    const gen = generated(60, 42);
    const pairs: [string, string][] = [];
    HAND.forEach((a, i) => HAND.slice(i).forEach((b) => pairs.push([a, b], [b, a])));
    for (let i = 0; i + 1 < gen.length; i++) for (const j of [i + 1, (i * 7) % gen.length]) pairs.push([gen[i], gen[j]], [gen[i], HAND[(i + j) % HAND.length]]);
    const want = dpkgOrder(pairs);
    expect(want).toHaveLength(pairs.length);
    const wrong = pairs.filter(([a, b], k) => compareVersions(a, b) !== want[k]).map(([a, b]) => `${a} vs ${b}`);
    expect(wrong).toEqual([]);
    expect(pairs.length).toBeGreaterThan(1000);
  }, 60_000);

  it('refuses what dpkg refuses to compare, and warns where dpkg warns', () => {
    for (const v of ['', 'a:1', ':1', '1:', '1-', '1 2', '-1']) expect(() => parseVersion(v)).toThrow(/version .* has bad syntax/);
    expect(parseVersion('1:2:3')).toMatchObject({ epoch: 1, upstream: '2:3', revision: '', warnings: [] });
    expect(parseVersion('1.0-1-2')).toMatchObject({ upstream: '1.0-1', revision: '2' });
    expect(parseVersion('v2').warnings).toEqual(['the version does not start with a digit']);
    expect(compareVersions('v2', '3')).toBe(1); // as dpkg: letters sort after digits
  });
});
