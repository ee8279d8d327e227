/**
 * Work in progress to undo when a command is interrupted (Ctrl-C, SIGTERM): temporary
 * files and folders, a run source's mounts. Without it an interrupted build left temp
 * files in `layers/` (durable.ts registers each of its temp files here), an interrupted
 * `image` a 256 MiB temp image (sys/durable) and scratch folders, and an interrupted run source
 * its loop, overlay and bind mounts (/proc, /dev and /sys of the host among them, under a
 * temp folder a later `rm -rf` could walk into).
 *
 * The library registers what it would undo and unregisters it once its own cleanup ran;
 * the CLI's signal handler calls interrupted() (the library never touches `process`).
 * interrupted() first stops every running tool (exec.ts passes interruptSignal to
 * execa), then runs the registered undo steps, newest first.
 */
import { setMaxListeners } from 'node:events';

const steps = new Map<number, () => Promise<void> | void>();
let nextId = 0;
const controller = new AbortController();
// every running tool listens to it (a parallel build runs a few dozen at most)
setMaxListeners(256, controller.signal);

/** Aborted by interrupted(): exec.ts stops the tools it runs. */
export const interruptSignal: AbortSignal = controller.signal;

/** Registers an undo step; returns the function that unregisters it. */
export function onInterrupt(step: () => Promise<void> | void): () => void {
  const id = nextId++;
  steps.set(id, step);
  return () => {
    steps.delete(id);
  };
}

/** Runs fn with `undo` registered for an interrupt while it runs (fn cleans up itself otherwise). */
export async function undoOnInterrupt<T>(undo: () => Promise<void> | void, fn: () => Promise<T>): Promise<T> {
  const off = onInterrupt(undo);
  try {
    return await fn();
  } finally {
    off();
  }
}

/** Stops the running tools and runs every registered undo step, newest first. */
export async function interrupted(): Promise<void> {
  controller.abort();
  for (const [id, step] of [...steps].reverse()) {
    steps.delete(id);
    try {
      await step();
    } catch {
      // best effort: the next step still runs
    }
  }
}
