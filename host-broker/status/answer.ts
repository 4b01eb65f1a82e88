/**
 * What the status socket answers: one JSON object, the same for
 * `shed-host-agent status --json` (stable: fields are only ever added, and
 * `format` changes if one has to change meaning). The daemon builds it
 * (snapshot.ts); the client checks every answer against this schema before
 * it shows anything, so a socket that answers something else is told apart.
 *
 * The status socket (server.ts): `<state dir>/host-agent-status.sock`, mode
 * 0600 in a 0700 directory. The client sends the one request, the line
 * `status\n`; the daemon answers one line of JSON and closes.
 */
import * as z from 'zod/mini';

export const STATUS_FORMAT = 1;

/** The only request the socket takes. */
export const STATUS_REQUEST = 'status\n';

/** The status socket's file name in the state directory. */
export const STATUS_SOCKET_NAME = 'host-agent-status.sock';

/** The state directory when neither `--state-dir` nor anything else names one. */
export const DEFAULT_STATE_DIR = '~/.local/state/shed';

/** The most bytes of an answer a client reads (the daemon's answers are a few KiB per hundred sheds). */
export const MAX_ANSWER_BYTES = 8 * 1024 * 1024;

const ReloadOutcome = z.object({
  at: z.string(),
  result: z.enum(['applied', 'refused']),
  /** Why it was refused: the problems, one per line (escaped). */
  reason: z.optional(z.string()),
});

const Server = z.object({
  /** `default` for the top-level `server:`. */
  name: z.string(),
  url: z.string(),
  /** Namespace → `connected`, `connecting`, `reconnecting: <reason>` or `stopped`. */
  namespaces: z.record(z.string(), z.string()),
  /** Why the server is not served (it could not start; fixed by editing its settings). */
  problem: z.optional(z.string()),
});

const DirectShed = z.object({
  name: z.string(),
  socket: z.string(),
  /** `serving, N connections` or `stopped`. */
  state: z.string(),
  connections: z.number(),
});

const Approval = z.object({
  /** A shed the policy names, or `*`. */
  shed: z.string(),
  gate: z.string(),
  policy: z.string(),
  applies_to: z.array(z.string()),
});

export const StatusAnswer = z.object({
  format: z.literal(STATUS_FORMAT),
  version: z.string(),
  pid: z.number(),
  started_at: z.string(),
  /** `starting` until every transport is up; `stopping` once a stop began. */
  phase: z.enum(['starting', 'running', 'stopping']),
  config: z.object({
    /** The policy file `run` was given (absolute). */
    path: z.string(),
    /** Files the policy in force was read from (the main file first, then sheds.d/). Empty while it is first read. */
    files: z.array(z.string()),
    /** When the policy in force was read (at start, or by the last reload that applied). */
    loaded_at: z.optional(z.string()),
    /** The last reload tried (on edit or SIGHUP), if any. */
    last_reload: z.optional(ReloadOutcome),
  }),
  servers: z.array(Server),
  direct: z.object({
    enabled: z.boolean(),
    sockets_dir: z.optional(z.string()),
    /** Connections open across every shed's socket, and the most the broker takes. */
    connections: z.number(),
    max_connections: z.optional(z.number()),
    sheds: z.array(DirectShed),
  }),
  approvals: z.array(Approval),
  audit: z.object({
    dir: z.string(),
    /** Whether the directory can be written (or created) now. */
    writable: z.boolean(),
    /** Why not, when it cannot. */
    writable_problem: z.optional(z.string()),
    /** Why the last write failed, until a write succeeds again. */
    last_error: z.optional(z.string()),
    last_error_at: z.optional(z.string()),
    /** Lines that could not be written since start (requests served unaudited, or refused under audit.required). */
    failed_lines: z.number(),
    /** Denials counted into summary lines (over audit.denials_per_minute) since start, and the summary lines written. */
    summarised_denials: z.number(),
    summary_lines: z.number(),
    required: z.boolean(),
  }),
});
export type StatusAnswer = z.infer<typeof StatusAnswer>;
