/**
 * `shed-host-agent audit [--shed S] [--since 1h] [--follow] [--json]`: the
 * audit log as one readable timeline, oldest first: every shed's file in
 * the audit directory, rotated files included, merged by time. `--follow`
 * keeps printing new lines, across rotations and from sheds that appear,
 * until interrupted.
 *
 * A line holds text a guest chose: the timeline shows every field with its
 * control characters escaped (protocol/text.ts), so no line can pass for
 * two or drive the terminal, whatever the file holds.
 */
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { escapeControls } from '../../protocol/text.js';
import { auditFiles, auditLogFiles, shedLogName } from '../audit/audit-log.js';
import { parseAuditLine, type AuditEntry } from '../audit/audit.js';
import { DEFAULT_POLICY_PATH, loadPolicyFile } from '../policy/policy.js';
import { parseDuration } from '../policy/schema.js';
import { expandHome } from '../policy/effective.js';

export const AUDIT_USAGE = `Usage: shed-host-agent audit [--shed S] [--since 1h] [--follow] [--json]

Prints the audit log (every credential operation, allowed or denied) as one
timeline across sheds, oldest first, rotated files included.

Options:
  --shed S        only this shed's lines
  --since WHEN    only lines from the last WHEN (90s, 30m, 1h, 2d) or since an
                  ISO time (2026-03-31T15:00:00Z)
  -f, --follow    keep printing new lines as they are written (Ctrl-C stops)
  --json          print the raw JSON lines
  --config FILE   the policy file that names the log (default ${DEFAULT_POLICY_PATH})
  --dir DIR       read the per-shed logs in DIR instead of the policy's audit.dir
  --file FILE     read this one log file (and its rotations) instead
  -h, --help      this text
`;

export interface AuditCommandIo {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
  /** Ends --follow (SIGINT/SIGTERM by default). */
  signal?: AbortSignal;
  now?: () => number;
  /** How often --follow looks for new lines. */
  pollMs?: number;
}

const processIo: AuditCommandIo = {
  stdout: (t) => process.stdout.write(t),
  stderr: (t) => process.stderr.write(t),
};

/** A line read back, with the raw text for --json. */
interface Read {
  line: string;
  entry: AuditEntry;
}

