import { readFileSync, existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { fakeRoots, readEvents, readState, type FakeRoot, type StoreSpec } from './harness.js';

const CONF = 'STORES=nvme0n1 vda\nSTORE_LABEL=sb-store\nDATA_LABEL=sb-data\nDEVICE_TIMEOUT=1\nDEVICE_SETTLE=0\nON_FAIL_DELAY=7\n';

/** a fresh fake root, cleaned up after the test */
const newRoot = fakeRoots();

function oneStore(spec: StoreSpec) {
  const r = newRoot();
  const store = r.makeStore('s1', spec);
  r.addDisk('vda', [{ name: 'vda1' }, { name: 'vda2', label: 'sb-store', store: store.dir }]);
  return { r, store };
}

interface Case {
  name: string;
  spec: StoreSpec;
  conf?: string;
  env?: Record<string, string>;
  slot: 'a' | 'b' | null;
  status?: string;
  tries?: string;
  state: string[];
  events: string[];
  /** Setup before booting (dir: the store). */
  before?: (dir: string, stacks: Partial<Record<'a' | 'b', string>>) => void;
  after?: (r: FakeRoot, dir: string, stacks: Partial<Record<'a' | 'b', string>>) => void;
}

const cases: Case[] = [
  {
    name: 'fresh good boot',
    spec: { current: 'a', a: { status: 'good' } },
    slot: 'a',
    status: 'good',
    state: ['current a', 'a good A'],
    events: ['boot a'],
  },
  {
    name: 'pending with tries: decremented and persisted before the try',
    spec: { current: 'a', a: { status: 'good' }, b: { status: 'pending', tries: 2 } },
    slot: 'b',
    status: 'pending',
    tries: '1',
    state: ['current a', 'a good A', 'b pending B 1'],
    events: ['try b 1', 'boot b 1'],
    after: (r) => {
      // the state on disk at the first layer mount already had the decremented count
      expect(r.statesAtLayerMount()[0]).toContain(' pending ');
      expect(r.statesAtLayerMount()[0]).toMatch(/^b pending [0-9a-f]{64} 1$/m);
    },
  },
  {
    name: 'pending with 0 tries: exhausted, bad, boot the good one',
    spec: { current: 'a', a: { status: 'good' }, b: { status: 'pending', tries: 0 } },
    slot: 'a',
    status: 'good',
    state: ['current a', 'a good A', 'b bad B'],
    events: ['exhausted b 0', 'boot a'],
  },
  {
    name: 'corrupt layer (sha256): fail, upper wiped (dot-files too), fallback on the same boot',
    spec: { current: 'a', a: { status: 'good' }, b: { status: 'pending', tries: 3, layers: [{ name: 'base', size: 500 }, { name: 'app', size: 600, corrupt: true }] } },
    conf: CONF + 'VERIFY=sha256\n',
    slot: 'a',
    status: 'good',
    state: ['current a', 'a good A', 'b bad B'],
    events: ['try b 2', 'wipe b', 'fail b', 'boot a'],
    before: (dir, st) => {
      mkdirSync(join(dir, 'upper', st.b!, 'data', '.config'), { recursive: true });
      writeFileSync(join(dir, 'upper', st.b!, 'data', '.hidden'), 'x');
      writeFileSync(join(dir, 'upper', st.b!, 'data', 'visible'), 'x');
    },
    after: (r, dir, st) => {
      expect(readdirSync(join(dir, 'upper', st.b!, 'data'))).toEqual([]);
      expect(readdirSync(join(dir, 'upper')).filter((f) => f.startsWith('.wipe'))).toEqual([]);
      expect(readEvents({ dir } as never).find((e) => e.event === 'fail')!.reason).toMatch(/app .* sha256 mismatch/);
      expect(r.booted().fallback).toMatch(/slot b .*sha256 mismatch/);
      // no layer of b was mounted
      expect(r.calls().filter((c) => c.startsWith('layer ')).length).toBe(2);
    },
  },
  {
    name: 'corrupt layer passes with VERIFY=size (same size)',
    spec: { current: 'a', a: { status: 'good', layers: [{ name: 'base', size: 500, corrupt: true }, { name: 'app', size: 300 }] } },
    slot: 'a',
    status: 'good',
    state: ['current a', 'a good A'],
    events: ['boot a'],
  },
  {
    name: 'missing layer: fail, fallback',
    spec: { current: 'a', a: { status: 'good' }, b: { status: 'pending', tries: 1, layers: [{ name: 'base', size: 500, missing: true }] } },
    slot: 'a',
    status: 'good',
    state: ['current a', 'a good A', 'b bad B'],
    events: ['try b 0', 'fail b', 'boot a'],
    after: (_r, dir) => expect(readEvents({ dir } as never).find((e) => e.event === 'fail')!.reason).toMatch(/base .* missing/),
  },
  {
    name: 'wrong size layer: current good fails, current moves to the other good',
    spec: { current: 'a', a: { status: 'good', layers: [{ name: 'base', size: 500, wrongSize: true }] }, b: { status: 'good' } },
    slot: 'b',
    status: 'good',
    state: ['current b', 'a bad A', 'b good B'],
    events: ['fail a', 'boot b'],
  },
  {
    name: 'current b good is tried before a good',
    spec: { current: 'b', a: { status: 'good' }, b: { status: 'good' } },
    slot: 'b',
    status: 'good',
    state: ['current b', 'a good A', 'b good B'],
    events: ['boot b'],
  },
  {
    name: 'manifest id mismatch: pending slot ignored, tries untouched',
    spec: { current: 'a', a: { status: 'good' }, b: { status: 'pending', tries: 2, idMismatch: true } },
    slot: 'a',
    status: 'good',
    state: ['current a', 'a good A', 'b pending X 2'],
    events: ['boot a'],
  },
  {
    name: 'manifest id mismatch on the current good: falls to the other good without marking it bad',
    spec: { current: 'a', a: { status: 'good', idMismatch: true }, b: { status: 'good' } },
    slot: 'b',
    status: 'good',
    state: ['current a', 'a good X', 'b good B'],
    events: ['boot b'],
  },
  {
    name: 'mount failure of a layer: fail, unmount in reverse',
    spec: { current: 'a', a: { status: 'good' }, b: { status: 'pending', tries: 2 } },
    env: { FAKE_FAIL_LAYER: 'FAILHASH' },
    slot: 'a',
    status: 'good',
    state: ['current a', 'a good A', 'b bad B'],
    events: ['try b 1', 'fail b', 'boot a'],
  },
  {
    name: 'no INIT in the merged root: fail, every candidate fails',
    spec: { current: 'a', a: { status: 'good' } },
    env: { FAKE_NO_INIT: '1' },
    slot: null,
    state: ['current -', 'a bad A'],
    events: ['fail a', 'allfailed -'],
    after: (r) => {
      const calls = r.calls();
      // layers l0, l1, tmpfs, overlay, then unmount overlay, tmpfs, l1, l0
      const um = calls.filter((c) => c.startsWith('umount'));
      expect(um.slice(0, 4).map((c) => c.replace(r.dir, ''))).toEqual([
        'umount /root',
        'umount /run/sb/up',
        'umount-layer /run/sb/l1',
        'umount-layer /run/sb/l0',
      ]);
      expect(calls).toContain('sleep 7');
      expect(calls[calls.length - 1]).toBe('shell'); // the fake reboot returned
      expect(calls).toContain('reboot');
    },
  },
  {
    name: 'stackboot.slot=b forces the other good slot',
    spec: { current: 'a', a: { status: 'good' }, b: { status: 'good' } },
    env: { SB_CMDLINE: 'quiet stackboot.slot=b' },
    slot: 'b',
    status: 'good',
    state: ['current a', 'a good A', 'b good B'],
    events: ['boot b'],
  },
];

describe('sb_boot state machine (one store)', () => {
  for (const c of cases) {
    it(c.name, async () => {
      const { r, store } = oneStore(c.spec);
      if (c.env?.FAKE_FAIL_LAYER) c.env.FAKE_FAIL_LAYER = store.layerHashes.b![1]!;
      c.before?.(store.dir, store.stack);
      const res = await r.boot(c.conf ?? CONF, c.env);
      const sub = (s: string) =>
        s.replace(/ A( |$)/, ` ${store.stack.a} `).replace(/ B( |$)/, ` ${store.stack.b} `).trim();
      const state = readState(store).trim().split('\n');
      expect(state[0]).toBe('stackboot-state 1');
      const expected = c.state.map(sub);
      for (let i = 0; i < expected.length; i++) {
        if (expected[i]!.includes(' X')) expect(state[i + 1]).toMatch(new RegExp('^' + expected[i]!.replace(' X', ' [0-9a-f]{64}') + '$'));
        else expect(state[i + 1]).toBe(expected[i]);
      }
      expect(state.length).toBe(expected.length + 1);
      const ev = readEvents(store).map((e) => [e.event, e.slot, e.tries].filter(Boolean).join(' '));
      expect(ev).toEqual(c.events);
      if (c.slot) {
        expect(res.out).toContain('BOOT=0');
        const b = r.booted();
        expect(b.slot).toBe(c.slot);
        expect(b.stack).toBe(store.stack[c.slot]);
        expect(b.status).toBe(c.status);
        expect(b.tries).toBe(c.tries ?? '');
        expect(b.store_id).toBe(store.id);
        expect(b.store_dev).toBe(join(r.dir, 'dev/vda2'));
        const ov = r.calls().filter((x) => x.includes('-t overlay'));
        const n = readEvents(store).filter((e) => e.event === 'boot').length;
        expect(n).toBe(1);
        expect(ov.at(-1)).toMatch(/lowerdir=[^,]*\/run\/sb\/l1:[^,]*\/run\/sb\/l0,upperdir=.*\/run\/sb\/up\/data,workdir=.*\/run\/sb\/up\/work overlay .*\/root$/);
        // the store ends read-only (tmpfs upper)
        expect(r.calls().filter((x) => x.includes('remount')).at(-1)).toMatch(/remount,ro/);
      } else {
        expect(res.out).toContain('BOOT=1');
        expect(res.out).toContain('ALLFAILED=1');
      }
      c.after?.(r, store.dir, store.stack);
    });
  }
});

describe('sb_boot across stores and devices', () => {
  it('two stores in order, the first broken: the second is used', async () => {
    const r = newRoot();
    const nv = r.makeStore('nvme', { current: 'a', a: { status: 'good', layers: [{ name: 'base', size: 100, missing: true }] } });
    const sd = r.makeStore('sd', { current: 'a', a: { status: 'good' } });
    r.addDisk('nvme0n1', [{ name: 'nvme0n1p1', label: 'sb-store', store: nv.dir }]);
    r.addDisk('vda', [{ name: 'vda1', label: 'sb-data' }, { name: 'vda2', label: 'sb-store', store: sd.dir }]);
    const res = await r.boot(CONF);
    expect(res.out).toContain('BOOT=0');
    expect(r.booted().store_dev).toBe(join(r.dir, 'dev/vda2'));
    expect(r.booted().store_id).toBe(sd.id);
    expect(r.booted().fallback).toMatch(/missing/);
    expect(readEvents(nv).map((e) => e.event)).toEqual(['fail']);
    expect(readEvents(sd).map((e) => e.event)).toEqual(['boot']);
    // the store not booted is unmounted
    expect(r.calls()).toContain(`umount ${r.dir}/run/sb/s0`);
    // ...but recorded, so status can name it as the fallback store
    const stores = readFileSync(join(r.runDir, 'stackboot/stores'), 'utf8').trim().split('\n');
    expect(stores).toHaveLength(2);
    expect(stores[0]).toMatch(new RegExp(`^dev=${r.dir}/dev/nvme0n1p1 id=${nv.id} booted=0 current=. a=bad:`));
    expect(stores[1]).toMatch(new RegExp(`^dev=${r.dir}/dev/vda2 id=${sd.id} booted=1 current=a a=good:[0-9a-f]{12} b=-:-$`));
  });

  it('same store-id on two devices: both tried by device, warning logged', async () => {
    const r = newRoot();
    const id = 'ab'.repeat(16);
    const nv = r.makeStore('nvme', { storeId: id, current: 'a', a: { status: 'bad' } });
    const sd = r.makeStore('sd', { storeId: id, current: 'a', a: { status: 'good' } });
    r.addDisk('nvme0n1', [{ name: 'nvme0n1p1', label: 'sb-store', store: nv.dir }]);
    r.addDisk('vda', [{ name: 'vda2', label: 'sb-store', store: sd.dir }]);
    const res = await r.boot(CONF);
    expect(res.out).toContain('BOOT=0');
    expect(res.err).toMatch(/store-id abab.* is on both .*nvme0n1p1 and .*vda2/);
    expect(r.booted().store_dev).toBe(join(r.dir, 'dev/vda2'));
  });

  it('stackboot.store= puts that store first', async () => {
    const r = newRoot();
    const nv = r.makeStore('nvme', { current: 'a', a: { status: 'good' } });
    const sd = r.makeStore('sd', { current: 'a', a: { status: 'good' } });
    r.addDisk('nvme0n1', [{ name: 'nvme0n1p1', label: 'sb-store', store: nv.dir }]);
    r.addDisk('vda', [{ name: 'vda2', label: 'sb-store', store: sd.dir }]);
    await r.boot(CONF, { SB_CMDLINE: `stackboot.store=${sd.id}` });
    expect(r.booted().store_id).toBe(sd.id);
    await r.sh(''); // no-op
  });

  it('a GPT partition name also marks a store', async () => {
    const r = newRoot();
    const sd = r.makeStore('sd', { current: 'a', a: { status: 'good' } });
    r.addDisk('vda', [{ name: 'vda2', partname: 'sb-store', store: sd.dir }]);
    const res = await r.boot(CONF);
    expect(res.out).toContain('BOOT=0');
  });

  it('no store at all: bounded wait, logged, then ON_FAIL', async () => {
    const r = newRoot();
    r.addDisk('vda', [{ name: 'vda1' }]);
    const res = await r.boot('STORES=nvme0n1 vda\nDEVICE_TIMEOUT=2\nON_FAIL=shell\n');
    expect(res.out).toContain('BOOT=1');
    expect(res.err).toMatch(/waiting up to 2s for disks: nvme0n1/);
    expect(res.err).toMatch(/gave up after 2s waiting for: nvme0n1/);
    expect(res.err).toMatch(/no store/);
    const calls = r.calls();
    expect(calls.filter((c) => c.startsWith('sleep')).length).toBe(8); // 2 s in 0.25 s ticks
    expect(calls).toContain('shell');
    expect(calls).not.toContain('reboot');
  });

  it('all bad on two stores: allfailed on both, reboot after the delay', async () => {
    const r = newRoot();
    const nv = r.makeStore('nvme', { current: '-', a: { status: 'bad' } });
    const sd = r.makeStore('sd', { current: 'a', a: { status: 'pending', tries: 0 } });
    r.addDisk('nvme0n1', [{ name: 'nvme0n1p1', label: 'sb-store', store: nv.dir }]);
    r.addDisk('vda', [{ name: 'vda2', label: 'sb-store', store: sd.dir }]);
    const res = await r.boot(CONF);
    expect(res.out).toContain('BOOT=1');
    expect(readEvents(nv).map((e) => e.event)).toEqual(['allfailed']);
    expect(readEvents(sd).map((e) => e.event)).toEqual(['exhausted', 'allfailed']);
    const calls = r.calls();
    expect(calls.indexOf('sleep 7')).toBeLessThan(calls.indexOf('reboot'));
    expect(res.err).toMatch(/rebooting in 7s/);
  });

  it('UPPER=disk: upper on the store, store stays read-write, stale uppers removed', async () => {
    const r = newRoot();
    const s = r.makeStore('sd', { current: 'a', a: { status: 'good' } });
    r.addDisk('vda', [{ name: 'vda2', label: 'sb-store', store: s.dir }]);
    mkdirSync(join(s.dir, 'upper', 'f'.repeat(64), 'data'), { recursive: true });
    mkdirSync(join(s.dir, 'upper', s.stack.a!, 'work', 'work'), { recursive: true });
    writeFileSync(join(s.dir, 'upper', s.stack.a!, 'work', 'work', 'junk'), '');
    const res = await r.boot(CONF + 'UPPER=disk\n');
    expect(res.out).toContain('BOOT=0');
    const ov = r.calls().find((c) => c.includes('-t overlay'))!;
    expect(ov).toContain(`upperdir=${r.dir}/run/sb/s0/upper/${s.stack.a}/data,workdir=${r.dir}/run/sb/s0/upper/${s.stack.a}/work`);
    expect(readdirSync(join(s.dir, 'upper', s.stack.a!, 'work'))).toEqual([]);
    expect(existsSync(join(s.dir, 'upper', 'f'.repeat(64)))).toBe(false);
    expect(r.calls().filter((c) => c.includes('remount')).at(-1)).toMatch(/remount,rw/);
    expect(r.calls().some((c) => c.includes('-t tmpfs'))).toBe(false);
  });

  it('persistent paths are bound from the data partition on the same disk', async () => {
    const r = newRoot();
    const s = r.makeStore('sd', { current: 'a', a: { status: 'good' } });
    const data = r.dataDir('data');
    const other = r.dataDir('otherdata');
    r.addDisk('nvme0n1', [{ name: 'nvme0n1p3', label: 'sb-data', store: other }]);
    r.addDisk('vda', [{ name: 'vda2', label: 'sb-store', store: s.dir }, { name: 'vda3', label: 'sb-data', store: data }]);
    const res = await r.boot(CONF + 'PERSIST=/var/lib/app /home ../etc\n');
    expect(res.out).toContain('BOOT=0');
    const calls = r.calls();
    expect(calls).toContain(`mount -t ext4 -o rw ${r.dir}/dev/vda3 ${r.dir}/run/sb/data`);
    expect(calls).toContain(`mount -o bind ${r.dir}/run/sb/data/var/lib/app ${r.dir}/root/var/lib/app`);
    expect(calls).toContain(`mount -o bind ${r.dir}/run/sb/data/home ${r.dir}/root/home`);
    expect(existsSync(join(data, 'var/lib/app'))).toBe(true);
    expect(res.err).toMatch(/persistent path \/\.\.\/etc refused/);
    expect(r.booted().data_dev).toBe(`${r.dir}/dev/vda3`);
  });

  it('a second sb_boot on our overlay returns 0 without doing anything (dracut)', async () => {
    const r = newRoot();
    const s = r.makeStore('sd', { current: 'a', a: { status: 'pending', tries: 3 } });
    r.addDisk('vda', [{ name: 'vda2', label: 'sb-store', store: s.dir }]);
    writeFileSync(join(r.dir, 'boot.conf'), CONF);
    const res = await r.sh(`sb_config_load "$SB_T/boot.conf"
sb_boot "$SB_T/root"; echo "FIRST=$?"
sb_boot "$SB_T/root"; echo "SECOND=$?"`);
    expect(res.out).toContain('FIRST=0');
    expect(res.out).toContain('SECOND=0');
    expect(readState(s)).toMatch(/^a pending [0-9a-f]{64} 2$/m);
    expect(readEvents(s).map((e) => e.event)).toEqual(['try', 'boot']);
  });

  it('state writes are atomic: state.new fsynced, renamed, directory fsynced', async () => {
    const r = newRoot();
    const s = r.makeStore('sd', { current: 'a', a: { status: 'good' }, b: { status: 'pending', tries: 2 } });
    r.addDisk('vda', [{ name: 'vda2', label: 'sb-store', store: s.dir }]);
    await r.boot(CONF);
    const mnt = `${r.dir}/run/sb/s0`;
    const calls = r.calls();
    const i = calls.indexOf(`fsync ${mnt}/state.new`);
    expect(i).toBeGreaterThan(-1);
    expect(calls[i + 1]).toBe(`mv -f ${mnt}/state.new ${mnt}/state`);
    expect(calls[i + 2]).toBe(`fsync ${mnt}`);
    // remounted rw before the first write, and the write came before the first layer mount
    expect(calls.findIndex((c) => c.includes('remount,rw'))).toBeLessThan(i);
    expect(i).toBeLessThan(calls.findIndex((c) => c.startsWith('layer ')));
    expect(existsSync(join(s.dir, 'state.new'))).toBe(false);
  });
});

describe('sb_load_modules, sb_break_requested, logging', () => {
  it('modprobe failures are logged and do not stop', async () => {
    const r = newRoot();
    const res = await r.sh('sb_load_modules overlay missingmod squashfs; echo "RC=$?"');
    expect(res.out).toContain('RC=0');
    expect(r.calls()).toEqual(['modprobe overlay', 'modprobe missingmod', 'modprobe squashfs']);
    expect(res.err).toMatch(/modprobe missingmod failed/);
  });

  it('sb_break_requested and sb_debug follow the cmdline; kmsg gets <N>stackboot: lines', async () => {
    const r = newRoot();
    const res = await r.sh(
      'sb_config_load /nonexistent 2>/dev/null; sb_break_requested && echo BREAK; sb_debug "dbg line"; sb_log "info line"; sb_warn "warn line"',
      { SB_CMDLINE: 'ro stackboot.break stackboot.debug' },
    );
    expect(res.out).toContain('BREAK');
    const kmsg = (await import('node:fs')).readFileSync(join(r.dir, 'kmsg'), 'utf8');
    expect(kmsg).toContain('<7>stackboot: debug: dbg line');
    expect(kmsg).toContain('<6>stackboot: info line');
    expect(kmsg).toContain('<4>stackboot: warning: warn line');
    const res2 = await r.sh('sb_config_load /nonexistent 2>/dev/null; sb_break_requested || echo NOBREAK; sb_debug hidden; sb_log ok', {
      SB_CMDLINE: 'ro',
      SB_KMSG: join(r.dir, 'no/such/kmsg'),
    });
    expect(res2.out).toContain('NOBREAK');
    expect(res2.err).not.toContain('hidden');
    expect(res2.err).toContain('stackboot: ok');
  });
});
