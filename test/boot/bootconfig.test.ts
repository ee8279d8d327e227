// The boot config: protocol defaults, KEY=value text and --set, and every invalid value
// refused by field name.
import { describe, it, expect } from 'vitest';
import { StackbootError } from '../../src/sys/errors.js';
import { defaultBootConfig, makeBootConfig, validateBootConfig } from '../../src/boot/bootconfig.js';

function expectConfigError(f: () => unknown, field: string) {
  try {
    f();
    expect.unreachable(`no error for ${field}`);
  } catch (e) {
    expect(e).toBeInstanceOf(StackbootError);
    expect((e as StackbootError).code).toBe('CONFIG');
    expect((e as StackbootError).message).toContain(field);
  }
}

describe('boot config', () => {
  it('has the protocol defaults', () => {
    const c = defaultBootConfig();
    expect(c.STORES).toEqual(['nvme0n1', 'mmcblk0', 'vda', 'vdb']);
    expect(c).toMatchObject({ TRIES: 3, UPPER: 'tmpfs', VERIFY: 'verity', ALLOW_UNSIGNED: 0, ON_FAIL: 'reboot', ON_FAIL_DELAY: 10, INIT: '/sbin/init', DEVICE_TIMEOUT: 10 });
  });

  it('parses KEY=value text with comments and quotes, then --set', () => {
    const c = makeBootConfig({
      text: '# a node\nSTORES=vd* mmcblk0   # disks\nTRIES=5\nUPPER="disk"\nPERSIST=/var/lib/app /home\n\nON_FAIL=shell\n',
      set: ['TRIES=2', ['VERIFY', 'sha256']],
    });
    expect(c.STORES).toEqual(['vd*', 'mmcblk0']);
    expect(c.TRIES).toBe(2);
    expect(c.UPPER).toBe('disk');
    expect(c.PERSIST).toEqual(['/var/lib/app', '/home']);
    expect(c.ON_FAIL).toBe('shell');
    expect(c.VERIFY).toBe('sha256');
  });

  it('rejects invalid values, naming the field', () => {
    for (const [setting, field] of [
      ['TRIES=0', 'TRIES'],
      ['TRIES=two', 'TRIES'],
      ['UPPER=zram', 'UPPER'],
      ['VERIFY=md5', 'VERIFY'],
      ['ON_FAIL=halt', 'ON_FAIL'],
      ['STORES=', 'STORES'],
      ['STORES=vda;reboot', 'STORES'],
      ['UPPER_SIZE=lots', 'UPPER_SIZE'],
      ['UPPER_SIZE=150%', 'UPPER_SIZE'],
      ['PERSIST=relative/path', 'PERSIST'],
      ['INIT=sbin/init', 'INIT'],
      ['STORE_LABEL=a label', 'STORE_LABEL'],
      ['DEVICE_TIMEOUT=0', 'DEVICE_TIMEOUT'],
      ['WATCHDOG=-1', 'WATCHDOG'],
      ['WATCHDOG=2m', 'WATCHDOG'],
      ['WATCHDOG=3601', 'WATCHDOG'],
      ['TRYS=3', 'TRYS'],
      ['novalue', 'KEY=VALUE'],
    ]) expectConfigError(() => makeBootConfig({ set: [setting] }), field);
    // partitions (the hook looks at the partitions of each disk, and skips a partition named here)
    for (const p of ['mmcblk0p2', 'nvme0n1p2', 'vda2', 'sda1', 'xvda3']) expectConfigError(() => makeBootConfig({ set: [`STORES=nvme0n1 ${p}`] }), 'STORES');
    expect(makeBootConfig({ set: ['STORES=nvme0n1 mmcblk0 mmcblk1 vda sdb nvme1n1 vd* mmcblk*'] }).STORES).toHaveLength(8);
    expect(makeBootConfig({ set: ['WATCHDOG=120'] }).WATCHDOG).toBe(120);
    expect(makeBootConfig({}).WATCHDOG).toBe(0);
    expectConfigError(() => makeBootConfig({ text: 'TRIES=1\nthis is not a pair\n', origin: 'node.conf' }), 'node.conf:2');
    expectConfigError(() => validateBootConfig({ ...defaultBootConfig(), STORES: [] }), 'STORES');
    expectConfigError(() => validateBootConfig({ ...defaultBootConfig(), TRIES: -1 }), 'TRIES');
  });
});
