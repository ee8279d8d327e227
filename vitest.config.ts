import { defineConfig } from 'vitest/config';

// Three projects:
//   unit         pure logic and the boot shell under busybox sh (fast, no root needed)
//   integration  real squashfs tools, loop devices, overlays, mkfs (root)
//   e2e          real kernels booted in QEMU (TCG)
export default defineConfig({
  test: {
    projects: [
      {
        test: {
          name: 'unit',
          include: ['test/**/*.test.ts'],
          exclude: ['test/**/*.int.test.ts', 'test/e2e/**'],
          testTimeout: 30_000,
        },
      },
      {
        test: {
          name: 'integration',
          include: ['test/**/*.int.test.ts'],
          exclude: ['test/e2e/**'],
          testTimeout: 300_000,
          hookTimeout: 300_000,
          fileParallelism: false,
        },
      },
      {
        test: {
          name: 'e2e',
          include: ['test/e2e/**/*.test.ts'],
          testTimeout: 900_000,
          hookTimeout: 900_000,
          // one file at a time; inside a file, the tests marked concurrent
          // (test/e2e/concurrent.ts) two at a time: a QEMU under TCG keeps one core busy
          fileParallelism: false,
          maxConcurrency: 2,
        },
      },
    ],
  },
});
