#!/usr/bin/env node
/** The `mergevq` executable: see lib/cli/program.ts for the commands. */
import { createProgram } from './program.js';

createProgram()
  .parseAsync(process.argv)
  .catch((err: unknown) => {
    const e = err as Error & { code?: string };
    process.stderr.write(`mergevq: ${e.message}${e.code ? ` (${e.code})` : ''}\n`);
    process.exit(1);
  });
