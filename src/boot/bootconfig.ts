/**
 * The boot config, `/etc/stackboot/boot.conf` (docs/PROTOCOL.md "Boot config"): its keys,
 * defaults and the one validator every reader uses (the initramfs renderer, a recipe's
 * `boot` settings, the node's /etc/stackboot/config, `--set`). Pure.
 */
import { StackbootError } from '../sys/index.js';

export type UpperKind = 'tmpfs' | 'disk';
/** verity: each layer through dm-verity when its stack has verity data and the kernel can, else size (initramfs/verity.sh). */
export type VerifyMode = 'size' | 'sha256' | 'verity';
export type OnFail = 'reboot' | 'shell';

/** `/etc/stackboot/boot.conf` (docs/PROTOCOL.md "Boot config"), typed. */
export interface BootConfig {
  /** Disk names (globs allowed), in priority order. Never empty. */
  STORES: string[];
  STORE_LABEL: string;
  DATA_LABEL: string;
  /** Tries given to a new pending stack: a positive integer. */
  TRIES: number;
  UPPER: UpperKind;
  /** tmpfs `size=` of the upper: `50%`, `512m`, `1g`, bytes. */
  UPPER_SIZE: string;
  VERIFY: VerifyMode;
  /** 1: boot manifests without a valid signature when the initrd has keys (development only; said in the boot log). */
  ALLOW_UNSIGNED: 0 | 1;
  /** Absolute paths bind-mounted from the data partition. */
  PERSIST: string[];
  ON_FAIL: OnFail;
  /** Seconds before the reboot when every stack failed. */
  ON_FAIL_DELAY: number;
  /** The init inside the new root. */
  INIT: string;
  /** Seconds to wait for the disks. */
  DEVICE_TIMEOUT: number;
  /** Once a store is found, seconds to keep waiting for missing higher-priority disks. */
  DEVICE_SETTLE: number;
  /** Seconds per health check (node side). */
  HEALTH_TIMEOUT: number;
  /** Seconds before a health reboot (node side). */
  HEALTH_REBOOT_DELAY: number;
  /** Seconds the board's watchdog gives a pending stack to be marked good; 0: the hook leaves the watchdog alone (initramfs/watchdog.sh). */
  WATCHDOG: number;
}

export type BootConfigKey = keyof BootConfig;

/** The keys in the order boot.conf lists them. */
export const BOOT_CONFIG_KEYS: readonly BootConfigKey[] = [
  'STORES',
  'STORE_LABEL',
  'DATA_LABEL',
  'TRIES',
  'UPPER',
  'UPPER_SIZE',
  'VERIFY',
  'ALLOW_UNSIGNED',
  'PERSIST',
  'ON_FAIL',
  'ON_FAIL_DELAY',
  'INIT',
  'DEVICE_TIMEOUT',
  'DEVICE_SETTLE',
  'HEALTH_TIMEOUT',
  'HEALTH_REBOOT_DELAY',
  'WATCHDOG',
];

export function defaultBootConfig(): BootConfig {
  return {
    STORES: ['nvme0n1', 'mmcblk0', 'vda', 'vdb'],
    STORE_LABEL: 'sb-store',
    DATA_LABEL: 'sb-data',
    TRIES: 3,
    UPPER: 'tmpfs',
    UPPER_SIZE: '50%',
    VERIFY: 'verity',
    ALLOW_UNSIGNED: 0,
    PERSIST: [],
    ON_FAIL: 'reboot',
    ON_FAIL_DELAY: 10,
    INIT: '/sbin/init',
    DEVICE_TIMEOUT: 10,
    DEVICE_SETTLE: 2,
    HEALTH_TIMEOUT: 60,
    HEALTH_REBOOT_DELAY: 10,
    WATCHDOG: 0,
  };
}

const isKey = (k: string): k is BootConfigKey => (BOOT_CONFIG_KEYS as readonly string[]).includes(k);

function bad(key: string, value: string, want: string): StackbootError {
  return new StackbootError('CONFIG', `boot config ${key}=${JSON.stringify(value)} is invalid: ${want}`, { details: { key, value } });
}

