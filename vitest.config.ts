import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Native code: separate processes, so a crash in one file cannot take down the run.
    pool: 'forks',
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // The native side checks, after every op, that each option it read is one its declaration lists.
    env: { MERGEVQ_CHECK_ATTRS: '1' },
  },
});
