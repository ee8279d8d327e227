/** The CPU architectures stackboot builds for, by their Debian names. */
export type Arch = 'amd64' | 'arm64';

export const ARCHES: readonly Arch[] = ['amd64', 'arm64'];

/** Maps Node's `process.arch` to a Debian architecture name, or undefined when unsupported. */
export function archFromNode(nodeArch: string): Arch | undefined {
  switch (nodeArch) {
    case 'x64':
      return 'amd64';
    case 'arm64':
      return 'arm64';
    default:
      return undefined;
  }
}

export function isArch(s: string): s is Arch {
  return s === 'amd64' || s === 'arm64';
}

/** The architecture this process runs on, or undefined when stackboot does not build for it. */
export function hostArch(): Arch | undefined {
  return archFromNode(process.arch);
}
