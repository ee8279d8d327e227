/** The command list. Each entry is a yargs CommandModule from its own file. */
import type { CommandModule } from 'yargs';
import { initramfsCommand } from './initramfs.js';
import { buildCommand } from './build.js';
import { keygenCommand, signCommand, verifyCommand } from './keys.js';
import { imageCommand } from './image.js';
import { flashCommand } from './flash.js';
import { migrateCommand } from './migrate.js';
import { bundleCommand } from './bundle.js';
import { initStoreCommand } from './store.js';
import { cacheCommand } from './cache.js';
import { pushCommand } from './push.js';
import { pullCommand } from './pull.js';
import { bootUpdateCommand } from './boot-update.js';
import { installCommand, rollbackCommand, gcCommand, doctorCommand, statusCommand, markGoodCommand, markBadCommand, factoryResetCommand } from './node.js';

export const commands: CommandModule<any, any>[] = [
  buildCommand,
  cacheCommand,
  keygenCommand,
  signCommand,
  verifyCommand,
  initramfsCommand,
  imageCommand,
  flashCommand,
  migrateCommand,
  initStoreCommand,
  bundleCommand,
  pushCommand,
  pullCommand,
  bootUpdateCommand,
  installCommand, rollbackCommand, gcCommand, doctorCommand, statusCommand, markGoodCommand, markBadCommand, factoryResetCommand,
];
