/**
 * Firmware slots: boards whose firmware already counts boots and switches between two
 * boot chains (NVIDIA Jetson's rootfs A/B, U-Boot's bootcount) are driven through one
 * small interface, so `mark-good` can also tell the firmware that this boot was good,
 * after stackboot's own health checks passed (never before: NVIDIA's stock verifier marks
 * every boot good, which would end a stack's trial). stackboot's own try counter stays
 * the one that decides (a cold power cycle may reset the firmware's counters).
 *
 * Backends, chosen by FIRMWARE= in /etc/stackboot/config:
 *   none    nothing (the default)
 *   jetson  nvbootctrl -t rootfs (L4T r35/r36): get-current-slot, dump-slots-info,
 *           set-active-boot-slot N, set-slot-as-unbootable N, verify; the slot status is
 *           also readable in efivarfs (RootfsStatusSlotA/B: 4 attribute bytes, a u32,
 *           0x00 normal, 0xFF unbootable)
 *   uboot   fw_printenv/fw_setenv (libubootenv): RAUC's variables BOOT_ORDER ("A B"),
 *           BOOT_<slot>_LEFT, and U-Boot's bootcount, bootlimit, upgrade_available; all
 *           changes of one step in one fw_setenv --script call (one environment write)
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { StackbootError, run } from '../sys/index.js';
import { parseBooted } from './context.js';

export type FirmwareKind = 'none' | 'jetson' | 'uboot';
export const FIRMWARE_KINDS: readonly FirmwareKind[] = ['none', 'jetson', 'uboot'];

export interface FirmwareSlot {
  slot: string;
  bootable: boolean;
  /** boots left before the firmware gives up on the slot, where it counts them */
  retries?: number;
}

export interface FirmwareSlots {
  readonly kind: FirmwareKind;
  /** the slot the firmware booted */
  current(): Promise<string>;
  slots(): Promise<FirmwareSlot[]>;
  /** boot SLOT next (with a fresh retry count) */
  setNext(slot: string): Promise<void>;
  /** this boot was good: the firmware stops counting it */
  markGood(): Promise<void>;
  markBad(slot: string): Promise<void>;
}

export interface FirmwareOptions {
  /** the tools (tests pass fakes): nvbootctrl, fw_printenv, fw_setenv */
  tools?: Partial<Record<'nvbootctrl' | 'fw_printenv' | 'fw_setenv', string>>;
  /** efivarfs (default /sys/firmware/efi/efivars) */
  efivars?: string;
  /** the kernel command line (U-Boot passes the booted slot as rauc.slot= or stackboot.fwslot=) */
  cmdlineFile?: string;
  /** U-Boot: boots a slot gets (BOOT_<slot>_LEFT after set-next and mark-good; default 3) */
  retries?: number;
}

async function tool(cmd: string, args: string[], what: string): Promise<string> {
  const r = await run(cmd, args, { reject: false });
  if (r.exitCode !== 0) throw new StackbootError('TOOL', `${what}: ${cmd} ${args.join(' ')} failed (exit ${r.exitCode}): ${(r.stderr || r.stdout).trim().split('\n').at(-1) ?? ''}`);
  return r.stdout;
}

// ---------------------------------------------------------------- Jetson

export const JETSON_EFI_GUID = '781e084c-a330-417c-b678-38e696380cb9';
const JETSON_SLOTS = ['A', 'B'];

/** Parses `nvbootctrl -t rootfs dump-slots-info` (pure). */
export function parseJetsonSlots(text: string): FirmwareSlot[] {
  const out: FirmwareSlot[] = [];
  for (const m of text.matchAll(/^slot:\s*(\d+),\s*retry_count:\s*(\d+),\s*status:\s*(\w+)/gm)) {
    out.push({ slot: JETSON_SLOTS[Number(m[1])] ?? m[1]!, retries: Number(m[2]), bootable: m[3] === 'normal' });
  }
  if (!out.length) throw new StackbootError('TOOL', `nvbootctrl dump-slots-info: no slot lines in ${JSON.stringify(text.slice(0, 200))}`);
  return out;
}

/** A RootfsStatusSlot<X> efivarfs file (pure): 4 attribute bytes, then the status as a little-endian u32. */
export function parseRootfsStatus(buf: Buffer): number {
  if (buf.length < 8) throw new StackbootError('TOOL', `a RootfsStatusSlot variable of ${buf.length} bytes (want 4 attribute bytes and a u32)`);
  return buf.readUInt32LE(4);
}

export function encodeRootfsStatus(attributes: number, status: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt32LE(attributes, 0);
  b.writeUInt32LE(status, 4);
  return b;
}

const slotIndex = (slot: string): number => {
  const i = JETSON_SLOTS.indexOf(slot.toUpperCase());
  if (i < 0) throw new StackbootError('USAGE', `a Jetson rootfs slot is A or B, not ${slot}`);
  return i;
};

