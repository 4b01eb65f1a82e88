/**
 * git-credential-shed: git's credential-helper protocol over shed's bus.
 *
 * git runs it once per operation that needs credentials (`credential.helper
 * = shed` runs `git credential-shed get`), so its start-up time is its
 * speed: this module imports only the bus client and the protocol's
 * zod/mini schemas.
 *
 * The helper protocol (`git help credential`):
 * - `get`: `key=value` lines on stdin (protocol, host with its port, path,
 *   username…), ended by a blank line or end of input. The answer is
 *   `username=`, `password=` (and `password_expiry_utc=`, `authtype=` when
 *   the host gave them) on stdout.
 * - `store`, `erase`: git reports a credential that worked or failed. They
 *   do nothing and exit 0: the guest cannot change the host's secrets.
 * - Anything this helper cannot answer (input it does not understand, a
 *   host the policy does not allow, no credentials on the host, the host
 *   unreachable) prints nothing on stdout and one line on stderr saying why,
 *   and exits 0: git then tries its next helper, or its prompt.
 */
import { BusClient, BusError, DEFAULT_PUBLISH_URL, publishUrlFromEnv } from '../bus-client.js';
import { GitGetResponse, isCredentialValue, MAX_GIT_HOST_LENGTH, MAX_GIT_PATH_LENGTH } from '../../protocol/git-credentials.js';
import { VERSION } from '../../protocol/version.js';
import type { HelperIO } from '../one-shot.js';

export const PROGRAM = 'git-credential-shed';
export const NAMESPACE = 'git-credentials';
/** Whether the host answers at all: a down broker must not keep git waiting. */
export const PING_DEADLINE_MS = 2000;
/** The get itself: the host may ask a person to approve (approval.timeout, 25 s by default) within shed-agent's 30 s. */
export const DEADLINE_MS = 30_000;
/** git's credential descriptions are a few short lines; anything longer than this is not one. */
export const MAX_STDIN_BYTES = 64 * 1024;

export const USAGE = `Usage: ${PROGRAM} <get|store|erase|version>

git credential helper that asks the host (shed-host-agent) for git
credentials over shed's bus. Credentials never live in this VM.

  get       read git's credential description on stdin (protocol=, host=,
            path=, ended by a blank line) and print username= and password=
            for it, when the host's policy allows this shed that repository
  store     does nothing (the host's credentials cannot be changed from here)
  erase     does nothing (likewise)
  version   print the version

git runs it: set it up with
  git config --system credential.helper shed
  git config --system credential.useHttpPath true
(install-guest does). Anything it cannot answer prints nothing on stdout and
one line on stderr, so git goes on to its next helper.

Environment:
  SHED_PUBLISH_URL  publish URL of the bus (default ${DEFAULT_PUBLISH_URL});
                    unix:/path/to.sock for a shed-host-agent direct socket
`;

export type { HelperIO };

/** What git asked for. */
export interface CredentialQuery {
  protocol: string;
  host: string;
  path?: string;
}

/** Printable, one line, bounded: for text that goes back to the user's terminal. */
function shown(text: string, max = 300): string {
  // eslint-disable-next-line no-control-regex
  const flat = text.replace(/\s*\n\s*/g, ' ').replace(/[\x00-\x1f\x7f]/g, '?');
  return flat.length > max ? `${flat.slice(0, max)}…` : flat;
}

/**
 * git's description as a query, or why it is not one. Lines up to the
 * first blank one; a later key wins (as git reads them); unknown keys
 * (username, capability[], wwwauth[]…) are ignored.
 */
export function parseQuery(input: string): { query: CredentialQuery } | { problem: string } {
  if (input.length > MAX_STDIN_BYTES) return { problem: `its input is over ${MAX_STDIN_BYTES / 1024} KiB, which is no credential description` };
  if (input.includes('\0')) return { problem: 'its input holds a NUL byte, which git never sends' };
  const fields = new Map<string, string>();
  for (const raw of input.split('\n')) {
    const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    if (line === '') break;
    const eq = line.indexOf('=');
    if (eq <= 0) return { problem: `a line of its input is not key=value: ${JSON.stringify(shown(line, 60))}` };
    fields.set(line.slice(0, eq), line.slice(eq + 1));
  }
  const protocol = fields.get('protocol');
  const host = fields.get('host');
  if (!protocol || !host) {
    return { problem: `get needs protocol= and host= on stdin (git gives them); ${!protocol && !host ? 'neither was there' : `no ${protocol ? 'host' : 'protocol'}`}` };
  }
  if (host.length > MAX_GIT_HOST_LENGTH) return { problem: 'its host= is too long to be a host' };
  const path = fields.get('path');
  if (path !== undefined && path.length > MAX_GIT_PATH_LENGTH) return { problem: `its path= is over ${MAX_GIT_PATH_LENGTH} characters` };
  return { query: { protocol, host, ...(path ? { path } : {}) } };
}

