#!/usr/bin/env node
/** docker-credential-shed: see helper.ts. */
import { readAll, runHelper } from './helper.js';

const code = await runHelper(process.argv.slice(2), {
  readStdin: () => readAll(process.stdin),
  stdinIsTTY: process.stdin.isTTY === true,
  stdout: (text) => process.stdout.write(text),
  stderr: (text) => process.stderr.write(text),
  env: process.env,
});
// Let stdout drain to a pipe before exiting.
process.exitCode = code;
