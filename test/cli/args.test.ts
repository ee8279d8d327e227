/** Option checks of the CLI (src/cli/args.ts): pure functions. */
import { describe, expect, it } from 'vitest';
import { byteSize, wholeNumber } from '../../src/cli/args.js';
import { StackbootError } from '../../src/sys/errors.js';

describe('wholeNumber', () => {
  const jobs = wholeNumber('jobs', 1, 1024);
  const size = wholeNumber('size', 1);

  it('passes whole numbers in range, and an absent option', () => {
    expect(jobs(1)).toBe(1);
    expect(jobs(1024)).toBe(1024);
    expect(size(4096)).toBe(4096);
    expect(jobs(undefined)).toBeUndefined();
  });

  it('refuses the rest with a USAGE error that names the flag and the range', () => {
    const err = (f: () => unknown) => {
      try {
        f();
      } catch (e) {
        expect(e).toBeInstanceOf(StackbootError);
        expect((e as StackbootError).code).toBe('USAGE');
        return (e as Error).message;
      }
      throw new Error('no error');
    };
    expect(err(() => jobs(0))).toBe('--jobs must be a whole number from 1 to 1024, got 0');
    expect(err(() => jobs(-1))).toBe('--jobs must be a whole number from 1 to 1024, got -1');
    expect(err(() => jobs(1.5))).toBe('--jobs must be a whole number from 1 to 1024, got 1.5');
    expect(err(() => jobs(2000))).toBe('--jobs must be a whole number from 1 to 1024, got 2000');
    expect(err(() => size(Number.NaN))).toBe('--size must be a whole number of 1 or more, got something that is not a number');
    expect(err(() => size([1, 2]))).toBe('--size is given more than once');
  });
});

describe('byteSize', () => {
  it('reads bytes and K/M/G/T (powers of 1024, with or without iB)', () => {
    const f = byteSize('max-size');
    expect([f('1048576'), f('64K'), f('500M'), f('10G'), f('1.5GiB'), f('2t'), f(undefined)]).toEqual([1048576, 65536, 500 * 2 ** 20, 10 * 2 ** 30, 1.5 * 2 ** 30, 2 * 2 ** 40, undefined]);
  });
  it('refuses anything else, naming the flag', () => {
    const f = byteSize('max-size');
    for (const v of ['lots', '-1G', '10X', '']) expect(() => f(v)).toThrow(/^--max-size must be a size such as 10G, 500M or 1048576, got /);
    expect(() => f(['1G', '2G'])).toThrow('--max-size is given more than once');
  });
});
