/**
 * PE/COFF checks for what a UEFI firmware starts: the boot program on the ESP
 * (EFI/BOOT/BOOTAA64.EFI, e.g. JetPack's L4TLauncher) and a kernel that such a launcher
 * hands to the firmware's LoadImage (an EFI-stub Image: "MZ", then the PE header).
 */
import { StackbootError, type Arch } from '../sys/index.js';

/** PE machine numbers (IMAGE_FILE_MACHINE_*). */
export const PE_MACHINE: Record<Arch, number> = { amd64: 0x8664, arm64: 0xaa64 };

/** The removable-media boot path UEFI looks for on a partition, per arch (UEFI spec 3.5.1.1). */
export const EFI_BOOT_PATH: Record<Arch, string> = { amd64: 'EFI/BOOT/BOOTX64.EFI', arm64: 'EFI/BOOT/BOOTAA64.EFI' };

/** The PE machine of a file's first bytes (the DOS header and the PE header), or undefined when it is not a PE image. */
export function peMachine(buf: Buffer): number | undefined {
  if (buf.length < 0x40 || buf.toString('latin1', 0, 2) !== 'MZ') return undefined;
  const off = buf.readUInt32LE(0x3c);
  if (off + 6 > buf.length || buf.toString('latin1', off, off + 4) !== 'PE\0\0') return undefined;
  return buf.readUInt16LE(off + 4);
}

/** Checks that a file's head is a PE image for `arch`; `what` names it and `why` says who needs it. */
export function checkPe(buf: Buffer, arch: Arch, what: string, why: string): void {
  const m = peMachine(buf);
  if (m === undefined) {
    const gz = buf[0] === 0x1f && buf[1] === 0x8b;
    throw new StackbootError('USAGE', `${what} is not a PE (UEFI) image${gz ? ' but gzip-compressed (an Image.gz: give the uncompressed Image)' : ''}: ${why}`);
  }
  if (m !== PE_MACHINE[arch]) throw new StackbootError('USAGE', `${what} is a PE image for machine 0x${m.toString(16)}, not ${arch} (0x${PE_MACHINE[arch].toString(16)}): ${why}`);
}
