/**
 * The JSON-lines audit log: one file per shed in the audit directory
 * (`<dir>/<shed>.log`), one line per credential operation, written to the
 * file (not buffered in this process) before the answer leaves, so a crash of
 * the broker loses no line. Directory 0700, files 0600.
 *
 * One file per shed, so that one shed's traffic can only ever rotate away
 * its own history: every other shed keeps the `max_bytes` × (`keep` + 1)
 * of history the admin configured, whatever a guest does.
 * `shed-host-agent audit` merges the files into one timeline.
 *
 * Within a file (AuditFile):
 * One writer appends in order; lines that arrive during a write go together
 * in the next one. Durability against a power loss comes from datasync, at
 * most one every SYNC_INTERVAL_MS: the first line after a quiet spell is
 * synced at once, and lines that follow within the interval share one sync at
 * its end. Neither the answers nor later writes wait for the disk (a sync
 * costs ~0.5 ms of a busy broker's time here), a power loss can lose only the
 * lines of the last SYNC_INTERVAL_MS, and a sync failure is as loud as a
 * write failure. (journald syncs every 5 minutes; auditd every 50 records.)
 * When the next line would take the file past `maxBytes` the log rotates
 * first: `file.keep-1` → `file.keep`, …, `file` → `file.1`, a new `file`. A
 * line therefore never spans two files and is never torn by rotation.
 */
import fs from 'node:fs';
import path from 'node:path';
import { isShedKey } from '../origin.js';
import type { Logger } from '../../protocol/log.js';
import { auditLine, type AuditEntry, type AuditSink } from './audit.js';

export interface AuditLogOptions {
  /** Rotate when the file would grow past this many bytes; 0 = never. */
  maxBytes?: number;
  /** Rotated files kept (`file.1` newest … `file.keep` oldest); 0 = none, the full file is dropped. */
  keep?: number;
  /** Where a write failure is reported, loudly. */
  log?: Logger;
}

/** The most lines a power loss can take: those of the last this many milliseconds. */
export const SYNC_INTERVAL_MS = 100;

interface Pending {
  line: string;
  resolve: () => void;
  reject: (err: Error) => void;
}

export class AuditFile implements AuditSink {
  private handle: fs.promises.FileHandle | undefined;
  /** Bytes in the open file. */
  private size = 0;
  private pending: Pending[] = [];
  private flushing: Promise<void> | undefined;
  /** The datasync in flight; one waiting for the interval to pass; whether lines await one. */
  private syncing: Promise<void> | undefined;
  private syncTimer: NodeJS.Timeout | undefined;
  private syncWanted = false;
  private lastSyncAt = -Infinity;
  private maxBytes: number;
  private keep: number;
  private nextFile: string | undefined;
  /** Why the last write failed; cleared by a good write. Reported by `status` and doctor. */
  lastError: string | undefined;
  /** When it failed (ISO time). */
  lastErrorAt: string | undefined;
  /** Rotations done since start. */
  rotations = 0;
  /** Datasyncs done since start. */
  syncs = 0;
  /** When a line was last queued (performance.now()). */
  lastWriteAt = -Infinity;
  /** Close the handle once what is queued is written (an idle file). */
  private closeWanted = false;

  constructor(
    public file: string,
    private readonly options: AuditLogOptions = {},
  ) {
    this.maxBytes = options.maxBytes ?? 0;
    this.keep = options.keep ?? 5;
  }

  write(entry: AuditEntry): Promise<void> {
    const line = auditLine(entry);
    this.lastWriteAt = performance.now();
    this.closeWanted = false;
    return new Promise<void>((resolve, reject) => {
      this.pending.push({ line, resolve, reject });
      this.kick();
    });
  }

  /** Whether the file is open. */
  get isOpen(): boolean {
    return this.handle !== undefined;
  }

  /** Close the file after its queued lines (it reopens on the next write): an idle shed holds no descriptor. */
  release(): void {
    if (!this.handle) return;
    this.closeWanted = true;
    this.kick();
  }

  /** Follow a policy reload: a new path, size or count applies from the next write on. */
  configure(file: string, options: { maxBytes: number; keep: number }): void {
    this.maxBytes = options.maxBytes;
    this.keep = options.keep;
    if (file !== this.file) this.nextFile = file;
  }

  async close(): Promise<void> {
    while (this.flushing) await this.flushing;
    await this.closeHandle();
  }

  private kick(): void {
    if (!this.flushing) this.flushing = this.drain();
  }

  private async drain(): Promise<void> {
    // flush() never rejects. `flushing` is cleared in the same tick as the
    // last look at `pending`, so a write cannot slip in between and be left.
    for (;;) {
      while (this.pending.length > 0) await this.flush(this.pending.splice(0));
      if (!this.closeWanted) break;
      this.closeWanted = false;
      await this.closeHandle();
    }
    this.flushing = undefined;
  }

