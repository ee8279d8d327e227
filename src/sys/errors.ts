/**
 * Typed errors. Every failure the library reports is a StackbootError with a stable
 * `code` (used by the CLI to pick an exit code and by --json consumers) and an
 * optional `cause` chain (shown by the CLI with --verbose).
 */
export type ErrorCode =
  | 'USAGE' // bad arguments
  | 'RECIPE' // a recipe file is invalid
  | 'MANIFEST' // a manifest cannot be parsed or is inconsistent
  | 'SIGNATURE' // a signature is missing, malformed or does not verify
  | 'INCOMPATIBLE' // a stack is not compatible with the node
  | 'SOURCE' // a layer source cannot be read
  | 'UNSAFE_ENTRY' // a tar/OCI entry escapes its root or is not allowed
  | 'TOOL' // an external tool failed or is missing
  | 'NEEDS_ROOT' // the operation needs root
  | 'IO' // a filesystem operation failed
  | 'STORE' // a store is missing or inconsistent
  | 'STATE' // the boot state cannot be read or changed
  | 'NO_SPACE' // not enough free space
  | 'MISSING_LAYERS' // a delta needs layers the target lacks
  | 'DEVICE' // a flash target is unsafe or unusable
  | 'VERIFY' // a read-back or digest check failed
  | 'NETWORK' // a download failed
  | 'CONFIG' // a node config is invalid
  | 'DOWNGRADE' // a stack older than the store's good one (install --allow-downgrade)
  | 'INTERNAL';

const EXIT_CODES: Record<ErrorCode, number> = {
  USAGE: 2,
  RECIPE: 3,
  MANIFEST: 4,
  SIGNATURE: 5,
  INCOMPATIBLE: 6,
  SOURCE: 7,
  UNSAFE_ENTRY: 8,
  TOOL: 9,
  NEEDS_ROOT: 10,
  IO: 11,
  STORE: 12,
  STATE: 13,
  NO_SPACE: 14,
  MISSING_LAYERS: 15,
  DEVICE: 16,
  VERIFY: 17,
  NETWORK: 18,
  CONFIG: 19,
  DOWNGRADE: 20,
  INTERNAL: 70,
};

export class StackbootError extends Error {
  readonly code: ErrorCode;
  /** Extra machine-readable facts (paths, lists) for --json output. */
  readonly details?: Record<string, unknown>;

  constructor(code: ErrorCode, message: string, options: { cause?: unknown; details?: Record<string, unknown> } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'StackbootError';
    this.code = code;
    this.details = options.details;
  }

  get exitCode(): number {
    return EXIT_CODES[this.code];
  }
}

export function isStackbootError(e: unknown): e is StackbootError {
  return e instanceof StackbootError;
}

/** Wraps any thrown value in a StackbootError of the given code unless it already is one. */
export function wrap(code: ErrorCode, message: string, cause: unknown): StackbootError {
  if (cause instanceof StackbootError) return cause;
  return new StackbootError(code, message, { cause });
}

/**
 * Runs `parse` (a parser of text that does not know where the text came from); a
 * StackbootError it throws comes back as "<where>: <message>", same code and details.
 */
export function parsing<T>(where: string, parse: () => T): T {
  try {
    return parse();
  } catch (e) {
    if (e instanceof StackbootError) throw new StackbootError(e.code, `${where}: ${e.message}`, { cause: e.cause, details: e.details });
    throw e;
  }
}

/** The messages of an error and its causes, outermost first. */
export function causeChain(e: unknown): string[] {
  const out: string[] = [];
  let cur: unknown = e;
  const seen = new Set<unknown>();
  while (cur !== undefined && cur !== null && !seen.has(cur)) {
    seen.add(cur);
    if (cur instanceof Error) {
      const code = cur instanceof StackbootError ? `[${cur.code}] ` : (cur as NodeJS.ErrnoException).code ? `[${(cur as NodeJS.ErrnoException).code}] ` : '';
      out.push(code + cur.message);
      cur = (cur as Error & { cause?: unknown }).cause;
    } else {
      out.push(String(cur));
      break;
    }
  }
  return out;
}

export function exitCodeOf(e: unknown): number {
  return e instanceof StackbootError ? e.exitCode : 1;
}
