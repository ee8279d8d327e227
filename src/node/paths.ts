/** Where stackboot keeps its files on a node. */
export const NODE_CONFIG = '/etc/stackboot/config';
export const DEFAULT_KEYS_DIR = '/etc/stackboot/keys';
