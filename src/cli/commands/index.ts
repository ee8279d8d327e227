/** The command list. Each entry is a yargs CommandModule from its own file. */
import type { CommandModule } from 'yargs';
import { initramfsCommand } from './initramfs.js';
import { buildCommand } from './build.js';
import { keygenCommand, signCommand, verifyCommand } from './keys.js';

export const commands: CommandModule<any, any>[] = [
  buildCommand,
  keygenCommand,
  signCommand,
  verifyCommand,
  initramfsCommand,
];
