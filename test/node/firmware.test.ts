/**
 * Firmware-slot backends against fakes that behave as the firmware does: NVIDIA's
 * nvbootctrl with its efivarfs status variables, and U-Boot's environment through
 * fw_printenv/fw_setenv with RAUC's boot-script rules. Each fake keeps its state in files;
 * a "boot" of the fake firmware decrements the active slot's retry counter and switches
 * slots when it reaches 0; a cold power cycle resets the Jetson counters (they live in a
 * scratch register). mark-good tells the firmware only after stackboot's own state says
 * good.
 */
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { encodeRootfsStatus, jetsonSlots, JETSON_EFI_GUID, parseJetsonSlots, parseRootfsStatus, ubootSlots, firmwareSlots, type FirmwareSlots } from '../../src/node/firmware.js';
import { markBootedGood } from '../../src/node/rollback.js';
import { nodeContext } from '../../src/node/context.js';
import { stageStore } from '../../src/format/store.js';
import { fakeBuild, layerBytes } from '../support/update-fixtures.js';

const dirs: string[] = [];
afterEach(() => {
  while (dirs.length) rmSync(dirs.pop()!, { recursive: true, force: true });
});
const tmp = () => {
  const d = mkdtempSync(path.join(tmpdir(), 'sb-fw-'));
  dirs.push(d);
  return d;
};
const MAX = 3;

/** A fake Jetson: nvbootctrl (busybox sh) over state files, efivarfs files, and the firmware's boot. */
function fakeJetson() {
  const d = tmp();
  const efi = path.join(d, 'efivars');
  const st = path.join(d, 'state');
  const sh = `#!/bin/sh
S='${st}'; E='${efi}'
[ "$1" = -t ] && [ "$2" = rootfs ] || { echo "want -t rootfs" >&2; exit 2; }
shift 2
status() { if [ "$(od -An -tu1 -j4 -N1 "$E/RootfsStatusSlot$1-${JETSON_EFI_GUID}" | tr -d ' ')" = 0 ]; then echo normal; else echo unbootable; fi; }
letter() { [ "$1" = 0 ] && echo A || echo B; }
setstatus() { printf '\\007\\000\\000\\000\\'"$2"'\\000\\000\\000' > "$E/RootfsStatusSlot$(letter $1)-${JETSON_EFI_GUID}"; }
case "$1" in
get-current-slot) cat "$S/current" ;;
dump-slots-info) echo "Current rootfs slot: $(letter $(cat $S/current))"; echo "num_slots: 2"
  for i in 0 1; do echo "slot: $i,             retry_count: $(cat $S/retry$i),             status: $(status $(letter $i))"; done ;;
set-active-boot-slot) echo "$2" > "$S/active"; echo ${MAX} > "$S/retry$2"; setstatus "$2" 000 ;;
set-slot-as-unbootable) setstatus "$2" 377 ;;
verify) c=$(cat "$S/current"); echo ${MAX} > "$S/retry$c"; setstatus "$c" 000; echo verified >> "$S/log" ;;
*) echo "unknown $1" >&2; exit 2 ;;
esac
`;
  for (const f of ['state', 'efivars']) mkdirSync(path.join(d, f));
  const tool = path.join(d, 'nvbootctrl');
  writeFileSync(tool, sh);
  chmodSync(tool, 0o755);
  const w = (f: string, v: string) => writeFileSync(path.join(st, f), v + '\n');
  const r = (f: string) => readFileSync(path.join(st, f), 'utf8').trim();
  for (const [i, s] of ['A', 'B'].entries()) {
    writeFileSync(path.join(efi, `RootfsStatusSlot${s}-${JETSON_EFI_GUID}`), encodeRootfsStatus(7, 0));
    w(`retry${i}`, String(MAX));
  }
  w('current', '0');
  w('active', '0');
  const unbootable = (i: number) => parseRootfsStatus(readFileSync(path.join(efi, `RootfsStatusSlot${'AB'[i]}-${JETSON_EFI_GUID}`))) !== 0;
  return {
    fw: jetsonSlots({ tools: { nvbootctrl: tool }, efivars: efi }),
    /** the firmware boots: the active slot, unless it is unbootable or out of retries (then the other, marked unbootable) */
    boot() {
      let a = Number(r('active'));
      if (unbootable(a) || Number(r(`retry${a}`)) === 0) {
        writeFileSync(path.join(efi, `RootfsStatusSlot${'AB'[a]}-${JETSON_EFI_GUID}`), encodeRootfsStatus(7, 0xff));
        a = 1 - a;
        w('active', String(a));
      }
      w(`retry${a}`, String(Number(r(`retry${a}`)) - 1));
      w('current', String(a));
      return 'AB'[a];
    },
    /** a cold power cycle: the scratch register with the counters is reset */
    coldCycle() {
      for (const i of [0, 1]) w(`retry${i}`, String(MAX));
    },
    verified: () => (existsSync(path.join(st, 'log')) ? r('log').split('\n').length : 0),
  };
}