function intValue(key: string, value: string, min: number, max = 1_000_000): number {
  if (!/^\d+$/.test(value) || Number(value) < min || Number(value) > max) {
    throw bad(key, value, min > 0 ? `a positive integer (at most ${max})` : `a non-negative integer (at most ${max})`);
  }
  return Number(value);
}

/** Partition names of the usual disks (sda2, vda1, xvda3, nvme0n1p2, mmcblk0p2, loop0p1): group 1 or 2 is the disk. */
const PARTITION_NAME = /^(?:((?:sd|vd|hd|xvd)[a-z]+)\d+|((?:nvme\d+n\d+|mmcblk\d+|loop\d+))p\d+)$/;

function words(value: string): string[] {
  return value.split(/\s+/).filter((w) => w !== '');
}

/** Validates one KEY=value (as text) and stores it into `cfg`. */
export function setBootConfigValue(cfg: BootConfig, key: string, value: string): void {
  const v = value.trim();
  if (/[\n\r]/.test(value)) throw bad(key, value, 'no newlines');
  if (!isKey(key)) throw new StackbootError('CONFIG', `unknown boot config key ${key} (known: ${BOOT_CONFIG_KEYS.join(', ')})`, { details: { key } });
  switch (key) {
    case 'STORES': {
      const w = words(v);
      if (w.length === 0) throw bad(key, value, 'at least one disk name');
      for (const s of w) if (!/^[A-Za-z0-9._*?-]+$/.test(s)) throw bad(key, value, `disk names (globs allowed) like nvme0n1 mmcblk0 vd*, not ${JSON.stringify(s)}`);
      // the hook scans the partitions of each disk and skips a partition named here: it would never find the store
      for (const s of w) {
        const disk = PARTITION_NAME.exec(s);
        if (disk) throw bad(key, value, `disk names, not partitions: ${s} is a partition of ${disk[1] ?? disk[2]} (give ${disk[1] ?? disk[2]})`);
      }
      cfg.STORES = w;
      return;
    }
    case 'STORE_LABEL':
    case 'DATA_LABEL':
      if (!/^[A-Za-z0-9._-]{1,16}$/.test(v)) throw bad(key, value, 'a filesystem label of 1-16 characters [A-Za-z0-9._-]');
      cfg[key] = v;
      return;
    case 'TRIES':
      cfg.TRIES = intValue(key, v, 1, 1000);
      return;
    case 'UPPER':
      if (v !== 'tmpfs' && v !== 'disk') throw bad(key, value, 'tmpfs or disk');
      cfg.UPPER = v;
      return;
    case 'UPPER_SIZE': {
      const m = /^(\d+)(%|[kmgKMG])?$/.exec(v);
      if (!m || Number(m[1]) === 0 || (m[2] === '%' && Number(m[1]) > 100)) throw bad(key, value, 'a tmpfs size such as 50%, 512m or 2g');
      cfg.UPPER_SIZE = v;
      return;
    }
    case 'VERIFY':
      if (v !== 'size' && v !== 'sha256' && v !== 'verity') throw bad(key, value, 'size, sha256 or verity');
      cfg.VERIFY = v;
      return;
    case 'ALLOW_UNSIGNED':
      if (v !== '0' && v !== '1') throw bad(key, value, '0 or 1');
      cfg.ALLOW_UNSIGNED = v === '1' ? 1 : 0;
      return;
    case 'PERSIST': {
      const w = words(v);
      for (const p of w) {
        if (!/^\/[A-Za-z0-9._/+@-]+$/.test(p) || p.split('/').some((x) => x === '..' || x === '.')) {
          throw bad(key, value, `absolute paths without spaces or .. (got ${JSON.stringify(p)})`);
        }
      }
      cfg.PERSIST = w;
      return;
    }
    case 'ON_FAIL':
      if (v !== 'reboot' && v !== 'shell') throw bad(key, value, 'reboot or shell');
      cfg.ON_FAIL = v;
      return;
    case 'ON_FAIL_DELAY':
      cfg.ON_FAIL_DELAY = intValue(key, v, 0, 86400);
      return;
    case 'INIT':
      if (!/^\/[A-Za-z0-9._/+-]+$/.test(v)) throw bad(key, value, 'an absolute path such as /sbin/init');
      cfg.INIT = v;
      return;
    case 'DEVICE_TIMEOUT':
      cfg.DEVICE_TIMEOUT = intValue(key, v, 1, 3600);
      return;
    case 'DEVICE_SETTLE':
      cfg.DEVICE_SETTLE = intValue(key, v, 0, 3600);
      return;
    case 'HEALTH_TIMEOUT':
      cfg.HEALTH_TIMEOUT = intValue(key, v, 1, 86400);
      return;
    case 'HEALTH_REBOOT_DELAY':
      cfg.HEALTH_REBOOT_DELAY = intValue(key, v, 0, 86400);
      return;
    case 'WATCHDOG':
      // watchdog drivers take up to minutes (tegra_wdt 255 s, i6300esb 2046 s); the driver has the last word
      cfg.WATCHDOG = intValue(key, v, 0, 3600);
      return;
  }
}

