/**
 * Reload on edit: watch the policy file and the sheds.d directory, and call
 * back (debounced) when what they hold changes. Editors replace files rather
 * than write them in place, so the watch is on the directories, filtered by
 * name, and the contents are compared so a touch or an editor's swap file
 * does not reload.
 */
import { DirWatches, type NameFilter } from '../dir-watches.js';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from '../../protocol/log.js';
import { expandHome } from './effective.js';
import { readRegularFile } from '../../protocol/files.js';
import { SHEDS_DIR_NAME } from './policy.js';

export interface PolicyWatcherOptions {
  /** The main policy file, as given to loadPolicyFile. */
  file: string;
  /** Called after the files settle; a reload. Errors are its own to log. */
  onChange: () => Promise<unknown> | void;
  log: Logger;
  /** Quiet time before reloading (default 200 ms). */
  debounceMs?: number;
}

/** A digest of the main file and every YAML file in sheds.d (name, mode and text). */
export function policyDigest(file: string): string {
  const hash = crypto.createHash('sha256');
  const add = (p: string) => {
    try {
      const st = fs.statSync(p);
      hash.update(`${p}\0${st.mode}\0${st.uid}\0`);
      if (st.isFile()) hash.update(readRegularFile(p).data);
    } catch (err) {
      hash.update(`${p}\0${(err as NodeJS.ErrnoException).code}\0`);
    }
  };
  add(file);
  const dir = path.join(path.dirname(file), SHEDS_DIR_NAME);
  add(dir);
  let names: string[] = [];
  try {
    names = fs.readdirSync(dir).filter((n) => /^[^.].*\.ya?ml$/.test(n)).sort();
  } catch {
    // no sheds.d
  }
  for (const n of names) add(path.join(dir, n));
  return hash.digest('hex');
}

export class PolicyWatcher {
  private readonly file: string;
  private readonly shedsDir: string;
  private readonly watches = new DirWatches(
    () => this.schedule(),
    (dir, err) => this.options.log.warn(`cannot watch ${dir} for policy edits (${err.code ?? err.message}); edits are picked up on SIGHUP`),
  );
  private timer: NodeJS.Timeout | undefined;
  private digest: string;
  private running: Promise<void> | undefined;
  private again = false;
  private closed = false;

  constructor(private readonly options: PolicyWatcherOptions) {
    this.file = path.resolve(expandHome(options.file));
    this.shedsDir = path.join(path.dirname(this.file), SHEDS_DIR_NAME);
    this.digest = policyDigest(this.file);
    this.arm();
  }

  /** The directories being watched (for logs and tests). */
  get watching(): string[] {
    return this.watches.dirs;
  }

  /** (Re)create the watches: the main file's directory, sheds.d when it exists, and a symlinked file's real directory. */
  private arm(): void {
    if (this.closed) return;
    const dirs = new Map<string, NameFilter>();
    const base = path.basename(this.file);
    dirs.set(path.dirname(this.file), (name) => name === null || name === base || name === SHEDS_DIR_NAME);
    try {
      const real = fs.realpathSync(this.file);
      if (path.dirname(real) !== path.dirname(this.file)) dirs.set(path.dirname(real), (name) => name === null || name === path.basename(real));
    } catch {
      // the file is gone: the directory watch sees it come back
    }
    if (fs.existsSync(this.shedsDir)) dirs.set(this.shedsDir, (name) => name === null || /^[^.].*\.ya?ml$/.test(name));
    this.watches.sync(dirs);
  }

  private schedule(): void {
    if (this.closed) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.fire(), this.options.debounceMs ?? 200);
  }

  private async fire(): Promise<void> {
    if (this.running) {
      this.again = true;
      return;
    }
    this.arm();
    const next = policyDigest(this.file);
    if (next === this.digest) return;
    this.digest = next;
    this.options.log.info(`policy files changed: reloading ${this.file}${fs.existsSync(this.shedsDir) ? ` and ${this.shedsDir}` : ''}`);
    this.running = Promise.resolve(this.options.onChange()).then(() => undefined, (err: Error) => {
      this.options.log.error(`policy reload failed: ${err.message}`);
    });
    await this.running;
    this.running = undefined;
    if (this.again) {
      this.again = false;
      this.schedule();
    }
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    this.watches.close();
  }
}
