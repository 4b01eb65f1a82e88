#!/usr/bin/env node
/** git-credential-shed: see helper.ts. */
import fs from 'node:fs';
import tty from 'node:tty';
import { MAX_STDIN_BYTES, PROGRAM, runHelper } from './helper.js';

/**
 * Write straight to fd 1 / fd 2: a one-shot helper that prints a line or
 * two saves the set-up of process.stdout/stderr. The stream is the fallback
 * when the fd is non-blocking.
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

/**
 * All of stdin, keeping at most `max` bytes (the rest is read and dropped, so
 * git never meets a broken pipe), straight from fd 0; the stream when fd 0
 * is non-blocking (EAGAIN).
 */
function readStdin(max = MAX_STDIN_BYTES + 1): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  const keep = (buf: Buffer) => {
    if (size < max) chunks.push(buf.subarray(0, max - size));
    size += buf.length;
  };
  const text = () => Buffer.concat(chunks).toString('utf8');
  try {
    const buf = Buffer.alloc(16 * 1024);
    for (;;) {
      const n = fs.readSync(0, buf, 0, buf.length, null);
      if (n === 0) break;
      keep(Buffer.from(buf.subarray(0, n)));
    }
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EOF') return Promise.resolve(text());
    if (code !== 'EAGAIN' || size > 0) return Promise.reject(err);
    return new Promise((resolve, reject) => {
      process.stdin.on('data', (chunk: Buffer) => keep(chunk));
      process.stdin.once('end', () => resolve(text()));
      process.stdin.once('error', reject);
    });
  }
  return Promise.resolve(text());
}

// No top-level await: this one bundles as CommonJS (see guest-services/bundle.ts).
const stderr = writer(2);
runHelper(process.argv.slice(2), {
  readStdin,
  stdinIsTTY: tty.isatty(0),
  stdout: writer(1),
  stderr,
  env: process.env,
}).then(
  (code) => {
    process.exitCode = code;
  },
  (err: Error) => {
    stderr(`${PROGRAM}: ${err.message}\n`);
    process.exitCode = 1;
  },
);
