/**
 * ELF header checks for what goes into the standalone initrd: busybox must be a static
 * executable for the target arch, and the kernel modules must be for that arch.
 */
import { StackbootError, type Arch } from '../sys/index.js';

const ELF_MACHINE: Record<Arch, number> = { amd64: 62, arm64: 183 };

/** Checks that a binary is a static ELF executable for `arch` (a dynamic busybox cannot run in an initrd). */
export function checkStaticElf(buf: Buffer, arch: Arch, what: string): void {
  if (buf.length < 64 || buf.readUInt32BE(0) !== 0x7f454c46) throw new StackbootError('CONFIG', `${what} is not an ELF binary`);
  if (buf[4] !== 2 || buf[5] !== 1) throw new StackbootError('CONFIG', `${what} is not a 64-bit little-endian ELF binary`);
  const machine = buf.readUInt16LE(18);
  if (machine !== ELF_MACHINE[arch]) throw new StackbootError('CONFIG', `${what} is built for ELF machine ${machine}, not ${arch}`);
  const phoff = Number(buf.readBigUInt64LE(32));
  const phentsize = buf.readUInt16LE(54);
  const phnum = buf.readUInt16LE(56);
  for (let i = 0; i < phnum; i++) {
    const off = phoff + i * phentsize;
    if (off + 4 > buf.length) break;
    if (buf.readUInt32LE(off) === 3) throw new StackbootError('CONFIG', `${what} is dynamically linked: use busybox-static`);
  }
}

/** Checks that a kernel module (ELF relocatable) is for `arch`. */
export function checkModuleArch(buf: Buffer, arch: Arch, what: string): void {
  if (buf.length < 20 || buf.readUInt32BE(0) !== 0x7f454c46) throw new StackbootError('CONFIG', `${what} is not an ELF kernel module`);
  const machine = buf.readUInt16LE(18);
  if (machine !== ELF_MACHINE[arch]) throw new StackbootError('CONFIG', `kernel modules in ${what} are not for ${arch} (ELF machine ${machine})`);
}

/** Checks that an ELF file (a program or library going into the initrd) is for `arch`. */
export function checkElfArch(buf: Buffer, arch: Arch, what: string): void {
  if (buf.length < 20 || buf.readUInt32BE(0) !== 0x7f454c46) throw new StackbootError('CONFIG', `${what} is not an ELF file`);
  const machine = buf.readUInt16LE(18);
  if (machine !== ELF_MACHINE[arch]) throw new StackbootError('CONFIG', `${what} is built for ELF machine ${machine}, not ${arch}`);
}
