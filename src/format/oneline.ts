/**
 * A value for one line of the line-based store files (events, the reset request), as the
 * hook's sb_oneline makes it: every control character (0x00-0x1f: tab, CR and LF too)
 * becomes one space.
 */
export function oneLine(text: string): string {
  return text.replace(/[\x00-\x1f]/g, ' ');
}
