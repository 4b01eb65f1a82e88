#!/usr/bin/env node
/** docker-credential-shed: see helper.ts. */
import tty from 'node:tty';
import { readStdin, runHelper } from './helper.js';

const code = await runHelper(process.argv.slice(2), {
  readStdin: () => readStdin(),
  stdinIsTTY: tty.isatty(0),
  stdout: (text) => process.stdout.write(text),
  stderr: (text) => process.stderr.write(text),
  env: process.env,
});
// Let stdout drain to a pipe before exiting.
process.exitCode = code;
