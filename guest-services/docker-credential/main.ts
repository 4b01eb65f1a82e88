#!/usr/bin/env node
/** docker-credential-shed: see helper.ts. */
import fs from 'node:fs';
import tty from 'node:tty';
import { readStdin, runHelper } from './helper.js';

/**
 * Write straight to fd 1 / fd 2: a one-shot helper that only ever prints a
 * line or two saves the set-up of process.stdout/stderr (Node writes pipes
 * and files synchronously on Linux anyway). The stream is the fallback when
 * the fd is non-blocking.
 */
function writer(fd: 1 | 2): (text: string) => void {
  return (text) => {
    const buf = Buffer.from(text);
    let off = 0;
    try {
      while (off < buf.length) off += fs.writeSync(fd, buf, off);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err;
      (fd === 1 ? process.stdout : process.stderr).write(buf.subarray(off));
    }
  };
}

// No top-level await: this one bundles as CommonJS (see guest-services/bundle.ts).
const stderr = writer(2);
runHelper(process.argv.slice(2), {
  readStdin: () => readStdin(),
  stdinIsTTY: tty.isatty(0),
  stdout: writer(1),
  stderr,
  env: process.env,
}).then(
  (code) => {
    process.exitCode = code;
  },
  (err: Error) => {
    stderr(`docker-credential-shed: ${err.message}\n`);
    process.exitCode = 1;
  },
);
