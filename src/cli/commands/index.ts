/** The command list. Each entry is a yargs CommandModule from its own file. */
import type { CommandModule } from 'yargs';

export const commands: CommandModule<any, any>[] = [];
