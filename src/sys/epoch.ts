/**
 * SOURCE_DATE_EPOCH (reproducible-builds.org): every timestamp a build writes. Unset or
 * empty means 0. A malformed value is an error, as the specification asks ("the build
 * process SHOULD exit with a non-zero error code"), never a silent 0: two builds that
 * meant different dates must not come out the same. squashfs and newc cpio store a
 * 32-bit mtime, so larger values are refused before anything is built.
 */
import { StackbootError } from './errors.js';

export const MAX_EPOCH = 0xffffffff;

export function parseSourceDateEpoch(value: string | undefined): number {
  if (value === undefined || value === '') return 0;
  if (!/^\d+$/.test(value) || Number(value) > MAX_EPOCH) {
    throw new StackbootError('USAGE', `SOURCE_DATE_EPOCH must be a whole number of seconds from 0 to ${MAX_EPOCH} (squashfs and cpio store 32 bits), got ${JSON.stringify(value)}`);
  }
  return Number(value);
}

/** The library's check of an epoch it is given (the CLI parses the variable above). */
export function checkEpoch(epoch: number): number {
  if (!Number.isInteger(epoch) || epoch < 0 || epoch > MAX_EPOCH) throw new StackbootError('USAGE', `the build date (SOURCE_DATE_EPOCH) must be a whole number of seconds from 0 to ${MAX_EPOCH}, got ${epoch}`);
  return epoch;
}