  /** Write a group of lines in order; each resolves once it is written, the group is synced after. */
  private async flush(batch: Pending[]): Promise<void> {
    let done = 0;
    try {
      if (this.nextFile) {
        await this.closeHandle();
        this.file = this.nextFile;
        this.nextFile = undefined;
      }
      if (!this.handle) await this.open();
      while (done < batch.length) {
        // As many lines as fit before the size limit (at least one: a line
        // longer than the limit gets a file of its own).
        let end = done;
        let bytes = 0;
        while (end < batch.length) {
          const len = Buffer.byteLength(batch[end]!.line);
          if (this.maxBytes > 0 && this.size + bytes + len > this.maxBytes && (this.size + bytes > 0)) break;
          bytes += len;
          end += 1;
        }
        if (end > done) {
          // A write of a few hundred bytes to the page cache takes microseconds:
          // done synchronously it is cheaper than a round trip through libuv's
          // thread pool, which costs ~0.3 ms of wake-ups per line here.
          writeAll(this.handle!.fd, Buffer.from(batch.slice(done, end).map((p) => p.line).join('')));
          this.size += bytes;
          this.lastError = undefined;
          this.lastErrorAt = undefined;
          // Written: the answers may leave. The sync follows on its own.
          for (const p of batch.slice(done, end)) p.resolve();
          this.requestSync();
          done = end;
        }
        if (done < batch.length) await this.rotate();
      }
    } catch (err) {
      const cause = this.failed(err as Error);
      await this.closeHandle();
      const failure = new Error(`cannot write the audit log ${this.file}: ${cause}`, { cause: err });
      for (const p of batch.slice(done)) p.reject(failure);
    }
  }

  /** Sync the open file now, or at the end of the interval since the last sync. */
  private requestSync(): void {
    this.syncWanted = true;
    if (this.syncing || this.syncTimer) return;
    const wait = this.lastSyncAt + SYNC_INTERVAL_MS - performance.now();
    if (wait <= 0) {
      this.startSync();
      return;
    }
    this.syncTimer = setTimeout(() => {
      this.syncTimer = undefined;
      this.startSync();
    }, wait);
  }

  private startSync(): void {
    const handle = this.handle;
    if (!handle || !this.syncWanted) return;
    this.syncWanted = false;
    this.lastSyncAt = performance.now();
    this.syncs += 1;
    this.syncing = handle.datasync()
      .catch((err: Error) => {
        this.failed(err);
      })
      .then(() => {
        this.syncing = undefined;
        if (this.syncWanted && this.handle === handle) this.requestSync();
      });
  }

  /** Record a failure loudly: one error line until a write succeeds again. */
  private failed(err: Error): string {
    const cause = err.message;
    if (this.lastError === undefined) this.options.log?.error(`audit log ${this.file} cannot be written: ${cause}`);
    this.lastError = cause;
    this.lastErrorAt = new Date().toISOString();
    return cause;
  }

  /** Close the open file after its last sync, without waiting out the interval. */
  private async closeHandle(): Promise<void> {
    for (;;) {
      if (this.syncTimer) {
        clearTimeout(this.syncTimer);
        this.syncTimer = undefined;
      }
      if (this.syncing) await this.syncing;
      else if (this.syncWanted && this.handle) this.startSync();
      else break;
    }
    await this.handle?.close().catch(() => undefined);
    this.handle = undefined;
  }

  private async open(): Promise<void> {
    this.handle = await openPrivate(this.file);
    this.size = (await this.handle.stat()).size;
    if (this.size > 0) {
      // A write cut short (disk full, a crash) leaves a partial last line:
      // start on a fresh line so the next entry stays parseable.
      const last = Buffer.alloc(1);
      await this.handle.read(last, 0, 1, this.size - 1);
      if (last[0] !== 0x0a) {
        await this.handle.appendFile('\n');
        this.size += 1;
      }
    }
  }

  private async rotate(): Promise<void> {
    await this.closeHandle();
    if (this.keep === 0) {
      await fs.promises.rm(this.file, { force: true });
    } else {
      for (let i = this.keep - 1; i >= 1; i--) await renameIfExists(`${this.file}.${i}`, `${this.file}.${i + 1}`);
      await fs.promises.rename(this.file, `${this.file}.1`);
    }
    this.rotations += 1;
    await this.open();
  }
}

/** Past this many files open at once, the least recently written is closed (it reopens on its next line). */
const MAX_OPEN_FILES = 64;
/** Sheds whose (closed) file objects are kept; past that, idle ones are forgotten. */
const MAX_KNOWN_FILES = 4096;
/** A shed's file is closed after this long without a line. */
const IDLE_CLOSE_MS = 60_000;

