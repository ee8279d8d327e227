/**
 * Version order (pure): stack versions compare as Debian package versions do
 * (`dpkg --compare-versions`, Debian Policy 5.6.12): [epoch:]upstream[-revision]. The
 * epoch compares as a number; upstream and revision compare in turns of a non-digit run
 * (letters before non-letters, `~` before everything, even the end) and a digit run
 * (as a number). So 12.1 < 12.10, 1.0~rc1 < 1.0 < 1.0+b1, 1:0.1 > 9.9.
 */
import { StackbootError } from '../sys/index.js';

export interface DebianVersion {
  epoch: number;
  upstream: string;
  /** "" when the version has none (as dpkg: 1.0 equals 1.0-0) */
  revision: string;
  /** what dpkg warns of but still compares (a version not starting with a digit, odd characters) */
  warnings: string[];
}

const bad = (v: string, why: string): never => {
  throw new StackbootError('MANIFEST', `version ${JSON.stringify(v)} has bad syntax: ${why}`);
};

/** Splits a version as dpkg does; the errors dpkg refuses to compare are thrown. */
export function parseVersion(v: string): DebianVersion {
  if (v === '') bad(v, 'it is empty');
  if (/\s/.test(v)) bad(v, 'it has spaces');
  let rest = v;
  let epoch = 0;
  const colon = v.indexOf(':');
  if (colon >= 0) {
    const e = v.slice(0, colon);
    if (!/^[0-9]+$/.test(e)) bad(v, 'the epoch is not a number');
    epoch = Number(e);
    if (epoch > 0x7fffffff) bad(v, 'the epoch is too big');
    rest = v.slice(colon + 1);
    if (rest === '') bad(v, 'nothing after the colon');
  }
  let upstream = rest;
  let revision = '';
  const hyphen = rest.lastIndexOf('-');
  if (hyphen >= 0) {
    upstream = rest.slice(0, hyphen);
    revision = rest.slice(hyphen + 1);
    if (revision === '') bad(v, 'the revision is empty');
    if (upstream === '') bad(v, 'the upstream version is empty');
  }
  const warnings: string[] = [];
  if (!/^[0-9]/.test(upstream)) warnings.push('the version does not start with a digit');
  if (/[^A-Za-z0-9.+~:-]/.test(upstream)) warnings.push('invalid character in the version');
  if (/[^A-Za-z0-9.+~]/.test(revision)) warnings.push('invalid character in the revision');
  return { epoch, upstream, revision, warnings };
}

const isDigit = (c: number): boolean => c >= 0x30 && c <= 0x39;
const isLetter = (c: number): boolean => (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a);

/** dpkg's order of one character in a non-digit run; 0 is the end of the string. */
function order(c: number): number {
  if (Number.isNaN(c) || isDigit(c)) return 0;
  if (isLetter(c)) return c;
  if (c === 0x7e) return -1; // ~
  return c + 256;
}

/** dpkg's verrevcmp: one part (upstream or revision) against another. */
function comparePart(a: string, b: string): number {
  let i = 0;
  let j = 0;
  const at = (s: string, k: number) => (k < s.length ? s.charCodeAt(k) : NaN);
  while (i < a.length || j < b.length) {
    while ((i < a.length && !isDigit(at(a, i))) || (j < b.length && !isDigit(at(b, j)))) {
      const d = order(at(a, i)) - order(at(b, j));
      if (d) return d;
      i++;
      j++;
    }
    while (at(a, i) === 0x30) i++;
    while (at(b, j) === 0x30) j++;
    let firstDiff = 0;
    while (isDigit(at(a, i)) && isDigit(at(b, j))) {
      if (!firstDiff) firstDiff = at(a, i) - at(b, j);
      i++;
      j++;
    }
    if (isDigit(at(a, i))) return 1;
    if (isDigit(at(b, j))) return -1;
    if (firstDiff) return firstDiff;
  }
  return 0;
}

/** -1, 0 or 1 as `a` sorts before, with or after `b` by Debian's rules. */
export function compareVersions(a: string, b: string): -1 | 0 | 1 {
  const x = parseVersion(a);
  const y = parseVersion(b);
  const d = x.epoch - y.epoch || comparePart(x.upstream, y.upstream) || comparePart(x.revision, y.revision);
  return d < 0 ? -1 : d > 0 ? 1 : 0;
}
