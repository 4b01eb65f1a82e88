/**
 * `shed-host-agent audit [--shed S] [--since 1h] [--follow] [--json]`: the
 * audit log as a readable timeline, oldest first, across rotated files;
 * `--follow` keeps printing new lines, across rotations, until interrupted.
 */
import fs from 'node:fs';
import { parseArgs } from 'node:util';
import { auditFiles } from '../audit/audit-log.js';
import { parseAuditLine, type AuditEntry } from '../audit/audit.js';
import { DEFAULT_POLICY_PATH, loadPolicyFile } from '../policy/policy.js';
import { parseDuration } from '../policy/schema.js';
import { expandHome } from '../policy/effective.js';

export const AUDIT_USAGE = `Usage: shed-host-agent audit [--shed S] [--since 1h] [--follow] [--json]

Prints the audit log (every credential operation, allowed or denied) as a
timeline, oldest first, rotated files included.

Options:
  --shed S        only this shed's lines
  --since WHEN    only lines from the last WHEN (90s, 30m, 1h, 2d) or since an
                  ISO time (2026-03-31T15:00:00Z)
  -f, --follow    keep printing new lines as they are written (Ctrl-C stops)
  --json          print the raw JSON lines
  --config FILE   the policy file that names the log (default ${DEFAULT_POLICY_PATH})
  --file FILE     read this log file instead of the policy's audit.path
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

  let file: string;
  let keep = 100;
  if (values.file) {
    file = expandHome(values.file);
  } else {
    const config = values.config ?? DEFAULT_POLICY_PATH;
    try {
      const audit = loadPolicyFile(config).audit;
      file = audit.path;
      keep = audit.keep;
    } catch (err) {
      io.stderr(`shed-host-agent audit: cannot read the policy to find the audit log: ${(err as Error).message}\n(pass --file FILE to read a log directly)\n`);
      return 1;
    }
  }

  const filter = (e: AuditEntry) => (values.shed === undefined || e.shed === values.shed) && (since === undefined || Date.parse(e.ts) >= since);
  const print = values.json ? (line: string) => io.stdout(`${line}\n`) : (_line: string, e: AuditEntry) => io.stdout(`${formatEntry(e)}\n`);
  let malformed = 0;
  const emit = (line: string) => {
    if (!line.trim()) return;
    const entry = parseAuditLine(line);
    if (!entry) {
      malformed += 1;
      return;
    }
    if (filter(entry)) print(line, entry);
  };

  const files = auditFiles(file, keep);
  if (files.length === 0 && !values.follow) {
    io.stderr(`shed-host-agent audit: no audit log at ${file} yet; the broker writes it on the first credential request (see audit.path in the policy)\n`);
    return 1;
  }
  for (const f of files) {
    try {
      fs.readFileSync(f, 'utf8').split('\n').forEach(emit);
    } catch (err) {
      io.stderr(`shed-host-agent audit: cannot read ${f}: ${(err as Error).message}\n`);
      return 1;
    }
  }
  if (values.follow) {
    const st = statOrUndefined(file);
    await follow(file, keep, st?.ino, st?.size ?? 0, emit, io);
  }
  if (malformed > 0) io.stderr(`shed-host-agent audit: skipped ${malformed === 1 ? '1 line that is not an audit entry' : `${malformed} lines that are not audit entries`}\n`);
  return 0;
}

/** `1h` → now minus an hour; an ISO time → that time. */
export function parseSince(text: string, now: number): number | undefined {
  const ms = parseDuration(text);
  if (ms !== undefined) return now - ms;
  if (!/^\d{4}-\d{2}-\d{2}/.test(text)) return undefined;
  const t = Date.parse(text);
  return Number.isNaN(t) ? undefined : t;
}

/** `2026-03-31 15:04:05.123Z  my-service  ssh-agent sign  ok  SHA256:…  approval=prompt  req 0192…` */
export function formatEntry(e: AuditEntry): string {
  const ts = e.ts.replace('T', ' ');
  const approval = e.approval === 'none' ? '' : `  approval=${e.approval}`;
  const result = e.result === 'ok' ? 'ok' : e.result.toUpperCase();
  return `${ts}  ${e.shed}  ${e.ns} ${e.op}  ${result}${e.detail ? `  ${e.detail}` : ''}${approval}  req ${e.request_id}`;
}

function statOrUndefined(file: string): fs.Stats | undefined {
  try {
    return fs.statSync(file);
  } catch {
    return undefined;
  }
}

/**
 * Print lines appended to `file` until the signal fires. A rotation (a new
 * inode at the path, or a shorter file) first drains what the old file still
 * had past our offset, then prints the files rotated out after it (several
 * rotations can happen between two looks), then follows the new file from
 * its beginning.
 */
async function follow(file: string, keep: number, ino: number | undefined, offset: number, emit: (line: string) => void, io: AuditCommandIo): Promise<void> {
  const { signal, cleanup } = stopSignal(io.signal);
  let partial = '';
  let fd: number | undefined = ino !== undefined ? openRead(file) : undefined;
  const readFrom = (handle: number) => {
    const chunk = Buffer.alloc(64 * 1024);
    for (;;) {
      const n = fs.readSync(handle, chunk, 0, chunk.length, offset);
      if (n <= 0) break;
      offset += n;
      partial += chunk.subarray(0, n).toString('utf8');
    }
    const lines = partial.split('\n');
    partial = lines.pop() ?? '';
    lines.forEach(emit);
  };
  try {
    while (!signal.aborted) {
      if (fd !== undefined) readFrom(fd);
      const st = statOrUndefined(file);
      if (st && (st.ino !== ino || st.size < offset)) {
        // Rotated (or truncated): finish the old file, then follow the new one.
        if (fd !== undefined) {
          readFrom(fd);
          fs.closeSync(fd);
        }
        if (ino !== undefined && st.ino !== ino) {
          for (const missed of rotatedAfter(file, ino, keep)) {
            try {
              fs.readFileSync(missed, 'utf8').split('\n').forEach(emit);
            } catch {
              // Rotated away again meanwhile: nothing more to recover.
            }
          }
        }
        fd = openRead(file);
        ino = st.ino;
        offset = 0;
        partial = '';
        continue;
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, io.pollMs ?? 200);
        signal.addEventListener('abort', () => {
          clearTimeout(timer);
          resolve();
        }, { once: true });
      });
    }
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
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