/** Run the command; resolves with the exit code (0 ok, 1 no log, 2 usage). */
export async function auditCommand(argv: string[], io: AuditCommandIo = processIo): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      allowPositionals: false,
      options: {
        shed: { type: 'string' },
        since: { type: 'string' },
        follow: { type: 'boolean', short: 'f' },
        json: { type: 'boolean' },
        config: { type: 'string', short: 'c' },
        dir: { type: 'string' },
        file: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (err) {
    io.stderr(`shed-host-agent audit: ${(err as Error).message}\n${AUDIT_USAGE}`);
    return 2;
  }
  if (values.help) {
    io.stdout(AUDIT_USAGE);
    return 0;
  }
  const now = io.now ?? Date.now;
  let since: number | undefined;
  if (values.since !== undefined) {
    since = parseSince(values.since, now());
    if (since === undefined) {
      io.stderr(`shed-host-agent audit: --since ${JSON.stringify(values.since)} is neither a duration (90s, 30m, 1h, 2d) nor an ISO time\n`);
      return 2;
    }
  }

  // The base files to read: one given file, or every shed's (or one shed's) in the directory.
  let where: string;
  let keep = 100;
  let baseFiles: () => string[];
  if (values.file) {
    const file = expandHome(values.file);
    where = file;
    baseFiles = () => [file];
  } else {
    let dir: string;
    if (values.dir) {
      dir = expandHome(values.dir);
    } else {
      const config = values.config ?? DEFAULT_POLICY_PATH;
      try {
        const audit = loadPolicyFile(config).audit;
        dir = audit.dir;
        keep = audit.keep;
      } catch (err) {
        io.stderr(`shed-host-agent audit: cannot read the policy to find the audit log: ${(err as Error).message}\n(pass --dir DIR or --file FILE to read a log directly)\n`);
        return 1;
      }
    }
    where = dir;
    const only = values.shed === undefined ? undefined : path.join(dir, shedLogName(values.shed));
    baseFiles = () => (only ? [only] : auditLogFiles(dir));
  }

  const filter = (e: AuditEntry) => (values.shed === undefined || e.shed === values.shed) && (since === undefined || Date.parse(e.ts) >= since);
  const print = (r: Read) => io.stdout(`${values.json ? r.line : formatEntry(r.entry)}\n`);
  let malformed = 0;
  const parse = (lines: string[], into: Read[]) => {
    for (const line of lines) {
      if (!line.trim()) continue;
      const entry = parseAuditLine(line);
      if (!entry) malformed += 1;
      else if (filter(entry)) into.push({ line, entry });
    }
  };

  const bases = baseFiles();
  const generations = bases.flatMap((b) => auditFiles(b, keep));
  if (generations.length === 0 && !values.follow) {
    io.stderr(`shed-host-agent audit: no audit log in ${where} yet; the broker writes it on the first credential request (see audit.dir in the policy)\n`);
    return 1;
  }
  const backlog: Read[] = [];
  for (const f of generations) {
    try {
      parse(fs.readFileSync(f, 'utf8').split('\n'), backlog);
    } catch (err) {
      io.stderr(`shed-host-agent audit: cannot read ${f}: ${(err as Error).message}\n`);
      return 1;
    }
  }
  byTime(backlog).forEach(print);
  if (values.follow) {
    const followers = new Map<string, Follower>();
    for (const b of bases) followers.set(b, new Follower(b, keep, statOrUndefined(b)));
    await followAll(followers, baseFiles, keep, (lines) => {
      const fresh: Read[] = [];
      parse(lines, fresh);
      byTime(fresh).forEach(print);
    }, io);
  }
  if (malformed > 0) io.stderr(`shed-host-agent audit: skipped ${malformed === 1 ? '1 line that is not an audit entry' : `${malformed} lines that are not audit entries`}\n`);
  return 0;
}

/** Oldest first; lines of one time keep the order they were read in (each file is in order). */
function byTime(reads: Read[]): Read[] {
  return reads.sort((a, b) => (a.entry.ts < b.entry.ts ? -1 : a.entry.ts > b.entry.ts ? 1 : 0));
}

/** `1h` → now minus an hour; an ISO time → that time. */
export function parseSince(text: string, now: number): number | undefined {
  const ms = parseDuration(text);
  if (ms !== undefined) return now - ms;
  if (!/^\d{4}-\d{2}-\d{2}/.test(text)) return undefined;
  const t = Date.parse(text);
  return Number.isNaN(t) ? undefined : t;
}

/**
 * `2026-03-31 15:04:05.123Z  my-service  ssh-agent sign  ok  SHA256:…  approval=prompt  req 0192…`,
 * every field with its control characters escaped; a summary line says how many requests it stands for.
 */
export function formatEntry(e: AuditEntry): string {
  const f = (text: string) => escapeControls(text);
  const ts = f(e.ts.replace('T', ' '));
  const approval = e.approval === 'none' ? '' : `  approval=${f(e.approval)}`;
  const result = e.result === 'ok' ? 'ok' : f(e.result.toUpperCase());
  const count = e.count !== undefined ? `  ×${e.count}` : '';
  return `${ts}  ${f(e.shed)}  ${f(e.ns)} ${f(e.op)}  ${result}${count}${e.detail ? `  ${f(e.detail)}` : ''}${approval}  req ${f(e.request_id)}`;
}

function statOrUndefined(file: string): fs.Stats | undefined {
  try {
    return fs.statSync(file);
  } catch {
    return undefined;
  }
}

