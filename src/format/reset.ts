/**
 * A factory reset request: the store's `reset` file (docs/PROTOCOL.md "Factory reset").
 * The hook (initramfs/reset.sh) carries it out at the next boot, before it mounts any
 * stack of the store, and removes it once done:
 *
 *   stackboot-reset 1
 *   requested <epoch seconds> <who asked>
 */
import { oneLine } from './oneline.js';

export const RESET_MAGIC = 'stackboot-reset 1';

export interface ResetRequest {
  /** epoch seconds */
  requested: number;
  /** the command that asked, e.g. "stackboot factory-reset" */
  by: string;
}

/** The request in a `reset` file's text, or null when it is not one (no magic: the hook ignores it too). */
export function parseResetRequest(text: string): ResetRequest | null {
  const [l1, l2 = ''] = text.split('\n');
  if (l1 !== RESET_MAGIC) return null;
  const m = /^requested (\d+) (.*)$/.exec(l2);
  return m ? { requested: Number(m[1]), by: m[2]! } : { requested: 0, by: 'a request without a date' };
}

export function formatResetRequest(r: ResetRequest): string {
  // one line, as the hook reads it (its event's reason quotes it)
  return `${RESET_MAGIC}\nrequested ${r.requested} ${oneLine(r.by)}\n`;
}
