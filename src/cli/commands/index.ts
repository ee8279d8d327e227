/** The command list. Each entry is a yargs CommandModule from its own file. */
import type { CommandModule } from 'yargs';
import { initramfsCommand } from './initramfs.js';

export const commands: CommandModule<any, any>[] = [
  initramfsCommand,
];