/**
 * One file followed: lines appended to it are handed on. A rotation (a new
 * inode at the path, or a shorter file) first drains what the old file still
 * had past our offset, then reads the files rotated out after it (several
 * rotations can happen between two looks), then follows the new file from
 * its beginning.
 */
class Follower {
  private fd: number | undefined;
  private ino: number | undefined;
  private offset: number;
  private partial = '';

  constructor(private readonly file: string, private readonly keep: number, st: fs.Stats | undefined) {
    this.ino = st?.ino;
    this.offset = st?.size ?? 0;
    this.fd = st ? openRead(file) : undefined;
  }

  /** The whole lines that appeared since the last look. */
  poll(): string[] {
    const out: string[] = [];
    for (;;) {
      if (this.fd !== undefined) this.read(this.fd, out);
      const st = statOrUndefined(this.file);
      if (!st || (st.ino === this.ino && st.size >= this.offset)) return out;
      // Rotated (or truncated): finish the old file, then follow the new one.
      if (this.fd !== undefined) {
        this.read(this.fd, out);
        fs.closeSync(this.fd);
      }
      if (this.ino !== undefined && st.ino !== this.ino) {
        for (const missed of rotatedAfter(this.file, this.ino, this.keep)) {
          try {
            out.push(...fs.readFileSync(missed, 'utf8').split('\n'));
          } catch {
            // Rotated away again meanwhile: nothing more to recover.
          }
        }
      }
      this.fd = openRead(this.file);
      this.ino = st.ino;
      this.offset = 0;
      this.partial = '';
    }
  }

  close(): void {
    if (this.fd !== undefined) fs.closeSync(this.fd);
    this.fd = undefined;
  }

  private read(fd: number, out: string[]): void {
    const chunk = Buffer.alloc(64 * 1024);
    for (;;) {
      const n = fs.readSync(fd, chunk, 0, chunk.length, this.offset);
      if (n <= 0) break;
      this.offset += n;
      this.partial += chunk.subarray(0, n).toString('utf8');
    }
    const lines = this.partial.split('\n');
    this.partial = lines.pop() ?? '';
    out.push(...lines);
  }
}

/** Follow every base file (and those that appear) until the signal fires. */
async function followAll(followers: Map<string, Follower>, baseFiles: () => string[], keep: number, emit: (lines: string[]) => void, io: AuditCommandIo): Promise<void> {
  const { signal, cleanup } = stopSignal(io.signal);
  try {
    while (!signal.aborted) {
      for (const b of baseFiles()) {
        // A shed that appears is followed from its first line.
        if (!followers.has(b)) followers.set(b, new Follower(b, keep, undefined));
      }
      const lines: string[] = [];
      for (const f of followers.values()) lines.push(...f.poll());
      if (lines.length) emit(lines);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, io.pollMs ?? 200);
        signal.addEventListener('abort', () => {
          clearTimeout(timer);
          resolve();
        }, { once: true });
      });
    }
  } finally {
    for (const f of followers.values()) f.close();
    cleanup();
  }
}

/** The rotated files newer than the one with inode `ino` (now `file.k`): `file.k-1` … `file.1`. */
function rotatedAfter(file: string, ino: number, keep: number): string[] {
  for (let k = 1; k <= keep; k++) {
    const st = statOrUndefined(`${file}.${k}`);
    if (!st) break;
    if (st.ino === ino) return Array.from({ length: k - 1 }, (_, i) => `${file}.${k - 1 - i}`);
  }
  return [];
}

function openRead(file: string): number | undefined {
  try {
    return fs.openSync(file, 'r');
  } catch {
    return undefined;
  }
}

function stopSignal(external: AbortSignal | undefined): { signal: AbortSignal; cleanup: () => void } {
  if (external) return { signal: external, cleanup: () => undefined };
  const controller = new AbortController();
  const stop = () => controller.abort();
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  return {
    signal: controller.signal,
    cleanup: () => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
    },
  };
}