/** The file a shed's lines go to: `<shed>.log` (`<shed>@<server>.log` for a named server's); anything that is not a shed key shares `_other.log`. */
export function shedLogName(shed: string): string {
  return `${isShedKey(shed) ? shed : '_other'}.log`;
}

/** The per-shed audit files in one directory (see the top of this file). */
export class AuditLog implements AuditSink {
  private readonly files = new Map<string, AuditFile>();
  private maxBytes: number;
  private keep: number;
  private readonly timer: NodeJS.Timeout;

  constructor(
    public dir: string,
    private readonly options: AuditLogOptions = {},
  ) {
    this.maxBytes = options.maxBytes ?? 0;
    this.keep = options.keep ?? 5;
    this.timer = setInterval(() => this.releaseIdle(IDLE_CLOSE_MS), IDLE_CLOSE_MS / 2);
    this.timer.unref();
  }

  /** The file of `shed` (for status and tests). */
  fileOf(shed: string): string {
    return path.join(this.dir, shedLogName(shed));
  }

  write(entry: AuditEntry): Promise<void> {
    const name = shedLogName(entry.shed);
    let file = this.files.get(name);
    if (!file) {
      file = new AuditFile(path.join(this.dir, name), { maxBytes: this.maxBytes, keep: this.keep, log: this.options.log });
      this.files.set(name, file);
    }
    const written = file.write(entry);
    if (!file.isOpen) this.limitOpen(file);
    return written;
  }

  /** Why the last write failed (any shed's file), until that file is written again. */
  get lastError(): string | undefined {
    for (const f of this.files.values()) if (f.lastError !== undefined) return f.lastError;
    return undefined;
  }

  /** Rotations since start, across files. */
  get rotations(): number {
    let n = 0;
    for (const f of this.files.values()) n += f.rotations;
    return n;
  }

  /** Follow a policy reload: a new directory, size or count applies from each file's next write on. */
  configure(dir: string, options: { maxBytes: number; keep: number }): void {
    this.maxBytes = options.maxBytes;
    this.keep = options.keep;
    this.dir = dir;
    for (const [name, f] of this.files) f.configure(path.join(dir, name), options);
  }

  async close(): Promise<void> {
    clearInterval(this.timer);
    await Promise.all([...this.files.values()].map((f) => f.close()));
  }

  /** Close the files not written for `idleMs`, and forget closed ones past the open-file cap's worth of sheds. */
  releaseIdle(idleMs: number): void {
    const now = performance.now();
    for (const [name, f] of this.files) {
      if (now - f.lastWriteAt < idleMs) continue;
      if (f.isOpen) f.release();
      else if (this.files.size > MAX_KNOWN_FILES && f.lastError === undefined) this.files.delete(name);
    }
  }

  /** Keep at most MAX_OPEN_FILES open: `opening` is about to open; close the least recently written others. */
  private limitOpen(opening: AuditFile): void {
    const open = [...this.files.values()].filter((f) => f.isOpen && f !== opening);
    if (open.length < MAX_OPEN_FILES) return;
    open.sort((a, b) => a.lastWriteAt - b.lastWriteAt);
    for (const f of open.slice(0, open.length - MAX_OPEN_FILES + 1)) f.release();
  }
}

/** write(2) until every byte is out (a regular file takes it in one go, but the contract allows less). */
function writeAll(fd: number, buffer: Buffer): void {
  let offset = 0;
  while (offset < buffer.length) offset += fs.writeSync(fd, buffer, offset);
}

async function renameIfExists(from: string, to: string): Promise<void> {
  try {
    await fs.promises.rename(from, to);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}

/** Open `file` for appending with mode 0600 (and its directory 0700), tightening an existing file. */
export async function openPrivate(file: string): Promise<fs.promises.FileHandle> {
  await fs.promises.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  const handle = await fs.promises.open(file, 'a+', 0o600);
  const st = await handle.stat();
  if ((st.mode & 0o777) !== 0o600) await handle.chmod(0o600);
  return handle;
}

/** The base files of an audit directory (`<shed>.log`), sorted. */
export function auditLogFiles(dir: string): string[] {
  try {
    return fs.readdirSync(dir).filter((n) => /^[a-z_][a-z0-9-]*\.log$/.test(n)).sort().map((n) => path.join(dir, n));
  } catch {
    return [];
  }
}

/** A file's generations, oldest first: `file.keep` … `file.1`, `file` (those that exist). */
export function auditFiles(file: string, keep = 100): string[] {
  const out: string[] = [];
  for (let i = keep; i >= 1; i--) if (fs.existsSync(`${file}.${i}`)) out.push(`${file}.${i}`);
  if (fs.existsSync(file)) out.push(file);
  return out;
}
