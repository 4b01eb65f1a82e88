#!/usr/bin/env node
/** shed-ext: see cli.ts. */
import { runCli } from './cli.js';

runCli(process.argv.slice(2), {
  stdout: (text) => process.stdout.write(text),
  stderr: (text) => process.stderr.write(text),
  env: process.env,
}).then(
  (code) => { process.exitCode = code; },
  (err: Error) => {
    process.stderr.write(`shed-ext: ${err.message}\n`);
    process.exitCode = 1;
  },
);