export function jetsonSlots(o: FirmwareOptions = {}): FirmwareSlots {
  const nv = o.tools?.nvbootctrl ?? 'nvbootctrl';
  const efivars = o.efivars ?? '/sys/firmware/efi/efivars';
  const ctl = (args: string[], what: string) => tool(nv, ['-t', 'rootfs', ...args], what);
  const statusFile = (slot: string) => path.join(efivars, `RootfsStatusSlot${JETSON_SLOTS[slotIndex(slot)]}-${JETSON_EFI_GUID}`);
  return {
    kind: 'jetson',
    async current() {
      const out = (await ctl(['get-current-slot'], 'the current rootfs slot')).trim();
      const slot = JETSON_SLOTS[Number(out)];
      if (!/^[01]$/.test(out) || !slot) throw new StackbootError('TOOL', `nvbootctrl get-current-slot said ${JSON.stringify(out)}`);
      return slot;
    },
    async slots() {
      const slots = parseJetsonSlots(await ctl(['dump-slots-info'], 'the rootfs slots'));
      // the UEFI variable is what the firmware reads: where it is readable it has the last word
      for (const s of slots) {
        const b = await fs.readFile(statusFile(s.slot)).catch(() => null);
        if (b) s.bootable = parseRootfsStatus(b) === 0;
      }
      return slots;
    },
    async setNext(slot) {
      await ctl(['set-active-boot-slot', String(slotIndex(slot))], `boot rootfs slot ${slot} next`);
    },
    async markGood() {
      await ctl(['verify'], 'mark this boot good');
    },
    async markBad(slot) {
      await ctl(['set-slot-as-unbootable', String(slotIndex(slot))], `mark rootfs slot ${slot} unbootable`);
    },
  };
}

// ---------------------------------------------------------------- U-Boot

/** Parses `fw_printenv` output (pure): NAME=value lines, read as the booted record is. */
export function parseUbootEnv(text: string): Record<string, string> {
  return parseBooted(text);
}

export function ubootSlots(o: FirmwareOptions = {}): FirmwareSlots {
  const printenv = o.tools?.fw_printenv ?? 'fw_printenv';
  const setenv = o.tools?.fw_setenv ?? 'fw_setenv';
  const retries = o.retries ?? 3;
  const env = async () => parseUbootEnv(await tool(printenv, [], 'read the U-Boot environment'));
  const order = (e: Record<string, string>) => (e.BOOT_ORDER ?? 'A B').split(/\s+/).filter(Boolean);
  /** every change of one step in one environment write */
  const set = async (vars: Record<string, string>, what: string) => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'sb-fwenv-'));
    try {
      const script = path.join(dir, 'script');
      await fs.writeFile(script, Object.entries(vars).map(([k, v]) => `${k} ${v}`).join('\n') + '\n');
      await tool(setenv, ['--script', script], what);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  };
  const check = (e: Record<string, string>, slot: string) => {
    if (!order(e).includes(slot)) throw new StackbootError('USAGE', `U-Boot slot ${slot} is not in BOOT_ORDER (${order(e).join(' ')})`);
  };
  const api: FirmwareSlots = {
    kind: 'uboot',
    async current() {
      const cmdline = await fs.readFile(o.cmdlineFile ?? '/proc/cmdline', 'utf8').catch(() => '');
      const m = /(?:^|\s)(?:stackboot\.fwslot|rauc\.slot)=(\S+)/.exec(cmdline);
      if (m) return m[1]!;
      const e = await env();
      const s = order(e).find((x) => Number(e[`BOOT_${x}_LEFT`] ?? '1') > 0);
      if (!s) throw new StackbootError('STATE', 'U-Boot: no slot in BOOT_ORDER has boots left');
      return s;
    },
    async slots() {
      const e = await env();
      return order(e).map((s) => ({ slot: s, retries: Number(e[`BOOT_${s}_LEFT`] ?? retries), bootable: Number(e[`BOOT_${s}_LEFT`] ?? retries) > 0 }));
    },
    async setNext(slot) {
      const e = await env();
      check(e, slot);
      await set({ BOOT_ORDER: [slot, ...order(e).filter((x) => x !== slot)].join(' '), [`BOOT_${slot}_LEFT`]: String(retries), bootcount: '0', upgrade_available: '1' }, `boot slot ${slot} next`);
    },
    async markGood() {
      const slot = await api.current();
      await set({ [`BOOT_${slot}_LEFT`]: String(retries), bootcount: '0', upgrade_available: '0' }, 'mark this boot good');
    },
    async markBad(slot) {
      const e = await env();
      check(e, slot);
      await set({ [`BOOT_${slot}_LEFT`]: '0', BOOT_ORDER: [...order(e).filter((x) => x !== slot), slot].join(' ') }, `mark slot ${slot} bad`);
    },
  };
  return api;
}

/** The backend for FIRMWARE= (null for none). */
export function firmwareSlots(kind: FirmwareKind, o: FirmwareOptions = {}): FirmwareSlots | null {
  switch (kind) {
    case 'none':
      return null;
    case 'jetson':
      return jetsonSlots(o);
    case 'uboot':
      return ubootSlots(o);
    default:
      throw new StackbootError('CONFIG', `FIRMWARE must be one of ${FIRMWARE_KINDS.join(', ')}, not ${String(kind)}`);
  }
}
