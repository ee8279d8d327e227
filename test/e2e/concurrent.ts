/**
 * Boot tests that run beside each other. A QEMU under TCG keeps one host core busy, and
 * the e2e files run one at a time, so a file whose tests boot one VM each would leave the
 * second core idle: `itConcurrent` runs a file's tests concurrently, as many at once as
 * the e2e project's `maxConcurrency` (vitest.config.ts: two, one QEMU a core). Each test's
 * VMs are its own (`ownVms`), so the cleanup after one test never kills the VM of a test
 * still running beside it (useVmCleanup).
 *
 * A test written for it must not share a disk image it boots with another test (each
 * makes its own), and asserts with vitest's `expect` as usual (no snapshots, no
 * `expect.assertions`: those need the test's own `expect` when tests run concurrently).
 */
import { it, type TestContext } from 'vitest';
import { ownVms } from './qemu.js';

export function itConcurrent(name: string, fn: (ctx: TestContext) => Promise<void>, timeout?: number): void {
  it.concurrent(name, (ctx) => ownVms(ctx.task.id, () => fn(ctx)), timeout);
}