/** The answer lines for git, or undefined when a value could forge another attribute. */
export function formatAnswer(answer: GitGetResponse): string | undefined {
  const lines: Array<[string, string | undefined]> = [
    ['username', answer.username],
    ['password', answer.password],
    ['password_expiry_utc', answer.password_expiry_utc],
    ['authtype', answer.authtype],
  ];
  let out = '';
  for (const [key, value] of lines) {
    if (value === undefined) continue;
    if (!isCredentialValue(value)) return undefined;
    out += `${key}=${value}\n`;
  }
  return out;
}

/** Run one helper invocation; resolves with the exit status. */
export async function runHelper(argv: string[], io: HelperIO): Promise<number> {
  const action = argv[0];
  switch (action) {
    case 'get':
      return get(io);
    case 'store':
    case 'erase':
      // Take what git writes, so it sees no broken pipe; it goes nowhere.
      if (!io.stdinIsTTY) await io.readStdin().catch(() => '');
      return 0;
    case 'version':
    case '--version':
      io.stdout(`${PROGRAM} (shed-extensions) ${VERSION}\n`);
      return 0;
    case '--help':
    case '-h':
    case 'help':
      io.stdout(USAGE);
      return 0;
    case undefined:
      io.stderr(`${PROGRAM}: no action given (git runs it as \`${PROGRAM} get\`); see \`${PROGRAM} --help\`\n`);
      return 0;
    default:
      // A newer git may ask for something this helper does not do: no answer, so git goes on without it.
      if (!io.stdinIsTTY) await io.readStdin().catch(() => '');
      io.stderr(`${PROGRAM}: unknown action ${JSON.stringify(shown(action, 64))}; it answers get (and accepts store and erase)\n`);
      return 0;
  }
}

async function get(io: HelperIO): Promise<number> {
  const parsed = parseQuery(await io.readStdin());
  if ('problem' in parsed) {
    io.stderr(`${PROGRAM}: no answer: ${parsed.problem}\n`);
    return 0;
  }
  const { query } = parsed;
  const url = `${query.protocol}://${query.host}${query.path ? `/${query.path}` : ''}`;
  let client: BusClient;
  try {
    client = new BusClient({ publishUrl: publishUrlFromEnv(io.env), deadlineMs: DEADLINE_MS });
  } catch (err) {
    io.stderr(`${PROGRAM}: no answer: ${shown((err as Error).message)}; fix SHED_PUBLISH_URL\n`);
    return 0;
  }
  try {
    await client.ping(NAMESPACE, { deadlineMs: PING_DEADLINE_MS });
    const answer = await client.publish(NAMESPACE, { operation: 'get', ...query }, { deadlineMs: DEADLINE_MS });
    const response = GitGetResponse.safeParse(answer);
    const text = response.success ? formatAnswer(response.data) : undefined;
    if (text === undefined) {
      io.stderr(`${PROGRAM}: no answer for ${shown(url)}: the host's answer does not match the git-credentials protocol; check that shed-host-agent and this guest are the same version\n`);
      return 0;
    }
    io.stdout(text);
    return 0;
  } catch (err) {
    // The host's refusal names the repository and its reason; anything else needs the URL said.
    const said = err instanceof BusError && err.kind === 'host' ? describe(err) : `no credentials for ${shown(url)}: ${describe(err)}`;
    io.stderr(`${PROGRAM}: ${said}\n`);
    return 0;
  } finally {
    client.close();
  }
}

function describe(err: unknown): string {
  if (!(err instanceof BusError)) return shown(err instanceof Error ? err.message : String(err));
  // `the host refused git-credentials get: <its text> (<CODE>)`: the text and code are what matter here.
  if (err.kind === 'host') return shown(err.message.replace(/^the host refused [^:]*: /, ''), 600);
  // This helper takes its URL from SHED_PUBLISH_URL, not a flag.
  const hint = err.hint.replace(/(pass|check) --publish-url/g, (_m, verb: string) => `${verb === 'pass' ? 'set' : 'check'} SHED_PUBLISH_URL`);
  return shown(hint ? `${err.message}; ${hint}` : err.message, 600);
}
