import { describe, expect, it } from 'vitest';
import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { run } from '../../src/sys/exec.js';
import { LIB, NODE_TOOL, fakeRoots } from './harness.js';

/** a fresh fake root, cleaned up after the test */
const newRoot = fakeRoots();

const DUMP = 'for v in STORES STORE_LABEL DATA_LABEL TRIES UPPER UPPER_SIZE VERIFY PERSIST ON_FAIL ON_FAIL_DELAY INIT DEVICE_TIMEOUT FORCE_SLOT FORCE_STORE WIPE BREAK DEBUG; do eval "echo $v=\\"\\$SB_$v\\""; done';

function parse(out: string): Record<string, string> {
  return Object.fromEntries(out.split('\n').filter((l) => l.includes('=')).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
}

describe('sb_config_load', () => {
  it('defaults', async () => {
    const r = newRoot();
    const res = await r.sh(`sb_config_load "" ; ${DUMP}`);
    expect(parse(res.out)).toMatchObject({
      STORES: 'nvme0n1 mmcblk0 vda vdb', STORE_LABEL: 'sb-store', DATA_LABEL: 'sb-data', TRIES: '3', UPPER: 'tmpfs',
      UPPER_SIZE: '50%', VERIFY: 'verity', PERSIST: '', ON_FAIL: 'reboot', ON_FAIL_DELAY: '10', INIT: '/sbin/init', DEVICE_TIMEOUT: '10',
    });
  });

  it('parses KEY=value lines, comments, quotes; cmdline overrides; never executes values', async () => {
    const r = newRoot();
    const marker = join(r.dir, 'pwned');
    const conf = [
      '# a comment',
      '',
      'STORES=nvme0n1 mmcblk0*   # priority order',
      '  STORE_LABEL = my-store',
      'TRIES="5"',
      'UPPER=disk',
      `INIT=$(touch ${marker})`,
      `PERSIST=/home \`touch ${marker}\``,
      `DATA_LABEL=x;touch ${marker}`,
      'VERIFY=sha256',
      'ON_FAIL=explode',
      'UNKNOWN_KEY=1',
      'not a key value line',
      `$(touch ${marker})=1`,
      'UPPER_SIZE=256m',
      'ON_FAIL_DELAY=3',
    ].join('\n');
    writeFileSync(join(r.dir, 'c.conf'), conf); // no final newline on purpose
    const res = await r.sh(`sb_config_load "$SB_T/c.conf"; ${DUMP}`, {
      SB_CMDLINE: 'root=/dev/x stackboot.tries=7 stackboot.upper=tmpfs stackboot.slot=b stackboot.store=/dev/vda2 stackboot.wipe stackboot.verify=size stackboot.onfail=shell stackboot.slot=zz',
    });
    const v = parse(res.out);
    expect(v).toMatchObject({
      STORES: 'nvme0n1 mmcblk0*', STORE_LABEL: 'my-store', TRIES: '7', UPPER: 'tmpfs', VERIFY: 'size', UPPER_SIZE: '256m',
      ON_FAIL: 'shell', ON_FAIL_DELAY: '3', INIT: '/sbin/init', PERSIST: '', DATA_LABEL: 'sb-data',
      FORCE_SLOT: 'b', FORCE_STORE: '/dev/vda2', WIPE: '1', BREAK: '0', DEBUG: '0',
    });
    expect(existsSync(marker)).toBe(false);
    expect(res.err).toMatch(/invalid value for INIT ignored/);
    expect(res.err).toMatch(/invalid value for ON_FAIL ignored/);
    expect(res.err).toMatch(/bad stackboot.slot=zz ignored/);
    expect(res.err).toMatch(/not KEY=value/);
  });

  it('reads /proc/cmdline (SB_CMDLINE_FILE) when SB_CMDLINE is unset', async () => {
    const r = newRoot();
    writeFileSync(join(r.dir, 'cmdline'), 'quiet stackboot.debug stackboot.verify=sha256\n');
    const res = await r.sh(`unset SB_CMDLINE; SB_CMDLINE_FILE="$SB_T/cmdline"; sb_config_load ""; ${DUMP}`);
    expect(parse(res.out)).toMatchObject({ DEBUG: '1', VERIFY: 'sha256' });
  });
});

describe('shell syntax', () => {
  it('every initramfs/*.sh and stackboot-node pass busybox sh -n; no set -e', async () => {
    const files = readdirSync(LIB).filter((f) => f.endsWith('.sh')).map((f) => join(LIB, f));
    files.push(NODE_TOOL);
    expect(files.length).toBeGreaterThan(10);
    for (const f of files) {
      const r = await run('busybox', ['sh', '-n', f], { reject: false });
      expect(r.exitCode, `${f}: ${r.stderr}`).toBe(0);
      const text = (await import('node:fs')).readFileSync(f, 'utf8');
      expect(text, f).not.toMatch(/^\s*set -e/m);
    }
  });

  it('sourcing the library has no side effects besides definitions', async () => {
    const r = newRoot();
    const res = await run('busybox', ['sh', '-c', '. "$SB_LIB/stackboot.sh"; echo "ok $(ls "$SB_RUN" | wc -l)"'], { env: r.env(), reject: false });
    expect(res.stdout.trim()).toBe('ok 0');
    expect(res.stderr).toBe('');
  });
});
