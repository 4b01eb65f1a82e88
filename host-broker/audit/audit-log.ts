/**
 * The JSON-lines audit log: one line per credential operation, appended and
 * flushed before the answer leaves. Directory 0700, file 0600. Writes are
 * serialized so lines never interleave.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { AuditEntry, AuditSink } from './audit.js';

export class AuditLog implements AuditSink {
  private handle: fs.promises.FileHandle | undefined;
  private queue: Promise<void> = Promise.resolve();
  /** The last write error, for `status` and doctor; cleared by a good write. */
  lastError: string | undefined;

  constructor(readonly file: string) {}

  write(entry: AuditEntry): Promise<void> {
    const line = `${JSON.stringify(entry)}\n`;
    const next = this.queue.then(() => this.append(line));
    this.queue = next.catch(() => undefined);
    return next;
  }

  async close(): Promise<void> {
    await this.queue;
    await this.handle?.close();
    this.handle = undefined;
  }

  private async append(line: string): Promise<void> {
    try {
      if (!this.handle) this.handle = await openPrivate(this.file);
      await this.handle.appendFile(line);
      await this.handle.datasync();
      this.lastError = undefined;
    } catch (err) {
      this.lastError = (err as Error).message;
      await this.handle?.close().catch(() => undefined);
      this.handle = undefined;
      throw new Error(`cannot write the audit log ${this.file}: ${this.lastError}`, { cause: err });
    }
  }
}

/** Open `file` for appending with mode 0600 (and its directory 0700), tightening an existing file. */
export async function openPrivate(file: string): Promise<fs.promises.FileHandle> {
  await fs.promises.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  const handle = await fs.promises.open(file, 'a', 0o600);
  const st = await handle.stat();
  if ((st.mode & 0o777) !== 0o600) await handle.chmod(0o600);
  return handle;
}
