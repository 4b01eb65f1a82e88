/**
 * What the one-shot guest helpers share (docker-credential-shed and
 * git-credential-shed: a process per registry or git operation, so every
 * millisecond of start-up counts): their I/O, done on the file descriptors
 * straight (setting up process.stdin/stdout costs more than the work), and
 * the run that turns the helper's answer into the exit status.
 */
import fs from 'node:fs';
import tty from 'node:tty';

export interface HelperIO {
  /** The whole of stdin, at most a little over the helper's limit. */
  readStdin(): Promise<string>;
  /** stdin is a terminal (a person typing): store and erase then do not wait for it. */
  stdinIsTTY?: boolean;
  stdout(text: string): void;
  stderr(text: string): void;
  env: Record<string, string | undefined>;
}

/** Write straight to fd 1 / fd 2; the stream is the fallback when the fd is non-blocking. */
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
 * All of stdin, keeping at most `max` bytes (the rest is read and dropped,
 * so the writer never meets a broken pipe), straight from fd 0; the stream
 * when fd 0 is non-blocking (EAGAIN).
 */
export async function readStdin(max: number): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  try {
    const buf = Buffer.alloc(16 * 1024);
    for (;;) {
      const n = fs.readSync(0, buf, 0, buf.length, null);
      if (n === 0) break;
      if (size < max) chunks.push(Buffer.from(buf.subarray(0, n)));
      size += n;
    }
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EOF') return Buffer.concat(chunks).subarray(0, max).toString('utf8');
    if (code !== 'EAGAIN' || size > 0) throw err;
    return readAll(process.stdin, max);
  }
  return Buffer.concat(chunks).subarray(0, max).toString('utf8');
}

/** Read all of a stream as UTF-8, at most `max` bytes (the rest is drained). */
export function readAll(stream: NodeJS.ReadableStream, max: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    stream.on('data', (chunk: Buffer | string) => {
      const buf = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
      if (size < max) chunks.push(buf);
      size += buf.length;
    });
    stream.once('end', () => resolve(Buffer.concat(chunks).subarray(0, max).toString('utf8')));
    stream.once('error', reject);
  });
}

/**
 * Run a helper as its program: its argv, the process's I/O (stdin kept to
 * `maxStdin` bytes), its answer as the exit status, an unexpected error as
 * one line on stderr and status 1. No top-level await: the helpers bundle as
 * CommonJS (see guest-services/bundle.ts).
 */
export function runOneShot(program: string, maxStdin: number, run: (argv: string[], io: HelperIO) => Promise<number>): void {
  const stderr = writer(2);
  run(process.argv.slice(2), {
    readStdin: () => readStdin(maxStdin),
    stdinIsTTY: tty.isatty(0),
    stdout: writer(1),
    stderr,
    env: process.env,
  }).then(
    (code) => {
      process.exitCode = code;
    },
    (err: Error) => {
      stderr(`${program}: ${err.message}\n`);
      process.exitCode = 1;
    },
  );
}
