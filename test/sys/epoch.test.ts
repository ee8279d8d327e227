import { describe, expect, it } from 'vitest';
import { checkEpoch, MAX_EPOCH, parseSourceDateEpoch } from '../../src/sys/epoch.js';

describe('SOURCE_DATE_EPOCH', () => {
  it('is 0 when unset or empty, else the whole number of seconds it says', () => {
    expect(parseSourceDateEpoch(undefined)).toBe(0);
    expect(parseSourceDateEpoch('')).toBe(0);
    expect(parseSourceDateEpoch('1700000000')).toBe(1700000000);
    expect(parseSourceDateEpoch(String(MAX_EPOCH))).toBe(4294967295);
  });

  it.each(['nope', '-5', '1.5', ' 17', '4294967296', '99999999999'])('refuses %j, naming the variable and the range', (v) => {
    expect(() => parseSourceDateEpoch(v)).toThrow(`SOURCE_DATE_EPOCH must be a whole number of seconds from 0 to 4294967295 (squashfs and cpio store 32 bits), got ${JSON.stringify(v)}`);
  });
});

describe('checkEpoch (the library side)', () => {
  it('takes whole seconds from 0 to 2^32-1 and refuses the rest', () => {
    expect(checkEpoch(0)).toBe(0);
    expect(checkEpoch(MAX_EPOCH)).toBe(MAX_EPOCH);
    for (const v of [-1, 1.5, MAX_EPOCH + 1, Number.NaN]) expect(() => checkEpoch(v)).toThrow(/must be a whole number of seconds from 0 to 4294967295/);
  });
});