/** A fake U-Boot: fw_printenv/fw_setenv over an env file, and RAUC's boot script for a boot. */
function fakeUboot() {
  const d = tmp();
  const env = path.join(d, 'env');
  writeFileSync(env, 'BOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=3\nbootcount=0\nbootlimit=3\nupgrade_available=0\n');
  const printenv = path.join(d, 'fw_printenv');
  writeFileSync(printenv, `#!/bin/sh\ncat '${env}'\n`);
  // fw_setenv --script FILE: "name value" lines, all applied in one write (rename)
  const setenv = path.join(d, 'fw_setenv');
  writeFileSync(setenv, `#!/bin/sh
[ "$1" = --script ] || { echo "only --script" >&2; exit 2; }
cp '${env}' '${env}.new'
while read -r k v; do grep -v "^$k=" '${env}.new' > '${env}.tmp'; echo "$k=$v" >> '${env}.tmp'; mv '${env}.tmp' '${env}.new'; done < "$2"
mv '${env}.new' '${env}'
echo "$(cat "$2" | tr '\\n' ';')" >> '${d}/writes'
`);
  chmodSync(printenv, 0o755);
  chmodSync(setenv, 0o755);
  const cmdline = path.join(d, 'cmdline');
  const read = () => Object.fromEntries(readFileSync(env, 'utf8').trim().split('\n').map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
  const write = (e: Record<string, string>) => writeFileSync(env, Object.entries(e).map(([k, v]) => `${k}=${v}`).join('\n') + '\n');
  return {
    fw: ubootSlots({ tools: { fw_printenv: printenv, fw_setenv: setenv }, cmdlineFile: cmdline }),
    env: read,
    /** RAUC's U-Boot script: the first slot of BOOT_ORDER with boots left, its count decremented; rauc.slot= on the command line */
    boot() {
      const e = read();
      if (e.upgrade_available === '1') e.bootcount = String(Number(e.bootcount) + 1);
      const slot = e.BOOT_ORDER!.split(' ').find((s) => Number(e[`BOOT_${s}_LEFT`]) > 0);
      if (!slot) throw new Error('no slot left: U-Boot would stop');
      e[`BOOT_${slot}_LEFT`] = String(Number(e[`BOOT_${slot}_LEFT`]) - 1);
      write(e);
      writeFileSync(cmdline, `console=ttyS0 rauc.slot=${slot}\n`);
      return slot;
    },
    writes: () => (existsSync(path.join(d, 'writes')) ? readFileSync(path.join(d, 'writes'), 'utf8').trim().split('\n') : []),
  };
}

describe('firmware slots: Jetson (nvbootctrl, efivarfs)', () => {
  it('reads the tool and the UEFI variables', () => {
    expect(parseJetsonSlots('Current rootfs slot: A\nnum_slots: 2\nslot: 0,             retry_count: 3,             status: normal\nslot: 1,             retry_count: 0,             status: unbootable\n')).toEqual([
      { slot: 'A', retries: 3, bootable: true },
      { slot: 'B', retries: 0, bootable: false },
    ]);
    expect(parseRootfsStatus(encodeRootfsStatus(7, 0xff))).toBe(0xff);
    expect(() => parseRootfsStatus(Buffer.alloc(4))).toThrow(/4 attribute bytes and a u32/);
  });

  it('a slot set next and never marked good uses its retries and the firmware switches back; marked good after health, it stays', async () => {
    const j = fakeJetson();
    await j.fw.setNext('B');
    expect(j.boot()).toBe('B');
    expect(await j.fw.current()).toBe('B');
    expect(j.boot()).toBe('B');
    expect(j.boot()).toBe('B');
    // out of retries: the firmware gives up on B
    expect(j.boot()).toBe('A');
    expect(await j.fw.slots()).toEqual([
      { slot: 'A', retries: 2, bootable: true },
      { slot: 'B', retries: 0, bootable: false },
    ]);
    // again, this time marked good after the first boot
    await j.fw.setNext('B');
    expect(j.boot()).toBe('B');
    await j.fw.markGood();
    for (let i = 0; i < 5; i++) {
      expect(j.boot()).toBe('B');
      await j.fw.markGood();
    }
    expect(j.verified()).toBe(6);
  });

  it('a cold power cycle resets the firmware counters (stackboot keeps its own); mark-bad makes a slot unbootable in efivarfs', async () => {
    const j = fakeJetson();
    await j.fw.setNext('B');
    j.boot();
    j.boot();
    j.coldCycle();
    expect((await j.fw.slots())[1]).toEqual({ slot: 'B', retries: MAX, bootable: true });
    await j.fw.markBad('B');
    expect((await j.fw.slots())[1]!.bootable).toBe(false);
    expect(j.boot()).toBe('A');
    await expect(j.fw.setNext('C')).rejects.toThrow(/A or B, not C/);
  });
});

describe('firmware slots: U-Boot (fw_printenv/fw_setenv, bootcount)', () => {
  it('set-next, boots without mark-good fall back to the other slot; mark-good resets the counters in one environment write', async () => {
    const u = fakeUboot();
    await u.fw.setNext('B');
    expect(u.env()).toMatchObject({ BOOT_ORDER: 'B A', BOOT_B_LEFT: '3', upgrade_available: '1', bootcount: '0' });
    expect(u.writes()).toEqual(['BOOT_ORDER B A;BOOT_B_LEFT 3;bootcount 0;upgrade_available 1;']);
    expect([u.boot(), u.boot(), u.boot(), u.boot()]).toEqual(['B', 'B', 'B', 'A']);
    expect(u.env().bootcount).toBe('4');
    await u.fw.setNext('B');
    expect(u.boot()).toBe('B');
    expect(await u.fw.current()).toBe('B');
    await u.fw.markGood();
    expect(u.env()).toMatchObject({ BOOT_B_LEFT: '3', bootcount: '0', upgrade_available: '0' });
    await u.fw.markBad('B');
    expect(u.env()).toMatchObject({ BOOT_ORDER: 'A B', BOOT_B_LEFT: '0' });
    expect(await u.fw.slots()).toEqual([
      { slot: 'A', retries: 2, bootable: true },
      { slot: 'B', retries: 0, bootable: false },
    ]);
  });

  it('FIRMWARE=none has no backend; an unknown kind is a config error', () => {
    expect(firmwareSlots('none')).toBeNull();
    expect(() => firmwareSlots('grub' as never)).toThrow(/FIRMWARE must be one of none, jetson, uboot/);
  });
});

describe('mark-good tells the firmware only after stackboot says good', () => {
  async function pendingStore() {
    const d = tmp();
    const b = await fakeBuild(path.join(d, 'v2'), { version: '2', layers: [{ name: 'base', data: layerBytes(1000, 'fw') }] });
    await stageStore(path.join(d, 'store'), { slots: { b: { buildDir: b.dir, status: 'pending', tries: 2 } }, current: null });
    return { store: path.join(d, 'store'), stack: b.id };
  }

  it('marks the booted stack good, then verifies the firmware slot', async () => {
    const j = fakeJetson();
    const s = await pendingStore();
    await j.fw.setNext('B');
    j.boot();
    const r = await markBootedGood(await nodeContext({ store: s.store, bootedSlot: 'b' }), j.fw);
    expect(r).toMatchObject({ slot: 'b', was: 'pending', firmware: 'jetson' });
    expect(j.verified()).toBe(1);
  });

  it('a mark-good that fails (no booted slot) never tells the firmware; a firmware that fails leaves the stack good and says so', async () => {
    const j = fakeJetson();
    const s = await pendingStore();
    await expect(markBootedGood(await nodeContext({ store: s.store }), j.fw)).rejects.toThrow(/no booted slot/);
    expect(j.verified()).toBe(0);
    const broken: FirmwareSlots = { ...j.fw, markGood: async () => { throw new Error('nvbootctrl: no such device'); } };
    await expect(markBootedGood(await nodeContext({ store: s.store, bootedSlot: 'b' }), broken)).rejects.toThrow(/slot b is good, but the jetson firmware was not told/);
    const { parseState } = await import('../../src/format/state.js');
    expect(parseState(readFileSync(path.join(s.store, 'state'), 'utf8')).slots.b?.status).toBe('good');
  });
});