/**
 * Parses boot.conf text (`KEY=value`, `#` comments, a comment may follow a blank,
 * optional quotes) into pairs, in file order. Throws CONFIG on a line that is not KEY=value.
 */
export function parseBootConfigText(text: string, origin = 'boot config'): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const eq = line.indexOf('=');
    const key = eq > 0 ? line.slice(0, eq).trim() : '';
    if (!/^[A-Z][A-Z0-9_]*$/.test(key)) throw new StackbootError('CONFIG', `${origin}:${i + 1}: not KEY=value: ${line}`);
    let val = line.slice(eq + 1);
    const c = val.search(/[ \t]#/);
    if (c >= 0) val = val.slice(0, c);
    val = val.trim();
    const q = /^"(.*)"$/.exec(val) ?? /^'(.*)'$/.exec(val);
    if (q) val = q[1]!;
    out.push([key, val]);
  });
  return out;
}

/** Parses a `KEY=VALUE` from the command line (`--set`). */
export function parseSetting(s: string): [string, string] {
  const eq = s.indexOf('=');
  if (eq <= 0) throw new StackbootError('CONFIG', `--set wants KEY=VALUE, got ${JSON.stringify(s)}`);
  return [s.slice(0, eq).trim(), s.slice(eq + 1)];
}

/**
 * A validated boot config: the defaults, then `text` (a boot.conf), then `set` pairs.
 * Unknown keys and invalid values are StackbootError('CONFIG') naming the key.
 */
export function makeBootConfig(opts: { text?: string; origin?: string; set?: ReadonlyArray<string | [string, string]>; base?: BootConfig } = {}): BootConfig {
  const cfg: BootConfig = { ...(opts.base ?? defaultBootConfig()) };
  cfg.STORES = [...cfg.STORES];
  cfg.PERSIST = [...cfg.PERSIST];
  if (opts.text !== undefined) {
    for (const [k, v] of parseBootConfigText(opts.text, opts.origin)) {
      try {
        setBootConfigValue(cfg, k, v);
      } catch (e) {
        if (e instanceof StackbootError && opts.origin) throw new StackbootError('CONFIG', `${opts.origin}: ${e.message}`, { details: e.details });
        throw e;
      }
    }
  }
  for (const s of opts.set ?? []) {
    const [k, v] = typeof s === 'string' ? parseSetting(s) : s;
    setBootConfigValue(cfg, k, v);
  }
  return cfg;
}

/** Checks a whole BootConfig object (e.g. one built in code) by round-tripping each value. */
export function validateBootConfig(cfg: BootConfig): BootConfig {
  const out = defaultBootConfig();
  for (const k of BOOT_CONFIG_KEYS) {
    const v = cfg[k];
    if (v === undefined) continue;
    setBootConfigValue(out, k, Array.isArray(v) ? v.join(' ') : String(v));
  }
  if (out.STORES.length === 0) throw bad('STORES', '', 'at least one disk name');
  return out;
}

export function bootConfigValue(cfg: BootConfig, k: BootConfigKey): string {
  const v = cfg[k];
  return Array.isArray(v) ? v.join(' ') : String(v);
}
