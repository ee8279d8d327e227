/**
 * The only module that imports execa. Every external tool (gensquashfs, tar2sqfs,
 * mkfs.ext4, sfdisk, qemu, busybox …) runs through here, so failures become
 * StackbootError('TOOL') with the tool's stderr in the message.
 */
import { execa, type ResultPromise } from 'execa';
import { StackbootError } from './errors.js';
import { interruptSignal } from './interrupt.js';

export interface RunOptions {
  cwd?: string;
  env?: Record<string, string | undefined>;
  /** false: the tool gets `env` alone, not this process's environment and `env` (default true) */
  extendEnv?: boolean;
  /** Data written to the tool's stdin. */
  input?: string | Buffer;
  /** A file whose contents become stdin. */
  inputFile?: string;
  /** Milliseconds before the tool is killed. */
  timeout?: number;
  /** Do not throw on a non-zero exit; return the result instead. */
  reject?: boolean;
  /** Return stdout as a Buffer instead of a string. */
  binary?: boolean;
  /** Kills the tool when aborted (the call then fails). */
  signal?: AbortSignal;
  /** Called with the tool's pid once it has started (to watch it, e.g. its /proc/<pid>/io). */
  onSpawn?: (pid: number) => void;
}

export interface RunResult {
  exitCode: number;
  stdout: string;
  stderr: string;
  stdoutBuffer?: Buffer;
}

function describe(cmd: string, args: readonly string[]): string {
  return [cmd, ...args].map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : JSON.stringify(a))).join(' ');
}

/** Runs a tool to completion and returns its output. Throws StackbootError('TOOL') on failure. */
export async function run(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  try {
    const sub = execa(cmd, args, {
      cwd: opts.cwd,
      env: opts.env,
      extendEnv: opts.extendEnv ?? true,
      input: opts.input,
      inputFile: opts.inputFile,
      timeout: opts.timeout,
      // a signal of the caller's, else the command's interrupt (src/sys/interrupt.ts); a tool
      // started after it (an unmount of the interrupt's own cleanup) is not stopped
      cancelSignal: opts.signal ?? (interruptSignal.aborted ? undefined : interruptSignal),
      reject: false,
      encoding: opts.binary ? 'buffer' : 'utf8',
      stripFinalNewline: false,
      maxBuffer: 1024 * 1024 * 1024,
    });
    if (sub.pid !== undefined) opts.onSpawn?.(sub.pid);
    const r = await sub;
    const stdoutBuffer = opts.binary ? Buffer.from(r.stdout as unknown as Uint8Array) : undefined;
    const stdout = opts.binary ? '' : String(r.stdout ?? '');
    const stderr = typeof r.stderr === 'string' ? r.stderr : Buffer.from((r.stderr ?? new Uint8Array()) as Uint8Array).toString('utf8');
    if (r.failed && r.exitCode === undefined) {
      // spawn failure (ENOENT…) or timeout
      const why = r.timedOut ? `timed out after ${opts.timeout} ms` : (r.cause as Error | undefined)?.message ?? 'could not start';
      const missing = (r.cause as NodeJS.ErrnoException | undefined)?.code === 'ENOENT';
      throw new StackbootError('TOOL', missing ? `${cmd} is not installed (run: npm run setup)` : `${describe(cmd, args)}: ${why}`, { cause: r.cause });
    }
    const exitCode = r.exitCode ?? 1;
    if (exitCode !== 0 && opts.reject !== false) {
      const tail = stderr.trim().split('\n').slice(-5).join(' | ');
      throw new StackbootError('TOOL', `${cmd} failed (exit ${exitCode}): ${tail || 'no output'}`, {
        details: { command: describe(cmd, args), exitCode, stderr },
      });
    }
    return { exitCode, stdout, stderr, stdoutBuffer };
  } catch (e) {
    if (e instanceof StackbootError) throw e;
    throw new StackbootError('TOOL', `${describe(cmd, args)}: ${(e as Error).message}`, { cause: e });
  }
}

export interface Spawned {
  /** The child's pid. */
  pid: number | undefined;
  /** Readable stdout of the child. */
  stdout: NodeJS.ReadableStream;
  /** Readable stderr of the child. */
  stderr: NodeJS.ReadableStream;
  /** Writable stdin of the child (when stdin: 'pipe'). */
  stdin: NodeJS.WritableStream | null;
  /** Resolves with the exit code (or null when killed by a signal) when the child ends. */
  done: Promise<{ exitCode: number | null; signal: string | null }>;
  kill(signal?: NodeJS.Signals): void;
}

/** Starts a long-running tool (QEMU, a pipe consumer) and returns its streams. */
export function spawn(cmd: string, args: readonly string[], opts: { cwd?: string; env?: Record<string, string | undefined>; stdin?: 'pipe' | 'ignore' } = {}): Spawned {
  const child: ResultPromise = execa(cmd, args, {
    cwd: opts.cwd,
    env: opts.env,
    stdin: opts.stdin ?? 'ignore',
    stdout: 'pipe',
    stderr: 'pipe',
    buffer: false,
    reject: false,
  });
  const done = (child as unknown as Promise<{ exitCode?: number; signal?: string }>).then((r) => ({
    exitCode: r.exitCode ?? null,
    signal: r.signal ?? null,
  }));
  return {
    pid: child.pid,
    stdout: child.stdout!,
    stderr: child.stderr!,
    stdin: child.stdin ?? null,
    done,
    kill: (signal: NodeJS.Signals = 'SIGKILL') => {
      child.kill(signal);
    },
  };
}

/** True when a tool can be found on PATH. */
export async function have(cmd: string): Promise<boolean> {
  const r = await run('sh', ['-c', `command -v ${JSON.stringify(cmd).slice(1, -1)}`], { reject: false });
  return r.exitCode === 0;
}
