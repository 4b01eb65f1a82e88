/**
 * Reading files that someone else could have swapped for something else: a
 * FIFO put where a file is expected would block a plain read for ever. The
 * file is opened without blocking and checked on the same descriptor.
 */
import fs from 'node:fs';

/** The path is not a regular file. `kind` says what it is: directory, FIFO, socket, device. */
export class NotRegularFile extends Error {
  override readonly name = 'NotRegularFile';
  constructor(readonly file: string, readonly kind: string) {
    super(`${file} is a ${kind}, not a regular file`);
  }
}

/** What a file that is not a regular file is, in words. */
export function fileKind(st: fs.Stats): string {
  if (st.isFile()) return 'regular file';
  if (st.isDirectory()) return 'directory';
  if (st.isFIFO()) return 'FIFO';
  if (st.isSocket()) return 'socket';
  if (st.isCharacterDevice() || st.isBlockDevice()) return 'device';
  return 'special file';
}

/** A regular file's bytes and status; throws NotRegularFile for anything else, and fs errors as they are. */
export function readRegularFile(file: string): { st: fs.Stats; data: Buffer } {
  const fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) throw new NotRegularFile(file, fileKind(st));
    return { st, data: fs.readFileSync(fd) };
  } finally {
    fs.closeSync(fd);
  }
}
