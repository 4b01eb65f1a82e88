/**
 * Watches on a few directories, each filtered to the names that matter, kept
 * in step with what should be watched now: a file's directory (its rename-over
 * saves are events there, where a watch on the file itself would lose the
 * inode), a symlinked file's real directory, a directory that appeared. A
 * watch that fails is dropped; the caller's periodic check or signal covers
 * the gap.
 */
import fs from 'node:fs';

/** Whether an event for `name` (null when the platform does not say) matters. */
export type NameFilter = (name: string | null) => boolean;

export class DirWatches {
  private readonly watchers = new Map<string, fs.FSWatcher>();

  /**
   * @param onEvent called for every event that passes its directory's filter
   * @param onProblem told when a directory cannot be watched (or its watch failed)
   */
  constructor(
    private readonly onEvent: () => void,
    private readonly onProblem: (dir: string, err: NodeJS.ErrnoException) => void = () => undefined,
  ) {}

  /** The directories watched now. */
  get dirs(): string[] {
    return [...this.watchers.keys()];
  }

  /** Watch exactly these directories (closing the watches of the others). */
  sync(wanted: ReadonlyMap<string, NameFilter>): void {
    for (const [dir, watcher] of this.watchers) {
      if (!wanted.has(dir)) {
        watcher.close();
        this.watchers.delete(dir);
      }
    }
    for (const [dir, relevant] of wanted) {
      if (this.watchers.has(dir)) continue;
      try {
        const watcher = fs.watch(dir, { persistent: false }, (_event, name) => {
          if (relevant(name === null ? null : String(name))) this.onEvent();
        });
        watcher.on('error', (err) => {
          watcher.close();
          this.watchers.delete(dir);
          this.onProblem(dir, err as NodeJS.ErrnoException);
        });
        this.watchers.set(dir, watcher);
      } catch (err) {
        this.onProblem(dir, err as NodeJS.ErrnoException);
      }
    }
  }

  close(): void {
    for (const watcher of this.watchers.values()) watcher.close();
    this.watchers.clear();
  }
}
