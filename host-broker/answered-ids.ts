/**
 * Request ids already taken, remembered across a broker restart.
 *
 * shed-server keeps an un-answered request for about an hour and re-sends
 * it, oldest first, to a listener that (re)subscribes (PROTOCOL.md 3,
 * "Ownership"). A broker that took a request and then restarted (its
 * answer lost, or never sent) must not serve it a second time. The
 * dispatcher's DedupeWindow remembers ids in memory; this keeps them in a
 * small file in the broker's state directory for the same window:
 *
 * - one JSON file, mode 0600 in a 0700 directory, written atomically (a new
 *   file renamed over the old), at most a moment after a change (writes
 *   coalesce) and when the broker stops;
 * - bounded: the newest MAX_ENTRIES ids, each dropped once older than the
 *   window; a file larger than any this writes is not read;
 * - a file that cannot be read or is not this format: start empty, with a
 *   warning (what is lost is only the memory of answers in the last hour).
 *
 * A hard crash loses at most the ids of the last flush delay.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from '../protocol/log.js';

/** How long shed-server may re-deliver a request (about an hour), with a margin. */
export const REDELIVERY_WINDOW_MS = 70 * 60_000;
/** Ids kept in the file; past that the oldest go. */
export const MAX_ENTRIES = 10_000;
/** The file's name in the state directory. */
export const ANSWERED_IDS_FILE = 'answered-ids.json';
/** A key (a shed, perhaps with its server) or an id longer than this is not one this broker wrote. */
const MAX_KEY_CHARS = 300;
const MAX_ID_CHARS = 64;
/** Larger than any file this writes (MAX_ENTRIES × the longest entry): refused unread. */
const MAX_FILE_BYTES = MAX_ENTRIES * (MAX_KEY_CHARS + MAX_ID_CHARS + 40);

export interface AnsweredIdsOptions {
  /** The file (`<state dir>/answered-ids.json`). */
  file: string;
  log: Logger;
  windowMs?: number;
  maxEntries?: number;
  /** Writes coalesce: a change is on disk this long after it at most (500 ms). */
  flushDelayMs?: number;
  now?: () => number;
}

export interface AnsweredEntry {
  /** The dedupe key: the shed (as the dispatcher names it). */
  shed: string;
  id: string;
  /** When it was taken (epoch ms). */
  at: number;
}

export class AnsweredIds {
  private readonly entries = new Map<string, AnsweredEntry>();
  private readonly windowMs: number;
  private readonly maxEntries: number;
  private readonly now: () => number;
  private timer: NodeJS.Timeout | undefined;
  private dirty = false;
  private closed = false;
  private lastError: string | undefined;

  constructor(private readonly options: AnsweredIdsOptions) {
    this.windowMs = options.windowMs ?? REDELIVERY_WINDOW_MS;
    this.maxEntries = options.maxEntries ?? MAX_ENTRIES;
    this.now = options.now ?? Date.now;
  }

  get size(): number {
    return this.entries.size;
  }

  /** Read the file: the ids still within the window, oldest first. A missing file is empty; a bad one is too, with a warning. */
  load(): AnsweredEntry[] {
    const { file, log } = this.options;
    let text: string;
    try {
      const st = fs.lstatSync(file);
      if (!st.isFile()) throw new Error(`it is not a regular file`);
      if (st.size > MAX_FILE_BYTES) throw new Error(`it is ${st.size} bytes, larger than this broker writes`);
      text = fs.readFileSync(file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      log.warn(`the memory of answered requests (${file}) cannot be read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}): starting with none; a request re-delivered after this restart may be served again`);
      return [];
    }
    let loaded: AnsweredEntry[];
    try {
      loaded = parseFile(text);
    } catch (err) {
      log.warn(`the memory of answered requests (${file}) is damaged (${(err as Error).message}): starting with none; a request re-delivered after this restart may be served again`);
      this.dirty = true;
      return [];
    }
    const now = this.now();
    const fresh = loaded
      .map((e) => ({ ...e, at: Math.min(e.at, now) }))
      .filter((e) => now - e.at < this.windowMs)
      .sort((a, b) => a.at - b.at)
      .slice(-this.maxEntries);
    for (const e of fresh) this.entries.set(keyOf(e.shed, e.id), e);
    if (fresh.length !== loaded.length) this.dirty = true;
    return fresh;
  }

  /** Remember that `shed`'s request `id` was taken; on disk shortly. */
  record(shed: string, id: string, at = this.now()): void {
    if (this.closed || shed.length > MAX_KEY_CHARS || id.length > MAX_ID_CHARS) return;
    const key = keyOf(shed, id);
    this.entries.delete(key);
    this.entries.set(key, { shed, id, at });
    while (this.entries.size > this.maxEntries) this.entries.delete(this.entries.keys().next().value!);
    this.dirty = true;
    if (!this.timer) {
      this.timer = setTimeout(() => {
        this.timer = undefined;
        this.flush();
      }, this.options.flushDelayMs ?? 500);
    }
  }

  /** Write the file now if anything changed (pruned by age first). Never throws: a failure is logged. */
  flush(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (!this.dirty) return;
    const now = this.now();
    for (const [key, e] of this.entries) {
      if (now - e.at < this.windowMs) break;
      this.entries.delete(key);
    }
    const { file, log } = this.options;
    const body = JSON.stringify({ version: 1, window_ms: this.windowMs, ids: [...this.entries.values()].map((e) => [e.shed, e.id, e.at]) });
    const dir = path.dirname(file);
    const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.${crypto.randomBytes(4).toString('hex')}`);
    try {
      fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
      const fd = fs.openSync(tmp, 'wx', 0o600);
      try {
        fs.writeSync(fd, body);
        fs.fsyncSync(fd);
      } finally {
        fs.closeSync(fd);
      }
      fs.renameSync(tmp, file);
      this.dirty = false;
      if (this.lastError) log.info(`the memory of answered requests is written again to ${file}`);
      this.lastError = undefined;
    } catch (err) {
      try {
        fs.rmSync(tmp, { force: true });
      } catch {
        // (no temp file was made)
      }
      const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
      if (code !== this.lastError) log.warn(`cannot write the memory of answered requests to ${file} (${code}): it is kept in memory; a request re-delivered after a restart may be served again`);
      this.lastError = code;
    }
  }

  /** Flush and stop writing. */
  close(): void {
    this.flush();
    this.closed = true;
  }
}

function keyOf(shed: string, id: string): string {
  return `${shed}\0${id}`;
}

/** The file's entries; throws with what is wrong (never quoting the file). */
function parseFile(text: string): AnsweredEntry[] {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw new Error('not JSON');
  }
  const doc = raw as { version?: unknown; ids?: unknown };
  if (typeof raw !== 'object' || raw === null || doc.version !== 1 || !Array.isArray(doc.ids)) throw new Error('not a version 1 list of ids');
  return doc.ids.map((entry: unknown, i: number) => {
    if (!Array.isArray(entry) || entry.length !== 3) throw new Error(`entry ${i} is not [shed, id, time]`);
    const [shed, id, at] = entry as unknown[];
    if (typeof shed !== 'string' || !shed || shed.length > MAX_KEY_CHARS) throw new Error(`entry ${i} has no valid shed`);
    if (typeof id !== 'string' || !id || id.length > MAX_ID_CHARS) throw new Error(`entry ${i} has no valid id`);
    if (typeof at !== 'number' || !Number.isFinite(at) || at < 0) throw new Error(`entry ${i} has no valid time`);
    return { shed, id, at };
  });
}
