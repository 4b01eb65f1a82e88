/**
 * The guest services' status file beside their socket or in their runtime
 * directory: `connected` or `not connected: <why>`, so a person (or a health
 * check) can see at a glance whether the host answers. Rewritten only when it
 * changes, whole (temp file and rename), mode 0600; a failure to write is
 * logged once and never stops the service.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from '../protocol/log.js';

/** Whether the host answered the last bus call (a refusal is an answer). */
export type BusState = { connected: true } | { connected: false; why: string };

export class StatusFile {
  private last: string | undefined;
  private warned = false;

  /** `file` undefined: keep no status file. */
  constructor(readonly file: string | undefined, private readonly log: Logger) {}

  set(state: BusState): void {
    const text = state.connected ? 'connected' : `not connected: ${state.why}`;
    if (!this.file || text === this.last) return;
    this.last = text;
    const tmp = `${this.file}.${process.pid}.tmp`;
    try {
      fs.mkdirSync(path.dirname(this.file), { recursive: true, mode: 0o700 });
      fs.writeFileSync(tmp, `${text}\n`, { mode: 0o600 });
      fs.renameSync(tmp, this.file);
      this.warned = false;
    } catch (err) {
      if (!this.warned) this.log.warn(`cannot write ${this.file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}; the status is only in this log`);
      this.warned = true;
    }
  }

  remove(): void {
    if (this.file) fs.rmSync(this.file, { force: true });
  }
}
